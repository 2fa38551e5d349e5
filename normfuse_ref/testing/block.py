"""A Llama decoder block from the public layers, in reference order and in fused order, and its error bound.

    reference: h = rms_norm(x) ; q, k, v = h Wq, h Wk, h Wv ; rope ; o = attention(q, k, v) ; x1 = x + o Wo
               h2 = rms_norm(x1) ; x2 = x1 + swiglu(h2)
    fused:     q, k, v = rms_norm_linear(x, g, W*)            (site 1: 1/rms after the matmul, g folded)
               o = softmax_linear(z, v) per head, tiled         (site 2: online softmax, division after P V)
               gate, up = rms_norm_linear(x1, g2, W_gate/up)   (site 3)

Both orders run the same operations everywhere else (the residual adds, rope, the output projection, silu, the
down projection), so the block's allowance is the running error bound of the reference order in which, at each
of the three sites, the larger of the two orders' bounds is carried on (`decoder_block_allowance`). Downstream
operations are monotone in their input bounds, so this bounds both orders' errors, and it keeps the criterion
of `equivalence` unchanged: E_fused <= c E_ref + atol, c = 1.

Reuse: the functions take (x, positions, cfg, **weights) with weights keyed by the GGUF tensor names of one
layer (attn_norm, attn_q, ...; matrices in row-vector layout (in, out)), so a model forward can call them per
layer and chain `decoder_block_bound` over Bounded activations. Only prefill (T queries over the same T keys,
causal) is covered here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .. import fusion, layers
from ..layers import RopeLayout
from ..precision import accumulation_dtype
from . import bounds as bd
from .bounds import Bounded, Precision

__all__ = [
    "WEIGHT_NAMES",
    "BlockConfig",
    "decoder_block_allowance",
    "decoder_block_bound",
    "decoder_block_fused",
    "decoder_block_reference",
    "weight_shapes",
]

Array = NDArray[Any]
F64 = NDArray[np.float64]

#: One layer's weights, by their GGUF tensor names (blk.N.<name>.weight), in row-vector layout (in, out).
WEIGHT_NAMES = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


@dataclass(frozen=True)
class BlockConfig:
    """The shape of one decoder block."""

    d: int  # model width: length of x's rows and of the norm gains
    n_heads: int  # Hq, query heads
    n_kv_heads: int  # Hkv, key/value heads; Hq is a multiple (grouped-query attention)
    head_dim: int  # hd, even (RoPE rotates pairs)
    ffn_dim: int  # f, width of the SwiGLU hidden layer
    eps: float = 1e-5  # RMSNorm eps: Llama 2 and SmolLM2 use 1e-5
    rope_base: float = 10000.0  # RoPE theta: Llama 2's value (Llama 3 uses 500000)
    rope_layout: RopeLayout = "half"  # HF checkpoints; GGUF (llama.cpp) uses "interleaved"

    def __post_init__(self) -> None:
        if self.head_dim % 2 or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"need an even head_dim and n_heads a multiple of n_kv_heads; got {self}")


def weight_shapes(cfg: BlockConfig) -> dict[str, tuple[int, ...]]:
    """The shape of each weight of a block with config `cfg`."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return {
        "attn_norm": (cfg.d,),
        "attn_q": (cfg.d, q),
        "attn_k": (cfg.d, kv),
        "attn_v": (cfg.d, kv),
        "attn_output": (q, cfg.d),
        "ffn_norm": (cfg.d,),
        "ffn_gate": (cfg.d, cfg.ffn_dim),
        "ffn_up": (cfg.d, cfg.ffn_dim),
        "ffn_down": (cfg.ffn_dim, cfg.d),
    }


def _residual(x: Array, y: Array, a: np.dtype) -> Array:
    """x + y computed in the accumulation dtype and rounded once to x's dtype (both orders use this)."""
    return (x.astype(a) + y.astype(a)).astype(x.dtype)  # (T, d)


