"""The paper's fused rules: defer the normalisation scale until after the following linear layer.

Each rule has the same arguments and result as its reference composition in `normfuse_ref.layers`, and a
*folded* form that takes weights folded once, offline (a model loader folds at load time and applies many times).
Why it pays (Salmani & Soloveychik, arXiv 2502.17728): the scale s needs a collective reduction over the whole
row; applied after the matmul, that collective runs on the SIMD units while the DIMC tiles do the matmul.

    RMSNorm -> linear    rms_norm(x, g) @ F                 == s * (x @ (g ⊙ F)),           s = 1/sqrt(mean x^2 + eps)
    LayerNorm -> linear  layer_norm(x, gamma, beta) @ F     == s * (x @ F') + beta @ F,     s = 1/sqrt(var + eps),
                                                               F' = (I - E/n) Gamma F  (centring folded into F)
    Softmax -> linear    softmax(z) @ V                     == (e^{z - m} @ V) / sum e^{z - m}

The softmax max m is itself a collective. `softmax_linear` therefore never takes a global max before the matmul:
the row is split into tiles, each tile keeps its own state (m, l, o) = (local max, local sum e^{z-m},
local e^{z-m} @ V), and tiles are combined with `online_softmax_merge`, the online-softmax rescaling rule. Merging
is associative and commutative in real arithmetic (proofs/online_softmax_merge.py), so any tiling and merge
order gives the same result up to rounding.

Rounding policy: a folded weight is computed in float64 and stored once in the weight's own dtype (what a DIMC
tile would hold); the matmul and the scale run in the accumulation dtype; the result is rounded once to x's dtype.
A fully masked softmax row gives zeros and NaN/Inf propagate, exactly as in the reference layers.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .layers import check_eps, check_matrix, check_rows, check_vector
from .precision import accumulation_dtype, as_float_array, matmul_acc, mean_acc, resolve_dtype, sum_acc

__all__ = [
    "SoftmaxState",
    "fold_layer_norm",
    "fold_rms_norm",
    "layer_norm_linear",
    "layer_norm_linear_folded",
    "online_softmax_merge",
    "rms_norm_linear",
    "rms_norm_linear_folded",
    "softmax_finalize",
    "softmax_linear",
    "softmax_tile_state",
]

Array = NDArray[Any]


# ---------------------------------------------------------------------------------------------------------------
# RMSNorm -> linear
# ---------------------------------------------------------------------------------------------------------------


def fold_rms_norm(g: ArrayLike, F: ArrayLike, *, dtype: DTypeLike | None = None) -> Array:
    """g ⊙ F = diag(g) F: row i of F scaled by g_i. Computed in float64, stored in `dtype` (default F's dtype)."""
    F = as_float_array(F, "F")
    if F.ndim != 2:
        raise ValueError(f"F must be a matrix (n, m); got shape {F.shape}")
    g = check_vector(g, "g", F.shape[0], "F", F.shape)
    out = resolve_dtype(dtype) if dtype is not None else F.dtype
    return (g.astype(np.float64)[:, None] * F.astype(np.float64)).astype(out)  # (n, m)


# reference: linear(rms_norm(x, g, eps), F)
def rms_norm_linear_folded(x: ArrayLike, F_g: ArrayLike, eps: float = 1e-6, *, acc: DTypeLike | None = None) -> Array:
    """s * (x @ F_g) with F_g = fold_rms_norm(g, F) and s = 1/sqrt(mean(x^2) + eps) applied after the matmul."""
    x = check_rows(x, "x")
    F_g = check_matrix(F_g, "F_g", x.shape[-1], "x", x.shape)
    eps = check_eps(eps)
    a = accumulation_dtype(x.dtype, acc)
    xa = x.astype(a)  # (..., n)
    y = matmul_acc(xa, F_g, a)  # (..., m)   DIMC: runs while the SIMD units compute s
    s = 1 / np.sqrt(mean_acc(xa * xa) + a.type(eps))  # (..., 1)   the collective
    return (s * y).astype(x.dtype)  # (..., m)


# reference: linear(rms_norm(x, g, eps), F)
def rms_norm_linear(
    x: ArrayLike, g: ArrayLike, F: ArrayLike, eps: float = 1e-6, *, acc: DTypeLike | None = None
) -> Array:
    """RMSNorm followed by a linear layer, with g folded into F and 1/rms applied after the matmul."""
    x = check_rows(x, "x")
    F = check_matrix(F, "F", x.shape[-1], "x", x.shape)
    return rms_norm_linear_folded(x, fold_rms_norm(g, F), eps, acc=acc)


# ---------------------------------------------------------------------------------------------------------------
# LayerNorm -> linear
# ---------------------------------------------------------------------------------------------------------------


def fold_layer_norm(
    gamma: ArrayLike, beta: ArrayLike, F: ArrayLike, *, dtype: DTypeLike | None = None
) -> tuple[Array, Array]:
    """The paper's fold: F' = (I - E/n) Gamma F and the bias b = beta @ F.

    (I - E/n) subtracts from each row of Gamma F the column mean, so F' has zero column sums (exactly in real
    arithmetic; to one rounding of F' in its stored dtype here). Computed in float64, stored in `dtype`
    (default F's dtype).
    """
    F = as_float_array(F, "F")
    if F.ndim != 2:
        raise ValueError(f"F must be a matrix (n, m); got shape {F.shape}")
    n = F.shape[0]
    gamma = check_vector(gamma, "gamma", n, "F", F.shape)
    beta = check_vector(beta, "beta", n, "F", F.shape)
    out = resolve_dtype(dtype) if dtype is not None else F.dtype
    GF = gamma.astype(np.float64)[:, None] * F.astype(np.float64)  # (n, m)   Gamma F
    F_prime = GF - GF.mean(axis=0, keepdims=True)  # (n, m)   (I - E/n) Gamma F
    b = beta.astype(np.float64) @ F.astype(np.float64)  # (m,)
    return F_prime.astype(out), b.astype(out)


# reference: linear(layer_norm(x, gamma, beta, eps), F)
def layer_norm_linear_folded(
    x: ArrayLike, F_prime: ArrayLike, b: ArrayLike, eps: float = 1e-5, *, acc: DTypeLike | None = None
) -> Array:
    """s * (x @ F') + b with (F', b) = fold_layer_norm(gamma, beta, F) and s = 1/sqrt(var + eps) after the matmul.

    The matmul sees raw x: the centring lives in F'. Only the variance is still a collective (it needs mu too,
    computed beside it on the SIMD side; two-pass, as in the reference).
    """
    x = check_rows(x, "x")
    F_prime = check_matrix(F_prime, "F_prime", x.shape[-1], "x", x.shape)
    b = as_float_array(b, "b")
    if b.shape != (F_prime.shape[1],):
        raise ValueError(
            f"b has shape {b.shape} but F_prime has shape {F_prime.shape}; expected b of shape ({F_prime.shape[1]},)"
        )
    eps = check_eps(eps)
    a = accumulation_dtype(x.dtype, acc)
    xa = x.astype(a)  # (..., n)
    y = matmul_acc(xa, F_prime, a)  # (..., m)   DIMC: runs while the SIMD units compute s
    mu = mean_acc(xa)  # (..., 1)
    d = xa - mu  # (..., n)
    s = 1 / np.sqrt(mean_acc(d * d) + a.type(eps))  # (..., 1)   the collective
    return (s * y + b.astype(a)).astype(x.dtype)  # (..., m)


# reference: linear(layer_norm(x, gamma, beta, eps), F)
def layer_norm_linear(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike,
    F: ArrayLike,
    eps: float = 1e-5,
    *,
    acc: DTypeLike | None = None,
) -> Array:
    """LayerNorm followed by a linear layer, with centring and gain folded into F' and 1/sigma after the matmul."""
    x = check_rows(x, "x")
    F = check_matrix(F, "F", x.shape[-1], "x", x.shape)
    F_prime, b = fold_layer_norm(gamma, beta, F)
    return layer_norm_linear_folded(x, F_prime, b, eps, acc=acc)


# ---------------------------------------------------------------------------------------------------------------
# Softmax -> linear, and the online-softmax merge
# ---------------------------------------------------------------------------------------------------------------


class SoftmaxState(NamedTuple):
    """What one tile of a softmax row knows: m (..., 1) its max, l (..., 1) sum e^{z - m}, o (..., m) e^{z - m} @ V.

    A tile with no visible entries has m = -inf, l = 0, o = 0; the merge treats it as the identity.
    """

    m: Array
    l: Array
    o: Array


def softmax_tile_state(z_tile: Array, V_tile: Array) -> SoftmaxState:
    """The state of one tile, computed in the arrays' own (accumulation) dtype, no collective needed."""
    m = np.max(z_tile, axis=-1, keepdims=True)  # (..., 1)   local max only
    m_shift = np.where(np.isneginf(m), 0, m)  # (..., 1)   an all-masked tile shifts by 0: its e^z are all 0
    with np.errstate(invalid="ignore"):  # +inf - +inf -> NaN on purpose: +inf in a row gives a NaN row
        p = np.exp(z_tile - m_shift)  # (..., n_t)
    return SoftmaxState(m=m, l=sum_acc(p), o=matmul_acc(p, V_tile, p.dtype))


def online_softmax_merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """Combine two tiles' states: rescale each to the common max m = max(m_a, m_b), then add.

        l = l_a e^{m_a - m} + l_b e^{m_b - m},   o = o_a e^{m_a - m} + o_b e^{m_b - m}

    A side whose max is -inf (all masked) gets weight 0 instead of e^{-inf - (-inf)} = NaN. NaN maxima propagate.
    """
    m = np.maximum(a.m, b.m)  # (..., 1)
    with np.errstate(invalid="ignore"):  # -inf - -inf is replaced just below
        alpha = np.where(np.isneginf(a.m), 0, np.exp(a.m - m))  # (..., 1)
        beta = np.where(np.isneginf(b.m), 0, np.exp(b.m - m))  # (..., 1)
    return SoftmaxState(m=m, l=a.l * alpha + b.l * beta, o=a.o * alpha + b.o * beta)


def softmax_finalize(state: SoftmaxState) -> Array:
    """The deferred division o / l; a row with l = 0 (fully masked) is defined to be zeros."""
    l = state.l
    return np.where(l == 0, 0, state.o / np.where(l == 0, 1, l)).astype(state.o.dtype)


# reference: softmax(z) @ V
def softmax_linear(z: ArrayLike, V: ArrayLike, *, tile_size: int | None = None, acc: DTypeLike | None = None) -> Array:
    """softmax(z) @ V with the denominator applied after the matmul and no global max before it.

    z (..., n) scores; V (n, m), or (..., n, m) with the same leading axes as z (as in per-head attention, z of
    shape (H, T, n) and V of shape (H, n, m)). The row is split into tiles of `tile_size` entries (default: one
    tile), each tile's state is computed locally, and the states are merged left to right.
    """
    z = check_rows(z, "z")
    V = as_float_array(V, "V")
    n = z.shape[-1]
    if V.ndim < 2 or V.shape[-2] != n or (V.ndim > 2 and V.shape[:-2] != z.shape[:-2]):
        raise ValueError(
            f"V has shape {V.shape} but z has shape {z.shape}; expected V of shape ({n}, m) or {(*z.shape[:-2], n)} + (m,)"
        )
    if tile_size is not None and tile_size < 1:
        raise ValueError(f"tile_size must be >= 1; got {tile_size}")
    a = accumulation_dtype(z.dtype, acc)
    za, Va = z.astype(a), V.astype(a)
    t = n if tile_size is None else tile_size
    states = [softmax_tile_state(za[..., i : i + t], Va[..., i : i + t, :]) for i in range(0, n, t)]
    return softmax_finalize(functools.reduce(online_softmax_merge, states)).astype(z.dtype)  # (..., m)
