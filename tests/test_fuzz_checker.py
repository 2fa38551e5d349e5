"""The checker itself: its error analysis is sound, its allowance is not too wide, and it says no to wrong rewrites.

- Soundness: on every rule, dtype, accumulator and input family (hazards included), each order's actual error is
  within its own a-priori bound (accuracy/bounds.py, accuracy/equivalence.py). If this fails, the derivation is
  wrong, not the rule.
- Necessity: the derivation's middle-rounding term is needed (the first sketch of atol fails on a real case).
- Teeth: with a wrong rewrite monkeypatched into normfuse_ref.fusion, the very same cells fail; a non-finite fused
  row fails at any limit; unchecked rows are counted. (The mutant table, tests/test_mutants.py, has the rest.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from normfuse_ref import fusion
from normfuse_ref.accuracy.equivalence import RuleBounds, compare, row_errors
from normfuse_ref.fuzz import strategies as s
from normfuse_ref.fuzz.rules import RULES, Case, evaluate, run
from normfuse_ref.layers import check_eps
from normfuse_ref.models.llama import weights
from normfuse_ref.precision import DTYPES, Array, accumulation_dtype

from . import test_fuzz_layer_norm_linear as ln_tests
from . import test_fuzz_rms_norm_linear as rms_tests
from . import test_fuzz_softmax_linear as sm_tests

NO_SHRINK = settings(
    max_examples=500,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rule", list(RULES))
@given(data=st.data())
def test_bounds_are_sound(rule: str, dtype: str, data: st.DataObject) -> None:
    """|ref - exact| <= B_ref + B_oracle and |fused - exact| <= B_fused + hazard + B_oracle, entry by entry."""
    r = RULES[rule]
    rows = data.draw(st.sampled_from([k for k in r.row_kinds if not (k == "masked" and dtype == "float8_e4m3fn")]))
    acc = s.accumulators() if rule != "decoder_block" else None
    case = data.draw(r.cases(dtype=dtype, acc=acc, rows=rows), label="case")
    b = r.bounds(**case.arrays, **case.params, **case.order, acc=case.acc)
    out = run(r, case)
    with np.errstate(all="ignore"):
        for name, o, bound in (("reference", out.reference, b.ref), ("fused", out.fused, b.fused + b.hazard)):
            o = o.astype(np.float64)
            err = np.where(o == out.exact, 0.0, np.abs(o - out.exact))
            err = np.where(np.isnan(err), np.inf, err)  # NaN (e4m3fn's overflow) is as far off as it gets
            assert np.all(err <= bound + b.oracle), (
                f"{name} order outside its own bound: {np.max(err / (bound + b.oracle))}"
            )


def test_middle_rounding_term_is_needed() -> None:
    """The example in equivalence.py's derivation: an atol of u_s|y| + n u_a M (no middle rounding) is not enough."""
    dt = DTYPES["float16"]
    case = Case(
        "rms_norm_linear",
        "float16",
        {
            "x": np.array([[1.0, 1.0]]).astype(dt),
            "g": np.array([1.5, 1.5]).astype(dt),
            "F": np.array([[0.6669921875], [-0.66650390625]]).astype(dt),
        },
        {"eps": 1e-6},
    )
    out = run(RULES["rms_norm_linear"], case)
    e_ref, e_fused = row_errors(out.reference, out.exact)[0], row_errors(out.fused, out.exact)[0]
    M = 2 * 1.5 * (0.6669921875 + 0.66650390625) / np.sqrt(1 + 1e-6) / 2 * 2  # s |x| @ |g ⊙ F|, s ~ 1
    sketch = 2.0**-11 * np.abs(out.exact).max() + 2 * 2.0**-24 * M
    assert e_ref < 1e-9 and e_fused > 100 * (e_ref + sketch)
    assert out.verdict.ok  # ... while the derived allowance covers it


# ---------------------------------------------------------------------------------------------------------------
# Wrong rewrites: the same properties must fail
# ---------------------------------------------------------------------------------------------------------------


def rms_norm_linear_wrong_mean(x: Array, g: Array, F: Array, eps: float = 1e-6, *, acc: str | None = None) -> Array:
    """A plausible bug: 1/rms with mean over n - 1 (relative error 1/(2n))."""
    a = accumulation_dtype(x.dtype, acc)
    xa = x.astype(a)
    n = x.shape[-1]
    s = 1 / np.sqrt(np.sum(xa * xa, axis=-1, keepdims=True) / max(n - 1, 1) + a.type(check_eps(eps)))
    return (s * (xa @ fusion.fold_rms_norm(g, F).astype(a))).astype(x.dtype)


def layer_norm_linear_unbiased_var(
    x: Array, gamma: Array, beta: Array, F: Array, eps: float = 1e-5, *, acc: str | None = None
) -> Array:
    """A plausible bug: the unbiased variance (ddof = 1) in the collective."""
    F_prime, b = fusion.fold_layer_norm(gamma, beta, F)
    a = accumulation_dtype(x.dtype, acc)
    xa = x.astype(a)
    s = 1 / np.sqrt(np.var(xa, axis=-1, keepdims=True, ddof=1 if x.shape[-1] > 1 else 0) + a.type(eps))
    return (s * (xa @ F_prime.astype(a)) + b.astype(a)).astype(x.dtype)


