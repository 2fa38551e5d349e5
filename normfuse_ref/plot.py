"""Figures with matplotlib (the optional `[plot]` extra): what the terminal pictures show, for papers and slides.

    gantt_figure(comparison, layer=0)      one decoder block, baseline above fused: lanes per engine and network
                                           level, and the critical path beneath each (exposed statistics in red)
    sweep_figure(points, params, metric)   one parameter: the four fractions as curves; two: a heatmap of one
    fuzz_figure(results)                   the error ratio E_fused / E_ref of every row, per rule and dtype
    save_figure(fig, "block.svg")          the format from the file's suffix: .png, .svg or .pdf

Each function returns a `matplotlib.figure.Figure` built without pyplot (no global state, no window, no backend to
choose), so it works the same in a script, a notebook (a Figure displays itself) and the CLI (`--figure`).
Importing this module is cheap: matplotlib is imported when a figure is drawn, and a missing matplotlib is a
`MissingExtra` that names the extra to install.

The colours follow the terminal Gantt's (normfuse_ref/cli/gantt.py): one per kind of work, the same in every figure.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .extras import require

if TYPE_CHECKING:  # imported where used, so that `--figure`'s checks cost nothing before the work
    from matplotlib.figure import Figure

    from .fuzz.campaign import CellResult
    from .hw.study import Comparison
    from .hw.timeline import Timeline

__all__ = ["FIGURE_SUFFIXES", "fuzz_figure", "gantt_figure", "save_figure", "sweep_figure"]

#: The file formats a figure is written in, by suffix.
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")

#: One colour per kind of work (matplotlib's tab10, colour-blind friendly), as in the terminal's STYLE.
COLOUR = {
    "matmul": "tab:blue",
    "vector": "tab:green",
    "collective": "tab:red",
    "psum": "tab:cyan",
    "move": "tab:purple",
}
LABEL = {
    "matmul": "matmul",
    "vector": "vector work",
    "collective": "normalisation statistic",
    "psum": "partial sums",
    "move": "moving activations",
}
#: The four fractions a sweep point carries, as the sweep command names them (its --metric) and as JSON keys.
SWEEP_METRICS: dict[str, tuple[str, str]] = {
    "reduction": ("reduction", "fused vs two-pass baseline latency"),
    "reduction-one-pass": ("reduction_vs_one_pass", "fused vs one-pass baseline latency"),
    "share": ("normalisation_share_baseline", "normalisation cost / two-pass baseline latency"),
    "hidden": ("hidden_fraction", "share of the baseline's normalisation cost the fused order hides"),
}
_CHARS_PER_INCH = 9  # characters of a 10-11 pt title an inch of figure holds


def _new_figure(width: float, height: float) -> Figure:
    """A Figure on matplotlib's Agg canvas, without pyplot."""
    require("plot", "a figure")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _title(fig: Figure, text: str) -> str:
    """A title wrapped at word boundaries to the figure's width, never cut."""
    return "\n".join(textwrap.wrap(text, int(fig.get_figwidth() * _CHARS_PER_INCH)))


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write `fig` to `path` in the format its suffix names (FIGURE_SUFFIXES); dates and random ids left out of SVG
    and PDF so that the same figure gives the same bytes (the README's figures change only when the code does)."""
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if f".{fmt}" not in FIGURE_SUFFIXES:
        raise ValueError(f"{p}: a figure's file name must end in {' or '.join(FIGURE_SUFFIXES)}")
    metadata: dict[str, Any] = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt, {})
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "normfuse"}):  # SVG element ids from a fixed salt, not at random
        fig.savefig(p, format=fmt, dpi=150, metadata=metadata)


# ---------------------------------------------------------------------------------------------------------------
# The Gantt chart of one block
# ---------------------------------------------------------------------------------------------------------------


