"""Speed of the emulated machine: the comparison, a prefill, the mapper, a 2-D sweep, and numeric emulation.

    .venv/bin/python bench/bench_emulator.py [--repeats N] [--sweep-points N] [--workers N]

Targets (issue 10; benchmark figures, not tests, since timings depend on the machine and what else runs on it):
  - cost-only llama3-70b decode (context 2048), both orders and both baselines (the comparison's six passes,
    normalisation-free ones included), <= 1 s;
  - llama3-70b prefill of 2,048 tokens (in chunks of 256), the six passes, <= 10 s;
  - the mapper's search for llama3-70b, <= 5 s;
  - a 1,000-point 2-D sweep (llama2-7b decode, NoC hop x die-to-die hop) on 2 cores (a process pool), <= 60 s
    (and, for comparison, a NoC hop x batch sweep: each point's cost grows with the batch, see below);
  - numeric emulation <= 1.5x the plain forward pass (NumpyExecutor) on the same inputs (tiny, SmolLM2).
A decode point of a sweep composes each pass from two timed blocks and the head per stage (equal to the full pass;
tests/test_hw_study.py).
The mapper and the plans are memoised per machine, so the cost-only figures clear those caches first; plain and
emulated runs are interleaved and the median is reported, in wall time and in CPU time of this process. The load
average before and after is printed: on a shared machine, read the figures as upper bounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from normfuse_ref.hw import EmulatingExecutor, costs, get_hardware, mapping, study
from normfuse_ref.hw.study import PASSES, Scenario, compare, local_pool, map_scenario, sweep
from normfuse_ref.models.llama import PRESETS, Mode, forward, prepare, random_params


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def cold() -> None:
    """Forget every memoised mapping, grid and plan, so that a figure includes the work of finding them."""
    study.map_scenario.cache_clear()
    study._timed_blocks.cache_clear()
    mapping.choose_grid.cache_clear()
    for fn in (costs.move_step, costs.stage_transfer_step, costs.reduce_steps, costs.psum_steps, costs.merge_steps):
        fn.cache_clear()  # type: ignore[attr-defined]
    costs.elementwise_step.cache_clear()  # type: ignore[attr-defined]
    costs.grid_cycles.cache_clear()  # type: ignore[attr-defined]
    from normfuse_ref.hw import emulator

    emulator._PLANS.clear()


def six_passes(sc: Scenario, hw: Any) -> None:
    """The comparison with every pass run (a comparison runs its passes when first asked for)."""
    c = compare(sc, hw)
    for name in PASSES:
        getattr(c, name)


def best_of(fn: Callable[[], Any], n: int) -> float:
    out = []
    for _ in range(n):
        cold()
        out.append(timed(fn)[0])
    return min(out)


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
        f"  {label:<46s} plain {1e3 * r['plain_wall']:8.2f} ms  emulated {1e3 * r['emul_wall']:8.2f} ms  "
        f"ratio {r['emul_wall'] / r['plain_wall']:.2f} (wall), {r['emul_cpu'] / r['plain_cpu']:.2f} (cpu)"
    )


def numeric_case(
    name: str, weights: Any, cfg: Any, mode: Mode, ids: np.ndarray, repeats: int, cache: Any = None
) -> None:
    hw = get_hardware("corsair-like")
    mp = map_scenario(Scenario(cfg, "prefill", max(1, ids.shape[-1]), 1), hw)
    r = interleaved(
        lambda: forward(weights, cfg, ids, cache, mode=mode),
        lambda: forward(weights, cfg, ids, cache, mode=mode, ex=EmulatingExecutor(hw, mp)),
        repeats,
    )
    report(f"{name}, {mode}, T={ids.shape[-1]}{' (decode)' if cache else ''}", r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sweep-points", type=int, default=1000, help="points of the 2-D sweep (default 1000)")
    ap.add_argument("--workers", type=int, default=2, help="processes of the sweep's pool (default 2)")
    args = ap.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, numpy {np.__version__}; load average {os.getloadavg()[0]:.2f}"
    )
    hw = get_hardware("corsair-like")

    print("cost-only (shapes only), from cold caches, best of 3:")
    sc = Scenario(PRESETS["llama3-70b"], "decode", 2048, 1)
    t_map = best_of(lambda: map_scenario(sc, hw), 3)
    print(f"  the mapper's search for llama3-70b decode               {t_map:6.2f} s   (target <= 5 s)")
    t_cmp = best_of(lambda: six_passes(sc, hw), 3)
    print(f"  llama3-70b decode, six passes (mapper included)          {t_cmp:6.2f} s   (target <= 1 s)")
    pre = Scenario(PRESETS["llama3-70b"], "prefill", 2048, 1)
    t_pre = best_of(lambda: six_passes(pre, hw), 1)
    print(f"  llama3-70b prefill of 2048 tokens, six passes            {t_pre:6.2f} s   (target <= 10 s)")

    n = args.sweep_points
    base = Scenario(PRESETS["llama2-7b"], "decode", 2048, 1)
    noc = [0.5 + 0.25 * i for i in range(40)]
    d2d = [5.0 * (i + 1) for i in range(max(1, n // 40))]
    cold()
    with local_pool(args.workers) as pool:
        w, _ = timed(lambda: sweep(base, hw, [("noc-hop", noc), ("d2d-hop", d2d)], executor=pool))
    print(
        f"  {len(noc) * len(d2d)}-point sweep (llama2-7b decode, NoC hop x d2d hop), {args.workers} processes "
        f"{w:6.1f} s   (target <= 60 s for 1000 on 2 cores)"
    )
    batches = [1, 2, 4, 8, 16, 32, 64]
    cold()
    with local_pool(args.workers) as pool:
        w, _ = timed(lambda: sweep(base, hw, [("noc-hop", noc[:15]), ("batch", batches)], executor=pool))
    print(
        f"  {15 * len(batches)}-point sweep (llama2-7b decode, NoC hop x batch 1..64), {args.workers} processes "
        f"{w:6.1f} s"
    )

    print("numeric emulation vs the plain forward pass (NumpyExecutor, float32), on the mapper's mapping:")
    cfg = PRESETS["tiny"]
    p = random_params(cfg, seed=0)
    modes: tuple[Mode, ...] = ("baseline", "fused")
    for mode in modes:
        w_ = prepare(p, cfg, mode)
        ids = np.arange(16) % cfg.vocab_size
        numeric_case("tiny", w_, cfg, mode, ids, 10 * args.repeats)
        _, cache = forward(w_, cfg, ids, mode=mode)
        numeric_case("tiny", w_, cfg, mode, np.array([7]), 10 * args.repeats, cache)
    try:
        from normfuse_ref.models.llama.model import load_model

        smol = load_model("smollm2-135m")
    except (ImportError, FileNotFoundError, ValueError) as exc:
        print(f"  SmolLM2: skipped ({exc})")
        return
    for mode in modes:
        ws = smol.weights(mode)
        ids = np.arange(1, 33)
        numeric_case("smollm2-135m", ws, smol.cfg, mode, ids, args.repeats)
        _, cache = forward(ws, smol.cfg, ids, mode=mode)
        numeric_case("smollm2-135m", ws, smol.cfg, mode, np.array([7]), args.repeats, cache)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
