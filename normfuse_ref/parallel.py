"""Row blocks on worker threads: how the plain executor (`normfuse_ref.ops.NumpyExecutor`) uses the machine.

A matrix product, an elementwise op, a reduction over the last axis and the local part of a softmax compute each
row of their output (a product: each block of rows or of columns) from the same part of their inputs. The plain
executor therefore cuts such work into blocks and hands them to worker threads (NumPy's ufuncs and BLAS release
the GIL while they work on an array). Two rules keep the numbers independent of the machinery:

- Blocks are cut from the shape alone (`row_blocks`: about BLOCK_ELEMENTS output elements each; `matmul_blocks`),
  never from the number of threads, and each block is computed by the same NumPy calls whichever thread runs it.
  So a result is bit for bit the same for any thread count (tests/test_parallel.py: 1 and 2 threads, the tiny
  model and SmolLM2, both orders). Against computing the whole array at once: elementwise ops and reductions are
  bit for bit the same, a product within its rounding bound (docs/numerics.md, "Threads and blocks").
- Work is split only where every array it reads is an argument: `reads_only_arguments` refuses a callable that
  captured an array (a closure over a mask or a RoPE table would not be cut with the block). Such a callable, and
  any op smaller than two blocks (a decode step's), is computed whole, on the calling thread.

Blocks of ~256K elements (1 MB of float32) keep a multi-pass callable's temporaries (shifted_exp, normalise_rows,
silu_gate each make 2-4 passes) near the core's 1 MB L2 cache while making few enough Python calls that the
threads do not queue for the GIL (BLOCK_ELEMENTS).

Memory: a prefill writes each primitive's result into a fresh array (SmolLM2's attention scores are 9 MB a layer,
written four times). glibc's malloc hands arrays above its mmap threshold (128 KiB, raised only as large blocks are
freed) to and from the kernel, so every fresh array is page-faulted in and zeroed again: ~39,000 page faults and
0.3-0.5 s of system time a 512-token prefill, measured. `keep_freed_memory` (applied once, when the first plain
executor is made) has malloc keep freed memory for the next array instead: 50-60 faults a prefill. It also serves
arrays of any size from the heap, the logits (100 MB for 512 SmolLM2 positions) and the accuracy study's float64
scores (200 MB a window) included, which mmap would fault in afresh on every call: on the 2-core AMD EPYC test
machine, where a fault costs ~7-10 us, a 512-token SmolLM2 prefill 1.07 / 1.16 s -> 1.02 / 1.05 s (baseline / fused,
best of 9 alternating; medians 1.15x / 1.13x faster) and the accuracy study's quick SmolLM2 part alone 93 -> 81-86 s
(system time 37 -> 20-24 s; bench/README.md). It changes where memory comes from, never a value;
$NORMFUSE_KEEP_MEMORY=0 leaves malloc as the process found it.

BLAS: on one thread for the whole process, from when the first plain executor is made (`one_blas_thread`); the
executor's own workers run the parallel work, each block one single-threaded BLAS call. Two reasons, both measured
on the 2-core test machine (bench/README.md): OpenBLAS cuts a product by its own thread count, and 1 and 2 OpenBLAS
threads gave different bits for some shapes (300 x 700 x 50 float32), which would break the promise of the same
bits for any thread count; and OpenBLAS's idle threads spin, so when another process keeps a core busy a 2-thread
product ran 2-75x slower than a 1-thread one (a SmolLM2 decode step called outside `Model.forward`, measured
under load: 730 ms instead of 37). Set once, not around each call: threadpoolctl takes ~10 us a change.

The one setting: the thread count, `NumpyExecutor(threads=...)`, default the environment variable NORMFUSE_THREADS,
else the CPUs this process may run on. It counts the executor's worker threads (the calling thread among them).
Only speed depends on it.

Processes: work made of independent parts, each too large to wait on threads' joins (the accuracy study's runs and
hazard cells), is spread over forked worker processes (`fork_map`), which start with everything the parent holds
(the parent first returns the memory it kept free to the kernel, `return_freed_memory`).
A forked process has none of its parent's threads: the executor's worker-thread pool is made anew in it when first
needed (`_pool` is forgotten at fork). (A sweep's points use `hw.study.local_pool` instead: a concurrent.futures
executor, which a Dask or Ray executor can replace.)
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import math
import multiprocessing
import multiprocessing.pool
import os
import platform
import signal
import types
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from .fields import positive_int

__all__ = [
    "BLOCK_ELEMENTS",
    "FEW_ROWS_COLUMNS",
    "FEW_ROWS_SPLIT",
    "KEEP_MEMORY_ENV",
    "MATMUL_COLUMNS",
    "MATMUL_MIN_ROWS",
    "MATMUL_ROWS",
    "MATMUL_WIDE",
    "MATMUL_WORK",
    "MATVEC_BLOCK",
    "MATVEC_SPLIT",
    "THREADS_ENV",
    "block_of",
    "can_fork",
    "column_ranges",
    "fork_map",
    "forks",
    "keep_freed_memory",
    "matmul_blocks",
    "one_blas_thread",
    "process_pool",
    "reads_only_arguments",
    "return_freed_memory",
    "row_blocks",
    "run_blocks",
    "threads_setting",
]

#: The environment variable that sets the thread count when the executor is given none.
THREADS_ENV = "NORMFUSE_THREADS"

#: The environment variable that, set to 0, leaves the C allocator's settings alone (`keep_freed_memory`).
KEEP_MEMORY_ENV = "NORMFUSE_KEEP_MEMORY"

#: glibc mallopt parameters (malloc.h) and the values `keep_freed_memory` gives them. With MMAP_MAX 0 malloc
#: never maps an array of its own (a thread's arena still maps an array too large for its 64 MiB heaps), so every
#: array comes from its heap, where freed memory stays resident for the next array unless more than
#: TRIM_THRESHOLD of it is free at the heap's top. The 1 GiB trim threshold bounds what a process keeps beyond its
#: peak. (Before, the largest mmap threshold 64-bit glibc accepts, 32 MiB, left the logits and the study's scores
#: mapped and faulted in on every call.)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
MMAP_MAX = 0
TRIM_THRESHOLD = 1 << 30

#: Output elements a block holds (at least one row of the last axis): 256K, 1 MB of float32. Each block is a
#: Python call that needs the GIL, so small blocks make the threads queue for it. Measured on the 2-core test
#: machine with nothing else running (min of 11; SmolLM2's 3 x 1536 x 512 causal scores, 2 threads), ms for blocks
#: of 16K / 64K / 256K / 512K elements: the mask 4.21 / 1.57 / 1.27 / 1.26, e^{z - m} 8.52 / 2.16 / 1.28 / 1.29,
#: the division by l 5.14 / 2.21 / 1.07 / 1.07, the row max 1.62 / 0.61 / 0.30 / 0.29 (one thread, whole:
#: e^{z - m} 1.74).
BLOCK_ELEMENTS = 1 << 18

#: How a matrix product x (rows, n) @ F (n, m) is cut, each block one BLAS call on one BLAS thread: into blocks
#: of at least MATMUL_ROWS rows of x and MATMUL_WORK multiply-adds (a batch of small products, BERT's attention,
#: into blocks of whole products), cut over x's leading axes as `row_blocks` cuts an output; a product with too few
#: rows for two such blocks but a wide F (a short prompt's logits), or an F with MATMUL_WIDE times more columns
#: than x has rows (F's bytes dwarf x's: the logits), into blocks of MATMUL_COLUMNS columns of F, so that F streams
#: through the cache once, not once a block of rows.
#: Fewer, larger blocks pay: a BLAS call packs (copies) its operands, and each block is a Python call. Measured on
#: the 2-core test machine with nothing else running (min of 11, 2 threads; SmolLM2's 512-token prefill shapes):
#: in ms, blocks of 128 / 256 rows / OpenBLAS's own 2 threads on the whole product: x @ F_qkv 3.39 / 3.14 / 3.03,
#: q @ k^T 2.05 / 1.79 / 1.72, p @ V 2.33 / 2.15 / 2.00, F_o 3.73 / 1.80 / 1.75, F_gate_up 10.93 / 10.07 / 9.95,
#: F_down 4.99 / 4.73 / 4.66, the logits 186.6 / 163.8 / 161.9 (256 columns: 160.8).
MATMUL_ROWS = 256
MATMUL_WORK = 1 << 23
MATMUL_COLUMNS = 256
MATMUL_WIDE = 8
#: Products of fewer rows are matrix-vector-like (a decode step's): memory-bound, one BLAS call, unless F has at
#: least MATVEC_SPLIT elements (the logits' head): then blocks of ~MATVEC_BLOCK elements of F (an even number of
#: them, each widened to a multiple of MATMUL_COLUMNS columns, so the last may be short), so that both cores stream
#: it. Measured on the 2-core test machine (Intel Xeon, nothing else running; a decode step's products
#: cycled through SmolLM2's 537 MB so that F comes from memory, median of 12): 43.7 ms one call each; 41.8 ms with
#: the head (113 MB) cut; 43.8 / 45.0 / 57.2 ms also cutting every F of at least 4 / 2 / 1 MiB (the two cores share
#: the memory bandwidth, and each cut product pays a hand-off to the other thread). In the model (SmolLM2 fused
#: decode, alternating in one process, 12 rounds of 16 steps): 67.97 ms a step median with the head cut, 70.30 whole.
MATMUL_MIN_ROWS = 16
MATVEC_SPLIT = 4 << 20
MATVEC_BLOCK = 2 << 20
#: Products of 2 to MATMUL_MIN_ROWS - 1 rows (a batch of decode steps, a short prompt or text) are not
#: matrix-vector products: OpenBLAS runs them as a GEMM that streams F at a fraction of a matrix-vector product's
#: speed. Measured on the 2-core test machine (Intel Xeon, nothing else running; SmolLM2's 120 layer matrices,
#: 425 MB in float32, cycled so that F comes from memory; best of 8, one BLAS thread each), ms for one call / the
#: two column halves on two threads: float32 2 rows 153 / 70, 4 rows 161 / 85, 8 rows 172 / 96; float64 (850 MB)
#: 2 rows 122 / 90, 4 rows 114 / 84, 8 rows 134 / 84 (one row, a matrix-vector product: 40 ms in float32, 58 in
#: float64; cutting it only adds the hand-off, see above). So an F of at least FEW_ROWS_SPLIT entries is cut into
#: two halves of whole FEW_ROWS_COLUMNS-column groups, one a thread; on one thread the halves run one after the
#: other at the speed of one call (within 5%).
FEW_ROWS_SPLIT = 1 << 18
FEW_ROWS_COLUMNS = 64

Block = tuple[slice, ...]
B = TypeVar("B")  # a block, or a tuple of blocks (a product's operands and output)
R = TypeVar("R")  # a result of `fork_map`


def threads_setting(threads: int | None) -> int:
    """The thread count: `threads`, else $NORMFUSE_THREADS, else the CPUs this process may run on; ValueError
    (one line naming the setting) for anything but a positive integer."""
    if threads is None:
        text = os.environ.get(THREADS_ENV, "").strip()
        if not text:
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer; got {text!r}") from None
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer; got {text!r}")
        return threads
    return positive_int(threads, "threads")


def reads_only_arguments(fn: Callable[..., Any]) -> bool:
    """True when `fn` is a plain function that holds no array of its own (in a closure or a default): then a block
    of its output is computed from the same block of its arguments, and its work may be cut into blocks."""
    if not isinstance(fn, types.FunctionType):
        return False
    held = [c.cell_contents for c in fn.__closure__ or ()] + list(fn.__defaults__ or ())
    return not any(isinstance(v, np.ndarray) for v in held)


def row_blocks(shape: tuple[int, ...], per_block: int = BLOCK_ELEMENTS) -> list[Block] | None:
    """Blocks of rows covering an output of `shape` (index tuples over its leading axes), or None when it is
    smaller than two blocks (computed whole). A block holds about `per_block` elements, at least one row.

    The split axis is the outermost one whose rows (everything after it) fit in a block; the axes before it are
    taken one index at a time and the split axis in ranges of as many rows as fit in `per_block`.
    """
    if len(shape) < 2 or math.prod(shape) < 2 * per_block:
        return None
    a = 0
    while a < len(shape) - 2 and math.prod(shape[a + 1 :]) > per_block:
        a += 1
    return _ranges(shape[: a + 1], max(1, per_block // math.prod(shape[a + 1 :])))


def matmul_blocks(x_shape: tuple[int, ...], F_shape: tuple[int, ...]) -> list[tuple[Block, Block, Block]] | None:
    """How x (..., rows, n) @ F ((n, m), or (..., n, m) with x's leading axes) is cut: (x's block, F's block, the
    output's block) index triples, or None for one call (a product of fewer than MATMUL_MIN_ROWS rows, or too
    small to cut). See MATMUL_ROWS."""
    rows, m = math.prod(x_shape[:-1]), F_shape[-1]
    if len(x_shape) < 2 or rows < MATMUL_MIN_ROWS:
        if len(x_shape) < 2 or len(F_shape) != 2:
            return None
        if math.prod(F_shape) >= MATVEC_SPLIT:  # the head of a decode step: about k blocks, k made even
            k = -(-math.prod(F_shape) // MATVEC_BLOCK)
            return _column_blocks(x_shape, m, _width(m, k + k % 2, MATMUL_COLUMNS))
        if rows >= 2 and math.prod(F_shape) >= FEW_ROWS_SPLIT and m >= 2 * FEW_ROWS_COLUMNS:  # two halves
            return _column_blocks(x_shape, m, _width(m, 2, FEW_ROWS_COLUMNS))
        return None
    columns = len(F_shape) == 2 and m >= 2 * MATMUL_COLUMNS
    if columns and m >= MATMUL_WIDE * rows:  # F far larger than x (the logits): each block streams its own columns
        return _column_blocks(x_shape, m)
    # a block re-packs the F it reads: a matrix F once a block, so blocks of at least MATMUL_ROWS rows; a batched
    # F's own matrices once in all, unless one matrix's rows are cut (then MATMUL_ROWS of them a block)
    batch = len(x_shape) - 2 if len(F_shape) > 2 else 0
    floor = min(MATMUL_ROWS, x_shape[-2]) if batch else MATMUL_ROWS
    blocks = row_blocks((*x_shape[:-1], x_shape[-1] * m), max(MATMUL_WORK, floor * x_shape[-1] * m))
    if blocks is not None:  # blocks of x's rows; a batched F's leading axes are x's, sliced alike
        return [(b, b[:batch], b) for b in blocks]  # (a matrix F is read whole)
    return _column_blocks(x_shape, m) if columns else None  # too few rows to cut, a wide F: its columns


def _width(m: int, parts: int, group: int) -> int:
    """The width of `parts` column blocks of m columns, each whole groups of `group` (the last may be short)."""
    return -(-m // parts // group) * group


def _column_blocks(x_shape: tuple[int, ...], m: int, width: int = MATMUL_COLUMNS) -> list[tuple[Block, Block, Block]]:
    """Blocks of `width` columns of F (the last one shorter), each against all of x."""
    lead = (slice(None),) * (len(x_shape) - 1)
    return [((), (slice(None), c), (*lead, c)) for c in column_ranges(m, width)]


def column_ranges(m: int, width: int = MATMUL_COLUMNS) -> list[slice]:
    """The blocks of `width` columns of an F with m columns (the last one shorter)."""
    return [slice(c, c + width) for c in range(0, m, width)]


def _ranges(lead: tuple[int, ...], step: int) -> list[Block]:
    """The axes of `lead` but its last one index at a time, its last one in ranges of at most `step`.

    The ranges are balanced (lengths differ by at most one) and, when there are several, even in number: 512 rows
    at a step of 170 are four ranges of 128, not 170, 170, 170 and 2, so that two threads get equal work whatever
    the shape (a rule on the shape alone, as the bits require)."""
    n = lead[-1]
    k = -(-n // step)
    k = min(n, k + k % 2) if k > 1 else 1
    bounds = [i * n // k for i in range(k + 1)]
    return [
        (*(slice(i, i + 1) for i in index), slice(bounds[j], bounds[j + 1]))
        for index in np.ndindex(*lead[:-1])
        for j in range(k)
    ]


def block_of(x: Any, b: Block, ndim: int) -> Any:
    """The part of an input that block `b` of an `ndim`-dimensional output reads, under broadcasting (inputs are
    right-aligned; an axis of length 1, or one the input lacks, is read whole)."""
    shape = np.shape(x)
    offset = ndim - len(shape)  # input axis i is output axis offset + i
    index = tuple(b[offset + i] if shape[i] != 1 else slice(None) for i in range(max(0, len(b) - offset)))
    return x[index] if index else x


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (see the module docstring): True when applied, False when
    $NORMFUSE_KEEP_MEMORY is 0 or the C library is not glibc (nothing is changed then). Once a process."""
    libc = _glibc()
    if os.environ.get(KEEP_MEMORY_ENV, "").strip() == "0" or libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, MMAP_MAX) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def return_freed_memory() -> bool:
    """Give the heap's free memory back to the kernel (glibc's `malloc_trim`); True if any was. Called before
    forking workers: memory this process kept for reuse (`keep_freed_memory`) would otherwise be the workers' too,
    and each page a worker writes there is copied from the parent's on first write rather than handed over zeroed.
    On the 2-core AMD EPYC test machine the accuracy study's quick profile spent 27-28 s of system time with the
    pages kept, 19-24 s with them returned (2 alternating pairs, 12-02; bench/README.md). Never changes a value."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (whose malloc the two functions above tune), else None."""
    return ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


