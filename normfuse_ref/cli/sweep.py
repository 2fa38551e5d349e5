"""`normfuse sweep`: where fusion pays, over one or two parameters, as a table (2-D for two) and bars.

    normfuse sweep --param noc-hop 1..64 --param batch 1..64       NoC hop latency (ns) x batch
    normfuse sweep --param algorithm tree,ring,gather --param context 512..8192
    normfuse sweep --param context 128..8192                        one parameter: a table and a bar chart

Parameters: context, batch, chunk (prefill tokens a chunk), tp-cards, mapping (search, dense), algorithm (tree,
ring, gather), the hop latencies noc-hop, d2d-hop, bridge-hop, pcie-hop, nic-hop (ns), noc-bw (GB/s), or any
numeric hardware field by its dotted name (network.d2d.link_gbps, simd.exp_cycles, ...). VALUES: `a..b` doubles
from a up to b (b included), `a,b,c` lists them. Every point runs the same comparison as `normfuse timeline`
(six passes on the mapping the mapper picks for that point), each in its own task on a process pool (`--workers`,
default all cores; the library's `sweep` takes any concurrent.futures.Executor, e.g. a Dask or Ray cluster's).
`--figure FILE.png|svg|pdf` draws the curves (one parameter) or the heatmap (two) with matplotlib. Sweeping a
parameter that is also a flag (`--param batch ... --batch 4`) is refused, as are values that are not finite.
"""

from __future__ import annotations

import argparse
import itertools
import math
from typing import Any

from ..hw.config import ALGORITHMS, field_value
from ..hw.study import SCENARIO_PARAMS, SWEEP_SHORTCUTS, local_pool, sweep, units_of
from ..hw.workload import is_encoder
from ..plot import SWEEP_METRICS
from .args import integer, refuse
from .console import Col, Console, UsageError, json_record
from .gantt import bars
from .outputs import OutputFiles, add_figure_argument
from .timeline import (
    add_scenario_args,
    check_timeable,
    chunkless,
    fitted_note,
    resolve_defaults,
    resolve_hw,
    resolve_scenario,
)

METRICS = SWEEP_METRICS  # --metric NAME -> (JSON key, meaning); one table for the terminal and the figures
CHOICES = {"algorithm": ALGORITHMS, "mapping": ("search", "dense")}
UNITS = {
    "context": "tokens",
    "batch": "sequences",
    "chunk": "tokens",
    "tp-cards": "cards",
    "noc-hop": "ns",
    "d2d-hop": "ns",
    "bridge-hop": "ns",
    "pcie-hop": "ns",
    "nic-hop": "ns",
    "noc-bw": "GB/s",
}


def unit_of(name: str) -> str:
    """The unit of a sweep parameter: UNITS for the named ones, else read off a dotted hardware field's name (the
    units of docs/hardware.md's field table: `hop_ns` ns, `link_gbps` GB/s, `*_cycles` cycles, ...)."""
    if name in UNITS:
        return UNITS[name]
    leaf = SWEEP_SHORTCUTS.get(name, name).rsplit(".", 1)[-1]
    for part, unit in (("macs_per_cycle", "MACs/cycle"), ("bytes_per_cycle", "bytes/cycle"), ("_cycles", "cycles"),
                       ("ghz", "GHz"), ("gbps", "GB/s"), ("_bits", "bits"), ("bytes", "bytes"), ("_ns", "ns")):  # fmt: skip
        if part in leaf:
            return unit
    return ""


def named(name: str) -> str:
    """A parameter as the tables and headings show it: with its unit, if it has one."""
    unit = unit_of(name)
    return f"{name} ({unit})" if unit else name


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="where fusion pays: the comparison over one or two parameters (a 2-D table)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=__doc__.split("\n\n")[2] if __doc__ else None,  # the parameters and the VALUES syntax
    )
    p.add_argument(
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUES"),
        required=True,
        help="a parameter and its values (give --param once or twice; the parameters and VALUES are listed below)",
    )
    p.add_argument(
        "--metric", choices=tuple(METRICS), default="reduction", help="what the table and bars show (default reduction)"
    )
    p.add_argument(
        "--workers", type=integer(minimum=1), default=None, metavar="N", help="processes (default: all cores; 1: here)"
    )
    add_scenario_args(p)
    p.add_argument("--json", action="store_true", help="print the points as JSON")
    add_figure_argument(p, "the sweep: curves for one parameter, a heatmap for two")
    p.set_defaults(func=run)


def _number(tok: str, integer: bool) -> float:
    t = tok.strip().lower()
    for suffix in ("ns", "gb/s"):
        if t.endswith(suffix):
            t = t[: -len(suffix)].strip()
    try:
        v = float(t)
    except ValueError:
        raise UsageError(f"not a number: {tok!r}") from None
    if not math.isfinite(v):
        raise UsageError(f"values must be finite numbers; got {tok!r}")
    if v < 0 or (integer and v != int(v)):
        raise UsageError(f"values must be non-negative {'integers' if integer else 'numbers'}; got {tok!r}")
    return v


