"""RoPE and the deferred scale: a rotation is linear, so per-row scales pass through it into the attention scores.

In a Llama block q = rms_norm(x_p) W_q and k = rms_norm(x_t) W_k, then RoPE rotates both. With the RMSNorm scale
deferred (`rms_norm_linear`) the projections come out unscaled, q = s_q q~ and k = s_k k~, where s_q and s_k are the
two rows' own scales. The questions are whether s may pass through the rotation and where it can be applied.

Identities (row-vector convention; R_p is the RoPE rotation at position p, block-diagonal with one 2x2 block
[[cos(p theta_j), sin(p theta_j)], [-sin(p theta_j), cos(p theta_j)]] per pair j, as normfuse_ref.layers.rope does:
a pair (u, v) becomes (u cos - v sin, u sin + v cos)):

    (s q) R_p = s (q R_p)                                              a rotation is linear
    (s_q q R_p) . (s_k k R_t) = s_q s_k (q R_p . k R_t)                  the scales leave the dot product
    (q R_p) . (k R_t) = q R_{p-t} . k                                  relative position: R_p R_t^T = R_{p-t}

So the deferred scales can be applied to the score after q k^T, as one product s_q s_k per (query, key) pair, and
the score still depends on positions only through p - t. They must be applied before the softmax, though:
softmax is not linear (`softmax_linear`, negative control "score scale deferred past softmax").

Derivation, symbolic n = number of rotation pairs (head dim 2n, interleaved layout: pair j is (u_{2j}, u_{2j+1})):

    1. (R_p (s q))_{2j}     = s (q R_p)_{2j}            even entry of a pair
    2. ((s q) R_p)_{2j+1}   = s (q R_p)_{2j+1}          odd entry of a pair
    3. (s_q q R_p) . (s_k k R_t) = s_q s_k (q R_p) . (k R_t)   scales leave the sum over pairs
    4. pair j of (q R_p) . (k R_t) = pair j of (q R_{p-t}) . k   angle-difference formulas
    5. (q R_p) . (k R_t)    = (q R_{p-t}) . k            sum of step 4 over pairs
    6. (s_q q R_p) . (s_k k R_t) = s_q s_k (q R_{p-t}) . k     end to end

The half layout (pair j is (u_j, u_{j+n}), HF checkpoints) is the same rotation conjugated by a fixed permutation
of coordinates, which is linear and commutes with a scalar, so every step carries over. Positions are integers in a
model; the identities hold for every real p and t, and the symbols are declared real so that the numeric witness
draws distinct positions. Concrete n = 1 .. 6 pairs: explicit R_p matrices, where R_p R_p^T = I and
R_p R_t^T = R_{p-t} are checked as matrix identities.

Negative controls (wrong rewrites the checker must reject):
- a per-channel scale c does not commute with R_p: (q ⊙ c) R_p != (q R_p) ⊙ c (unless c is equal within each pair),
  so only a per-row scalar may be deferred past RoPE;
- using one row's scale for both rows: s_q^2 sigma instead of s_q s_k sigma, sigma = q R_p . k R_t (kept opaque:
  written out, simplify spends seconds on the trigonometric polynomial before giving up);
- the relative position with the wrong sign: q R_{t-p} . k (per pair for symbolic n, R_p R_t^T vs R_{t-p} for
  concrete n).

Run `python -m proofs rope_scale` (`python -m normfuse_ref._proofs rope_scale` from an installed wheel) to print the
checked derivation.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import sympy as sp

from normfuse_ref import layers

from ._steps import Proof, Step, Tie, run_proof

NAME = "rope_scale"
TITLE = "RoPE and the deferred scale: (s_q q R_p) . (s_k k R_t) == s_q s_k (q R_{p-t}) . k"
SYMBOLIC_N = True
SECTION = 'docs/notation.md "The three rules", RMSNorm -> linear, carried through RoPE into q k^T'

s, s_q, s_k = sp.symbols("s s_q s_k", positive=True)  # per-row deferred scales
p, t = sp.symbols("p t", real=True)  # positions of the query and the key row
sigma = sp.Symbol("sigma", real=True)  # an unscaled score (q R_p) . (k R_t)

# ---------------------------------------------------------------------------------------------------------------
# symbolic n
# ---------------------------------------------------------------------------------------------------------------

n = sp.Symbol("n", integer=True, positive=True)  # rotation pairs; head dim 2n
j = sp.Symbol("j", integer=True, nonnegative=True)
q, k, c = sp.IndexedBase("q"), sp.IndexedBase("k"), sp.IndexedBase("c")
theta = sp.IndexedBase("theta", positive=True)  # per-pair frequencies base^(-2j/hd); any positive numbers work


class _Scaled:
    """A vector u scaled entrywise by a factor (a scalar, or another IndexedBase for a per-channel scale)."""

    def __init__(self, base: sp.IndexedBase, factor: sp.Expr | sp.IndexedBase) -> None:
        self.base, self.factor = base, factor

    def __getitem__(self, index: sp.Expr) -> sp.Expr:
        f = self.factor[index] if isinstance(self.factor, sp.IndexedBase) else self.factor
        return f * self.base[index]


#: a vector whose entries can be indexed: an IndexedBase, or one scaled entrywise
Vector: TypeAlias = sp.IndexedBase | _Scaled


def even(u: Vector, pos: sp.Expr) -> sp.Expr:
    """(u R_pos)_{2j}: the first entry of pair j after the rotation."""
    return u[2 * j] * sp.cos(pos * theta[j]) - u[2 * j + 1] * sp.sin(pos * theta[j])


def odd(u: Vector, pos: sp.Expr) -> sp.Expr:
    """(u R_pos)_{2j+1}: the second entry of pair j after the rotation."""
    return u[2 * j] * sp.sin(pos * theta[j]) + u[2 * j + 1] * sp.cos(pos * theta[j])


def _pairs(body: sp.Expr) -> sp.Expr:
    """Sum over the n rotation pairs."""
    return sp.Sum(body, (j, 0, n - 1))


def _pair_score(u: Vector, w: Vector, pu: sp.Expr, pw: sp.Expr) -> sp.Expr:
    """Pair j's part of (u R_pu) . (w R_pw)."""
    return even(u, pu) * even(w, pw) + odd(u, pu) * odd(w, pw)


