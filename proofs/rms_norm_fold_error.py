"""RMSNorm -> linear with a *rounded* fold: the fused order's own error term, and why a wider fold removes it.

The fused rule (proofs/rms_norm_linear.py) computes s (x (g ⊙ F)). A machine stores the fold rounded,
W = g ⊙ F + Delta, with Delta_ik = u theta_ik g_i F_ik, |theta| <= 1, u the unit roundoff of the fold's format.
The reference order instead rounds its normalised row h = s x ⊙ g to storage, h + epsilon, and keeps F as stored.
Exactly:

    fused - exact      = s x Delta         = u s Sum_i x_i theta_ik g_i F_ik      (the fold's rounding)
    reference - exact  = epsilon F                                               (the activations' rounding)

Both are one rounding per product term, so in the weights' own format the orders are alike. But when weights are
narrower than activations (fp8 weights, bfloat16 activations) the fused order rounds g ⊙ F at the *weights'* unit
roundoff, a rounding the reference never makes (F is already on the fp8 grid; g ⊙ F is not). The term is linear in
u, so storing the fold one format wider (`prepare(..., fold=partial(fold_rms_norm, dtype=...))`, the "wide-fold"
mitigation of the accuracy study) divides it by u_narrow / u_wide: 2^-4 -> 2^-8 for fp8 weights folded in bfloat16.
It also ends hazard 2 (docs/hazards.md): a product g_i F_ik below the narrow format's smallest normal number is
rounded on its subnormal grid, a relative error up to 1/2 instead of u.

Derivation, symbolic n, column k (s opaque: every step holds for any s):

    1. s Sum_i x_i W_ik - s Sum_i x_i g_i F_ik       = s Sum_i x_i Delta_ik                 the fused order's error
    2. s Sum_i x_i (u theta_ik g_i F_ik)              = u (s Sum_i x_i theta_ik g_i F_ik)    linear in u
    3. (s x_i g_i + epsilon_i) F_ik summed - exact    = Sum_i epsilon_i F_ik                 the reference's error
    4. fold in a format v times finer (u -> u / v)    = the error divided by v

Concrete n = 1 .. 6 (two output columns): the same with explicit matrices.

Negative controls:
- the fold's rounding cancels in the matmul: s x Delta == 0;
- the fused error does not depend on the fold's format: u (s x (theta ⊙ gF)) == (u / 2) (s x (theta ⊙ gF)).

Run `python proofs/rms_norm_fold_error.py` to print the checked derivation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import sympy as sp

if not __package__:  # run as `python proofs/rms_norm_fold_error.py` (PEP 366, as the other proofs)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "proofs"

from ._display import run_as_script
from ._steps import Definitions, Proof, Step, Tie, run_proof

NAME = "rms_norm_fold_error"
TITLE = "RMSNorm -> linear with a rounded fold W = g ⊙ F + Delta: error s x Delta, linear in the fold's unit roundoff"
SYMBOLIC_N = True
SECTION = 'docs/hazards.md, hazard 2, and docs/accuracy.md "Mitigations"'

#: width of F in the concrete-n proofs
M = 2

u, v = sp.Symbol("u", positive=True), sp.Symbol("v", positive=True)  # unit roundoff; how much finer the wide fold is
s = sp.Symbol("s", positive=True)  # the deferred scale 1/rms, kept opaque

n = sp.Symbol("n", integer=True, positive=True)
i, k = sp.symbols("i k", integer=True, nonnegative=True)
x, g, F = sp.IndexedBase("x"), sp.IndexedBase("g"), sp.IndexedBase("F")
D, W, theta, e = sp.IndexedBase("Delta"), sp.IndexedBase("W"), sp.IndexedBase("theta"), sp.IndexedBase("epsilon")


def _sum(body: sp.Expr) -> sp.Expr:
    """Sum over one row, i = 0 .. n-1."""
    return sp.Sum(body, (i, 0, n - 1))


def _rounded(unit: sp.Expr) -> Definitions:
    """The stored fold at unit roundoff `unit`: W = g ⊙ F + Delta, Delta_ik = unit theta_ik g_i F_ik."""
    return ((D[i, k], unit * theta[i, k] * g[i] * F[i, k]), (W[i, k], g[i] * F[i, k] + D[i, k]))


def _symbolic_steps() -> list[Step]:
    exact = s * _sum(x[i] * g[i] * F[i, k])
    err = s * _sum(x[i] * theta[i, k] * g[i] * F[i, k])  # the error per unit of u
    return [
        Step(
            "the fused order's error",
            s * _sum(x[i] * W[i, k]) - exact,
            s * _sum(x[i] * D[i, k]),
            f"W = g ⊙ F + Delta [{SECTION}]",
            _rounded(u)[1:],
        ),
        Step("linear in u", s * _sum(x[i] * D[i, k]), u * err, f"Delta = u theta ⊙ g ⊙ F [{SECTION}]", _rounded(u)),
        Step(
            "the reference's error",
            _sum((s * x[i] * g[i] + e[i]) * F[i, k]) - exact,
            _sum(e[i] * F[i, k]),
            f"the reference rounds h = s x ⊙ g, and keeps F as stored [{SECTION}]",
        ),
        Step(
            "a finer fold divides the error",
            s * _sum(x[i] * W[i, k]) - exact,
            (u * err) / v,
            f"the fold stored at unit roundoff u / v [{SECTION}]",
            _rounded(u / v),
        ),
    ]


def _symbolic_controls() -> list[Step]:
    return [
        Step(
            "WRONG: the fold's rounding cancels", s * _sum(x[i] * D[i, k]), sp.Integer(0), f"[{SECTION}]", _rounded(u)
        ),
        Step(
            "WRONG: the error ignores the fold's format",
            s * _sum(x[i] * D[i, k]),
            (u / 2) * s * _sum(x[i] * theta[i, k] * g[i] * F[i, k]),
            f"[{SECTION}]",
            _rounded(u),
        ),
    ]


def _concrete(size: int) -> dict[str, sp.Matrix]:
    xs = sp.Matrix(1, size, lambda _, q: sp.Symbol(f"x{q}"))  # (1, n)
    G = sp.diag(*[sp.Symbol(f"g{q}") for q in range(size)])  # (n, n)
    Fs = sp.Matrix(size, M, lambda p, q: sp.Symbol(f"F{p}_{q}"))  # (n, M)
    th = sp.Matrix(size, M, lambda p, q: sp.Symbol(f"theta{p}_{q}"))  # (n, M)
    eps = sp.Matrix(1, size, lambda _, q: sp.Symbol(f"epsilon{q}"))  # (1, n)
    gF = G * Fs  # (n, M)
    return {"x": xs, "G": G, "F": Fs, "gF": gF, "Delta": u * th.multiply_elementwise(gF), "theta": th, "eps": eps}


def _concrete_steps(size: int) -> list[Step]:
    m = _concrete(size)
    xs, gF, Ds = m["x"], m["gF"], m["Delta"]
    exact = s * xs * gF
    err = s * xs * m["theta"].multiply_elementwise(gF)
    return [
        Step("the fused order's error", s * xs * (gF + Ds) - exact, s * xs * Ds, f"[{SECTION}]"),
        Step("linear in u", s * xs * Ds, u * err, f"[{SECTION}]"),
        Step("the reference's error", (s * xs * m["G"] + m["eps"]) * m["F"] - exact, m["eps"] * m["F"], f"[{SECTION}]"),
        Step("a finer fold divides the error", s * xs * (gF + Ds / v) - exact, (u * err) / v, f"[{SECTION}]"),
    ]


def _concrete_controls(size: int) -> list[Step]:
    m = _concrete(size)
    xs, gF, Ds = m["x"], m["gF"], m["Delta"]
    return [
        Step("WRONG: the fold's rounding cancels", s * xs * Ds, sp.zeros(1, M), f"[{SECTION}]"),
        Step(
            "WRONG: the error ignores the fold's format",
            s * xs * Ds,
            (u / 2) * s * xs * m["theta"].multiply_elementwise(gF),
            f"[{SECTION}]",
        ),
    ]


def steps(size: int | None) -> list[Step]:
    """The derivation: symbolic n when size is None, else explicit matrices of that size."""
    return _symbolic_steps() if size is None else _concrete_steps(size)


def negative_controls(size: int | None) -> list[Step]:
    """Plausible wrong claims; each must be rejected."""
    return _symbolic_controls() if size is None else _concrete_controls(size)


def tie(size: int) -> Tie:
    """exact + s x Delta at n = size (s = 1/sqrt(mean x^2 + eps) written out), against the library's fused rule on
    the stored fold W = g ⊙ F + Delta."""
    from normfuse_ref import fusion

    m = _concrete(size)
    xs, gF, Ds = m["x"], m["gF"], m["Delta"]
    eps = sp.Symbol("epsilon", positive=True)
    rms = 1 / sp.sqrt(sum(v * v for v in xs) / size + eps)
    expr = (s * xs * gF + s * xs * Ds).xreplace({s: rms})  # (1, M)
    inputs = {"x": xs, "g": [m["G"][q, q] for q in range(size)], "F": m["F"], "theta": m["theta"], "u": u, "eps": eps}

    def call(a: dict[str, Any]) -> object:
        W = fusion.fold_rms_norm(a["g"], a["F"], dtype="float64")
        W = W + a["u"] * a["theta"] * W  # Delta = u theta ⊙ (g ⊙ F)
        return fusion.rms_norm_linear_folded(a["x"], W, a["eps"])

    return Tie("fusion.rms_norm_linear_folded", inputs, expr, call)


def prove(size: int | None = None) -> Proof:
    """Check every step and negative control at symbolic n (None) or one concrete n, and the tie to the code."""
    return run_proof(NAME, size, steps(size), negative_controls(size), tie=tie)


if __name__ == "__main__":
    raise SystemExit(run_as_script(NAME, TITLE, prove, symbolic=SYMBOLIC_N))
