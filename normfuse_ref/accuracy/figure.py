"""The study as one figure (`normfuse accuracy --figure FILE`; needs the `plot` extra, matplotlib).

One panel per model. For each storage dtype, one bar per figure of merit: how much worse the fused order is than
baseline, in units of that figure's spread (the largest change between two equivalent summation orders, the
verdict's yardstick; `study.judge`), on a symmetric-log axis:

    ratio = worse_by / spread        worse_by = bad(fused) - bad(baseline), larger is worse (Figure.bad)

The dashed line at 1 is the verdict's threshold: a bar above it is a figure where the fused order loses more than
rounding alone moves it (the verdict also asks the same of the permuted model). A figure whose spread is 0 and
which differs at all is drawn at the top of the axis (CAP) and marked. Mitigations run for a dtype are drawn as
points over its bars, one marker each.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from ..extras import require
from .study import ModelStudy

__all__ = ["CAP", "figure_bytes", "spread_ratio"]

#: Where an infinite ratio (a change where the spread is 0) is drawn: far above the threshold of 1.
CAP = 1e4

_MARKERS = {"wide-fold": "^", "compensate": "o", "subtract": "s"}


def spread_ratio(worse_by: float, spread: float) -> float:
    """worse_by in units of spread, +-CAP when the spread is 0 and worse_by is not, 0 when both are."""
    if spread > 0:
        return max(-CAP, min(CAP, worse_by / spread))
    return 0.0 if worse_by == 0 else math.copysign(CAP, worse_by)


def figure_bytes(studies: Sequence[ModelStudy], fmt: str) -> bytes:
    """The figure as `fmt` ("png" or "svg") bytes."""
    require("plot", "normfuse accuracy --figure")
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(studies), 1, figsize=(10, 3.4 * len(studies)), squeeze=False)
    for ax, s in zip(axes[:, 0], studies, strict=True):
        plain = [v for v in s.verdicts if v.mitigation is None]
        names = [f.figure.label for f in plain[0].figures] if plain else []
        width = 0.8 / max(1, len(names))
        for k, name in enumerate(names):
            xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(plain))]
            ys = [spread_ratio(v.figures[k].worse_by, v.figures[k].spread) for v in plain]
            ax.bar(xs, ys, width, label=name)
        for i, v in enumerate(plain):
            for m in (w for w in s.verdicts if w.dtype == v.dtype and w.mitigation is not None):
                ys = [spread_ratio(f.worse_by, f.spread) for f in m.figures]
                ax.plot([i] * len(ys), ys, _MARKERS.get(m.mitigation or "", "x"), color="black", label=m.mitigation)
        ax.axhline(1, color="grey", linestyle="--", linewidth=1)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(-CAP, 2 * CAP)
        ax.set_xticks(range(len(plain)), [v.dtype for v in plain])
        ax.set_ylabel("fused worse by / spread")
        ax.set_title(f"{s.model}: the fused order against baseline (above the dashed line: worse)")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))  # one legend entry per mitigation
        ax.legend(unique.values(), unique.keys(), fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    return buf.getvalue()
