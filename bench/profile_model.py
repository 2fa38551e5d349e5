"""Where the time of a SmolLM2 forward goes, per primitive and per op name (the names the emulator prices).

A `TimedExecutor` wraps the model's own executor and adds the wall time of every primitive call to its
(primitive, op) row; the rest of a step (the forward's Python between calls) is the remainder. Profiled: one
512-token prefill and 64 decode steps after a short prompt, in one order (after one untimed warm-up of each).

    .venv/bin/python bench/profile_model.py --mode fused           # needs: normfuse fetch smollm2-135m
    .venv/bin/python bench/profile_model.py --mode baseline --threads 1
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from normfuse_ref.models.llama.forward import forward
from normfuse_ref.models.llama.model import Model, load_model, prompt_ids
from normfuse_ref.ops import NumpyExecutor, ReduceKind, SoftmaxTiles

PREFILL = 512
NEW_TOKENS = 64


class TimedExecutor:
    """An Executor that runs `inner` and sums the seconds and calls of each (primitive, op)."""

    def __init__(self, inner: NumpyExecutor) -> None:
        self.inner = inner
        self.seconds: collections.Counter[tuple[str, str]] = collections.Counter()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def _timed(self, prim: str, op: str, call: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = call()
        self.seconds[prim, op] += time.perf_counter() - t
        self.calls[prim, op] += 1
        return out

    def matmul(self, x: Any, F: Any, *, op: str, keep_acc: bool = False) -> Any:
        return self._timed("matmul", op, lambda: self.inner.matmul(x, F, op=op, keep_acc=keep_acc))

    def elementwise(self, fn: Callable[..., Any], *xs: Any, op: str, keep_acc: bool = False) -> Any:
        return self._timed("elementwise", op, lambda: self.inner.elementwise(fn, *xs, op=op, keep_acc=keep_acc))

    def reduce(self, x: Any, kind: ReduceKind, *, op: str, eps: float = 0.0) -> Any:
        return self._timed("reduce", op, lambda: self.inner.reduce(x, kind, op=op, eps=eps))

    def softmax_tiles(self, z: Any, V: Any, *, op: str) -> SoftmaxTiles:
        return self._timed("softmax_tiles", op, lambda: self.inner.softmax_tiles(z, V, op=op))  # type: ignore[no-any-return]

    def softmax_merge(self, t: SoftmaxTiles, *, op: str) -> SoftmaxTiles:
        return self._timed("softmax_merge", op, lambda: self.inner.softmax_merge(t, op=op))  # type: ignore[no-any-return]

    def layout(self, fn: Callable[..., Any], *xs: Any, op: str) -> Any:
        return self._timed("layout", op, lambda: self.inner.layout(fn, *xs, op=op))

    def rows(self, fn: Callable[..., Any], x: Any, *xs: Any, batched: tuple[Any, ...] = (), op: str) -> Any:
        # timed as one: the blocks' primitives run on the inner executor's own executors, on both threads
        return self._timed("rows", op, lambda: self.inner.rows(fn, x, *xs, batched=batched, op=op))

    def scope(self, *, layer: int | None) -> contextlib.AbstractContextManager[None]:
        return self.inner.scope(layer=layer)

    def report(self, title: str, total: float, steps: int) -> None:
        print(f"\n{title}: {total * 1e3 / steps:.1f} ms a step ({steps} step(s))")
        by_prim: collections.Counter[str] = collections.Counter()
        for (prim, _), s in self.seconds.items():
            by_prim[prim] += s
        rest = total - sum(by_prim.values())
        print(f"  {'primitive':16} {'ms/step':>9} {'share':>6}")
        for prim, s in by_prim.most_common():
            print(f"  {prim:16} {s * 1e3 / steps:9.2f} {s / total:6.1%}")
        print(f"  {'(forward code)':16} {rest * 1e3 / steps:9.2f} {rest / total:6.1%}")
        print(f"  {'primitive':14} {'op':24} {'calls/step':>10} {'ms/step':>9} {'share':>6}")
        for (prim, op), s in self.seconds.most_common(14):
            n = self.calls[prim, op] / steps
            print(f"  {prim:14} {op:24} {n:10.0f} {s * 1e3 / steps:9.2f} {s / total:6.1%}")


def profile(model: Model, mode: Any, threads: int | None) -> None:
    w = model.weights(mode)
    big = np.random.default_rng(0).integers(100, 40000, PREFILL)
    ids = prompt_ids(model, "What is the capital of France?")

    def run(ex: Any, tokens: Any, cache: Any) -> Any:
        return forward(w, model.cfg, tokens, cache, mode=mode, ex=ex)

    plain = NumpyExecutor(storage=model.dtype, **({} if threads is None else {"threads": threads}))
    run(plain, big, None)  # warm-up
    ex = TimedExecutor(plain)
    t = time.perf_counter()
    run(ex, big, None)
    ex.report(f"prefill {PREFILL}, {mode}", time.perf_counter() - t, 1)

    logits, cache = run(plain, ids, model.cache(len(ids) + 2 * NEW_TOKENS + 2))
    for _ in range(NEW_TOKENS // 4):  # warm-up
        logits, cache = run(plain, [int(np.argmax(logits[-1]))], cache)
    ex = TimedExecutor(plain)
    t = time.perf_counter()
    for _ in range(NEW_TOKENS):
        logits, cache = run(ex, [int(np.argmax(logits[-1]))], cache)
    ex.report(f"decode, {mode}", time.perf_counter() - t, NEW_TOKENS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("baseline", "fused"), default="fused")
    ap.add_argument("--threads", type=int, default=None, help="the executor's threads (default: its setting)")
    args = ap.parse_args()
    profile(load_model("smollm2-135m"), args.mode, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
