"""The KV cache every decoder family shares (Llama, GPT-2/OPT): preallocated buffers and a length, passed in and
returned (llama2.c's `key_cache` and `pos`: no hidden state), and the causal keep-mask of queries over a cache.

Shape letters: L layers, B sequences, C capacity (positions the buffers hold), S positions after this call, T new
tokens, Hkv key/value heads, hd head width, G query heads per key/value head.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..precision import Array, resolve_dtype

__all__ = ["KVCache", "allocate", "causal_keep", "empty_cache", "room_for"]


@dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer, preallocated: k, v of shape (n_layers, [B,] capacity, Hkv, hd), of which the
    positions [0, length) hold data (llama2.c's `key_cache` and `pos`).

    `forward` writes the T new positions into [length, length + T) of the same buffers and returns a cache with the
    longer length, so decoding n tokens writes n positions and copies nothing (when the buffers are full it moves
    them into larger ones, once). The cache passed in stays valid: its positions are never written again. Two
    continuations of one cache would write the same slots, so to branch, continue from `cache.copy()`; `filled`,
    shared by every cache over the same buffers, records how far they are written, and `forward` refuses (instead of
    overwriting the other branch) to continue a cache that was continued already.
    """

    k: Array
    v: Array
    length: int
    filled: NDArray[np.int64] = field(default_factory=lambda: np.array([-1]), repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.filled[0] < 0:  # new buffers: written up to `length`
            self.filled[0] = self.length
        if self.k.shape != self.v.shape or self.k.ndim not in (4, 5) or not 0 <= self.length <= self.capacity:
            raise ValueError(
                f"a KV cache holds k and v of one shape (n_layers, [B,] capacity, Hkv, hd) and a length within the "
                f"capacity; got k {self.k.shape}, v {self.v.shape}, length {self.length}"
            )

    @property
    def capacity(self) -> int:  # positions the buffers can hold
        return int(self.k.shape[-3])

    @property
    def batch(self) -> tuple[int, ...]:  # () for one sequence, (B,) for a batch
        return tuple(self.k.shape[1:-3])

    def copy(self, capacity: int | None = None) -> KVCache:
        """The same positions in new buffers of `capacity` positions (default: the same capacity): a branch."""
        cap = self.capacity if capacity is None else capacity
        if cap < self.length:
            raise ValueError(f"capacity {cap} cannot hold the cache's {self.length} positions")
        k = allocate(self.k.shape, self.k.dtype, cap)  # (L, [B,] cap, Hkv, hd)
        v = allocate(self.v.shape, self.v.dtype, cap)
        k[..., : self.length, :, :] = self.k[..., : self.length, :, :]
        v[..., : self.length, :, :] = self.v[..., : self.length, :, :]
        return KVCache(k, v, self.length)


def allocate(shape: tuple[int, ...], dtype: np.dtype, capacity: int) -> Array:
    return np.zeros((*shape[:-3], capacity, *shape[-2:]), dtype=dtype)


def empty_cache(
    cfg: Any, dtype: DTypeLike = np.float32, *, batch: int | None = None, capacity: int | None = None
) -> KVCache:
    """A cache holding no positions, with room for `capacity` (default: the model's context length, as llama2.c;
    for SmolLM2 in float32 that is 377 MB, so pass what a generation needs), for one sequence (batch=None) or B."""
    lead = () if batch is None else (batch,)
    cap = cfg.context_length if capacity is None else capacity
    shape = (cfg.n_layers, *lead, cap, cfg.n_kv_heads, cfg.head_dim)  # (L, [B,] C, Hkv, hd)
    dt = resolve_dtype(dtype)
    return KVCache(np.zeros(shape, dtype=dt), np.zeros(shape, dtype=dt), 0)


def room_for(cache: KVCache, S: int, cfg: Any) -> KVCache:
    """`cache` if its buffers can take positions up to S and it is the latest continuation of them; else an error
    (a branch must be copied by its caller) or, when only the room is missing, a copy into larger buffers
    (doubling, at most the context length: O(log n) moves while decoding n tokens)."""
    if int(cache.filled[0]) != cache.length:
        raise ValueError(
            f"this cache ({cache.length} positions) was already continued to {int(cache.filled[0])} positions by an "
            "earlier forward call, which wrote the slots this one needs; to branch, pass cache.copy()"
        )
    if S <= cache.capacity:
        return cache
    return cache.copy(capacity=min(cfg.context_length, max(S, 2 * cache.capacity, S + 256)))


@functools.lru_cache(maxsize=8)
def causal_keep(T: int, S: int, G: int) -> NDArray[np.bool_] | None:
    """(T*G, S) keep-mask of grouped query rows over keys (row r is query t = r // G, one of the G query heads
    sharing a key head, which sees keys j <= t + S - T), or None when every query sees every key (a single new
    token). The rows are query-major, so a block of consecutive rows is a run of consecutive queries, whose keys
    end where its last query's do (`sites.attention` reads no further).

    Cached (read-only) so that the layers of one forward call share one mask: for a long prompt it is large.
    """
    if T == 1:
        return None
    t = np.arange(T * G) // G  # (T*G,)
    keep = np.arange(S)[None, :] <= (t + S - T)[:, None]  # (T*G, S)
    keep.flags.writeable = False
    return keep
