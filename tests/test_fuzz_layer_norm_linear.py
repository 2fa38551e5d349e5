"""LayerNorm -> linear: `layer_norm(x, gamma, beta) @ F == s * (x @ F') + beta @ F`, F' = (I - E/n) Gamma F.

The finding: the fold F' has zero column sums, the *stored* fold does not, and the fused matmul sees raw x =
d + mu. So the fused result carries an extra error mu * s * r_j, r_j = Σ_i fl(F')_ij (the residual column sum),
which grows with |mu|/sigma - the centring hazard. In float32/float64 storage the reference has an error of the
same order (its own mean), so the rule is within the allowance for all rows there (measured: the fused order's RMS
error saturates at ~4.5x the reference's, whatever |mu|/sigma); in 16- and 8-bit storage it is equivalent only for
(nearly) centred rows. The main property draws offset rows in every dtype and states the condition: a row may
exceed the allowance only by its centring term |mu| s Σ_i ρ_ij (`RuleBounds.hazard`). Three mitigations pass
everywhere (properties below), each an option of `fusion.layer_norm_linear` (`fold_dtype=`,
`centring="compensate"`, `centring="subtract"`), and the rule without them fails the same property (docs/hazards.md,
docs/accuracy.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from normfuse_ref import fusion
from normfuse_ref.fuzz import strategies as s
from normfuse_ref.fuzz.campaign import check_cell, run_cell
from normfuse_ref.fuzz.profiles import active
from normfuse_ref.fuzz.rules import RULES, Case, assert_no_worse, evaluate, run
from normfuse_ref.fuzz.strategies import offset_ratio
from normfuse_ref.precision import DTYPES, Array

RULE = RULES["layer_norm_linear"]
NARROW = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]
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
def test_layer_norm_linear_no_worse_than_reference(dtype: str) -> None:
    """Finite, outlier, offset and eps-dominated rows in every dtype and accumulator. Where the centring hazard
    applies (offset rows in 16/8-bit storage), the rows that exceed the allowance must be within it plus their
    centring term (the stated condition), and are counted."""
    check_cell(RULE, dtype, acc=s.accumulators())


def test_offset_rows_need_the_stated_hazard_in_narrow_storage() -> None:
    """The property above does meet the hazard: offset rows in bfloat16 exceed the plain allowance, each within its
    centring term; in float32 none does (a property that never met its condition would state nothing).

    Only rows and their stated condition are judged here (no counterexample, hazard rows present), not the cell's
    statistics: in an offset-only bfloat16 cell most rows are in the hazard's regime, which the scale-bias
    statistic leaves out by design, so whether 200 examples leave the 16 it needs depends on the draws (and
    Hypothesis mixes constants from every loaded module into them). The cell statistics of offset rows are judged
    in the property above, where they are drawn among the other families."""
    profile = active()
    narrow = run_cell(RULE, "bfloat16", rows="offset", examples=profile.cell_examples, seed_value=0)
    wide = run_cell(RULE, "float32", rows="offset", examples=profile.cell_examples, seed_value=0)
    assert not narrow.found and not wide.found, narrow.explanation or wide.explanation
    assert narrow.stats.hazard_rows > 0
    assert wide.stats.hazard_rows == 0


# ---------------------------------------------------------------------------------------------------------------
# The centring hazard
# ---------------------------------------------------------------------------------------------------------------


def _one_hot_case(dtype: str, x: list[float], j: int, f: float) -> Case:
    n = len(x)
    F = np.zeros((n, 1))
    F[j, 0] = f
    dt = DTYPES[dtype]
    return Case(
        "layer_norm_linear",
        dtype,
        {
            "x": np.array([x]).astype(dt),
            "gamma": np.ones(n).astype(dt),
            "beta": np.zeros(n).astype(dt),
            "F": F.astype(dt),
        },
        {"eps": 1e-05},
        family="offset",
    )


# Shrunk by Hypothesis (`find` over offset rows with |mu|/sigma >= 2 and one-hot weight columns, gamma = 1,
# beta = 0; the search is test_centring_hazard_is_found_by_the_fuzzer), pasted as literal data.
CENTRING = {
    "float16": _one_hot_case("float16", [1.25, 0.75] * 3, 0, 1.0),
    "bfloat16": _one_hot_case("bfloat16", [1.25, 0.75] * 2, 0, 0.9296875),
    "float8_e4m3fn": _one_hot_case("float8_e4m3fn", [1.25, 0.75, 1.25, 0.75, 1.25], 0, 0.0625),
    "float8_e5m2": _one_hot_case("float8_e5m2", [2.5, 5.0, 1.75, 1.75, 1.75, 1.75], 0, 1.0),
}

# The sigma -> 0 limit, shrunk by Hypothesis from plain finite rows: a constant row. The exact output is beta @ F = 0
# and the reference returns exactly 0; the fused order returns s * mu * r = r / sqrt(eps), with s capped only by eps.
CONSTANT_ROW_BF16 = Case(
    rule="layer_norm_linear",
    dtype="bfloat16",
    arrays={
        "x": np.array([[1.0] * 13]).astype(DTYPES["bfloat16"]),
        "gamma": np.array([1.0] * 13).astype(DTYPES["bfloat16"]),
        "beta": np.array([0.0] * 13).astype(DTYPES["bfloat16"]),
        "F": np.array(
            [
                [0.034912109375, -0.03662109375, 0.177734375, 0.029052734375, -0.1484375],
                [0.10009765625, 0.361328125, 0.26171875, -0.1953125, -0.3515625],
                [-0.1728515625, 0.011474609375, -0.64453125, -0.060791015625, -0.345703125],
                [-0.203125, -0.1513671875, -0.087890625, 0.1142578125, 0.2890625],
                [-0.03564453125, 0.37890625, -0.1845703125, 0.09765625, 0.25],
                [0.026123046875, -0.2060546875, -0.255859375, -0.126953125, 0.06103515625],
                [-0.279296875, -0.05810546875, -0.044189453125, 0.150390625, 0.0595703125],
                [0.0986328125, -0.181640625, -0.035888671875, 0.2177734375, 0.4140625],
                [-0.349609375, 0.419921875, 0.373046875, 0.216796875, 0.0732421875],
                [-0.0869140625, 0.404296875, 0.54296875, 0.5, 0.365234375],
                [0.09912109375, -0.3359375, -0.0012359619140625, 0.181640625, -0.357421875],
                [0.109375, 0.119140625, 0.193359375, -0.328125, -0.18359375],
                [-0.12109375, -0.32421875, 0.482421875, -0.1376953125, 0.09130859375],
            ]
        ).astype(DTYPES["bfloat16"]),
    },
    params={"eps": 1e-05},
)


# --- the mitigations: options of the library's rule (fusion.layer_norm_linear), each a drop-in fused order --------


# reference: linear(layer_norm(x, gamma, beta, eps), F)
def wide_fold(x: Array, gamma: Array, beta: Array, F: Array, eps: float, *, acc: str | None) -> Array:
    """Fold into float32 (the DIMC tile stores F' wider than the activations): r_j shrinks to u_32 size."""
    return fusion.layer_norm_linear(x, gamma, beta, F, eps, acc=acc, fold_dtype=np.float32)


# reference: linear(layer_norm(x, gamma, beta, eps), F)
def compensated(x: Array, gamma: Array, beta: Array, F: Array, eps: float, *, acc: str | None) -> Array:
    """Keep the fold in F's dtype, store r = column sums of the *stored* F' (offline, m numbers) and subtract mu * r
    after the matmul, beside the scale: s * (x @ F~' - mu r) + b == s * ((x - mu) @ F~') + b. mu is already computed
    for the variance, so no new collective enters the matmul's critical path."""
    return fusion.layer_norm_linear(x, gamma, beta, F, eps, acc=acc, centring="compensate")


# reference: linear(layer_norm(x, gamma, beta, eps), F)
def mean_first(x: Array, gamma: Array, beta: Array, F: Array, eps: float, *, acc: str | None) -> Array:
    """Subtract the mean before the matmul: exact, but mu (a collective) is back on the matmul's critical path."""
    return fusion.layer_norm_linear(x, gamma, beta, F, eps, acc=acc, centring="subtract")


MITIGATIONS: dict[str, Callable[..., Array]] = {
    "wide_fold": wide_fold,
    "compensated": compensated,
    "mean_first": mean_first,
}


@pytest.mark.parametrize("dtype", NARROW)
def test_centring_hazard(dtype: str) -> None:
    """The fused order is worse when |mu|/sigma is large and the fold is stored in a narrow dtype.

    Condition: the fused error gains mu * s * r_j, r_j = Σ_i (fl(F')_ij - F'_ij) <= u_fold Σ_i |F'_ij|, against a
    reference error of order u_s |h| @ |F|: it shows once |mu|/sigma * |r_j| exceeds that - from |mu|/sigma ~ 1
    when r_j is one or a few coherent roundings (a sparse weight column, as here: in bfloat16, F' = f (e_0 - 1/4)
    has the entry 3f/4 = 0.697..., which needs 9 significant bits, so r = -0.00195 and mu s r = -0.0078) to
    |mu|/sigma ~ sqrt(n) for random weights, whose roundings partly cancel. Only 16- and 8-bit
    storage: there u_fold = u_s >> u_acc; in float32/float64 the reference's own mean has an error of this size.
    Mitigations: fold in float32, compensate mu * r, or subtract the mean first (all three checked here).
    """
    case = CENTRING[dtype]
    assert np.all(offset_ratio(case.arrays["x"]) >= 2)
    v = evaluate(RULE, case)
    assert not v.ok, "the pinned counterexample no longer fails: re-check the fold (docs/hazards.md)"
    assert v.hazard.max() >= v.err_fused.max() - v.atol.max()
    for name, f in MITIGATIONS.items():
        assert evaluate(RULE, case, fused=f).ok, name


def test_centring_hazard_constant_row() -> None:
    """sigma -> 0: a constant row, exact output 0, reference exactly 0, fused about -1.5 in bfloat16."""
    v = evaluate(RULE, CONSTANT_ROW_BF16)
    assert v.err_ref.max() == 0 and v.err_fused.max() > 1.0 and not v.ok
    for name, f in MITIGATIONS.items():
        assert evaluate(RULE, CONSTANT_ROW_BF16, fused=f).ok, name


@st.composite
def _offset_one_hot_cases(draw: st.DrawFn, *, dtype: str) -> Case:
    n = draw(st.integers(2, 8))
    x = draw(s.offset_rows(n=n, dtype=dtype, min_ratio=2))
    j, f = draw(st.integers(0, n - 1)), draw(st.floats(0.0625, 1.0))
    return _one_hot_case(dtype, [float(v) for v in x[0].astype(np.float64)], j, f)


def test_centring_hazard_is_found_by_the_fuzzer() -> None:
    """Hypothesis finds (and shrinks to) the bfloat16 counterexample pinned above."""
    case = find(_offset_one_hot_cases(dtype="bfloat16"), lambda c: not evaluate(RULE, c).ok, settings=FIND)
    assert case.arrays["x"].shape[-1] <= 8
    assert evaluate(RULE, case, fused=compensated).ok


@pytest.mark.parametrize("mitigation", list(MITIGATIONS))
@pytest.mark.parametrize("dtype", NARROW)
@given(data=st.data())
def test_mitigation_is_no_worse_than_reference(dtype: str, mitigation: str, data: st.DataObject) -> None:
    """Each mitigation, as a property, on the rows where the library's fold fails (offset rows; finite rows, which
    include near-constant ones) and on outlier rows, with the same allowance."""
    rows = data.draw(st.sampled_from(["offset", "finite", "outlier"]), label="rows")
    case = data.draw(RULE.cases(dtype=dtype, rows=rows), label="case")
    assert_no_worse(RULE, case, fused=MITIGATIONS[mitigation], strict=True)


@pytest.mark.parametrize("dtype", NARROW)
def test_the_unmitigated_rule_fails_the_mitigations_property(dtype: str) -> None:
    """The property above can fail: on the same offset rows, Hypothesis finds a case where the rule without a
    mitigation is worse than the reference by more than the allowance (strictly: its hazard term counts against it),
    and every mitigation passes that very case."""
    cases = RULE.cases(dtype=dtype, rows="offset")
    case = find(cases, lambda c: not (v := evaluate(RULE, c)).exact_is_zero and not v.ok, settings=FIND)
    for name, f in MITIGATIONS.items():
        assert evaluate(RULE, case, fused=f).ok, name


def test_demo_gap_in_fp8_is_the_centring_hazard() -> None:
    """`normfuse demo` shows layer_norm->linear fused 0.375 vs reference 0.244 in float8_e5m2 (rows ~ N(0.5, 1),
    so |mu|/sigma = 0.5). It passes the criterion (the worst-case allowance is wide at n = 256), but it is not
    noise: over 40 seeds of the demo's inputs the fused order's RMS error is ~1.7x the reference's, RMSNorm ->
    linear's is below 1, and folding into float32 brings LayerNorm below 1 too."""

    def rms_ratio(fused: Callable[..., Array] | None, rule: str = "layer_norm_linear") -> float:
        ratios = []
        for seed in range(40):
            rng = np.random.default_rng(seed)
            n, m = 256, 64
            x = rng.standard_normal((4, n)) + 0.5
            gamma, beta = 1 + 0.1 * rng.standard_normal(n), 0.1 * rng.standard_normal(n)
            F = rng.standard_normal((n, m)) / np.sqrt(n)
            dt = DTYPES["float8_e5m2"]
            arrays = (
                {"x": x, "gamma": gamma, "beta": beta, "F": F}
                if rule == "layer_norm_linear"
                else {"x": x, "g": gamma, "F": F}
            )
            case = Case(rule, "float8_e5m2", {k: v.astype(dt) for k, v in arrays.items()}, {"eps": 1e-5})
            out = run(RULES[rule], case, fused=fused)
            e_ref = out.reference.astype(np.float64) - out.exact
            e_fus = out.fused.astype(np.float64) - out.exact
            ratios.append(np.sqrt(np.mean(e_fus**2) / np.mean(e_ref**2)))
        return float(np.median(ratios))

    assert rms_ratio(None) > 1.4
    assert rms_ratio(None, "rms_norm_linear") < 1.0
    assert rms_ratio(wide_fold) < 1.0
