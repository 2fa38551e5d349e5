"""The one seam between the machine and a model family: what the mapper must know of a model, and how to run one
forward call of it through an executor.

The machine itself is family-agnostic: it prices elementwise ops by name (`costs.SIMD_PROGRAMS`), reductions by
kind, and matmuls by shapes and by whether the matrix is a stationary weight (a plain 2-D array) or an activation
(a value the pass produced, e.g. the KV cache). A family plugs in by registering a `Family` for its config type in
`FAMILIES`: Llama (`normfuse_ref.models.llama`, RMSNorm decoders), BERT (`normfuse_ref.models.bert`, a post-LayerNorm
encoder) and GPT (`normfuse_ref.models.gpt`, pre-LayerNorm decoders: GPT-2, OPT).

An encoder attends bidirectionally and keeps no KV cache: it has no decode phase, and a prompt is one forward call
(cutting it into chunks would hide the later tokens from the earlier ones). Its K and V still live on the KV
layout while attention runs, so the mapper places and sizes them as it does a decoder's cache of the prompt.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..models.bert.config import BertConfig
from ..models.gpt.config import GptConfig
from ..models.llama.config import LlamaConfig
from ..ops import Executor

__all__ = [
    "FAMILIES",
    "Family",
    "Matrix",
    "ModelShape",
    "Workload",
    "is_encoder",
    "run_pass",
    "with_layers",
    "workload_of",
]


class ModelShape(Protocol):
    """What the machine reads of a model's config, whatever its family (LlamaConfig, BertConfig, GptConfig)."""

    @property
    def name(self) -> str: ...
    @property
    def n_layers(self) -> int: ...
    @property
    def dim(self) -> int: ...  # d: the residual stream
    @property
    def n_heads(self) -> int: ...
    @property
    def n_kv_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def context_length(self) -> int: ...  # positions the model was trained on (a KV cache, or an encoder's text)
    def __hash__(self) -> int: ...  # a frozen config: scenarios and the workload cache are keyed by it


@dataclass(frozen=True)
class Matrix:
    """A stationary weight F (n, m) the forward pass multiplies by (row-vector convention: y = x F)."""

    name: str
    n: int
    m: int


@dataclass(frozen=True)
class Workload:
    """What the mapper must know of a model, whatever its family."""

    name: str
    n_layers: int
    width: int  # d: the residual stream
    block: tuple[Matrix, ...]  # the stationary weights of one decoder block
    head: tuple[Matrix, ...]  # the stationary weights after the last block (the lm head)
    q_heads: int
    kv_heads: int
    head_dim: int
    context_length: int

    def kv_bytes_per_position(self, kv_bits: int) -> int:
        """Bytes of K and V one position adds to one layer's cache, for one sequence."""
        return 2 * self.kv_heads * self.head_dim * kv_bits // 8


@dataclass(frozen=True)
class Family:
    """How the machine reaches one model family: its prepared weights' shapes (the matrices of one block are those
    named with `block`, the other matrices but the embedding `tables` the head's), one forward call, and how to
    change a config's depth and context."""

    shapes: Callable[[Any], dict[str, tuple[int, ...]]]  # the family's `weights.prepared_shapes`
    block: str  # the name prefix of block 0's prepared weights
    tables: tuple[str, ...]  # prepared names of the embedding tables (looked up, not multiplied)
    # one forward call: (config, executor, mode, batch, tokens, past, cache or None) -> the new cache
    run: Callable[[Any, Executor, str, int, int, int, Any], Any]
    with_layers: Callable[[Any, int], Any]
    with_context: Callable[[Any, int], Any]
    encoder: bool = False  # bidirectional, no KV cache: prefill only, in one forward call


# ---------------------------------------------------------------------------------------------------------------
# The families (their modules imported when first used: the machine needs none of them to load)
# ---------------------------------------------------------------------------------------------------------------


def _llama_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    from ..models.llama.weights import prepared_shapes

    return prepared_shapes(cfg)


def _gpt_shapes(cfg: GptConfig) -> dict[str, tuple[int, ...]]:
    from ..models.gpt.weights import prepared_shapes

    return prepared_shapes(cfg)


def _bert_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    from ..models.bert.weights import prepared_shapes

    return prepared_shapes(cfg)


@functools.lru_cache(maxsize=16)
def _dummies(cfg: Any) -> dict[str, Any]:
    """Shape-only weights of a config (any family)."""
    from .emulator import dummy

    return {k: dummy(s) for k, s in _family(cfg).shapes(cfg).items()}


