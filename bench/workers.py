"""Persistent benchmark workers that the parent alternates (bench_model.py, bench_embed.py).

Each implementation runs in its own subprocess, so its peak resident memory (getrusage ru_maxrss) is its own. A
worker loads its model, runs every job once untimed (warm-up), prints "ready", and then runs one timed job per
line the parent sends; the parent sends the jobs to all workers in turn, round after round, so that a burst of load
from other processes hits every implementation alike. Timing is the job's own: a job returns its seconds.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

#: The environment variables that cap a worker's threads: NumPy's OpenBLAS, torch's OpenMP, normfuse's executor.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NORMFUSE_THREADS")


def rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> dict[str, Any]:
    """The machine a benchmark ran on, and how busy it was (1-minute, 5-minute, 15-minute load averages)."""
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }


def serve(jobs: Mapping[str, Callable[[], float]], info: dict[str, Any]) -> int:
    """The worker's loop: warm up every job, print "ready"; then for each line naming a job run it and print its
    seconds; on "done" print `info` with the peak RSS."""
    for job in jobs.values():
        job()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "done":
            print(json.dumps({**info, "peak_rss_mb": rss_mb()}), flush=True)
            return 0
        print(json.dumps({"seconds": jobs[name]()}), flush=True)
    return 1


class Worker:
    """The parent's handle on one worker: `argv` runs the worker's `serve`; `threads` caps all its threads."""

    def __init__(self, name: str, argv: list[str], threads: int | None = None) -> None:
        env = dict(os.environ)
        if threads is not None:  # read by OpenBLAS, OpenMP and normfuse's executor when they start
            env |= {v: str(threads) for v in THREAD_VARIABLES}
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.name = name
        self.times: dict[str, list[float]] = {}
        self._read()  # "ready"

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.name} failed (see its error above)")
        return dict(json.loads(line))

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def run(self, job: str) -> None:
        self._send(job)
        self.times.setdefault(job, []).append(float(self._read()["seconds"]))

    def finish(self) -> dict[str, Any]:
        """The worker's info and peak RSS, and per job its best, median and every time (seconds)."""
        self._send("done")
        rec = self._read()
        self.proc.wait()
        for job, ts in self.times.items():
            rec[job] = {"best": min(ts), "median": statistics.median(ts), "times": ts}
        return rec


def alternate(workers: list[Worker], jobs: list[str], rounds: int) -> list[dict[str, Any]]:
    """`rounds` rounds of every job on every worker in turn; then each worker's record (`Worker.finish`)."""
    for _ in range(rounds):
        for job in jobs:
            for w in workers:
                w.run(job)
    return [w.finish() for w in workers]
