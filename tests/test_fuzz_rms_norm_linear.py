"""RMSNorm -> linear: `rms_norm(x, g) @ F == s * (x @ (g ⊙ F))` in every dtype, and the fold-underflow hazard.

Criterion and allowance: normfuse_ref/accuracy/equivalence.py. Findings table: docs/hazards.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from normfuse_ref import fusion
from normfuse_ref.fuzz import strategies as s
from normfuse_ref.fuzz.campaign import check_cell
from normfuse_ref.fuzz.rules import RULES, Case, assert_no_worse, evaluate, run
from normfuse_ref.precision import DTYPES, Array, dtype_info

RULE = RULES["rms_norm_linear"]
# The "found by the fuzzer" tests search without shrinking (the pinned literals are the shrunk results).
FIND = settings(
    max_examples=2000,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_rms_norm_linear_no_worse_than_reference(dtype: str) -> None:
    """Ordinary, outlier and eps-dominated rows, realistic weights, every accumulator (policy, float32, bfloat16,
    float16): the fused order is within the allowance, up to the stated hazards, and the cell's statistics hold."""
    check_cell(RULE, dtype, acc=s.accumulators())


# ---------------------------------------------------------------------------------------------------------------
# Hazard: the fold re-quantises g ⊙ F, and in the subnormal range that loses relative accuracy
# ---------------------------------------------------------------------------------------------------------------

# Shrunk by Hypothesis (`find` over finite rows, gains, and weights scaled down into the subnormal range; see
# test_fold_underflow_is_found_by_the_fuzzer), pasted as literal data.
FOLD_UNDERFLOW_E5M2 = Case(
    rule="rms_norm_linear",
    dtype="float8_e5m2",
    arrays={
        "x": np.array([[1.0] * 11]).astype(DTYPES["float8_e5m2"]),
        "g": np.array([0.25] * 11).astype(DTYPES["float8_e5m2"]),
        "F": np.array([[3.0517578125e-05]] * 11).astype(DTYPES["float8_e5m2"]),
    },
    params={"eps": 1e-06},
)
FOLD_UNDERFLOW_F16 = Case(
    rule="rms_norm_linear",
    dtype="float16",
    arrays={
        "x": np.array([[1.0] * 5]).astype(DTYPES["float16"]),
        "g": np.array([0.25] * 5).astype(DTYPES["float16"]),
        "F": np.array([[2.7298927307128906e-05]] * 5).astype(DTYPES["float16"]),
    },
    params={"eps": 1e-06},
)


# Found by `normfuse fuzz rms_norm_linear --rows offset --dtype bfloat16` (seed 1) before the strategies were bounded
# from below: Hypothesis drew weights of 6.8e-39, below bfloat16's smallest normal 2^-126 = 1.2e-38.
FOLD_UNDERFLOW_BF16 = Case(
    rule="rms_norm_linear",
    dtype="bfloat16",
    arrays={
        "x": np.array([[1.5625, 1.3671875, 1.5625]]).astype(DTYPES["bfloat16"]),
        "g": np.array([0.25, 0.25, 0.25]).astype(DTYPES["bfloat16"]),
        "F": np.array([[6.79582671569135e-39]] * 3).astype(DTYPES["bfloat16"]),
    },
    params={"eps": 1e-05},
)


def _wide_fold(dtype: str) -> Callable[..., Array]:
    """The mitigation: fold g ⊙ F into a wider dtype (the DIMC tile holds bfloat16/float32 weights)."""

    # reference: linear(rms_norm(x, g, eps), F)
    def fused(x: Array, g: Array, F: Array, eps: float, *, acc: str | None) -> Array:
        return fusion.rms_norm_linear_folded(x, fusion.fold_rms_norm(g, F, dtype=dtype), eps, acc=acc)

    return fused


