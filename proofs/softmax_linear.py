"""Softmax -> linear (attention P V): the softmax denominator commutes with the matmul, and any shift m cancels.

Identity (docs/notation.md "The three rules", row-vector convention: z a row of n scores, V of shape (n, m)):

    softmax(z) V  ==  (e^{z - m} V) / Sum_j e^{z_j - m}        for every real m (in practice m = max z)

In words: softmax divides every e^{z_i} by the same number, the row sum, so by linearity the division can wait
until after the matmul: o = e^{z - m} V runs on the matrix engine while l = Sum e^{z - m} is reduced beside it,
then o / l. Multiplying numerator and denominator by e^{-m} changes nothing, so the shift m is free: it is chosen
as the row max only so that e^{z - m} <= 1 cannot overflow. The max itself is a collective; `online_softmax_merge`
shows how tiles avoid needing it before the matmul.

Derivation, symbolic n, column k of the output (o and l are the fused order's two reductions):

    1. (softmax(z) V)_k = Sum_i (e^{z_i} / Sum_j e^{z_j}) V_ik
                        = (Sum_i e^{z_i} V_ik) / Sum_j e^{z_j}                    the denominator leaves the sum
    2. e^{z_i}          = e^m e^{z_i - m}                                        shift one exponent
    3. (Sum_i e^{z_i} V_ik) / Sum_j e^{z_j}
                        = (Sum_i e^{z_i - m} V_ik) / Sum_j e^{z_j - m}            e^m cancels, for any m
    4. (softmax(z) V)_k = o_k / l,  o_k = Sum_i e^{z_i - m} V_ik,  l = Sum_j e^{z_j - m}    end to end

Symbolic n with an arbitrary real shift m, which covers m = max z. Concrete n = 1 .. 6 (V with two columns) with
m = Max(z_0, ..., z_{n-1}) written out, as the fused kernel computes it.

Negative controls (wrong rewrites the checker must reject):
- shifting only the numerator: (e^{z - m} V) / Sum e^{z};
- deferring a score scale past the softmax: softmax(t z) V vs t softmax(z) V. A per-row scale such as the
  attention's 1/sqrt(d) or the deferred RMSNorm scales of q and k (see `rope_scale`) must be applied to the
  scores before the softmax; only the softmax's own denominator may be deferred past V.

Run `python -m proofs softmax_linear` (`python -m normfuse_ref._proofs softmax_linear` from an installed wheel) to print the
checked derivation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy as sp

from normfuse_ref import fusion

from ._steps import Definitions, Proof, Step, Tie, run_proof

NAME = "softmax_linear"
TITLE = "Softmax -> linear: softmax(z) V == (e^{z - m} V) / Sum_j e^{z_j - m} for any shift m"
SYMBOLIC_N = True
SECTION = 'docs/notation.md "The three rules", Softmax -> linear'

#: width of V in the concrete-n proofs
M = 2

m = sp.Symbol("m", real=True)  # the shift (the row max in practice, but any real number works)
l = sp.Symbol("l", positive=True)  # the deferred denominator Sum_j e^{z_j - m}
t = sp.Symbol("t", positive=True)  # a score scale (1/sqrt(d), or s_q s_k from the normalisations)

# ---------------------------------------------------------------------------------------------------------------
# symbolic n
# ---------------------------------------------------------------------------------------------------------------

n = sp.Symbol("n", integer=True, positive=True)
i, j, k = sp.symbols("i j k", integer=True, nonnegative=True)
z, V, o = sp.IndexedBase("z", real=True), sp.IndexedBase("V"), sp.IndexedBase("o")


def _sum(body: sp.Expr, index: sp.Symbol = i) -> sp.Expr:
    """Sum over one row, index = 0 .. n-1."""
    return sp.Sum(body, (index, 0, n - 1))


#: the fused order's two reductions, both local to the row (no division before the matmul)
FUSED: Definitions = (
    (o[k], _sum(sp.exp(z[i] - m) * V[i, k])),
    (l, _sum(sp.exp(z[j] - m), j)),
)


def _reference(scores: sp.IndexedBase | sp.Expr = z) -> sp.Expr:
    """(softmax(z) V)_k written as the textbook order: normalise every probability, then the matmul."""
    return _sum(sp.exp(scores[i]) / _sum(sp.exp(scores[j]), j) * V[i, k])


def _symbolic_steps() -> list[Step]:
    return [
        Step(
            "the denominator leaves the sum",
            _reference(),
            _sum(sp.exp(z[i]) * V[i, k]) / _sum(sp.exp(z[j]), j),
            f"Sum_j e^{{z_j}} does not depend on i: linearity of the sum [{SECTION}]",
        ),
        Step("shift one exponent", sp.exp(z[i]), sp.exp(m) * sp.exp(z[i] - m), f"e^a = e^m e^(a - m) [{SECTION}]"),
        Step(
            "the shift cancels",
            _sum(sp.exp(z[i]) * V[i, k]) / _sum(sp.exp(z[j]), j),
            _sum(sp.exp(z[i] - m) * V[i, k]) / _sum(sp.exp(z[j] - m), j),
            f"e^m is a common factor of numerator and denominator, for any m [{SECTION}]",
        ),
        Step(
            "end to end",
            _reference(),
            o[k] / l,
            f"reference order == fused order: o = e^(z - m) V and l = Sum e^(z - m), then o / l [{SECTION}]",
            FUSED,
        ),
    ]


def _symbolic_controls() -> list[Step]:
    return [
        Step(
            "WRONG: shift only the numerator",
            _reference(),
            o[k] / _sum(sp.exp(z[j]), j),
            f"both reductions must use the same shift m [{SECTION}]",
            FUSED,
        ),
        Step(
            "WRONG: score scale deferred past softmax",
            _sum(sp.exp(t * z[i]) / _sum(sp.exp(t * z[j]), j) * V[i, k]),
            t * _reference(),
            f"softmax(t z) != t softmax(z): a score scale must be applied before the softmax [{SECTION}]",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# concrete n
# ---------------------------------------------------------------------------------------------------------------


def _concrete(size: int) -> tuple[sp.Matrix, sp.Matrix, sp.Expr]:
    """z (1, n) and V (n, M) as matrices of symbols, and the shift m = max z written out."""
    zs = sp.Matrix(1, size, lambda _, q: sp.Symbol(f"z{q}", real=True))  # (1, n)
    Vs = sp.Matrix(size, M, lambda p, q: sp.Symbol(f"V{p}_{q}"))  # (n, M)
    return zs, Vs, sp.Max(*zs)


def _softmax(zs: sp.Matrix) -> sp.Matrix:
    """The reference softmax of a (1, n) row, without a shift: e^z / Sum e^z."""
    return zs.applyfunc(sp.exp) / sum(sp.exp(v) for v in zs)


def _concrete_steps(size: int) -> list[Step]:
    zs, Vs, m_max = _concrete(size)
    p = (zs - m * sp.ones(1, size)).applyfunc(sp.exp)  # e^{z - m}, (1, n)
    where_m = ((m, m_max),)
    return [
        Step(
            "the denominator leaves the matmul",
            _softmax(zs) * Vs,
            (zs.applyfunc(sp.exp) * Vs) / sum(sp.exp(v) for v in zs),
            f"a scalar commutes with the matmul [{SECTION}]",
        ),
        Step(
            "the shift cancels",
            _softmax(zs),
            p / sum(p),
            f"e^m cancels; here m = max z [{SECTION}]",
            where_m,
        ),
        Step(
            "end to end",
            _softmax(zs) * Vs,
            (p * Vs) / sum(p),
            f"reference order == fused order, m = max z [{SECTION}]",
            where_m,
        ),
    ]


def _concrete_controls(size: int) -> list[Step]:
    # one column of V, one probability: simplify is slow to give up on a nonzero difference, and one entry refutes
    zs, Vs, _ = _concrete(size)
    v = Vs[:, 0]  # (n, 1)
    p = (zs - m * sp.ones(1, size)).applyfunc(sp.exp)  # e^{z - m}, (1, n)
    return [
        Step(
            "WRONG: shift only the numerator",
            _softmax(zs) * v,
            (p * v) / sum(sp.exp(e) for e in zs),
            f"both reductions must use the same shift [{SECTION}]",
        ),
        Step(
            "WRONG: score scale deferred past softmax",
            _softmax(t * zs)[0],
            t * _softmax(zs)[0],
            f"softmax(t z)_0 != t softmax(z)_0 [{SECTION}]",
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
    """The end-to-end right-hand side (e^{z - m} V) / Sum e^{z - m}, m = max z, at n = size, against the library's
    fused rule in one tile, in one-entry tiles and in tiles of two (the merge's rescaling enters)."""
    zs, Vs, _ = _concrete(size)
    _, rhs = _concrete_steps(size)[-1].expanded()  # "end to end"

    def call(a: dict[str, Any]) -> object:
        return np.stack([fusion.softmax_linear(a["z"], a["V"], tile_size=t) for t in (None, 1, 2)])

    return Tie("fusion.softmax_linear", {"z": zs, "V": Vs}, rhs, call)


def prove(size: int | None = None) -> Proof:
    """Check every step and negative control at symbolic n (None) or one concrete n."""
    return run_proof(NAME, size, steps(size), negative_controls(size), tie=tie)