def decoder_block_reference(
    x: Array,
    positions: ArrayLike,
    cfg: BlockConfig,
    *,
    attn_norm: Array,
    attn_q: Array,
    attn_k: Array,
    attn_v: Array,
    attn_output: Array,
    ffn_norm: Array,
    ffn_gate: Array,
    ffn_up: Array,
    ffn_down: Array,
    acc: DTypeLike | None = None,
) -> Array:
    """The textbook order: every public layer rounds its output once to x's dtype. x (T, d), positions (T,)."""
    T = x.shape[0]
    Hq, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    a = accumulation_dtype(x.dtype, acc)
    pos = np.asarray(positions)[:, None]  # (T, 1)
    h = layers.rms_norm(x, attn_norm, cfg.eps, acc=acc)  # (T, d)
    q = layers.linear(h, attn_q, acc=acc).reshape(T, Hq, hd)  # (T, Hq, hd)
    k = layers.linear(h, attn_k, acc=acc).reshape(T, Hkv, hd)  # (T, Hkv, hd)
    v = layers.linear(h, attn_v, acc=acc).reshape(T, Hkv, hd)  # (T, Hkv, hd)
    q = layers.rope(q, pos, base=cfg.rope_base, layout=cfg.rope_layout, acc=acc)  # (T, Hq, hd)
    k = layers.rope(k, pos, base=cfg.rope_base, layout=cfg.rope_layout, acc=acc)  # (T, Hkv, hd)
    o = layers.attention(q, k, v, causal=True, acc=acc).reshape(T, Hq * hd)  # (T, Hq*hd)
    x1 = _residual(x, layers.linear(o, attn_output, acc=acc), a)  # (T, d)
    h2 = layers.rms_norm(x1, ffn_norm, cfg.eps, acc=acc)  # (T, d)
    return _residual(x1, layers.swiglu(h2, ffn_gate, ffn_up, ffn_down, acc=acc), a)  # (T, d)


# reference: layers.attention(q, k, v, causal=True), i.e. softmax(q k^T / sqrt(hd)) @ v per query head
def fused_attention(q: Array, k: Array, v: Array, *, tile_size: int | None, acc: np.dtype) -> Array:
    """Causal GQA attention with the softmax -> V rule: scores in acc, softmax_linear per query head, one
    rounding to q's dtype. q (T, Hq, hd), k and v (S, Hkv, hd); returns (T, Hq, hd)."""
    T, Hq, hd = q.shape
    S, Hkv = k.shape[0], k.shape[1]
    G = Hq // Hkv
    qa = q.astype(acc).reshape(T, Hkv, G, hd)  # (T, Hkv, G, hd)
    z = np.einsum("tkgd,skd->kgts", qa, k.astype(acc)) / np.sqrt(acc.type(hd))  # (Hkv, G, T, S)
    z = z.reshape(Hq, T, S)  # (Hq, T, S); head h = kv * G + g, as in layers.attention
    keep = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)  # (T, S)
    z = np.where(keep, z, -np.inf).astype(acc)  # (Hq, T, S)
    Vh = np.repeat(v.astype(acc).transpose(1, 0, 2), G, axis=0)  # (Hq, S, hd); head h reads kv head h // G
    o = fusion.softmax_linear(z, Vh, tile_size=tile_size, acc=acc)  # (Hq, T, hd)
    return o.transpose(1, 0, 2).astype(q.dtype)  # (T, Hq, hd)


