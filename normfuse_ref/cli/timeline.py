"""`normfuse timeline`: baseline vs fused order of a Llama forward pass on the emulated SIMD/DIMC machine.

With no arguments: llama2-7b, the corsair-like machine, one decode step at context 2048. Prints a Gantt chart of
one decoder block (both orders on one time axis) and a table for the whole model: latency, collective time exposed
and hidden, utilisation per engine. `--paper` prints the paper check instead: the baseline collective share and the
fused reduction for five Llama models in decode and prefill, beside the paper's ~20% / 15-20%.

`--json` prints the summary for scripts; times are in microseconds and every key's unit is in its "units" entry.
`--trace FILE.json` writes a Chrome trace (open it in https://ui.perfetto.dev), `--svg FILE` the terminal picture.
Neither overwrites an existing file unless --force is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..hw.config import CALIBRATION, PRESETS, HardwareConfig, load_hardware
from ..hw.study import PAPER, PAPER_MODELS, Comparison, Scenario, compare, paper_check
from ..hw.timeline import ENGINES, chrome_trace
from ..llama.config import PRESETS as MODELS
from ..llama.config import LlamaConfig, get_preset
from .console import Console, UsageError
from .gantt import LEGEND, block_gantt

DEFAULT_MODEL, DEFAULT_HW, DEFAULT_CONTEXT = "llama2-7b", "corsair-like", 2048
#: Prompt length of the prefill rows of --paper: 2048-token prefills of the grouped-query 70B models spend ~15 s
#: building forward's (G*T, S) causal masks on a laptop, so the check times prefill at 1024 tokens.
PAPER_PREFILL = 1024


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "timeline",
        help="baseline vs fused timeline of a Llama forward pass on the emulated SIMD/DIMC machine (the main job)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_scenario_args(p)
    p.add_argument("--layers", default="all", metavar="N|all", help="emulate the first N decoder blocks (default all)")
    p.add_argument(
        "--block", type=int, default=0, metavar="N", help="decoder block drawn in the Gantt chart (default 0)"
    )
    p.add_argument(
        "--detail-layer",
        type=int,
        default=None,
        metavar="N",
        help="also record per-slice / per-network-step events of block N (in --trace)",
    )
    p.add_argument("--paper", action="store_true", help="the paper check: 5 models x decode/prefill vs the paper")
    p.add_argument("--trace", type=Path, metavar="FILE.json", help="write a Chrome trace (Perfetto)")
    p.add_argument("--svg", type=Path, metavar="FILE.svg", help="save the terminal picture as SVG")
    p.add_argument("--force", action="store_true", help="overwrite existing --trace / --svg files")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    """The options `timeline` and `sweep` share."""
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model preset (default {DEFAULT_MODEL}; {', '.join(MODELS)})"
    )
    p.add_argument(
        "--hw",
        default=DEFAULT_HW,
        metavar="PRESET|FILE.toml",
        help=f"machine: a preset (corsair-like, toy) or a TOML file (default {DEFAULT_HW}; docs/hardware.md)",
    )
    p.add_argument(
        "--phase",
        choices=("decode", "prefill"),
        default="decode",
        help="decode: one new token after --context cached positions; prefill: a --context-token prompt",
    )
    p.add_argument(
        "--context",
        type=int,
        default=DEFAULT_CONTEXT,
        metavar="N",
        help=f"cached positions (decode) or prompt tokens (prefill) (default {DEFAULT_CONTEXT})",
    )
    p.add_argument("--batch", type=int, default=1, metavar="N", help="sequences decoded together (default 1)")


def resolve_hw(spec: str) -> HardwareConfig:
    try:
        return load_hardware(spec)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def resolve_scenario(args: argparse.Namespace, console: Console, layers: str = "all") -> Scenario:
    try:
        cfg: LlamaConfig = get_preset(args.model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if layers != "all":
        try:
            n = int(layers)
        except ValueError:
            raise UsageError(f"--layers must be a positive integer or 'all'; got {layers!r}") from None
        if not 1 <= n <= cfg.n_layers:
            raise UsageError(f"--layers must be between 1 and {cfg.n_layers} for {cfg.name}; got {n}")
        cfg = cfg.replace(n_layers=n)
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1; got {args.batch}")
    if args.context < (0 if args.phase == "decode" else 1):
        raise UsageError(
            f"--context must be >= {0 if args.phase == 'decode' else 1} for {args.phase}; got {args.context}"
        )
    sc = Scenario(cfg, args.phase, args.context, args.batch)
    if sc.beyond_context:
        console.warning(
            f"{sc.positions} positions exceed {cfg.name}'s trained context of {cfg.context_length}; timed anyway"
        )
    return sc


def check_outputs(paths: list[Path | None], force: bool) -> None:
    """Refuse to overwrite a user's file without --force; the directory must exist."""
    for path in paths:
        if path is None:
            continue
        if path.exists() and not force:
            raise UsageError(f"{path} exists; pass --force to overwrite it")
        if not path.parent.exists():
            raise UsageError(f"directory {path.parent} does not exist (for {path})")


