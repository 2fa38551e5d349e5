"""LayerNorm -> linear with a *rounded* fold: where the fused order's extra error comes from, and three mitigations.

The fused rule (proofs/layer_norm_linear.py) computes s (x F') + b with F' = (I - E/n) Gamma F. A machine stores F'
rounded, W = F' + Delta (Delta: the rounding of each entry to the weights' format). Then, exactly,

    fused - reference  =  s x Delta  =  s (x - mu) Delta  +  mu s r,      r = 1 Delta = 1 W   (column sums)

The first term scales with sigma (s (x - mu) has unit size), like the reference order's own rounding. The second,
mu s r, scales with |mu|/sigma: that is hazard 1 of docs/hazards.md (the centring folded into F' undone by its
rounding: W no longer has zero column sums, so the matmul no longer discards the mean). The mitigations, options of
`normfuse_ref.fusion.layer_norm_linear_folded`:

- **compensate**: store r = 1 W (the column sums of the *stored* fold, computed offline) and return
  s (x W - mu r) + b. mu is computed for the variance anyway, beside the matmul, so no collective enters the
  matmul's path; the error becomes s (x - mu) Delta, which does not depend on mu at all (shift x by any c: it is
  unchanged).
- **subtract**: the SIMD units subtract mu before the matmul, s ((x - mu) W) + b: the same number in exact
  arithmetic as compensation, but the matmul now waits for the mean collective.
- **wide fold**: store W in a wider format; the hazard term mu s r is linear in Delta, so it shrinks by the ratio
  of the unit roundoffs (bfloat16 -> float32: 2^-8 -> 2^-24).

Derivation, symbolic n, column k (W_ik = F'_ik + Delta_ik, r_k = Sum_i W_ik, ref_k = (layer_norm(x) F)_k with
the deferred scale s kept opaque: every step holds for any s):

    1. Sum_i W_ik                    = Sum_i Delta_ik                          F' has zero column sums
    2. s Sum_i x_i W_ik + b_k - ref_k = s Sum_i x_i Delta_ik                    the fused order's error
    3. s Sum_i x_i Delta_ik           = s Sum_i (x_i - mu) Delta_ik + mu s r_k   centred part + hazard term
    4. s Sum_i (x_i - mu) W_ik        = s (Sum_i x_i W_ik - mu r_k)              compensation is the centred product
    5. s (Sum_i x_i W_ik - mu r_k) + b_k - ref_k = s Sum_i (x_i - mu) Delta_ik   compensation removes mu s r_k
    6. s Sum_i ((x_i + c) - mean(x + c)) Delta_ik = s Sum_i (x_i - mu) Delta_ik  ... its error ignores the mean
    7. mu s Sum_i (u theta_ik F'_ik)  = u (mu s Sum_i theta_ik F'_ik)            hazard term linear in the unit roundoff

(Step 7 writes each rounding as Delta_ik = u theta_ik F'_ik, |theta| <= 1: a wider fold, smaller u, scales the term
down by exactly the ratio.) Concrete n = 1 .. 6 (two output columns): the same with explicit matrices.

Negative controls (wrong claims the checker must reject):
- the fused order's error is free of mu: s x Delta == s (x - mu) Delta;
- compensation with the sign flipped: s (x W + mu r) + b - ref == s (x - mu) Delta;
- compensating with the exact fold's column sums (zero) instead of the stored fold's: s (x W - mu 1 F') + b - ref
  == s (x - mu) Delta.

Run `python proofs/layer_norm_fold_error.py` to print the checked derivation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import sympy as sp

if not __package__:  # run as `python proofs/layer_norm_fold_error.py` (PEP 366, as the other proofs)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "proofs"

from ._display import run_as_script
from ._steps import Definitions, Proof, Step, Tie, run_proof
from .layer_norm_linear import _stats

NAME = "layer_norm_fold_error"
TITLE = (
    "LayerNorm -> linear with a rounded fold W = F' + Delta: error s x Delta = s (x - mu) Delta + mu s r; mitigations"
)
SYMBOLIC_N = True
SECTION = 'docs/hazards.md, hazard 1, and docs/accuracy.md "Mitigations"'

#: width of F in the concrete-n proofs
M = 2

mu, c, u = sp.symbols("mu c u", real=True)  # row mean, any constant shift, the fold's unit roundoff
s = sp.Symbol("s", positive=True)  # the deferred scale 1/sigma, kept opaque

n = sp.Symbol("n", integer=True, positive=True)
i, j, k = sp.symbols("i j k", integer=True, nonnegative=True)
x, gamma, beta, F = sp.IndexedBase("x"), sp.IndexedBase("gamma"), sp.IndexedBase("beta"), sp.IndexedBase("F")
F_, D, W, theta = sp.IndexedBase("F'"), sp.IndexedBase("Delta"), sp.IndexedBase("W"), sp.IndexedBase("theta")
b, r, ref = sp.IndexedBase("b"), sp.IndexedBase("r"), sp.IndexedBase("ref")


def _sum(body: sp.Expr, index: sp.Symbol = i) -> sp.Expr:
    """Sum over one row, index = 0 .. n-1."""
    return sp.Sum(body, (index, 0, n - 1))


MEAN: Definitions = ((mu, _sum(x[j], j) / n),)
#: the exact fold, the stored (rounded) fold, its column sums, the bias, and the reference order's output
FOLD: Definitions = (
    (F_[i, k], gamma[i] * F[i, k] - _sum(gamma[j] * F[j, k], j) / n),
    (W[i, k], F_[i, k] + D[i, k]),
    (r[k], _sum(W[i, k])),
    (b[k], _sum(beta[i] * F[i, k])),
    (ref[k], s * _sum((x[i] - mu) * gamma[i] * F[i, k]) + _sum(beta[i] * F[i, k])),
)


def _symbolic_steps() -> list[Step]:
    err_centred = s * _sum((x[i] - mu) * D[i, k])
    return [
        Step("stored column sums are the rounding's", _sum(W[i, k]), _sum(D[i, k]), f"1 F' = 0 [{SECTION}]", FOLD),
        Step(
            "the fused order's error",
            s * _sum(x[i] * W[i, k]) + b[k] - ref[k],
            s * _sum(x[i] * D[i, k]),
            f"s x F' + b is the reference exactly (proofs/layer_norm_linear.py) [{SECTION}]",
            MEAN + FOLD,
        ),
        Step(
            "centred part + the hazard term",
            s * _sum(x[i] * D[i, k]),
            err_centred + mu * s * r[k],
            f"x = (x - mu) + mu; r = 1 W = 1 Delta [{SECTION}]",
            FOLD,
        ),
        Step(
            "compensation is the centred product",
            s * _sum((x[i] - mu) * W[i, k]),
            s * (_sum(x[i] * W[i, k]) - mu * r[k]),
            f"mu r = mu 1 W, for any stored W: no collective before the matmul [{SECTION}]",
            FOLD,
        ),
        Step(
            "compensation removes mu s r",
            s * (_sum(x[i] * W[i, k]) - mu * r[k]) + b[k] - ref[k],
            err_centred,
            f"what is left scales with sigma, like the reference's own rounding [{SECTION}]",
            MEAN + FOLD,
        ),
        Step(
            "the compensated error ignores the mean",
            s * _sum(((x[i] + c) - _sum(x[j] + c, j) / n) * D[i, k]),
            err_centred,
            f"x + c has mean mu + c (and the same s): |mu|/sigma no longer matters [{SECTION}]",
            MEAN,
        ),
        Step(
            "hazard term linear in the unit roundoff",
            mu * s * _sum(u * theta[i, k] * F_[i, k]),
            u * (mu * s * _sum(theta[i, k] * F_[i, k])),
            f"Delta_ik = u theta_ik F'_ik: a wider fold scales it by u_wide / u [{SECTION}]",
        ),
    ]


def _symbolic_controls() -> list[Step]:
    return [
        Step(
            "WRONG: the fused error is free of mu",
            s * _sum(x[i] * D[i, k]),
            s * _sum((x[i] - mu) * D[i, k]),
            f"the hazard term mu s r is missing [{SECTION}]",
            MEAN,
        ),
        Step(
            "WRONG: compensation with the sign flipped",
            s * (_sum(x[i] * W[i, k]) + mu * r[k]) + b[k] - ref[k],
            s * _sum((x[i] - mu) * D[i, k]),
            f"adds 2 mu s r instead of removing it [{SECTION}]",
            MEAN + FOLD,
        ),
        Step(
            "WRONG: compensating with the exact fold's column sums",
            s * (_sum(x[i] * W[i, k]) - mu * _sum(F_[i, k])) + b[k] - ref[k],
            s * _sum((x[i] - mu) * D[i, k]),
            f"1 F' = 0 compensates nothing: r must be the stored fold's column sums [{SECTION}]",
            MEAN + FOLD,
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# concrete n
# ---------------------------------------------------------------------------------------------------------------


def _concrete(size: int) -> dict[str, sp.Matrix]:
    """x (1, n), gamma, beta (n,), F, Delta, theta (n, M) as matrices of symbols; F', W, r, b and the reference."""
    xs = sp.Matrix(1, size, lambda _, q: sp.Symbol(f"x{q}"))  # (1, n)
    G = sp.diag(*[sp.Symbol(f"gamma{q}") for q in range(size)])  # (n, n)
    betas = sp.Matrix(1, size, lambda _, q: sp.Symbol(f"beta{q}"))  # (1, n)
    Fs = sp.Matrix(size, M, lambda p, q: sp.Symbol(f"F{p}_{q}"))  # (n, M)
    Ds = sp.Matrix(size, M, lambda p, q: sp.Symbol(f"Delta{p}_{q}"))  # (n, M)
    ones = sp.ones(1, size)  # (1, n)
    C = sp.eye(size) - sp.ones(size, size) / size  # (n, n)   centring
    Fp = C * G * Fs  # (n, M)
    Ws = Fp + Ds  # (n, M)
    return {
        "x": xs,
        "F'": Fp,
        "Delta": Ds,
        "W": Ws,
        "r": ones * Ws,  # (1, M)
        "b": betas * Fs,  # (1, M)
        "ref": s * (xs - mu * ones) * G * Fs + betas * Fs,  # (1, M)
        "ones": ones,
        "theta": sp.Matrix(size, M, lambda p, q: sp.Symbol(f"theta{p}_{q}")),  # (n, M)
    }


