"""`normfuse sweep`, run as a user runs it (a subprocess, width pinned, no colour)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from normfuse_ref.cli.console import UsageError
from normfuse_ref.cli.sweep import parse_values


def normfuse(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "normfuse_ref", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_value_syntax() -> None:
    assert parse_values("128..1000") == ([128, 256, 512, 1000], ["128", "256", "512", "1000"])
    assert parse_values("1,3,5") == ([1, 3, 5], ["1", "3", "5"])
    assert parse_values("10ns..40ns", ns_per_cycle=0.5) == ([20, 40, 80], ["10 ns", "20 ns", "40 ns"])
    assert parse_values("8cycles,16", ns_per_cycle=0.5)[0] == [8, 16]
    for bad in ("0..8", "8..4", "x..4", "1.5", ""):
        with pytest.raises(UsageError):
            parse_values(bad)


def test_context_sweep_table_and_bars() -> None:
    r = normfuse("sweep", "--param", "context", "128..8192", "--model", "llama3-8b")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("normfuse sweep: context (tokens), llama3-8b, decode, batch 1, on corsair-like")
    rows = [line for line in lines if line.startswith("│ ")]
    assert [row.split("│")[1].strip() for row in rows] == ["128", "256", "512", "1024", "2048", "4096", "8192 *"]
    assert "* beyond llama3-8b's trained context" in r.stdout  # 8192 cached + 1 new > 8192
    bars = [line for line in lines if "█" in line and "%" in line]
    assert len(bars) == 7
    assert all(len(line) <= 100 for line in lines)


def test_net_latency_sweep_json_in_ns() -> None:
    r = normfuse("sweep", "--param", "net-latency", "5ns..80ns", "--model", "tiny", "--hw", "toy", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["param"] == "net-latency" and out["unit"] == "cycles"
    assert [p["value"] for p in out["points"]] == [5, 10, 20, 40, 80]  # toy runs at 1 GHz
    red = [p["reduction"] for p in out["points"]]
    assert red == sorted(red)  # slower networks: more to hide


def test_batch_sweep() -> None:
    r = normfuse("sweep", "--param", "batch", "1..4", "--model", "tiny", "--hw", "toy", "--json")
    assert r.returncode == 0, r.stderr
    assert [p["value"] for p in json.loads(r.stdout)["points"]] == [1, 2, 4]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--param", "heads", "1..4"), "unknown --param 'heads'"),
        (("--param", "batch", "0,1"), "batch values must be >= 1"),
        (("--param", "context", "x"), "not a number in --param values"),
        (("--param", "context"), "expected 2 arguments"),
    ],
)
def test_sweep_mistakes(args: tuple[str, ...], needle: str) -> None:
    r = normfuse("sweep", *args)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