def parse_values(text: str, *, integer: bool = True, choices: tuple[str, ...] | None = None) -> list[Any]:
    """Values from `a..b` (doubling, b included) or `a,b,c`; words from `choices` when given."""
    if choices is not None:
        words = [w.strip() for w in text.split(",") if w.strip()]
        bad = [w for w in words if w not in choices]
        if not words or bad:
            raise UsageError(f"values must be among {', '.join(choices)}; got {text!r}")
        return words
    if ".." in text:
        lo_s, hi_s = text.split("..", 1)
        lo, hi = _number(lo_s, integer), _number(hi_s, integer)
        if lo <= 0 or hi < lo:
            raise UsageError(f"a range a..b needs 0 < a <= b; got {text!r}")
        raw = []
        v = lo
        while v < hi:
            raw.append(v)
            v *= 2
        raw.append(hi)
    else:
        raw = [_number(t, integer) for t in text.split(",") if t.strip()]
        if not raw:
            raise UsageError("give at least one value (a,b,c or a..b)")
    return [int(v) if integer else v for v in raw]


def _kind(name: str, hw: Any) -> tuple[bool, tuple[str, ...] | None]:
    """(integer?, choices) of a parameter; UsageError for an unknown one."""
    if name in CHOICES:
        return False, CHOICES[name]
    if name in SCENARIO_PARAMS:
        return True, None
    dotted = SWEEP_SHORTCUTS.get(name, name)
    try:
        current = field_value(hw, dotted)
    except ValueError:
        known = ", ".join([*SCENARIO_PARAMS, *SWEEP_SHORTCUTS])
        raise UsageError(f"unknown --param {name!r}; use one of {known} or a dotted hardware field") from None
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise UsageError(f"--param {name} is not a numeric hardware field")
    return isinstance(current, int), None


