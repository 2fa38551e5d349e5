"""`normfuse timeline`: baseline vs fused order of a model's forward pass on the emulated SIMD/DIMC machine.

With no arguments: llama2-7b, the corsair-like machine, one decode step at context 2048, on the mapping the mapper
picks. `--model` takes any preset of the three families (Llama; BERT, an encoder: prefill only; GPT-2/OPT) or an HF
config.json of one of them (shape-only: `normfuse_ref.models.shapes`). Prints a Gantt chart of one decoder block
(both orders on one time axis, lanes per engine and network level), and a table for the whole model: the latency of both baselines (two-pass softmax, one-pass (m, l)
all-reduce) and of the fused order, each without its normalisation (the counterfactual), what normalisation
costs, the exposed view, the roofline on the cards used. Every output says whether a parameter was fitted
(`calibrated`); nothing is by default. `--calibrate PARAM[=POINT]` fits one on request.

`--paper` prints the paper check instead: five Llama models in decode and prefill, both baselines, the
normalisation share, the hidden fraction and the reduction beside the paper's ~20% / 15-20%, and the published
d-Matrix figures beside the emulated latencies. `--paper --models layernorm` (or a list of presets and config.json
files) prints the same table for other models, each at its own trained context if that is shorter.

`--json` prints the summary for scripts (docs/cli.md); times are in microseconds and every key's unit is in its
"units" entry. `--trace FILE.json` writes a Chrome trace (open it in https://ui.perfetto.dev), `--svg FILE.svg` the
terminal picture, `--figure FILE.png|svg|pdf` the block's Gantt chart drawn with matplotlib (normfuse_ref.plot); all
are checked before any work and written all-or-nothing, never over a file without --force.

Refused rather than ignored (one line, exit status 2): the flags that choose one pass together with --paper,
--workers without it, --force without an output file, and a context that cannot be timed (MAX_CONTEXT,
MAX_PREFILL_CHUNKS).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..hw.config import ALGORITHMS, PRESETS, HardwareConfig, load_hardware, with_overrides
from ..hw.mapping import MappingPolicy
from ..hw.study import (
    CALIBRATION_POINTS,
    LAYERNORM_MODELS,
    PAPER,
    PAPER_MODELS,
    Comparison,
    Phase,
    Scenario,
    calibrate,
    calibrated,
    compare,
    local_pool,
    paper_check,
    units_of,
    validate,
)
from ..hw.timeline import ENGINES, chrome_trace
from ..hw.workload import is_encoder, workload_of
from ..models.shapes import shape_config, shape_presets
from .args import integer, refuse
from .console import Col, Console, UsageError, json_record
from .gantt import LEGEND, block_gantt
from .outputs import OutputFiles, add_figure_argument

DEFAULT_MODEL, DEFAULT_HW, DEFAULT_CONTEXT = "llama2-7b", "corsair-like", 2048
#: Prompt length of the prefill rows of --paper.
PAPER_PREFILL = 2048
#: The longest context the CLI times: 2**24 = 16,777,216 positions, beyond any released model's trained context
#: (the longest, ~10M tokens) and far from overflowing a byte count of the KV cache. A larger --context is refused
#: with this limit rather than handed to the mapper, which can only say that nothing fits.
MAX_CONTEXT = 1 << 24
#: The most prefill chunks the CLI times. Each chunk is one cost-only forward call, so time and memory grow with
#: the chunk count: measured on the 2-core project machine (load ~1.5), 32 chunks take 4.5 s and 120 MB, 128 chunks
#: (a 32768-token prompt at the default --chunk 256) 22.5 s and 360 MB. A longer prompt needs a larger --chunk.
MAX_PREFILL_CHUNKS = 128


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "timeline",
        help="baseline vs fused timeline of a model's forward pass (Llama, BERT, GPT-2/OPT) on the emulated SIMD/DIMC "
        "machine (the main job)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_scenario_args(p)
    p.add_argument("--layers", default="all", metavar="N|all", help="emulate the first N decoder blocks (default all)")
    p.add_argument(
        "--block",
        type=integer(minimum=0),
        default=0,
        metavar="N",
        help="decoder block drawn in the Gantt chart (default 0)",
    )
    p.add_argument(
        "--detail-layer",
        type=integer(minimum=0),
        default=None,
        metavar="N",
        help="also record per-slice / per-network-level events of block N (in --trace)",
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper check: 5 models x decode/prefill, and the published figures (--context sets the decode rows' "
        "context; --batch, --hw and the mapping flags apply to every row)",
    )
    p.add_argument(
        "--models",
        default=None,
        metavar="M,M,...|layernorm",
        help="with --paper: the models of the table (presets or config.json files; layernorm: "
        f"{', '.join(LAYERNORM_MODELS)}; default the paper's Llama models)",
    )
    p.add_argument(
        "--workers",
        type=integer(minimum=1),
        default=None,
        metavar="N",
        help="processes for --paper (default: all cores)",
    )
    p.add_argument("--trace", type=Path, metavar="FILE.json", help="write a Chrome trace (Perfetto)")
    p.add_argument("--svg", type=Path, metavar="FILE.svg", help="save the terminal picture as SVG")
    p.add_argument("--force", action="store_true", help="overwrite existing --trace / --svg / --figure files")
    add_figure_argument(p, "the block's Gantt chart (--block)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    """The options `timeline` and `sweep` share."""
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="PRESET|CONFIG.json",
        help=f"model preset (default {DEFAULT_MODEL}; {', '.join(shape_presets())}) or an HF config.json of model_type "
        "llama, mistral, qwen2, bert, gpt2 or opt (shape-only)",
    )
    p.add_argument(
        "--hw",
        default=DEFAULT_HW,
        metavar="PRESET|FILE.toml",
        help=f"machine: a preset ({', '.join(PRESETS)}) or a TOML file (default {DEFAULT_HW}; docs/hardware.md)",
    )
    p.add_argument(
        "--phase",
        choices=("decode", "prefill"),
        default=None,
        help="decode: one new token after --context cached positions; prefill: a --context-token prompt "
        "(default decode; prefill for an encoder, which has no decode)",
    )
    p.add_argument(
        "--context",
        type=integer(minimum=0),
        default=None,
        metavar="N",
        help=f"cached positions (decode) or prompt tokens (prefill) (default {DEFAULT_CONTEXT}, or the model's "
        "trained context if shorter)",
    )
    p.add_argument(
        "--batch", type=integer(minimum=1), default=1, metavar="N", help="sequences decoded together (default 1)"
    )
    p.add_argument(
        "--chunk", type=integer(minimum=1), default=256, metavar="N", help="prefill tokens per chunk (default 256)"
    )
    p.add_argument(
        "--algorithm", choices=ALGORITHMS, default=None, help="collective algorithm (default: the machine's, tree)"
    )
    p.add_argument(
        "--mapping",
        choices=("search", "dense"),
        default="search",
        help="search: the mapper's latency-optimal mapping; dense: normfuse 0.1's packing on the fewest slices",
    )
    for flag, what in (
        ("--tp-cards", "cards a pipeline stage spans"),
        ("--stages", "pipeline stages"),
        ("--max-cards", "cards the mapping may use"),
    ):
        p.add_argument(flag, type=integer(minimum=1), default=None, metavar="N", help=f"{what} (default: searched)")
    p.add_argument(
        "--calibrate",
        default=None,
        metavar="PARAM[=POINT]",
        help=f"fit one numeric hardware field to a published point ({', '.join(CALIBRATION_POINTS)}; default "
        "paper-share) before running; labelled fitted everywhere",
    )


def resolve_hw(args: argparse.Namespace) -> HardwareConfig:
    """The machine: preset or file, the --algorithm override, and --calibrate if asked for."""
    try:
        hw = load_hardware(args.hw)
        if getattr(args, "algorithm", None):
            hw = with_overrides(hw, {"network": {"algorithm": args.algorithm}})
    except ValueError as exc:
        raise UsageError(f"--hw: {exc}") from None
    spec = getattr(args, "calibrate", None)
    if spec:
        param, _, point = spec.partition("=")
        try:
            hw = calibrate(hw, param, point or "paper-share", policy=resolve_policy(args))
        except ValueError as exc:
            raise UsageError(f"--calibrate: {exc}") from None
    return hw


def resolve_policy(args: argparse.Namespace) -> MappingPolicy:
    try:
        return MappingPolicy(args.mapping, args.tp_cards, args.stages, args.max_cards)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None


def resolve_model(model: str) -> Any:
    """The config of a preset or config.json (`models.shapes.shape_config`); UsageError naming what is wrong."""
    try:
        return shape_config(model)
    except ValueError as exc:  # unknown name, unsupported model_type, a bad or missing field, not JSON
        raise UsageError(str(exc)) from None


def resolve_defaults(args: argparse.Namespace) -> Any:
    """The model's config, with --phase and --context set from it where they were not given: an encoder's phase is
    prefill (it has no decode), and the context is DEFAULT_CONTEXT or, if the model was trained on fewer positions,
    as many as it has (decode: one fewer, for the new token)."""
    cfg = resolve_model(args.model)
    if args.phase is None:
        args.phase = "prefill" if is_encoder(cfg) else "decode"
    if args.context is None:
        args.context = min(DEFAULT_CONTEXT, cfg.context_length - (args.phase == "decode"))
    return cfg


def resolve_scenario(args: argparse.Namespace, console: Console, layers: str = "all", *, warn: bool = True) -> Scenario:
    """The scenario the flags describe; with `warn`, a warning when it is beyond the model's trained context (pass
    False and call `warn_beyond_context` after the work, so that a mistake found later stays the only line).

    The defaults follow the model (`resolve_defaults`)."""
    cfg = resolve_defaults(args)
    phase: Phase = args.phase
    why = chunkless(cfg, phase)
    if why:
        refuse(getattr(args, "given", frozenset()), ("--chunk",), f"to {why}")
    if layers != "all":
        try:
            n = int(layers)
        except ValueError:
            raise UsageError(f"--layers must be a positive integer or 'all'; got {layers!r}") from None
        if not 1 <= n <= cfg.n_layers:
            raise UsageError(f"--layers must be between 1 and {cfg.n_layers} for {cfg.name}; got {n}")
        cfg = cfg.replace(n_layers=n)
    # an encoder takes its prompt in one forward call, whatever --chunk says
    check_timeable(phase, args.context, args.context if is_encoder(cfg) else args.chunk)
    try:
        sc = Scenario(cfg, phase, args.context, args.batch, args.chunk, resolve_policy(args))
    except ValueError as exc:  # decode for an encoder
        raise UsageError(str(exc)) from None
    if warn:
        warn_beyond_context(sc, console)
    return sc


def chunkless(cfg: Any, phase: str) -> str | None:
    """Why a prefill chunk size does not apply to this model and phase (what `--chunk` or a swept chunk is refused
    for), or None when it does."""
    if is_encoder(cfg):
        return f"{cfg.name}, an encoder (a prompt is one call)"
    if phase == "decode":
        return "decode (one token a step; a chunk is a prefill's)"
    return None


def warn_beyond_context(sc: Scenario, console: Console) -> None:
    if sc.beyond_context:
        console.warning(
            f"{sc.positions} positions exceed {sc.model.name}'s trained context of {sc.model.context_length}; "
            "timed anyway"
        )


def check_timeable(phase: str, context: int, chunk: int, *, what: str = "--context") -> None:
    """UsageError, with the limit, for a context the CLI cannot time (MAX_CONTEXT, MAX_PREFILL_CHUNKS)."""
    least = 0 if phase == "decode" else 1
    if context < least:
        raise UsageError(f"{what} must be >= {least} for {phase}; got {context}")
    if context > MAX_CONTEXT:
        raise UsageError(f"{what} must be at most {MAX_CONTEXT} (2**24) positions; got {context}")
    chunks = -(-context // chunk) if phase == "prefill" else 1
    if chunks > MAX_PREFILL_CHUNKS:
        raise UsageError(
            f"{what} {context} in chunks of {chunk} is {chunks} prefill chunks; normfuse times at most "
            f"{MAX_PREFILL_CHUNKS} (each is one forward call): give --chunk {-(-context // MAX_PREFILL_CHUNKS)} "
            "or more, or a shorter prompt"
        )


def fitted_note(hw: HardwareConfig) -> str:
    """The line every output carries: nothing fitted, or what was."""
    if not hw.fitted:
        return "calibrated: false (no parameter fitted; every value is public or assumed)"
    return "calibrated: FITTED " + "; ".join(hw.fitted)


def run_compare(sc: Scenario, hw: HardwareConfig, detail_layer: int | None = None) -> Comparison:
    try:
        return compare(sc, hw, detail_layer=detail_layer)
    except ValueError as exc:  # the model does not fit, or the mapping asks for more than exists
        raise UsageError(str(exc)) from None


#: Flags that choose the one pass `timeline` times, and so do not apply to --paper (which times its own five
#: models in both phases; --context sets its decode rows' context, --batch and the mapping flags apply to all rows).
ONE_PASS_FLAGS = ("--model", "--phase", "--chunk", "--layers", "--block", "--detail-layer", "--trace", "--figure")
#: What each output flag writes, for the success lines and the refusals.
OUTPUT_FLAGS = ("--trace", "--svg", "--figure")


def run(args: argparse.Namespace, console: Console) -> int:
    given: frozenset[str] = getattr(args, "given", frozenset())
    if args.paper:
        refuse(given, ONE_PASS_FLAGS, "to --paper (it times five models in both phases: see --help)")
    else:
        refuse(given, ("--workers",), "without --paper (one pass runs in this process)")
        refuse(given, ("--models",), "without --paper (it chooses the models of the paper table)")
    if args.json:
        refuse(given, ("--svg",), "to --json (it saves the terminal picture, and --json prints none)")
    if not any(getattr(args, f[2:]) is not None for f in OUTPUT_FLAGS):
        refuse(given, ("--force",), "without an output file (--trace, --svg or --figure)")
    if args.trace is None:
        refuse(given, ("--detail-layer",), "without --trace (it adds block N's per-slice events to the trace)")
    if args.paper:
        if args.context is None:  # decode rows at DEFAULT_CONTEXT (with --models: or a model's positions, if fewer)
            args.context = DEFAULT_CONTEXT
        check_timeable("decode", args.context, 1)
    with OutputFiles(force=args.force) as outputs:
        trace_path = outputs.add("--trace", args.trace, suffixes=(".json",))
        svg_path = outputs.add("--svg", args.svg, suffixes=(".svg",))
        figure_path = outputs.add_figure(args.figure)
        hw = resolve_hw(args)
        if svg_path is not None:
            console.out.record = True
        if args.paper:
            run_paper(args, hw, console)
        else:
            c = run_one(args, hw, console, outputs, trace_path)
            if figure_path is not None:
                from ..plot import gantt_figure

                fig = gantt_figure(c, args.block)
                outputs.write_figure(figure_path, fig)
        if svg_path is not None:
            outputs.write_with(svg_path, lambda tmp: console.out.save_svg(str(tmp), title="normfuse timeline"))
        outputs.commit()
    if trace_path is not None:
        console.wrote(f"{trace_path} (open it in ui.perfetto.dev)")
    for path in (svg_path, figure_path):
        if path is not None:
            console.wrote(path)
    return 0


def run_one(
    args: argparse.Namespace, hw: HardwareConfig, console: Console, outputs: OutputFiles, trace_path: Path | None
) -> Comparison:
    sc = resolve_scenario(args, console, args.layers, warn=False)
    if not 0 <= args.block < sc.model.n_layers:
        raise UsageError(f"--block must be between 0 and {sc.model.n_layers - 1}; got {args.block}")
    if args.detail_layer is not None and not 0 <= args.detail_layer < sc.model.n_layers:
        raise UsageError(f"--detail-layer must be between 0 and {sc.model.n_layers - 1}; got {args.detail_layer}")
    with console.status(f"emulating the six passes of {sc.describe()} on {hw.name}"):  # a long prefill takes ~20 s
        c = run_compare(sc, hw, args.detail_layer)
        summary = c.summary()  # runs the passes
    warn_beyond_context(sc, console)
    summary.pop("units")
    summary["block"] = block_summary(c, args.block)
    if trace_path is not None:
        trace = chrome_trace({"baseline": c.baseline, "fused": c.fused}, metadata=summary)
        outputs.write_text(trace_path, json.dumps(trace))
    if args.json:
        console.json(json_record("timeline", units_of(summary), **summary, hardware_parameters=hw.to_dict()))
        return c
    print_comparison(c, summary, args.block, console)
    return c


def block_summary(c: Comparison, layer: int) -> dict[str, Any]:
    out: dict[str, Any] = {"layer": layer}
    for mode, tl in (("baseline", c.baseline), ("fused", c.fused)):
        s, e = tl.layer_window(layer)
        out[f"{mode}_latency"] = tl.us(e - s)
    return out


def _mapping_line(c: Comparison) -> str:
    m = c.mapping.to_dict()
    stages = m["stage_list"]
    if len(stages) <= 4:
        spans = " | ".join(f"{s['layers'][0]}-{s['layers'][-1]}" if s["layers"] else "head" for s in stages)
    else:
        a, z = stages[0]["layers"], stages[-1]["layers"]
        spans = f"{a[0]}-{a[-1]} | ... | {z[0] if z else 'head'}-{z[-1] if z else ''}".rstrip("-")
    kv = m.get("kv_cache", {})
    off = max(s["kv_offchip_fraction"] for s in stages)

    def n(k: int, what: str, plural: str = "") -> str:
        return f"{k} {what if k == 1 else plural or what + 's'}"

    copies = max((g.get("copies", 1) for g in m.get("matrices", {}).values()), default=1)
    held = f", weights in up to {copies} copies (each computing a share of the rows)" if copies > 1 else ""
    return (
        f"mapping ({m['kind']}, {m['candidates_compared']} compared): {n(m['cards'], 'card')} = "
        f"{n(m['stages'], 'stage')} of {n(m['tp_cards'], 'card')}, blocks {spans}{held}; KV of a head group on "
        f"{n(kv.get('key_slices_per_group', 0), 'slice')} x {n(kv.get('copies_per_group', 1), 'copy', 'copies')}, "
        f"{100 * off:.0f}% in LPDDR"
    )


def print_comparison(c: Comparison, s: dict[str, Any], layer: int, console: Console) -> None:
    sc, hw = c.scenario, c.hw
    b, o, f = c.baseline, c.one_pass, c.fused
    console.heading(f"normfuse timeline: {sc.describe()} on {hw.name}")
    console.note(f"{hw.clock.ghz:g} GHz, {hw.network.algorithm} collectives; {_mapping_line(c)}")
    console.print(block_gantt({"baseline": b, "fused": f}, layer, console.width))
    console.note(LEGEND)
    console.blank()

    def us(cycles: float) -> str:
        v = b.us(cycles)
        return f"{v:.1f}" if v >= 100 else f"{v:.3g}"

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    free = (c.baseline_free, c.one_pass_free, c.fused_free)
    rows: list[tuple[str, str, str, str]] = [
        ("latency (µs)", us(b.makespan), us(o.makespan), us(f.makespan)),
        ("  with normalisation free (µs)", us(free[0].makespan), us(free[1].makespan), us(free[2].makespan)),
        ("normalisation cost (µs)", us(c.cost("baseline")), us(c.cost("one_pass")), us(c.cost("fused"))),
        (
            "  share of latency",
            pct(c.cost("baseline") / b.makespan),
            pct(c.cost("one_pass") / o.makespan),
            pct(c.cost("fused") / f.makespan),
        ),
        ("exposed on the critical path (µs):", "", "", ""),
        ("  normalisation statistics", us(b.collective_exposed), us(o.collective_exposed), us(f.collective_exposed)),
        ("  partial sums", us(b.exposed("psum")), us(o.exposed("psum")), us(f.exposed("psum"))),
        ("  moving activations", us(b.exposed("move")), us(o.exposed("move")), us(f.exposed("move"))),
    ]
    rows += [(f"{e} utilisation", pct(b.utilisation(e)), pct(o.utilisation(e)), pct(f.utilisation(e))) for e in ENGINES]
    after = "lm head" if workload_of(sc.model).head else "final LayerNorm"
    console.table(f"Whole model ({sc.model.n_layers} blocks + {after})", ["", "baseline", "one-pass", "fused"], rows)
    console.note(
        f"roofline on the {c.mapping.cards} cards used: {s['roofline_latency']:.4g} µs (weights and KV at SRAM/LPDDR "
        f"rate, flops at peak); baseline = {b.us(b.makespan) / s['roofline_latency']:.2f} x roofline. Softmax "
        f"merge: {s['merge_psum']:.3g} µs partial sums + {s['merge_normalisation']:.3g} µs normalisation "
        f"(baseline P @ V partial sums: {s['pv_psum_baseline']:.3g} µs)."
    )
    console.note(fitted_note(hw) + ". Parameters, sources and assumptions: docs/hardware.md.")
    verb = "faster" if c.reduction >= 0 else "slower"
    h = 100 * c.hidden_fraction
    hides = f"it hides {h:.0f}% of the" if h >= 0 else f"its normalisation costs {-h:.0f}% more than the"
    console.success(
        f"fused order is {abs(100 * c.reduction):.1f}% {verb} than the two-pass baseline "
        f"({100 * c.reduction_vs_one_pass:.1f}% vs one-pass); {hides} baseline's normalisation cost "
        f"({pct(c.normalisation_share)} of its latency)"
    )


def run_paper(args: argparse.Namespace, hw: HardwareConfig, console: Console) -> None:
    policy = resolve_policy(args)
    models = PAPER_MODELS  # module globals, so tests can shorten them
    if args.models is not None:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        models = LAYERNORM_MODELS if names == ["layernorm"] else tuple(names)
        if not models:
            raise UsageError("--models needs at least one model")
    n_rows = sum(1 if is_encoder(resolve_model(m)) else 2 for m in models)  # an encoder has no decode row
    workers = args.workers or os.cpu_count() or 1
    pool = local_pool(workers) if workers > 1 else None
    try:
        kw: dict[str, Any] = {
            "context": args.context,
            "fit_context": args.models is not None,
            "batch": args.batch,
            "prefill_tokens": PAPER_PREFILL,
            "models": models,
            "policy": policy,
            "executor": pool,
        }
        with console.progress() as progress:
            task = progress.add_task("emulating", total=n_rows)
            rows = paper_check(hw, **kw, on_step=lambda: progress.advance(task))
        # the press figures are of Llama 3 models: printed with the paper's models only
        published = [] if args.models is not None else validate(hw, policy=dataclasses.replace(policy, max_cards=None))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if pool is not None:
            pool.shutdown()
    if args.json:
        units = units_of(*rows, *published)
        console.json(
            json_record(
                "timeline",
                units,
                hardware=hw.name,
                calibrated=calibrated(hw),
                paper=PAPER,
                rows=rows,
                published=published,
                hardware_parameters=hw.to_dict(),
            )
        )
        return
    print_paper(rows, published, hw, args, console)


def print_paper(
    rows: list[dict[str, Any]],
    published: list[dict[str, Any]],
    hw: HardwareConfig,
    args: argparse.Namespace,
    console: Console,
) -> None:
    console.heading(
        f"Paper check on {hw.name}: what normalisation costs each baseline, and what the fused order hides and saves"
    )

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    own = args.models is not None  # other models, each at its own context: a column shows it
    console.table(
        None,
        [
            "model",
            Col("phase", "left"),
            *(["tokens"] if own else []),
            "baseline µs",
            "×roof",
            "share",
            "hidden",
            "saves",
            "vs 1p",
        ],
        [
            (
                r["model"],
                r["phase"],
                *([str(r["context"])] if own else []),
                f"{r['baseline_latency']:.0f}",
                f"{r['baseline_latency'] / r['roofline_latency']:.2f}",
                pct(r["normalisation_share_baseline"]),
                pct(r["hidden_fraction"]),
                pct(r["reduction"]),
                pct(r["reduction_vs_one_pass"]),
            )
            for r in rows
        ],
    )
    console.note(
        f"paper (arXiv 2502.17728): collectives {PAPER['collective_share']} of latency, completely hidden, fused "
        f"order {PAPER['reduction']} faster on Llama2/Llama3. Here: baseline µs = the two-pass baseline's latency; ×roof "
        "= that / the roofline on the cards used; share = its normalisation cost / its latency; hidden = 1 - "
        "fused cost / baseline cost; saves = fused vs the two-pass baseline; vs 1p = fused vs the one-pass "
        + (
            "(m, l) baseline. tokens = the context of a decode step or the prompt of a prefill (2048, or the model's "
            "trained positions if fewer; an encoder's prompt in one pass, others in chunks of 256); "
            if own
            else f"(m, l) baseline. Decode at context {args.context}, prefill of {PAPER_PREFILL} tokens in chunks of "
            "256; "
        )
        + f"batch {args.batch}; the mapper's mapping for each row (cards in --json)."
    )
    if not published:
        console.note(fitted_note(hw) + ".")
        return
    console.table(
        "Published d-Matrix figures (press, not specifications), beside the emulation",
        ["figure", "published µs", "baseline µs", "fused µs", "fused / published", "cards"],
        [
            (
                p["name"],
                f"{p['latency_us']:.0f}",
                f"{p['baseline_latency']:.1f}",
                f"{p['fused_latency']:.1f}",
                f"{p['ratio_fused']:.2f}",
                str(p["cards"]),
            )
            for p in published
        ],
    )
    console.note(fitted_note(hw) + ". The published figures are printed, never fitted to.")