def _concrete_steps(size: int) -> list[Step]:
    m = _concrete(size)
    xs, Ws, Ds, ones = m["x"], m["W"], m["Delta"], m["ones"]
    mean: Definitions = ((mu, sum(xs) / size),)
    centred = s * (xs - mu * ones) * Ds
    return [
        Step("stored column sums are the rounding's", m["r"], ones * Ds, f"1 F' = 0 [{SECTION}]"),
        Step("the fused order's error", s * xs * Ws + m["b"] - m["ref"], s * xs * Ds, f"[{SECTION}]", mean),
        Step("centred part + the hazard term", s * xs * Ds, centred + mu * s * m["r"], f"[{SECTION}]"),
        Step(
            "compensation removes mu s r",
            s * (xs * Ws - mu * m["r"]) + m["b"] - m["ref"],
            centred,
            f"[{SECTION}]",
            mean,
        ),
        Step("subtracting first is the same", s * ((xs - mu * ones) * Ws), s * (xs * Ws - mu * m["r"]), f"[{SECTION}]"),
        Step(
            "the compensated error ignores the mean",
            s * ((xs + c * ones) - (sum(xs + c * ones) / size) * ones) * Ds,
            centred,
            f"[{SECTION}]",
            mean,
        ),
        Step(
            "hazard term linear in the unit roundoff",
            mu * s * ones * m["theta"].multiply_elementwise(m["F'"]) * u,
            u * (mu * s * ones * m["theta"].multiply_elementwise(m["F'"])),
            f"[{SECTION}]",
        ),
    ]


