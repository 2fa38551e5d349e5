"""The `normfuse` dispatcher and `normfuse demo`, run as a user runs them (a subprocess, width pinned).

Mistakes (bad --n, --seed, --dtype, unknown commands) are in the battery, tests/test_cli_battery.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from normfuse_ref.precision import DTYPES

RULES = ("rms_norm_linear", "layer_norm_linear", "softmax_linear")  # the names of normfuse_ref.fusion's functions


def normfuse(*args: str, columns: int = 100) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "normfuse_ref", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize("columns", [80, 120])
def test_demo_prints_every_rule_and_dtype_whole(columns: int) -> None:
    r = normfuse("demo", "--n", "64", "--m", "8", columns=columns)
    assert r.returncode == 0, r.stderr
    rows = [line.split("│")[1:-1] for line in r.stdout.splitlines() if line.startswith("│")]
    assert [(c[0].strip(), c[1].strip()) for c in rows] == [(rule, d) for rule in RULES for d in DTYPES]
    assert all(float(c[2]) >= 0 and float(c[3]) >= 0 for c in rows)  # both errors printed whole, as numbers
    assert all(len(line) <= columns for line in r.stdout.splitlines())
    assert "…" not in r.stdout


def test_demo_json() -> None:
    r = normfuse("demo", "--n", "32", "--m", "4", "--dtype", "float32", "--dtype", "float16", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["schema_version"] == 1 and out["command"] == "demo" and (out["n"], out["m"]) == (32, 4)
    assert set(out["units"]) == {"n", "m", "max_err_reference", "max_err_fused"}
    assert [(row["rule"], row["dtype"]) for row in out["results"]] == [
        (rule, d) for rule in RULES for d in ("float32", "float16")
    ]
    assert set(out["results"][0]) == {"rule", "dtype", "max_err_reference", "max_err_fused"}
    # The fused order is as accurate as the reference order to within the rounding of the storage dtype.
    for row in out["results"]:
        u = {"float32": 2.0**-24, "float16": 2.0**-11}[row["dtype"]]
        assert row["max_err_fused"] <= 4 * row["max_err_reference"] + 8 * u


def test_version_and_help() -> None:
    r = normfuse("--version")
    assert r.returncode == 0 and r.stdout.strip() == "normfuse 0.1.0" and r.stderr == ""
    r = normfuse("--help")
    assert r.returncode == 0
    for command in ("timeline", "demo", "prove", "fetch", "generate", "sweep", "fuzz"):
        assert command in r.stdout