def decoder_block_fused(
    x: Array,
    positions: ArrayLike,
    cfg: BlockConfig,
    *,
    attn_norm: Array,
    attn_q: Array,
    attn_k: Array,
    attn_v: Array,
    attn_output: Array,
    ffn_norm: Array,
    ffn_gate: Array,
    ffn_up: Array,
    ffn_down: Array,
    tile_size: int | None = None,
    acc: DTypeLike | None = None,
) -> Array:
    """The fused order at the three sites (see the module docstring); identical to the reference elsewhere."""
    T = x.shape[0]
    Hq, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    a = accumulation_dtype(x.dtype, acc)
    pos = np.asarray(positions)[:, None]  # (T, 1)
    # reference: linear(rms_norm(x, attn_norm), W) for W in (attn_q, attn_k, attn_v)
    q = fusion.rms_norm_linear(x, attn_norm, attn_q, cfg.eps, acc=acc).reshape(T, Hq, hd)  # (T, Hq, hd)
    k = fusion.rms_norm_linear(x, attn_norm, attn_k, cfg.eps, acc=acc).reshape(T, Hkv, hd)  # (T, Hkv, hd)
    v = fusion.rms_norm_linear(x, attn_norm, attn_v, cfg.eps, acc=acc).reshape(T, Hkv, hd)  # (T, Hkv, hd)
    q = layers.rope(q, pos, base=cfg.rope_base, layout=cfg.rope_layout, acc=acc)  # (T, Hq, hd)
    k = layers.rope(k, pos, base=cfg.rope_base, layout=cfg.rope_layout, acc=acc)  # (T, Hkv, hd)
    # reference: attention(q, k, v) = softmax(q k^T / sqrt(hd)) @ v per head
    o = fused_attention(q, k, v, tile_size=tile_size, acc=a).reshape(T, Hq * hd)  # (T, Hq*hd)
    x1 = _residual(x, layers.linear(o, attn_output, acc=acc), a)  # (T, d)
    # reference: swiglu(rms_norm(x1, ffn_norm), ffn_gate, ffn_up, ffn_down)
    gate = fusion.rms_norm_linear(x1, ffn_norm, ffn_gate, cfg.eps, acc=acc)  # (T, f)
    up = fusion.rms_norm_linear(x1, ffn_norm, ffn_up, cfg.eps, acc=acc)  # (T, f)
    hmid = layers.silu(gate.astype(a), acc=a) * up.astype(a)  # (T, f) in acc
    down = layers.linear(hmid, ffn_down, acc=a).astype(x.dtype)  # (T, d)
    return _residual(x1, down, a)  # (T, d)


# ---------------------------------------------------------------------------------------------------------------
# The block's running error bound
# ---------------------------------------------------------------------------------------------------------------


def _site_rms_linear(X: Bounded, g: Array, W: Array, eps: float, P: Precision) -> tuple[Bounded, Bounded]:
    """rms_norm -> linear at one site: (reference-order bound, fused-order bound), both stored. The fold is
    stored in the storage dtype without its underflow term (the fold-underflow hazard, as in `equivalence`)."""
    G, Wb = bd.exact(g), bd.exact(W)
    ref = bd.store(bd.matmul(bd.store(bd.rms_norm_acc(X, G, eps, P), P), Wb, P), P)  # (T, out)
    Fg = bd.fold(G.v[:, None] * Wb.v, Precision.of(P.storage, np.float64), underflow=False)  # (d, out)
    s, L = bd.rms_scale(X, eps, P)  # (T, 1)
    fused = bd.store(bd.scale_rows(bd.matmul(X, Fg, P), s, L, P), P)  # (T, out)
    return ref, fused


def _widest(a: Bounded, b: Bounded) -> Bounded:
    """The same oracle value with the larger of two bounds: what either order may have made."""
    return Bounded(a.v, np.maximum(a.b, b.b))


def _heads(X: Bounded, T: int, H: int, hd: int) -> Bounded:
    """(T, H*hd) -> (H, T, hd)."""
    return Bounded(X.v.reshape(T, H, hd).transpose(1, 0, 2), X.b.reshape(T, H, hd).transpose(1, 0, 2))


