"""`normfuse prove [NAME ...]`: run the SymPy derivations in proofs/ and show every step with its two witnesses.

Each step of a derivation is checked twice: symbolically (simplify(lhs - rhs) == 0) and numerically (a seeded
random substitution, 50 digits). Each identity is checked at symbolic n and at n = 1..6 with explicit matrices,
and its negative controls (plausible wrong rewrites) must be rejected. Exit status: 0 if every proof passes, 1 if
any step fails or any control is accepted, 2 for an unknown proof name or a bad --n.

The proofs live in `proofs/` at the repository root; the wheel ships them as `normfuse_ref._proofs` (`load_proofs`).
At every concrete n >= 2 a proof is also tied to the code it specifies (its right-hand side against the library
function on random float64 inputs); a disagreement fails it.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .console import Console

if TYPE_CHECKING:  # the same package as normfuse_ref._proofs, seen from the checkout
    from proofs import Proof, StepResult

#: Where the proofs are, in order: an installed wheel ships them inside the package (pyproject's force-include);
#: a checkout has the top-level package `proofs`, importable from the repository root (an editable install puts
#: it on sys.path).
PROOF_PACKAGES = ("normfuse_ref._proofs", "proofs")

MARK = {True: "✓", False: "✗"}


class ProofsNotFoundError(Exception):
    """Neither the installed `normfuse_ref._proofs` nor a checkout's `proofs` could be imported."""


def load_proofs() -> ModuleType:
    """The first of PROOF_PACKAGES that imports and is normfuse's (it has the registry PROOFS)."""
    for name in PROOF_PACKAGES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        if hasattr(module, "PROOFS"):
            return module
    raise ProofsNotFoundError(f"cannot find the proofs: none of {', '.join(PROOF_PACKAGES)} can be imported")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "prove",
        help="check the SymPy derivations of the fused rules, step by step",
        description=(
            "Run the SymPy derivations in proofs/: every step is checked symbolically (simplify(lhs - rhs) == 0) "
            "and numerically (seeded substitution), at symbolic n and at n = 1..6, and every negative control "
            "(a plausible wrong rewrite) must be rejected. Shows the derivation at symbolic n (or at --n)."
        ),
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="proofs to run (default: all)")
    p.add_argument(
        "--n",
        default="all",
        metavar="N",
        help="dimension to check: 'symbolic', a concrete n (1..6), or 'all' (default: symbolic, then 1..6)",
    )
    p.add_argument("--latex", action="store_true", help="print the equations as LaTeX")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per proof: name, passed, steps, negative_controls, dimensions",
    )
    p.set_defaults(func=run)


def _dimensions(choice: str, concrete: tuple[int, ...]) -> list[int | None] | None:
    """--n as a list of dimensions (None is symbolic n), or None if it is not a valid choice."""
    if choice == "all":
        return [None, *concrete]
    if choice == "symbolic":
        return [None]
    if choice.isdigit() and int(choice) in concrete:
        return [int(choice)]
    return None


def run(args: argparse.Namespace, console: Console) -> int:
    try:
        proofs = load_proofs()
    except ProofsNotFoundError as exc:
        console.error(str(exc))
        return 2
    names: list[str] = list(args.names) or list(proofs.PROOFS)
    unknown = [name for name in names if name not in proofs.PROOFS]
    if unknown:
        console.error(f"unknown proof {unknown[0]!r}; choose from: {', '.join(proofs.PROOFS)}")
        return 2
    dims = _dimensions(str(args.n), proofs.CONCRETE_N)
    if dims is None:
        console.error(
            f"--n must be 'symbolic', 'all' or one of {', '.join(map(str, proofs.CONCRETE_N))}; got {args.n!r}"
        )
        return 2

    no_symbolic = [name for name in names if dims == [None] and not proofs.PROOFS[name].SYMBOLIC_N]
    if no_symbolic:
        console.error(f"{no_symbolic[0]} has no symbolic-n derivation (SymPy cannot do it); use --n 1..6 or all")
        return 2

    todo = [(name, n) for name in names for n in dims if n is not None or proofs.PROOFS[name].SYMBOLIC_N]
    results: dict[str, list[Proof]] = {name: [] for name in names}
    with console.progress() as progress:
        task = progress.add_task("proving", total=len(todo))
        for name, n in todo:
            progress.update(task, description=f"{name} ({'symbolic n' if n is None else f'n = {n}'})")
            results[name].append(proofs.prove(name, n))
            progress.advance(task)

    passed = all(p.passed for checked in results.values() for p in checked)
    if args.json:
        console.json([_as_json(proofs, name, checked, latex=args.latex) for name, checked in results.items()])
        return 0 if passed else 1
    for name, checked in results.items():
        _show(console, proofs, name, checked[0], latex=args.latex)
    _summary(console, results, dims)
    failed = [name for name, checked in results.items() if not all(p.passed for p in checked)]
    if failed:
        console.error(f"{len(failed)} of {len(results)} proofs failed: {', '.join(failed)}")
        return 1
    console.success("1 proof passed" if len(results) == 1 else f"all {len(results)} proofs passed")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# terminal output
