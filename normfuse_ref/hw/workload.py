"""The one seam between the machine and a model family: what the mapper must know of a model, and how to run one
forward call of it through an executor.

The machine itself is family-agnostic: it prices elementwise ops by name (`costs.SIMD_PROGRAMS`), reductions by
kind, and matmuls by shapes and by whether the matrix is a stationary weight (a plain 2-D array) or an activation
(a value the pass produced, e.g. the KV cache). A family plugs in by registering a `Family` for its config type in
`FAMILIES`: today Llama (`normfuse_ref.models.llama`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..models.llama.config import LlamaConfig
from ..ops import Executor

__all__ = ["FAMILIES", "Family", "Matrix", "Workload", "run_pass", "with_layers", "workload_of"]


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
    """How the machine reaches one model family."""

    workload: Callable[[Any], Workload]
    # one forward call: (config, executor, mode, batch, tokens, past, cache or None) -> the new cache
    run: Callable[[Any, Executor, str, int, int, int, Any], Any]
    with_layers: Callable[[Any, int], Any]
    with_context: Callable[[Any, int], Any]


# ---------------------------------------------------------------------------------------------------------------
# Llama
# ---------------------------------------------------------------------------------------------------------------


def _llama_workload(cfg: LlamaConfig) -> Workload:
    from ..models.llama.weights import prepared_shapes

    shapes = prepared_shapes(cfg.replace(n_layers=1))
    block = tuple(Matrix(k.split(".", 2)[2], *s) for k, s in shapes.items() if k.startswith("blk.0.") and len(s) == 2)
    head = tuple(
        Matrix(k, *s) for k, s in shapes.items() if not k.startswith("blk.") and k != "token_embd" and len(s) == 2
    )
    return Workload(
        cfg.name,
        cfg.n_layers,
        cfg.dim,
        block,
        head,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.context_length,
    )


@functools.lru_cache(maxsize=16)
def _llama_dummies(cfg: LlamaConfig) -> dict[str, Any]:
    from ..models.llama.weights import prepared_shapes
    from .emulator import dummy

    return {k: dummy(s) for k, s in prepared_shapes(cfg).items()}


def _llama_run(cfg: LlamaConfig, ex: Executor, mode: str, batch: int, tokens: int, past: int, cache: Any) -> Any:
    from ..models.llama.forward import KVCache, forward
    from .emulator import dummy

    lead = () if batch == 1 else (batch,)
    if cache is None:
        kv = dummy((cfg.n_layers, *lead, past + tokens, cfg.n_kv_heads, cfg.head_dim))  # (L, [B,] S, Hkv, hd)
        cache = KVCache(k=kv, v=kv, length=past)
    ids = np.zeros((*lead, tokens), dtype=np.int64)  # ([B,] T)
    _, cache = forward(_llama_dummies(cfg), cfg, ids, cache, mode=mode, ex=ex)  # type: ignore[arg-type]
    return cache


FAMILIES: dict[type, Family] = {
    LlamaConfig: Family(
        workload=_llama_workload,
        run=_llama_run,
        with_layers=lambda cfg, n: cfg.replace(n_layers=n),
        with_context=lambda cfg, n: cfg.replace(context_length=n),
    ),
}


def _family(model: Any) -> Family:
    try:
        return FAMILIES[type(model)]
    except KeyError:
        raise ValueError(
            f"no machine seam for models of type {type(model).__name__}; register one in FAMILIES"
        ) from None


def workload_of(model: Any) -> Workload:
    return _family(model).workload(model)


def run_pass(model: Any, ex: Executor, mode: str, *, batch: int, tokens: int, past: int, cache: Any = None) -> Any:
    """One cost-only forward call of `tokens` new tokens per sequence after `past` cached positions."""
    return _family(model).run(model, ex, mode, batch, tokens, past, cache)


def with_layers(model: Any, n: int) -> Any:
    return _family(model).with_layers(model, n)


def with_context(model: Any, n: int) -> Any:
    return _family(model).with_context(model, n)