@functools.cache
def one_blas_thread() -> None:
    """BLAS on one thread from now on, for the whole process (see the module docstring). Once a process; a BLAS
    library loaded later (torch's, say) is left alone."""
    _blas().limit(limits=1, user_api="blas")  # not a context: the limit stays


@functools.cache
def _blas() -> Any:
    """The BLAS libraries loaded in this process, as a threadpoolctl controller (inspected once: its `limit` then
    costs ~10 us). Imported when first needed."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@functools.cache
def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """One pool of `workers` threads per count, shared by every executor (created when first needed)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="normfuse")


# A forked child has none of its parent's threads, so a pool inherited from the parent would never run a block.
if hasattr(os, "register_at_fork"):  # (a platform that cannot fork has no such hook, and needs none)
    os.register_at_fork(after_in_child=_pool.cache_clear)


def can_fork() -> bool:
    """Whether this platform can fork a process (`process_pool` needs it; Windows cannot)."""
    return "fork" in multiprocessing.get_all_start_methods()


def process_pool(
    workers: int | None = None, initializer: Callable[[], None] | None = None
) -> multiprocessing.pool.Pool:
    """A pool of `workers` forked processes (default: the CPUs this process may run on), each first running
    `initializer`. Forked, so a worker starts with everything this process holds (a function it is sent by name
    may use module state set before the pool was made). Workers ignore Ctrl-C (the parent handles it); leaving the
    pool's `with` block ends them, finished or not. Tasks and results travel between the processes pickled: only
    values this process made, never a file's."""
    n = workers or threads_setting(None)
    return_freed_memory()
    return multiprocessing.get_context("fork").Pool(n, _worker_start, (initializer,))