# ---------------------------------------------------------------------------------------------------------------


def _show(console: Console, proofs: ModuleType, name: str, proof: Proof, *, latex: bool) -> None:
    """One proof's derivation: its steps and its negative controls, each with both witnesses."""
    where = "symbolic n" if proof.n is None else f"n = {proof.n}"
    console.print(Text(f"{name} ({where}): {proofs.PROOFS[name].TITLE}", style="bold"))
    if latex:
        _show_latex(console, proofs, proof)
        return
    steps = Table(show_header=True, header_style="bold", expand=False)
    for column in ("#", "step", "equation", "symbolic", "numeric"):
        steps.add_column(column, overflow="fold")
    for number, r in enumerate(proof.steps, 1):
        steps.add_row(
            str(number), Text(r.name), Text(proofs.equation_text(r.step)), _mark(r.symbolic), _mark(r.numeric)
        )
    console.print(steps)
    if proof.negative_controls:
        controls = Table(show_header=True, header_style="bold", expand=False)
        for column in ("negative control", "equation", "symbolic", "numeric", "rejected"):
            controls.add_column(column, overflow="fold")
        for r in proof.negative_controls:
            controls.add_row(
                Text(r.name), Text(proofs.equation_text(r.step)), _mark(r.symbolic), _mark(r.numeric), _mark(r.rejected)
            )
        console.print(controls)
    console.print()


def _show_latex(console: Console, proofs: ModuleType, proof: Proof) -> None:
    """Each step as a LaTeX comment line (name, witnesses) and an equation line, never wrapped."""
    for number, r in enumerate(proof.steps, 1):
        _latex_line(console, f"% {number}. {r.name}: symbolic {MARK[r.symbolic]}, numeric {MARK[r.numeric]}")
        _latex_line(console, proofs.equation_latex(r.step))
    for r in proof.negative_controls:
        _latex_line(console, f"% {r.name}: rejected {MARK[r.rejected]}")
        _latex_line(console, proofs.equation_latex(r.step, r"\neq" if r.rejected else "="))
    console.print()


def _latex_line(console: Console, line: str) -> None:
    console.print(Text(line), soft_wrap=True)


def _mark(ok: bool) -> Text:
    return Text(MARK[ok], style="green" if ok else "bold red")


def _summary(console: Console, results: dict[str, list[Proof]], dims: list[int | None]) -> None:
    """The pass/fail table: one row per proof, one column per checked dimension."""
    columns = ["proof", *("symbolic n" if n is None else f"n={n}" for n in dims), "controls", "result"]
    rows = []
    for name, checked in results.items():
        by_n = {p.n: p for p in checked}
        cells = [MARK[by_n[n].passed] if n in by_n else "-" for n in dims]
        controls = [r for p in checked for r in p.negative_controls]
        rejected = f"{sum(r.rejected for r in controls)}/{len(controls)} rejected"
        ok = all(p.passed for p in checked)
        rows.append([escape(name), *cells, rejected, "passed" if ok else "FAILED"])
    console.table("proofs", columns, rows)


# ---------------------------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------------------------


def _step_json(proofs: ModuleType, r: StepResult, *, latex: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": r.name,
        "symbolic": r.symbolic,
        "numeric": r.numeric,
        "equation": proofs.equation_text(r.step),
        "comment": r.step.comment,
    }
    if latex:
        record["latex"] = proofs.equation_latex(r.step)
    return record


def _as_json(proofs: ModuleType, name: str, checked: list[Proof], *, latex: bool) -> dict[str, Any]:
    """One proof: the derivation at the first checked dimension, its controls, and a pass/fail per dimension."""
    head = checked[0]
    return {
        "name": name,
        "title": proofs.PROOFS[name].TITLE,
        "passed": all(p.passed for p in checked),
        "n": "symbolic" if head.n is None else head.n,
        "steps": [_step_json(proofs, r, latex=latex) for r in head.steps],
        "negative_controls": [
            {**_step_json(proofs, r, latex=latex), "rejected": r.rejected} for r in head.negative_controls
        ],
        "dimensions": [
            {
                "n": "symbolic" if p.n is None else p.n,
                "passed": p.passed,
                "steps": len(p.steps),
                "steps_held": sum(r.holds for r in p.steps),
                "negative_controls": len(p.negative_controls),
                "rejected": sum(r.rejected for r in p.negative_controls),
                "code": None
                if p.code is None
                else {"function": p.code.code, "max_difference": p.code.error, "agrees": p.code.passed},
            }
            for p in checked
        ],
    }
