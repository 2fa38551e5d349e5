"""The primitive operations a forward pass issues, and the plain NumPy executor that just computes them.

The forward pass (`normfuse_ref.llama.forward`) is written once and touches activations only through an
`Executor`. `NumpyExecutor` computes (the fast path); the tile emulator (`normfuse_ref.hw`) executes the same
calls slice by slice, or cost-only on shapes, and records a timeline. The primitives are chosen so that every
place the paper cares about is visible to the emulator:

| primitive        | engine on a SIMD/DIMC machine                  | example                                  |
|------------------|------------------------------------------------|------------------------------------------|
| `matmul`         | DIMC tiles (+ partial-sum adder tree)           | x @ F_qkv, q @ k^T, p @ v                 |
| `elementwise`    | SIMD units, no communication                   | residual add, RoPE, SiLU * up, y * s      |
| `reduce`         | SIMD partials + a network collective           | 1/rms, softmax max, softmax sum           |
| `softmax_tiles`  | SIMD (local max, exp, sum) + DIMC (e @ V), per slice, no communication | fused softmax -> V |
| `softmax_merge`  | a network collective: the online-softmax merge | fused softmax -> V                        |
| `layout`         | free (addressing): reshape, transpose, gather, concat | split heads, KV-cache append        |

Dtype rule: operands are cast to the accumulation dtype `acc`, computed, and every result is rounded to the
storage dtype, except the per-row statistics (`reduce` results and softmax states), which stay in `acc`, as a
SIMD unit keeps them in wide registers. `elementwise` callables receive acc arrays and must broadcast
elementwise (their output shape is the broadcast of their inputs: the emulator relies on it in cost-only mode).
`layout` callables must only move data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
from numpy.typing import DTypeLike, NDArray

from .fusion import SoftmaxState, online_softmax_merge, softmax_tile_state
from .precision import accumulation_dtype, matmul_acc, mean_acc, resolve_dtype, sum_acc

__all__ = ["Executor", "NumpyExecutor", "ReduceKind", "SoftmaxTiles"]

Array = NDArray[Any]

#: What `reduce` computes over the last axis (keepdims): the row max, the row sum, the row mean, or the RMSNorm
#: scale s = 1/sqrt(mean(x^2) + eps) (a sum of squares collective finished by an rsqrt on the SIMD unit). LayerNorm's
#: 1/sigma is `mean` followed by `rms_scale` of the centred row (two-pass, as the reference layer computes it).
ReduceKind = Literal["max", "sum", "mean", "rms_scale"]


class SoftmaxTiles(NamedTuple):
    """Per-slice online-softmax states with an explicit slice axis: m, l (..., k, 1) and o (..., k, m)."""

    m: Any
    l: Any
    o: Any


class Executor(Protocol):
    """What a forward pass may ask for. Values are opaque to the caller (arrays, or shapes in cost-only mode)."""

    def matmul(self, x: Any, F: Any, *, op: str) -> Any:
        """x (..., n) @ F (n, m) or batched F (..., n, m) -> (..., m)."""
        ...

    def elementwise(self, fn: Callable[..., Array], *xs: Any, op: str) -> Any:
        """fn(*xs) broadcast elementwise. A costing executor finds the SIMD program by `op` (its name)."""
        ...

    def reduce(self, x: Any, kind: ReduceKind, *, op: str, eps: float = 0.0) -> Any:
        """A collective reduction over the last axis, keepdims: (..., n) -> (..., 1)."""
        ...

    def softmax_tiles(self, z: Any, V: Any, *, op: str) -> SoftmaxTiles:
        """Local part of fused softmax -> V: per slice of the last axis of z, (local max, local sum, e^{z-m} @ V)."""
        ...

    def softmax_merge(self, t: SoftmaxTiles, *, op: str) -> SoftmaxTiles:
        """The collective that merges the slice states (online-softmax rule); the slice axis becomes length 1."""
        ...

    def layout(self, fn: Callable[..., Array], *xs: Any, op: str) -> Any:
        """Pure data movement: reshape, transpose, gather, concatenate."""
        ...

    def scope(self, *, layer: int | None) -> contextlib.AbstractContextManager[None]:
        """Label the operations issued inside with a layer index (None: outside the decoder blocks)."""
        ...


def _openblas_thread_setter() -> Callable[[int], int] | None:
    """numpy's bundled OpenBLAS `openblas_set_num_threads_local(n) -> previous n`, or None if it is not there
    (another BLAS, an older OpenBLAS): then the thread count is left to the BLAS."""
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    for path in libs:
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
        return fn
    return None


_SET_BLAS_THREADS = _openblas_thread_setter()


#: NumpyExecutor.scope's context: labels mean nothing to a plain executor (reusable, no per-call generator).
_NO_SCOPE = contextlib.nullcontext()


@dataclass
class NumpyExecutor:
    """Computes every primitive directly with NumPy.

    storage: the dtype activations are rounded to after every op (default float32).
    acc: the accumulation dtype (default: the policy in `normfuse_ref.precision`).
    tile_size: how many entries of a softmax row one slice holds in `softmax_tiles` (None: the whole row is one
        slice). The emulator uses its own slice size; any value gives the same result up to rounding.
    small_matmul_threads: BLAS threads for products with fewer than `small_matmul_rows` rows per matrix (a decode
        step's matrix-vector products), None = the BLAS default. Default 1, the robust choice: such products are
        memory-bound, so on an idle 2-core machine a second thread adds only ~20% bandwidth (24 vs 20 GB/s), while
        when another process keeps a core busy OpenBLAS's waiting threads make a 2-thread gemv 2-75x slower than a
        1-thread one (measured on the 2-core test machine; bench/README.md). Large products (prefill) keep the
        BLAS default. Only speed depends on this setting, never the numbers.
    """

    storage: DTypeLike = np.float32
    acc: DTypeLike | None = None
    tile_size: int | None = None
    small_matmul_threads: int | None = 1
    small_matmul_rows: int = 16

    def __post_init__(self) -> None:
        self._st = resolve_dtype(self.storage)
        self._acc = accumulation_dtype(self._st, self.acc)
        if self.tile_size is not None and self.tile_size < 1:
            raise ValueError(f"tile_size must be >= 1; got {self.tile_size}")

    def _a(self, x: Array) -> Array:
        return x if x.dtype == self._acc else x.astype(self._acc)

    def _threads(self, rows: int) -> int | None:
        """The BLAS thread count to impose for products with `rows` rows per matrix (None: leave the default)."""
        if _SET_BLAS_THREADS is None or rows >= self.small_matmul_rows:
            return None
        return self.small_matmul_threads

    def matmul(self, x: Array, F: Array, *, op: str) -> Array:
        n = self._threads(x.shape[-2] if x.ndim >= 2 else 1)
        if n is None:
            return matmul_acc(x, F, self._acc).astype(self._st, copy=False)
        prev = _SET_BLAS_THREADS(n)  # type: ignore[misc]
        try:
            return matmul_acc(x, F, self._acc).astype(self._st, copy=False)
        finally:
            _SET_BLAS_THREADS(prev)  # type: ignore[misc]

    def elementwise(self, fn: Callable[..., Array], *xs: Array, op: str) -> Array:
        return np.asarray(fn(*[self._a(x) for x in xs])).astype(self._st, copy=False)

    def reduce(self, x: Array, kind: ReduceKind, *, op: str, eps: float = 0.0) -> Array:
        xa = self._a(x)
        if kind == "max":
            return np.max(xa, axis=-1, keepdims=True)
        if kind == "sum":
            return sum_acc(xa)
        if kind == "mean":
            return mean_acc(xa)
        if kind == "rms_scale":
            ms = mean_acc(xa * xa)  # (..., 1)
            return (1 / np.sqrt(ms + self._acc.type(eps))).astype(self._acc)
        raise ValueError(f"unknown reduction kind {kind!r}")

    def softmax_tiles(self, z: Array, V: Array, *, op: str) -> SoftmaxTiles:
        za, Va = self._a(z), self._a(V)
        n = za.shape[-1]
        t = n if self.tile_size is None else self.tile_size
        threads = self._threads(za.shape[-2] if za.ndim >= 2 else 1)
        prev = None if threads is None else _SET_BLAS_THREADS(threads)  # type: ignore[misc]
        try:
            if t >= n:  # one slice: fusion.softmax_tile_state's arithmetic, exp in place, no stacking copies
                m = np.max(za, axis=-1, keepdims=True)  # (..., 1)
                with np.errstate(invalid="ignore"):  # +inf - +inf -> NaN on purpose, as in softmax_tile_state
                    p = np.subtract(za, np.where(np.isneginf(m), 0, m).astype(za.dtype))  # (..., n)
                    np.exp(p, out=p)
                l = sum_acc(p)  # (..., 1)
                o = matmul_acc(p, Va, p.dtype)  # (..., m)
                return SoftmaxTiles(m=m[..., None, :], l=l[..., None, :], o=o[..., None, :])
            states = [softmax_tile_state(za[..., i : i + t], Va[..., i : i + t, :]) for i in range(0, n, t)]
        finally:
            if prev is not None:
                _SET_BLAS_THREADS(prev)  # type: ignore[misc]
        return SoftmaxTiles(
            m=np.stack([s.m for s in states], axis=-2),  # (..., k, 1)
            l=np.stack([s.l for s in states], axis=-2),  # (..., k, 1)
            o=np.stack([s.o for s in states], axis=-2),  # (..., k, m)
        )

    def softmax_merge(self, t: SoftmaxTiles, *, op: str) -> SoftmaxTiles:
        state = SoftmaxState(m=t.m[..., 0, :], l=t.l[..., 0, :], o=t.o[..., 0, :])
        for i in range(1, t.m.shape[-2]):
            state = online_softmax_merge(state, SoftmaxState(m=t.m[..., i, :], l=t.l[..., i, :], o=t.o[..., i, :]))
        return SoftmaxTiles(m=state.m[..., None, :], l=state.l[..., None, :], o=state.o[..., None, :])

    def layout(self, fn: Callable[..., Array], *xs: Array, op: str) -> Array:
        return fn(*xs)

    def scope(self, *, layer: int | None) -> contextlib.AbstractContextManager[None]:
        return _NO_SCOPE