def _label(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


#: Sweep parameters that are also flags of their own: sweeping one and fixing it too is a contradiction.
FLAG_PARAMS = ("context", "batch", "chunk", "tp-cards", "mapping", "algorithm")


def run(args: argparse.Namespace, console: Console) -> int:
    given: frozenset[str] = getattr(args, "given", frozenset())
    if len(args.param) > 2:
        raise UsageError("--param may be given at most twice")
    for name, _ in args.param:
        if name in FLAG_PARAMS:
            refuse(given, (f"--{name}",), f"when --param {name} sweeps it; give its values to --param")
    if args.figure is None:
        refuse(given, ("--force",), "without --figure")
    with OutputFiles(force=args.force) as outputs:
        figure_path = outputs.add_figure(args.figure)
        hw = resolve_hw(args)
        cfg = resolve_defaults(args)  # --phase and --context from the model where not given
        params: list[tuple[str, list[Any]]] = []
        for name, text in args.param:
            field = SWEEP_SHORTCUTS.get(name, name)  # a shortcut and its dotted field are one parameter
            same = [n for n, _ in params if SWEEP_SHORTCUTS.get(n, n) == field]
            if same:
                also = "" if same[0] == name else f" (as {same[0]})"
                raise UsageError(f"--param {name} is given twice{also}")
            why = chunkless(cfg, args.phase) if name == "chunk" else None
            if why:
                raise UsageError(f"--param chunk does not apply to {why}")
            fitted = (getattr(args, "calibrate", None) or "").partition("=")[0]
            if fitted == field:
                raise UsageError(f"--calibrate {fitted} fits the field that --param {name} sweeps; give one of them")
            integer, choices = _kind(name, hw)
            try:
                values = parse_values(text, integer=integer, choices=choices)
            except UsageError as exc:
                raise UsageError(f"--param {name}: {exc}") from None
            if name in ("batch", "chunk", "tp-cards") and min(values) < 1:
                raise UsageError(f"--param {name}: values must be >= 1")
            params.append((name, values))
        swept = dict(params)
        for context, chunk in itertools.product(swept.get("context", [args.context]), swept.get("chunk", [args.chunk])):
            what = "--param context value" if "context" in swept else "--context"
            check_timeable(args.phase, context, context if is_encoder(cfg) else chunk, what=what)
        points, sc = _points(args, console, hw, params)
        if figure_path is not None:
            from ..plot import sweep_figure

            fig = sweep_figure(
                points,
                params,
                args.metric,
                units={n: unit_of(n) for n, _ in params},
                title=_heading(params, sc, hw.name),
            )
            outputs.write_figure(figure_path, fig)
        _print(args, console, hw, params, points, sc)
        outputs.commit()
    if figure_path is not None:
        console.wrote(figure_path)
    return 0


def _heading(params: list[tuple[str, list[Any]]], sc: Any, hw_name: str) -> str:
    """What was swept, and what was held fixed (the swept parameters are left out of the fixed ones)."""
    names = " x ".join(named(n) for n, _ in params)  # units as in the tables
    swept = {n for n, _ in params}
    fixed = [sc.model.name, sc.phase]
    if "context" not in swept:
        fixed.append(f"{'context' if sc.phase == 'decode' else 'prompt'} {sc.context}")
    if "batch" not in swept:
        fixed.append(f"batch {sc.batch}")
    return f"normfuse sweep: {names}; {', '.join(fixed)}, on {hw_name}"


def _points(
    args: argparse.Namespace, console: Console, hw: Any, params: list[tuple[str, list[Any]]]
) -> tuple[list[dict[str, Any]], Any]:
    """Every point of the sweep, on a process pool unless --workers 1, with a progress bar."""
    swept = {n for n, _ in params}
    sc = resolve_scenario(args, console, warn="context" not in swept)  # a swept context is judged value by value
    if "context" in swept:
        top = max(v for n, vs in params if n == "context" for v in vs)
        if top + (1 if sc.phase == "decode" else 0) > sc.model.context_length:
            console.warning(
                f"values beyond {sc.model.name}'s trained context of {sc.model.context_length} are timed anyway"
            )
    npoints = math.prod(len(vs) for _, vs in params)
    workers = args.workers or 0
    pool = local_pool(workers or None) if workers != 1 and npoints > 1 else None
    try:
        with console.progress() as progress:
            task = progress.add_task("emulating", total=npoints)
            points = sweep(sc, hw, params, executor=pool, on_step=lambda: progress.advance(task))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if pool is not None:
            pool.shutdown()
    return points, sc


def _print(
    args: argparse.Namespace,
    console: Console,
    hw: Any,
    params: list[tuple[str, list[Any]]],
    points: list[dict[str, Any]],
    sc: Any,
) -> None:
    key, meaning = METRICS[args.metric]

    if args.json:
        units = units_of(*(p for p in points if "error" not in p))
        console.json(
            json_record(
                "sweep",
                units,
                params=[{"name": n, "unit": unit_of(n), "values": vs} for n, vs in params],
                metric=key,
                model=sc.model.name,
                hardware=hw.name,
                calibrated=list(hw.fitted) if hw.fitted else False,
                phase=sc.phase,
                context=sc.context,
                batch=sc.batch,
                points=points,
                hardware_parameters=hw.to_dict(),
            )
        )
        return
    console.heading(_heading(params, sc, hw.name))

    def cell(p: dict[str, Any]) -> str:
        if "error" in p:
            return "n/f"
        return f"{100 * p[key]:.1f}%" + (" *" if p.get("beyond_context") else "")

    if len(params) == 1:
        console.table(
            None,
            [Col(named(params[0][0]), "left"), "cards", "baseline µs", "fused µs", "share", "hidden", "saves", "vs 1p"],
            [
                (_label(p["params"][params[0][0]]), "n/f", "", "", "", "", "", "")
                if "error" in p
                else (
                    _label(p["params"][params[0][0]]) + (" *" if p["beyond_context"] else ""),
                    str(p["cards"]),
                    f"{p['baseline_latency']:.1f}",
                    f"{p['fused_latency']:.1f}",
                    f"{100 * p['normalisation_share_baseline']:.1f}%",
                    f"{100 * p['hidden_fraction']:.1f}%",
                    f"{100 * p['reduction']:.1f}%",
                    f"{100 * p['reduction_vs_one_pass']:.1f}%",
                )
                for p in points
            ],
        )
        ok = [p for p in points if "error" not in p]
        if ok:
            console.text(f"{args.metric} ({meaning}):")
            console.print(bars([_label(p["params"][params[0][0]]) for p in ok], [p[key] for p in ok], console.width))
    else:
        (n1, v1), (n2, v2) = params
        console.table(
            f"{args.metric}: {meaning}",
            [Col(f"{named(n1)} \\ {named(n2)}", "left"), *(_label(v) for v in v2)],
            [(_label(a), *(cell(points[i * len(v2) + j]) for j in range(len(v2)))) for i, a in enumerate(v1)],
        )
    if len(params) == 1:
        console.note(
            "baseline µs = two-pass baseline latency; share = its normalisation cost / its latency; hidden = 1 - fused "
            "cost / baseline cost; saves = fused vs two-pass baseline; vs 1p = fused vs one-pass baseline."
        )
    if any("error" in p for p in points):
        first = next(p["error"] for p in points if "error" in p)
        console.note(f"n/f: the model does not fit that machine or mapping ({first})")
    if any(p.get("beyond_context") for p in points):
        console.note(f"* beyond {sc.model.name}'s trained context")
    console.note(fitted_note(hw) + ".")
