"""Softmax -> linear: `softmax(z) @ V == (e^{z - m} @ V) / Σ e^{z - m}`, over tilings, merge trees and masks.

Properties: the library rule (tiles merged left to right) and arbitrary tilings with arbitrary merge trees (any
pairs, any argument order) are within the allowance in every dtype; fully masked rows are exact zeros in both
orders. Hazards: the unnormalised accumulator in a float16 accumulator, softmax without a max shift, and a merge
or finalisation that does not special-case fully masked tiles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from normfuse_ref import fusion
from normfuse_ref.fuzz import strategies as s
from normfuse_ref.fuzz.campaign import check_cell
from normfuse_ref.fuzz.rules import RULES, Case, assert_no_worse, evaluate, merge_tree, run, tile_states
from normfuse_ref.fuzz.strategies import MergeStep
from normfuse_ref.precision import DTYPES, Array, accumulation_dtype

SOFTMAX = RULES["softmax_linear"]
MERGE = RULES["online_softmax_merge"]
WITH_INF = [d for d in DTYPES if d != "float8_e4m3fn"]
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
def test_softmax_linear_no_worse_than_reference(dtype: str) -> None:
    """Wide-range and masked scores, the library's tiling, every accumulator: within the allowance, up to the
    stated hazard (the unnormalised accumulator overflowing a float16 accumulator), and the cell's statistics hold."""
    check_cell(SOFTMAX, dtype, acc=s.accumulators())


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_any_tiling_any_merge_tree_no_worse_than_reference(dtype: str) -> None:
    """Random partitions into tiles, random binary merge trees, random argument order: the merge is associative
    and commutative in real arithmetic, and within the allowance (which grows with the tree's depth) in floats."""
    check_cell(MERGE, dtype, acc=s.accumulators())


@pytest.mark.parametrize("dtype", WITH_INF)
@given(data=st.data())
def test_fully_masked_rows_are_zero_in_both_orders(dtype: str, data: st.DataObject) -> None:
    """A row with no visible key is defined to be all zeros: the reference and every tiling/merge tree agree
    exactly, and no NaN leaks into the other rows."""
    case = data.draw(MERGE.cases(dtype=dtype, rows="masked"), label="case")
    full = np.all(np.isneginf(case.arrays["z"].astype(np.float64)), axis=-1)
    out = run(MERGE, case)
    for o in (out.reference, out.fused, fusion.softmax_linear(case.arrays["z"], case.arrays["V"], tile_size=1)):
        assert np.all(o.astype(np.float64)[full] == 0)
        assert not np.any(np.isnan(o.astype(np.float64)))


# ---------------------------------------------------------------------------------------------------------------
# Hazard 1: the unnormalised accumulator overflows a float16 accumulator
# ---------------------------------------------------------------------------------------------------------------

# Shrunk by Hypothesis (test_float16_accumulator_overflow_is_found_by_the_fuzzer), pasted as literal data.
F16_ACC_OVERFLOW = Case(
    rule="softmax_linear",
    dtype="float16",
    arrays={
        "z": np.array([[0.0] * 32]).astype(DTYPES["float16"]),
        "V": np.array([[2048.0]] * 32).astype(DTYPES["float16"]),
    },
    order={"tile_size": None},
    acc="float16",
)


# reference: softmax(z) @ V
def normalised_online(z: Array, V: Array, *, tile_size: int | None, acc: str | None) -> Array:
    """Mitigation for a float16 accumulator: one-entry tiles and a running output kept normalised at every merge
    (o = o_a w_a + o_b w_b with w = l e^{m - m'} / l', FlashAttention-1 style): |o| <= max |V| throughout, at the
    price of a division per merge."""
    a = accumulation_dtype(z.dtype, acc)
    za, Va = z.astype(a), V.astype(a)  # (rows, n), (n, m)

    def leaf(i: int) -> fusion.SoftmaxState:
        t = fusion.softmax_tile_state(za[..., i : i + 1], Va[i : i + 1, :])
        return fusion.SoftmaxState(t.m, t.l, t.o / t.l)

    def merge(A: fusion.SoftmaxState, B: fusion.SoftmaxState) -> fusion.SoftmaxState:
        m = np.maximum(A.m, B.m)  # (rows, 1)
        wa, wb = A.l * np.exp(A.m - m), B.l * np.exp(B.m - m)  # (rows, 1)
        l = wa + wb
        return fusion.SoftmaxState(m, l, A.o * (wa / l) + B.o * (wb / l))

    return functools.reduce(merge, [leaf(i) for i in range(z.shape[-1])]).o.astype(z.dtype)