def merge_without_rescaling_b(a: fusion.SoftmaxState, b: fusion.SoftmaxState) -> fusion.SoftmaxState:
    """A plausible bug: the second state's output is not rescaled to the common max."""
    m = np.maximum(a.m, b.m)
    with np.errstate(invalid="ignore"):
        alpha = np.where(np.isneginf(a.m), 0, np.exp(a.m - m))
        beta = np.where(np.isneginf(b.m), 0, np.exp(b.m - m))
    return fusion.SoftmaxState(m, a.l * alpha + b.l * beta, a.o * alpha + b.o)


WRONG: list[tuple[str, Callable[..., Any], Callable[[], None]]] = [
    (
        "rms_norm_linear",
        rms_norm_linear_wrong_mean,
        lambda: rms_tests.test_rms_norm_linear_no_worse_than_reference("float32"),
    ),
    (
        "layer_norm_linear",
        layer_norm_linear_unbiased_var,
        lambda: ln_tests.test_layer_norm_linear_no_worse_than_reference("float32"),
    ),
    (
        "online_softmax_merge",
        merge_without_rescaling_b,
        lambda: sm_tests.test_any_tiling_any_merge_tree_no_worse_than_reference("float32"),
    ),
]


@pytest.mark.parametrize(("name", "wrong", "prop"), WRONG, ids=["rms_mean_n-1", "ln_unbiased_var", "merge_no_rescale"])
def test_checker_says_no_to_a_wrong_rewrite(
    name: str, wrong: Callable[..., Any], prop: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Monkeypatch a wrong rule into normfuse_ref.fusion and run the real cell: it must fail."""
    monkeypatch.setattr(fusion, name, wrong)
    with pytest.raises(AssertionError, match="fused order worse than allowed"):
        prop()


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # a block Case's repr is long
def test_block_checker_says_no_to_an_unfolded_gain(monkeypatch: pytest.MonkeyPatch) -> None:
    """The block's allowance has teeth too: with the gain left out of the fold the model's weights get (a loader
    bug), float32 cases fail (searched without shrinking: a block case shrinks slowly)."""
    monkeypatch.setattr(weights, "_fold", lambda g, F, fold: F)
    block = RULES["decoder_block"]
    find(block.cases(dtype="float32"), lambda c: not evaluate(block, c).ok, settings=NO_SHRINK)


# ---------------------------------------------------------------------------------------------------------------
# Rows the allowance cannot check
# ---------------------------------------------------------------------------------------------------------------


def _verdict(fused: list[float], ref: list[float], exact: list[float], allowance: float, **kw: Any) -> Any:
    """The verdict on one row of outputs, with a flat allowance (and optional hazard/overflow terms)."""
    shape = (1, len(exact))
    zero = np.zeros(shape)
    b = RuleBounds(
        ref=np.full(shape, allowance),
        fused=np.full(shape, allowance),
        oracle=zero,
        hazard=np.full(shape, kw.get("hazard", 0.0)),
        overflow=np.full(shape, kw.get("overflow", False)),
    )
    f, r, e = (np.array([v], dtype=np.float32) for v in (fused, ref, exact))
    return compare(f, r, e, b)


def test_a_non_finite_fused_row_fails_at_any_limit() -> None:
    """inf <= inf must not pass an all-NaN fused result (the old vacuous check): unless the reference is not finite
    either, or the stated overflow condition holds and hazards are allowed."""
    assert not _verdict([np.nan, np.nan], [1.0, 2.0], [1.0, 2.0], np.inf).ok
    assert not _verdict([np.inf, 2.0], [1.0, 2.0], [1.0, 2.0], np.inf).ok_given_hazards
    assert _verdict([np.nan, 2.0], [np.nan, 2.0], [1.0, 2.0], np.inf).ok  # both orders failed alike
    overflow = _verdict([np.inf, 2.0], [1.0, 2.0], [1.0, 2.0], np.inf, overflow=True)
    assert not overflow.ok and overflow.ok_given_hazards


def test_unchecked_rows_are_the_ones_any_answer_of_their_size_passes() -> None:
    """A row is unchecked when its limit is infinite or at least the exact output: zero would pass there."""
    assert not _verdict([1.0, 2.0], [1.0, 2.0], [1.0, 2.0], 0.1).unchecked.any()
    assert _verdict([1.0, 2.0], [1.0, 2.0], [1.0, 2.0], 2.0).unchecked.all()
    assert _verdict([1.0, 2.0], [1.0, 2.0], [1.0, 2.0], np.inf).unchecked.all()
    assert _verdict([0.0, 0.0], [1.0, 2.0], [1.0, 2.0], 2.0).ok  # why they must be counted
    masked = _verdict([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], 1e-40)  # a fully masked row: only ~0 passes
    assert not masked.unchecked.any() and masked.exact_is_zero


def test_a_stated_hazard_excuses_at_most_its_own_term() -> None:
    v = _verdict([1.5], [1.0], [1.0], 0.1, hazard=0.5)
    assert not v.ok and v.ok_given_hazards and v.needs_hazard.all()
    assert not _verdict([1.7], [1.0], [1.0], 0.1, hazard=0.5).ok_given_hazards
    # a hazard term that reaches past the storage dtype's max explains an overflow to inf; a small one does not
    assert _verdict([np.inf], [1.0], [1.0], 0.1, hazard=4e38).ok_given_hazards
    assert not _verdict([np.inf], [1.0], [1.0], 0.1, hazard=0.5).ok_given_hazards
