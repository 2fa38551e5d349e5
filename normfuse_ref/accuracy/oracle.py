"""The oracle: exact-as-practical values of every rule and layer, computed independently of the code under test.

docs/numerics.md, "The oracle": float64 arithmetic on the *stored* inputs (every supported dtype embeds exactly in
float64), sharing no helper with `normfuse_ref.layers`, `normfuse_ref.precision`, `normfuse_ref.fusion` or
`normfuse_ref.ops` - this module imports none of them. A bug in a helper those share (a wrong axis in a mean, an
adder tree that drops a partial) therefore shows up as a disagreement with the oracle instead of cancelling out.

How it computes, deliberately unlike the library: every sum and every dot product is `math.fsum` over float64
terms (a correctly rounded sum of the terms), row by row in Python loops; a product of two stored values of at
most 24 significant bits (float32 and narrower storage) is exact in float64, so a first-layer dot product of such
inputs is correctly rounded. Exponentials, square roots and RoPE's angles are float64 (`math` and NumPy's float64
ufuncs, < 1 ulp). Its error is therefore at most that of a generic float64 evaluation, which the criterion bounds
and adds to its allowance (`equivalence`, B_oracle).

Conventions, as in the reference layers (docs/notation.md): row vectors y = x @ F; a fully masked softmax row (all
-inf) is zeros; a row containing NaN or +-inf (other than softmax's -inf masks) gives a NaN row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from ..models.llama.config import LlamaConfig

__all__ = [
    "attention",
    "decoder_block",
    "layer_norm",
    "layer_norm_linear",
    "linear",
    "rms_norm",
    "rms_norm_linear",
    "rope",
    "silu",
    "softmax",
    "softmax_linear",
    "swiglu",
]

F64 = NDArray[np.float64]


def _f64(a: ArrayLike) -> F64:
    return np.array(a, dtype=np.float64)


def _rows(a: F64) -> F64:
    """The array as a list of rows over its last axis: (rows, n)."""
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def _fsum(values: Sequence[float]) -> float:
    """A correctly rounded sum; NaN if a term is NaN or the terms include both infinities."""
    try:
        return math.fsum(values)
    except ValueError:  # -inf + inf
        return math.nan


# ---------------------------------------------------------------------------------------------------------------
# Linear algebra
# ---------------------------------------------------------------------------------------------------------------


def linear(x: ArrayLike, F: ArrayLike) -> F64:
    """x (..., n) @ F (n, m), or batched F (..., n, m) with x (..., T, n): each entry one fsum of n products."""
    xa, Fa = _f64(x), _f64(F)
    if Fa.ndim == 2:
        cols = Fa.T.tolist()  # m columns of n entries
        out = [[_fsum([a * b for a, b in zip(row, col, strict=True)]) for col in cols] for row in _rows(xa).tolist()]
        return np.array(out, dtype=np.float64).reshape(*xa.shape[:-1], Fa.shape[1])
    lead = np.broadcast_shapes(xa.shape[:-2], Fa.shape[:-2])
    xb = np.broadcast_to(xa, (*lead, *xa.shape[-2:])).reshape(-1, *xa.shape[-2:])
    Fb = np.broadcast_to(Fa, (*lead, *Fa.shape[-2:])).reshape(-1, *Fa.shape[-2:])
    return np.stack([linear(a, b) for a, b in zip(xb, Fb, strict=True)]).reshape(*lead, xa.shape[-2], Fa.shape[-1])


def _mean(row: list[float]) -> float:
    return _fsum(row) / len(row)


def _nan_rows(x: F64) -> NDArray[np.bool_]:
    """Rows (..., 1) holding a NaN or an infinity."""
    return ~np.all(np.isfinite(x), axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# Normalisations and their rules
# ---------------------------------------------------------------------------------------------------------------


def rms_norm(x: ArrayLike, g: ArrayLike, eps: float) -> F64:
    """x / sqrt(mean(x^2) + eps) * g, row by row."""
    xa, ga = _f64(x), _f64(g)
    s = np.array([1 / math.sqrt(_mean([v * v for v in row]) + eps) for row in _rows(xa).tolist()])  # (rows,)
    out = xa * s.reshape(*xa.shape[:-1], 1) * ga  # (..., n)
    return np.where(_nan_rows(xa), np.nan, out)


def layer_norm(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, eps: float) -> F64:
    """(x - mu) / sqrt(var + eps) * gamma + beta, row by row, two-pass variance."""
    xa = _f64(x)
    out = np.empty_like(xa)
    flat = out.reshape(-1, xa.shape[-1])
    for r, row in enumerate(_rows(xa).tolist()):
        mu = _mean(row)
        d = [v - mu for v in row]
        s = 1 / math.sqrt(_mean([v * v for v in d]) + eps)
        flat[r] = np.array(d) * s
    return np.where(_nan_rows(xa), np.nan, out * _f64(gamma) + _f64(beta))


def rms_norm_linear(x: ArrayLike, g: ArrayLike, F: ArrayLike, eps: float) -> F64:
    """linear(rms_norm(x, g, eps), F)."""
    return linear(rms_norm(x, g, eps), F)


def layer_norm_linear(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, F: ArrayLike, eps: float) -> F64:
    """linear(layer_norm(x, gamma, beta, eps), F)."""
    return linear(layer_norm(x, gamma, beta, eps), F)


# ---------------------------------------------------------------------------------------------------------------
# Softmax and its rule
# ---------------------------------------------------------------------------------------------------------------


def _softmax_row(row: list[float]) -> list[float]:
    if any(math.isnan(v) or v == math.inf for v in row):
        return [math.nan] * len(row)
    visible = [v for v in row if v != -math.inf]
    if not visible:
        return [0.0] * len(row)  # a fully masked row is defined to be zeros
    m = max(visible)
    e = [math.exp(v - m) if v != -math.inf else 0.0 for v in row]
    total = _fsum(e)
    return [v / total for v in e]


def softmax(z: ArrayLike) -> F64:
    """e^{z - max z} / sum e^{z - max z}, row by row; -inf entries are masked."""
    za = _f64(z)
    return np.array([_softmax_row(row) for row in _rows(za).tolist()], dtype=np.float64).reshape(za.shape)


def softmax_linear(z: ArrayLike, V: ArrayLike) -> F64:
    """linear(softmax(z), V): V (n, m) or (..., n, m) with z's leading axes."""
    return linear(softmax(z), V)


