"""Online-softmax merge: per-tile states (m, l, O~) combine exactly, in any tiling and any order.

The fused softmax -> linear rule needs the row max m before e^{z - m} V can start. Across tiles, each tile instead
keeps its own state: its local shift m_t (its max), l_t = Sum_{i in t} e^{z_i - m_t} and
o_t = Sum_{i in t} e^{z_i - m_t} V_i (code names m, l, o; O~ in the paper's notation). Two states merge as

    merge((m_a, l_a, o_a), (m_b, l_b, o_b)) = (m, l_a e^{m_a - m} + l_b e^{m_b - m}, o_a e^{m_a - m} + o_b e^{m_b - m}),
    m = max(m_a, m_b)

(docs/notation.md "The three rules", Softmax -> linear; normfuse_ref.fusion.online_softmax_merge). Claims:

- exactness: merging the states of two adjacent tiles gives the state of the concatenated tile, so o / l is
  softmax(z) V over the concatenation. This holds for *every* choice of the new shift m, not only the max:
  rescaling by e^{m_t - m} moves a tile's sums to the common shift m, and the shift cancels in o / l
  (`softmax_linear`). The max is chosen so that every e^{m_t - m} <= 1 cannot overflow; it is a numerical choice,
  not an algebraic one. That is how this file handles Max in SymPy: the general steps use an arbitrary shift m,
  and one step substitutes m = Max(m_a, m_b) to show the specialisation goes through.
- merge is commutative and associative, and the empty tile (-oo, 0, 0) is its identity. Together with
  exactness for two tiles this gives, by induction, exactness for any tiling merged in any order (any binary
  tree over any permutation of the tiles): the state algebra is a commutative monoid. (The identity needs the other
  state to be nonempty: merging two empty tiles gives e^{-oo + oo}, the fully masked row, which
  normfuse_ref.fusion defines separately as zeros.)

Derivation, symbolic sizes: tile a holds indices 0 .. n_a - 1, tile b holds n_a .. n_a + n_b - 1; column k of V.

    1. l_a e^{m_a - m}                 = Sum_{i in a} e^{z_i - m}         rescale tile a's sum to the shift m
    2. o_a e^{m_a - m}                 = Sum_{i in a} e^{z_i - m} V_ik    rescale tile a's output
    3. Sum_{i < n_a + n_b} e^{z_i - m}  = Sum_{i in a} + Sum_{i in b}      a row is its tiles
    4. l_a e^{m_a - m} + l_b e^{m_b - m} = Sum_{i < n_a + n_b} e^{z_i - m}   merged l is the one-shot l
    5. o_a e^{m_a - m} + o_b e^{m_b - m} = Sum_{i < n_a + n_b} e^{z_i - m} V_ik  merged o is the one-shot o
    6. merged o / merged l           = (Sum_i e^{z_i} V_ik) / Sum_j e^{z_j}   m = max(m_a, m_b) cancels; the sums
                                        run over the whole row, split into a and b as in step 3: softmax(z) V
    7. merge(A, B) = merge(B, A)                                           commutative
    8. merge(merge(A, B), C) = merge(A, merge(B, C))                        associative
    9. merge(A, (-oo, 0, 0)) = A                                           the empty tile is the identity

Steps 7-9 are about states, not rows, so they hold for all n at once. Concrete n = 1 .. 6 (V with two columns):
one-element tiles (z_i, 1, V_i) merged left to right, right to left and as a balanced tree, and two tiles with their
own local max, all give the one-shot state (max z, Sum e^{z - max z}, e^{z - max z} V) exactly, max written out.

Negative controls (wrong merges the checker must reject):
- forgetting to rescale o: o_a + o_b;
- forgetting to rescale l: l_a + l_b;
- averaging the tiles' normalised outputs: (o_a / l_a + o_b / l_b) / 2 (tiles have different weights l).
At n = 1 a row is a single tile and no merge can go wrong, so the concrete controls start at n = 2. The symbolic
controls compare with (softmax(z) V)_k as in step 6, with the tiles' own sums substituted.

Run `python -m proofs online_softmax_merge` (`python -m normfuse_ref._proofs online_softmax_merge` from an installed wheel) to print the
checked derivation.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

import numpy as np
import sympy as sp

from normfuse_ref import fusion

from ._steps import Definitions, Proof, Step, Tie, run_proof

NAME = "online_softmax_merge"
TITLE = "Online softmax: merge((m_a, l_a, o_a), (m_b, l_b, o_b)) is exact, commutative and associative"
SYMBOLIC_N = True
SECTION = 'docs/notation.md "The three rules", Softmax -> linear (online merge)'

#: width of V in the concrete-n proofs
M = 2

#: the state of the empty tile: no max, nothing summed
EMPTY = sp.Matrix([-sp.oo, 0, 0])


def merge(a: sp.Matrix, b: sp.Matrix) -> sp.Matrix:
    """Merge two states (m, l, o_0, ..., o_{M-1}) (column matrices) at the common shift m = max(m_a, m_b)."""
    m_ab = sp.Max(a[0], b[0])
    scale_a, scale_b = sp.exp(a[0] - m_ab), sp.exp(b[0] - m_ab)  # both <= 1: nothing overflows
    return sp.Matrix([m_ab, *(a[q] * scale_a + b[q] * scale_b for q in range(1, a.rows))])


# ---------------------------------------------------------------------------------------------------------------
# symbolic n
# ---------------------------------------------------------------------------------------------------------------

n_a, n_b = sp.symbols("n_a n_b", integer=True, positive=True)
i, j, k = sp.symbols("i j k", integer=True, nonnegative=True)
z, V = sp.IndexedBase("z", real=True), sp.IndexedBase("V")
m, m_a, m_b, m_c = sp.symbols("m m_a m_b m_c", real=True)  # shifts: any real numbers (the max in practice)
l_a, l_b, l_c = sp.symbols("l_a l_b l_c", positive=True)
o_a, o_b, o_c = sp.symbols("o_a o_b o_c", real=True)

TILE_A = (0, n_a - 1)
TILE_B = (n_a, n_a + n_b - 1)
ROW = (0, n_a + n_b - 1)


def _sum(body: sp.Expr, span: tuple[sp.Expr, sp.Expr], index: sp.Symbol = i) -> sp.Expr:
    """Sum over index in span (inclusive)."""
    return sp.Sum(body, (index, *span))


#: each tile's state, computed locally with its own shift
TILES: Definitions = (
    (l_a, _sum(sp.exp(z[i] - m_a), TILE_A)),
    (o_a, _sum(sp.exp(z[i] - m_a) * V[i, k], TILE_A)),
    (l_b, _sum(sp.exp(z[i] - m_b), TILE_B)),
    (o_b, _sum(sp.exp(z[i] - m_b) * V[i, k], TILE_B)),
)


def _split(body: sp.Expr) -> sp.Expr:
    """Sum over the whole row, written as tile a + tile b (step 3)."""
    return _sum(body, TILE_A) + _sum(body, TILE_B)


def _symbolic_steps() -> list[Step]:
    merged_l = l_a * sp.exp(m_a - m) + l_b * sp.exp(m_b - m)
    merged_o = o_a * sp.exp(m_a - m) + o_b * sp.exp(m_b - m)
    A, B, C = sp.Matrix([m_a, l_a, o_a]), sp.Matrix([m_b, l_b, o_b]), sp.Matrix([m_c, l_c, o_c])
    return [
        Step(
            "rescale l_a to the shift m",
            l_a * sp.exp(m_a - m),
            _sum(sp.exp(z[i] - m), TILE_A),
            f"e^(z_i - m_a) e^(m_a - m) = e^(z_i - m), for any m [{SECTION}]",
            TILES,
        ),
        Step(
            "rescale o_a to the shift m",
            o_a * sp.exp(m_a - m),
            _sum(sp.exp(z[i] - m) * V[i, k], TILE_A),
            f"the same factor for every term of o_a [{SECTION}]",
            TILES,
        ),
        Step(
            "a row is its tiles",
            _sum(sp.exp(z[i] - m), ROW),
            _sum(sp.exp(z[i] - m), TILE_A) + _sum(sp.exp(z[i] - m), TILE_B),
            f"a sum over adjacent ranges splits [{SECTION}]",
        ),
        Step(
            "merged l is the one-shot l",
            merged_l,
            _sum(sp.exp(z[i] - m), ROW),
            f"both tiles moved to the shift m, then added [{SECTION}]",
            TILES,
        ),
        Step(
            "merged o is the one-shot o",
            merged_o,
            _sum(sp.exp(z[i] - m) * V[i, k], ROW),
            f"both tiles moved to the shift m, then added [{SECTION}]",
            TILES,
        ),
        Step(
            "o / l is softmax(z) V, m = max(m_a, m_b)",
            merged_o / merged_l,
            _split(sp.exp(z[i]) * V[i, k]) / _split(sp.exp(z[i])),
            f"the shift cancels; by step 3 the right side is (softmax(z) V)_k over the whole row [{SECTION}]",
            ((m, sp.Max(m_a, m_b)), *TILES),
        ),
        Step("merge is commutative", merge(A, B), merge(B, A), f"max and + are commutative [{SECTION}]"),
        Step(
            "merge is associative",
            merge(merge(A, B), C),
            merge(A, merge(B, C)),
            f"e^(m_a - m_ab) e^(m_ab - m_abc) = e^(m_a - m_abc); max is associative [{SECTION}]",
        ),
        Step(
            "the empty tile is the identity",
            merge(A, EMPTY),
            A,
            f"max(m_a, -oo) = m_a and the empty tile adds 0 [{SECTION}]",
        ),
    ]


def _symbolic_controls() -> list[Step]:
    merged_l = l_a * sp.exp(m_a - m) + l_b * sp.exp(m_b - m)
    merged_o = o_a * sp.exp(m_a - m) + o_b * sp.exp(m_b - m)
    softmax_V = _split(sp.exp(z[i]) * V[i, k]) / _split(sp.exp(z[i]))  # (softmax(z) V)_k, row split as in step 3
    return [
        Step(
            "WRONG: o not rescaled",
            (o_a + o_b) / merged_l,
            softmax_V,
            f"o_a and o_b are sums at different shifts; they must be rescaled like l [{SECTION}]",
            TILES,
        ),
        Step(
            "WRONG: l not rescaled",
            merged_o / (l_a + l_b),
            softmax_V,
            f"l_a and l_b are sums at different shifts [{SECTION}]",
            TILES,
        ),
        Step(
            "WRONG: average of normalised tiles",
            (o_a / l_a + o_b / l_b) / 2,
            softmax_V,
            f"each tile's softmax has its own denominator; the tiles weigh l_a e^(m_a) and l_b e^(m_b) [{SECTION}]",
            TILES,
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# concrete n
# ---------------------------------------------------------------------------------------------------------------


def _concrete(size: int) -> tuple[sp.Matrix, sp.Matrix]:
    """z (1, n) and V (n, M) as matrices of symbols."""
    zs = sp.Matrix(1, size, lambda _, q: sp.Symbol(f"z{q}", real=True))  # (1, n)
    Vs = sp.Matrix(size, M, lambda p, q: sp.Symbol(f"V{p}_{q}"))  # (n, M)
    return zs, Vs


def tile_state(zs: sp.Matrix, Vs: sp.Matrix, lo: int, hi: int) -> sp.Matrix:
    """The state (m, l, o_0 .. o_{M-1}) of the tile lo .. hi-1, with its own max; (-oo, 0, 0..) if empty."""
    if lo >= hi:
        return sp.Matrix([-sp.oo, 0, *([0] * Vs.cols)])
    m_t = sp.Max(*zs[lo:hi])
    p = [sp.exp(zs[q] - m_t) for q in range(lo, hi)]  # e^{z - m_t} over the tile
    o_t = [sum(p[q - lo] * Vs[q, c] for q in range(lo, hi)) for c in range(Vs.cols)]
    return sp.Matrix([m_t, sum(p), *o_t])


def _tree(states: list[sp.Matrix]) -> sp.Matrix:
    """Merge as a balanced binary tree: halves first, then the two halves."""
    if len(states) == 1:
        return states[0]
    half = len(states) // 2
    return merge(_tree(states[:half]), _tree(states[half:]))


def _finalize(state: sp.Matrix) -> sp.Matrix:
    """o / l as a (1, M) row."""
    return sp.Matrix(1, state.rows - 2, lambda _, c: state[2 + c] / state[1])


def _concrete_steps(size: int) -> list[Step]:
    zs, Vs = _concrete(size)
    singles = [tile_state(zs, Vs, q, q + 1) for q in range(size)]  # (z_i, 1, V_i): e^{z_i - z_i} = 1
    one_shot = tile_state(zs, Vs, 0, size)
    half = (size + 1) // 2
    softmax_V = zs.applyfunc(sp.exp) * Vs / sum(sp.exp(v) for v in zs)  # (1, M), textbook order
    return [
        Step(
            "one-element tiles, left to right",
            reduce(merge, singles),
            one_shot,
            f"the streaming order of a decode kernel [{SECTION}]",
        ),
        Step(
            "one-element tiles, right to left",
            reduce(merge, reversed(singles)),
            one_shot,
            f"any order: commutativity [{SECTION}]",
        ),
        Step(
            "one-element tiles, balanced tree", _tree(singles), one_shot, f"any bracketing: associativity [{SECTION}]"
        ),
        Step(
            "two tiles, each with its own max",
            merge(tile_state(zs, Vs, 0, half), tile_state(zs, Vs, half, size)),
            one_shot,
            f"the tile split a DIMC machine uses; at n = 1 tile b is empty [{SECTION}]",
        ),
        Step("o / l is softmax(z) V", _finalize(one_shot), softmax_V, f"the deferred division [{SECTION}]"),
    ]


def _concrete_controls(size: int) -> list[Step]:
    if size < 2:
        return []  # one tile: no merge to get wrong
    zs, Vs = _concrete(size)
    v = Vs[:, 0]  # one column: each is handled alike, and simplify is slow to give up on a nonzero difference
    half = (size + 1) // 2
    a, b = tile_state(zs, v, 0, half), tile_state(zs, v, half, size)
    merged = merge(a, b)
    softmax_v = (zs.applyfunc(sp.exp) * v)[0] / sum(sp.exp(e) for e in zs)
    return [
        Step(
            "WRONG: o not rescaled",
            (a[2] + b[2]) / merged[1],
            softmax_v,
            f"o must be rescaled like l [{SECTION}]",
        ),
        Step(
            "WRONG: l not rescaled",
            merged[2] / (a[1] + b[1]),
            softmax_v,
            f"l must be rescaled like o [{SECTION}]",
        ),
        Step(
            "WRONG: average of normalised tiles",
            (a[2] / a[1] + b[2] / b[1]) / 2,
            softmax_v,
            f"tiles have different weights [{SECTION}]",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------


def steps(size: int | None) -> list[Step]:
    """The derivation: symbolic sizes when size is None, else explicit matrices with a row of that length."""
    return _symbolic_steps() if size is None else _concrete_steps(size)


def negative_controls(size: int | None) -> list[Step]:
    """Plausible wrong merges; each must be rejected."""
    return _symbolic_controls() if size is None else _concrete_controls(size)


def tie(size: int) -> Tie:
    """The merge of two tiles' states, each with its own max (`merge` of `tile_state`s, Max written out), at
    n = size, against the library's tile states and online_softmax_merge."""
    zs, Vs = _concrete(size)
    half = (size + 1) // 2
    merged = merge(tile_state(zs, Vs, 0, half), tile_state(zs, Vs, half, size))  # (2 + M, 1): m, l, o

    def call(a: dict[str, Any]) -> object:
        z, V = np.asarray(a["z"]), np.asarray(a["V"])
        st = fusion.online_softmax_merge(
            fusion.softmax_tile_state(z[:, :half], V[:half]), fusion.softmax_tile_state(z[:, half:], V[half:])
        )
        return np.concatenate([st.m, st.l, st.o], axis=-1)  # (1, 2 + M)

    return Tie("fusion.online_softmax_merge", {"z": zs, "V": Vs}, merged, call)


def prove(size: int | None = None) -> Proof:
    """Check every step and negative control at symbolic n (None) or one concrete n."""
    return run_proof(NAME, size, steps(size), negative_controls(size), tie=tie)
