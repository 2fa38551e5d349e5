"""How a step reads, as plain text and as LaTeX, and the printout of `python -m proofs <name>`.

Shared by the proof files (run as scripts) and by `normfuse prove`, so both show the same equations.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy.printing.str import StrPrinter

from ._steps import CONCRETE_N, Proof, Step

MARK = {True: "✓", False: "✗"}


class _Printer(StrPrinter):
    """SymPy's plain-text printer, on one line: sums as Σ_{i=lo..hi}(body), matrices as [a, b; c, d]."""

    def _print_MatrixBase(self, expr: sp.MatrixBase) -> str:
        """On one line, rows separated by ';': [a, b; c, d]."""
        rows = "; ".join(", ".join(self._print(expr[r, c]) for c in range(expr.cols)) for r in range(expr.rows))
        return f"[{rows}]"

    def _print_Sum(self, expr: sp.Sum) -> str:
        body = self._print(expr.function)
        for var, lo, hi in reversed(expr.limits):
            body = f"Σ_{{{self._print(var)}={self._print(lo)}..{self._print(hi)}}}({body})"
        return body


def _text(e: sp.Basic) -> str:
    return str(_Printer().doprint(e))


def equation_text(step: Step) -> str:
    """`lhs = rhs`, then `where symbol = definition, ...` if the step has definitions."""
    text = f"{_text(step.lhs)} = {_text(step.rhs)}"
    if where := step.used_definitions():
        text += "   where " + ", ".join(f"{_text(sym)} = {_text(d)}" for sym, d in where)
    return text


def equation_latex(step: Step, relation: str = "=") -> str:
    r"""`lhs = rhs` as LaTeX, then `\quad\text{where } symbol = definition, ...` if the step has definitions.

    `relation` replaces the `=` between the two sides (`\neq` for a rejected negative control).
    """
    text = f"{sp.latex(step.lhs)} {relation} {sp.latex(step.rhs)}"
    if where := step.used_definitions():
        text += r" \quad \text{where } " + ", \\; ".join(f"{sp.latex(sym)} = {sp.latex(d)}" for sym, d in where)
    return text


def where_label(n: int | None) -> str:
    """'symbolic n' or 'n = 3'."""
    return "symbolic n" if n is None else f"n = {n}"


def format_derivation(title: str, proof: Proof) -> str:
    """The derivation as numbered steps, each with its reason, equation and both witnesses, then the controls."""
    lines = [f"{proof.name} ({where_label(proof.n)})", f"  {title}", ""]
    for number, r in enumerate(proof.steps, 1):
        lines += [
            f"  {number}. {r.name}: {r.step.comment}",
            f"       {equation_text(r.step)}",
            f"       symbolic {MARK[r.symbolic]}  numeric {MARK[r.numeric]}",
        ]
    lines += ["", "  negative controls (each must be rejected: both witnesses say 'not equal'):"]
    for r in proof.negative_controls:
        lines += [
            f"  - {r.name}: {r.step.comment}",
            f"       {equation_text(r.step)}",
            f"       symbolic {MARK[r.symbolic]}  numeric {MARK[r.numeric]}  rejected {MARK[r.rejected]}",
        ]
    return "\n".join(lines)


def summary_line(proof: Proof) -> str:
    """One line per checked dimension: how many steps held and controls were rejected."""
    steps = f"{sum(r.holds for r in proof.steps)}/{len(proof.steps)} steps hold"
    if proof.negative_controls:
        controls = (
            f"{sum(r.rejected for r in proof.negative_controls)}/{len(proof.negative_controls)} controls rejected"
        )
    else:
        controls = "no controls at this n"
    code = ""
    if proof.code is not None:
        code = f", {proof.code.code} off by {proof.code.error:.1e} {MARK[proof.code.passed]}"
    return f"{where_label(proof.n)}: {steps}, {controls}{code}  {MARK[proof.passed]}"


def run_as_script(name: str, title: str, prove: Callable[[int | None], Proof], *, symbolic: bool) -> int:
    """Print the derivation (symbolic n if available, else the smallest concrete n), then a line per concrete n.

    Returns the exit status: 0 if every proof passed, 1 otherwise.
    """
    headline = prove(None) if symbolic else prove(CONCRETE_N[0])
    print(format_derivation(title, headline))
    print()
    proofs = [headline, *(prove(size) for size in CONCRETE_N if size != headline.n)]
    for proof in proofs:
        print(f"  {summary_line(proof)}")
    passed = all(p.passed for p in proofs)
    print(f"\n{name}: {'PASSED' if passed else 'FAILED'}")
    return 0 if passed else 1