@bd.quiet
def decoder_block_bound(
    X: Bounded,
    positions: ArrayLike,
    cfg: BlockConfig,
    weights: dict[str, Array],
    P: Precision,
    *,
    tile_size: int | None,
) -> Bounded:
    """Oracle value and allowance of the block's output (T, d) for an input X (T, d) known to within X.b.

    Every operation is the one in `decoder_block_reference`; at the three sites the larger of the reference and
    fused bounds is carried on."""
    w = weights
    T = X.v.shape[0]
    Hq, Hkv, hd, G = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
    pos = np.asarray(positions)  # (T,): broadcasts over the heads of (H, T, hd)
    # site 1
    qkv = [_widest(*_site_rms_linear(X, w["attn_norm"], w[k], cfg.eps, P)) for k in ("attn_q", "attn_k", "attn_v")]
    Q = _heads(qkv[0], T, Hq, hd)  # (Hq, T, hd)
    K = _heads(qkv[1], T, Hkv, hd)  # (Hkv, T, hd)
    V = _heads(qkv[2], T, Hkv, hd)  # (Hkv, T, hd)
    Q = bd.store(bd.rope(Q, pos, base=cfg.rope_base, layout=cfg.rope_layout, P=P), P)  # (Hq, T, hd)
    K = bd.store(bd.rope(K, pos, base=cfg.rope_base, layout=cfg.rope_layout, P=P), P)  # (Hkv, T, hd)
    rep = lambda B: Bounded(np.repeat(B.v, G, axis=0), np.repeat(B.b, G, axis=0))  # noqa: E731  (Hq, T, hd)
    Z = bd.attention_scores(Q, rep(K), P)  # (Hq, T, T)
    keep = np.arange(T)[None, :] <= np.arange(T)[:, None]  # (T, T)
    Z = Bounded(np.where(keep, Z.v, -np.inf), np.where(keep, Z.b, 0.0))
    # site 2
    t = T if tile_size is None else min(tile_size, T)
    ref_o = bd.store(bd.matmul(bd.softmax_acc(Z, P), rep(V), P), P)  # (Hq, T, hd)
    fused_o = bd.store(bd.softmax_online_matmul(Z, rep(V), P, tile_len=t, depth=-(-T // t) - 1), P)
    O = _widest(ref_o, fused_o)
    O = Bounded(O.v.transpose(1, 0, 2).reshape(T, Hq * hd), O.b.transpose(1, 0, 2).reshape(T, Hq * hd))
    X1 = bd.store(bd.add(X, bd.store(bd.matmul(O, bd.exact(w["attn_output"]), P), P), P), P)  # (T, d)
    # site 3: the reference rounds h2 and keeps gate/up in acc; the fused order rounds gate and up
    H2 = bd.store(bd.rms_norm_acc(X1, bd.exact(w["ffn_norm"]), cfg.eps, P), P)  # (T, d)
    gate_f, up_f = (_site_rms_linear(X1, w["ffn_norm"], w[k], cfg.eps, P)[1] for k in ("ffn_gate", "ffn_up"))
    gate = _widest(bd.matmul(H2, bd.exact(w["ffn_gate"]), P), gate_f)  # (T, f)
    up = _widest(bd.matmul(H2, bd.exact(w["ffn_up"]), P), up_f)  # (T, f)
    Hm = bd.mul(bd.silu(gate, P), up, P)  # (T, f)
    down = bd.store(bd.matmul(Hm, bd.exact(w["ffn_down"]), P), P)  # (T, d)
    return bd.store(bd.add(X1, down, P), P)  # (T, d)


@bd.quiet
def decoder_block_allowance(
    x: Array,
    positions: ArrayLike,
    cfg: BlockConfig,
    *,
    tile_size: int | None = None,
    acc: DTypeLike | None = None,
    **weights: Array,
) -> F64:
    """atol per output (T, d) for stored inputs: the block bound in (x's dtype, acc) plus the float64 oracle's."""
    P = Precision.of(x.dtype, acc)
    X = bd.exact(x)
    low = decoder_block_bound(X, positions, cfg, weights, P, tile_size=tile_size)
    oracle = decoder_block_bound(X, positions, cfg, weights, Precision.of(np.float64), tile_size=tile_size)
    return low.b + oracle.b