def test_float16_accumulator_overflow_hazard() -> None:
    """With a float16 accumulator the fused order's o = e^{z - m} @ V overflows while the reference's p @ V does not.

    Condition: acc = float16 and Σ_i e^{z_i - m} |V_ij| > 65504 for some output j - many keys scoring near the row
    max times large values (here 32 * 2048 = 65536; e.g. 4096 flat keys with |v| >= 16). The reference divides
    first (p <= 1) and only ever holds |p @ V| <= max|V|. Mitigations: accumulate in float32 (the policy for 16- and
    8-bit storage), or keep the running output normalised with tiles short enough (tile * max|V| <= 65504).
    """
    out = run(SOFTMAX, F16_ACC_OVERFLOW)
    assert np.all(np.isfinite(out.reference.astype(np.float64))) and np.isinf(out.fused.astype(np.float64)).all()
    assert not out.verdict.ok
    assert out.verdict.ok_given_hazards and out.verdict.overflow.all()  # the stated condition: Σ |V| > 65504
    policy = Case(F16_ACC_OVERFLOW.rule, "float16", F16_ACC_OVERFLOW.arrays, order=F16_ACC_OVERFLOW.order, acc=None)
    assert evaluate(SOFTMAX, policy).ok
    assert evaluate(SOFTMAX, F16_ACC_OVERFLOW, fused=normalised_online).ok


@st.composite
def _large_value_cases(draw: st.DrawFn, *, acc: str | None) -> Case:
    n = st.shared(st.integers(1, 64), key="ovf.n")
    m = st.shared(st.integers(1, 4), key="ovf.m")
    z = draw(s.score_rows(n=n, dtype="float16", max_spread=4.0))
    V = draw(s.finite_rows(n=m, rows=n, dtype="float16", min_scale=2.0**10, max_scale=2.0**13))
    return Case("softmax_linear", "float16", {"z": z, "V": V}, order={"tile_size": None}, acc=acc)


def test_float16_accumulator_overflow_is_found_by_the_fuzzer() -> None:
    case = find(_large_value_cases(acc="float16"), lambda c: not evaluate(SOFTMAX, c).ok, settings=FIND)
    assert np.isinf(run(SOFTMAX, case).fused.astype(np.float64)).any()


