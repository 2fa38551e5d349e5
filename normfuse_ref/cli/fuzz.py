"""`normfuse fuzz [RULE ...]`: fuzz the fused rules against their reference order, per dtype, outside pytest.

Each rule x dtype cell draws examples with the fuzz suite's strategies (normfuse_ref.fuzz), evaluates the
equivalence criterion |fused - exact| <= c |reference - exact| + atol (normfuse_ref/accuracy/equivalence.py) with
the stated hazards allowed (`--strict`: without them, which is how to find the hazards), and reports: examples
run, the worst error ratio fused/reference, the worst absolute error, the worst share of the allowance used, the
share of rows the allowance cannot check (unchecked: its bound is infinite or at least the result) and how many
rows needed a stated hazard, and the shrunk counterexample if one was found, printed as a `Case(...)` to paste
into a test. One table per rule (each fits 80 columns); `result` reads `pass` or `FOUND`. `--figure
FILE.png|svg|pdf` draws the distribution of the error ratio per rule and dtype with matplotlib.

Reproducible: Hypothesis drives the strategies with `@seed(--seed)` and no example database (see
normfuse_ref/fuzz/campaign.py); the same seed, code and Hypothesis version give the same examples.

Exit status: 0 if no counterexample was found, 1 if any cell found one, 2 for a usage error (unknown rule, dtype
or row family, --examples < 1, ...).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..accuracy.equivalence import C
from ..fuzz.campaign import CellResult, run_cell
from ..fuzz.rules import RULES
from ..precision import DTYPES
from .args import integer, refuse
from .console import Col, Console, UsageError, json_record
from .outputs import OutputFiles, add_figure_argument

DEFAULT_EXAMPLES = 100


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fuzz",
        help="fuzz the fused rules against their reference order in every dtype",
        description="Fuzz each fused rule against its reference order, per dtype, with the suite's strategies.",
    )
    p.add_argument("rules", nargs="*", metavar="RULE", help=f"rules to fuzz (default all): {', '.join(RULES)}")
    p.add_argument("--dtype", action="append", help=f"storage dtype (repeatable; default all): {', '.join(DTYPES)}")
    p.add_argument(
        "--examples",
        type=integer(minimum=1),
        default=DEFAULT_EXAMPLES,
        metavar="N",
        help=f"examples per rule x dtype (default {DEFAULT_EXAMPLES})",
    )
    p.add_argument("--seed", type=integer(minimum=0), default=0, metavar="N", help="Hypothesis seed (default 0)")
    p.add_argument("--rows", help="input family for every rule (e.g. offset, outlier, masked); default: the rule's mix")
    p.add_argument("--acc", help="accumulation dtype (default: the policy, float32 for 16/8-bit storage)")
    p.add_argument("--strict", action="store_true", help="count the stated hazards as counterexamples (find them)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (docs/cli.md)")
    add_figure_argument(p, "the error-ratio distributions per rule and dtype")
    p.set_defaults(func=run)


#: The unit of every numeric key of `normfuse fuzz --json` (docs/cli.md).
UNITS = {
    "examples": "examples",
    "zero_exact": "examples",
    "rows_evaluated": "rows",
    "unchecked_rows": "rows",
    "unchecked_share": "fraction of rows",
    "hazard_rows": "rows",
    "median_ratio": "1 (fused error / reference error)",
    "scale_bias_u": "unit roundoff u of the example",
    "scale_bias_interval_u": "unit roundoff u of the example",
    "worst_ratio": "1 (fused error / reference error)",
    "worst_abs": "absolute error, in the output's units",
    "worst_budget": "1 (fused error / allowance)",
    "seconds": "s",
}


def _validate(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    rules = list(args.rules) or list(RULES)
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise UsageError(f"unknown rule {unknown[0]!r}; known: {', '.join(RULES)}")
    dtypes = list(args.dtype or DTYPES)
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise UsageError(f"--dtype: unknown dtype {bad[0]!r}; known: {', '.join(DTYPES)}")
    if args.acc is not None and args.acc not in ("float64", "float32", "float16", "bfloat16"):
        raise UsageError(f"--acc must be one of float64, float32, float16, bfloat16; got {args.acc!r}")
    if args.rows is not None:
        for r in rules:
            if args.rows not in RULES[r].row_kinds:
                raise UsageError(f"rule {r!r} has no row family {args.rows!r}; it has: {', '.join(RULES[r].row_kinds)}")
    if args.figure is None:
        refuse(getattr(args, "given", ()), ("--force",), "without --figure")
    return rules, dtypes


def _num(v: float, fmt: str = ".3g") -> str:
    return "inf" if math.isinf(v) else format(v, fmt)


def _result(r: CellResult) -> str:
    """A cell's verdict as the table shows it: pass, FOUND (a counterexample) or skipped."""
    return "skipped" if r.skipped else ("FOUND" if r.found else "pass")


