"""The BERT encoder forward pass, written once, issued through an Executor, in textbook or fused order.

BERT (Devlin et al. 2019) is post-LayerNorm: every block ends with a LayerNorm of a residual sum, and that
normalised value is both the input of the next linear layer and the residual carried past the next sublayer:

    x0 = LN_emb(E_word[ids] + E_type[types] + E_pos[0..T-1])
    block i:  a  = Attention(x Wqkv + bqkv) Wo + bo         bidirectional, padded keys masked out
              x' = LN_attn(x + a)
              y  = GELU(x' Wup + bup) Wdown + bdown          exact GELU: t/2 (1 + erf(t / sqrt 2))
              x  = LN_out(x' + y)
    hidden states = x after the last block: ([B,] T, d)

Every LayerNorm except the last is followed by a linear layer: a LayerNorm -> linear site, two per block
(LN_emb or the previous block's LN_out -> Q|K|V, LN_attn -> FFN up). The schedule of one site, z the residual sum:

    mode="baseline"  mu = mean(z)             collective 1
                     d = z - mu
                     s = 1/sqrt(mean(d^2) + eps)   collective 2, the matmul waits for it
                     x = d s gamma + beta          LN(z): the residual branch AND the matmul's input
                     y = x F + b
    mode="fused"     y~ = z F'                     DIMC starts at once on raw z, F' = (I - E/n) Gamma F (folded)
                     mu, d, s as above             beside the matmul, on the SIMD units
                     y = s y~ + b'                 b' = beta F + b (folded)
                     x = d s gamma + beta          LN(z) for the residual branch, from the same mu and s

so the matmul no longer waits for either collective; the residual branch needs LN(z) only at the residual add
after the sublayer, long after the statistics are done. Every site calls the one rule of `normfuse_ref.fusion`
through `normfuse_ref.models.sites` (`fusion.layer_norm_linear_folded` with `norm=`, `layer_norm_linear_reference`
with `return_norm=` and the linear layer's bias), and softmax -> V is deferred exactly as in the Llama forward
(`fusion.softmax_linear`: local maxima per slice, merged by the online-softmax collective, divided after P V); the
last LayerNorm feeds no linear layer (`fusion.layer_norm_alone`). The block-level identity (both orders give the
same next residual sum, for any n) is `proofs/post_layer_norm_block.py`; docs/models.md, "BERT", has the schedule
with the paper's notation.

Cost-only emulation: activations are touched only through the executor, and everything computed outside it
(positions, the padding mask) depends on the token ids and the mask alone, so `prepared_shapes` weights can stand
in for real ones, as for Llama. Shape letters: see `normfuse_ref.models.bert.config`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ... import fusion
from ...ops import Executor, NumpyExecutor
from ...parallel import BLOCK_ELEMENTS
from .. import sites
from ..inputs import check_ids
from .config import BertConfig
from .weights import Mode

__all__ = ["attention", "check_inputs", "forward", "gelu", "packed", "real_rows", "unpack"]

Array = NDArray[Any]


def check_inputs(
    ids: ArrayLike, attention_mask: ArrayLike | None, token_type_ids: ArrayLike | None, cfg: BertConfig
) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64]]:
    """Token ids ([B,] T) (`models.inputs.check_ids`), the keep-mask (True = a real token) and the segment ids,
    checked; ValueError otherwise.

    attention_mask: 1/True for a real token, 0/False for padding (HF's convention); default all ones.
    token_type_ids: segment of each token (0 for a single text); default all zeros.
    """
    a = check_ids(ids, cfg.vocab_size, cfg.max_positions)
    if attention_mask is None:
        keep = np.ones(a.shape, dtype=bool)  # ([B,] T)
    else:
        m = np.asarray(attention_mask)
        if m.shape != a.shape or m.dtype.kind not in "biu" or not np.isin(m, (0, 1)).all():
            raise ValueError(
                f"attention_mask must be 0/1 of the ids' shape {a.shape}; got dtype {m.dtype.name}, shape {m.shape}"
            )
        keep = m.astype(bool)  # ([B,] T)
    if token_type_ids is None:
        types = np.zeros(a.shape, dtype=np.int64)  # ([B,] T)
    else:
        t = np.asarray(token_type_ids)
        if t.shape != a.shape or t.dtype.kind not in "iu" or ((t < 0) | (t >= cfg.type_vocab_size)).any():
            raise ValueError(
                f"token_type_ids must be integers in [0, {cfg.type_vocab_size}) of the ids' shape {a.shape}; "
                f"got dtype {t.dtype.name}, shape {t.shape}"
            )
        types = t.astype(np.int64)
    return a, keep, types


_SQRT1_2 = 1 / math.sqrt(2)

#: erfc(z) ~ s (a1 + s (a2 + s (a3 + s (a4 + s a5)))) exp(-z^2), s = 1 / (1 + p z), z >= 0: M. Abramowitz and
#: I. A. Stegun, Handbook of Mathematical Functions (1964), 7.1.26, absolute error <= 1.5e-7 for every z >= 0.
_ERFC_P = 0.3275911
_ERFC_FIT = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # a1 .. a5
#: Elements per step of the float32 GELU: a block's temporaries stay in the CPU cache across its ~20 passes. The
#: plain executor's block (it cuts the op into blocks of this size already, so each is one step): 8192 made ~8,600
#: ufunc calls a MiniLM layer of 64 sentences, and the call overhead cost 36% (14.3 -> 9.1 ms CPU a layer).
_GELU_BLOCK = BLOCK_ELEMENTS


# reference: torch.nn.functional.gelu(t) (approximate="none"), HF BERT's "gelu"
def gelu(t: Array) -> Array:
    """Exact GELU t Phi(t) = t/2 (1 + erf(t / sqrt 2)), computed in t's (accumulation) dtype.

    float64: with scipy's erf (within an ulp or two). float32 (the accumulation of float32, float16 and bfloat16
    storage): GELU(t) = max(t, 0) - |t| erfc(|t| / sqrt 2) / 2, with erfc from the fit `_ERFC_FIT` evaluated in
    float32 block by block, 20 passes through a block: 4x faster than scipy's erf, which computes each element in
    float64 (11 vs 44 ms on 1,245 x 1,536 values, one thread). Its error is at most 7 u |t| (u = 2^-24):
    the fit's absolute error 1.5e-7 = 2.5 u on erfc, on a term |t|/2 (1.3 u |t|), plus float32 evaluation of s,
    the polynomial and the exponential, a few u relative on a term at most |t|/2, and the final rounding
    (tests/test_bert_forward.py checks the bound on a dense grid; measured 4.9 u |t|, while torch's float32 GELU is
    within 5.9 u |t|). It is not the tanh approximation ("gelu_new"), which differs by up to 5e-4.
    """
    if t.dtype.itemsize >= 8:
        from scipy.special import erf  # here: the machine emulator imports this module and runs without scipy

        h = t * _SQRT1_2  # (.., f)
        erf(h, out=h)
        h += 1
        h *= t
        h *= 0.5
        return h
    dt = t.dtype.type
    a5, a4, a3, a2, a1 = (dt(c / 2) for c in reversed(_ERFC_FIT))  # halved: the sum is |t| erfc(z) / 2 at once
    out = np.empty_like(t)  # (.., f)
    flat_t, flat_out = t.reshape(-1), out.reshape(-1)
    a, s, e = (np.empty(min(_GELU_BLOCK, t.size), dtype=t.dtype) for _ in range(3))  # (block,) each
    for i in range(0, t.size, _GELU_BLOCK):
        x, o = flat_t[i : i + _GELU_BLOCK], flat_out[i : i + _GELU_BLOCK]
        a_, s_, e_ = a[: x.size], s[: x.size], e[: x.size]
        np.abs(x, out=a_)  # |t|
        np.multiply(a_, dt(_ERFC_P * _SQRT1_2), out=s_)  # p z, z = |t| / sqrt 2
        s_ += 1
        np.divide(1, s_, out=s_)  # s = 1 / (1 + p z)
        np.multiply(x, dt(-0.5), out=e_)
        e_ *= x
        np.exp(e_, out=e_)  # exp(-z^2) = exp(-t^2 / 2)
        np.multiply(s_, a5, out=o)
        for c in (a4, a3, a2, a1):
            o += c
            o *= s_  # s (a1 + s (a2 + ...)) / 2
        o *= e_  # erfc(z) / 2
        o *= a_  # |t| erfc(z) / 2
        np.maximum(x, 0, out=a_)
        np.subtract(a_, o, out=o)
    return out


def attention(ex: Executor, qkv: Any, keep: NDArray[np.bool_], cfg: BertConfig, mode: Mode) -> Any:
    """Bidirectional multi-head attention over one batch: qkv -> the attention's output, row for row, where qkv is
    ([B,] T, 3d), or (N, 3d) for a packed batch (`packed`: the rows of the N True entries of keep ([B,] T) alone).

    Every query sees every key whose keep-mask entry is True (padding keys get a score of -inf), in both orders. A
    packed batch is laid out padded for the products of its texts' own tokens (zeros under the padding), and its
    padded query rows, which see the same real keys, are computed and then dropped.
    """
    pack = packed(keep)
    if pack:  # (N, 3d) -> ([B,] T, 3d)
        qkv = ex.layout(lambda a: unpack(a, keep), qkv, op="pad_rows")
    lead = tuple(qkv.shape[:-2])  # () or (B,)
    T, H, hd, d = qkv.shape[-2], cfg.n_heads, cfg.head_dim, cfg.dim

    def heads(c: int) -> Any:  # columns [c d, (c + 1) d) of qkv: (.., T, H, hd) -> (.., H, T, hd)
        return lambda a: np.swapaxes(a[..., c * d : (c + 1) * d].reshape(*lead, T, H, hd), -3, -2)

    q = ex.layout(heads(0), qkv, op="split_q")  # (.., H, T, hd)
    kT = ex.layout(lambda a: np.swapaxes(heads(1)(a), -2, -1), qkv, op="split_k")  # (.., H, hd, T)
    v = ex.layout(heads(2), qkv, op="split_v")  # (.., H, T, hd)
    visible = None if keep.all() else keep[..., None, None, :]  # ([B,] 1, 1, T): padded keys are not
    o = sites.attention(ex, q, kT, v, visible, hd, mode)  # (.., H, T, hd)

    def merge_heads(a: Array) -> Array:  # (.., H, T, hd) -> (.., T, H, hd) -> (.., T, d), or its real rows (N, d)
        a = np.swapaxes(a.reshape(*lead, H, T, hd), -3, -2)  # (.., T, H, hd)
        return a[keep].reshape(-1, d) if pack else a.reshape(*lead, T, d)  # (one copy either way)

    return ex.layout(merge_heads, o, op="merge_heads")  # (.., T, d) or (N, d)


def packed(keep: NDArray[np.bool_]) -> bool:
    """Whether `forward` runs a batch with this keep-mask ([B,] T) packed: with padding, its N real tokens' rows
    alone (N, ..) go through every layer but the attention's products, which see each text's own tokens."""
    return not keep.all()


def real_rows(x: Array, keep: NDArray[np.bool_]) -> Array:
    """The real tokens' rows (N, ..), in order, of an activation of `forward` over a batch with this keep-mask,
    whether it ran packed (x is (N, ..)) or not (x is ([B,] T, ..))."""
    return x if packed(keep) else x[keep]


def unpack(rows: Array, keep: NDArray[np.bool_]) -> Array:
    """Real tokens' rows (N, ..) -> the padded batch ([B,] T, ..), zeros under the padding."""
    out = np.empty((keep.size, *rows.shape[1:]), dtype=rows.dtype)  # (B T, ..)
    real = keep.reshape(-1)  # (B T,)
    out[real] = rows
    out[~real] = np.zeros((), dtype=rows.dtype)  # (a third faster than zeros everywhere first; any dtype)
    return out.reshape(*keep.shape, *rows.shape[1:])


