"""`normfuse sweep`, run as a user runs it (in-process, width pinned, no colour, `--workers 1` or a small pool)."""

from __future__ import annotations

import json
import re

import pytest

from normfuse_ref.cli.console import UsageError
from normfuse_ref.cli.main import main
from normfuse_ref.cli.sweep import parse_values
from normfuse_ref.hw.study import SCENARIO_PARAMS, SWEEP_SHORTCUTS
from tests.cli_support import pinned_width, run  # noqa: F401 (pinned_width is an autouse fixture)

TINY = ("--model", "tiny", "--hw", "toy", "--context", "16")


def test_value_syntax() -> None:
    assert parse_values("128..1000") == [128, 256, 512, 1000]
    assert parse_values("1,3,5") == [1, 3, 5]
    assert parse_values("2.5ns..10ns", integer=False) == [2.5, 5.0, 10.0]
    assert parse_values("tree,gather", choices=("tree", "ring", "gather")) == ["tree", "gather"]
    for bad in ("0..8", "8..4", "x..4", "1.5", ""):
        with pytest.raises(UsageError):
            parse_values(bad)
    with pytest.raises(UsageError, match="must be among tree, ring, gather"):
        parse_values("tree,star", choices=("tree", "ring", "gather"))


def test_two_parameters_make_a_2d_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "sweep",
        "--param",
        "noc-hop",
        "1,16",
        "--param",
        "algorithm",
        "tree,ring,gather",
        *TINY,
        "--workers",
        "2",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("normfuse sweep: noc-hop (ns) x algorithm; tiny, decode, context 16, batch 1, on toy")
    header = next(line for line in lines if "noc-hop (ns) \\ algorithm" in line)
    assert [c.strip() for c in header.split("┃")[2:5]] == ["tree", "ring", "gather"]
    rows = [line for line in lines if line.startswith("│ ")]
    assert [r.split("│")[1].strip() for r in rows] == ["1", "16"]
    assert all(cell.strip().endswith("%") for r in rows for cell in r.split("│")[2:5])
    assert "calibrated: false" in out and all(len(line) <= 100 for line in lines)


def test_one_parameter_table_and_bars(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "sweep", "--param", "context", "8..64", "--model", "tiny", "--hw", "toy", "--workers", "1"
    )
    assert code == 0, err
    lines = out.splitlines()
    rows = [line for line in lines if line.startswith("│ ")]
    assert [row.split("│")[1].strip() for row in rows] == ["8", "16", "32", "64"]
    assert len([line for line in lines if "█" in line and "%" in line]) == 4
    assert "reduction (fused vs two-pass baseline latency):" in out


def test_json_points_and_metric(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "sweep",
        "--param",
        "d2d-hop",
        "10,40",
        "--param",
        "batch",
        "1,2",
        *TINY,
        "--metric",
        "hidden",
        "--workers",
        "1",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert (data["schema_version"], data["command"]) == (1, "sweep")
    assert data["metric"] == "hidden_fraction" and data["calibrated"] is False
    assert [p["name"] for p in data["params"]] == ["d2d-hop", "batch"]
    assert [p["params"] for p in data["points"]] == [
        {"d2d-hop": 10.0, "batch": 1},
        {"d2d-hop": 10.0, "batch": 2},
        {"d2d-hop": 40.0, "batch": 1},
        {"d2d-hop": 40.0, "batch": 2},
    ]
    for p in data["points"]:
        assert 0 <= p["hidden_fraction"] <= 1 and p["baseline_latency"] > 0


def test_only_a_point_that_does_not_fit_is_a_result(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any other error inside a point is one error line, not "n/f" at every point (a bad NORMFUSE_THREADS read
    inside the emulator once showed as a sweep of models that do not fit)."""

    def broken(*_: object) -> None:
        raise ValueError("something else went wrong")

    monkeypatch.setattr("normfuse_ref.hw.study.compare", broken)
    code, out, err = run(capsys, "sweep", "--param", "batch", "1,2", *TINY, "--workers", "1")
    assert code == 2 and "n/f" not in out
    assert err.strip() == "error: something else went wrong"


def test_a_dotted_hardware_field_and_points_that_do_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "sweep", "--param", "simd.exp_cycles", "1,16", "--param", "tp-cards", "1,128", *TINY, "--workers", "1"
    )
    assert code == 0, err
    assert "n/f" in out and "n/f: the model does not fit that machine or mapping" in out


def test_help_lists_every_parameter_and_the_values_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    """`--param`'s help points at the list below it: every parameter the sweep takes is named there."""
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the text: whitespace runs are one space
    for name in (*SCENARIO_PARAMS, *SWEEP_SHORTCUTS):
        assert name in out.split("Parameters:")[1], name
    assert "`a..b` doubles" in out and "`a,b,c` lists" in out


def test_a_dotted_field_has_its_unit_in_the_json_and_latencies_keep_a_decimal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--param network.noc.hop_ns` is in ns as `--param noc-hop` is (its unit was ""); sub-microsecond latencies
    were printed as "2" and "1" beside a saving of 13.7%."""
    code, out, err = run(capsys, "sweep", "--model", "tiny", "--hw", "toy", "--workers", "1",
                         "--param", "network.noc.hop_ns", "1,2", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["params"] == [{"name": "network.noc.hop_ns", "unit": "ns", "values": [1.0, 2.0]}]
    code, out, err = run(
        capsys, "sweep", "--model", "tiny", "--hw", "toy", "--workers", "1", "--param", "noc-hop", "1,2"
    )
    assert code == 0, err
    assert re.search(r"│ 1 +│ +\d+ │ +\d+\.\d │ +\d+\.\d │", out), out
