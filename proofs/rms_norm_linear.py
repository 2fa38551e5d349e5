"""RMSNorm -> linear: the 1/rms scale commutes with the matmul, and the gain g folds into F.

Identity (docs/notation.md "The three rules", row-vector convention y = x F, x of length n, F of shape (n, m)):

    rms_norm(x, g) F  ==  s * (x (g ⊙ F)),    s = 1 / sqrt(mean(x^2) + eps),    (g ⊙ F)_ik = g_i F_ik

In words: RMSNorm multiplies the row x by one number s (which needs a collective, the sum of squares over the
whole row) and by a per-element gain g. The gain is a fixed weight, so it folds into F offline: diag(g) F = g ⊙ F.
The number s is the same for every element of the row, so by linearity of the matmul it can be applied *after*
x (g ⊙ F): the matmul starts at once, and the collective for s runs beside it.

Derivation (column k of the output; columns are independent, so one column is the general case):

    1. rms_norm(x, g)_i        = s x_i g_i                      RMSNorm is a per-row scale times a gain
    2. (rms_norm(x, g) F)_k    = Sum_i s x_i g_i F_ik            substitute 1 into the matmul
    3.                         = s Sum_i x_i g_i F_ik            s does not depend on i: it leaves the sum
    4.                         = s Sum_i x_i (g ⊙ F)_ik          fold the gain into F
    5. rms_norm(x, g) F        = s (x (g ⊙ F))                   end to end, reference order == fused order

Symbolic n: holds for a symbolic dimension n (IndexedBase x, g, F and Sum over i = 0 .. n-1). Concrete n: the same
steps with explicit Matrix objects for n = 1 .. 6 (F with two columns), where step 3 becomes associativity of the
matmul with a scalar and the fold is diag(g) F == g ⊙ F.

Negative controls (wrong rewrites the checker must reject):
- forgetting to fold the gain: s (x F);
- deferring the scale past the SiLU of the gate projection, silu(s a) vs s silu(a): the scale commutes with the
  linear layer only; a fused kernel must apply s before the next nonlinearity.

Run `python -m proofs rms_norm_linear` (`python -m normfuse_ref._proofs rms_norm_linear` from an installed wheel) to print the
checked derivation.
"""

from __future__ import annotations

import sympy as sp

from normfuse_ref import fusion

from ._steps import Definitions, Proof, Step, Tie, run_proof

NAME = "rms_norm_linear"
TITLE = "RMSNorm -> linear: rms_norm(x, g) F == s (x (g ⊙ F)), s = 1/sqrt(mean(x^2) + eps)"
SYMBOLIC_N = True
SECTION = 'docs/notation.md "The three rules", RMSNorm -> linear'

#: width of F in the concrete-n proofs: two columns show that each column is handled alike, and stay fast.
M = 2

eps = sp.Symbol("epsilon", positive=True)


def silu(u: sp.Expr) -> sp.Expr:
    """SiLU u * sigmoid(u), as in normfuse_ref.layers.silu."""
    return u / (1 + sp.exp(-u))


# ---------------------------------------------------------------------------------------------------------------
# symbolic n
# ---------------------------------------------------------------------------------------------------------------

n = sp.Symbol("n", integer=True, positive=True)
i, j, k = sp.symbols("i j k", integer=True, nonnegative=True)
x, g, F, F_g = sp.IndexedBase("x"), sp.IndexedBase("g"), sp.IndexedBase("F"), sp.IndexedBase("F_g")
s = sp.Symbol("s", positive=True)  # the deferred scale: one number per row, it depends on x but not on i
a = sp.Symbol("a", real=True)  # a gate pre-activation (x (g ⊙ F))_k, any real number


def _sum(body: sp.Expr, index: sp.Symbol = i) -> sp.Expr:
    """Sum over one row, index = 0 .. n-1."""
    return sp.Sum(body, (index, 0, n - 1))


def _symbolic_steps() -> list[Step]:
    rms_i = x[i] / sp.sqrt(_sum(x[j] ** 2, j) / n + eps) * g[i]  # reference: x / sqrt(mean(x^2) + eps) * g
    where_s = ((s, 1 / sp.sqrt(_sum(x[j] ** 2, j) / n + eps)),)
    where_fold = (*where_s, (F_g[i, k], g[i] * F[i, k]))  # (g ⊙ F)_ik, folded offline
    return [
        Step(
            "per-row scale",
            rms_i,
            s * x[i] * g[i],
            f"RMSNorm is one number s per row times the gain [{SECTION}]",
            where_s,
        ),
        Step(
            "into the matmul",
            _sum(rms_i * F[i, k]),
            _sum(s * x[i] * g[i] * F[i, k]),
            f"column k of rms_norm(x, g) F, with the per-row form substituted [{SECTION}]",
            where_s,
        ),
        Step(
            "s leaves the sum",
            _sum(s * x[i] * g[i] * F[i, k]),
            s * _sum(x[i] * g[i] * F[i, k]),
            f"s depends on the whole row but not on i: linearity of the sum [{SECTION}]",
            where_s,
        ),
        Step(
            "fold the gain",
            s * _sum(x[i] * g[i] * F[i, k]),
            s * _sum(x[i] * F_g[i, k]),
            f"g_i F_ik is a fixed weight, computed once offline [{SECTION}]",
            where_fold,
        ),
        Step(
            "end to end",
            _sum(rms_i * F[i, k]),
            s * _sum(x[i] * F_g[i, k]),
            f"reference order == fused order: the matmul never waits for s [{SECTION}]",
            where_fold,
        ),
    ]


