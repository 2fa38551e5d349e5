"""`normfuse timeline`, run as a user runs it (a subprocess, width pinned, no colour)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def normfuse(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "normfuse_ref", *args], capture_output=True, text=True, env=env, timeout=300, cwd=cwd
    )


def test_default_run_draws_one_block_and_the_whole_model() -> None:
    r = normfuse("timeline")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    lines = out.splitlines()
    assert (
        lines[0] == "normfuse timeline: llama2-7b, decode, context 2048, batch 1, 32 layers on corsair-like (1.144 GHz)"
    )
    assert any(line.startswith("baseline: block 0 takes ") for line in lines)
    assert any(line.startswith("fused: block 0 takes ") for line in lines)
    lanes = [line.split("│")[0].strip() for line in lines if "│" in line and line.count("│") == 2]
    assert lanes[:8] == ["DIMC", "SIMD", "NET", "path"] * 2  # baseline above fused
    assert "▲" in out and "█" in out  # exposed collectives on the path; matmuls on DIMC
    for needle in (
        "latency (µs)",
        "collective time exposed (µs)",
        "collective time hidden (µs)",
        "DIMC utilisation",
        "SIMD utilisation",
        "NET utilisation",
        "calibrated: network.hop_latency_cycles = 219 cycles",
    ):
        assert needle in out
    last = lines[-1]
    assert last.startswith("✓ fused order is ") and "% faster" in last
    assert all(len(line) <= 100 for line in lines)


def test_json_summary_keys_and_units() -> None:
    r = normfuse("timeline", "--model", "tiny", "--hw", "toy", "--context", "20", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    for key in (
        "baseline_latency",
        "fused_latency",
        "reduction",
        "collective_exposed_baseline",
        "collective_exposed_fused",
    ):
        assert isinstance(s[key], float)
        assert key in s["units"]
    assert s["units"]["baseline_latency"] == "us" and s["units"]["reduction"] == "fraction of baseline latency"
    assert s["reduction"] == pytest.approx((s["baseline_latency"] - s["fused_latency"]) / s["baseline_latency"])
    assert s["model"] == "tiny" and s["hardware"] == "toy" and s["block"]["layer"] == 0
    assert set(s["utilisation_fused"]) == {"DIMC", "SIMD", "NET"}


def test_layers_phase_and_batch(tmp_path: Path) -> None:
    r = normfuse(
        "timeline",
        "--model",
        "llama3-8b",
        "--layers",
        "2",
        "--phase",
        "prefill",
        "--context",
        "64",
        "--batch",
        "2",
        "--block",
        "1",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["layers"], s["phase"], s["context"], s["batch"]) == (2, "prefill", 64, 2)


def test_trace_and_svg_are_written_and_never_overwritten_silently(tmp_path: Path) -> None:
    trace, svg = tmp_path / "t.json", tmp_path / "t.svg"
    r = normfuse(
        "timeline", "--model", "tiny", "--hw", "toy", "--trace", str(trace), "--svg", str(svg), "--detail-layer", "1"
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(trace.read_text())
    assert {e["ph"] for e in data["traceEvents"]} == {"X", "M"}
    assert any(e.get("args", {}).get("name") == "DIMC slice 0" for e in data["traceEvents"] if e["ph"] == "M")
    assert svg.read_text().startswith("<svg")
    before = trace.read_text()
    r = normfuse("timeline", "--model", "tiny", "--hw", "toy", "--trace", str(trace))
    assert r.returncode == 2 and "exists; pass --force to overwrite it" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and trace.read_text() == before
    r = normfuse("timeline", "--model", "tiny", "--hw", "toy", "--svg", str(svg))
    assert r.returncode == 2 and "exists" in r.stderr
    r = normfuse("timeline", "--model", "tiny", "--hw", "toy", "--trace", str(trace), "--force", "--context", "3")
    assert r.returncode == 0, r.stderr
    assert trace.read_text() != before


def test_custom_hardware_file(tmp_path: Path) -> None:
    (tmp_path / "fast.toml").write_text('base = "toy"\n[network]\nhop_latency_cycles = 0\n')
    r = normfuse("timeline", "--model", "tiny", "--hw", str(tmp_path / "fast.toml"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["hardware"] == "fast"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[network\nhop = 1\n", "is not valid TOML"),
        ("[network]\nhop = 1\n", "unknown hardware field 'network.hop'"),
        ("[dimc]\ntile_rows = -8\n", "hardware field dimc.tile_rows must be > 0; got -8"),
        ("[simd]\nlanes = 0\n", "hardware field simd.lanes must be > 0; got 0"),
    ],
)
def test_bad_hardware_files_are_one_line_and_exit_2(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    r = normfuse("timeline", "--hw", str(path))
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--hw", "warp-drive"), "unknown hardware 'warp-drive'"),
        (("--model", "gpt5"), "unknown model preset 'gpt5'"),
        (("--layers", "0"), "--layers must be between 1 and 32"),
        (("--layers", "some"), "--layers must be a positive integer or 'all'"),
        (("--batch", "0"), "--batch must be >= 1"),
        (("--phase", "prefill", "--context", "0"), "--context must be >= 1 for prefill"),
        (("--block", "40"), "--block must be between 0 and 31"),
        (("--trace", "/no/such/dir/t.json"), "directory /no/such/dir does not exist"),
        (("--svg", "x.svg", "--json"), "--svg saves the terminal picture; it cannot be combined with --json"),
        (("--paper", "--trace", "x.json"), "--trace records one forward pass; it cannot be combined with --paper"),
    ],
)
def test_user_mistakes(args: tuple[str, ...], needle: str) -> None:
    r = normfuse("timeline", *args)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_beyond_the_trained_context_warns_and_times() -> None:
    r = normfuse("timeline", "--context", "5000", "--layers", "1", "--json")
    assert r.returncode == 0
    assert "exceed llama2-7b's trained context of 4096; timed anyway" in r.stderr


def test_paper_check_json() -> None:
    r = normfuse("timeline", "--paper", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = out["rows"]
    models = ("llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b")
    assert {(x["model"], x["phase"]) for x in rows} == {(m, p) for m in models for p in ("decode", "prefill")}
    (cal,) = [x for x in rows if x["calibration_point"]]
    assert (cal["model"], cal["phase"], cal["context"]) == ("llama2-7b", "decode", 2048)
    assert cal["collective_share_baseline"] == pytest.approx(0.20, abs=0.001)
    assert "calibrated: network.hop_latency_cycles = 219" in out["calibration"]


def test_paper_check_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from normfuse_ref.cli import main, timeline

    monkeypatch.setattr(timeline, "PAPER_MODELS", ("llama2-7b",))  # one model keeps the test short
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")
    assert main.main(["timeline", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "llama2-7b (calibrated)" in out and "paper (arXiv 2502.17728): collectives ~20% of latency" in out
    rows = [line for line in out.splitlines() if line.startswith("│ llama2-7b")]
    assert [r.split("│")[2].strip() for r in rows] == ["decode", "prefill"]
