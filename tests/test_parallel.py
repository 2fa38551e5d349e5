"""The plain executor's row blocks and worker threads (normfuse_ref.parallel) change no bit of any result.

Two implementations must agree. On 1 vs 2 threads, bit for bit, no tolerance (blocks are cut by shape alone and run
the same NumPy calls whichever thread runs them, so any difference is a bug): every primitive, and whole forward
passes in both orders, the tiny model and SmolLM2, prefill and decode. Cut into blocks vs computed whole (the
executor with blocking turned off): elementwise ops and reductions bit for bit (the same ufuncs on the same rows);
products, and the e^{z - m} @ V of the blocked attention, within twice their rounding bound (OpenBLAS picks its
kernel, hence its summation order, by a product's size).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from normfuse_ref import ops, parallel
from normfuse_ref.accuracy import bounds as bd
from normfuse_ref.layers import normalise_rows, shifted_exp, silu_gate
from normfuse_ref.models import sites
from normfuse_ref.models.llama.fetch import fetch
from normfuse_ref.models.llama.forward import causal_keep, empty_cache, forward
from normfuse_ref.models.llama.model import Model, load_model
from normfuse_ref.ops import NumpyExecutor

B = parallel.BLOCK_ELEMENTS


def _whole(call: functools.partial[Any]) -> Any:
    """What `call` gives when the executor computes every primitive whole (its path for small arrays)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ops, "row_blocks", lambda shape: None)
        m.setattr(ops, "matmul_blocks", lambda x_shape, F_shape: None)
        return call()


def same(a: object, b: object) -> bool:
    """Bit for bit: equal arrays of equal dtype and shape, NaN in the same places."""
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    x, y = np.asarray(a), np.asarray(b)
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


# ---------------------------------------------------------------------------------------------------------------
# Memory: freed arrays are reused, not page-faulted in again
# ---------------------------------------------------------------------------------------------------------------

# A prefill's pattern in miniature: a few arrays of a layer's score size and one of the logits' size made, written
# and freed, again and again.
# Prints the page faults of the rounds after the first (the first grows the heap) and whether the setting applied.
_FAULTS = """
import resource, numpy as np
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref import parallel
NumpyExecutor()
def round_():
    arrays = [np.empty(9 << 18, np.float32) for _ in range(4)]  # 4 x 9 MiB
    arrays.append(np.empty(25 << 20, np.float32))  # 100 MiB, above any mmap threshold glibc accepts (32 MiB)
    for a in arrays:
        a.fill(1.0)
round_()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, parallel.keep_freed_memory())
"""


