"""Speed of the tile emulator: cost-only timing of a 70B model, and numeric emulation vs the plain forward pass.

    .venv/bin/python bench/bench_emulator.py [--repeats N]

Targets (issue 4): cost-only llama3-70b decode (80 layers, context 8192, both orders) <= 2 s; numeric emulation
of `tiny` or SmolLM2 <= 1.5x the plain forward pass (NumpyExecutor) on the same inputs. Prints the figures; it is
not a test (timings depend on the machine and on what else runs on it). Plain and emulated runs are interleaved
and the median is reported, in wall time and in CPU time of this process.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from normfuse_ref.hw import EmulatingExecutor, get_hardware
from normfuse_ref.hw.study import Phase, Scenario, compare
from normfuse_ref.llama import PRESETS, Mode, forward, prepare, random_params


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def interleaved(plain: Callable[[], Any], emul: Callable[[], Any], repeats: int) -> dict[str, float]:
    plain(), emul()  # warm up (plan caches, BLAS)
    pw, pc, ew, ec = [], [], [], []
    for _ in range(repeats):
        a, b = timed(plain)
        pw.append(a)
        pc.append(b)
        a, b = timed(emul)
        ew.append(a)
        ec.append(b)
    med = statistics.median
    return {"plain_wall": med(pw), "emul_wall": med(ew), "plain_cpu": med(pc), "emul_cpu": med(ec)}


def report(label: str, r: dict[str, float]) -> None:
    print(
        f"  {label:<44s} plain {1e3 * r['plain_wall']:8.2f} ms  emulated {1e3 * r['emul_wall']:8.2f} ms  "
        f"ratio {r['emul_wall'] / r['plain_wall']:.2f} (wall), {r['emul_cpu'] / r['plain_cpu']:.2f} (cpu)"
    )


def numeric_case(
    name: str, weights: Any, cfg: Any, hw_name: str, mode: Mode, ids: np.ndarray, repeats: int, cache: Any = None
) -> None:
    hw = get_hardware(hw_name)
    r = interleaved(
        lambda: forward(weights, cfg, ids, cache, mode=mode),
        lambda: forward(weights, cfg, ids, cache, mode=mode, ex=EmulatingExecutor(hw)),
        repeats,
    )
    report(f"{name} on {hw_name}, {mode}, T={ids.shape[-1]}{' (decode)' if cache else ''}", r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"numpy {np.__version__}"
    )

    print("cost-only (shapes only), both orders:")
    hw = get_hardware("corsair-like")
    cases: tuple[tuple[str, Phase, int], ...] = (
        ("llama3-70b", "decode", 8192),
        ("llama2-7b", "decode", 2048),
        ("llama3-70b", "prefill", 1024),
    )
    for model, phase, ctx in cases:
        sc = Scenario(PRESETS[model], phase, ctx, 1)
        best = min(timed(lambda: compare(sc, hw))[0] for _ in range(3))  # noqa: B023 (called at once)
        c = compare(sc, hw)
        print(f"  {sc.describe():<58s} {best:6.2f} s   ({len(c.baseline.events) + len(c.fused.events)} events)")

    print("numeric emulation vs the plain forward pass (NumpyExecutor, float32):")
    cfg = PRESETS["tiny"]
    p = random_params(cfg, seed=0)
    modes: tuple[Mode, ...] = ("baseline", "fused")
    for mode in modes:
        w = prepare(p, cfg, mode)
        ids = np.arange(16) % cfg.vocab_size
        for hw_name in ("corsair-like", "toy"):
            numeric_case("tiny", w, cfg, hw_name, mode, ids, 10 * args.repeats)
        _, cache = forward(w, cfg, ids, mode=mode)
        numeric_case("tiny", w, cfg, "corsair-like", mode, np.array([7]), 10 * args.repeats, cache)
    try:
        from normfuse_ref.llama.model import load_model

        smol = load_model("smollm2-135m")
    except (ImportError, FileNotFoundError, ValueError) as exc:
        print(f"  SmolLM2: skipped ({exc})")
        return
    for mode in modes:
        ws = smol.weights(mode)
        ids = np.arange(1, 33)
        numeric_case("smollm2-135m", ws, smol.cfg, "corsair-like", mode, ids, args.repeats)
        _, cache = forward(ws, smol.cfg, ids, mode=mode)
        numeric_case("smollm2-135m", ws, smol.cfg, "corsair-like", mode, np.array([7]), args.repeats, cache)


if __name__ == "__main__":
    main()