def _decoder_run(cfg: Any, ex: Executor, mode: str, batch: int, tokens: int, past: int, cache: Any) -> Any:
    """One forward call of a decoder (Llama or GPT: the same `forward` signature and KV cache) after `past`
    positions of a dummy KV cache."""
    from ..models.kvcache import KVCache
    from .emulator import dummy

    if isinstance(cfg, LlamaConfig):
        from ..models.llama.forward import forward
    else:
        from ..models.gpt.forward import forward  # type: ignore[assignment]
    lead = () if batch == 1 else (batch,)
    if cache is None:
        kv = dummy((cfg.n_layers, *lead, past + tokens, cfg.n_kv_heads, cfg.head_dim))  # (L, [B,] S, Hkv, hd)
        cache = KVCache(k=kv, v=kv, length=past)
    ids = np.zeros((*lead, tokens), dtype=np.int64)  # ([B,] T)
    _, cache = forward(_dummies(cfg), cfg, ids, cache, mode=mode, ex=ex)  # type: ignore[arg-type]
    return cache


def _bert_run(cfg: BertConfig, ex: Executor, mode: str, batch: int, tokens: int, past: int, cache: Any) -> Any:
    """One forward call of the encoder over a whole prompt (no cache: `past` must be 0)."""
    from ..models.bert.forward import forward

    if past or cache is not None:
        raise ValueError(f"{cfg.name} is an encoder: it keeps no KV cache, so a forward call cannot follow another")
    lead = () if batch == 1 else (batch,)
    ids = np.zeros((*lead, tokens), dtype=np.int64)  # ([B,] T)
    forward(_dummies(cfg), cfg, ids, mode=mode, ex=ex)  # type: ignore[arg-type]
    return None


FAMILIES: dict[type, Family] = {
    LlamaConfig: Family(
        shapes=_llama_shapes,
        block="blk.0.",
        tables=("token_embd",),
        run=_decoder_run,
        with_layers=lambda cfg, n: cfg.replace(n_layers=n),
        with_context=lambda cfg, n: cfg.replace(context_length=n),
    ),
    GptConfig: Family(
        shapes=_gpt_shapes,
        block="blk.0.",
        tables=("wte", "wpe"),
        run=_decoder_run,
        with_layers=lambda cfg, n: cfg.replace(n_layers=n),
        with_context=lambda cfg, n: cfg.replace(context_length=n),
    ),
    BertConfig: Family(
        shapes=_bert_shapes,
        block="layer.0.",
        # no head: the sentence embedding (a masked mean of the last hidden states) is not a matrix
        tables=("word_embeddings", "position_embeddings", "token_type_embeddings"),
        run=_bert_run,
        with_layers=lambda cfg, n: cfg.replace(n_layers=n),
        with_context=lambda cfg, n: cfg.replace(max_positions=n),
        encoder=True,
    ),
}


def _family(model: object) -> Family:
    try:
        return FAMILIES[type(model)]
    except KeyError:
        raise ValueError(
            f"no machine seam for models of type {type(model).__name__}; register one in FAMILIES"
        ) from None


def is_encoder(model: ModelShape) -> bool:
    """Whether the model is an encoder (no KV cache, no decode phase, a prompt in one forward call)."""
    return _family(model).encoder


@functools.lru_cache(maxsize=256)
def workload_of(model: ModelShape) -> Workload:
    """What the mapper must know of the model: one block's stationary weights (from the prepared weights of a
    one-block config), the head's, and the attention shape. Cached per model (configs are frozen): the mapper's
    estimate asks for it once a candidate."""
    fam = _family(model)
    shapes = fam.shapes(fam.with_layers(model, 1))
    mats = {k: s for k, s in shapes.items() if len(s) == 2 and k not in fam.tables}
    return Workload(
        model.name,
        model.n_layers,
        model.dim,
        tuple(Matrix(k.removeprefix(fam.block), *s) for k, s in mats.items() if k.startswith(fam.block)),
        tuple(Matrix(k, *s) for k, s in mats.items() if not k.startswith(fam.block)),
        model.n_heads,
        model.n_kv_heads,
        model.head_dim,
        model.context_length,
    )


def run_pass(
    model: ModelShape, ex: Executor, mode: str, *, batch: int, tokens: int, past: int, cache: Any = None
) -> Any:
    """One cost-only forward call of `tokens` new tokens per sequence after `past` cached positions."""
    return _family(model).run(model, ex, mode, batch, tokens, past, cache)


def with_layers(model: ModelShape, n: int) -> ModelShape:
    return _family(model).with_layers(model, n)


def with_context(model: ModelShape, n: int) -> ModelShape:
    return _family(model).with_context(model, n)
