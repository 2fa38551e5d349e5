"""Speed of the accuracy study (`normfuse accuracy`): the full SmolLM2 study, MiniLM, and the quick profile.

    .venv/bin/python bench/bench_accuracy.py [--profile full-smollm2|minilm|quick|all] [--repeats N] [--json]

Targets (issue 14): the full SmolLM2 study (4 dtypes x both orders + float64 over 4,096 tokens) <= 10 minutes on 2
cores; MiniLM <= 1 minute; the quick profile `--tokens 512 --mitigate never` (both models, figures and verdicts
without mitigation or ablation arms or the hazard measurement: what CI may run) <= 90 s. Each profile runs
`normfuse accuracy ... --json` in a fresh process (model loading included, as a user meets it), timed by wall clock
and by the CPU seconds the process used (user + sys, all its threads: the figure that a busy machine does not
inflate; on an idle 2-core machine wall ~ CPU / 2 at best); the per-run seconds the study records give the
breakdown. Prints the figures; it is not a test (timings depend on the machine and on what else runs on it: the
load average before and after is printed with them).

The study runs more than the issue's 9 passes: each order twice (the permuted model: the spread the verdict needs)
and, where the fused order is worse, each mitigation and each ablation arm (the fused order at one kind of site,
`RunSpec.sites`) twice. The table says how many runs each profile made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

#: profile -> (arguments of `normfuse accuracy`, target seconds)
PROFILES: dict[str, tuple[tuple[str, ...], float]] = {
    "full-smollm2": (("--model", "smollm2-135m"), 600.0),
    "minilm": (("--model", "all-minilm-l6-v2"), 60.0),
    "quick": (("--tokens", "512", "--mitigate", "never"), 90.0),
}


def run_profile(args: tuple[str, ...]) -> dict[str, Any]:
    """Wall and CPU seconds of one `normfuse accuracy --json` process, and what it reported."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "normfuse_ref", "accuracy", *args, "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if r.returncode != 0:
        raise SystemExit(f"normfuse accuracy {' '.join(args)} failed:\n{r.stderr}")
    doc = json.loads(r.stdout)
    per_model = {m["model"]: m["seconds"] for m in doc["models"]}
    runs = [
        (rec["model"], rec["dtype"], rec["order"], rec["summation"], rec["mitigation"], rec["seconds"])
        for rec in doc["records"]
    ]
    return {
        "wall": wall,
        "cpu": cpu,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "models": per_model,
        "runs": runs,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=[*PROFILES, "all"], default="all")
    p.add_argument("--repeats", type=int, default=1, help="runs per profile; the median is reported (default 1)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    names = list(PROFILES) if a.profile == "all" else [a.profile]
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
    }
    for name in names:
        args, target = PROFILES[name]
        results = [run_profile(args) for _ in range(a.repeats)]
        wall = statistics.median(r["wall"] for r in results)
        cpu = statistics.median(r["cpu"] for r in results)
        out[name] = {
            "target_s": target, "wall_s": wall, "cpu_s": cpu, "within_target": wall <= target, "repeats": results
        }  # fmt: skip
        if not a.json:
            last = results[-1]
            print(
                f"{name:<13s} {wall:7.1f} s wall, {cpu:7.1f} CPU-s (target {target:.0f} s: "
                f"{'ok' if wall <= target else 'OVER'})  "
                f"{len(last['runs'])} runs, load {last['load_before']:.2f} -> {last['load_after']:.2f}"
            )
            for model, secs in last["models"].items():
                runs = [r for r in last["runs"] if r[0] == model]
                slowest = max(runs, key=lambda r: r[-1])
                print(
                    f"    {model:<18s} {secs:7.1f} s in the study, {len(runs)} runs, median "
                    f"{statistics.median(r[-1] for r in runs):.1f} s, slowest {slowest[-1]:.1f} s ({' '.join(str(x) for x in slowest[1:5] if x)})"
                )
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"machine: {out['machine']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
