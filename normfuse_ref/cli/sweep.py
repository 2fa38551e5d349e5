"""`normfuse sweep`: how the fused order's saving moves with one parameter, as a table and a bar chart.

    normfuse sweep --param context 128..8192      cached positions (decode) or prompt tokens (prefill)
    normfuse sweep --param batch 1..64            sequences decoded together
    normfuse sweep --param net-latency 4..512     network.hop_latency_cycles, in cycles (or 5ns..500ns)

A range `a..b` doubles from a up to b (b itself is included); `a,b,c` lists values. Every point runs the same
forward pass cost-only in both orders (see `normfuse timeline`).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..hw.study import SWEEP_PARAMS, sweep
from .console import Console, UsageError
from .gantt import bars
from .timeline import add_scenario_args, calibration_note, resolve_hw, resolve_scenario

UNITS = {"context": "tokens", "batch": "sequences", "net-latency": "cycles"}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="how the fused order's saving moves with context, batch or network latency",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--param",
        nargs=2,
        metavar=("NAME", "VALUES"),
        required=True,
        help=f"NAME in {', '.join(SWEEP_PARAMS)}; VALUES as a..b (doubling) or a,b,c",
    )
    add_scenario_args(p)
    p.add_argument("--json", action="store_true", help="print the points as JSON")
    p.set_defaults(func=run)


def parse_values(text: str, *, ns_per_cycle: float | None = None) -> tuple[list[int], list[str]]:
    """Values and their labels. `ns_per_cycle` set: values may end in "ns" (converted to whole cycles) or "cycles"."""

    def one(tok: str) -> tuple[float, str]:
        t = tok.strip().lower()
        unit = ""
        for suffix in ("cycles", "cycle", "ns"):
            if ns_per_cycle is not None and t.endswith(suffix):
                t, unit = t[: -len(suffix)].strip(), suffix
                break
        try:
            v = float(t)
        except ValueError:
            raise UsageError(f"not a number in --param values: {tok!r}") from None
        if v < 0 or (v != int(v) and unit != "ns"):
            raise UsageError(f"--param values must be non-negative integers; got {tok!r}")
        return v, unit

    if ".." in text:
        lo_s, hi_s = text.split("..", 1)
        (lo, u1), (hi, u2) = one(lo_s), one(hi_s)
        unit = u1 or u2
        if lo < 1 or hi < lo:
            raise UsageError(f"a range a..b needs 1 <= a <= b; got {text!r}")
        raw = []
        v = lo
        while v < hi:
            raw.append(v)
            v *= 2
        raw.append(hi)
        units = [unit] * len(raw)
    else:
        pairs = [one(t) for t in text.split(",") if t.strip()]
        if not pairs:
            raise UsageError("--param needs at least one value")
        raw, units = [p[0] for p in pairs], [p[1] for p in pairs]
    values, labels = [], []
    for v, unit in zip(raw, units, strict=True):
        if unit == "ns":
            assert ns_per_cycle is not None
            values.append(round(v / ns_per_cycle))
            labels.append(f"{v:g} ns")
        else:
            values.append(int(v))
            labels.append(f"{int(v)}")
    return values, labels


def run(args: argparse.Namespace, console: Console) -> int:
    name, text = args.param
    if name not in SWEEP_PARAMS:
        raise UsageError(f"unknown --param {name!r}; choose from {', '.join(SWEEP_PARAMS)}")
    hw = resolve_hw(args.hw)
    values, labels = parse_values(text, ns_per_cycle=hw.clock.ns_per_cycle if name == "net-latency" else None)
    if name == "batch" and min(values) < 1:
        raise UsageError("batch values must be >= 1")
    if name == "context" and args.phase == "prefill" and min(values) < 1:
        raise UsageError("prefill needs a context (prompt) of at least 1 token")
    sc = resolve_scenario(args, console)
    if name == "context" and max(values) + (1 if sc.phase == "decode" else 0) > sc.model.context_length:
        console.warning(
            f"values beyond {sc.model.name}'s trained context of {sc.model.context_length} are timed anyway"
        )
    points = sweep(sc, hw, name, values)
    for p, label in zip(points, labels, strict=True):
        p["label"] = label
    if args.json:
        out: dict[str, Any] = {
            "param": name,
            "unit": UNITS[name],
            "model": sc.model.name,
            "hardware": hw.name,
            "phase": sc.phase,
            "context": sc.context,
            "batch": sc.batch,
            "points": points,
            "units": {
                "baseline_latency": "us",
                "fused_latency": "us",
                "reduction": "fraction of baseline latency",
                "collective_share_baseline": "fraction of baseline latency",
                "collective_exposed_fused": "us",
            },
        }
        console.json(out)
        return 0
    fixed = {
        "context": f"batch {sc.batch}",
        "batch": f"context {sc.context}",
        "net-latency": f"context {sc.context}, batch {sc.batch}",
    }[name]
    console.print(
        f"[bold]normfuse sweep[/]: {name} ({UNITS[name]}), {sc.model.name}, {sc.phase}, {fixed}, on {hw.name}"
    )
    console.table(
        None,
        [name, "baseline µs", "fused µs", "reduction", "collectives (baseline)"],
        [
            (
                p["label"] + (" *" if p["beyond_context"] else ""),
                f"{p['baseline_latency']:.1f}",
                f"{p['fused_latency']:.1f}",
                f"{100 * p['reduction']:.1f}%",
                f"{100 * p['collective_share_baseline']:.1f}%",
            )
            for p in points
        ],
    )
    console.print("reduction (fused vs baseline latency):")
    console.print(bars([p["label"] for p in points], [p["reduction"] for p in points], console.out.width))
    if any(p["beyond_context"] for p in points):
        console.print(f"* beyond {sc.model.name}'s trained context", style="dim")
    console.print(calibration_note(hw) + ".", style="dim")
    return 0
