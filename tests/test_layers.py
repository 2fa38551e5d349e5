"""Reference layers against independent, deliberately naive implementations (loops over scalars, in float64)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normfuse_ref.accuracy import bounds as bd
from normfuse_ref.accuracy import oracle
from normfuse_ref.fuzz import strategies as fz
from normfuse_ref.layers import (
    RopeLayout,
    attention,
    layer_norm,
    linear,
    normalise_rows,
    rms_norm,
    rope,
    silu,
    softmax,
    swiglu,
)
from normfuse_ref.precision import DTYPES, Array
from tests.tolerances import assert_within

# float64 against a scalar loop: both evaluate the same formula with a different summation order; for the sizes
# here (n <= 64) the difference is a few n u of the magnitude: 1e-12 is ~100x that.
TOL = 1e-12


def naive_softmax_row(z: list[float]) -> list[float]:
    if all(v == -math.inf for v in z):
        return [0.0] * len(z)
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def test_softmax_matches_a_scalar_loop() -> None:
    rng = np.random.default_rng(0)
    z = 4 * rng.standard_normal((6, 17))
    z[3, ::2] = -np.inf
    z[4] = -np.inf
    want = np.array([naive_softmax_row(list(r)) for r in z])
    np.testing.assert_allclose(softmax(z), want, rtol=0, atol=TOL)


def test_a_row_with_no_visible_entry_divides_to_zeros_whatever_its_numerator() -> None:
    """normalise_rows defines a row with l = 0 as zeros: the fused order's o = e @ V of a fully masked row is 0 @ V,
    which is NaN where V holds an inf, and must still finalise to zeros (the other rows are divided as usual)."""
    o = np.array([[np.nan, 0.0, -np.inf], [2.0, -4.0, 6.0]])  # (2, 3)
    l = np.array([[0.0], [2.0]])  # (2, 1)
    np.testing.assert_array_equal(normalise_rows(o, l), [[0.0, 0.0, 0.0], [1.0, -2.0, 3.0]])


def test_layer_norm_and_rms_norm_match_scalar_loops() -> None:
    rng = np.random.default_rng(1)
    x, gamma, beta = rng.standard_normal((4, 9)) + 3, rng.standard_normal(9), rng.standard_normal(9)
    eps = 1e-5
    for r, got_ln, got_rms in zip(x, layer_norm(x, gamma, beta, eps), rms_norm(x, gamma, eps), strict=True):
        mu = sum(r) / len(r)
        var = sum((v - mu) ** 2 for v in r) / len(r)
        np.testing.assert_allclose(
            got_ln, [(v - mu) / math.sqrt(var + eps) * g + b for v, g, b in zip(r, gamma, beta, strict=True)], atol=TOL
        )
        ms = sum(v * v for v in r) / len(r)
        np.testing.assert_allclose(
            got_rms, [v / math.sqrt(ms + eps) * g for v, g in zip(r, gamma, strict=True)], atol=TOL
        )


def test_linear_silu_swiglu() -> None:
    rng = np.random.default_rng(2)
    x, Fg, Fu, Fd = (
        rng.standard_normal((3, 8)),
        rng.standard_normal((8, 5)),
        rng.standard_normal((8, 5)),
        rng.standard_normal((5, 4)),
    )
    want_lin = [[sum(x[i, k] * Fg[k, j] for k in range(8)) for j in range(5)] for i in range(3)]
    np.testing.assert_allclose(linear(x, Fg), want_lin, atol=TOL)
    np.testing.assert_allclose(
        silu(np.array([0.0, 1.0, -1.0, -800.0])), [0.0, 1 / (1 + math.exp(-1)), -1 / (1 + math.e), -0.0], atol=TOL
    )
    h = np.array(want_lin) / (1 + np.exp(-np.array(want_lin))) * (x @ Fu)
    np.testing.assert_allclose(swiglu(x, Fg, Fu, Fd), h @ Fd, atol=TOL)


def naive_rope_pair(u: float, v: float, p: int, i: int, hd: int, base: float) -> tuple[float, float]:
    t = p * base ** (-2 * i / hd)
    return u * math.cos(t) - v * math.sin(t), v * math.cos(t) + u * math.sin(t)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_matches_pairwise_rotation(layout: RopeLayout) -> None:
    rng = np.random.default_rng(3)
    T, hd, base = 5, 8, 500.0
    x = rng.standard_normal((T, hd))
    got = rope(x, np.arange(T), base=base, layout=layout)
    for p in range(T):
        for i in range(hd // 2):
            a, b = (i, i + hd // 2) if layout == "half" else (2 * i, 2 * i + 1)
            np.testing.assert_allclose(
                (got[p, a], got[p, b]), naive_rope_pair(x[p, a], x[p, b], p, i, hd, base), atol=TOL
            )


def test_rope_layouts_are_the_same_rotation_under_a_permutation() -> None:
    """Interleaved rope on x == half rope on x with its columns regrouped (the GGUF Q/K permutation)."""
    rng = np.random.default_rng(4)
    hd = 12
    x = rng.standard_normal((3, 2, hd))
    perm = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])  # interleaved index of each half slot
    pos = np.arange(3)[:, None]
    np.testing.assert_allclose(
        rope(x, pos, layout="interleaved")[..., perm], rope(x[..., perm], pos, layout="half"), atol=TOL
    )


def test_rope_preserves_norms_and_depends_only_on_relative_position() -> None:
    rng = np.random.default_rng(5)
    q, k = rng.standard_normal(16), rng.standard_normal(16)
    rq = rope(np.stack([q] * 20), np.arange(20))
    rk = rope(np.stack([k] * 20), np.arange(20))
    np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q), rtol=1e-13)
    np.testing.assert_allclose(rq[7] @ rk[3], rq[14] @ rk[10], rtol=1e-10)  # offset 4 both times


def naive_attention(q: Array, k: Array, v: Array, keep: Array) -> Array:
    """One query, one head at a time; kv head of query head h is h // G."""
    T, Hq, _ = q.shape
    S, Hkv, _ = k.shape
    out = np.zeros((T, Hq, v.shape[-1]))
    for h in range(Hq):
        kh = h // (Hq // Hkv)
        for t in range(T):
            scores = [float(q[t, h] @ k[j, kh]) / math.sqrt(q.shape[-1]) if keep[t, j] else -math.inf for j in range(S)]
            p = naive_softmax_row(scores)
            out[t, h] = sum(p[j] * v[j, kh] for j in range(S))
    return out