@pytest.mark.parametrize("case", [FOLD_UNDERFLOW_E5M2, FOLD_UNDERFLOW_F16, FOLD_UNDERFLOW_BF16], ids=lambda c: c.dtype)
def test_fold_underflow_hazard(case: Case) -> None:
    """The fused order is worse when the folded weights g_i F_ij fall below the storage dtype's smallest normal.

    Condition: |g_i F_ij| < tiny (fp8 e4m3fn 2^-6, e5m2 and float16 2^-14, bfloat16 2^-126) while x_i is not
    small. The fold
    rounds g ⊙ F on the subnormal grid (absolute error up to half a subnormal, i.e. relative error up to 50%),
    whereas the reference uses F exactly as stored and rounds only the normal-range activations h = x s g. Here
    0.25 * F lands between two subnormals in every row and the rounding errors add up coherently.
    Mitigation: fold into a wider dtype (bfloat16 or float32) - or keep fp8 weights scaled into the normal range.
    """
    gF = np.abs(case.arrays["g"].astype(np.float64)[:, None] * case.arrays["F"].astype(np.float64))
    assert np.all(gF < dtype_info(case.dtype).tiny)  # the condition holds
    v = evaluate(RULE, case)
    assert not v.ok, "the pinned counterexample no longer fails: re-check the fold (docs/hazards.md)"
    assert v.hazard.max() >= v.err_fused.max() - v.atol.max()  # the fused-only term accounts for the excess
    for wider in ("bfloat16", "float32") if case.dtype != "bfloat16" else ("float32",):
        assert evaluate(RULE, case, fused=_wide_fold(wider)).ok


@st.composite
def _subnormal_weight_cases(draw: st.DrawFn, *, dtype: str) -> Case:
    n = st.shared(s.row_lengths(max_n=64), key="fold.n")
    m = st.shared(st.integers(1, 4), key="fold.m")
    x = draw(s.finite_rows(n=n, dtype=dtype))
    g = draw(s.gains(n=n, dtype=dtype))
    F = draw(s.weights(n=n, m=m, dtype=np.float64))  # (n, m), then scaled into the subnormal range of `dtype`:
    top = draw(st.floats(0.125, 1.0), label="largest weight / tiny") * dtype_info(dtype).tiny  # survives the cast
    F = (F / np.max(np.abs(F)) * top).astype(DTYPES[dtype])
    return Case("rms_norm_linear", dtype, {"x": x, "g": g, "F": F}, {"eps": 1e-6})


def test_fold_underflow_is_found_by_the_fuzzer() -> None:
    """Hypothesis finds the hazard on its own once weights reach the subnormal range (fp8 e5m2 here)."""
    case = find(_subnormal_weight_cases(dtype="float8_e5m2"), lambda c: not evaluate(RULE, c).ok, settings=FIND)
    assert evaluate(RULE, case, fused=_wide_fold("bfloat16")).ok


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "float16"])
@given(data=st.data())
def test_wide_fold_is_no_worse_even_for_subnormal_weights(dtype: str, data: st.DataObject) -> None:
    """The mitigation as a property: folding into float32 is within the allowance on the hazard's own inputs."""
    case = data.draw(_subnormal_weight_cases(dtype=dtype), label="case")
    assert_no_worse(RULE, case, fused=_wide_fold("float32"), strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Hazard: the unnormalised x @ (g ⊙ F) overflows a float16 accumulator
# ---------------------------------------------------------------------------------------------------------------

# Written by hand from the condition (the cells meet it with float16 accumulators and outlier rows).
F16_ACC_OVERFLOW = Case(
    rule="rms_norm_linear",
    dtype="float16",
    arrays={
        "x": np.array([[100.0] * 4]).astype(DTYPES["float16"]),
        "g": np.array([1.0] * 4).astype(DTYPES["float16"]),
        "F": np.array([[200.0]] * 4).astype(DTYPES["float16"]),
    },
    params={"eps": 1e-06},
    acc="float16",
)


def test_float16_accumulator_overflow_hazard() -> None:
    """The fused order's matmul runs on raw x, so its partial sums are as large as |x| @ |g ⊙ F|; the reference's run
    on the normalised h = x s g (|h| <= sqrt(n) |g|). Condition: a float16 accumulator and (|x| @ |g ⊙ F|)_j > 65504
    for some output j (here 4 * 100 * 200 = 80000, while h = 1 and h @ F = 800): the fused output is inf. The
    property states it (`RuleBounds.overflow`, from `bounds.matmul_may_overflow`). Mitigation: accumulate in float32,
    the policy for 16- and 8-bit storage."""
    out = run(RULE, F16_ACC_OVERFLOW)
    assert np.isfinite(out.reference.astype(np.float64)).all() and np.isinf(out.fused.astype(np.float64)).all()
    assert not out.verdict.ok and out.verdict.ok_given_hazards and out.verdict.overflow.all()
    policy = Case(F16_ACC_OVERFLOW.rule, "float16", F16_ACC_OVERFLOW.arrays, F16_ACC_OVERFLOW.params, acc=None)
    assert evaluate(RULE, policy).ok
