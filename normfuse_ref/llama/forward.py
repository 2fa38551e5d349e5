"""The Llama forward pass, written once, issued through an Executor, in textbook or fused order.

    mode="baseline"  every RMSNorm finishes (collective 1/rms, scale) before its matmul starts; softmax takes its
                     global max and sum (two collectives) before P @ V.
    mode="fused"     the paper's order: matmul on raw x with the gain folded into the weight, 1/rms computed
                     beside it and applied after; softmax -> V per slice with local maxima, merged by the
                     online-softmax collective, divided after. Sites: RMSNorm -> QKV, softmax -> V,
                     RMSNorm -> gate/up, and the final RMSNorm -> lm_head.

The KV cache is passed in and returned (no hidden state). Shape letters: see `normfuse_ref.llama.config`.

Speed without changing what is computed (the emulator replays the same primitive calls):
- the RoPE angles depend only on positions, so `forward` computes them once per call and every layer's `rope_*`
  callables reuse them; a single new token sees every cached key, so a decode step builds no causal mask;
- callables compute in place on the one array they allocate (no temporaries), and explicit transposes replace
  `np.moveaxis` (whose per-call overhead shows at ~870 primitive calls per decode step);
- `kv_append` writes the new positions into spare capacity of a preallocated buffer when the cache passed in is the
  latest prefix view of that buffer, and copies otherwise (see `kv_append`), so decoding n tokens costs O(n) cache
  writes instead of O(n^2) while every cache a caller holds stays valid.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ..layers import rope_angles
from ..ops import Executor, NumpyExecutor
from ..precision import resolve_dtype
from .config import LlamaConfig
from .weights import Mode

__all__ = ["KVCache", "check_ids", "empty_cache", "forward", "kv_append", "rope_tables", "rotate"]

Array = NDArray[Any]


class KVCache(NamedTuple):
    """Keys and values of every layer for the positions seen so far: k[i], v[i] of shape ([B,] S, Hkv, hd)."""

    k: tuple[Any, ...]
    v: tuple[Any, ...]

    @property
    def length(self) -> int:  # S, positions already in the cache
        return int(self.k[0].shape[-3]) if self.k else 0


def empty_cache(cfg: LlamaConfig, dtype: DTypeLike = np.float32, *, batch: int | None = None) -> KVCache:
    """A cache holding no positions, for one sequence (batch=None) or a batch of B sequences."""
    lead = () if batch is None else (batch,)
    z = np.zeros((*lead, 0, cfg.n_kv_heads, cfg.head_dim), dtype=resolve_dtype(dtype))  # ([B,] 0, Hkv, hd)
    return KVCache(k=(z,) * cfg.n_layers, v=(z,) * cfg.n_layers)


def check_ids(ids: ArrayLike, cfg: LlamaConfig, past: int) -> NDArray[np.int64]:
    """Token ids, (T,) or (B, T) integers within the vocabulary and the context; ValueError otherwise."""
    a = np.asarray(ids)
    if a.dtype.kind not in "iu" or a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(
            f"ids must be a non-empty (T,) or (B, T) integer array; got dtype {a.dtype.name}, shape {a.shape}"
        )
    bad = a[(a < 0) | (a >= cfg.vocab_size)]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} is out of range for a vocabulary of {cfg.vocab_size}")
    if past + a.shape[-1] > cfg.context_length:
        raise ValueError(
            f"{past} cached + {a.shape[-1]} new tokens exceed the model's context of {cfg.context_length} tokens"
        )
    return a.astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# KV-cache append into spare capacity
# ---------------------------------------------------------------------------------------------------------------


class _KVBuffer(np.ndarray):
    """Storage for a growing cache ([B,] capacity, Hkv, hd); positions [0, filled) are in use by some cache."""

    filled: int


def kv_append(c: Array, a: Array, *, limit: int | None = None) -> Array:
    """np.concatenate([c, a], axis=-3), computed without copying `c` when possible.

    c ([B,] S0, Hkv, hd) is what a caller passed in; a ([B,] T, Hkv, hd) the new positions. If `c` is a prefix view
    of a `_KVBuffer` whose in-use length is exactly S0 (no later append claimed the slots after it) and there is
    room, `a` is written into slots [S0, S0 + T) and a view of [0, S0 + T) is returned. Otherwise a new buffer with
    spare capacity (at most `limit` positions, the context length) is allocated and filled. Slots before S0 are
    never written, so every cache a caller holds keeps its values; appending twice to the same cache (branching)
    takes the copying path the second time.
    """
    S0, T = c.shape[-3], a.shape[-3]
    S = S0 + T
    buf = c.base
    if (
        isinstance(buf, _KVBuffer)
        and buf.filled == S0
        and S <= buf.shape[-3]
        and buf.dtype == a.dtype == c.dtype
        and buf.shape[:-3] == a.shape[:-3]
        and buf.shape[-2:] == a.shape[-2:]
        and c.strides == buf.strides
        and c.__array_interface__["data"][0] == buf.__array_interface__["data"][0]
    ):
        buf[..., S0:S, :, :] = a
        buf.filled = S
        return np.ndarray((*c.shape[:-3], S, *c.shape[-2:]), dtype=buf.dtype, buffer=buf, strides=buf.strides)
    cap = max(S + 256, 2 * S)  # room for decoding; doubling keeps the number of copies O(log n)
    if limit is not None:
        cap = max(S, min(cap, limit))
    lead = np.broadcast_shapes(c.shape[:-3], a.shape[:-3])
    new = np.ndarray.__new__(_KVBuffer, (*lead, cap, *a.shape[-2:]), dtype=np.result_type(c, a))
    new[..., :S0, :, :] = c
    new[..., S0:S, :, :] = a
    new.filled = S
    return np.ndarray((*lead, S, *a.shape[-2:]), dtype=new.dtype, buffer=new, strides=new.strides)


# ---------------------------------------------------------------------------------------------------------------
# RoPE with the angles computed once per forward call
# ---------------------------------------------------------------------------------------------------------------


def rope_tables(positions: Array, hd: int, base: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """cos and sin (T, 1, hd/2) in float64 for positions (T,): `layers.rope_angles` broadcast over heads."""
    return rope_angles(positions[:, None], hd, base)


# reference: layers.rope(x, positions, base=..., layout=...)  (same formulas, angles precomputed)
def rotate(xa: Array, cos: Array, sin: Array, layout: str) -> Array:
    """Rotate the RoPE pairs of xa (..., T, H, hd) by angles with cos, sin (T, 1, hd/2), in xa's dtype.

    Each pair (u, v) becomes (u cos - v sin, v cos + u sin); "half" pairs (x[i], x[i + hd/2]), "interleaved" pairs
    (x[2i], x[2i + 1]). Numerically identical to `layers.rope` on the same input.
    """
    hd = xa.shape[-1]
    c, s = cos.astype(xa.dtype), sin.astype(xa.dtype)  # (T, 1, hd/2)
    out = np.empty_like(xa)  # (..., T, H, hd)
    if layout == "half":
        u, v, ou, ov = xa[..., : hd // 2], xa[..., hd // 2 :], out[..., : hd // 2], out[..., hd // 2 :]
    else:
        u, v, ou, ov = xa[..., 0::2], xa[..., 1::2], out[..., 0::2], out[..., 1::2]
    np.subtract(u * c, v * s, out=ou)  # (..., T, H, hd/2)
    np.add(v * c, u * s, out=ov)  # (..., T, H, hd/2)
    return out


@functools.lru_cache(maxsize=8)
def causal_keep(T: int, S: int, G: int) -> NDArray[np.bool_] | None:
    """(G*T, S) keep-mask of grouped query rows over keys (row r is query t = r mod T, which sees keys
    j <= t + S - T), or None when every query sees every key (a single new token).

    Cached (read-only) so that the layers of one forward call share one mask: for a long prompt it is large.
    """
    if T == 1:
        return None
    t = np.arange(G * T) % T  # (G*T,)
    keep = np.arange(S)[None, :] <= (t + S - T)[:, None]  # (G*T, S)
    keep.flags.writeable = False
    return keep


# reference: linear(rms_norm(x, g, eps), F)     fused: s * (x @ (g ⊙ F)), F folded by weights.prepare
def rms_norm_linear_site(ex: Executor, x: Any, g: Any, F: Any, eps: float, mode: Mode, name: str) -> Any:
    """One RMSNorm -> linear site in either order; `F` is raw in baseline and g-folded in fused mode."""
    if mode == "baseline":
        s = ex.reduce(x, "rms_scale", op=f"{name}.rms", eps=eps)  # (T, 1)  collective, then the matmul waits
        xn = ex.elementwise(lambda x, s, g: x * s * g, x, s, g, op=f"{name}.norm")  # (T, n)
        return ex.matmul(xn, F, op=name)  # (T, m)
    y = ex.matmul(x, F, op=name)  # (T, m)  DIMC starts at once on raw x
    s = ex.reduce(x, "rms_scale", op=f"{name}.rms", eps=eps)  # (T, 1)  collective, beside the matmul
    return ex.elementwise(lambda y, s: y * s, y, s, op=f"{name}.scale")  # (T, m)


# reference: layers.silu_acc(g) * u   (the same operations, in place on one new array)
def _swiglu(g: Array, u: Array) -> Array:
    """silu(g) * u = g / (1 + exp(-g)) * u, elementwise; exp(-g) may overflow to inf, giving -0 as it should."""
    h = np.negative(g)  # (T, f)
    with np.errstate(over="ignore"):
        np.exp(h, out=h)
    h += 1
    np.divide(g, h, out=h)
    h *= u
    return h


def _finalize(o: Array, l: Array) -> Array:
    """o / l, with l = 0 (no visible key) defined as 0, as in fusion.softmax_finalize."""
    return np.where(l == 0, 0, o / np.where(l == 0, 1, l))


def _softmax_normalise(e: Array, l: Array) -> Array:
    """e / l, a row with l = 0 (no visible key) being all zeros: its e are all exp(-inf) = 0, and 0 / 1 = 0."""
    return e / np.where(l == 0, 1, l)


def _exp_shifted(z: Array, m: Array) -> Array:
    """exp(z - m) with a fully masked row (m = -inf) shifted by 0, so its exponentials are 0, not NaN."""
    with np.errstate(invalid="ignore"):
        e = np.subtract(z, np.where(np.isneginf(m), 0, m).astype(z.dtype))  # (..., S)
        return np.exp(e, out=e)


# reference: softmax(z) @ V      fused: (e^{z - m_slice} @ V merged across slices) / l
def softmax_v_site(ex: Executor, z: Any, vh: Any, mode: Mode) -> Any:
    """One softmax -> V site: z (Hkv, G*T, S) masked scaled scores, vh (Hkv, S, hd) -> (Hkv, G*T, [1,] hd)."""
    if mode == "baseline":
        m = ex.reduce(z, "max", op="softmax.max")  # (Hkv, GT, 1)  collective 1
        e = ex.elementwise(_exp_shifted, z, m, op="softmax.exp")  # (Hkv, GT, S)
        l = ex.reduce(e, "sum", op="softmax.sum")  # (Hkv, GT, 1)  collective 2
        p = ex.elementwise(_softmax_normalise, e, l, op="softmax.div")  # (Hkv, GT, S)
        return ex.matmul(p, vh, op="attn_pv")  # (Hkv, GT, hd)
    t = ex.softmax_tiles(z, vh, op="attn_pv")  # per slice: local max, e^{z-m}, sum, e @ V (no communication)
    t = ex.softmax_merge(t, op="softmax.merge")  # the collective: online-softmax merge of the slice states
    return ex.elementwise(_finalize, t.o, t.l, op="softmax.scale")  # (Hkv, GT, 1, hd)


def attention_site(
    ex: Executor,
    qkv: Any,
    cache_k: Any,
    cache_v: Any,
    positions: Array,
    cfg: LlamaConfig,
    mode: Mode,
    *,
    rope_cs: tuple[Array, Array] | None = None,
) -> tuple[Any, Any, Any]:
    """RoPE, KV-cache append, causal grouped-query attention.

    qkv ([B,] T, (Hq + 2 Hkv) hd) -> o ([B,] T, Hq hd) and the extended cache k, v ([B,] S, Hkv, hd).
    `rope_cs` is `rope_tables(positions, ...)`, passed in so that all layers share one computation.
    """
    lead = tuple(qkv.shape[:-2])  # () or (B,)
    T, S = positions.size, cache_k.shape[-3] + positions.size
    Hq, Hkv, G, hd = cfg.n_heads, cfg.n_kv_heads, cfg.group, cfg.head_dim
    q = ex.layout(lambda a: a[..., : Hq * hd].reshape(*lead, T, Hq, hd), qkv, op="split_q")  # (.., T, Hq, hd)
    k = ex.layout(lambda a: a[..., Hq * hd : (Hq + Hkv) * hd].reshape(*lead, T, Hkv, hd), qkv, op="split_k")
    v = ex.layout(lambda a: a[..., (Hq + Hkv) * hd :].reshape(*lead, T, Hkv, hd), qkv, op="split_v")  # (.., T, Hkv, hd)
    cos, sin = rope_tables(positions, hd, cfg.rope_base) if rope_cs is None else rope_cs  # (T, 1, hd/2) each

    def rot(a: Array) -> Array:
        return rotate(a, cos, sin, cfg.rope_layout)

    q = ex.elementwise(rot, q, op="rope_q")  # (.., T, Hq, hd)
    k = ex.elementwise(rot, k, op="rope_k")  # (.., T, Hkv, hd)

    def append(c: Array, a: Array) -> Array:
        return kv_append(c, a, limit=cfg.context_length)  # (.., S, Hkv, hd)

    k_all = ex.layout(append, cache_k, k, op="kv_append")  # (.., S, Hkv, hd)
    v_all = ex.layout(append, cache_v, v, op="kv_append")  # (.., S, Hkv, hd)

    L = tuple(range(len(lead)))  # the batch axis, if any (explicit transposes: np.moveaxis is slow per call)
    n = len(lead)

    def heads_q(a: Array) -> Array:  # (.., T, Hkv, G, hd) -> (.., Hkv, G, T, hd) -> (.., Hkv, G*T, hd)
        return a.reshape(*lead, T, Hkv, G, hd).transpose(*L, n + 1, n + 2, n, n + 3).reshape(*lead, Hkv, G * T, hd)

    qh = ex.layout(heads_q, q, op="heads")  # (.., Hkv, G*T, hd)
    kT = ex.layout(lambda a: a.transpose(*L, n + 1, n + 2, n), k_all, op="heads")  # (.., Hkv, hd, S)
    vh = ex.layout(lambda a: np.swapaxes(a, -3, -2), v_all, op="heads")  # (.., Hkv, S, hd)
    z = ex.matmul(qh, kT, op="attn_scores")  # (.., Hkv, G*T, S)
    keep = causal_keep(T, S, G)  # (G*T, S) or None: causal, query t sees keys j <= t + S - T
    drop = None if keep is None else ~keep  # (G*T, S)
    scale = 1 / float(np.sqrt(hd))  # a Python float: the product stays in z's (accumulation) dtype

    def mask(z: Array) -> Array:  # where(keep, z * scale, -inf)
        out = z * scale  # (.., Hkv, G*T, S)
        if drop is not None:
            np.copyto(out, -np.inf, where=drop)
        return out

    z = ex.elementwise(mask, z, op="attn_mask")  # (.., Hkv, G*T, S)
    o = softmax_v_site(ex, z, vh, mode)  # (.., Hkv, G*T, [1,] hd)

    def merge_heads(a: Array) -> Array:  # (.., Hkv, G, T, hd) -> (.., T, Hkv, G, hd) -> (.., T, Hq hd)
        return a.reshape(*lead, Hkv, G, T, hd).transpose(*L, n + 2, n, n + 1, n + 3).reshape(*lead, T, Hq * hd)

    o = ex.layout(merge_heads, o, op="merge_heads")  # (.., T, Hq hd)
    return o, k_all, v_all


def forward(
    w: Mapping[str, Any],
    cfg: LlamaConfig,
    ids: ArrayLike,
    cache: KVCache | None = None,
    *,
    mode: Mode = "fused",
    ex: Executor | None = None,
) -> tuple[Any, KVCache]:
    """Logits ([B,] T, V) for the new tokens `ids` ((T,) or (B, T)) after the cached positions, and the cache
    extended by them. `w` is `weights.prepare(params, cfg, mode)` for the same mode; `ex` defaults to a float32
    NumpyExecutor. A batch shares one position counter: all B sequences have the same length.
    """
    if mode not in ("baseline", "fused"):
        raise ValueError(f"mode must be 'baseline' or 'fused'; got {mode!r}")
    ex = NumpyExecutor() if ex is None else ex
    ids_arr = np.asarray(ids)
    if cache is None:
        cache = empty_cache(cfg, batch=ids_arr.shape[0] if ids_arr.ndim == 2 else None)
    if len(cache.k) != cfg.n_layers:
        raise ValueError(f"the cache has {len(cache.k)} layers but the model has {cfg.n_layers}")
    past = cache.length
    ids = check_ids(ids_arr, cfg, past)
    if tuple(cache.k[0].shape[:-3]) != ids.shape[:-1]:
        raise ValueError(
            f"ids have shape {ids.shape} but the cache holds shape {tuple(cache.k[0].shape)}; batch sizes differ"
        )
    positions = past + np.arange(ids.shape[-1])  # (T,)
    rope_cs = rope_tables(positions, cfg.head_dim, cfg.rope_base)  # (T, 1, hd/2) each, shared by all layers
    eps, f = cfg.norm_eps, cfg.ffn_dim

    with ex.scope(layer=None):
        x = ex.layout(lambda E: E[ids], w["token_embd"], op="token_embd")  # ([B,] T, d)
    new_k, new_v = [], []
    for i in range(cfg.n_layers):
        b = f"blk.{i}"
        with ex.scope(layer=i):
            qkv = rms_norm_linear_site(ex, x, w[f"{b}.attn_norm"], w[f"{b}.attn_qkv"], eps, mode, "attn_qkv")
            o, k_all, v_all = attention_site(ex, qkv, cache.k[i], cache.v[i], positions, cfg, mode, rope_cs=rope_cs)
            new_k.append(k_all)
            new_v.append(v_all)
            a = ex.matmul(o, w[f"{b}.attn_output"], op="attn_output")  # (T, d)
            x = ex.elementwise(lambda x, a: x + a, x, a, op="residual")  # (T, d)
            gu = rms_norm_linear_site(ex, x, w[f"{b}.ffn_norm"], w[f"{b}.ffn_gate_up"], eps, mode, "ffn_gate_up")
            gate = ex.layout(lambda a: a[..., :f], gu, op="split_gate")  # (T, f)
            up = ex.layout(lambda a: a[..., f:], gu, op="split_up")  # (T, f)
            h = ex.elementwise(_swiglu, gate, up, op="swiglu")  # (T, f)
            y = ex.matmul(h, w[f"{b}.ffn_down"], op="ffn_down")  # (T, d)
            x = ex.elementwise(lambda x, y: x + y, x, y, op="residual")  # (T, d)
    with ex.scope(layer=None):
        logits = rms_norm_linear_site(ex, x, w["output_norm"], w["output"], eps, mode, "output")  # (T, V)
    return logits, KVCache(k=tuple(new_k), v=tuple(new_v))
