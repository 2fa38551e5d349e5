"""The `normfuse` dispatcher and `normfuse demo`, run as a user runs them (a subprocess, width pinned)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def normfuse(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "normfuse_ref", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_demo_prints_a_table_for_every_rule_and_dtype() -> None:
    r = normfuse("demo", "--n", "64", "--m", "8")
    assert r.returncode == 0, r.stderr
    for rule in ("rms_norm -> linear", "layer_norm -> linear", "softmax -> linear"):
        assert r.stdout.count(rule) == 6  # one row per dtype
    assert "float8_e5m2" in r.stdout and "bfloat16" in r.stdout
    assert all(len(line) <= 100 for line in r.stdout.splitlines())


def test_demo_json() -> None:
    r = normfuse("demo", "--n", "32", "--m", "4", "--dtype", "float32", "--dtype", "float16", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {row["dtype"] for row in out["results"]} == {"float32", "float16"}
    assert set(out["results"][0]) == {"rule", "dtype", "max_err_reference", "max_err_fused"}
    # The fused order is as accurate as the reference order to within the rounding of the storage dtype.
    for row in out["results"]:
        u = {"float32": 2.0**-24, "float16": 2.0**-11}[row["dtype"]]
        assert row["max_err_fused"] <= 4 * row["max_err_reference"] + 8 * u


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("demo", "--dtype", "int8"), "unsupported dtype 'int8'"),
        (("demo", "--n", "0"), "--n and --m must be >= 1"),
        (("demo", "--n", "many"), "invalid int value"),
        (("no-such-command",), "invalid choice"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args: tuple[str, ...], needle: str) -> None:
    r = normfuse(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