def forks(workers: int, items: int) -> bool:
    """Whether `fork_map` spreads `items` over processes: more than one of each, and a platform that forks."""
    return workers > 1 and items > 1 and can_fork()


#: The function `fork_map`'s workers call: set before they are forked, so they inherit it (it is not pickled).
_FORKED: Callable[[Any], Any] | None = None


def fork_map(
    fn: Callable[[Any], R],
    items: Sequence[Any],
    workers: int,
    *,
    initializer: Callable[[], None] | None = None,
    done: Callable[[int], None] | None = None,
) -> list[R]:
    """[fn(item) for item in items]: in min(workers, len(items)) forked processes (`process_pool`) when `forks`,
    else here (and `initializer` is not run). `fn` may be any callable, a closure over this process's arrays
    included: the workers inherit it; each item and each result is pickled. `done(k)` after the k-th result."""
    global _FORKED
    if not forks(workers, len(items)):
        out: list[R] = []
        for item in items:
            out.append(fn(item))
            if done is not None:
                done(len(out))
        return out
    results: dict[int, R] = {}
    _FORKED = fn
    try:
        with process_pool(min(workers, len(items)), initializer) as pool:
            for i, r in pool.imap_unordered(_forked_call, list(enumerate(items))):
                results[i] = r
                if done is not None:
                    done(len(results))
    finally:
        _FORKED = None
    return [results[i] for i in range(len(items))]