def _faults(env: dict[str, str]) -> tuple[int, bool]:
    run = subprocess.run([sys.executable, "-c", _FAULTS], env={**os.environ, **env}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    faults, applied = run.stdout.split()
    return int(faults), applied == "True"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc's settings are glibc's")
def test_the_executor_keeps_freed_memory_for_the_next_array() -> None:
    """With the setting (applied by making a NumpyExecutor), 5 rounds of 4 fresh 9 MiB arrays and one of 100 MiB
    reuse the memory the first round freed: a handful of page faults, against ~2,300 a round for each small array
    (one per 4 KiB page) and ~25,600 (or ~50 huge pages) for the large one when malloc returns them to the kernel.
    The control, the same rounds with $NORMFUSE_KEEP_MEMORY=0, shows the test can fail: glibc maps the large array
    afresh each time and its adaptive threshold trims the freed small ones at the heap's top. (With the earlier
    setting, a 32 MiB mmap threshold, the 100 MiB array alone faulted in again every round: 250-128,000 faults.)"""
    kept, applied = _faults({parallel.KEEP_MEMORY_ENV: "1"})
    assert applied
    assert kept < 100
    returned, applied = _faults({parallel.KEEP_MEMORY_ENV: "0"})
    assert not applied
    assert returned > 5 * 1000  # 5 rounds x 4 arrays x 2,304 pages, less what the kernel's huge pages save


# Memory kept free for reuse, then returned: RSS (MiB) after freeing a 200 MiB array, and after returning it.
_RETURNED = """
import os, numpy as np
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref import parallel
NumpyExecutor()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
a = np.ones(50 << 20, np.float32)  # 200 MiB
del a
kept = rss()
parallel.return_freed_memory()
print(kept, rss())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc's settings are glibc's")
def test_workers_are_forked_after_the_kept_memory_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory the executor keeps free (above: kept resident for the next array) is given back before a pool of
    workers is forked, so that a worker writing there gets fresh pages, not copies of the parent's. The control is
    the RSS just before the call: the freed 200 MiB array is still resident then."""
    run = subprocess.run([sys.executable, "-c", _RETURNED], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    kept, returned = map(int, run.stdout.split())
    assert kept - returned > 150, (kept, returned)
    calls: list[bool] = []

    def record() -> bool:
        calls.append(True)
        return True

    monkeypatch.setattr(parallel, "return_freed_memory", record)
    with parallel.process_pool(1):
        pass
    assert calls == [True]


# A pool whose parent handles SIGTERM in Python (as the CLI does), its worker's main thread waiting in C with the
# signal going to another thread: leaving the pool's block (which sends SIGTERM) must end the worker all the same.
_TERMINATED = """
import signal, threading, time
from normfuse_ref import parallel
from normfuse_ref.cli.main import _terminate_like_ctrl_c
_terminate_like_ctrl_c()
def stuck(_):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()  # a thread the signal can go to
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # ... and does: not to this one
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # the main thread waits in C, for ever
with parallel.process_pool(1) as pool:
    pool.apply_async(stuck, (0,))
    time.sleep(1)
print("ended")
"""


@pytest.mark.skipif(not parallel.can_fork(), reason="workers are forked")
def test_leaving_a_pool_ends_a_worker_stuck_in_c_whatever_handler_it_inherited() -> None:
    try:
        run = subprocess.run([sys.executable, "-c", _TERMINATED], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the pool's worker did not die of SIGTERM: leaving the pool hung")
    assert run.returncode == 0 and run.stdout == "ended\n", run.stderr


_BLAS = """
import threadpoolctl
from normfuse_ref.ops import NumpyExecutor
def threads():
    return sorted({lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"})
before = threads()
NumpyExecutor()
print(before, threads())
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="BLAS already runs on one thread on one CPU")
def test_making_an_executor_puts_blas_on_one_thread_for_the_process() -> None:
    """After the first NumpyExecutor, every BLAS call in the process is single-threaded (the products its forward
    issues outside any block included: a decode step's), where before it BLAS ran on every CPU."""
    run = subprocess.run([sys.executable, "-c", _BLAS], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    before, after = run.stdout.strip().split("] [")
    assert before != "[1" and after == "1]", run.stdout


# ---------------------------------------------------------------------------------------------------------------
# The setting
# ---------------------------------------------------------------------------------------------------------------


def test_thread_count_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parallel.THREADS_ENV, "3")
    assert NumpyExecutor().thread_count == 3
    assert NumpyExecutor(threads=1).thread_count == 1
    monkeypatch.delenv(parallel.THREADS_ENV)
    assert NumpyExecutor().thread_count >= 1


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_setting_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(parallel.THREADS_ENV, text)
    with pytest.raises(ValueError, match=re.escape(f"NORMFUSE_THREADS must be a positive integer; got '{text}'")):
        NumpyExecutor()
    with pytest.raises(ValueError, match=re.escape("threads must be a positive integer; got 0")):
        NumpyExecutor(threads=0)


# ---------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2 * B // 64, 64), (3, 1536, 512), (5, 3, 7, B // 2), (2, 3 * B), (4, 1, 2 * B)])
def test_blocks_cover_every_element_once(shape: tuple[int, ...]) -> None:
    blocks = parallel.row_blocks(shape)
    assert blocks is not None and len(blocks) >= 2
    count = np.zeros(shape, np.int64)
    for b in blocks:
        count[b] += 1
        assert count[b].size <= max(B, shape[-1])  # a block is at most BLOCK_ELEMENTS, or one row
    assert (count == 1).all()


@pytest.mark.parametrize("shape", [(512, 1536), (3, 1536, 512), (64, 24, 1536), (7, 2 * B // 3, 3)])
def test_blocks_are_balanced_and_even_in_number(shape: tuple[int, ...]) -> None:
    """Two threads get equal work: the ranges of the split axis under each index of the axes before it differ in
    length by at most one, and there are an even number of them."""
    blocks = parallel.row_blocks(shape)
    assert blocks is not None
    ranges: dict[tuple[int, ...], list[int]] = {}
    for b in blocks:
        ranges.setdefault(tuple(s.start for s in b[:-1]), []).append(b[-1].stop - b[-1].start)
    for lengths in ranges.values():
        assert max(lengths) - min(lengths) <= 1 and (len(lengths) == 1 or len(lengths) % 2 == 0), lengths


def test_small_outputs_are_not_cut() -> None:
    assert parallel.row_blocks((2 * B - 1,)) is None
    assert parallel.row_blocks((1, 2 * B - 1)) is None
    assert parallel.row_blocks((B, 2)) is not None


def test_a_block_of_an_input_follows_broadcasting() -> None:
    b = (slice(1, 2), slice(4, 8))  # row 1 of axis 0, rows 4..7 of axis 1, of an output (3, 16, 5)
    x = np.arange(3 * 16 * 5).reshape(3, 16, 5)
    assert same(parallel.block_of(x, b, 3), x[1:2, 4:8])
    assert same(parallel.block_of(x[:, :, :1], b, 3), x[1:2, 4:8, :1])
    assert same(parallel.block_of(x[0], b, 3), x[0, 4:8])  # (16, 5): output axis 1 is its axis 0
    assert same(parallel.block_of(x[:1], b, 3), x[:1, 4:8])  # length 1: broadcast, read whole
    assert same(parallel.block_of(x[0, 0], b, 3), x[0, 0])  # (5,): the last axis is never cut


def test_only_callables_that_hold_no_array_are_cut() -> None:
    keep = np.ones(3, bool)
    scale = 0.5
    assert parallel.reads_only_arguments(silu_gate)
    assert parallel.reads_only_arguments(lambda z: z * scale)
    assert not parallel.reads_only_arguments(lambda z: z * keep)
    assert not parallel.reads_only_arguments(functools.partial(np.multiply, keep))
    assert not parallel.reads_only_arguments(np.exp)  # a ufunc is not a plain function: computed whole


# ---------------------------------------------------------------------------------------------------------------
# Each primitive: cut into blocks vs computed whole, on 1 and 2 threads
# ---------------------------------------------------------------------------------------------------------------


def _scores(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    z = (rng.standard_normal(shape) * 4).astype(dtype)  # (..., n)
    z[..., 0, :] = -np.inf  # a fully masked row
    z[..., 1, 7:] = -np.inf  # a partly masked one
    return z


def _product_gap(a: np.ndarray, b: np.ndarray, x: np.ndarray, F: np.ndarray, P: bd.Precision, stored: bool) -> None:
    """Two computations of x @ F (same operands, other BLAS calls) agree within twice the bound each one has on its
    distance to the exact product (`bounds.matmul`, plus one rounding to storage when `stored`): OpenBLAS chooses
    its kernels by the product's size, so a block of rows may sum its dot products in another order."""
    bound = bd.matmul(bd.exact(x), bd.exact(F), P)
    bound = bd.store(bound, P) if stored else bound
    gap = np.abs(a.astype(np.float64) - b.astype(np.float64))
    assert (gap <= 2 * bound.b).all(), f"max gap {gap.max()} vs bound {(2 * bound.b).max()}"


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_elementwise_and_reductions_cut_into_blocks_equal_the_whole(dtype: str) -> None:
    """Bit for bit: each element (each row of a reduction) is computed by the same ufunc calls on its block."""
    rng = np.random.default_rng(0)
    z = _scores(rng, dtype, (3, 1536, 600))  # (H, rows, n): 2,764,800 scores, cut into blocks of rows
    x = rng.standard_normal((1000, 576)).astype(dtype)  # (T, d)
    u = rng.standard_normal((1000, 576)).astype(dtype)
    keep = causal_keep(512, 600, 3)  # (1536, 600)
    assert keep is not None and parallel.row_blocks(z.shape) is not None and parallel.row_blocks(x.shape) is not None
    for threads in (1, 2):
        ex = NumpyExecutor(dtype, threads=threads)
        m = ex.reduce(z, "max", op="m")
        e = ex.elementwise(shifted_exp, z, m, op="exp", keep_acc=True)
        calls = [
            functools.partial(ex.elementwise, shifted_exp, z, m, op="exp", keep_acc=True),
            functools.partial(ex.elementwise, normalise_rows, e, ex.reduce(e, "sum", op="l"), op="div"),
            functools.partial(ex.elementwise, silu_gate, x, u, op="swiglu"),
            functools.partial(ex.elementwise, lambda z, k: np.where(k, z * 0.125, -np.inf), z, keep, op="mask"),
            *(functools.partial(ex.reduce, x, kind, op="r", eps=1e-5) for kind in ("max", "sum", "mean", "rms_scale")),
            functools.partial(ex.reduce, z, "sum", op="r"),
        ]
        for call in calls:
            assert same(call(), _whole(call)), (threads, call)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("keep_acc", [False, True])
def test_products_cut_into_blocks_agree_with_the_whole(dtype: str, keep_acc: bool) -> None:
    rng = np.random.default_rng(2)
    P = bd.Precision.of(dtype)
    x = rng.standard_normal((600, 700)).astype(dtype)  # (T, n): a tall product, 4 blocks of 150 rows
    F = rng.standard_normal((700, 50)).astype(dtype)  # (n, m)
    q = rng.standard_normal((3, 1600, 64)).astype(dtype)  # (H, rows, hd): per-head products, a batched F
    kT = rng.standard_normal((3, 64, 90)).astype(dtype)  # (H, hd, S): 2 blocks of 800 rows of each head
    qs = rng.standard_normal((96, 12, 24, 32)).astype(dtype)  # (B, H, T, hd): a batch of small products, cut
    ks = rng.standard_normal((96, 12, 32, 24)).astype(dtype)  # over the batch axis: 4 blocks of 24 sequences
    w = rng.standard_normal((40, 64)).astype(dtype)  # (T, n): a wide product, cut into blocks of columns
    W = rng.standard_normal((64, 1100)).astype(dtype)  # (n, m): 256, 256, 256, 256, 76 columns
    xb = rng.standard_normal((2, 300, 700)).astype(dtype)  # (B, T, n) @ (n, m): 2 blocks of 150 rows a sequence
    v = rng.standard_normal((1, 64)).astype(dtype)  # (1, n): a decode step's row against a head of 4.2M entries,
    H = rng.standard_normal((64, 66_000)).astype(dtype)  # (n, m): 4 blocks of 16,640 columns
    r = rng.standard_normal((5, 600)).astype(dtype)  # (rows, n): a few rows (a short prompt) against an F of
    R = rng.standard_normal((600, 500)).astype(dtype)  # 300K entries: two halves of 256 and 244 columns
    s = rng.standard_normal((4, 1, 256)).astype(dtype)  # (B, 1, n): a batch's decode step, the halves written
    S = rng.standard_normal((256, 1100)).astype(dtype)  # through a copy (a column block of out is not contiguous)
    assert [b[1][-1] for b in parallel.matmul_blocks(r.shape, R.shape) or []] == [slice(0, 256), slice(256, 512)]
    assert parallel.matmul_blocks(r[:1].shape, R.shape) is None  # one row: a matrix-vector product, one call
    for a, b in ((x, F), (q, kT), (qs, ks), (w, W), (xb, F), (v, H), (r, R), (s, S)):
        assert parallel.matmul_blocks(a.shape, b.shape) is not None
        one = NumpyExecutor(dtype, threads=1).matmul(a, b, op="mm", keep_acc=keep_acc)
        two = NumpyExecutor(dtype, threads=2).matmul(a, b, op="mm", keep_acc=keep_acc)
        whole = _whole(functools.partial(NumpyExecutor(dtype).matmul, a, b, op="mm", keep_acc=keep_acc))
        assert same(one, two), "1 and 2 threads differ"
        _product_gap(one, whole, a, b, P, stored=not keep_acc)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("tile_size", [None, 100])
@pytest.mark.parametrize("shape", [(3, 1536, 300), (2, 3, 40, 2 * B // 40)])
def test_blocked_attention_equals_the_one_shot(dtype: str, tile_size: int | None, shape: tuple[int, ...]) -> None:
    """softmax_tiles cut into blocks of rows (of every head: V is sliced with its head) vs the whole scores at once.

    The maxima and the sums are bit for bit the same (the same reductions of the same rows); e^{z - m} @ V is a
    product, within twice its bound (see `_product_gap`) of the one-shot; on 1 and 2 threads, bit for bit.
    """
    rng = np.random.default_rng(1)
    P = bd.Precision.of(dtype)
    z = _scores(rng, dtype, shape)  # (..., rows, n)
    V = rng.standard_normal((*shape[:-2], shape[-1], 8)).astype(dtype)  # (..., n, m)
    assert parallel.row_blocks(z.shape) is not None
    one = NumpyExecutor(dtype, tile_size=tile_size, threads=1).softmax_tiles(z, V, op="pv")
    two = NumpyExecutor(dtype, tile_size=tile_size, threads=2).softmax_tiles(z, V, op="pv")
    ex = NumpyExecutor(dtype, tile_size=tile_size)
    whole = _whole(functools.partial(ex.softmax_tiles, z, V, op="pv"))
    assert same(one, two), "1 and 2 threads differ"
    assert same(one.m, whole.m) and same(one.l, whole.l)
    n, t = shape[-1], shape[-1] if tile_size is None else tile_size
    za, Va = z.astype(ex._acc), V.astype(ex._acc)
    for k, i in enumerate(range(0, n, t)):  # each slice's e^{z - m} @ V
        e = shifted_exp(za[..., i : i + t], one.m[..., k, :])  # (..., rows, t): the same in both
        _product_gap(one.o[..., k, :], whole.o[..., k, :], e, Va[..., i : i + t, :], P, stored=False)


def _exact_attention_inputs(
    rng: np.random.Generator, dtype: str, lead: tuple[int, ...], T: int, S: int, hd: int
) -> Any:
    """q, kT, v whose products are exact in any summation order: q and k small integers (their dot products are
    integers far below 2^11), v a 0/1 matrix with at most one 1 a column (each e @ v or p @ v entry is one term plus
    exact zeros), a different one for each leading index (so a block given another head's K or V shows)."""
    q = rng.integers(-2, 3, (*lead, T, hd)).astype(dtype)  # (..., T, hd)
    kT = rng.integers(-2, 3, (*lead, hd, S)).astype(dtype)  # (..., hd, S)
    v = np.zeros((*lead, S, hd), dtype)  # (..., S, hd)
    for i in np.ndindex(*lead):
        v[i][np.arange(S), rng.permutation(hd)[:S]] = 1  # key j -> its own column
    return q, kT, v


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_attention_in_blocks_of_query_rows_equals_the_one_shot(dtype: str, mode: sites.Mode) -> None:
    """`sites.attention` run by `rows` in blocks of query rows (each block's q, mask rows, and its own head's K and
    V) vs the whole at once, bit for bit, on inputs whose products are exact in any order (so nothing but the
    blocks' bookkeeping can differ): a causal GQA-like (H, rows, hd) with a (rows, S) mask, and a padded batch
    (B, H, T, hd) with a (B, 1, 1, S) mask, cut over its batch axis."""
    rng = np.random.default_rng(3)
    hd = 64
    causal = (*_exact_attention_inputs(rng, dtype, (3,), 86 * 48, 48, hd), causal_keep(48, 48, 86))  # G = 86
    qb, kb, vb = _exact_attention_inputs(rng, dtype, (96, 4), 24, 24, hd)
    pad = np.ones((96, 1, 1, 24), bool)  # (B, 1, 1, S)
    pad[1::3, ..., 17:] = False  # every third sequence padded after 17 tokens
    for q, kT, v, keep in (causal, (qb, kb, vb, pad)):
        assert parallel.row_blocks((*q.shape[:-1], hd)) is not None, "the case must be cut"
        blocks = [sites.attention(NumpyExecutor(dtype, threads=t), q, kT, v, keep, hd, mode) for t in (1, 2)]
        whole = _whole(functools.partial(sites.attention, NumpyExecutor(dtype), q, kT, v, keep, hd, mode))
        assert same(blocks[0], blocks[1]), "1 and 2 threads differ"
        assert same(blocks[0], whole), "blocks of query rows differ from the whole"


def test_a_block_of_early_queries_reads_only_the_keys_they_see() -> None:
    """The causal mask's rows are query-major (row r is query r // G), so a block of consecutive rows is a run of
    queries, and `keys_seen` (how many keys a block's products read) ends at its last query's last key, counted
    here from the definition: query t of T new ones after S - T cached sees keys 0 .. t + S - T."""
    T, S, G = 48, 60, 3
    keep = causal_keep(T, S, G)  # (T*G, S)
    assert keep is not None
    for r in range(T * G):
        assert keep[r].sum() == r // G + S - T + 1 and keep[r, : r // G + S - T + 1].all()
    for a, b in ((0, 1), (0, 37), (37, 38), (90, 144), (0, 144)):
        assert sites.keys_seen(keep[a:b]) == (b - 1) // G + S - T + 1, (a, b)
    pad = np.ones((4, 1, 1, 24), bool)  # (B, 1, 1, S)
    pad[1, ..., 17:] = False  # one sequence padded after 17 tokens
    assert sites.keys_seen(pad[1:2]) == 17 and sites.keys_seen(pad) == 24
    assert sites.keys_seen(np.zeros((5, 9), bool)) == 1  # no key seen: the rows are all masked, one key will do
    assert sites.keys_seen(None) == float("inf")  # no mask: every key
    assert sites.keys_seen(np.array([[True], [False]])) == float("inf")  # broadcast over the keys: not a key's index


# ---------------------------------------------------------------------------------------------------------------
# Whole models: 1 thread == 2 threads == whole, both orders
# ---------------------------------------------------------------------------------------------------------------


def _prefill_and_decode(model: Model, mode: str, ids: np.ndarray, threads: int) -> list[np.ndarray]:
    w, ex = model.weights(mode), NumpyExecutor(model.dtype, threads=threads)  # type: ignore[arg-type]
    logits, cache = forward(w, model.cfg, ids, model.cache(len(ids) + 3), mode=mode, ex=ex)  # type: ignore[arg-type]
    out = [logits]
    for _ in range(3):
        logits, cache = forward(w, model.cfg, [int(np.argmax(logits[-1]))], cache, mode=mode, ex=ex)  # type: ignore[arg-type]
        out.append(logits)
    return out


def _check_threads(model: Model, mode: str, ids: np.ndarray) -> None:
    one = _prefill_and_decode(model, mode, ids, 1)
    two = _prefill_and_decode(model, mode, ids, 2)
    assert all(same(a, b) for a, b in zip(one, two, strict=True)), "1 and 2 threads differ"


@pytest.mark.parametrize("mode", ["baseline", "fused"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_model_is_bit_identical_on_any_thread_count(mode: str, dtype: str) -> None:
    """A batch of 4 prompts of 220 tokens, then a decode step. The tiny model's context is 256 tokens, so one
    prompt's arrays are all smaller than two blocks; a batch's attention scores (4, 2, 440, 220) are cut into
    blocks of rows, and every product has a batch axis before its rows (a matrix F is read whole by each block)."""
    model = load_model("tiny", dtype)
    ids = np.arange(4 * 220).reshape(4, 220) % 256  # (B, T)
    assert parallel.row_blocks((4, 2, 440, 220)) is not None
    w, outs = model.weights(mode), []  # type: ignore[arg-type]
    for threads in (1, 2):
        ex = NumpyExecutor(model.dtype, threads=threads)
        cache = empty_cache(model.cfg, model.dtype, batch=4, capacity=221)
        logits, cache = forward(w, model.cfg, ids, cache, mode=mode, ex=ex)  # type: ignore[arg-type]
        step, _ = forward(w, model.cfg, np.argmax(logits[:, -1:], -1), cache, mode=mode, ex=ex)  # type: ignore[arg-type]
        outs.append((logits, step))
    assert same(outs[0], outs[1]), "1 and 2 threads differ"


@pytest.fixture(scope="module")
def smollm2() -> Model:
    fetch("smollm2-135m")  # idempotent: a no-op when the cache holds the file
    return load_model("smollm2-135m")


@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_smollm2_is_bit_identical_on_any_thread_count(smollm2: Model, mode: str) -> None:
    ids = np.random.default_rng(0).integers(100, 40000, 300)  # products (300 rows), scores (3, 900, 300): all cut
    _check_threads(smollm2, mode, ids)