# ---------------------------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------------------------


def forward(
    w: Mapping[str, Any],
    cfg: BertConfig,
    ids: ArrayLike,
    attention_mask: ArrayLike | None = None,
    token_type_ids: ArrayLike | None = None,
    *,
    mode: Mode = "fused",
    ex: Executor | None = None,
    centring: fusion.Centring = "fold",
    softmax: Mode | None = None,
) -> Any:
    """Last hidden states ([B,] T, d) of token ids ([B,] T). `w` is `weights.prepare(params, cfg, mode)` for the
    same mode (with `centring="compensate"`, prepared with it too); `ex` defaults to a float32 NumpyExecutor.
    `centring` picks a mitigation of the fused LayerNorm -> linear rule (`normfuse_ref.fusion`, "Mitigations").
    `softmax` is the order of the softmax -> V sites alone (default `mode`): the accuracy study's ablation fuses one
    kind of site at a time (`normfuse_ref.accuracy.minilm`, "Ablation"); `mode` then orders the LayerNorm sites.
    Padding (attention_mask 0) is right padding: positions count from 0 at the first token, as in HF BERT, and
    padded keys are invisible to every query. A batch with padding runs packed (`packed`): its real tokens' rows
    alone go through the embeddings, LayerNorms, linear layers and GELU (the attention lays them out padded for its
    products), so padding costs nothing there, and the output is zero at the padded positions (HF BERT computes
    them, and pooling ignores them). A real token's row is the same whether its batch ran packed or not (the same
    operations on the same values; the bits too, measured on all-MiniLM-L6-v2 in every storage dtype).

    Block i starts with the LayerNorm that ends block i - 1 (the embeddings' LayerNorm for block 0), because that
    is the site where it meets its linear layer; the last LayerNorm is issued after the blocks (layer None).
    """
    softmax = mode if softmax is None else softmax
    for name, m in (("mode", mode), ("softmax", softmax)):
        if m not in ("baseline", "fused"):
            raise ValueError(f"{name} must be 'baseline' or 'fused'; got {m!r}")
    ex = NumpyExecutor() if ex is None else ex
    ids_, keep, types = check_inputs(ids, attention_mask, token_type_ids, cfg)
    T, eps = ids_.shape[-1], cfg.norm_eps
    pos: Any = slice(T)  # the positions' rows of E_pos: 0..T-1 for every text
    pack = packed(keep)
    if pack:  # padding: the real tokens alone from here on, (N,) in place of ([B,] T), as the rows below
        ids_, types, pos = ids_[keep], types[keep], np.nonzero(keep)[-1]  # (N,) each

    with ex.scope(layer=None):
        e_word = ex.layout(lambda E: E[ids_], w["word_embeddings"], op="word_embd")  # ([B,] T, d)
        e_type = ex.layout(lambda E: E[types], w["token_type_embeddings"], op="token_type_embd")  # ([B,] T, d)
        e_pos = ex.layout(lambda E: E[pos], w["position_embeddings"], op="position_embd")  # (T, d)
        z = ex.elementwise(lambda a, b, c: a + b + c, e_word, e_type, e_pos, op="embed_sum")  # ([B,] T, d)
    ln = "embeddings.ln"
    for i in range(cfg.n_layers):
        L = f"layer.{i}"
        with ex.scope(layer=i):
            qkv, x = sites.layer_norm_linear(
                ex, z, w[f"{ln}.gamma"], w[f"{ln}.beta"], w[f"{L}.qkv"], w[f"{L}.qkv_bias"], eps, mode, "attn_qkv",
                norm=True, centring=centring, r=w.get(f"{L}.qkv_colsum"),
            )  # fmt: skip  # ([B,] T, 3d), ([B,] T, d)
            o = attention(ex, qkv, keep, cfg, softmax)  # ([B,] T, d)
            a = sites.linear(ex, o, w[f"{L}.attn_output"], w[f"{L}.attn_output_bias"], "attn_output")  # ([B,] T, d)
            z = ex.elementwise(_add, x, a, op="residual")  # ([B,] T, d)
            h, x = sites.layer_norm_linear(
                ex, z, w[f"{L}.attn_ln.gamma"], w[f"{L}.attn_ln.beta"], w[f"{L}.ffn_up"], w[f"{L}.ffn_up_bias"],
                eps, mode, "ffn_up", norm=True, centring=centring, r=w.get(f"{L}.ffn_up_colsum"),
            )  # fmt: skip  # ([B,] T, f), ([B,] T, d)
            g = ex.elementwise(gelu, h, op="gelu")  # ([B,] T, f)
            y = sites.linear(ex, g, w[f"{L}.ffn_down"], w[f"{L}.ffn_down_bias"], "ffn_down")  # ([B,] T, d)
            z = ex.elementwise(_add, x, y, op="residual")  # ([B,] T, d)
        ln = f"{L}.ffn_ln"
    with ex.scope(layer=None):
        h = fusion.layer_norm_alone(z, w[f"{ln}.gamma"], w[f"{ln}.beta"], eps, ex=ex, op="output_ln")  # ([B,] T, d)
        return ex.layout(lambda a: unpack(a, keep), h, op="pad_rows") if pack else h  # ([B,] T, d)


def _add(a: Array, b: Array) -> Array:
    return a + b