@pytest.mark.parametrize(("T", "S", "Hq", "Hkv"), [(4, 4, 4, 2), (1, 6, 6, 3), (3, 7, 2, 2), (5, 5, 4, 1)])
def test_attention_matches_per_head_loops_causal_gqa_and_decode_offset(T: int, S: int, Hq: int, Hkv: int) -> None:
    rng = np.random.default_rng(T * 100 + S)
    q, k, v = rng.standard_normal((T, Hq, 6)), rng.standard_normal((S, Hkv, 6)), rng.standard_normal((S, Hkv, 3))
    keep = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)  # the last T of S positions
    np.testing.assert_allclose(attention(q, k, v), naive_attention(q, k, v, keep), atol=TOL)


def test_attention_extra_mask_and_fully_masked_rows() -> None:
    rng = np.random.default_rng(6)
    q, k, v = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
    mask = np.array([[True, False, False], [False, True, True], [False, False, False]])  # row 2 sees nothing
    got = attention(q, k, v, causal=False, mask=mask)
    np.testing.assert_allclose(got, naive_attention(q, k, v, mask), atol=TOL)
    assert np.array_equal(got[2], np.zeros((2, 4)))


def test_batch_dimensions_equal_a_loop_over_the_batch() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 5, 8))
    g, F = rng.standard_normal(8), rng.standard_normal((8, 4))
    q, k, v = rng.standard_normal((2, 5, 4, 8)), rng.standard_normal((2, 5, 2, 8)), rng.standard_normal((2, 5, 2, 8))
    for b in range(2):
        np.testing.assert_array_equal(rms_norm(x, g)[b], rms_norm(x[b], g))
        np.testing.assert_allclose(linear(x, F)[b], linear(x[b], F), atol=TOL)
        np.testing.assert_allclose(attention(q, k, v)[b], attention(q[b], k[b], v[b]), atol=TOL)


