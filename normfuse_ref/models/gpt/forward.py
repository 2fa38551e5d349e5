"""The pre-LayerNorm decoder forward pass (GPT-2, OPT), written once, issued through an Executor, in textbook or
fused order.

    x = E_word[ids] + E_pos[past + offset .. past + offset + T - 1]
    block i:  x = x + Attention(LN_1(x) Wqkv + bqkv) Wo + bo        causal, with a KV cache
              x = x + act(LN_2(x) Wup + bup) Wdown + bdown          act: tanh GELU (GPT-2), ReLU (OPT)
    logits = LN_f(x) wte^T                                          the lm head, tied to the token embeddings

Every LayerNorm feeds exactly one linear layer and nothing else (the residual stream carries the raw x), so each is a
LayerNorm -> linear site of the paper's formula, called through `normfuse_ref.models.sites` (the rules of
`normfuse_ref.fusion`, as the Llama and BERT forwards call them):

    mode="baseline"  mu, then s = 1/sqrt(var + eps) (two collectives), LN(x) stored, then the matmul
    mode="fused"     the matmul on raw x with F' = (I - E/n) Gamma F (folded offline), mu and s beside it,
                     y = s y~ + b' after (b' = beta F + b)

and softmax -> V is deferred as in the Llama forward (`fusion.softmax_linear`). The KV cache is the decoders' shared
`KVCache` (preallocated buffers and a length, passed in and returned). Shape letters: see
`normfuse_ref.models.gpt.config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ...ops import Executor, NumpyExecutor
from ...precision import Array
from .. import sites
from ..bert.forward import gelu
from ..inputs import check_ids
from ..kvcache import KVCache, allocate, causal_keep, room_for
from .config import GptConfig
from .weights import Mode

__all__ = ["ACTIVATION_FNS", "attention", "decoder_block", "forward", "gelu_tanh", "relu"]

_C = math.sqrt(2 / math.pi)


# reference: torch.nn.functional.gelu(t, approximate="tanh"), HF's "gelu_new"
def gelu_tanh(t: Array) -> Array:
    """GPT-2's GELU, t/2 (1 + tanh(sqrt(2/pi) (t + 0.044715 t^3))), in t's (accumulation) dtype."""
    return 0.5 * t * (1 + np.tanh(t.dtype.type(_C) * (t + t.dtype.type(0.044715) * t * t * t)))


def relu(t: Array) -> Array:
    """max(t, 0) (OPT)."""
    return np.maximum(t, 0)


#: The FFN activation of each config.activation (its name is also the op's, priced by hw/costs.py).
ACTIVATION_FNS: dict[str, Callable[[Array], Array]] = {"gelu_tanh": gelu_tanh, "relu": relu, "gelu": gelu}


def attention(ex: Executor, qkv: Any, cache: KVCache, layer: int, cfg: GptConfig, mode: Mode) -> Any:
    """The KV-cache write and causal multi-head attention with the softmax -> V rule of `mode`:
    qkv ([B,] T, 3d) -> o ([B,] T, d); the new keys and values go into the cache's buffers of `layer` at
    [cache.length, cache.length + T)."""
    lead = tuple(qkv.shape[:-2])  # () or (B,)
    T, H, hd, d = qkv.shape[-2], cfg.n_heads, cfg.head_dim, cfg.dim
    L0, S = cache.length, cache.length + T

    def part(c: int) -> Callable[[Array], Array]:  # columns [c d, (c + 1) d): (.., T, 3d) -> (.., T, H, hd)
        return lambda a: a[..., c * d : (c + 1) * d].reshape(*lead, T, H, hd)

    q = ex.layout(part(0), qkv, op="split_q")  # (.., T, H, hd)
    k = ex.layout(part(1), qkv, op="split_k")  # (.., T, H, hd)
    v = ex.layout(part(2), qkv, op="split_v")  # (.., T, H, hd)

    def write(buf: Array, a: Array) -> Array:  # the new positions into the preallocated buffer, at L0
        buf[..., L0:S, :, :] = a
        return buf[..., :S, :, :]  # (.., S, H, hd)

    k_all = ex.layout(write, cache.k[layer], k, op="kv_append")  # (.., S, H, hd)
    v_all = ex.layout(write, cache.v[layer], v, op="kv_append")  # (.., S, H, hd)
    qh = ex.layout(lambda a: np.swapaxes(a, -3, -2), q, op="heads")  # (.., H, T, hd)
    kT = ex.layout(lambda a: np.swapaxes(np.swapaxes(a, -3, -2), -2, -1), k_all, op="heads")  # (.., H, hd, S)
    vh = ex.layout(lambda a: np.swapaxes(a, -3, -2), v_all, op="heads")  # (.., H, S, hd)
    keep = causal_keep(T, S, 1)  # (T, S) or None: query t sees keys j <= t + S - T
    o = sites.attention(ex, qh, kT, vh, keep, hd, mode)  # (.., H, T, hd)
    return ex.layout(lambda a: np.swapaxes(a, -3, -2).reshape(*lead, T, d), o, op="merge_heads")  # (.., T, d)


def _site(ex: Executor, x: Any, w: Mapping[str, Any], name: str, norm: str, eps: float, mode: Mode) -> Any:
    """The LayerNorm `norm` -> linear `name` site in `mode` (with its bias, if the prepared weights have one)."""
    if mode == "fused":
        return sites.layer_norm_linear(ex, x, None, None, w[name], w[f"{name}_bias"], eps, mode, name, norm=False)
    g, b = w[f"{norm}.gamma"], w[f"{norm}.beta"]
    return sites.layer_norm_linear(ex, x, g, b, w[name], w.get(f"{name}_bias"), eps, mode, name, norm=False)


def decoder_block(
    ex: Executor, x: Any, w: Mapping[str, Any], layer: int, cache: KVCache, cfg: GptConfig, mode: Mode
) -> Any:
    """Decoder block `layer` on the residual stream x ([B,] T, d): the new stream, the block's keys and values
    written into `cache` (see `attention`). `w` is `weights.prepare(params, cfg, mode)` for the same mode."""
    b, eps = f"blk.{layer}", cfg.norm_eps
    qkv = _site(ex, x, w, f"{b}.attn_qkv", f"{b}.attn_norm", eps, mode)  # ([B,] T, 3d)
    o = attention(ex, qkv, cache, layer, cfg, mode)  # ([B,] T, d)
    a = sites.linear(ex, o, w[f"{b}.attn_output"], w[f"{b}.attn_output_bias"], "attn_output")  # ([B,] T, d)
    x = ex.elementwise(_add, x, a, op="residual")  # ([B,] T, d)
    h = _site(ex, x, w, f"{b}.ffn_up", f"{b}.ffn_norm", eps, mode)  # ([B,] T, f)
    h = ex.elementwise(ACTIVATION_FNS[cfg.activation], h, op=cfg.activation)  # ([B,] T, f)
    y = sites.linear(ex, h, w[f"{b}.ffn_down"], w[f"{b}.ffn_down_bias"], "ffn_down")  # ([B,] T, d)
    return ex.elementwise(_add, x, y, op="residual")  # ([B,] T, d)


def forward(
    w: Mapping[str, Any],
    cfg: GptConfig,
    ids: ArrayLike,
    cache: KVCache | None = None,
    *,
    mode: Mode = "fused",
    ex: Executor | None = None,
) -> tuple[Any, KVCache]:
    """Logits ([B,] T, V) for the new tokens `ids` ((T,) or (B, T)) after the cached positions, and the cache
    extended by them (the `models.kvcache.KVCache` contract: its buffers are written past its length). `w` is
    `weights.prepare(params, cfg, mode)`; `ex` defaults to a float32 NumpyExecutor."""
    if mode not in ("baseline", "fused"):
        raise ValueError(f"mode must be 'baseline' or 'fused'; got {mode!r}")
    ex = NumpyExecutor() if ex is None else ex
    past = 0 if cache is None else cache.length
    ids_ = check_ids(ids, cfg.vocab_size, cfg.context_length, past)
    T = ids_.shape[-1]
    if cache is None:
        shape = (cfg.n_layers, *ids_.shape[:-1], T, cfg.n_heads, cfg.head_dim)  # (L, [B,] T, H, hd)
        cache = KVCache(allocate(shape, w["wte"].dtype, T), allocate(shape, w["wte"].dtype, T), 0)
    if cache.k.shape[0] != cfg.n_layers or cache.batch != ids_.shape[:-1]:
        raise ValueError(f"the cache holds shape {tuple(cache.k.shape)}; it does not fit ids of shape {ids_.shape}")
    cache = room_for(cache, past + T, cfg)
    pos = cfg.position_offset + past + np.arange(T)  # (T,)

    with ex.scope(layer=None):
        e = ex.layout(lambda E: E[ids_], w["wte"], op="token_embd")  # ([B,] T, d)
        p = ex.layout(lambda E: E[pos], w["wpe"], op="position_embd")  # (T, d)
        x = ex.elementwise(_add, e, p, op="embed_add")  # ([B,] T, d)
    for i in range(cfg.n_layers):
        with ex.scope(layer=i):
            x = decoder_block(ex, x, w, i, cache, cfg, mode)  # ([B,] T, d)
    with ex.scope(layer=None):
        logits = _site(ex, x, w, "output", "output_norm", cfg.norm_eps, mode)  # ([B,] T, V)
    cache.filled[0] = past + T
    return logits, KVCache(cache.k, cache.v, past + T, cache.filled)


def _add(a: Array, b: Array) -> Array:
    return a + b
