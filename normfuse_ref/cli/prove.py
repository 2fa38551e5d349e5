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
import textwrap
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .console import Col, Console, json_record

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
            "(a plausible wrong rewrite) must be rejected. Prints one verdict per proof; --verbose adds the "
            "derivations (at symbolic n, or at --n) step by step."
        ),
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="proofs to run (default: all)")
    p.add_argument(
        "--n",
        default="all",
        metavar="N",
        help="dimension to check: 'symbolic', a concrete n (1..6), or 'all' (default: symbolic, then 1..6)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="after the verdicts, show each derivation step by step with its two witnesses",
    )
    p.add_argument("--latex", action="store_true", help="show the derivations' equations as LaTeX (implies --verbose)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the proofs as JSON: each one's steps, negative controls and verdict per dimension (docs/cli.md)",
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
        console.json(
            json_record(
                "prove",
                UNITS,
                passed=passed,
                proofs=[_as_json(proofs, name, checked, latex=args.latex) for name, checked in results.items()],
            )
        )
        return 0 if passed else 1
    _summary(console, results, dims)
    if args.verbose or args.latex:
        for name, checked in results.items():
            console.blank()
            _show(console, proofs, name, checked[0], latex=args.latex)
    failed = [name for name, checked in results.items() if not all(p.passed for p in checked)]
    if failed:
        console.error(f"{len(failed)} of {len(results)} proofs failed: {', '.join(failed)}")
        return 1
    console.success("1 proof passed" if len(results) == 1 else f"all {len(results)} proofs passed")
    if not (args.verbose or args.latex):
        console.note("normfuse prove --verbose shows each derivation step by step.")
    return 0


#: The unit of every numeric key of `normfuse prove --json` (docs/cli.md).
UNITS = {
    "steps_held": "steps",
    "rejected": "negative controls",
    "max_difference": "absolute difference of the proof's right-hand side and the library's result (float64)",
}


# ---------------------------------------------------------------------------------------------------------------
# terminal output
# ---------------------------------------------------------------------------------------------------------------


def _show(console: Console, proofs: ModuleType, name: str, proof: Proof, *, latex: bool) -> None:
    """One proof's derivation: each step with its two witnesses, then its negative controls. An equation is
    wrapped at spaces only (an identifier is never cut) and indented under its step."""
    where = "symbolic n" if proof.n is None else f"n = {proof.n}"
    console.heading(f"{name} ({where}): {proofs.PROOFS[name].TITLE}")
    if latex:
        _show_latex(console, proofs, proof)
        return
    for number, r in enumerate(proof.steps, 1):
        console.text(f"  {number}. {r.name}: symbolic {MARK[r.symbolic]}, numeric {MARK[r.numeric]}")
        _equation(console, proofs.equation_text(r.step))
    for r in proof.negative_controls:
        console.text(
            f"  negative control, {r.name}: symbolic {MARK[r.symbolic]}, numeric {MARK[r.numeric]}, "
            f"rejected {MARK[r.rejected]}"
        )
        _equation(console, proofs.equation_text(r.step))


def _equation(console: Console, text: str) -> None:
    """An equation under its step: its "where" clause on a line of its own, each wrapped at spaces."""
    indent = "       "
    main, _, where = text.partition("   where ")
    for part, lead in ((main, indent), (f"where {where}" if where else "", indent + "  ")):
        for line in textwrap.wrap(
            part, max(20, console.width - len(lead)), break_long_words=False, break_on_hyphens=False
        ):
            console.verbatim(lead + line)


def _show_latex(console: Console, proofs: ModuleType, proof: Proof) -> None:
    """Each step as a LaTeX comment line (name, witnesses) and an equation line, never wrapped."""
    for number, r in enumerate(proof.steps, 1):
        console.verbatim(f"% {number}. {r.name}: symbolic {MARK[r.symbolic]}, numeric {MARK[r.numeric]}")
        console.verbatim(proofs.equation_latex(r.step))
    for r in proof.negative_controls:
        console.verbatim(f"% {r.name}: rejected {MARK[r.rejected]}")
        console.verbatim(proofs.equation_latex(r.step, r"\neq" if r.rejected else "="))


def _summary(console: Console, results: dict[str, list[Proof]], dims: list[int | None]) -> None:
    """The verdicts: one row per proof, the symbolic-n check, the concrete n checked (steps and the tie to the
    code), the negative controls rejected, and the result."""
    concrete = [n for n in dims if n is not None]
    columns: list[str | Col] = [Col("proof", "left")]
    if None in dims:
        columns.append(Col("symbolic n", "left"))
    if concrete:
        label = f"n = {concrete[0]}" if len(concrete) == 1 else f"n = {concrete[0]}..{concrete[-1]}"
        columns.append(Col(label, "left"))
    columns += [Col("controls rejected", "left"), Col("result", "left")]
    rows = []
    for name, checked in results.items():
        by_n = {p.n: p for p in checked}
        cells = [name]
        if None in dims:
            cells.append(MARK[by_n[None].passed] if None in by_n else "none")  # "none": no symbolic-n derivation
        if concrete:
            held = sum(by_n[n].passed for n in concrete if n in by_n)
            cells.append(f"{held}/{len(concrete)} {MARK[held == len(concrete)]}")
        controls = [r for p in checked for r in p.negative_controls]
        cells.append(f"{sum(r.rejected for r in controls)}/{len(controls)}")
        cells.append("pass" if all(p.passed for p in checked) else "FAILED")
        rows.append(cells)
    console.table(
        "normfuse prove: each identity checked symbolically and numerically, step by step",
        columns,
        rows,
        caption="symbolic n: the derivation for every n at once (none: SymPy cannot do it; the concrete n are the "
        "check). n = a..b: the dimensions checked with explicit matrices, each also tied to the library function it "
        "specifies. controls rejected: plausible wrong rewrites the checks must reject.",
    )


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
