"""The fused rules agree with their reference compositions in every dtype, within the rigorous rounding bounds of
`normfuse_ref.accuracy` (|fused - ref| <= B_fused + hazard + B_ref: each order within its own bound of the exact
value); the checker says no to wrong rewrites; and the online merge holds for any split and tree."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import ArrayLike

from normfuse_ref.accuracy.equivalence import (
    RuleBounds,
    layer_norm_linear_bounds,
    rms_norm_linear_bounds,
    softmax_linear_bounds,
)
from normfuse_ref.fusion import (
    SoftmaxState,
    fold_layer_norm,
    fold_rms_norm,
    layer_norm_linear,
    layer_norm_linear_folded,
    online_softmax_merge,
    rms_norm_linear,
    rms_norm_linear_folded,
    softmax_finalize,
    softmax_linear,
    softmax_tile_state,
)
from normfuse_ref.layers import layer_norm, linear, rms_norm, softmax
from normfuse_ref.precision import DTYPES, Array, dtype_info
from tests.tolerances import assert_within

ALL_DTYPES = list(DTYPES.values())
f64 = np.float64


def orders_apart(b: RuleBounds) -> Array:
    """How far apart the two orders may be: each is within its own bound of the exact value (the fused order's
    including its stated hazard terms), so |fused - ref| <= B_fused + hazard + B_ref."""
    return b.fused + b.hazard + b.ref


def stored(rng_arrays: dict[str, ArrayLike], dt: np.dtype) -> dict[str, Array]:
    """The inputs rounded to the storage dtype.

    Values are first clipped to half the dtype's range so every stored input is finite (float8_e4m3fn has no
    infinity: 300 would be stored as NaN otherwise); "huge" then means huge for that dtype.
    """
    lim = dtype_info(dt).max / 2
    return {k: np.clip(v, -lim, lim).astype(dt) for k, v in rng_arrays.items()}


# ---------------------------------------------------------------------------------------------------------------
# Input families: ordinary, n = 1, eps-dominated, huge and tiny magnitudes, batched
# ---------------------------------------------------------------------------------------------------------------

FAMILIES = ["ordinary", "n1", "eps_dominated", "huge", "tiny", "batched"]


def norm_inputs(family: str, seed: int = 0) -> tuple[Array, float]:
    """Rows x for a normalisation and the eps to use with them."""
    rng = np.random.default_rng(seed)
    if family == "ordinary":
        return rng.standard_normal((5, 48)), 1e-5
    if family == "n1":
        return rng.standard_normal((5, 1)), 1e-5
    if family == "eps_dominated":  # mean(x^2) ~ 1e-8 << eps = 1e-2: s ~ 1/sqrt(eps), normalised x is tiny
        return 1e-4 * rng.standard_normal((5, 48)), 1e-2
    if family == "huge":  # within float16 range after normalisation; x itself ~ 100-1000
        return 300 * rng.standard_normal((5, 48)), 1e-5
    if family == "tiny":  # ~1e-3 with a tiny eps: s ~ 1e3; x^2 ~ 1e-6 is subnormal in float16, fine in float32 acc
        return 1e-3 * rng.standard_normal((5, 48)), 1e-9
    if family == "batched":
        return rng.standard_normal((2, 3, 4, 32)), 1e-5
    raise AssertionError(family)


@pytest.mark.parametrize("dt", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("family", FAMILIES)
def test_rms_norm_linear_matches_reference(dt: np.dtype, family: str) -> None:
    x0, eps = norm_inputs(family)
    n = x0.shape[-1]
    rng = np.random.default_rng(1)
    st = stored({"x": x0, "g": 1 + 0.1 * rng.standard_normal(n), "F": rng.standard_normal((n, 24)) / np.sqrt(n)}, dt)
    fused = rms_norm_linear(st["x"], st["g"], st["F"], eps)
    ref = linear(rms_norm(st["x"], st["g"], eps), st["F"])
    assert fused.dtype == ref.dtype == dt
    b = rms_norm_linear_bounds(st["x"], st["g"], st["F"], eps)
    assert_within(fused, ref, orders_apart(b), f"rms_norm_linear {family} {dt.name}")


@pytest.mark.parametrize("dt", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("family", FAMILIES)
def test_layer_norm_linear_matches_reference(dt: np.dtype, family: str) -> None:
    x0, eps = norm_inputs(family)
    n = x0.shape[-1]
    rng = np.random.default_rng(2)
    arrays = {
        "x": x0 + 0.5 * np.abs(x0).mean(),  # a modest mean offset, so the centring matters
        "gamma": 1 + 0.1 * rng.standard_normal(n),
        "beta": 0.1 * rng.standard_normal(n),
        "F": rng.standard_normal((n, 24)) / np.sqrt(n),
    }
    st = stored(arrays, dt)
    fused = layer_norm_linear(st["x"], st["gamma"], st["beta"], st["F"], eps)
    ref = linear(layer_norm(st["x"], st["gamma"], st["beta"], eps), st["F"])
    assert fused.dtype == ref.dtype == dt
    b = layer_norm_linear_bounds(st["x"], st["gamma"], st["beta"], st["F"], eps)
    assert_within(fused, ref, orders_apart(b), f"layer_norm_linear {family} {dt.name}")


def score_inputs(family: str, seed: int = 0) -> Array:
    rng = np.random.default_rng(seed)
    if family == "ordinary":
        return 3 * rng.standard_normal((5, 40))
    if family == "n1":
        return rng.standard_normal((5, 1))
    if family == "masked":  # some -inf entries, one row fully masked
        z = 3 * rng.standard_normal((5, 40))
        z[rng.random(z.shape) < 0.4] = -np.inf
        z[2] = -np.inf
        return z
    if family == "huge":  # a wide range: the max shift is what keeps exp finite
        return 200 * rng.standard_normal((5, 40))
    if family == "tiny":
        return 1e-4 * rng.standard_normal((5, 40))
    if family == "batched":
        return 3 * rng.standard_normal((2, 3, 40))
    raise AssertionError(family)


@pytest.mark.parametrize("tile_size", [None, 1, 7, 16])
@pytest.mark.parametrize("dt", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("family", ["ordinary", "n1", "masked", "huge", "tiny", "batched"])
def test_softmax_linear_matches_reference(dt: np.dtype, family: str, tile_size: int | None) -> None:
    z0 = score_inputs(family)
    n = z0.shape[-1]
    rng = np.random.default_rng(3)
    st = stored({"z": z0, "V": rng.standard_normal((n, 16))}, dt)
    fused = softmax_linear(st["z"], st["V"], tile_size=tile_size)
    ref = linear(softmax(st["z"]), st["V"])
    assert fused.dtype == ref.dtype == dt
    b = softmax_linear_bounds(st["z"], st["V"], tile_size=tile_size)
    assert_within(fused, ref, orders_apart(b), f"softmax_linear {family} {dt.name}")


def test_fully_masked_row_is_zero_in_both_orders() -> None:
    z = np.full((3, 8), -np.inf)
    V = np.arange(16.0).reshape(8, 2)
    assert np.array_equal(softmax(z), np.zeros((3, 8)))
    for t in (None, 1, 3):
        assert np.array_equal(softmax_linear(z, V, tile_size=t), np.zeros((3, 2)))


@pytest.mark.parametrize("rule", ["rms", "ln", "softmax"])
def test_nan_and_inf_make_the_whole_row_nan_in_both_orders(rule: str) -> None:
    rng = np.random.default_rng(4)
    n = 6
    x = rng.standard_normal((4, n))
    x[1, 2], x[2, 0] = np.nan, np.inf
    F = rng.standard_normal((n, 3))
    g, beta = 1 + 0.1 * rng.standard_normal(n), 0.1 * rng.standard_normal(n)
    pairs: dict[str, tuple[Callable[[], Array], Callable[[], Array]]] = {
        "rms": (lambda: rms_norm_linear(x, g, F), lambda: linear(rms_norm(x, g), F)),
        "ln": (lambda: layer_norm_linear(x, g, beta, F), lambda: linear(layer_norm(x, g, beta), F)),
        "softmax": (lambda: softmax_linear(x, F, tile_size=2), lambda: linear(softmax(x), F)),
    }
    with np.errstate(invalid="ignore"):
        fused, ref = (f() for f in pairs[rule])
    for out in (fused, ref):
        assert np.isnan(out[1]).all() and np.isnan(out[2]).all(), out
        assert np.isfinite(out[[0, 3]]).all()


# ---------------------------------------------------------------------------------------------------------------
# The checker can say no: wrong rewrites fail the same bound in float64 and float32
# ---------------------------------------------------------------------------------------------------------------


def wrong_rms_unfolded_gain(x: Array, g: Array, F: Array, eps: float) -> Array:
    s = 1 / np.sqrt(np.mean(x.astype(f64) ** 2, axis=-1, keepdims=True) + eps)
    return (s * (x @ F)).astype(x.dtype)  # forgets g


def wrong_ln_uncentred(x: Array, gamma: Array, beta: Array, F: Array, eps: float) -> Array:
    GF = gamma[:, None] * F  # forgets (I - E/n)
    d = x - x.mean(axis=-1, keepdims=True)
    s = 1 / np.sqrt(np.mean(d**2, axis=-1, keepdims=True) + eps)
    return (s * (x @ GF) + beta @ F).astype(x.dtype)


def wrong_merge_no_rescale(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    return SoftmaxState(m=np.maximum(a.m, b.m), l=a.l + b.l, o=a.o + b.o)  # forgets e^{m_a - m}


@pytest.mark.parametrize("dt", [np.dtype(np.float64), np.dtype(np.float32)], ids=lambda d: d.name)
def test_bound_rejects_wrong_rewrites(dt: np.dtype) -> None:
    rng = np.random.default_rng(5)
    n = 32
    x = (rng.standard_normal((4, n)) + 1).astype(dt)
    g = (1 + 0.3 * rng.standard_normal(n)).astype(dt)
    F = (rng.standard_normal((n, 8)) / np.sqrt(n)).astype(dt)
    ref = linear(rms_norm(x, g, 1e-5), F)
    limit = orders_apart(rms_norm_linear_bounds(x, g, F, 1e-5))
    assert_within(rms_norm_linear(x, g, F, 1e-5), ref, limit, "right rms")
    with pytest.raises(AssertionError, match="exceed the rounding bound"):
        assert_within(wrong_rms_unfolded_gain(x, g, F, 1e-5), ref, limit, "wrong rms")

    beta = (0.1 * rng.standard_normal(n)).astype(dt)
    ref = linear(layer_norm(x, g, beta, 1e-5), F)
    limit = orders_apart(layer_norm_linear_bounds(x, g, beta, F, 1e-5))
    assert_within(layer_norm_linear(x, g, beta, F, 1e-5), ref, limit, "right ln")
    with pytest.raises(AssertionError, match="exceed the rounding bound"):
        assert_within(wrong_ln_uncentred(x, g, beta, F, 1e-5), ref, limit, "wrong ln")

    z = (3 * rng.standard_normal((4, n))).astype(dt)
    ref = linear(softmax(z), F)
    limit = orders_apart(softmax_linear_bounds(z, F, tile_size=8))
    states = [softmax_tile_state(z[:, i : i + 8], F[i : i + 8]) for i in range(0, n, 8)]
    assert_within(softmax_finalize(_fold(online_softmax_merge, states)), ref, limit, "right merge")
    wrong = softmax_finalize(_fold(wrong_merge_no_rescale, states))
    with pytest.raises(AssertionError, match="exceed the rounding bound"):
        assert_within(wrong, ref, limit, "wrong merge")


def _fold(merge: Callable[[SoftmaxState, SoftmaxState], SoftmaxState], states: list[SoftmaxState]) -> SoftmaxState:
    acc = states[0]
    for s in states[1:]:
        acc = merge(acc, s)
    return acc


# ---------------------------------------------------------------------------------------------------------------
# The online-softmax merge: any split, any order, any tree
# ---------------------------------------------------------------------------------------------------------------


def _random_split(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    cuts = sorted(rng.choice(np.arange(1, n), size=rng.integers(0, min(6, n - 1) + 1), replace=False)) if n > 1 else []
    edges = [0, *cuts, n]
    return [(a, b) for a, b in itertools.pairwise(edges)]


def _merge_tree(rng: np.random.Generator, states: list[SoftmaxState]) -> SoftmaxState:
    """Merge the states in a random binary tree (random pairs of neighbours or not: the merge commutes)."""
    pool = list(states)
    while len(pool) > 1:
        i, j = rng.choice(len(pool), size=2, replace=False)
        merged = online_softmax_merge(pool[i], pool[j])
        pool = [s for k, s in enumerate(pool) if k not in (i, j)] + [merged]
    return pool[0]


@pytest.mark.parametrize("seed", range(25))
def test_merge_in_any_split_and_order_equals_one_shot_softmax(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    z = 5 * rng.standard_normal((3, n))
    z[rng.random(z.shape) < 0.2] = -np.inf  # masked entries, so some tiles are fully masked
    V = rng.standard_normal((n, 4))
    tiles = _random_split(rng, n)
    states = [softmax_tile_state(z[:, a:b], V[a:b]) for a, b in tiles]
    rng.shuffle(states)
    got = softmax_finalize(_merge_tree(rng, states))
    want = softmax(z) @ V
    # float64 throughout: each output is a convex combination of V rows, rescaled at most log2(tiles)+1 times;
    # each rescale and the exp carry a few ulps of |z| relative error: 64 (|z|max + n) u |V| is ample.
    u = 2.0**-53
    tol = 64 * (np.nanmax(np.abs(np.where(np.isinf(z), 0, z))) + n) * u * np.abs(V).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=f"split {tiles}")


def test_merge_with_fully_masked_side_is_identity() -> None:
    rng = np.random.default_rng(7)
    z, V = rng.standard_normal((2, 5)), rng.standard_normal((5, 3))
    live = softmax_tile_state(z, V)
    dead = softmax_tile_state(np.full((2, 4), -np.inf), rng.standard_normal((4, 3)))
    for merged in (online_softmax_merge(live, dead), online_softmax_merge(dead, live)):
        assert (
            np.array_equal(merged.m, live.m) and np.array_equal(merged.l, live.l) and np.array_equal(merged.o, live.o)
        )


# ---------------------------------------------------------------------------------------------------------------
# Folding, done once, applied many times
# ---------------------------------------------------------------------------------------------------------------


def test_rms_fold_equals_gamma_then_F() -> None:
    rng = np.random.default_rng(8)
    g, F, x = rng.standard_normal(12), rng.standard_normal((12, 5)), rng.standard_normal((3, 12))
    np.testing.assert_allclose(x @ fold_rms_norm(g, F), (x * g) @ F, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(fold_rms_norm(g, F), np.diag(g) @ F)  # exact: one product per element
    s = 1 / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(rms_norm_linear_folded(x, fold_rms_norm(g, F), 1e-6), s * (x * g) @ F, rtol=1e-13)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_layer_norm_fold_is_centred_gamma_F_with_zero_column_sums(n: int) -> None:
    rng = np.random.default_rng(n)
    gamma, beta, F = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal((n, 6))
    F_prime, b = fold_layer_norm(gamma, beta, F)
    E = np.ones((n, n))
    np.testing.assert_allclose(F_prime, (np.eye(n) - E / n) @ np.diag(gamma) @ F, rtol=0, atol=1e-13 * n)
    np.testing.assert_allclose(b, beta @ F, rtol=1e-13, atol=1e-13)
    # Column sums are zero up to the rounding of n terms of size |Gamma F|: n u max|Gamma F| per column.
    assert np.all(np.abs(F_prime.sum(axis=0)) <= n * 2.0**-52 * np.abs(gamma[:, None] * F).max() * n)
    x = rng.standard_normal((3, n)) + 2
    np.testing.assert_allclose(
        layer_norm_linear_folded(x, F_prime, b, 1e-5),
        linear(layer_norm(x, gamma, beta, 1e-5), F),
        rtol=1e-10,
        atol=1e-10,
    )


def test_fold_stores_in_the_weight_dtype_unless_told() -> None:
    g, F = np.ones(4, np.float32), np.ones((4, 2), np.float16)
    assert fold_rms_norm(g, F).dtype == np.float16
    assert fold_rms_norm(g, F, dtype=np.float32).dtype == np.float32
    F_prime, b = fold_layer_norm(g, g, F, dtype="bfloat16")
    assert F_prime.dtype.name == b.dtype.name == "bfloat16"


def test_explicit_accumulation_dtype_is_used() -> None:
    """A float16 accumulator overflows where the default float32 one does not: proof that `acc` is honoured."""
    x = np.full((1, 4), 200.0, np.float16)  # mean(x^2) = 40000 fits; the sum of squares 160000 does not
    g, F = np.ones(4, np.float16), np.eye(4, dtype=np.float16)
    assert np.isfinite(rms_norm_linear(x, g, F)).all()
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.mean(x * x, dtype=np.float16))  # what a float16 accumulator sees
        out = rms_norm_linear(x, g, F, acc=np.float16)
    assert np.array_equal(out, np.zeros_like(out))  # s = 1/sqrt(inf) = 0: the narrow accumulator's failure
