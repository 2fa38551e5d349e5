"""Draw the README's figures: the Gantt chart of one decoder block, and a sweep of where fusion pays.

    python docs/figures/make_figures.py            # writes docs/figures/gantt.svg and docs/figures/sweep.svg
    python docs/figures/make_figures.py OUT_DIR    # somewhere else (tests/test_plot.py does)

Needs the plot extra (`pip install -e '.[plot]'`). Both figures come from the code as it is, on the physical
defaults (nothing fitted): rerun this script whenever the machine model changes, and commit the SVGs with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from normfuse_ref.hw import get_hardware
from normfuse_ref.hw.study import Scenario, compare, sweep
from normfuse_ref.models.llama import get_preset
from normfuse_ref.plot import gantt_figure, save_figure, sweep_figure

HERE = Path(__file__).resolve().parent

#: The README's two questions: what one block looks like in both orders, and where the paper's numbers appear.
GANTT = ("llama2-7b", "decode", 2048)
SWEEP = [("algorithm", ["tree", "ring", "gather"]), ("d2d-hop", [20.0, 40.0, 80.0, 160.0, 320.0])]


def main(out: Path = HERE) -> list[Path]:
    hw = get_hardware("corsair-like")
    model, phase, context = GANTT
    sc = Scenario(get_preset(model), phase, context)
    written = []
    gantt = out / "gantt.svg"
    save_figure(gantt_figure(compare(sc, hw), 0), gantt)
    written.append(gantt)
    points = sweep(sc, hw, SWEEP)
    fig = sweep_figure(
        points,
        SWEEP,
        "reduction",
        units={"d2d-hop": "ns"},
        title=f"Where fusion pays: {model} {phase} at context {context} on {hw.name}, by collective algorithm and "
        "die-to-die hop latency",
    )
    path = out / "sweep.svg"
    save_figure(fig, path)
    written.append(path)
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {p}")