def calibration_note(hw: HardwareConfig) -> str:
    if hw == PRESETS["corsair-like"]:
        return (
            f"calibrated: {CALIBRATION['parameter']} = {hw.network.hop_latency_cycles} cycles "
            f"({hw.network.hop_latency_cycles * hw.clock.ns_per_cycle:.0f} ns) on {CALIBRATION['point']} "
            f"({CALIBRATION['target']}); every other number is a prediction"
        )
    return (
        f"machine {hw.name}, not the calibrated corsair-like preset: {CALIBRATION['parameter']} = "
        f"{hw.network.hop_latency_cycles} cycles"
    )


def run(args: argparse.Namespace, console: Console) -> int:
    hw = resolve_hw(args.hw)
    if args.svg is not None and args.json:
        raise UsageError("--svg saves the terminal picture; it cannot be combined with --json")
    if args.trace is not None and args.paper:
        raise UsageError("--trace records one forward pass; it cannot be combined with --paper")
    check_outputs([args.trace, args.svg], args.force)
    if args.svg is not None:
        console.out.record = True
    if args.paper:
        return run_paper(args, hw, console)

    sc = resolve_scenario(args, console, args.layers)
    if not 0 <= args.block < sc.model.n_layers:
        raise UsageError(f"--block must be between 0 and {sc.model.n_layers - 1}; got {args.block}")
    if args.detail_layer is not None and not 0 <= args.detail_layer < sc.model.n_layers:
        raise UsageError(f"--detail-layer must be between 0 and {sc.model.n_layers - 1}; got {args.detail_layer}")
    c = compare(sc, hw, detail_layer=args.detail_layer)
    summary = c.summary()
    summary["block"] = block_summary(c, args.block)

    if args.trace is not None:
        trace = chrome_trace({"baseline": c.baseline, "fused": c.fused}, metadata=summary)
        args.trace.write_text(json.dumps(trace), encoding="utf-8")
    if args.json:
        console.json(summary)
        return 0
    print_comparison(c, args.block, console)
    if args.trace is not None:
        console.success(f"wrote {args.trace} ({len(trace['traceEvents'])} trace events; open it in ui.perfetto.dev)")
    if args.svg is not None:
        console.out.save_svg(str(args.svg), title="normfuse timeline")
        console.err.print(f"wrote {args.svg}")
    return 0


def block_summary(c: Comparison, layer: int) -> dict[str, Any]:
    out: dict[str, Any] = {"layer": layer}
    for mode, tl in (("baseline", c.baseline), ("fused", c.fused)):
        s, e = tl.layer_window(layer)
        out[f"{mode}_latency"] = tl.us(e - s)
    return out