def _concrete_controls(size: int) -> list[Step]:
    m = _concrete(size)
    xs, Ws, Ds, ones = m["x"], m["W"], m["Delta"], m["ones"]
    mean: Definitions = ((mu, sum(xs) / size),)
    centred = s * (xs - mu * ones) * Ds
    return [
        Step("WRONG: the fused error is free of mu", s * xs * Ds, centred, f"[{SECTION}]", mean),
        Step(
            "WRONG: compensation with the sign flipped",
            s * (xs * Ws + mu * m["r"]) + m["b"] - m["ref"],
            centred,
            f"[{SECTION}]",
            mean,
        ),
        Step(
            "WRONG: compensating with the exact fold's column sums",
            s * (xs * Ws - mu * (ones * m["F'"])) + m["b"] - m["ref"],
            centred,
            f"[{SECTION}]",
            mean,
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------


def steps(size: int | None) -> list[Step]:
    """The derivation: symbolic n when size is None, else explicit matrices of that size."""
    return _symbolic_steps() if size is None else _concrete_steps(size)


def negative_controls(size: int | None) -> list[Step]:
    """Plausible wrong claims; each must be rejected."""
    return _symbolic_controls() if size is None else _concrete_controls(size)


def tie(size: int) -> Tie:
    """The compensated result ref + s (x - mu) Delta at n = size (s = 1/sqrt(var + eps) written out), against the
    library's rule with centring="compensate" and centring="subtract" on the stored fold W = F' + Delta."""
    from normfuse_ref import fusion

    m = _concrete(size)
    xs, Ds, ones = m["x"], m["Delta"], m["ones"]
    eps = sp.Symbol("epsilon", positive=True)
    expr = m["ref"] + s * (xs - mu * ones) * Ds  # (1, M)
    for symbol, definition in reversed(_stats(xs)):  # mu, var, s = 1/sqrt(var + eps), last first
        expr = expr.xreplace({symbol: definition})
    gammas = [sp.Symbol(f"gamma{q}") for q in range(size)]
    betas = [sp.Symbol(f"beta{q}") for q in range(size)]
    Fs = sp.Matrix(size, M, lambda p, q: sp.Symbol(f"F{p}_{q}"))
    inputs = {"x": xs, "gamma": gammas, "beta": betas, "F": Fs, "Delta": Ds, "eps": eps}

    def call(a: dict[str, Any]) -> object:
        F_prime, b = fusion.fold_layer_norm(a["gamma"], a["beta"], a["F"], dtype="float64")
        W = F_prime + a["Delta"]
        return [fusion.layer_norm_linear_folded(a["x"], W, b, a["eps"], centring=c) for c in ("compensate", "subtract")]

    return Tie("fusion.layer_norm_linear_folded(centring=...)", inputs, expr, call)


def prove(size: int | None = None) -> Proof:
    """Check every step and negative control at symbolic n (None) or one concrete n, and the tie to the code."""
    return run_proof(NAME, size, steps(size), negative_controls(size), tie=tie)


if __name__ == "__main__":
    raise SystemExit(run_as_script(NAME, TITLE, prove, symbolic=SYMBOLIC_N))
