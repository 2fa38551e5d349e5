"""The Llama forward pass, written once, issued through an Executor, in textbook or fused order.

    mode="baseline"  every RMSNorm finishes (collective 1/rms, scale) before its matmul starts; softmax takes its
                     global max and sum (two collectives) before P @ V (`fusion.*_reference`).
    mode="fused"     the paper's order: matmul on raw x with the gain folded into the weight, 1/rms computed
                     beside it and applied after; softmax -> V per slice with local maxima, merged by the
                     online-softmax collective, divided after (`fusion.rms_norm_linear_folded`,
                     `fusion.softmax_linear`). Sites: RMSNorm -> QKV, softmax -> V, RMSNorm -> gate/up, and the
                     final RMSNorm -> lm_head.

The rules are `normfuse_ref.fusion`'s, called through `normfuse_ref.models.sites` (the dispatch by mode every
family shares): this file only wires them (and RoPE, attention's layout, the FFN and the residual stream) into a
decoder block. The KV cache is passed in and returned (no hidden state); see `normfuse_ref.models.kvcache`.
Shape letters: see `normfuse_ref.models.llama.config`.

Speed without changing what is computed (the emulator replays the same primitive calls): the RoPE angles depend
only on positions, so `forward` computes them once per call and every layer's `rope_*` callables reuse them; a single
new token sees every cached key, so a decode step builds no causal mask; explicit transposes replace `np.moveaxis`
(whose per-call overhead shows at ~870 primitive calls per decode step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ...fields import positive_int
from ...layers import rope_angles, rotate_pairs, silu_gate
from ...ops import Executor, NumpyExecutor
from ...precision import Array
from .. import sites
from ..inputs import check_ids
from ..kvcache import KVCache, allocate, causal_keep, empty_cache, room_for
from .config import LlamaConfig
from .weights import Mode

__all__ = ["KVCache", "decoder_block", "empty_cache", "forward", "rope_tables"]


# ---------------------------------------------------------------------------------------------------------------
# RoPE with the angles computed once per forward call
# ---------------------------------------------------------------------------------------------------------------


def rope_tables(positions: Array, hd: int, base: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """cos and sin (T, 1, hd) in float64 for positions (T,): `layers.rope_angles` broadcast over heads, each angle
    twice (`rotate_pairs` reads the first half), so that they broadcast against the heads (T, H, hd) they rotate and
    the RoPE op can be cut into blocks of positions like any elementwise op."""
    cos, sin = rope_angles(positions[:, None], hd, base)  # (T, 1, hd/2)
    return np.concatenate([cos, cos], axis=-1), np.concatenate([sin, sin], axis=-1)


# ---------------------------------------------------------------------------------------------------------------
# One decoder block
# ---------------------------------------------------------------------------------------------------------------


def attention(
    ex: Executor,
    qkv: Any,
    cache: KVCache,
    layer: int,
    cfg: LlamaConfig,
    mode: Mode,
    rope_cs: tuple[Array, Array],
) -> Any:
    """RoPE, the KV-cache write, causal grouped-query attention with the softmax -> V rule of `mode`.

    qkv ([B,] T, (Hq + 2 Hkv) hd) -> o ([B,] T, Hq hd). The new keys and values are written into the cache's
    buffers of `layer` at [cache.length, cache.length + T). `rope_cs` is `rope_tables(positions, ...)`.
    """
    lead = tuple(qkv.shape[:-2])  # () or (B,)
    T = qkv.shape[-2]
    L0, S = cache.length, cache.length + T
    Hq, Hkv, G, hd = cfg.n_heads, cfg.n_kv_heads, cfg.group, cfg.head_dim
    q = ex.layout(lambda a: a[..., : Hq * hd].reshape(*lead, T, Hq, hd), qkv, op="split_q")  # (.., T, Hq, hd)
    k = ex.layout(lambda a: a[..., Hq * hd : (Hq + Hkv) * hd].reshape(*lead, T, Hkv, hd), qkv, op="split_k")
    v = ex.layout(lambda a: a[..., (Hq + Hkv) * hd :].reshape(*lead, T, Hkv, hd), qkv, op="split_v")  # (.., T, Hkv, hd)
    cos, sin = rope_cs  # (T, 1, hd) each

    def rot(a: Array, cos: Array, sin: Array) -> Array:
        return rotate_pairs(a, cos, sin, cfg.rope_layout)

    q = ex.elementwise(rot, q, cos, sin, op="rope_q")  # (.., T, Hq, hd)
    k = ex.elementwise(rot, k, cos, sin, op="rope_k")  # (.., T, Hkv, hd)

    def write(buf: Array, a: Array) -> Array:  # the new positions into the preallocated buffer, at L0
        buf[..., L0:S, :, :] = a
        return buf[..., :S, :, :]  # (.., S, Hkv, hd)

    k_all = ex.layout(write, cache.k[layer], k, op="kv_append")  # (.., S, Hkv, hd)
    v_all = ex.layout(write, cache.v[layer], v, op="kv_append")  # (.., S, Hkv, hd)

    L = tuple(range(len(lead)))  # the batch axis, if any (explicit transposes: np.moveaxis is slow per call)
    n = len(lead)

    def heads_q(a: Array) -> Array:  # (.., T, Hkv, G, hd) -> (.., Hkv, T, G, hd) -> (.., Hkv, T*G, hd)
        return a.reshape(*lead, T, Hkv, G, hd).transpose(*L, n + 1, n, n + 2, n + 3).reshape(*lead, Hkv, T * G, hd)

    qh = ex.layout(heads_q, q, op="heads")  # (.., Hkv, T*G, hd)   query-major rows: row t*G + g is query t, head g
    kT = ex.layout(lambda a: a.transpose(*L, n + 1, n + 2, n), k_all, op="heads")  # (.., Hkv, hd, S)
    vh = ex.layout(lambda a: np.swapaxes(a, -3, -2), v_all, op="heads")  # (.., Hkv, S, hd)
    keep = causal_keep(T, S, G)  # (T*G, S) or None: causal, query t sees keys j <= t + S - T
    o = sites.attention(ex, qh, kT, vh, keep, hd, mode)  # (.., Hkv, T*G, hd)

    def merge_heads(a: Array) -> Array:  # (.., Hkv, T, G, hd) -> (.., T, Hkv, G, hd) -> (.., T, Hq hd)
        return a.reshape(*lead, Hkv, T, G, hd).transpose(*L, n + 1, n, n + 2, n + 3).reshape(*lead, T, Hq * hd)

    return ex.layout(merge_heads, o, op="merge_heads")  # (.., T, Hq hd)


def decoder_block(
    ex: Executor,
    x: Any,
    w: Mapping[str, Any],
    layer: int,
    cache: KVCache,
    positions: Array,
    cfg: LlamaConfig,
    mode: Mode,
    *,
    rope_cs: tuple[Array, Array] | None = None,
) -> Any:
    """Decoder block `layer` on the residual stream x ([B,] T, d) at `positions` (T,): the new stream, and the
    block's keys and values written into `cache` at [cache.length, cache.length + T) (see `attention`).

    `w` is `weights.prepare(params, cfg, mode)` (or `weights.prepare_block`) for the same mode; `rope_cs` the RoPE
    tables of `positions` (computed here if None; `forward` shares one computation between its blocks).
    """
    b, eps, f = f"blk.{layer}", cfg.norm_eps, cfg.ffn_dim
    rope_cs = rope_tables(positions, cfg.head_dim, cfg.rope_base) if rope_cs is None else rope_cs
    g, F = w[f"{b}.attn_norm"], w[f"{b}.attn_qkv"]
    qkv = sites.rms_norm_linear(ex, x, g, F, eps, mode, "attn_qkv")  # ([B,] T, (Hq+2Hkv) hd)
    o = attention(ex, qkv, cache, layer, cfg, mode, rope_cs)  # ([B,] T, Hq hd)
    a = ex.matmul(o, w[f"{b}.attn_output"], op="attn_output")  # ([B,] T, d)
    x = ex.elementwise(lambda x, a: x + a, x, a, op="residual")  # ([B,] T, d)
    g, F = w[f"{b}.ffn_norm"], w[f"{b}.ffn_gate_up"]
    gu = sites.rms_norm_linear(ex, x, g, F, eps, mode, "ffn_gate_up")  # ([B,] T, 2f)
    gate = ex.layout(lambda a: a[..., :f], gu, op="split_gate")  # ([B,] T, f)
    up = ex.layout(lambda a: a[..., f:], gu, op="split_up")  # ([B,] T, f)
    h = ex.elementwise(silu_gate, gate, up, op="swiglu")  # ([B,] T, f)
    y = ex.matmul(h, w[f"{b}.ffn_down"], op="ffn_down")  # ([B,] T, d)
    return ex.elementwise(lambda x, y: x + y, x, y, op="residual")  # ([B,] T, d)


# ---------------------------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------------------------


def forward(
    w: Mapping[str, Any],
    cfg: LlamaConfig,
    ids: ArrayLike,
    cache: KVCache | None = None,
    *,
    mode: Mode = "fused",
    ex: Executor | None = None,
    logits_to_keep: int | None = None,
) -> tuple[Any, KVCache]:
    """Logits ([B,] T, V) for the new tokens `ids` ((T,) or (B, T)) after the cached positions, and the cache
    extended by them (see `KVCache`: the buffers of the cache passed in are written, past its length). `w` is
    `weights.prepare(params, cfg, mode)` for the same mode; `ex` defaults to a float32 NumpyExecutor. Without a
    cache, one with room for exactly these tokens is made, in the weights' dtype. A batch shares one position
    counter: all B sequences have the same length.

    `logits_to_keep` (as HF's argument of that name): the logits of the last that many positions only, ([B,] k,
    V); None for all T. The output layer is the widest product of a short prompt (V = 49,152 columns for SmolLM2),
    and a prefill that only chooses the next token needs one row of it. Every kept row is what the whole call
    computes, up to the blocking of the output product (a row of a product cut differently may differ in its last
    bits, as between a prefill and a decode step).
    """
    if mode not in ("baseline", "fused"):
        raise ValueError(f"mode must be 'baseline' or 'fused'; got {mode!r}")
    if logits_to_keep is not None:
        positive_int(logits_to_keep, "logits_to_keep")
    ex = NumpyExecutor() if ex is None else ex
    ids_arr = np.asarray(ids)
    past = 0 if cache is None else cache.length
    ids = check_ids(ids_arr, cfg.vocab_size, cfg.context_length, past)
    T = ids.shape[-1]
    if cache is None:
        shape = (cfg.n_layers, *ids.shape[:-1], T, cfg.n_kv_heads, cfg.head_dim)  # (L, [B,] T, Hkv, hd)
        cache = KVCache(allocate(shape, w["token_embd"].dtype, T), allocate(shape, w["token_embd"].dtype, T), 0)
    if cache.k.shape[0] != cfg.n_layers:
        raise ValueError(f"the cache has {cache.k.shape[0]} layers but the model has {cfg.n_layers}")
    if cache.batch != ids.shape[:-1]:
        raise ValueError(
            f"ids have shape {ids.shape} but the cache holds shape {tuple(cache.k.shape[1:])}; batch sizes differ"
        )
    cache = room_for(cache, past + T, cfg)
    positions = past + np.arange(T)  # (T,)
    rope_cs = rope_tables(positions, cfg.head_dim, cfg.rope_base)  # (T, 1, hd) each, shared by all layers

    with ex.scope(layer=None):
        x = ex.layout(lambda E: E[ids], w["token_embd"], op="token_embd")  # ([B,] T, d)
    for i in range(cfg.n_layers):
        with ex.scope(layer=i):
            x = decoder_block(ex, x, w, i, cache, positions, cfg, mode, rope_cs=rope_cs)  # ([B,] T, d)
    with ex.scope(layer=None):
        if logits_to_keep is not None and logits_to_keep < T:
            k = logits_to_keep
            x = ex.layout(lambda x: np.ascontiguousarray(x[..., -k:, :]), x, op="logits_to_keep")  # ([B,] k, d)
        logits = sites.rms_norm_linear(
            ex, x, w["output_norm"], w["output"], cfg.norm_eps, mode, "output"
        )  # ([B,] T or k, V)
    cache.filled[0] = past + T
    return logits, KVCache(cache.k, cache.v, past + T, cache.filled)