def _symbolic_controls() -> list[Step]:
    where_s = ((s, 1 / sp.sqrt(_sum(x[j] ** 2, j) / n + eps)),)
    return [
        Step(
            "WRONG: gain not folded",
            _sum(s * x[i] * g[i] * F[i, k]),
            s * _sum(x[i] * F[i, k]),
            f"the gain must go into F; dropping it changes the result [{SECTION}]",
            where_s,
        ),
        Step(
            "WRONG: scale deferred past SiLU",
            silu(s * a),
            s * silu(a),
            f"silu(s a) != s silu(a): s commutes with the linear layer, not with the gate's nonlinearity [{SECTION}]",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# concrete n
# ---------------------------------------------------------------------------------------------------------------


def _concrete(size: int) -> tuple[sp.Matrix, sp.Matrix, sp.Matrix, Definitions]:
    """x (1, n), g (1, n), F (n, M) as matrices of symbols, and the definition of s."""
    xs = sp.Matrix(1, size, lambda _, c: sp.Symbol(f"x{c}"))  # (1, n)
    gs = sp.Matrix(1, size, lambda _, c: sp.Symbol(f"g{c}"))  # (1, n)
    Fs = sp.Matrix(size, M, lambda r, c: sp.Symbol(f"F{r}_{c}"))  # (n, M)
    where_s = ((s, 1 / sp.sqrt(sum(v**2 for v in xs) / size + eps)),)
    return xs, gs, Fs, where_s


def _concrete_steps(size: int) -> list[Step]:
    xs, gs, Fs, where_s = _concrete(size)
    rms = sp.Matrix(1, size, lambda _, c: xs[c] / sp.sqrt(sum(v**2 for v in xs) / size + eps) * gs[c])  # (1, n)
    G = sp.diag(*gs)  # (n, n)
    F_gs = sp.Matrix(size, M, lambda r, c: gs[r] * Fs[r, c])  # g ⊙ F, (n, M)
    return [
        Step("per-row scale", rms, s * xs * G, f"RMSNorm is s x diag(g) [{SECTION}]", where_s),
        Step(
            "into the matmul",
            rms * Fs,
            s * (xs * G * Fs),
            f"a scalar commutes with matrix products [{SECTION}]",
            where_s,
        ),
        Step("fold the gain", G * Fs, F_gs, f"diag(g) F == g ⊙ F: row i of F scaled by g_i [{SECTION}]"),
        Step("end to end", rms * Fs, s * (xs * F_gs), f"reference order == fused order [{SECTION}]", where_s),
    ]


def _concrete_controls(size: int) -> list[Step]:
    xs, gs, Fs, where_s = _concrete(size)
    G = sp.diag(*gs)  # (n, n)
    return [
        Step(
            "WRONG: gain not folded",
            s * xs * G * Fs,
            s * (xs * Fs),
            f"the gain must go into F [{SECTION}]",
            where_s,
        ),
        Step(
            "WRONG: scale deferred past SiLU",
            (s * xs * G * Fs).applyfunc(silu),
            s * (xs * G * Fs).applyfunc(silu),
            f"silu(s a) != s silu(a) [{SECTION}]",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------


def steps(size: int | None) -> list[Step]:
    """The derivation: symbolic n when size is None, else explicit matrices of that size."""
    return _symbolic_steps() if size is None else _concrete_steps(size)


def negative_controls(size: int | None) -> list[Step]:
    """Plausible wrong rewrites; each must be rejected."""
    return _symbolic_controls() if size is None else _concrete_controls(size)


def tie(size: int) -> Tie:
    """The end-to-end right-hand side s (x (g ⊙ F)) at n = size, against the library's fused rule."""
    xs, gs, Fs, _ = _concrete(size)
    _, rhs = _concrete_steps(size)[-1].expanded()  # "end to end", s written out
    inputs = {"x": xs, "g": list(gs), "F": Fs, "eps": eps}
    return Tie("fusion.rms_norm_linear", inputs, rhs, lambda a: fusion.rms_norm_linear(**a))


def prove(size: int | None = None) -> Proof:
    """Check every step and negative control at symbolic n (None) or one concrete n, and the tie to the code."""
    return run_proof(NAME, size, steps(size), negative_controls(size), tie=tie)