def _relative(u: sp.IndexedBase, w: sp.IndexedBase, delta: sp.Expr) -> sp.Expr:
    """Pair j's part of (u R_delta) . w."""
    return even(u, delta) * w[2 * j] + odd(u, delta) * w[2 * j + 1]


def _symbolic_steps() -> list[Step]:
    sq, sk = _Scaled(q, s_q), _Scaled(k, s_k)
    return [
        Step("R_p is linear (even entry)", even(_Scaled(q, s), p), s * even(q, p), f"rotation is linear [{SECTION}]"),
        Step("R_p is linear (odd entry)", odd(_Scaled(q, s), p), s * odd(q, p), f"rotation is linear [{SECTION}]"),
        Step(
            "the scales leave the score",
            _pairs(_pair_score(sq, sk, p, t)),
            s_q * s_k * _pairs(_pair_score(q, k, p, t)),
            f"s_q s_k does not depend on the pair j: linearity of the sum [{SECTION}]",
        ),
        Step(
            "relative position (one pair)",
            _pair_score(q, k, p, t),
            _relative(q, k, p - t),
            f"cos a cos b + sin a sin b = cos(a - b), sin a cos b - cos a sin b = sin(a - b) [{SECTION}]",
        ),
        Step(
            "relative position (all pairs)",
            _pairs(_pair_score(q, k, p, t)),
            _pairs(_relative(q, k, p - t)),
            f"step 4 summed over j: the score depends on p - t only [{SECTION}]",
        ),
        Step(
            "end to end",
            _pairs(_pair_score(sq, sk, p, t)),
            s_q * s_k * _pairs(_relative(q, k, p - t)),
            f"scale the score by s_q s_k after q k^T, before the softmax [{SECTION}]",
        ),
    ]


def _one_scale_control() -> Step:
    # sigma is the unscaled score (q R_p) . (k R_t), any nonzero number: written out, simplify spends seconds on the
    # trigonometric polynomial before giving up, and step 3 has already shown the score factors as s_q s_k sigma
    return Step(
        "WRONG: one row's scale for both",
        s_q * s_k * sigma,
        s_q**2 * sigma,
        f"the key at position t has its own scale s_k; sigma = (q R_p) . (k R_t) [{SECTION}]",
    )


