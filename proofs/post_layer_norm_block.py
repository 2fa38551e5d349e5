"""Post-LN blocks: the fused order gives the next block the same residual sum, although its matmul reads raw x.

In a post-LayerNorm block (BERT) the normalised value h = LN(x) of the residual sum x is used twice: as the input
of the linear layer that follows (Q|K|V, or the FFN's up projection) and as the residual carried past the
sublayer. The fused order (docs/models.md, "BERT: the post-LN schedule") starts the matmul on raw x with the folded
weight and computes h from the statistics of the same collective, once they are done:

    reference   h = LN(x) = (x - mu) / sqrt(var + eps) gamma + beta,      y = h F + b_F
    fused       y = s (x F') + b',   h = s (x - mu) gamma + beta          F' = (I - E/n) Gamma F, b' = beta F + b_F

and the sublayer then computes the next residual sum from (h, y) alone. For the FFN sublayer of BERT:

    x_next = h + GELU(y) W + b_W,      GELU(t) = t/2 (1 + erf(t / sqrt 2)) = t/2 erfc(-t / sqrt 2),  W (m, n)

Identity (row-vector convention, x of length n, F of shape (n, m)): both orders give the same h, the same y, and
therefore the same x_next, for every n. x_next is the input of the next LayerNorm -> linear site, so by induction
the whole encoder agrees. The attention sublayer reads only the rows' y (Q|K|V) and adds h the same way, so the
same argument applies to it row by row (each row's y and h agree by steps 1-2).

Derivation, symbolic n (entry i of a row, column k of y; `layer_norm_linear` proves the fold itself):

    1. LN(x)_i = s (x_i - mu) gamma_i + beta_i                  the residual branch from the collective's mu and s
    2. Sum_i LN(x)_i F_ik + b_F,k = s Sum_i x_i F'_ik + b'_k      the linear branch, the layer's own bias included
    3. GELU(y_k) (reference) = GELU(y_k) (fused)                the nonlinearity sees the same pre-activation
    4. LN(x)_p + Sum_k GELU(y_k) W_kp + b_W,p agree             end to end: the next site's input, all m columns

Step 4 keeps s an opaque positive number (as the negative controls of `layer_norm_linear` do): it then holds for
every per-row scale, in particular s = 1/sqrt(var + eps), which step 1 put into LN(x); written out, SymPy spends
minutes summing erf terms over the columns before it sees the cancellation.

Concrete n = 1 .. 6 (F with two columns, W of shape (2, n)): the same steps with explicit matrices
E = ones(n, n), I, Gamma = diag(gamma).

Negative controls (wrong schedules the checker must reject):
- residual from the raw sum: the fused matmul reads raw x, and a schedule that lets the residual branch read it too
  computes x + GELU(y) W + b_W, the pre-LN block, not BERT's;
- bias inside the scale: s (x F' + b') applies 1/sigma to the bias b' = beta F + b_F, which LayerNorm never scales.
Both keep s opaque too: a schedule must be right for every s, and one value where it fails refutes it.

Run `python proofs/post_layer_norm_block.py` to print the checked derivation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp

if not __package__:  # run as `python proofs/post_layer_norm_block.py`: import the package from the repo root (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "proofs"

from ._display import run_as_script
from ._steps import Definitions, Proof, Step, Tie, run_proof
from .layer_norm_linear import F_, FOLD, STATS, F, _concrete, _stats, _sum, b, beta, eps, gamma, i, k, mu, s, var, x

NAME = "post_layer_norm_block"
TITLE = "Post-LN block: fused (x F' on raw x, LN(x) from the same mu, s) and reference give the same next residual sum"
SYMBOLIC_N = True
SECTION = 'docs/models.md "BERT: the post-LN schedule"'

#: width of F (rows of W) in the concrete-n proofs
M = 2

# ---------------------------------------------------------------------------------------------------------------
# symbolic n
# ---------------------------------------------------------------------------------------------------------------

m = sp.Symbol("m", integer=True, positive=True)  # columns of F: the width of y
b_F, b_prime = sp.IndexedBase("b_F"), sp.IndexedBase("b'")  # the linear layer's own bias; the folded bias
W, b_W = sp.IndexedBase("W"), sp.IndexedBase("b_W")  # the sublayer's output projection (m, n) and its bias
p = sp.Symbol("p", integer=True, nonnegative=True)  # an entry of x_next (i is bound inside y's sum over the row)

#: b' = beta F + b_F, entrywise (`b` is beta F, from the LayerNorm fold)
BIAS: Definitions = ((b_prime[k], b[k] + b_F[k]),)


def gelu(t: sp.Expr) -> sp.Expr:
    """Exact GELU, BERT's "gelu" (normfuse_ref.models.bert.forward.gelu): t Phi(t) with the normal CDF
    Phi(t) = (1 + erf(t / sqrt 2)) / 2, written as erfc(-t / sqrt 2) / 2 (the same function): the numeric witness
    draws pre-activations of magnitude up to ~100, where 1 + erf cancels to nothing in 50 digits and erfc does not."""
    return t / 2 * sp.erfc(-t / sp.sqrt(2))


def _cols(body: sp.Expr) -> sp.Expr:
    """Sum over the columns of y, k = 0 .. m-1."""
    return sp.Sum(body, (k, 0, m - 1))


def _h_reference(row: sp.Symbol = i) -> sp.Expr:
    """LN(x)_row as the reference layer computes it: (x - mu) / sqrt(var + eps) gamma + beta."""
    return (x[row] - mu) / sp.sqrt(var + eps) * gamma[row] + beta[row]


def _h(row: sp.Symbol = i) -> sp.Expr:
    """LN(x)_row written with the per-row scale s: s (x - mu) gamma + beta (the fused order's residual branch)."""
    return s * (x[row] - mu) * gamma[row] + beta[row]


Y_REFERENCE = _sum(_h_reference() * F[i, k]) + b_F[k]  # y_k = (LN(x) F)_k + b_F,k, the reference layer
Y_FUSED = s * _sum(x[i] * F_[i, k]) + b_prime[k]  # y_k = s (x F')_k + b'_k
Y_REFERENCE_S = _sum(_h() * F[i, k]) + b_F[k]  # the reference y with LN(x) written with s (step 1)


def _next_sum(h: sp.Expr, y: sp.Expr) -> sp.Expr:
    """x_next,p = h_p + Sum_k GELU(y_k) W_kp + b_W,p for column index k free in y."""
    return h + _cols(gelu(y) * W[k, p]) + b_W[p]


#: the definitions of the steps that keep s opaque: mu (the fold needs it to be the mean), the fold, b'
WITH_OPAQUE_S = STATS[:1] + FOLD + BIAS


def _symbolic_steps() -> list[Step]:
    everything = STATS + FOLD + BIAS
    return [
        Step(
            "the residual branch",
            _h_reference(),
            _h(),
            f"LN(x) from the mu and s of the collective, computed after it [{SECTION}]",
            STATS,
        ),
        Step(
            "the linear branch",
            Y_REFERENCE,
            Y_FUSED,
            f"the LayerNorm fold with the layer's own bias: b' = beta F + b_F, added after s [{SECTION}]",
            everything,
        ),
        Step(
            "GELU sees the same pre-activation",
            gelu(Y_REFERENCE),
            gelu(Y_FUSED),
            f"exact GELU of step 2's equal arguments, column k [{SECTION}]",
            everything,
        ),
        Step(
            "the next residual sum",
            _next_sum(_h(p), Y_REFERENCE_S),
            _next_sum(_h(p), Y_FUSED),
            f"x_next = LN(x) + GELU(y) W + b_W over all m columns, for every per-row scale s [{SECTION}]",
            WITH_OPAQUE_S,
        ),
    ]


def _symbolic_controls() -> list[Step]:
    return [
        Step(
            "WRONG: residual from the raw sum",
            _next_sum(_h(p), Y_REFERENCE_S),
            _next_sum(x[p], Y_FUSED),
            f"the matmul may read raw x, the residual branch may not: it needs LN(x) [{SECTION}]",
            WITH_OPAQUE_S,
        ),
        Step(
            "WRONG: bias inside the scale",
            Y_REFERENCE_S,
            s * (_sum(x[i] * F_[i, k]) + b_prime[k]),
            f"1/sigma scales x F' only; b' = beta F + b_F is added after it [{SECTION}]",
            WITH_OPAQUE_S,
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# concrete n
# ---------------------------------------------------------------------------------------------------------------


def _concrete_block(size: int) -> dict[str, sp.Matrix]:
    """`layer_norm_linear`'s matrices for x, gamma, beta, F, Gamma, F', beta F, plus b_F (1, M), W (M, n), b_W (1, n),
    and both orders' h (1, n) and y (1, M)."""
    c = _concrete(size)
    c["b_F"] = sp.Matrix(1, M, lambda _, q: sp.Symbol(f"b_F{q}"))  # (1, M)
    c["W"] = sp.Matrix(M, size, lambda p, q: sp.Symbol(f"W{p}_{q}"))  # (M, n)
    c["b_W"] = sp.Matrix(1, size, lambda _, q: sp.Symbol(f"b_W{q}"))  # (1, n)
    xs, ones = c["x"], sp.ones(1, size)
    c["h_reference"] = sp.Matrix(
        1, size, lambda _, q: (xs[q] - mu) / sp.sqrt(var + eps) * c["gamma"][q] + c["beta"][q]
    )  # (1, n)
    c["h_fused"] = s * (xs - mu * ones) * c["G"] + c["beta"]  # (1, n)
    c["y_reference"] = c["h_reference"] * c["F"] + c["b_F"]  # (1, M)
    c["y_fused"] = s * (xs * c["F'"]) + c["b"] + c["b_F"]  # (1, M)   s (x F') + b', b' = beta F + b_F
    return c


def _concrete_next(c: dict[str, sp.Matrix], h: sp.Matrix, y: sp.Matrix) -> sp.Matrix:
    return h + y.applyfunc(gelu) * c["W"] + c["b_W"]  # (1, n)


def _concrete_steps(size: int) -> list[Step]:
    c = _concrete_block(size)
    stats = _stats(c["x"])
    return [
        Step("the residual branch", c["h_reference"], c["h_fused"], f"LN(x) from mu and s [{SECTION}]", stats),
        Step("the linear branch", c["y_reference"], c["y_fused"], f"b' = beta F + b_F after s [{SECTION}]", stats),
        Step(
            "GELU sees the same pre-activation",
            c["y_reference"].applyfunc(gelu),
            c["y_fused"].applyfunc(gelu),
            f"exact GELU [{SECTION}]",
            stats,
        ),
        Step(
            "the next residual sum",
            _concrete_next(c, c["h_reference"], c["y_reference"]),
            _concrete_next(c, c["h_fused"], c["y_fused"]),
            f"x_next = LN(x) + GELU(y) W + b_W [{SECTION}]",
            stats,
        ),
    ]


def _concrete_controls(size: int) -> list[Step]:
    c = _concrete_block(size)
    stats = _stats(c["x"])
    return [
        Step(
            "WRONG: residual from the raw sum",
            _concrete_next(c, c["h_reference"], c["y_reference"]),
            _concrete_next(c, c["x"], c["y_fused"]),
            f"the residual branch needs LN(x) [{SECTION}]",
            stats,
        ),
        Step(
            "WRONG: bias inside the scale",
            c["y_reference"],
            s * (c["x"] * c["F'"] + c["b"] + c["b_F"]),
            f"b' is added after s [{SECTION}]",
            stats,
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------


def steps(size: int | None) -> list[Step]:
    """The derivation: symbolic n when size is None, else explicit matrices of that size."""
    return _symbolic_steps() if size is None else _concrete_steps(size)


def negative_controls(size: int | None) -> list[Step]:
    """Plausible wrong schedules; each must be rejected."""
    return _symbolic_controls() if size is None else _concrete_controls(size)


def tie(size: int) -> Tie:
    """Both branches of the fused site, (y, LN(x)) = (s (x F') + b', s (x - mu) gamma + beta) at n = size, against
    the library's rule with `norm=` (what `normfuse_ref.models.bert.forward` calls in fused mode)."""
    from normfuse_ref import fusion

    c = _concrete_block(size)
    expr = c["y_fused"].row_join(c["h_fused"])  # (1, M + n)
    for symbol, definition in reversed(_stats(c["x"])):  # mu, var, s written out, last first
        expr = expr.xreplace({symbol: definition})
    inputs = {"x": c["x"], "gamma": list(c["gamma"]), "beta": list(c["beta"]), "F": c["F"], "b_F": list(c["b_F"])}
    inputs["eps"] = eps

    def call(a: dict[str, Any]) -> object:
        F_prime, bF = fusion.fold_layer_norm(a["gamma"], a["beta"], a["F"])
        y, h = fusion.layer_norm_linear_folded(a["x"], F_prime, bF + a["b_F"], a["eps"], norm=(a["gamma"], a["beta"]))
        return np.concatenate([y, h], axis=-1)

    return Tie("fusion.layer_norm_linear_folded(norm=...)", inputs, expr, call)


def prove(size: int | None = None) -> Proof:
    """Check every step and negative control at symbolic n (None) or one concrete n, and the tie to the code."""
    return run_proof(NAME, size, steps(size), negative_controls(size), tie=tie)


if __name__ == "__main__":
    raise SystemExit(run_as_script(NAME, TITLE, prove, symbolic=SYMBOLIC_N))
