"""The Llama forward pass, written once, issued through an Executor, in textbook or fused order.

    mode="baseline"  every RMSNorm finishes (collective 1/rms, scale) before its matmul starts; softmax takes its
                     global max and sum (two collectives) before P @ V.
    mode="fused"     the paper's order: matmul on raw x with the gain folded into the weight, 1/rms computed
                     beside it and applied after; softmax -> V per slice with local maxima, merged by the
                     online-softmax collective, divided after. Sites: RMSNorm -> QKV, softmax -> V,
                     RMSNorm -> gate/up, and the final RMSNorm -> lm_head.

The KV cache is passed in and returned (no hidden state). Shape letters: see `normfuse_ref.llama.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ..layers import rope, silu_acc
from ..ops import Executor, NumpyExecutor
from ..precision import resolve_dtype
from .config import LlamaConfig
from .weights import Mode

__all__ = ["KVCache", "check_ids", "empty_cache", "forward"]

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


# reference: linear(rms_norm(x, g, eps), F)     fused: s * (x @ (g ⊙ F)), F folded by weights.prepare
def rms_norm_linear_site(ex: Executor, x: Any, g: Any, F: Any, eps: float, mode: Mode, name: str) -> Any:
    """One RMSNorm -> linear site in either order; `F` is raw in baseline and g-folded in fused mode."""
    if mode == "baseline":
        s = ex.reduce(x, "rms_scale", op=f"{name}.rms", eps=eps)  # (T, 1)  collective, then the matmul waits
        xn = ex.elementwise(lambda x, s, g: x * s * g, x, s, g, op=f"{name}.norm", flops=2)  # (T, n)
        return ex.matmul(xn, F, op=name)  # (T, m)
    y = ex.matmul(x, F, op=name)  # (T, m)  DIMC starts at once on raw x
    s = ex.reduce(x, "rms_scale", op=f"{name}.rms", eps=eps)  # (T, 1)  collective, beside the matmul
    return ex.elementwise(lambda y, s: y * s, y, s, op=f"{name}.scale")  # (T, m)


def _finalize(o: Array, l: Array) -> Array:
    """o / l, with l = 0 (no visible key) defined as 0, as in fusion.softmax_finalize."""
    return np.where(l == 0, 0, o / np.where(l == 0, 1, l))


def _softmax_normalise(e: Array, l: Array) -> Array:
    return np.where(l == 0, 0, e / np.where(l == 0, 1, l))


def _exp_shifted(z: Array, m: Array) -> Array:
    with np.errstate(invalid="ignore"):
        return np.exp(z - np.where(np.isneginf(m), 0, m))


# reference: softmax(z) @ V      fused: (e^{z - m_slice} @ V merged across slices) / l
def softmax_v_site(ex: Executor, z: Any, vh: Any, mode: Mode) -> Any:
    """One softmax -> V site: z (Hkv, G*T, S) masked scaled scores, vh (Hkv, S, hd) -> (Hkv, G*T, [1,] hd)."""
    if mode == "baseline":
        m = ex.reduce(z, "max", op="softmax.max")  # (Hkv, GT, 1)  collective 1
        e = ex.elementwise(_exp_shifted, z, m, op="softmax.exp", flops=2)  # (Hkv, GT, S)
        l = ex.reduce(e, "sum", op="softmax.sum")  # (Hkv, GT, 1)  collective 2
        p = ex.elementwise(_softmax_normalise, e, l, op="softmax.div")  # (Hkv, GT, S)
        return ex.matmul(p, vh, op="attn_pv")  # (Hkv, GT, hd)
    t = ex.softmax_tiles(z, vh, op="attn_pv")  # per slice: local max, e^{z-m}, sum, e @ V (no communication)
    t = ex.softmax_merge(t, op="softmax.merge")  # the collective: online-softmax merge of the slice states
    return ex.elementwise(_finalize, t.o, t.l, op="softmax.scale")  # (Hkv, GT, 1, hd)


def attention_site(
    ex: Executor, qkv: Any, cache_k: Any, cache_v: Any, positions: Array, cfg: LlamaConfig, mode: Mode
) -> tuple[Any, Any, Any]:
    """RoPE, KV-cache append, causal grouped-query attention.

    qkv ([B,] T, (Hq + 2 Hkv) hd) -> o ([B,] T, Hq hd) and the extended cache k, v ([B,] S, Hkv, hd).
    """
    lead = tuple(qkv.shape[:-2])  # () or (B,)
    T, S = positions.size, cache_k.shape[-3] + positions.size
    Hq, Hkv, G, hd = cfg.n_heads, cfg.n_kv_heads, cfg.group, cfg.head_dim
    q = ex.layout(lambda a: a[..., : Hq * hd].reshape(*lead, T, Hq, hd), qkv, op="split_q")  # (.., T, Hq, hd)
    k = ex.layout(lambda a: a[..., Hq * hd : (Hq + Hkv) * hd].reshape(*lead, T, Hkv, hd), qkv, op="split_k")
    v = ex.layout(lambda a: a[..., (Hq + Hkv) * hd :].reshape(*lead, T, Hkv, hd), qkv, op="split_v")  # (.., T, Hkv, hd)
    pos = positions[:, None]  # (T, 1)

    def rot(a: Array) -> Array:
        return rope(a, pos, base=cfg.rope_base, layout=cfg.rope_layout)

    q = ex.elementwise(rot, q, op="rope_q", flops=3)  # (.., T, Hq, hd)
    k = ex.elementwise(rot, k, op="rope_k", flops=3)  # (.., T, Hkv, hd)

    def append(c: Array, a: Array) -> Array:
        return np.concatenate([c, a], axis=-3)  # (.., S, Hkv, hd)

    k_all = ex.layout(append, cache_k, k, op="kv_append")  # (.., S, Hkv, hd)
    v_all = ex.layout(append, cache_v, v, op="kv_append")  # (.., S, Hkv, hd)

    def heads_q(a: Array) -> Array:  # (.., T, Hkv, G, hd) -> (.., Hkv, G, T, hd) -> (.., Hkv, G*T, hd)
        return np.moveaxis(a.reshape(*lead, T, Hkv, G, hd), -4, -2).reshape(*lead, Hkv, G * T, hd)

    qh = ex.layout(heads_q, q, op="heads")  # (.., Hkv, G*T, hd)
    kT = ex.layout(lambda a: np.moveaxis(a, -3, -1), k_all, op="heads")  # (.., Hkv, hd, S)
    vh = ex.layout(lambda a: np.swapaxes(a, -3, -2), v_all, op="heads")  # (.., Hkv, S, hd)
    z = ex.matmul(qh, kT, op="attn_scores")  # (.., Hkv, G*T, S)
    t = np.arange(G * T) % T  # (G*T,)  row r of a kv group is query t = r mod T
    keep = np.arange(S)[None, :] <= (t + S - T)[:, None]  # (G*T, S)  causal: query t sees keys j <= t + S - T
    scale = 1 / np.sqrt(hd)
    z = ex.elementwise(lambda z: np.where(keep, z * scale, -np.inf), z, op="attn_mask")  # (.., Hkv, G*T, S)
    o = softmax_v_site(ex, z, vh, mode)  # (.., Hkv, G*T, [1,] hd)

    def merge_heads(a: Array) -> Array:  # (.., Hkv, G, T, hd) -> (.., T, Hkv, G, hd) -> (.., T, Hq hd)
        return np.moveaxis(a.reshape(*lead, Hkv, G, T, hd), -2, -4).reshape(*lead, T, Hq * hd)

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
    eps, f = cfg.norm_eps, cfg.ffn_dim

    with ex.scope(layer=None):
        x = ex.layout(lambda E: E[ids], w["token_embd"], op="token_embd")  # ([B,] T, d)
    new_k, new_v = [], []
    for i in range(cfg.n_layers):
        b = f"blk.{i}"
        with ex.scope(layer=i):
            qkv = rms_norm_linear_site(ex, x, w[f"{b}.attn_norm"], w[f"{b}.attn_qkv"], eps, mode, "attn_qkv")
            o, k_all, v_all = attention_site(ex, qkv, cache.k[i], cache.v[i], positions, cfg, mode)
            new_k.append(k_all)
            new_v.append(v_all)
            a = ex.matmul(o, w[f"{b}.attn_output"], op="attn_output")  # (T, d)
            x = ex.elementwise(lambda x, a: x + a, x, a, op="residual")  # (T, d)
            gu = rms_norm_linear_site(ex, x, w[f"{b}.ffn_norm"], w[f"{b}.ffn_gate_up"], eps, mode, "ffn_gate_up")
            gate = ex.layout(lambda a: a[..., :f], gu, op="split_gate")  # (T, f)
            up = ex.layout(lambda a: a[..., f:], gu, op="split_up")  # (T, f)
            h = ex.elementwise(lambda g, u: silu_acc(g) * u, gate, up, op="swiglu", flops=5)  # (T, f)
            y = ex.matmul(h, w[f"{b}.ffn_down"], op="ffn_down")  # (T, d)
            x = ex.elementwise(lambda x, y: x + y, x, y, op="residual")  # (T, d)
    with ex.scope(layer=None):
        logits = rms_norm_linear_site(ex, x, w["output_norm"], w["output"], eps, mode, "output")  # (T, V)
    return logits, KVCache(k=tuple(new_k), v=tuple(new_v))
