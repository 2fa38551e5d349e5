"""The primitive operations a forward pass issues, the one rounding rule, and the plain NumPy executor.

The fused rules (`normfuse_ref.fusion`) and the forward passes (`normfuse_ref.models.llama.forward`) are written once and
touch activations only through an `Executor`. `NumpyExecutor` computes (the plain path: the array calls of the rules,
the model); the tile emulator (`normfuse_ref.hw`) executes the same calls slice by slice, or cost-only on shapes, and
records a timeline. The primitives are chosen so that every place the paper cares about is visible to the emulator:

| primitive        | engine on a SIMD/DIMC machine                  | example                                  |
|------------------|------------------------------------------------|------------------------------------------|
| `matmul`         | DIMC tiles (+ partial-sum adder tree)           | x @ F_qkv, q @ k^T, p @ v                 |
| `elementwise`    | SIMD units, no communication                   | residual add, RoPE, SiLU * up, y * s      |
| `reduce`         | SIMD partials + a network collective           | 1/rms, mean, softmax max, softmax sum     |
| `softmax_tiles`  | SIMD (local max, exp, sum) + DIMC (e @ V), per slice, no communication | fused softmax -> V |
| `softmax_merge`  | a network collective: the online-softmax merge | fused softmax -> V                        |
| `layout`         | free (addressing): reshape, transpose, gather, concat, a KV-cache write | split heads        |
| `rows`           | no engine of its own: the primitives of a row-local computation, which an executor may run on blocks of rows | attention |

THE ROUNDING RULE (docs/numerics.md, "Rounding rule"; every executor implements it, every order obeys it):

    Operands are cast to the accumulation dtype `acc` and every primitive computes in `acc`. A result is rounded
    to the storage dtype when it is *written back*: a value that a DIMC tile reads as an operand (the normalised
    row h, the probabilities p, the head activations), that is cached (K, V), or that leaves a layer (its output,
    the residual stream). A result stays in `acc` when the SIMD unit consumes it itself, in wide registers:
      - per-row statistics: every `reduce` result, every softmax state (m, l, o) of `softmax_tiles` and
        `softmax_merge`;
      - partial values, marked by the caller with `keep_acc=True` on `matmul` or `elementwise`: the unnormalised
        output of a fused rule waiting for its deferred scale (y = x @ F_g before s), the centred row d = x - mu
        before its variance, the exponentials e^{z - m} before their sum, the attention scores before the softmax.
    `layout` only moves data and never rounds.

So each rule rounds exactly where its reference composition in `normfuse_ref.layers` does (the reference order of
RMSNorm -> linear rounds h and the output; its fused order rounds the folded weight, offline, and the output once),
whichever executor runs it. `elementwise` callables receive acc arrays and must broadcast elementwise (their output
shape is the broadcast of their inputs: the emulator relies on it in cost-only mode), and should take every array
they read as an argument (the plain executor then cuts their work into blocks of rows; a callable holding an array
in a closure is computed whole). `layout` callables must only move data.

Speed lives here and in `normfuse_ref.parallel`, nowhere else: `NumpyExecutor` cuts products, elementwise ops,
reductions and the local softmax into blocks on worker threads (bit for bit the same result for any thread count;
see `normfuse_ref.parallel`), and runs a row-local chain of them (`rows`: an attention's scores, mask, softmax
and P V) block by block, so that a block's scores stay in cache from the product that makes them to the product
that reads them. Making the first one sets two things for the whole process: BLAS on one thread (the
workers run the parallel work) and malloc keeping freed memory for the next array. The thread count is one
setting: `NumpyExecutor(threads=...)`, default $NORMFUSE_THREADS, else the CPUs this process may use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
from numpy.typing import DTypeLike

from .fields import positive_int
from .fusion import SoftmaxState, merge_states, tile_state
from .parallel import (
    BLOCK_ELEMENTS,
    Block,
    block_of,
    keep_freed_memory,
    matmul_blocks,
    one_blas_thread,
    reads_only_arguments,
    row_blocks,
    run_blocks,
    threads_setting,
)
from .precision import (
    Array,
    accumulation_dtype,
    in_acc,
    matmul_acc,
    mean_acc,
    resolve_dtype,
    sum_acc,
    to_storage,
    write_back,
)

__all__ = ["Executor", "NumpyExecutor", "ReduceKind", "SoftmaxTiles"]

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

    def matmul(self, x: Any, F: Any, *, op: str, keep_acc: bool = False) -> Any:
        """x (..., n) @ F (n, m) or batched F (..., n, m) -> (..., m); rounded to storage unless keep_acc."""
        ...

    def elementwise(self, fn: Callable[..., Array], *xs: Any, op: str, keep_acc: bool = False) -> Any:
        """fn(*xs) broadcast elementwise; rounded to storage unless keep_acc. A costing executor finds the SIMD
        program by `op` (its name)."""
        ...

    def reduce(self, x: Any, kind: ReduceKind, *, op: str, eps: float = 0.0) -> Any:
        """A collective reduction over the last axis, keepdims: (..., n) -> (..., 1), kept in acc."""
        ...

    def softmax_tiles(self, z: Any, V: Any, *, op: str) -> SoftmaxTiles:
        """Local part of fused softmax -> V: per slice of the last axis of z, (local max, local sum, e^{z-m} @ V)."""
        ...

    def softmax_merge(self, t: SoftmaxTiles, *, op: str) -> SoftmaxTiles:
        """The collective that merges the slice states (online-softmax rule); the slice axis becomes length 1."""
        ...

    def layout(self, fn: Callable[..., Array], *xs: Any, op: str) -> Any:
        """Pure data movement: reshape, transpose, gather, concatenate, write into a preallocated buffer."""
        ...

    def rows(self, fn: Callable[..., Any], x: Any, *xs: Any, batched: tuple[Any, ...] = (), op: str) -> Any:
        """fn(ex, x, *xs, *batched), a computation whose output row (..., i, :) reads only row i of x (..., rows,
        n) and of each of `xs` (broadcast against x, or None), and all of the `batched` operands (the same leading
        axes as x but their own rows: an attention's K and V). fn issues its primitives on the executor it is
        given; an executor may run it on blocks of rows (each on an executor of its own), whose primitives are
        the same as the whole's, row for row. Returns (..., rows, m)."""
        ...

    def scope(self, *, layer: int | None) -> contextlib.AbstractContextManager[None]:
        """Label the operations issued inside with a layer index (None: outside the decoder blocks)."""
        ...


# ---------------------------------------------------------------------------------------------------------------
# The plain executor
# ---------------------------------------------------------------------------------------------------------------


#: NumpyExecutor.scope's context: labels mean nothing to a plain executor (reusable, no per-call generator).
_NO_SCOPE = contextlib.nullcontext()


@dataclass
class NumpyExecutor:
    """Computes every primitive directly with NumPy, under the rounding rule above.

    storage: the dtype written-back results are rounded to (default float32).
    acc: the accumulation dtype (default: the policy in `normfuse_ref.precision`).
    tile_size: how many entries of a softmax row one slice holds in `softmax_tiles` (None: the whole row is one
        slice); slices are merged left to right. The emulator uses its own slice size; any value gives the same
        result up to rounding.
    threads: worker threads for products, elementwise ops, reductions and the local softmax, cut into blocks
        (`normfuse_ref.parallel`; BLAS itself runs on one thread).
        None: $NORMFUSE_THREADS, else the CPUs this process may use. Only speed depends on it, never a bit of a
        result.
    """

    storage: DTypeLike = np.float32
    acc: DTypeLike | None = None
    tile_size: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        self._st = resolve_dtype(self.storage)
        self._acc = accumulation_dtype(self._st, self.acc)
        if self.tile_size is not None:
            positive_int(self.tile_size, "tile_size")
        self._threads = threads_setting(self.threads)
        self._inner: NumpyExecutor | None = None  # `rows`' executor for a block, made when first needed
        keep_freed_memory()  # once a process: fresh arrays from reused memory, not page-faulted in (parallel.py)
        one_blas_thread()  # once a process: the executor's workers run the parallel work (parallel.py)

    @property
    def thread_count(self) -> int:
        """The threads this executor runs on (`threads`, or the setting it defaults to)."""
        return self._threads

    def _a(self, x: Array) -> Array:
        """An operand in acc (`precision.in_acc`: a boolean mask stays boolean)."""
        return in_acc(x, self._acc)

    def _out(self, y: Array, keep_acc: bool) -> Array:
        """The rounding rule (`precision.write_back`)."""
        return write_back(y, self._st, self._acc, keep_acc)

    def matmul(self, x: Array, F: Array, *, op: str, keep_acc: bool = False) -> Array:
        blocks = matmul_blocks(x.shape, F.shape) if F.ndim in (2, x.ndim) else None
        if blocks is None:  # a decode step's product, the head's aside (or a broadcast batch of F): one BLAS call
            return self._out(matmul_acc(x, F, self._acc), keep_acc)
        out = np.empty((*x.shape[:-1], F.shape[-1]), self._acc if keep_acc else self._st)  # (..., m)
        direct = out.dtype == self._acc and self._acc.itemsize >= 4  # BLAS writes each block in place

        def work(b: tuple[Block, Block, Block]) -> None:  # a batched F's leading axes are x's: sliced alike
            bx, bF, bo = b
            Fb = F[bF] if F.ndim == 2 else block_of(F, bF, F.ndim)
            if direct:
                matmul_acc(x[bx], Fb, self._acc, out=out[bo])
            else:
                to_storage(matmul_acc(x[bx], Fb, self._acc), out.dtype, out[bo])

        run_blocks(work, blocks, self._threads)
        return out

    def elementwise(self, fn: Callable[..., Array], *xs: Array, op: str, keep_acc: bool = False) -> Array:
        xa = [self._a(x) for x in xs]
        big = max(x.size for x in xa) >= 2 * BLOCK_ELEMENTS and reads_only_arguments(fn)
        blocks = row_blocks(np.broadcast_shapes(*(x.shape for x in xa))) if big else None
        if blocks is None:  # small, or fn reads an array it was not given: computed whole
            return self._out(np.asarray(fn(*xa)), keep_acc)
        out = np.empty(np.broadcast_shapes(*(x.shape for x in xa)), self._acc if keep_acc else self._st)  # (...)

        def work(b: tuple[slice, ...]) -> None:  # rounded to out's dtype: the rounding rule
            to_storage(np.asarray(fn(*(block_of(x, b, out.ndim) for x in xa))), out.dtype, out[b])

        run_blocks(work, blocks, self._threads)
        return out

    def reduce(self, x: Array, kind: ReduceKind, *, op: str, eps: float = 0.0) -> Array:
        if kind not in ("max", "sum", "mean", "rms_scale"):
            raise ValueError(f"unknown reduction kind {kind!r}")
        xa = self._a(x)
        blocks = row_blocks(xa.shape)
        if blocks is None:
            return self._reduce(xa, kind, eps)
        out = np.empty((*xa.shape[:-1], 1), self._acc)  # (..., 1)

        def work(b: tuple[slice, ...]) -> None:
            out[b] = self._reduce(xa[b], kind, eps)

        run_blocks(work, blocks, self._threads)
        return out

    def _reduce(self, xa: Array, kind: ReduceKind, eps: float) -> Array:
        """One reduction of rows xa (..., n) -> (..., 1), in acc."""
        if kind == "max":
            return np.max(xa, axis=-1, keepdims=True)
        if kind == "sum":
            return sum_acc(xa)
        if kind == "mean":
            return mean_acc(xa)
        ms = mean_acc(xa * xa)  # (..., 1)   rms_scale
        return (1 / np.sqrt(ms + self._acc.type(eps))).astype(self._acc)

    def softmax_tiles(self, z: Array, V: Array, *, op: str) -> SoftmaxTiles:
        za, Va = self._a(z), self._a(V)
        blocks = row_blocks(za.shape) if Va.ndim in (2, za.ndim) else None
        if blocks is None:
            return self._tiles(za, Va)
        n = za.shape[-1]
        k = -(-n // (n if self.tile_size is None else self.tile_size))  # slices a row
        lead = za.shape[:-1]
        t = SoftmaxTiles(
            m=np.empty((*lead, k, 1), self._acc),  # (..., k, 1)
            l=np.empty((*lead, k, 1), self._acc),  # (..., k, 1)
            o=np.empty((*lead, k, Va.shape[-1]), self._acc),  # (..., k, m)
        )

        def work(b: tuple[slice, ...]) -> None:  # V's leading axes are z's (not its rows): sliced alike
            s = self._tiles(za[b], Va if Va.ndim == 2 else block_of(Va, b[: za.ndim - 2], Va.ndim))
            t.m[b], t.l[b], t.o[b] = s.m, s.l, s.o

        run_blocks(work, blocks, self._threads)
        return t

    def _tiles(self, za: Array, Va: Array) -> SoftmaxTiles:
        """The slice states of rows za (..., n) against Va (..., n, m): slices of `tile_size`, left to right."""
        n = za.shape[-1]
        t = n if self.tile_size is None else self.tile_size
        states = [tile_state(za[..., i : i + t], Va[..., i : i + t, :]) for i in range(0, n, t)]
        if len(states) == 1:  # one slice (a whole row): its slice axis is a view, no copies (a decode step's case)
            (one,) = states
            return SoftmaxTiles(m=one.m[..., None, :], l=one.l[..., None, :], o=one.o[..., None, :])
        return SoftmaxTiles(
            m=np.stack([s.m for s in states], axis=-2),  # (..., k, 1)
            l=np.stack([s.l for s in states], axis=-2),  # (..., k, 1)
            o=np.stack([s.o for s in states], axis=-2),  # (..., k, m)
        )

    def softmax_merge(self, t: SoftmaxTiles, *, op: str) -> SoftmaxTiles:
        state = SoftmaxState(m=t.m[..., 0, :], l=t.l[..., 0, :], o=t.o[..., 0, :])
        for i in range(1, t.m.shape[-2]):  # left to right
            state = merge_states(state, SoftmaxState(m=t.m[..., i, :], l=t.l[..., i, :], o=t.o[..., i, :]))
        return SoftmaxTiles(m=state.m[..., None, :], l=state.l[..., None, :], o=state.o[..., None, :])

    def layout(self, fn: Callable[..., Array], *xs: Array, op: str) -> Array:
        return fn(*xs)

    def rows(self, fn: Callable[..., Any], x: Array, *xs: Any, batched: tuple[Any, ...] = (), op: str) -> Array:
        # blocks as large as an elementwise op's, counted in the widest row fn's steps hold (an attention's scores)
        width = max(np.shape(a)[-1] for a in (x, *xs, *batched) if a is not None)
        blocks = row_blocks((*x.shape[:-1], width))
        if blocks is None:
            return fn(self, x, *xs, *batched)
        inner = self._one_thread()
        lead = x.ndim - 2  # x's axes before its rows: the batched operands' too, sliced alike

        def part(b: Block) -> Array:
            mine = (None if a is None else block_of(a, b, x.ndim) for a in xs)
            theirs = (block_of(a, b[:lead], a.ndim) if a.ndim == x.ndim else a for a in batched)
            return np.asarray(fn(inner, x[b], *mine, *theirs))

        parts: list[Array | None] = [None] * len(blocks)

        def work(ib: tuple[int, Block]) -> None:
            parts[ib[0]] = part(ib[1])

        run_blocks(work, list(enumerate(blocks)), self._threads)
        first = next(p for p in parts if p is not None)
        out = np.zeros((*x.shape[:-1], first.shape[-1]), first.dtype)  # (..., rows, m)
        for b, p in zip(blocks, parts, strict=True):
            if p is not None:  # (always, unless run_blocks is broken: then zeros, which every check sees)
                out[b] = p
        return out

    def _one_thread(self) -> NumpyExecutor:
        """This executor's settings on one thread: what `rows` runs a block on (the blocks are the parallel work)."""
        if self._inner is None:
            self._inner = NumpyExecutor(self.storage, self.acc, self.tile_size, threads=1)
        return self._inner

    def scope(self, *, layer: int | None) -> contextlib.AbstractContextManager[None]:
        return _NO_SCOPE