def gantt_figure(
    comparison: Comparison | Mapping[str, Timeline], layer: int = 0, *, title: str | None = None
) -> Figure:
    """One decoder block in each order, baseline above fused, on one time axis (µs from the block's start).

    Rows: DIMC, SIMD and each network level the block uses (a step crossing two levels shows on both), then
    "critical path": the events on it, red where a normalisation statistic is exposed. Accepts a `Comparison`
    (baseline and fused) or any {mode: Timeline}."""
    from .hw.study import Comparison
    from .hw.timeline import KINDS, block_lanes, lane_of

    if isinstance(comparison, Comparison):
        timelines: Mapping[str, Timeline] = {"baseline": comparison.baseline, "fused": comparison.fused}
        sc, hw = comparison.scenario, comparison.hw
        title = title or f"Decoder block {layer} of {sc.describe()} on {hw.name}"
    else:
        timelines = comparison
    lanes = block_lanes(list(timelines.values()), layer)
    rows = [*lanes, "critical path"]
    fig = _new_figure(9.0, 1.2 + 0.42 * len(rows) * len(timelines))
    axes = fig.subplots(len(timelines), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (mode, tl) in zip(axes, timelines.items(), strict=True):
        s0, e0 = tl.layer_window(layer)
        crit = set(tl.critical_path())
        exposed = 0.0
        for i, e in enumerate(tl.events):
            if e.layer != layer or e.end <= e.start:
                continue
            x, w = tl.us(e.start - s0), tl.us(e.duration)
            for lane in {lane_of(r) for r in e.resources}:
                y = len(rows) - 1 - lanes.index(lane)
                ax.broken_barh([(x, w)], (y - 0.4, 0.8), facecolors=COLOUR[e.kind], linewidth=0)
            if i in crit:
                on_stat = e.kind == "collective"
                exposed += tl.us(e.duration) if on_stat else 0.0
                ax.broken_barh([(x, w)], (-0.3, 0.6), facecolors="tab:red" if on_stat else "0.55", linewidth=0)
        ax.set_yticks(range(len(rows)), list(reversed(rows)))
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlim(0, max(tl.us(e - s) for tl in timelines.values() for s, e in [tl.layer_window(layer)]))
        ax.set_title(
            f"{mode}: block {layer} takes {tl.us(e0 - s0):.4g} µs, normalisation exposed {exposed:.4g} µs",
            loc="left",
            fontsize=10,
        )
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("time from the block's start (µs)")
    from matplotlib.patches import Patch

    handles = [Patch(color=COLOUR[k], label=LABEL[k]) for k in KINDS]
    handles[KINDS.index("collective")].set_label("normalisation statistic (exposed on the critical path)")
    handles.append(Patch(color="0.55", label="critical path: other work"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(_title(fig, title), fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------------------------


def _tick(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _axis_label(name: str, units: Mapping[str, str]) -> str:
    return f"{name} ({units[name]})" if units.get(name) else name


def sweep_figure(
    points: Sequence[Mapping[str, Any]],
    params: Sequence[tuple[str, Sequence[Any]]],
    metric: str = "reduction",
    *,
    units: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """The points of a sweep (`hw.study.sweep`, in its order: the first parameter varies slowest).

    One parameter: the four fractions (reduction vs each baseline, normalisation share, hidden fraction) as
    curves in percent, a log axis when the values double. Two parameters: a heatmap of `metric` (a key of
    SWEEP_METRICS), each cell labelled; points that do not fit the machine are blank ("n/f")."""
    if metric not in SWEEP_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(SWEEP_METRICS)}")
    units = units or {}
    if len(params) == 1:
        ((name, values),) = params
        fig = _new_figure(7.5, 4.2)
        ax = fig.subplots()
        ok = [(v, p) for v, p in zip(values, points, strict=True) if "error" not in p]
        numeric = all(isinstance(v, int | float) for v, _ in ok)
        xs = [v for v, _ in ok] if numeric else list(range(len(ok)))
        for m, (key, meaning) in SWEEP_METRICS.items():
            ax.plot(xs, [100 * p[key] for _, p in ok], marker="o", label=f"{m}: {meaning}")
        if numeric and len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log", base=2)
        if not numeric:
            ax.set_xticks(xs, [_tick(v) for v, _ in ok])
        ax.set_xlabel(_axis_label(name, units))
        ax.set_ylabel("percent")
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.grid(alpha=0.3)
        fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    elif len(params) == 2:
        (n1, v1), (n2, v2) = params
        key, meaning = SWEEP_METRICS[metric]
        grid = [[math.nan] * len(v2) for _ in v1]
        for i in range(len(v1)):
            for j in range(len(v2)):
                p = points[i * len(v2) + j]
                grid[i][j] = math.nan if "error" in p else 100 * p[key]
        fig = _new_figure(max(6.0, 1.6 + 0.75 * len(v2)), 1.6 + 0.45 * len(v1))
        ax = fig.subplots()
        image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
        finite = [v for row in grid for v in row if not math.isnan(v)]
        middle = (min(finite) + max(finite)) / 2 if finite else 0.0
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                label, ink = ("n/f", "k") if math.isnan(v) else (f"{v:.1f}", "k" if v > middle else "w")
                ax.text(j, i, label, ha="center", va="center", fontsize=7, color=ink)
        ax.set_xticks(range(len(v2)), [_tick(v) for v in v2])
        ax.set_yticks(range(len(v1)), [_tick(v) for v in v1])
        ax.set_xlabel(_axis_label(n2, units))
        ax.set_ylabel(_axis_label(n1, units))
        fig.colorbar(image, ax=ax, label=f"{metric} (%)")
        ax.set_title(meaning, fontsize=9)
    else:
        raise ValueError(f"a sweep figure takes one or two parameters; got {len(params)}")
    if title:
        fig.suptitle(_title(fig, title), fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Fuzz campaigns
# ---------------------------------------------------------------------------------------------------------------


def fuzz_figure(results: Sequence[CellResult], *, title: str | None = None) -> Figure:
    """Per rule, one box per dtype: the distribution of the error ratio E_fused / max(E_ref, one output rounding)
    over every checked row (log axis; 1 = the fused order exactly as accurate as the reference)."""
    rules = list(dict.fromkeys(r.rule for r in results))
    fig = _new_figure(8.0, 0.6 + 2.3 * len(rules))
    axes = fig.subplots(len(rules), 1, squeeze=False)[:, 0]
    for ax, rule in zip(axes, rules, strict=True):
        cells = [r for r in results if r.rule == rule]
        data = [[v for v in r.stats.ratios if v > 0] or [math.nan] for r in cells]
        ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(cells) + 1), [r.dtype for r in cells], fontsize=8)
        ax.set_yscale("log")
        ax.axhline(1, color="tab:red", linewidth=0.8)
        ax.set_title(rule, loc="left", fontsize=10)
        ax.set_ylabel("E_fused / E_ref")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        _title(fig, title or "Fused vs reference error per row (whiskers: 1st and 99th percentiles; red: equal error)"),
        fontsize=10,
    )
    return fig
