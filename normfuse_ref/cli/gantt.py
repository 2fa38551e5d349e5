"""Terminal pictures of emulated timelines: a Gantt chart of one decoder block, horizontal bars, a 2-D table.

A lane is one engine of the block's stage (DIMC, SIMD) or one level of the network (NET.noc, NET.d2d, ...; a
step crossing two levels shows on both); a column is a slice of time; each cell shows the kind of work that fills
most of it. Under the lanes of each mode, the `path` row marks the critical path: ▲ where a normalisation
statistic is on it (exposed time), ─ for any other work on it. Characters differ by kind, so the picture reads
without colour too (NO_COLOR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

from ..hw.timeline import KINDS, Timeline, block_lanes, lane_of

__all__ = ["LEGEND", "bars", "block_gantt"]

GLYPH = {"matmul": "█", "vector": "▒", "collective": "▓", "psum": "░", "move": "~"}
STYLE = {"matmul": "blue", "vector": "green", "collective": "bold red", "psum": "cyan", "move": "magenta"}
EXPOSED, ON_PATH = "▲", "─"

LEGEND = (
    f"{GLYPH['matmul']} matmul  {GLYPH['vector']} vector work  {GLYPH['collective']} normalisation statistic  "
    f"{GLYPH['psum']} partial sums  {GLYPH['move']} moving activations\n"
    f"path = the critical path:  {EXPOSED} a normalisation statistic on it (exposed)  {ON_PATH} other work on it"
)

_LABEL = 16  # "baseline  DIMC " + border


def _cells(spans: Sequence[tuple[float, float, str]], width: int, dt: float) -> list[str | None]:
    """For each column, the kind covering most of it (None: idle)."""
    cover = [dict.fromkeys(KINDS, 0.0) for _ in range(width)]
    for s, e, kind in spans:
        if e <= s:
            continue
        c0, c1 = int(s // dt), min(width - 1, math.ceil(e / dt) - 1)
        for c in range(max(0, c0), c1 + 1):
            lo, hi = max(s, c * dt), min(e, (c + 1) * dt)
            if hi > lo:
                cover[c][kind] += hi - lo
    out: list[str | None] = []
    for col in cover:
        kind, amount = max(col.items(), key=lambda kv: kv[1])
        out.append(kind if amount > 0 else None)
    return out


def _axis(span_us: float, width: int) -> Text:
    """Tick labels at 0, 1/4, 1/2, 3/4 and the end of the time axis."""
    line = [" "] * width
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        label = f"{span_us * frac:.3g} µs"
        pos = min(width - len(label), round(frac * (width - 1)))
        if frac == 1.0:
            pos = width - len(label)
        if pos < 0 or any(ch != " " for ch in line[max(0, pos - 1) : pos + len(label) + 1]):
            continue
        line[pos : pos + len(label)] = list(label)
    return Text(" " * _LABEL + "".join(line))


def block_gantt(timelines: dict[str, Timeline], layer: int, width: int) -> Text:
    """Both modes' lanes for one decoder block on one time axis (each mode starts at its block's start)."""
    bar_w = max(20, width - _LABEL - 1)
    windows = {m: tl.layer_window(layer) for m, tl in timelines.items()}
    span = max(1, max(e - s for s, e in windows.values()))
    dt = span / bar_w
    any_tl = next(iter(timelines.values()))
    lanes = block_lanes(list(timelines.values()), layer)
    text = _axis(any_tl.us(span), bar_w)
    for mode, tl in timelines.items():
        s0, e0 = windows[mode]
        events = [(i, e) for i, e in enumerate(tl.events) if e.layer == layer]
        crit = set(tl.critical_path())
        exposed = sum(e.duration for i, e in events if i in crit and e.kind == "collective")
        text.append(
            f"\n{mode}: block {layer} takes {tl.us(e0 - s0):.4g} µs, normalisation exposed {tl.us(exposed):.4g} µs",
            style="bold",
        )
        for lane in lanes:
            spans = [(e.start - s0, e.end - s0, e.kind) for _, e in events if lane in {lane_of(r) for r in e.resources}]
            text.append(f"\n  {lane:<{_LABEL - 3}}│")
            for kind in _cells(spans, bar_w, dt):
                if kind is None:
                    text.append(" ")
                else:
                    text.append(GLYPH[kind], style=STYLE[kind])
            text.append("│")
        path = [
            (e.start - s0, e.end - s0, "collective" if e.kind == "collective" else "matmul")
            for i, e in events
            if i in crit
        ]
        text.append("\n  path" + " " * (_LABEL - 7) + "│")
        for kind in _cells(path, bar_w, dt):
            if kind is None:
                text.append(" ")
            elif kind == "collective":
                text.append(EXPOSED, style=STYLE["collective"])
            else:
                text.append(ON_PATH, style="dim")
        text.append("│")
    return text


def bars(labels: Sequence[str], values: Sequence[float], width: int, *, fmt: str = "{:.1%}") -> Text:
    """One horizontal bar per value (values >= 0; negative values draw no bar), labelled and annotated."""
    label_w = max(len(s) for s in labels) + 1
    num = [fmt.format(v) for v in values]
    num_w = max(len(s) for s in num) + 1
    bar_w = max(10, width - label_w - num_w - 2)
    top = max((v for v in values if v > 0), default=1.0)
    text = Text()
    for i, (lab, v, s) in enumerate(zip(labels, values, num, strict=True)):
        n = round(max(0.0, v) / top * bar_w) if top > 0 else 0
        if i:
            text.append("\n")
        text.append(f"{lab:>{label_w}} ")
        text.append("█" * n, style="green")
        text.append(" " * (bar_w - n) + f" {s:>{num_w}}")
    return text
