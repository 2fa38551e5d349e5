"""Figures (normfuse_ref.plot, `--figure`) and the notebook face of a comparison (reprs, to_records, plot).

A figure is judged by what it draws, read back from its matplotlib artists and compared with the timeline or the
sweep it was drawn from (two views of one thing must agree), never by its pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from normfuse_ref.cli.main import main
from normfuse_ref.hw import get_hardware
from normfuse_ref.hw.study import Comparison, Scenario, compare, sweep
from normfuse_ref.hw.timeline import block_lanes
from normfuse_ref.models.llama import get_preset
from normfuse_ref.plot import COLOUR, SWEEP_METRICS, fuzz_figure, gantt_figure, save_figure, sweep_figure

pytest.importorskip("matplotlib")
from matplotlib.colors import to_rgba

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny() -> Comparison:
    return compare(Scenario(get_preset("tiny"), "decode", 20), get_hardware("toy"))


def bars(ax: Any) -> list[tuple[float, float, float, tuple[float, ...]]]:
    """Every bar drawn on an axes: (x, width, y centre, colour)."""
    out = []
    for coll in ax.collections:
        colours = coll.get_facecolors()
        for k, path in enumerate(coll.get_paths()):
            v = path.vertices
            x0, x1, y0, y1 = v[:, 0].min(), v[:, 0].max(), v[:, 1].min(), v[:, 1].max()
            out.append((x0, x1 - x0, (y0 + y1) / 2, tuple(colours[k % len(colours)])))
    return out


def test_the_gantt_draws_every_event_of_the_block_and_its_critical_path(tiny: Comparison) -> None:
    layer = 1
    fig = gantt_figure(tiny, layer)
    lanes = block_lanes([tiny.baseline, tiny.fused], layer)
    rows = [*lanes, "critical path"]
    assert len(fig.axes) == 2  # baseline above fused
    for ax, tl in zip(fig.axes, (tiny.baseline, tiny.fused), strict=True):
        assert [t.get_text() for t in ax.get_yticklabels()] == list(reversed(rows))
        s0, _ = tl.layer_window(layer)
        drawn = bars(ax)
        events = [e for e in tl.events if e.layer == layer and e.end > e.start]
        # every (event, lane) pair is one bar in its lane's row, at its time, in its kind's colour
        want = sorted(
            (round(tl.us(e.start - s0), 9), len(rows) - 1 - lanes.index(lane), to_rgba(COLOUR[e.kind]))
            for e in events
            for lane in {r.split("@")[0] for r in e.resources}
        )
        got = sorted((round(x, 9), round(y), c) for x, _, y, c in drawn if round(y) > 0)
        assert got == want
        # the critical-path row: the block's events on the path, red exactly where a statistic is exposed
        crit = set(tl.critical_path())
        path = [e for i, e in enumerate(tl.events) if i in crit and e.layer == layer and e.end > e.start]
        on_row = [(x, w, c) for x, w, y, c in drawn if round(y) == 0]
        assert len(on_row) == len(path)
        red = sum(w for _, w, c in on_row if c == to_rgba("tab:red"))
        exposed = sum(tl.us(e.duration) for e in path if e.kind == "collective")
        assert red == pytest.approx(exposed, rel=1e-9)


def test_save_figure_writes_the_format_its_suffix_names(tmp_path: Path, tiny: Comparison) -> None:
    fig = gantt_figure(tiny, 0)
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")):
        save_figure(fig, tmp_path / f"g{suffix}")
        assert (tmp_path / f"g{suffix}").read_bytes().startswith(magic), suffix
    save_figure(fig, tmp_path / "again.svg")
    assert (tmp_path / "again.svg").read_bytes() == (tmp_path / "g.svg").read_bytes()  # no date: reproducible
    with pytest.raises(ValueError, match=r"must end in \.png or \.svg or \.pdf"):
        save_figure(fig, tmp_path / "g.jpg")


def test_a_sweep_figure_draws_the_points_it_is_given() -> None:
    sc, hw = Scenario(get_preset("tiny"), "decode", 20), get_hardware("toy")
    params: list[tuple[str, list[Any]]] = [("batch", [1, 2, 4])]
    points = sweep(sc, hw, params)
    fig = sweep_figure(points, params)
    lines = fig.axes[0].get_lines()
    curves = {str(line.get_label()).split(":")[0]: line for line in lines if not str(line.get_label()).startswith("_")}
    assert set(curves) == {"reduction", "reduction-one-pass", "share", "hidden"}
    for metric, (key, _) in SWEEP_METRICS.items():
        ys = np.asarray(curves[metric].get_ydata(), dtype=float)
        np.testing.assert_allclose(ys, [100 * p[key] for p in points], err_msg=metric)
    np.testing.assert_allclose(np.asarray(curves["reduction"].get_xdata(), dtype=float), [1, 2, 4])
    params2: list[tuple[str, list[Any]]] = [("batch", [1, 2]), ("algorithm", ["tree", "ring", "gather"])]
    points2 = sweep(sc, hw, params2)
    fig = sweep_figure(points2, params2, "hidden")
    grid = np.asarray(fig.axes[0].get_images()[0].get_array())
    want = np.array([[100 * p["hidden_fraction"] for p in points2[i * 3 : i * 3 + 3]] for i in range(2)])
    np.testing.assert_allclose(grid, want)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["tree", "ring", "gather"]


def test_a_fuzz_figure_has_a_panel_per_rule_and_a_box_per_dtype() -> None:
    from normfuse_ref.fuzz.campaign import run_cell
    from normfuse_ref.fuzz.rules import RULES

    results = [run_cell(RULES[r], d, examples=3, seed_value=0) for r in ("rms_norm_linear", "softmax_linear")
               for d in ("float32", "bfloat16")]  # fmt: skip
    fig = fuzz_figure(results)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["rms_norm_linear", "softmax_linear"]
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["float32", "bfloat16"]
        medians = [np.asarray(line.get_ydata())[0] for line in ax.lines if line.get_label() == "_nolegend_"]
        assert medians  # boxes were drawn from the cells' ratios


def test_comparison_repr_records_and_plot(tiny: Comparison) -> None:
    text = repr(tiny)
    assert text.startswith("<Comparison tiny, decode, context 20") and "on toy" in text
    assert f"{100 * tiny.reduction:.1f}% saved" in text and "calibrated: false" in text
    assert repr(tiny.fused).startswith("<Timeline fused: ") and f"{tiny.fused.makespan} cycles" in repr(tiny.fused)
    records = {r["order"]: r for r in tiny.to_records()}
    s = tiny.summary()  # the other view of the same numbers
    assert records["two-pass baseline"]["latency_us"] == pytest.approx(s["baseline_latency"])
    assert records["one-pass baseline"]["latency_us"] == pytest.approx(s["one_pass_baseline_latency"])
    assert records["fused"]["normalisation_cost_us"] == pytest.approx(s["normalisation_cost_fused"])
    assert records["two-pass baseline"]["normalisation_share"] == pytest.approx(s["normalisation_share_baseline"])
    assert records["two-pass baseline"]["saved_by_fused"] == pytest.approx(s["reduction"])
    assert records["fused"]["saved_by_fused"] == 0.0
    assert len(tiny.plot(0).axes) == 2


# ---------------------------------------------------------------------------------------------------------------
# --figure on the command line
# ---------------------------------------------------------------------------------------------------------------

TINY = ("--model", "tiny", "--hw", "toy", "--context", "20")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_timeline_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    path = tmp_path / f"block{suffix}"
    code, out, err = cli(capsys, "timeline", *TINY, "--figure", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["command"] == "timeline" and err.strip() == f"wrote {path}"
    assert path.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_sweep_and_fuzz_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(
        capsys, "sweep", "--param", "batch", "1,2", *TINY, "--workers", "1", "--figure", str(tmp_path / "s.svg")
    )
    assert code == 0, err
    assert (tmp_path / "s.svg").read_bytes().startswith(b"<?xml")
    code, _, err = cli(
        capsys, "fuzz", "rms_norm_linear", "--dtype", "float32", "--examples", "3", "--figure", str(tmp_path / "f.png")
    )
    assert code == 0, err
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


def test_a_failing_figure_leaves_no_output_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or nothing: when the figure cannot be drawn, the trace written beside it is not left either."""

    def broken(fig: Any, path: Any) -> None:
        Path(path).write_bytes(b"half a figure")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("normfuse_ref.plot.save_figure", broken)
    code, _, err = cli(
        capsys, "timeline", *TINY, "--trace", str(tmp_path / "t.json"), "--figure", str(tmp_path / "f.png")
    )
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_timeline_without_figure_does_not_import_matplotlib() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from normfuse_ref.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['timeline', '--model', 'tiny', '--hw', 'toy', '--context', '20'])\n"
        "print('matplotlib' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_the_readme_figures_script_draws_both(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "figures" / "make_figures.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for name in ("gantt.svg", "sweep.svg"):
        assert (tmp_path / name).read_bytes().startswith(b"<?xml"), name
        assert f"docs/figures/{name}" in (ROOT / "README.md").read_text(encoding="utf-8")
        assert (ROOT / "docs" / "figures" / name).exists()  # the committed copy the README shows
