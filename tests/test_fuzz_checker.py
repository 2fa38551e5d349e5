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


def _offset_float64_case(mu: float, seed_: int) -> Case:
    """LayerNorm -> linear on float64 rows x = mu + z, |mu| / sigma ~ mu: the fold on raw x (hazard 1) makes the
    fused errors ~mu times the reference's, while each row stays within its allowance (wide storage)."""
    rng = np.random.default_rng(seed_)
    n, m, r = 24, 8, 4
    arrays = {
        "x": mu + rng.standard_normal((r, n)),
        "gamma": 1 + 0.1 * rng.standard_normal(n),
        "beta": 0.1 * rng.standard_normal(n),
        "F": rng.standard_normal((n, m)),
    }
    return Case("layer_norm_linear", "float64", arrays, {"eps": 1e-5}, {}, "offset", None)


def test_rows_the_hazard_term_dominates_leave_the_cell_statistics() -> None:
    """The statistics' premise (the fused errors are another draw of the reference's) fails where the stated
    hazard term dwarfs what the reference actually erred: such rows are judged by the criterion alone. Without the
    rule, these correct float64 rows give a median error ratio far above MAX_MEDIAN_RATIO (a false alarm)."""
    from normfuse_ref.accuracy.equivalence import CellStatistics
    from normfuse_ref.fuzz.campaign import MAX_MEDIAN_RATIO, unit

    kept = CellStatistics()
    ratios = []
    for k in range(8):
        case = _offset_float64_case(1e4, k)
        out = run(RULES["layer_norm_linear"], case)
        assert out.verdict.ok  # each row within its allowance: a correct fused order
        ratios.extend(out.verdict.ratios.tolist())
        kept.add(out.fused, out.reference, out.exact, out.verdict, unit=unit(case))
    assert np.median(ratios) > MAX_MEDIAN_RATIO  # the premise does fail on these rows
    assert kept.rows == 32 and kept.ratios == [] and kept.slopes == []  # and they are left out
    assert kept.hazard_rows == 0  # not counted as the stated hazard's rows: that count is 16/8-bit storage's


def test_pooled_cell_statistics_are_the_union() -> None:
    from normfuse_ref.accuracy.equivalence import CellStatistics

    a = CellStatistics(examples=2, rows=5, unchecked=1, hazard_rows=1, ratios=[0.5], slopes=[0.1] * 10)
    b = CellStatistics(examples=3, rows=7, unchecked=2, hazard_rows=0, ratios=[1.5, 0.7], slopes=[-0.1] * 10)
    assert not a.resolved and not b.resolved  # fewer than 16 slopes: no interval
    a.pool(b)
    assert (a.examples, a.rows, a.unchecked, a.hazard_rows) == (5, 12, 3, 1)
    assert a.ratios == [0.5, 1.5, 0.7] and len(a.slopes) == 20 and a.resolved


def test_an_unresolved_statistically_checked_cell_draws_more_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_cell: a cell with many unchecked rows whose slopes cannot yet resolve the scale bias runs the next
    seed and pools the evidence, instead of failing for too few examples (or passing on them)."""
    from normfuse_ref.accuracy.equivalence import CellStatistics
    from normfuse_ref.fuzz import campaign

    seeds: list[int] = []

    def fake_run_cell(rule: Any, dtype: str, *, seed_value: int, **_: Any) -> campaign.CellResult:
        seeds.append(seed_value)
        stats = CellStatistics(examples=10, rows=10, unchecked=5, ratios=[1.0] * 10, slopes=[0.0] * 10)
        return campaign.CellResult(rule=rule.name, dtype=dtype, rows="mixed", acc=None, examples=10, stats=stats)

    monkeypatch.setattr(campaign, "run_cell", fake_run_cell)
    res = campaign.check_cell(RULES["layer_norm_linear"], "float64")
    assert len(seeds) == 2 and seeds[1] == seeds[0] + 1  # 10 slopes do not resolve, 20 do
    assert res.examples == 20 and res.stats.resolved and not res.problems()