@pytest.mark.parametrize("dt", list(DTYPES.values()), ids=lambda d: d.name)
def test_every_layer_returns_the_input_dtype(dt: np.dtype) -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 8)).astype(dt)
    w = (rng.standard_normal((8, 8)) / 4).astype(dt)
    g = np.ones(8, dt)
    q = rng.standard_normal((2, 2, 8)).astype(dt)
    outs = [softmax(x), layer_norm(x, g, g), rms_norm(x, g), linear(x, w), silu(x), swiglu(x, w, w, w),
            rope(x, np.arange(2)), attention(q, q, q)]  # fmt: skip
    assert all(o.dtype == dt for o in outs)


# ---------------------------------------------------------------------------------------------------------------
# The reference layers against the independent oracle, in every dtype and accumulator
# ---------------------------------------------------------------------------------------------------------------


def _within_their_bound(got: Array, exact: Array, bound: Array, what: str) -> None:
    """|layer - oracle| <= the layer's rigorous bound (accuracy.bounds, evaluated in its dtypes) + the oracle's own
    float64 bound: `bound` is their sum."""
    assert_within(got, exact, bound, what)


@pytest.mark.parametrize("dtype", list(DTYPES))
@given(data=st.data())
def test_layers_agree_with_the_independent_oracle(dtype: str, data: st.DataObject) -> None:
    """rms_norm, layer_norm, softmax and linear against `accuracy.oracle` (fsum loops, no shared helper): each
    within its own rounding bound. A bug in a helper the layers share with the fused rules (a mean over the wrong
    axis, an adder tree that drops a partial) cancels between the two orders but not here."""
    acc = data.draw(fz.accumulators(), label="acc")
    n = data.draw(st.integers(1, 80), label="n")
    x = data.draw(fz.finite_rows(n=n, rows=data.draw(st.integers(1, 3)), dtype=dtype), label="x")
    g = data.draw(fz.gains(n=n, dtype=dtype), label="g")
    beta = data.draw(fz.biases(n=n, dtype=dtype), label="beta")
    F = data.draw(fz.weights(n=n, m=data.draw(st.integers(1, 6)), dtype=dtype), label="F")
    eps = data.draw(fz.epsilons(), label="eps")
    P, P64 = bd.Precision.of(dtype, acc), bd.Precision.of("float64")
    X, G, B, W = bd.exact(x), bd.exact(g), bd.exact(beta), bd.exact(F)

    def bound(f: Callable[[bd.Precision], bd.Bounded]) -> Array:
        return bd.store(f(P), P).b + f(P64).b

    with np.errstate(all="ignore"):
        x64, g64, b64, F64 = (a.astype(np.float64) for a in (x, g, beta, F))
        _within_their_bound(
            rms_norm(x, g, eps, acc=acc), oracle.rms_norm(x64, g64, eps), bound(lambda p: bd.rms_norm_acc(X, G, eps, p)),
            "rms_norm",
        )  # fmt: skip
        _within_their_bound(
            layer_norm(x, g, beta, eps, acc=acc), oracle.layer_norm(x64, g64, b64, eps),
            bound(lambda p: bd.layer_norm_acc(X, G, B, eps, p)), "layer_norm",
        )  # fmt: skip
        _within_their_bound(
            linear(x, F, acc=acc), oracle.linear(x64, F64), bound(lambda p: bd.matmul(X, W, p)), "linear"
        )
        z = (8 * x).astype(x.dtype)
        _within_their_bound(
            softmax(z, acc=acc), oracle.softmax(z.astype(np.float64)), bound(lambda p: bd.softmax_acc(bd.exact(z), p)),
            "softmax",
        )  # fmt: skip