# ---------------------------------------------------------------------------------------------------------------
# The rest of a Llama block
# ---------------------------------------------------------------------------------------------------------------


def silu(x: ArrayLike) -> F64:
    """x / (1 + e^{-x}); e^{-x} overflowing for very negative x gives -0."""
    xa = _f64(x)
    with np.errstate(over="ignore"):
        return xa / (1 + np.exp(-xa))


def swiglu(x: ArrayLike, F_gate: ArrayLike, F_up: ArrayLike, F_down: ArrayLike) -> F64:
    """(silu(x @ F_gate) * (x @ F_up)) @ F_down."""
    return linear(silu(linear(x, F_gate)) * linear(x, F_up), F_down)


def rope(x: ArrayLike, positions: ArrayLike, *, base: float, layout: str) -> F64:
    """Rotate pair i of each row of x (..., hd) at integer position p by p * base^(-2i/hd): (u, v) ->
    (u cos - v sin, v cos + u sin); "half" pairs (x_i, x_{i + hd/2}), "interleaved" pairs (x_{2i}, x_{2i+1}).
    positions broadcast to x.shape[:-1]."""
    xa = _f64(x)
    hd = xa.shape[-1]
    p = np.broadcast_to(np.asarray(positions), xa.shape[:-1])
    out = np.empty_like(xa)
    for idx in np.ndindex(*xa.shape[:-1]):
        for i in range(hd // 2):
            a, b = (i, i + hd // 2) if layout == "half" else (2 * i, 2 * i + 1)
            t = float(p[idx]) * base ** (-2 * i / hd)
            c, s = math.cos(t), math.sin(t)
            u, v = xa[(*idx, a)], xa[(*idx, b)]
            out[(*idx, a)], out[(*idx, b)] = u * c - v * s, v * c + u * s
    return out


def attention(q: ArrayLike, k: ArrayLike, v: ArrayLike) -> F64:
    """Causal grouped-query attention of T queries over the same T keys, one (query, head) at a time.

    q (T, Hq, hd), k and v (T, Hkv, hd); query head h reads kv head h // (Hq / Hkv); scores q.k / sqrt(hd)."""
    qa, ka, va = _f64(q), _f64(k), _f64(v)
    T, Hq, hd = qa.shape
    G = Hq // ka.shape[1]
    out = np.zeros((T, Hq, va.shape[-1]))
    for h in range(Hq):
        kv = h // G
        for t in range(T):
            scores = [_fsum((qa[t, h] * ka[j, kv]).tolist()) / math.sqrt(hd) for j in range(t + 1)]
            p = _softmax_row(scores)
            out[t, h] = [_fsum([p[j] * va[j, kv, c] for j in range(t + 1)]) for c in range(va.shape[-1])]
    return out


def decoder_block(x: ArrayLike, positions: ArrayLike, cfg: LlamaConfig, **w: Any) -> F64:
    """One Llama decoder block on x (T, d) at positions (T,) (prefill: T queries over the same T keys), weights by
    their GGUF names (attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down) in
    row-vector layout (in, out)."""
    xa = _f64(x)
    T, hd = xa.shape[0], cfg.head_dim
    pos = np.asarray(positions)[:, None]  # (T, 1)
    h = rms_norm(xa, w["attn_norm"], cfg.norm_eps)  # (T, d)
    q = rope(linear(h, w["attn_q"]).reshape(T, cfg.n_heads, hd), pos, base=cfg.rope_base, layout=cfg.rope_layout)
    k = rope(linear(h, w["attn_k"]).reshape(T, cfg.n_kv_heads, hd), pos, base=cfg.rope_base, layout=cfg.rope_layout)
    v = linear(h, w["attn_v"]).reshape(T, cfg.n_kv_heads, hd)  # (T, Hkv, hd)
    x1 = xa + linear(attention(q, k, v).reshape(T, -1), w["attn_output"])  # (T, d)
    h2 = rms_norm(x1, w["ffn_norm"], cfg.norm_eps)  # (T, d)
    return x1 + swiglu(h2, w["ffn_gate"], w["ffn_up"], w["ffn_down"])  # (T, d)
