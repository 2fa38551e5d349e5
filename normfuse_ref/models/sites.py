"""The rule sites every family shares: each normalisation -> linear and softmax -> linear of a forward pass, in the
order `mode` asks for, by calling the one rule of `normfuse_ref.fusion` (a family writes no rule of its own).

    mode="fused"     the paper's order: the matmul on the raw row with the normalisation folded into the weight
                     (`weights.prepare` folded it, offline), the scale after it; softmax -> V per slice, merged
                     by the online-softmax collective, divided after
    mode="baseline"  the textbook order: the normalisation's collectives, then the matmul on the normalised row

`op` names the linear layer; the rule names its own primitives after it (`{op}.rms`, `{op}.mean`, ...), which is how
the emulator prices them (`normfuse_ref.hw.costs.SIMD_PROGRAMS`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import fusion
from ..ops import Executor
from .llama.weights import Mode

__all__ = ["Mode", "attention", "layer_norm_linear", "linear", "masked_scores", "rms_norm_linear", "softmax_linear"]


# reference: linear(rms_norm(x, g, eps), F)
def rms_norm_linear(ex: Executor, x: Any, g: Any, F: Any, eps: float, mode: Mode, op: str) -> Any:
    """RMSNorm -> linear in `mode`, with the weights prepared for it (F = g ⊙ F in fused mode, g unused)."""
    if mode == "fused":
        return fusion.rms_norm_linear_folded(x, F, eps, ex=ex, op=op)  # s * (x @ (g ⊙ F))
    return fusion.rms_norm_linear_reference(x, g, F, eps, ex=ex, op=op)  # linear(rms_norm(x, g), F)


# reference: linear(layer_norm(x, gamma, beta, eps), F) + b
def layer_norm_linear(
    ex: Executor,
    x: Any,
    gamma: Any,
    beta: Any,
    F: Any,
    b: Any,
    eps: float,
    mode: Mode,
    op: str,
    *,
    norm: bool,
    centring: fusion.Centring = "fold",
    r: Any = None,
) -> Any:
    """LayerNorm -> linear (with the linear layer's own bias b) in `mode`, with the weights prepared for it: F and
    b as stored in baseline mode, folded in fused mode (F' = (I - E/n) Gamma F, b' = beta F + b).

    With `norm=True` the pair (y, LN(x)), both orders computing LN(x) from the statistics of the site itself (a
    post-LN block carries it in the residual stream): the fused order starts the matmul on raw x and forms LN(x)
    beside it, from the same mu and s (docs/models.md, "The post-LN schedule").

    `centring` and `r` are the fused rule's mitigations of the centring hazard (`fusion.layer_norm_linear_folded`;
    `r` the stored fold's column sums for "compensate"); the baseline order has no fold and ignores them."""
    if mode == "fused":
        folded_norm = (gamma, beta) if norm else None
        out = fusion.layer_norm_linear_folded(x, F, b, eps, ex=ex, op=op, norm=folded_norm, centring=centring, r=r)
    else:
        out = fusion.layer_norm_linear_reference(x, gamma, beta, F, eps, ex=ex, op=op, return_norm=norm, b=b)
    return out


# reference: where(keep, z / sqrt(hd), -inf)
def masked_scores(ex: Executor, z: Any, keep: NDArray[np.bool_] | None, hd: int) -> Any:
    """The attention scores ready for softmax -> V, the same in both orders: z / sqrt(hd), -inf where `keep`
    (broadcast against z) is False (None: every key visible), kept in acc for the softmax. The mask is an argument
    of the elementwise op, not held in a closure, so an executor may cut the op into blocks of rows."""
    scale = 1 / math.sqrt(hd)  # a Python float: the product stays in z's (accumulation) dtype
    if keep is None:
        return ex.elementwise(lambda z: z * scale, z, op="attn_mask", keep_acc=True)

    def mask(z: NDArray[Any], keep: NDArray[np.bool_]) -> NDArray[Any]:  # where(keep, z * scale, -inf), 3-5x faster
        out = np.multiply(z, scale)
        np.copyto(out, -np.inf, where=~keep)
        return out

    return ex.elementwise(mask, z, keep, op="attn_mask", keep_acc=True)


# reference: softmax(z) @ V
def softmax_linear(ex: Executor, z: Any, V: Any, mode: Mode, op: str) -> Any:
    """Softmax -> V in `mode`: (e^{z - m_slice} @ V merged across slices) / l, or softmax(z) @ V."""
    if mode == "fused":
        return fusion.softmax_linear(z, V, ex=ex, op=op)
    return fusion.softmax_linear_reference(z, V, ex=ex, op=op)


# reference: softmax(where(keep, q k^T / sqrt(hd), -inf)) @ v
def attention(ex: Executor, q: Any, kT: Any, v: Any, keep: NDArray[np.bool_] | None, hd: int, mode: Mode) -> Any:
    """Scaled dot-product attention of every family, with the softmax -> V site in `mode`: q (..., rows, hd)
    against keys kT (..., hd, S) and values v (..., S, hd'), `keep` broadcast against the scores (..., rows, S).

    Each query row's output reads only its own scores, so the executor may run this on blocks of query rows
    (`Executor.rows`): the plain executor does, keeping a block's scores in cache from q k^T to P V; the emulator
    issues the same primitives on the whole. Keys after the last one that any row of a block sees are left out of
    its products: their weights e^{-inf} are exactly 0, so they add exact zeros (a causal block of early queries
    reads only the keys before it; the whole, whose last query sees every key, reads all of them)."""

    def attend(ex: Executor, q: Any, keep: Any, kT: Any, v: Any) -> Any:  # a block of query rows
        seen = keys_seen(keep)
        if seen < np.shape(kT)[-1]:  # keys [seen, S) are masked for every row here
            kT = ex.layout(lambda a: a[..., :seen], kT, op="keys_seen")  # (..., hd, seen)
            v = ex.layout(lambda a: a[..., :seen, :], v, op="keys_seen")  # (..., seen, hd')
            keep = keep[..., :seen]
        z = ex.matmul(q, kT, op="attn_scores", keep_acc=True)  # (..., rows, S)   scores stay in acc for the softmax
        z = masked_scores(ex, z, keep, hd)  # (..., rows, S)   z / sqrt(hd), -inf where a key is not seen
        return softmax_linear(ex, z, v, mode, "attn_pv")  # (..., rows, hd')

    return ex.rows(attend, q, keep, batched=(kT, v), op="attention")


def keys_seen(keep: NDArray[np.bool_] | None) -> int | float:
    """1 + the last key that some row of `keep` (..., rows, S) sees, at least 1 (a row that sees no key is all
    masked whatever its length); infinity when there is no mask or it is broadcast over the keys (last axis of
    length 1: every key, or none, for each row)."""
    if keep is None or keep.shape[-1] == 1:
        return math.inf
    if keep[..., -1].any():  # some row sees the last key (a whole causal mask's last query): all of them, and
        return keep.shape[-1]  # only one column read (the emulator asks this of the whole mask at every layer)
    seen = np.flatnonzero(keep.any(axis=tuple(range(keep.ndim - 1))))  # the keys some row sees
    return max(1, int(seen[-1]) + 1) if seen.size else 1


# reference: x @ F + b
def linear(ex: Executor, x: Any, F: Any, b: Any, op: str) -> Any:
    """A linear layer with a bias and no normalisation in front (the same in both orders): the product waits in
    acc for its bias and is rounded once with it, as the LayerNorm rule rounds its biased output."""
    y = ex.matmul(x, F, op=op, keep_acc=True)  # (..., m)
    return ex.elementwise(_add, y, b, op=f"{op}.bias")  # (..., m)


def _add(a: Any, b: Any) -> Any:
    return a + b
