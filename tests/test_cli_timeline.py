"""`normfuse timeline`, run as a user runs it (one subprocess; the rest in-process with the width pinned)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from normfuse_ref.cli import timeline
from tests.cli_support import pinned_width, run  # noqa: F401 (pinned_width is an autouse fixture)

TINY = ("--model", "tiny", "--hw", "toy", "--context", "20")


def test_default_run_draws_one_block_and_the_whole_model() -> None:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "normfuse_ref", "timeline"], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "normfuse timeline: llama2-7b, decode, context 2048, batch 1, 32 layers on corsair-like"
    assert lines[1].startswith("1.144 GHz, tree collectives; mapping (search, ") and " cards = " in lines[1]
    assert any(line.startswith("baseline: block 0 takes ") for line in lines)
    assert any(line.startswith("fused: block 0 takes ") for line in lines)
    lanes = [line.split("│")[0].strip() for line in lines if "│" in line and line.count("│") == 2]
    assert lanes[:10] == ["DIMC", "SIMD", "NET.noc", "NET.d2d", "path"] * 2  # baseline above fused
    out = r.stdout
    assert "▲" in out and "█" in out and "~" in out
    for needle in (
        "latency (µs)",
        "with normalisation free (µs)",
        "normalisation cost (µs)",
        "normalisation statistics",
        "partial sums",
        "moving activations",
        "roofline on the 4 cards used",
        "calibrated: false (no parameter fitted",
    ):
        assert needle in out, needle
    assert lines[-2].startswith("✓ fused order is ") and "% faster than the two-pass baseline" in lines[-2]
    assert all(len(line) <= 100 for line in lines)


def test_json_summary_keys_and_units(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "timeline", *TINY, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert (s["schema_version"], s["command"]) == (1, "timeline")
    new = (
        "latency_without_normalisation_baseline",
        "latency_without_normalisation_fused",
        "normalisation_cost_baseline",
        "normalisation_cost_fused",
        "roofline_latency",
        "one_pass_baseline_latency",
    )
    old = ("baseline_latency", "fused_latency", "collective_exposed_baseline", "collective_exposed_fused")
    for key in (*new, *old):
        assert isinstance(s[key], float) and s["units"][key] == "us", key
    for key in ("reduction", "reduction_vs_one_pass", "hidden_fraction", "collective_share_baseline"):
        assert isinstance(s[key], float) and "fraction" in s["units"][key], key
    assert s["calibrated"] is False
    assert s["reduction"] == pytest.approx((s["baseline_latency"] - s["fused_latency"]) / s["baseline_latency"])
    assert s["hidden_fraction"] == pytest.approx(1 - s["normalisation_cost_fused"] / s["normalisation_cost_baseline"])
    assert s["normalisation_cost_fused"] == pytest.approx(s["fused_latency"] - s["latency_without_normalisation_fused"])
    m = s["mapping"]
    assert {"kind", "cards", "tp_cards", "stages", "stage_list", "matrices", "kv_cache", "residual_stream"} <= set(m)
    assert s["model"] == "tiny" and s["hardware"] == "toy" and s["block"]["layer"] == 0
    assert set(s["utilisation_fused"]) == {"DIMC", "SIMD", "NET"}


def test_docs_cli_names_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/cli.md lists the keys of `normfuse timeline --json`: every key the command prints is there."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    section = doc[doc.index("### `normfuse timeline --json`") : doc.index("### `normfuse sweep --json`")]
    code, out, err = run(capsys, "timeline", *TINY, "--json")
    assert code == 0, err
    s = json.loads(out)
    missing = [k for k in s if k not in ("schema_version", "command", "units") and f"`{k}`" not in section]
    assert not missing, f"docs/cli.md does not describe {missing}"
    missing = [k for k in s["mapping"] if f"`{k}`" not in section]
    assert not missing, f"docs/cli.md does not describe mapping keys {missing}"


def test_layers_phase_batch_chunk_and_mapping_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "timeline",
        *("--model", "llama3-8b", "--layers", "2", "--phase", "prefill", "--context", "64", "--batch", "2"),
        *("--chunk", "32", "--block", "1", "--tp-cards", "1", "--algorithm", "ring", "--json"),
    )
    assert code == 0, err
    s = json.loads(out)
    assert (s["layers"], s["phase"], s["context"], s["batch"], s["chunk"]) == (2, "prefill", 64, 2, 32)
    assert s["mapping"]["tp_cards"] == 1 and s["algorithm"] == "ring"
    code, out, err = run(capsys, "timeline", *TINY, "--mapping", "dense", "--json")
    assert code == 0, err
    assert json.loads(out)["mapping"]["kind"] == "dense"


def test_trace_and_svg_are_written_and_never_overwritten_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, svg = tmp_path / "t.json", tmp_path / "t.svg"
    code, out, err = run(capsys, "timeline", *TINY, "--trace", str(trace), "--svg", str(svg), "--detail-layer", "1")
    assert code == 0, err
    assert f"wrote {trace}" in err.replace("\n", "") and "wrote" not in out  # stdout is the timeline alone
    data = json.loads(trace.read_text())
    assert {e["ph"] for e in data["traceEvents"]} == {"X", "M"}
    names = {e["args"]["name"] for e in data["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert "DIMC slice 0" in names and "NET.noc@0" in names
    assert svg.read_text().startswith("<svg")
    before = trace.read_text()
    code, _, err = run(capsys, "timeline", *TINY, "--trace", str(trace))
    assert code == 2 and "exists; pass --force to overwrite it" in err
    assert len(err.strip().splitlines()) == 1 and trace.read_text() == before
    code, _, err = run(capsys, "timeline", *TINY, "--svg", str(svg))
    assert code == 2 and "exists" in err
    code, _, err = run(capsys, "timeline", "--model", "tiny", "--hw", "toy", "--trace", str(trace), "--force")
    assert code == 0, err
    assert trace.read_text() != before


def test_custom_hardware_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fast.toml").write_text('base = "toy"\n[network.noc]\nhop_ns = 0\n')
    code, out, err = run(capsys, "timeline", "--model", "tiny", "--hw", str(tmp_path / "fast.toml"), "--json")
    assert code == 0, err
    assert json.loads(out)["hardware"] == "fast"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[network\nhop = 1\n", "is not valid TOML"),
        ("[network.noc]\nhop = 1\n", "unknown hardware field 'network.noc.hop'"),
        ("[dimc]\ntile_rows = -8\n", "hardware field dimc.tile_rows must be > 0; got -8"),
        ('[network.d2d]\ntopology = "torus"\n', "hardware field network.d2d.topology must be one of"),
    ],
)
def test_bad_hardware_files_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, needle: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    code, _, err = run(capsys, "timeline", "--hw", str(path))
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_beyond_the_trained_context_warns_and_times(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "timeline", "--context", "5000", "--layers", "1", "--json")
    assert code == 0
    assert "exceed llama2-7b's trained context of 4096; timed anyway" in err


def test_a_fused_order_that_costs_more_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """MiniLM's prefill over 65,536 positions: the fused order's normalisation costs more than the baseline's
    (its merges of many key slices), which the last line says in words, not as "hides -2%"."""
    code, out, err = run(capsys, "timeline", "--model", "all-minilm-l6-v2", "--phase", "prefill", "--context", "65536")
    assert code == 0, err
    last = " ".join(out.split())  # the line wraps at the pinned width
    assert "its normalisation costs 2% more than the baseline's normalisation cost" in last
    assert "hides -" not in last


def test_calibrate_on_request_is_labelled_fitted(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "timeline", "--calibrate", "network.d2d.hop_ns=paper-share", "--layers", "2")
    assert code == 0, err
    assert "calibrated: FITTED network.d2d.hop_ns = " in out
    code, out, err = run(capsys, "timeline", "--calibrate", "network.d2d.hop_ns", "--layers", "2", "--json")
    assert code == 0, err
    (note,) = json.loads(out)["calibrated"]
    assert note.startswith("network.d2d.hop_ns = ")


def test_paper_check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(timeline, "PAPER_MODELS", ("llama2-7b",))  # one model keeps the test short
    monkeypatch.setattr(timeline, "PAPER_PREFILL", 512)
    code, out, err = run(capsys, "timeline", "--paper", "--workers", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["schema_version"], data["command"]) == (1, "timeline")
    assert data["calibrated"] is False and data["paper"] == {"collective_share": "~20%", "reduction": "15-20%"}
    rows = data["rows"]
    assert [(r["model"], r["phase"]) for r in rows] == [("llama2-7b", "decode"), ("llama2-7b", "prefill")]
    for r in rows:
        for key in ("normalisation_share_baseline", "hidden_fraction", "reduction", "reduction_vs_one_pass"):
            assert isinstance(r[key], float)
        assert r["baseline_latency"] >= r["roofline_latency"]
    assert [p["model"] for p in data["published"]] == ["llama3-8b", "llama3-70b"]
    for p in data["published"]:
        assert p["ratio_baseline"] == pytest.approx(p["baseline_latency"] / p["latency_us"])
    code, out, err = run(capsys, "timeline", "--paper", "--workers", "1")
    assert code == 0, err
    lines = out.splitlines()
    rows_text = [line for line in lines if line.startswith("│ llama2-7b")]
    assert [r.split("│")[2].strip() for r in rows_text] == ["decode", "prefill"]
    assert "paper (arXiv 2502.17728): collectives ~20% of latency, completely hidden" in out
    assert "Published d-Matrix figures" in out and "calibrated: false" in out
    assert all(len(line) <= 100 for line in lines)


def test_the_whole_model_table_is_the_json_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The table's latency, cost and share rows, per order, against `--json` (the cost divided by that order's own
    latency: a share of the one-pass column computed over the baseline's latency went unseen)."""
    code, out, err = run(capsys, "timeline", *TINY, "--json")
    assert code == 0, err
    s = json.loads(out)
    code, out, err = run(capsys, "timeline", *TINY)
    assert code == 0, err

    def row(label: str) -> list[float]:
        line = next(ln for ln in out.splitlines() if ln.strip("│ ").startswith(label))
        return [float(cell.strip(" %")) for cell in line.split("│")[2:5]]

    orders = ("baseline", "one_pass_baseline", "fused")
    costs = ("normalisation_cost_baseline", "normalisation_cost_one_pass", "normalisation_cost_fused")
    latency, cost, share = row("latency (µs)"), row("normalisation cost (µs)"), row("share of latency")
    for i, (order, key) in enumerate(zip(orders, costs, strict=True)):
        assert latency[i] == pytest.approx(s[f"{order}_latency"], rel=5e-3), order  # printed to 3 digits
        assert cost[i] == pytest.approx(s[key], rel=5e-3), order
        assert share[i] == pytest.approx(100 * s[key] / s[f"{order}_latency"], abs=0.05), order