def _forked_call(task: tuple[int, Any]) -> tuple[int, Any]:
    i, item = task
    if _FORKED is None:  # not a worker forked by fork_map
        raise RuntimeError("fork_map's function is called only in a process fork_map forked")
    return i, _FORKED(item)


def _worker_start(initializer: Callable[[], None] | None) -> None:
    """A worker ignores Ctrl-C (the parent handles it) and dies of SIGTERM and SIGHUP by their default action,
    whatever handler it inherited. The pool ends its workers with SIGTERM (leaving `process_pool`'s block does,
    every time); a Python-level handler, such as the CLI's, runs only when the signal interrupts the worker's main
    thread, and a worker whose main thread waits in C (the pool's queue lock) while another thread takes the
    signal never runs it: the study hung at the end of a stage about once in ten runs of MiniLM's full study."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)
    if initializer is not None:
        initializer()


def run_blocks(work: Callable[[B], None], blocks: Sequence[B], threads: int) -> None:
    """work(b) for every block, on the calling thread and threads - 1 workers, each taking the next block not yet
    taken (so a thread slowed by another process takes fewer blocks). Which thread runs a block changes nothing
    in it (BLAS is on one thread: `one_blas_thread`)."""
    todo = iter(blocks)  # shared by the threads: next() on a list iterator is atomic under the GIL

    def drain() -> None:
        for b in todo:
            work(b)

    helpers = [_pool(threads - 1).submit(drain) for _ in range(min(threads, len(blocks)) - 1)]
    try:
        drain()
    finally:
        for f in helpers:
            f.result()