def run(args: argparse.Namespace, console: Console) -> int:
    rules, dtypes = _validate(args)
    with OutputFiles(force=args.force) as outputs:
        figure_path = outputs.add_figure(args.figure)
        results = _campaigns(args, console, rules, dtypes)
        if figure_path is not None:
            from ..plot import fuzz_figure

            fig = fuzz_figure(results, title=_heading(args))
            outputs.write_figure(figure_path, fig)
        code = _report(args, console, results)
        outputs.commit()
    if figure_path is not None:
        console.wrote(figure_path)
    return code


def _campaigns(args: argparse.Namespace, console: Console, rules: list[str], dtypes: list[str]) -> list[CellResult]:
    results: list[CellResult] = []
    with console.progress() as progress:
        task = progress.add_task("fuzz", total=len(rules) * len(dtypes) * args.examples)
        for name in rules:
            for d in dtypes:
                progress.update(task, description=f"{name} {d}")
                done = len(results) * args.examples
                res = run_cell(
                    RULES[name],
                    d,
                    examples=args.examples,
                    seed_value=args.seed,
                    rows=args.rows,
                    acc=args.acc,
                    strict=args.strict,
                    on_example=lambda: progress.advance(task),
                )
                results.append(res)
                progress.update(task, completed=done + args.examples)  # a cell may stop early (counterexample)
    return results


def _heading(args: argparse.Namespace) -> str:
    return (
        f"normfuse fuzz: fused vs reference order against the float64 oracle (seed {args.seed}, "
        f"{args.examples} examples per cell, rows {args.rows or 'mixed'}, acc {args.acc or 'policy'})"
    )


def _report(args: argparse.Namespace, console: Console, results: list[CellResult]) -> int:
    found = [r for r in results if r.found]
    if args.json:
        console.json(
            json_record(
                "fuzz",
                UNITS,
                seed=args.seed,
                examples=args.examples,
                rows=args.rows,
                acc=args.acc,
                strict=args.strict,
                criterion=f"|fused - exact| <= {C:g} * |reference - exact| + atol (per row, max norm)",
                results=[r.as_dict() for r in results],
            )
        )
        return 1 if found else 0
    console.heading(_heading(args))
    for rule in dict.fromkeys(r.rule for r in results):  # one table per rule: each fits 80 columns whole
        console.blank()
        console.table(
            f"{rule}: {RULES[rule].summary}",
            [Col("dtype", "left"), "examples", "fused / ref", "max |err|", "budget", "unchecked rows", "result"],
            [
                (
                    r.dtype,
                    r.examples if not r.skipped else "-",
                    _num(r.worst_ratio),
                    _num(r.worst_abs, ".2e"),
                    _num(r.worst_budget),
                    f"{r.stats.unchecked_share:.0%}" if not r.skipped else "-",
                    _result(r),
                )
                for r in results
                if r.rule == rule
            ],
        )
    console.note(
        "fused / ref: worst E_fused / max(E_ref, one output rounding). max |err|: worst |fused - exact|, in the "
        "output's units. budget: worst E_fused / (c E_ref + atol), > 1 fails unless a stated hazard explains it. "
        "unchecked rows: share of rows whose bound is infinite or at least the result. result: pass, or FOUND (a "
        "counterexample, below)."
    )
    for r in results:
        if r.skipped:
            console.warning(f"{r.rule} in {r.dtype} skipped: {r.skipped}")
        elif r.stats.hazard_rows:
            rows = "1 row" if r.stats.hazard_rows == 1 else f"{r.stats.hazard_rows} rows"
            console.text(f"{r.rule} in {r.dtype}: {rows} in a stated hazard's regime")
        if not r.skipped and r.statistically_checked:
            for problem in r.statistical_problems():
                console.warning(f"{r.rule} in {r.dtype}: {r.stats.unchecked_share:.0%} of rows unchecked and {problem}")
    for cell in found:
        console.blank()
        console.heading(f"Counterexample: {cell.rule} in {cell.dtype} (rows={cell.rows}, acc={cell.acc or 'policy'})")
        console.verbatim(cell.explanation or "")
        console.verbatim(
            "Paste into a test (import numpy as np; from normfuse_ref.precision import DTYPES; "
            "from normfuse_ref.fuzz.rules import Case, RULES, evaluate; from normfuse_ref.fuzz.strategies import "
            "MergeStep; from normfuse_ref.models.llama.config import LlamaConfig), then "
            f"print(evaluate(RULES[{cell.rule!r}], case).explain()):"
        )
        console.verbatim(f"case = {cell.counterexample}")
    cells = "1 cell" if len(results) == 1 else f"{len(results)} cells"
    if found:
        console.error(f"{len(found)} of {len(results)} cells found a counterexample")
        return 1
    examples = sum(r.examples for r in results)
    console.success(f"no counterexample in {examples} example{'s' if examples != 1 else ''} over {cells}")
    return 0
