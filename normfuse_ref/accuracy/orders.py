"""A second summation order for a whole model: the same network with its hidden channels listed in another order.

How much of a figure is noise? The study runs the baseline order twice, the second time on the model with its
hidden channels permuted: a fixed random permutation pi of the d residual-stream channels and sigma of the f FFN
channels, applied to every weight that reads or writes them. In exact arithmetic the permuted model computes the
same logits (every sum over channels has the same terms, in another order); in floating point every matmul over d
or f and every RMSNorm mean adds its terms in a different order, so the rounding errors are drawn afresh. The
spread of a figure between the two runs is what rounding alone moves it by: the yardstick for "fused is no worse
than baseline" (`normfuse_ref.accuracy.study`). On a machine this is the same model mapped onto the tiles with its
channels in another order.

Llama (GGUF names, row-vector orientation (n_in, n_out), `normfuse_ref.models.llama.weights.param_shapes`):

    token_embd (V, d): columns by pi          attn_norm, ffn_norm, output_norm (d,): by pi
    attn_q, attn_k, attn_v (d, .): rows by pi attn_output (Hq hd, d): columns by pi
    ffn_gate, ffn_up (d, f): rows pi, cols sigma   ffn_down (f, d): rows sigma, columns pi
    output (d, V), if untied: rows by pi

The head dimension is left alone (RoPE pairs channels within a head), and the vocabulary too, so logits come out
in the original order.

BERT (safetensors names, row-vector orientation, `normfuse_ref.models.bert.weights.param_shapes`): the d channels of
the residual stream by pi (the embedding tables' columns, every LayerNorm's gamma and beta, the rows of Q, K, V and
of the FFN's up projection, the columns and bias of the attention output and of the FFN's down projection) and the
f FFN channels by sigma (up's columns and bias, down's rows). The heads' channels are left alone. The hidden states
then come out with their channels permuted by pi: `unpermute_hidden` puts them back, an exact move.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..models.bert.config import BertConfig
from ..models.llama.config import LlamaConfig

__all__ = ["PERMUTATION_SEED", "channel_permutations", "permute_bert", "permute_llama", "unpermute_hidden"]

Array = NDArray[Any]

#: Seed of the channel permutations: fixed, so that the second order is the same in every run of the study.
PERMUTATION_SEED = 20250224  # the paper's arXiv submission date

#: Llama parameter name (without "blk.{i}.") -> the permutation of each axis: "d" (pi), "f" (sigma) or None.
_LLAMA_AXES: dict[str, tuple[str | None, ...]] = {
    "token_embd.weight": (None, "d"),
    "output.weight": ("d", None),
    "output_norm.weight": ("d",),
    "attn_norm.weight": ("d",),
    "ffn_norm.weight": ("d",),
    "attn_q.weight": ("d", None),
    "attn_k.weight": ("d", None),
    "attn_v.weight": ("d", None),
    "attn_output.weight": (None, "d"),
    "ffn_gate.weight": ("d", "f"),
    "ffn_up.weight": ("d", "f"),
    "ffn_down.weight": ("f", "d"),
}


def channel_permutations(sizes: Mapping[str, int], seed: int = PERMUTATION_SEED) -> dict[str, NDArray[np.int64]]:
    """One fixed random permutation per named axis size, e.g. {"d": 576, "f": 1536}."""
    rng = np.random.default_rng(seed)
    return {name: rng.permutation(n).astype(np.int64) for name, n in sorted(sizes.items())}


def _permute(a: Array, axes: tuple[str | None, ...], perms: Mapping[str, NDArray[np.int64]]) -> Array:
    for axis, name in enumerate(axes):
        if name is not None:
            a = np.take(a, perms[name], axis=axis)
    return a


def permute_llama(params: Mapping[str, Array], cfg: LlamaConfig, seed: int = PERMUTATION_SEED) -> dict[str, Array]:
    """The Llama weights with the d residual channels and the f FFN channels permuted (see the module docstring).
    A new dict of new arrays; `params` is not modified."""
    return _permute_params(params, r"^blk\.\d+\.", _LLAMA_AXES, "Llama", {"d": cfg.dim, "f": cfg.ffn_dim}, seed)


def _permute_params(
    params: Mapping[str, Array],
    block_prefix: str,
    axes: Mapping[str, tuple[str | None, ...]],
    family: str,
    sizes: Mapping[str, int],
    seed: int,
) -> dict[str, Array]:
    """Every weight permuted along its axes (`axes`: its name without the block prefix -> each axis' channels)."""
    perms = channel_permutations(sizes, seed)
    out: dict[str, Array] = {}
    for key, a in params.items():
        name = re.sub(block_prefix, "", key)
        if name not in axes:
            raise ValueError(f"no channel permutation is known for the {family} weight {key!r}")
        out[key] = np.ascontiguousarray(_permute(a, axes[name], perms))
    return out


#: BERT parameter name (without "encoder.layer.{i}.") -> the permutation of each axis.
_BERT_AXES: dict[str, tuple[str | None, ...]] = {
    "embeddings.word_embeddings.weight": (None, "d"),
    "embeddings.position_embeddings.weight": (None, "d"),
    "embeddings.token_type_embeddings.weight": (None, "d"),
    "embeddings.LayerNorm.weight": ("d",),
    "embeddings.LayerNorm.bias": ("d",),
    "attention.self.query.weight": ("d", None),
    "attention.self.key.weight": ("d", None),
    "attention.self.value.weight": ("d", None),
    "attention.self.query.bias": (None,),
    "attention.self.key.bias": (None,),
    "attention.self.value.bias": (None,),
    "attention.output.dense.weight": (None, "d"),
    "attention.output.dense.bias": ("d",),
    "attention.output.LayerNorm.weight": ("d",),
    "attention.output.LayerNorm.bias": ("d",),
    "intermediate.dense.weight": ("d", "f"),
    "intermediate.dense.bias": ("f",),
    "output.dense.weight": ("f", "d"),
    "output.dense.bias": ("d",),
    "output.LayerNorm.weight": ("d",),
    "output.LayerNorm.bias": ("d",),
}


def permute_bert(params: Mapping[str, Array], cfg: BertConfig, seed: int = PERMUTATION_SEED) -> dict[str, Array]:
    """The BERT weights with the d residual channels and the f FFN channels permuted (module docstring)."""
    sizes = {"d": cfg.dim, "f": cfg.ffn_dim}
    return _permute_params(params, r"^encoder\.layer\.\d+\.", _BERT_AXES, "BERT", sizes, seed)


def unpermute_hidden(hidden: Array, d: int, seed: int = PERMUTATION_SEED, *, f: int) -> Array:
    """Hidden states (..., d) of a `permute_bert` model, with their channels put back in the original order."""
    pi = channel_permutations({"d": d, "f": f}, seed)["d"]
    out = np.empty_like(hidden)
    out[..., pi] = hidden  # channel pi[j] of the original is channel j of the permuted model
    return out
