"""`normfuse fuzz [RULE ...]`: fuzz the fused rules against their reference order, per dtype, outside pytest.

Each rule x dtype cell draws examples with the fuzz suite's strategies (normfuse_ref.fuzz), evaluates the
equivalence criterion |fused - exact| <= c |reference - exact| + atol (normfuse_ref/accuracy/equivalence.py) with
the stated hazards allowed (`--strict`: without them, which is how to find the hazards), and reports: examples
run, the worst error ratio fused/reference, the worst absolute error, the worst share of the allowance used, the
share of rows the allowance cannot check (unchecked: its bound is infinite or at least the result) and how many
rows needed a stated hazard, and the shrunk counterexample if one was found, printed as a `Case(...)` to paste
into a test.

Reproducible: Hypothesis drives the strategies with `@seed(--seed)` and no example database (see
normfuse_ref/fuzz/campaign.py); the same seed, code and Hypothesis version give the same examples.

Exit status: 0 if no counterexample was found, 1 if any cell found one, 2 for a usage error (unknown rule, dtype
or row family, --examples < 1).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..accuracy.equivalence import C
from ..fuzz.campaign import CellResult, run_cell
from ..fuzz.rules import RULES
from ..precision import DTYPES
from .console import Console, UsageError

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
        "--examples", type=int, default=DEFAULT_EXAMPLES, help=f"examples per rule x dtype (default {DEFAULT_EXAMPLES})"
    )
    p.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    p.add_argument("--rows", help="input family for every rule (e.g. offset, outlier, masked); default: the rule's mix")
    p.add_argument("--acc", help="accumulation dtype (default: the policy, float32 for 16/8-bit storage)")
    p.add_argument("--strict", action="store_true", help="count the stated hazards as counterexamples (find them)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def _validate(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    rules = list(args.rules) or list(RULES)
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise UsageError(f"unknown rule {unknown[0]!r}; known: {', '.join(RULES)}")
    dtypes = list(args.dtype or DTYPES)
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise UsageError(f"unknown dtype {bad[0]!r}; known: {', '.join(DTYPES)}")
    if args.examples < 1:
        raise UsageError(f"--examples must be >= 1; got {args.examples}")
    if args.acc is not None and args.acc not in ("float64", "float32", "float16", "bfloat16"):
        raise UsageError(f"--acc must be one of float64, float32, float16, bfloat16; got {args.acc!r}")
    if args.rows is not None:
        for r in rules:
            if args.rows not in RULES[r].row_kinds:
                raise UsageError(f"rule {r!r} has no row family {args.rows!r}; it has: {', '.join(RULES[r].row_kinds)}")
    return rules, dtypes


def _num(v: float, fmt: str = ".3g") -> str:
    return "inf" if math.isinf(v) else format(v, fmt)


def run(args: argparse.Namespace, console: Console) -> int:
    rules, dtypes = _validate(args)
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
    found = [r for r in results if r.found]
    if args.json:
        console.json(
            {
                "seed": args.seed,
                "examples": args.examples,
                "rows": args.rows,
                "acc": args.acc,
                "strict": args.strict,
                "criterion": f"|fused - exact| <= {C:g} * |reference - exact| + atol (per row, max norm)",
                "results": [r.as_dict() for r in results],
            }
        )
        return 1 if found else 0
    console.table(
        f"normfuse fuzz: fused vs reference order against the float64 oracle (seed {args.seed}, "
        f"{args.examples} examples per cell, rows {args.rows or 'mixed'}, acc {args.acc or 'policy'})",
        ["rule", "dtype", "examples", "fused/ref", "max |err|", "budget", "unchecked", "result"],
        [
            (
                r.rule,
                r.dtype,
                r.examples if not r.skipped else "-",
                _num(r.worst_ratio),
                _num(r.worst_abs, ".2e"),
                _num(r.worst_budget),
                f"{r.stats.unchecked_share:.0%}" if not r.skipped else "-",
                "skipped" if r.skipped else ("FOUND" if r.found else "none"),
            )
            for r in results
        ],
        caption=(
            "fused/ref: worst E_fused / max(E_ref, one output rounding). max |err|: worst |fused - exact|. "
            "budget: worst E_fused / (c E_ref + atol), > 1 fails unless a stated hazard explains it. unchecked: "
            "share of rows whose bound is infinite or at least the result."
        ),
    )
    for r in results:
        if r.skipped:
            console.warning(f"{r.rule} in {r.dtype} skipped: {r.skipped}")
        elif r.stats.hazard_rows:
            console.print(
                f"{r.rule} in {r.dtype}: {r.stats.hazard_rows} rows in a stated hazard's regime", markup=False
            )
        if not r.skipped and r.statistically_checked:
            for problem in r.statistical_problems():
                console.warning(f"{r.rule} in {r.dtype}: {r.stats.unchecked_share:.0%} of rows unchecked and {problem}")
    for cell in found:
        console.print(
            f"\n[bold]Counterexample: {cell.rule} in {cell.dtype}[/] (rows={cell.rows}, acc={cell.acc or 'policy'})"
        )
        console.print(cell.explanation or "", markup=False)
        console.print("Paste into a test (import numpy as np; from normfuse_ref.precision import DTYPES;", markup=False)
        console.print(
            "from normfuse_ref.fuzz.rules import Case, RULES, evaluate; from normfuse_ref.fuzz.strategies import "
            "MergeStep; from normfuse_ref.models.llama.config import LlamaConfig), then "
            f"print(evaluate(RULES[{cell.rule!r}], case).explain()):",
            markup=False,
        )
        console.print(f"case = {cell.counterexample}", markup=False, soft_wrap=True)
    if found:
        console.error(f"{len(found)} of {len(results)} cells found a counterexample")
        return 1
    console.success(f"no counterexample in {sum(r.examples for r in results)} examples over {len(results)} cells")
    return 0
