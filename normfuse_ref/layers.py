"""Reference (textbook-order) Transformer layers, as pure functions of NumPy arrays.

Conventions (docs/notation.md, "Notation"):
- Row vectors: `y = x @ F`, x of shape (..., n), F of shape (n, m). Any leading batch dimensions.
- Every layer takes its inputs in a storage dtype (see `normfuse_ref.precision`), computes in the accumulation
  dtype `acc` (default: float32 for 16- and 8-bit storage, the input dtype otherwise) and rounds its result once,
  back to the dtype of its first array argument. A composite layer (`swiglu`, `attention`) is one layer: it keeps
  its intermediates in `acc` and rounds once at the end.
- Bad input raises at once: ValueError naming both shapes for a shape mismatch (never a silent broadcast),
  TypeError for integer/bool/complex arrays, ValueError for eps <= 0 or an empty last axis.
- NaN and Inf propagate: a NaN or an infinity anywhere in a normalised row makes that whole row NaN (for softmax,
  -inf is a mask and is not an error, +inf gives NaN). A fully masked softmax row (all -inf) is defined to be all
  zeros, so attention over no visible keys returns zeros. The fused rules in `normfuse_ref.fusion` do the same.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .precision import Array, accumulation_dtype, as_float_array, matmul_acc, mean_acc, sum_acc

__all__ = [
    "attention",
    "layer_norm",
    "linear",
    "normalise_rows",
    "rms_norm",
    "rope",
    "shifted_exp",
    "silu",
    "softmax",
    "swiglu",
]

RopeLayout = Literal["half", "interleaved"]


# ---------------------------------------------------------------------------------------------------------------
# Validation shared by the layers and the fused rules
# ---------------------------------------------------------------------------------------------------------------


def check_rows(x: ArrayLike, name: str) -> Array:
    """`x` as a floating array with at least one axis and a non-empty last axis."""
    arr = as_float_array(x, name)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last axis; got shape {arr.shape}")
    return arr


def check_vector(v: ArrayLike, name: str, n: int, x_name: str, x_shape: tuple[int, ...]) -> Array:
    """`v` as a floating vector of length n, the last axis of `x_name`."""
    arr = as_float_array(v, name)
    if arr.shape != (n,):
        raise ValueError(
            f"{name} has shape {arr.shape} but {x_name} has shape {x_shape}; expected {name} of shape ({n},)"
        )
    return arr


def check_matrix(F: ArrayLike, name: str, n: int, x_name: str, x_shape: tuple[int, ...]) -> Array:
    """`F` as a floating (n, m) matrix whose n matches the last axis of `x_name`."""
    arr = as_float_array(F, name)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(
            f"{name} has shape {arr.shape} but {x_name} has shape {x_shape}; expected {name} of shape ({n}, m)"
        )
    return arr


def check_eps(eps: float) -> float:
    """eps must be a finite positive number (it keeps 1/sqrt(var + eps) finite)."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a finite number > 0; got {eps!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"eps must be finite and > 0; got {eps!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Softmax
# ---------------------------------------------------------------------------------------------------------------


# The two helpers every softmax in normfuse uses (the reference layer, the fused rule's tiles and its deferred
# division, the forward pass in both orders): a fully masked row is handled here and nowhere else.


def shifted_exp(z: Array, m: Array) -> Array:
    """e^{z - m} over rows, in z's dtype, with m (..., 1) the row's shift (its max, or a tile's local max).

    A fully masked row (every entry -inf, so m = -inf) is shifted by 0 instead: its exponentials are all 0 rather
    than e^{-inf - (-inf)} = NaN. +inf in a row gives NaN on purpose (+inf - +inf): a NaN row, as documented above.
    One new array, exponentiated in place.
    """
    with np.errstate(invalid="ignore"):
        e = np.subtract(z, np.where(np.isneginf(m), 0, m).astype(z.dtype))  # (..., n)
        return np.exp(e, out=e)


def normalise_rows(o: Array, l: Array) -> Array:
    """o / l per row (l of shape (..., 1)); a row with l = 0 has no visible entry and is defined to be zeros.

    The softmax's division (o = e^{z - m}, or the fused order's deferred o = e^{z - m} @ V); l >= 1 for every
    row with a visible entry, since its largest exponential is e^0.
    """
    empty = l == 0  # (..., 1)
    out = o / np.where(empty, 1, l)  # (..., m)
    if empty.any():  # (a pass over every row otherwise)
        np.copyto(out, 0, where=empty)
    return out


def softmax_acc(za: Array) -> Array:
    """Softmax over the last axis, computed and returned in za's own dtype (the accumulation dtype).

    Shift by the row max m so exp never overflows (`shifted_exp`); a fully masked row is all zeros rather than
    0/0 (`normalise_rows`).
    """
    m = np.max(za, axis=-1, keepdims=True)  # (..., 1)
    e = shifted_exp(za, m)  # (..., n)
    return normalise_rows(e, sum_acc(e))  # (..., n)


def softmax(z: ArrayLike, *, acc: DTypeLike | None = None) -> Array:
    """softmax(z) over the last axis: e^{z - m} / sum e^{z - m}, m = max z. All -inf rows give zeros."""
    z = check_rows(z, "z")
    a = accumulation_dtype(z.dtype, acc)
    return softmax_acc(z.astype(a)).astype(z.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Normalisations
# ---------------------------------------------------------------------------------------------------------------


def layer_norm(
    x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, eps: float = 1e-5, *, acc: DTypeLike | None = None
) -> Array:
    """LayerNorm: (x - mu) / sqrt(var + eps) * gamma + beta, mu and var over the last axis (two-pass variance)."""
    x = check_rows(x, "x")
    n = x.shape[-1]
    gamma = check_vector(gamma, "gamma", n, "x", x.shape)
    beta = check_vector(beta, "beta", n, "x", x.shape)
    eps = check_eps(eps)
    a = accumulation_dtype(x.dtype, acc)
    xa = x.astype(a)  # (..., n)
    mu = mean_acc(xa)  # (..., 1)
    d = xa - mu  # (..., n)
    var = mean_acc(d * d)  # (..., 1)
    s = 1 / np.sqrt(var + a.type(eps))  # (..., 1)
    return (d * s * gamma.astype(a) + beta.astype(a)).astype(x.dtype)  # (..., n)


def rms_norm(x: ArrayLike, g: ArrayLike, eps: float = 1e-6, *, acc: DTypeLike | None = None) -> Array:
    """RMSNorm: x / sqrt(mean(x^2) + eps) * g over the last axis."""
    x = check_rows(x, "x")
    g = check_vector(g, "g", x.shape[-1], "x", x.shape)
    eps = check_eps(eps)
    a = accumulation_dtype(x.dtype, acc)
    xa = x.astype(a)  # (..., n)
    s = 1 / np.sqrt(mean_acc(xa * xa) + a.type(eps))  # (..., 1)
    return (xa * s * g.astype(a)).astype(x.dtype)  # (..., n)


# ---------------------------------------------------------------------------------------------------------------
# Linear layers and the FFN
# ---------------------------------------------------------------------------------------------------------------


def linear(x: ArrayLike, F: ArrayLike, *, acc: DTypeLike | None = None) -> Array:
    """y = x @ F with F of shape (n, m); the result has x's dtype."""
    x = check_rows(x, "x")
    F = check_matrix(F, "F", x.shape[-1], "x", x.shape)
    a = accumulation_dtype(x.dtype, acc)
    return matmul_acc(x, F, a).astype(x.dtype)  # (..., m)


def silu_acc(xa: Array) -> Array:
    """SiLU x * sigmoid(x) = x / (1 + e^{-x}) in xa's dtype, computed in place on one new array; e^{-x} may
    overflow to inf for very negative x, giving -0 as it should."""
    h = np.negative(xa)  # (..., n)
    with np.errstate(over="ignore"):
        np.exp(h, out=h)
    h += 1
    return np.divide(xa, h, out=h)


def silu_gate(g: Array, u: Array) -> Array:
    """The SwiGLU hidden layer silu(g) * u, elementwise in g's dtype (the accumulation dtype), on one new array."""
    h = silu_acc(g)  # (..., f)
    h *= u
    return h


def silu(x: ArrayLike, *, acc: DTypeLike | None = None) -> Array:
    """SiLU (swish): x * sigmoid(x)."""
    x = as_float_array(x, "x")
    a = accumulation_dtype(x.dtype, acc)
    return silu_acc(x.astype(a)).astype(x.dtype)


def swiglu(
    x: ArrayLike, F_gate: ArrayLike, F_up: ArrayLike, F_down: ArrayLike, *, acc: DTypeLike | None = None
) -> Array:
    """The Llama FFN: (silu(x @ F_gate) * (x @ F_up)) @ F_down; F_gate, F_up (n, f), F_down (f, n_out)."""
    x = check_rows(x, "x")
    n = x.shape[-1]
    F_gate = check_matrix(F_gate, "F_gate", n, "x", x.shape)
    F_up = check_matrix(F_up, "F_up", n, "x", x.shape)
    if F_up.shape != F_gate.shape:
        raise ValueError(f"F_up has shape {F_up.shape} but F_gate has shape {F_gate.shape}; they must match")
    F_down = check_matrix(F_down, "F_down", F_gate.shape[1], "x @ F_gate", (*x.shape[:-1], F_gate.shape[1]))
    a = accumulation_dtype(x.dtype, acc)
    xa = x.astype(a)  # (..., n)
    h = silu_gate(matmul_acc(xa, F_gate, a), matmul_acc(xa, F_up, a))  # (..., f)
    return matmul_acc(h, F_down, a).astype(x.dtype)  # (..., n_out)


# ---------------------------------------------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------------------------------------------


def rope_angles(positions: ArrayLike, hd: int, base: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """cos and sin of the RoPE angles p * base^(-2i/hd), i = 0 .. hd/2 - 1, in float64; shape positions + (hd/2,)."""
    p = np.asarray(positions)
    if p.dtype.kind not in "iu":
        raise TypeError(f"positions must be an integer array; got dtype {p.dtype.name}")
    if (
        isinstance(base, bool)
        or not isinstance(base, (int, float, np.floating))
        or not (np.isfinite(base) and base > 1)
    ):
        raise ValueError(f"the RoPE base must be a finite number > 1; got {base!r}")  # 0, 1 or NaN: angles NaN or 0
    inv_freq = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (hd/2,)
    angle = p[..., None].astype(np.float64) * inv_freq  # (..., hd/2)
    return np.cos(angle), np.sin(angle)


def rope(
    x: ArrayLike,
    positions: ArrayLike,
    *,
    base: float = 10000.0,
    layout: RopeLayout = "half",
    acc: DTypeLike | None = None,
) -> Array:
    """Rotate pairs of the last axis of x (head dim hd, even) by position-dependent angles.

    `positions` are integers broadcastable to x.shape[:-1] (e.g. shape (T, 1) for x of shape (T, H, hd)).
    Two layouts of the same rotation:
    - "half" (HF checkpoints): pair i is (x[i], x[i + hd/2]);
    - "interleaved" (GGUF / llama.cpp, the original Meta layout): pair i is (x[2i], x[2i + 1]).
    Each pair (u, v) becomes (u cos t - v sin t, v cos t + u sin t).
    """
    x = check_rows(x, "x")
    hd = x.shape[-1]
    if hd % 2:
        raise ValueError(f"rope needs an even last axis (head dim); x has shape {x.shape}")
    if layout not in ("half", "interleaved"):
        raise ValueError(f"layout must be 'half' or 'interleaved'; got {layout!r}")
    p = np.asarray(positions)
    try:
        ok = np.broadcast_shapes(p.shape, x.shape[:-1]) == x.shape[:-1]
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"positions has shape {p.shape} but x has shape {x.shape}; positions must broadcast to {x.shape[:-1]}"
        )
    a = accumulation_dtype(x.dtype, acc)
    cos, sin = rope_angles(p, hd, base)  # (..., hd/2)
    return rotate_pairs(x.astype(a), cos, sin, layout).astype(x.dtype)  # (..., hd)


def rotate_pairs(xa: Array, cos: Array, sin: Array, layout: str) -> Array:
    """Rotate the RoPE pairs of xa (..., hd) by angles with cos, sin broadcastable to (..., hd/2), in xa's dtype.

    Each pair (u, v) becomes (u cos - v sin, v cos + u sin); "half" pairs (x[i], x[i + hd/2]), "interleaved" pairs
    (x[2i], x[2i + 1]). The tables are rounded once to xa's dtype; the result is one new array. Tables of width hd
    (each angle twice, as the forward passes keep them) are read in their first half.
    """
    hd = xa.shape[-1]
    c, s = cos[..., : hd // 2].astype(xa.dtype), sin[..., : hd // 2].astype(xa.dtype)  # (..., hd/2)
    if layout == "interleaved" and xa.dtype in (np.float32, np.float64) and xa.strides[-1] == xa.itemsize:
        # the pairs are complex numbers u + iv and the rotation one complex product, (u + iv)(cos + i sin) =
        # (u cos - v sin) + i (v cos + u sin): one pass instead of six (8x faster on SmolLM2's 512 x 9 x 64 q).
        # NumPy's complex product may fuse a multiply and an add (one rounding instead of two): within rounding.
        w = np.empty(c.shape, np.result_type(xa.dtype, np.complex64))  # (..., hd/2)
        w.real, w.imag = c, s
        return (xa.view(w.dtype) * w).view(xa.dtype)  # (..., hd)
    out = np.empty_like(xa)  # (..., hd)
    if layout == "half":
        u, v, ou, ov = xa[..., : hd // 2], xa[..., hd // 2 :], out[..., : hd // 2], out[..., hd // 2 :]
    else:
        u, v, ou, ov = xa[..., 0::2], xa[..., 1::2], out[..., 0::2], out[..., 1::2]
    np.subtract(u * c, v * s, out=ou)  # (..., hd/2)
    np.add(v * c, u * s, out=ov)  # (..., hd/2)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


def attention_mask(
    T: int, S: int, *, causal: bool, mask: ArrayLike | None, scores_shape: tuple[int, ...]
) -> Array | None:
    """The boolean keep-mask (True = attend) for T queries over S keys, or None if everything is visible.

    Causal: the T queries are the last T of the S positions, so query t sees key j iff j <= t + (S - T).
    """
    keep: Array | None = None
    if causal:
        t = np.arange(T)[:, None]  # (T, 1)
        j = np.arange(S)[None, :]  # (1, S)
        keep = j <= t + (S - T)  # (T, S)
    if mask is not None:
        mk = np.asarray(mask)
        if mk.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array (True = attend); got dtype {mk.dtype.name}")
        try:
            ok = np.broadcast_shapes(mk.shape, scores_shape) == scores_shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"mask has shape {mk.shape} but the scores have shape {scores_shape}; mask must broadcast to it"
            )
        keep = mk if keep is None else keep & mk
    return keep


def attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    *,
    causal: bool = True,
    mask: ArrayLike | None = None,
    acc: DTypeLike | None = None,
) -> Array:
    """Scaled dot-product attention with grouped-query heads.

    q (..., T, Hq, hd), k (..., S, Hkv, hd), v (..., S, Hkv, hdv) with Hq a multiple of Hkv: query head h reads kv
    head h // (Hq / Hkv). Scores are q.k / sqrt(hd). `mask` is boolean, True = attend, broadcastable to the score
    shape (..., Hq, T, S); with `causal` the queries are the last T of the S key positions. Returns (..., T, Hq, hdv).
    """
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True or False; got {causal!r}")  # causal="no" would be true
    q = check_rows(q, "q")
    k = check_rows(k, "k")
    v = check_rows(v, "v")
    if q.ndim < 3 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"q, k, v must be (..., T, H, hd) with the same rank; got {q.shape}, {k.shape}, {v.shape}")
    *lead, T, Hq, hd = q.shape
    S, Hkv = k.shape[-3], k.shape[-2]
    if tuple(k.shape[:-3]) != tuple(lead) or k.shape[-1] != hd:
        raise ValueError(f"k has shape {k.shape} but q has shape {q.shape}; expected k of shape (..., S, Hkv, {hd})")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v has shape {v.shape} but k has shape {k.shape}; they must agree except in the last axis")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"q has {Hq} heads and k has {Hkv}; the query heads must be a multiple of the kv heads")
    G = Hq // Hkv
    a = accumulation_dtype(q.dtype, acc)
    qa = q.astype(a).reshape(*lead, T, Hkv, G, hd)  # (..., T, Hkv, G, hd)
    ka, va = k.astype(a), v.astype(a)  # (..., S, Hkv, hd), (..., S, Hkv, hdv)
    qh = np.moveaxis(qa, -4, -2)  # (..., Hkv, G, T, hd)
    kT = np.moveaxis(ka, -3, -1)[..., :, None, :, :]  # (..., Hkv, 1, hd, S)
    z = matmul_acc(qh, kT, a) / np.sqrt(a.type(hd))  # (..., Hkv, G, T, S)
    z = z.reshape(*lead, Hq, T, S)  # (..., Hq, T, S); head h = kv * G + g
    keep = attention_mask(T, S, causal=causal, mask=mask, scores_shape=z.shape)
    if keep is not None:
        z = np.where(keep, z, -np.inf)
    p = softmax_acc(z).reshape(*lead, Hkv, G, T, S)  # (..., Hkv, G, T, S)
    vh = np.moveaxis(va, -3, -2)[..., :, None, :, :]  # (..., Hkv, 1, S, hdv)
    o = np.moveaxis(matmul_acc(p, vh, a), -2, -4)  # (..., Hkv, G, T, hdv) -> (..., T, Hkv, G, hdv)
    return o.reshape(*lead, T, Hq, v.shape[-1]).astype(q.dtype)  # (..., T, Hq, hdv)