@given(data=st.data())
def test_float32_accumulation_never_overflows_on_large_values(data: st.DataObject) -> None:
    """The mitigation as a property, on the hazard's own inputs."""
    assert_no_worse(SOFTMAX, data.draw(_large_value_cases(acc=None), label="case"), strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Hazard 3: softmax without a max shift
# ---------------------------------------------------------------------------------------------------------------


# reference: softmax(z) @ V, but e^z without the shift by m (what the rule would be if the max were dropped)
def no_shift(z: Array, V: Array, *, tile_size: int | None, acc: str | None) -> Array:
    a = accumulation_dtype(z.dtype, acc)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e = np.exp(z.astype(a))  # (rows, n)
        return ((e @ V.astype(a)) / np.sum(e, axis=-1, keepdims=True)).astype(z.dtype)  # (rows, m)


def _small_score_cases(dtype: str) -> st.SearchStrategy[Case]:
    @st.composite
    def cases(draw: st.DrawFn) -> Case:
        n = st.shared(st.integers(1, 8), key="noshift.n")
        m = st.shared(st.integers(1, 3), key="noshift.m")
        z = draw(s.score_rows(n=n, dtype=dtype))
        V = draw(s.finite_rows(n=m, rows=n, dtype=dtype))
        return Case("softmax_linear", dtype, {"z": z, "V": V}, order={"tile_size": None})

    return cases()


# Shrunk by Hypothesis (test_no_shift_is_found_by_the_fuzzer): the overflow side. The underflow side is written by
# hand: every e^{z_j} underflows to 0 and the row becomes 0/0.
NO_SHIFT_OVERFLOW = Case(
    "softmax_linear",
    "float32",
    {"z": np.array([[96.0]]).astype(np.float32), "V": np.array([[0.0]]).astype(np.float32)},
    order={"tile_size": None},
)
NO_SHIFT_UNDERFLOW = Case(
    "softmax_linear",
    "float32",
    {"z": np.array([[-104.0]]).astype(np.float32), "V": np.array([[1.0]]).astype(np.float32)},
    order={"tile_size": None},
)


@pytest.mark.parametrize("case", [NO_SHIFT_OVERFLOW, NO_SHIFT_UNDERFLOW], ids=["overflow", "underflow"])
def test_no_max_shift_hazard(case: Case) -> None:
    """Without the max shift, e^z overflows (max z > log(max_acc) = 88.72 in float32) or every e^z underflows
    (max z < log(smallest subnormal) = -103.28): inf/inf or 0/0, NaN, where both orders with a shift are exact.

    Why the shift (and, without a global max, the online merge) is necessary: shifting by a running max keeps the
    largest exponent at e^0 = 1, so Σ e >= 1 and nothing overflows. Mitigation: the library's softmax_linear, whose
    tiles shift by their local max and whose merge rescales to the common one.
    """
    assert np.isnan(no_shift(**case.arrays, tile_size=None, acc=None).astype(np.float64)).all()
    assert not evaluate(SOFTMAX, case, fused=no_shift).ok
    assert evaluate(SOFTMAX, case).ok
    for tile in (1, None):
        fused = fusion.softmax_linear(case.arrays["z"], case.arrays["V"], tile_size=tile)
        np.testing.assert_array_equal(fused, run(SOFTMAX, case).reference)


def test_no_shift_is_found_by_the_fuzzer() -> None:
    case = find(_small_score_cases("float16"), lambda c: not evaluate(SOFTMAX, c, fused=no_shift).ok, settings=FIND)
    assert evaluate(SOFTMAX, case).ok


# ---------------------------------------------------------------------------------------------------------------
# Hazard 4: fully masked tiles in a naive merge / finalisation
# ---------------------------------------------------------------------------------------------------------------


# reference: fusion.online_softmax_merge (the -inf special cases removed)
def naive_merge(a: fusion.SoftmaxState, b: fusion.SoftmaxState) -> fusion.SoftmaxState:
    """The textbook merge without the -inf special case."""
    m = np.maximum(a.m, b.m)
    with np.errstate(invalid="ignore"):
        alpha, beta = np.exp(a.m - m), np.exp(b.m - m)  # -inf - (-inf) = NaN when both tiles are fully masked
    return fusion.SoftmaxState(m, a.l * alpha + b.l * beta, a.o * alpha + b.o * beta)


Merge = Callable[[fusion.SoftmaxState, fusion.SoftmaxState], fusion.SoftmaxState]


def _tree(c: Case, merge: Merge | None = None, *, naive_finalize: bool = False) -> Array:
    z, V = c.arrays["z"], c.arrays["V"]
    a = accumulation_dtype(z.dtype, c.acc)
    root = merge_tree(tile_states(z.astype(a), V.astype(a), list(c.order["tiles"])), list(c.order["merges"]), merge)
    if naive_finalize:
        with np.errstate(invalid="ignore"):
            return (root.o / root.l).astype(z.dtype)
    return fusion.softmax_finalize(root).astype(z.dtype)


# reference: softmax(z) @ V, any tiling and merge tree, with the textbook merge
def naive_tree(z: Array, V: Array, *, tiles: list[int], merges: list[MergeStep], acc: str | None) -> Array:
    a = accumulation_dtype(z.dtype, acc)
    root = merge_tree(tile_states(z.astype(a), V.astype(a), list(tiles)), list(merges), naive_merge)
    return fusion.softmax_finalize(root).astype(z.dtype)


# Both shrunk by Hypothesis (test_naive_merge_is_found_by_the_fuzzer), pasted as literal data.
NAIVE_MERGE = Case(
    "online_softmax_merge",
    "float32",
    {
        "z": np.array([[0.0, -np.inf, -np.inf, -np.inf]]).astype(np.float32),
        "V": np.array([[0.0]] * 4).astype(np.float32),
    },
    order={"tiles": [1, 1, 1, 1], "merges": [MergeStep(i=0, j=1, swap=False)] * 3},
)
NAIVE_FINALIZE = Case(
    "online_softmax_merge",
    "float32",
    {"z": np.array([[-np.inf]]).astype(np.float32), "V": np.array([[0.0]]).astype(np.float32)},
    order={"tiles": [1], "merges": []},
)


def test_masked_tiles_hazard() -> None:
    """A merge of two fully masked tiles computes e^{-inf - (-inf)} = NaN, and a fully masked row finalises to 0/0.

    Condition: two tiles with no visible key meet in a merge - here the row HAS a visible key (z_0 = 0) but the
    tree merges tiles 1..3, all masked, first (causal padding at the end of a row, sliding windows, or any tree
    order) - or a row has no visible key at all. Left-to-right merging of a causal row hides the first case,
    because the first tile is never fully masked. Mitigation: give a fully masked side weight 0 (and treat
    l = 0 as the defined zero row), as fusion.online_softmax_merge and softmax_finalize do.
    """
    assert np.isnan(_tree(NAIVE_MERGE, naive_merge).astype(np.float64)).all()
    assert not evaluate(MERGE, NAIVE_MERGE, fused=naive_tree).ok
    assert np.isnan(_tree(NAIVE_FINALIZE, naive_finalize=True).astype(np.float64)).all()
    for case in (NAIVE_MERGE, NAIVE_FINALIZE):
        np.testing.assert_array_equal(_tree(case), run(MERGE, case).exact.astype(np.float32))
        assert evaluate(MERGE, case).ok


def test_naive_merge_is_found_by_the_fuzzer() -> None:
    """Restricted to rows that are not fully masked: the naive merge alone breaks them."""

    @st.composite
    def cases(draw: st.DrawFn) -> Case:
        n = st.shared(st.integers(1, 8), key="naive.n")
        z = draw(s.masked_score_rows(n=n, rows=1, dtype="float32"))
        V = draw(s.finite_rows(n=1, rows=n, dtype="float32"))
        tiles = draw(s.tilings(n=z.shape[-1]))
        order = {"tiles": tiles, "merges": draw(s.merge_orders(tiles=len(tiles)))}
        return Case("online_softmax_merge", "float32", {"z": z, "V": V}, order=order)

    partial = lambda c: not np.all(np.isneginf(c.arrays["z"]))  # noqa: E731
    case = find(
        cases(),
        lambda c: partial(c) and not evaluate(MERGE, c, fused=naive_tree).ok,
        settings=FIND,
    )
    assert evaluate(MERGE, case).ok