def _symbolic_controls() -> list[Step]:
    return [
        Step(
            "WRONG: per-channel scale past RoPE",
            even(_Scaled(q, c), p),
            c[2 * j] * even(q, p),
            f"(q ⊙ c) R_p != (q R_p) ⊙ c: only a per-row scalar commutes with the rotation [{SECTION}]",
        ),
        _one_scale_control(),
        Step(
            "WRONG: relative position sign",
            _pair_score(q, k, p, t),
            _relative(q, k, t - p),
            f"with row vectors, R_p R_t^T = R_(p-t) [{SECTION}]",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# concrete n
# ---------------------------------------------------------------------------------------------------------------


def rotation(pos: sp.Expr, thetas: list[sp.Symbol]) -> sp.Matrix:
    """R_pos, (2n, 2n): one block [[cos, sin], [-sin, cos]] per pair, so that u R_pos rotates each pair of u."""
    blocks = [sp.Matrix([[sp.cos(pos * th), sp.sin(pos * th)], [-sp.sin(pos * th), sp.cos(pos * th)]]) for th in thetas]
    return sp.diag(*blocks)


def _concrete(pairs: int) -> tuple[sp.Matrix, sp.Matrix, list[sp.Symbol]]:
    """q and k (1, 2n) as matrices of symbols, and the n frequencies."""
    qs = sp.Matrix(1, 2 * pairs, lambda _, a: sp.Symbol(f"q{a}"))  # (1, 2n)
    ks = sp.Matrix(1, 2 * pairs, lambda _, a: sp.Symbol(f"k{a}"))  # (1, 2n)
    thetas = [sp.Symbol(f"theta{a}", positive=True) for a in range(pairs)]
    return qs, ks, thetas


def _concrete_steps(pairs: int) -> list[Step]:
    qs, ks, thetas = _concrete(pairs)
    R_p, R_t = rotation(p, thetas), rotation(t, thetas)  # (2n, 2n)
    score = (qs * R_p) * (ks * R_t).T  # (1, 1)
    return [
        Step("R_p is linear", (s * qs) * R_p, s * (qs * R_p), f"a scalar commutes with a matmul [{SECTION}]"),
        Step("R_p is a rotation", R_p * R_p.T, sp.eye(2 * pairs), f"cos^2 + sin^2 = 1 [{SECTION}]"),
        Step("R_p R_t^T = R_(p-t)", R_p * R_t.T, rotation(p - t, thetas), f"angle-difference formulas [{SECTION}]"),
        Step(
            "the scales leave the score",
            (s_q * qs * R_p) * (s_k * ks * R_t).T,
            s_q * s_k * score,
            f"scalars commute with matmuls [{SECTION}]",
        ),
        Step(
            "relative position",
            score,
            qs * rotation(p - t, thetas) * ks.T,
            f"(q R_p)(k R_t)^T = q R_p R_t^T k^T [{SECTION}]",
        ),
    ]


def _concrete_controls(pairs: int) -> list[Step]:
    qs, _, thetas = _concrete(pairs)
    cs = sp.Matrix(1, 2 * pairs, lambda _, a: sp.Symbol(f"c{a}"))  # a per-channel scale, (1, 2n)
    R_p, R_t = rotation(p, thetas), rotation(t, thetas)  # (2n, 2n)
    return [
        Step(
            "WRONG: per-channel scale past RoPE",
            qs.multiply_elementwise(cs) * R_p,
            (qs * R_p).multiply_elementwise(cs),
            f"(q ⊙ c) R_p != (q R_p) ⊙ c [{SECTION}]",
        ),
        _one_scale_control(),
        Step(
            "WRONG: relative position sign",
            R_p * R_t.T,
            rotation(t - p, thetas),
            f"R_p R_t^T = R_(p-t), not R_(t-p) [{SECTION}]",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------


def steps(size: int | None) -> list[Step]:
    """The derivation: symbolic n pairs when size is None, else explicit matrices with that many pairs."""
    return _symbolic_steps() if size is None else _concrete_steps(size)


def negative_controls(size: int | None) -> list[Step]:
    """Plausible wrong rewrites; each must be rejected."""
    return _symbolic_controls() if size is None else _concrete_controls(size)


#: RoPE's base and a query position for the tie to the code: the proof's frequencies and position become these.
TIE_BASE, TIE_POSITION = 10000.0, 7


def tie(pairs: int) -> Tie:
    """The rotation s (q R_p) with theta_j = base^(-2j/hd), hd = 2 pairs, at position p, against
    `layers.rope(s q, p)` in the interleaved layout (the pairing this file uses)."""
    qs, _, thetas = _concrete(pairs)
    rhs = s * (qs * rotation(p, thetas))  # (1, 2 pairs)
    fixed = {th: TIE_BASE ** (-2 * j_ / (2 * pairs)) for j_, th in enumerate(thetas)} | {p: float(TIE_POSITION)}

    def call(a: dict[str, Any]) -> object:
        sq = np.asarray(a["s"]) * np.asarray(a["q"])  # (1, 2 pairs)
        return layers.rope(sq, np.array([TIE_POSITION]), base=TIE_BASE, layout="interleaved")

    return Tie("layers.rope", {"q": qs, "s": s}, rhs, call, fixed)


def prove(size: int | None = None) -> Proof:
    """Check every step and negative control at symbolic n (None) or one concrete n (pairs)."""
    return run_proof(NAME, size, steps(size), negative_controls(size), tie=tie)