def print_comparison(c: Comparison, layer: int, console: Console) -> None:
    sc, hw = c.scenario, c.hw
    b, f = c.baseline, c.fused
    console.print(f"[bold]normfuse timeline[/]: {sc.describe()} on {hw.name} ({hw.clock.ghz:g} GHz)")
    width = console.out.width
    console.print(block_gantt({"baseline": b, "fused": f}, layer, width))
    console.print(LEGEND, style="dim")
    console.print()

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    def us(cycles: int) -> str:
        v = b.us(cycles)
        return f"{v:.1f}" if v >= 100 else f"{v:.3g}"

    rows: list[tuple[str, str, str]] = [
        ("latency (µs)", us(b.makespan), us(f.makespan)),
        ("collective time exposed (µs)", us(b.collective_exposed), us(f.collective_exposed)),
        ("  share of latency", pct(b.collective_exposed / b.makespan), pct(f.collective_exposed / f.makespan)),
        ("collective time hidden (µs)", us(b.collective_hidden), us(f.collective_hidden)),
    ]
    rows += [(f"{e} utilisation", pct(b.utilisation(e)), pct(f.utilisation(e))) for e in ENGINES]
    cap = c.summary()
    console.table(
        f"Whole model ({sc.model.n_layers} blocks + lm_head), baseline vs fused", ["", "baseline", "fused"], rows
    )
    console.print(
        f"{calibration_note(hw)}. Weights packed densely on {cap['weight_slices']} slices (~{cap['cards_needed']} "
        "cards). Parameters, sources and assumptions: docs/hardware.md.",
        style="dim",
    )
    verb = "faster" if c.reduction >= 0 else "slower"
    console.success(
        f"fused order is {abs(100 * c.reduction):.1f}% {verb}: {us(b.makespan)} µs -> {us(f.makespan)} µs "
        f"per {'step' if sc.phase == 'decode' else 'prefill'}"
    )


def run_paper(args: argparse.Namespace, hw: HardwareConfig, console: Console) -> int:
    if args.batch < 1 or args.context < 0:
        raise UsageError("--batch must be >= 1 and --context >= 0")
    total = 2 * len(PAPER_MODELS)  # a module global, so tests can shorten the list
    if args.json:
        rows = paper_check(
            hw, context=args.context, batch=args.batch, prefill_tokens=PAPER_PREFILL, models=PAPER_MODELS
        )
    else:
        with console.progress() as progress:
            task = progress.add_task("emulating", total=total)
            rows = paper_check(
                hw,
                context=args.context,
                batch=args.batch,
                prefill_tokens=PAPER_PREFILL,
                models=PAPER_MODELS,
                on_step=lambda: progress.advance(task),
            )
    if args.json:
        console.json(
            {
                "hardware": hw.name,
                "calibration": calibration_note(hw),
                "paper": PAPER,
                "rows": rows,
                "units": {
                    "baseline_latency": "us",
                    "fused_latency": "us",
                    "collective_share_baseline": "fraction of baseline latency",
                    "reduction": "fraction of baseline latency",
                },
            }
        )
        return 0
    table_rows = []
    for r in rows:
        mark = " (calibrated)" if r["calibration_point"] else ""
        table_rows.append(
            (
                f"{r['model']}{mark}",
                r["phase"],
                str(r["context"]),
                f"{r['baseline_latency']:.1f}",
                f"{100 * r['collective_share_baseline']:.1f}%",
                f"{r['fused_latency']:.1f}",
                f"{100 * r['reduction']:.1f}%",
            )
        )
    console.print(f"[bold]Paper check on {hw.name}[/]: collective share of baseline latency, and what fusion saves")
    console.table(
        None,
        ["model", "phase", "context", "baseline µs", "collectives", "fused µs", "reduction"],
        table_rows,
    )
    console.print(
        f"paper (arXiv 2502.17728): collectives {PAPER['collective_share']} of latency, fused order "
        f"{PAPER['reduction']} faster on Llama2/Llama3.",
    )
    console.print(
        f"{calibration_note(hw)}. context = cached positions (decode) or prompt tokens (prefill); batch {args.batch}.",
        style="dim",
    )
    if args.svg is not None:
        console.out.save_svg(str(args.svg), title="normfuse timeline --paper")
    return 0
