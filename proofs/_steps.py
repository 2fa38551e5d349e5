"""The step checker shared by every proof in `proofs/`: a `Step` is one claimed equality, `check_step` tests it twice.

A derivation is a list of `Step`s, one statement each. A step holds when both witnesses agree that lhs == rhs:

1. symbolic: `simplify(lhs - rhs) == 0` (never `lhs == rhs`, which compares expression trees, not values).
   Before `simplify` sees the difference it is put through rewrites that are themselves identities, so they cannot
   turn a false claim into a true one (`canonical_form`): `expand(..., trig=True).doit()` (splits Sum_i (a_i + b_i)
   into two sums, expands cos(a - b), evaluates Sum_{i=0}^{n-1} 1 = n), factors that do not depend on i are pulled
   out of a sum over i, and bound summation indices are renamed canonically (alpha-renaming: Sum_i a_i and
   Sum_j a_j are the same sum, but SymPy compares the names). Matrices are compared entry by entry.
2. numeric: every free symbol is replaced by a seeded random value and both sides are evaluated to 50 digits.
   Integer symbols (a symbolic dimension n, a column index k) get integers 2..6 first, so that finite sums unroll
   (never 1: at n = 1 several steps are 0 = 0 and a missing 1/n would pass; n = 1 itself is checked by the concrete
   derivation at n = 1); then every entry x[i] of an IndexedBase and every remaining symbol gets a nonzero random
   rational (positive when the symbol is declared positive), carried as a 50-digit float. The seed is fixed and
   mixed with the step's name, so a run is reproducible and each step sees its own values.

A derivation is tied to the code it specifies (`Tie`): at every concrete n >= 2 its end-to-end right-hand side,
lambdified, is evaluated on random float64 inputs and compared with the library function (e.g.
`normfuse_ref.fusion.rms_norm_linear`) on the same inputs. A proof passes only if the code agrees.

A *negative control* is a plausible but wrong rewrite. It is rejected when both witnesses say "not equal".
The numeric witness is the real refutation there (a single point where lhs != rhs disproves the claim); a symbolic
"no" only means simplify found no proof, which is why both are required.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import sympy as sp
from sympy.matrices import MatrixBase

#: The concrete dimensions every proof is also checked at, with explicit Matrix objects.
CONCRETE_N: tuple[int, ...] = (1, 2, 3, 4, 5, 6)

#: Negative controls are checked at symbolic n and at the concrete n up to this one. One counterexample refutes a
#: rewrite, and proving a *nonzero* difference is where simplify is slow (it tries everything before giving up),
#: growing quickly with n; the positive steps are checked at every n in CONCRETE_N.
CONTROLS_UP_TO_N = 3

#: The fixed seed of every numeric witness (mixed with the step name, see `_rng_for`).
SEED = 2502_17728  # the paper's arXiv number

#: Digits used to evaluate the numeric witness, and the tolerance it accepts, relative to max(1, |lhs|, |rhs|).
#: Both sides are evaluated separately at DIGITS significant digits, so two equal values differ by a few units in
#: the 50th digit; 1e-30 leaves 20 digits of headroom and is far below any real difference the inputs (magnitudes
#: 1/90 .. 9.9) can produce in these identities.
DIGITS = 50
REL_TOL = sp.Float("1e-30", DIGITS)

#: what a step compares: a scalar expression or an explicit matrix
Expression: TypeAlias = sp.Expr | MatrixBase
#: `where` definitions of a step: (symbol or indexed entry, what it stands for), in order of definition.
Definitions: TypeAlias = tuple[tuple[sp.Basic, sp.Expr], ...]


@dataclass(frozen=True)
class Step:
    """One statement of a derivation: `lhs == rhs`, where each symbol in `where` stands for its definition.

    `comment` says why the step holds and names the README or tutorial section it belongs to. `where` keeps the
    printed equation short (`s` rather than 1/sqrt(mean(x^2) + eps)); the checker substitutes the definitions,
    last first (so a definition may use an earlier one), before either witness looks at the step.
    """

    name: str
    lhs: Expression
    rhs: Expression
    comment: str
    where: Definitions = ()

    def used_definitions(self) -> Definitions:
        """The `where` definitions the equation refers to, directly or through another used definition."""
        needed: list[sp.Basic] = [self.lhs, self.rhs]
        used = []
        for symbol, definition in reversed(self.where):
            if any(e.has(symbol) for e in needed):
                used.append((symbol, definition))
                needed.append(definition)
        return tuple(reversed(used))

    def expanded(self) -> tuple[Expression, Expression]:
        """lhs and rhs with every `where` definition substituted."""
        lhs, rhs = self.lhs, self.rhs
        for symbol, definition in reversed(self.where):
            lhs, rhs = lhs.xreplace({symbol: definition}), rhs.xreplace({symbol: definition})
        return lhs, rhs


@dataclass(frozen=True)
class StepResult:
    """A checked step: what the symbolic and the numeric witness said about `lhs == rhs`."""

    step: Step
    symbolic: bool
    numeric: bool

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def holds(self) -> bool:
        """Both witnesses say equal: the step is proved (symbolic) and confirmed (numeric)."""
        return self.symbolic and self.numeric

    @property
    def rejected(self) -> bool:
        """Both witnesses say not equal: what a negative control must produce."""
        return not self.symbolic and not self.numeric


#: The relative tolerance of a tie: both sides are float64 evaluations of the same formula on the same inputs
#: (magnitudes 1/2 .. 2, n <= 6), each output through fewer than 40 roundings in either evaluation, so they differ
#: by less than 80 u64 = 9e-15 of the largest magnitude involved; 1e-12 leaves a factor of 100. A rule that differs
#: from the proof (eps outside the square root, a missing 1/n, an unscaled merge) is off by 1e-2 or more.
TIE_RTOL = 1e-12

#: Symbol -> array: the numbers a tie draws for the code's arguments.
Inputs: TypeAlias = Mapping[str, sp.Basic | sp.Matrix | Sequence[sp.Basic]]


@dataclass(frozen=True)
class Tie:
    """The proof's end-to-end right-hand side at one concrete n, and the library code it specifies.

    `inputs` are the code's arguments by name, as the proof's symbols: a Matrix becomes a 2-D array of its shape,
    a sequence of symbols a 1-D array, a symbol a float. `call` runs the code on those arrays; `expr` (every `where`
    definition substituted) is what it must equal. `fixed` gives some symbols values instead of random ones.
    """

    code: str  # what the proof is compared with, for display: "fusion.rms_norm_linear"
    inputs: Inputs
    expr: Expression
    call: Callable[[dict[str, Any]], object]
    fixed: Mapping[sp.Basic, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TieResult:
    """How far the code is from the proof's right-hand side on random float64 inputs."""

    code: str
    error: float  # max |code - proof| over the outputs
    scale: float  # max(1, max |proof|)

    @property
    def passed(self) -> bool:
        return self.error <= TIE_RTOL * self.scale


def check_tie(tie: Tie, *, seed: int = SEED) -> TieResult:
    """Evaluate `tie.expr` (lambdified) and `tie.call` on the same random float64 inputs; see `Tie`."""
    rng = np.random.default_rng(seed ^ zlib.crc32(tie.code.encode()))

    def draw(symbol: sp.Basic) -> float:
        if symbol in tie.fixed:
            return float(tie.fixed[symbol])
        value = float(rng.uniform(0.5, 2.0))
        return value if symbol.is_positive or rng.random() < 0.5 else -value

    values: dict[sp.Basic, float] = {}
    arrays: dict[str, Any] = {}
    for name, symbols in tie.inputs.items():
        if isinstance(symbols, MatrixBase):
            arrays[name] = np.array([[values.setdefault(e, draw(e)) for e in row] for row in symbols.tolist()])
        elif isinstance(symbols, sp.Basic):
            arrays[name] = values.setdefault(symbols, draw(symbols))
        else:
            arrays[name] = np.array([values.setdefault(e, draw(e)) for e in symbols])
    values.update({k: float(v) for k, v in tie.fixed.items()})
    free = sorted(values, key=str)
    expected = np.asarray(sp.lambdify(free, tie.expr, "numpy")(*(values[v] for v in free)), dtype=np.float64)
    expected = expected.reshape(-1)  # the proof's matrices are rows or columns; compare entry by entry
    got = np.asarray(tie.call(arrays), dtype=np.float64).reshape(-1, expected.size)  # one or more variants
    return TieResult(tie.code, float(np.max(np.abs(got - expected))), max(1.0, float(np.max(np.abs(expected)))))


@dataclass(frozen=True)
class Proof:
    """The checked derivation of one identity at one dimension n (None: symbolic n)."""

    name: str
    n: int | None
    steps: tuple[StepResult, ...]
    negative_controls: tuple[StepResult, ...]
    code: TieResult | None = None  # the library code against the proof's right-hand side (concrete n >= 2)

    @property
    def passed(self) -> bool:
        """Every step holds, every negative control is rejected (a checker that accepts them proves nothing), and
        the code it specifies computes its right-hand side."""
        steps = all(r.holds for r in self.steps) and all(r.rejected for r in self.negative_controls)
        return steps and (self.code is None or self.code.passed)


def check_step(step: Step, *, seed: int = SEED) -> StepResult:
    """Check one step with both witnesses (see the module docstring)."""
    lhs, rhs = step.expanded()
    return StepResult(step, symbolic_equal(lhs, rhs), numeric_equal(lhs, rhs, _rng_for(step, seed)))


def run_proof(
    name: str,
    n: int | None,
    steps: Sequence[Step],
    negative_controls: Sequence[Step],
    *,
    tie: Callable[[int], Tie] | None = None,
    seed: int = SEED,
) -> Proof:
    """Check every step of one derivation, its negative controls if n is symbolic or n <= CONTROLS_UP_TO_N, and
    (at concrete n >= 2) its tie to the code."""
    with_controls = n is None or n <= CONTROLS_UP_TO_N
    return Proof(
        name=name,
        n=n,
        steps=tuple(check_step(s, seed=seed) for s in steps),
        negative_controls=tuple(check_step(c, seed=seed) for c in negative_controls) if with_controls else (),
        code=check_tie(tie(n), seed=seed) if tie is not None and n is not None and n >= 2 else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# symbolic witness
# ---------------------------------------------------------------------------------------------------------------


def symbolic_equal(lhs: Expression, rhs: Expression) -> bool:
    """simplify(lhs - rhs) == 0, entry by entry for matrices."""
    if isinstance(lhs, MatrixBase) or isinstance(rhs, MatrixBase):
        if not (isinstance(lhs, MatrixBase) and isinstance(rhs, MatrixBase)) or lhs.shape != rhs.shape:
            return False
        return all(_simplifies_to_zero(a - b) for a, b in zip(lhs, rhs, strict=True))
    return _simplifies_to_zero(lhs - rhs)


def _simplifies_to_zero(d: sp.Expr) -> bool:
    return bool(sp.simplify(canonical_form(d)) == 0)


def canonical_form(d: sp.Expr) -> sp.Expr:
    """d rewritten by identities only, so that simplify can see a zero: expand, evaluate what can be evaluated
    (Sum_i 1 = n, finite sums), pull constants out of sums, rename bound indices."""
    return rename_bound_indices(pull_constants_out_of_sums(sp.expand(d, trig=True).doit()))


def pull_constants_out_of_sums(expr: sp.Expr) -> sp.Expr:
    """Sum_i (c * a_i) -> c * Sum_i a_i for every factor c free of the index i (linearity of a finite sum)."""

    def pull(s: sp.Sum) -> sp.Expr:
        if len(s.limits) != 1 or not isinstance(s.function, sp.Mul):
            return s
        var = s.limits[0][0]
        inside = [f for f in s.function.args if var in f.free_symbols]
        outside = [f for f in s.function.args if var not in f.free_symbols]
        return sp.Mul(*outside) * sp.Sum(sp.Mul(*inside), s.limits[0]) if outside else s

    return expr.replace(lambda e: isinstance(e, sp.Sum), pull)


def rename_bound_indices(expr: sp.Expr) -> sp.Expr:
    """Alpha-renaming: give every Sum's index a canonical name, so that Sum_i a_i - Sum_j a_j simplifies to 0.

    The name depends only on the sum's own subtree (its height: 1 + the most sums nested inside it), so the same
    closed sum gets the same name wherever it appears (inside another sum's body or outside it), and a nested
    sum's name never collides with an enclosing one's (it is strictly lower).
    """
    return _rename(expr)[0]


def _rename(expr: sp.Basic) -> tuple[sp.Basic, int]:
    if isinstance(expr, sp.Sum):
        body, height = _rename(expr.function)
        mapping: dict[sp.Basic, sp.Basic] = {}
        limits = []
        for pos, (var, lo, hi) in enumerate(expr.limits):
            lo, hi = lo.xreplace(mapping), hi.xreplace(mapping)  # a later limit may use an earlier index
            mapping[var] = sp.Symbol(f"ι{height}_{pos}", integer=True)
            limits.append((mapping[var], lo, hi))
        return sp.Sum(body.xreplace(mapping), *limits), height + 1
    if not expr.args:
        return expr, 0
    parts = [_rename(a) for a in expr.args]
    return expr.func(*(p for p, _ in parts)), max(h for _, h in parts)


# ---------------------------------------------------------------------------------------------------------------
# numeric witness
# ---------------------------------------------------------------------------------------------------------------


def _rng_for(step: Step, seed: int) -> random.Random:
    return random.Random(seed ^ zlib.crc32(step.name.encode()))


def numeric_equal(lhs: Expression, rhs: Expression, rng: random.Random) -> bool:
    """Substitute seeded random values for every symbol and compare both sides to DIGITS digits."""
    left, right = _entries(lhs), _entries(rhs)
    if len(left) != len(right) or _shape(lhs) != _shape(rhs):
        return False
    both = [*left, *right]
    # 1. integer symbols (dimensions, indices, positions) -> 2..6, then unroll the now finite sums
    ints = sorted({s for e in both for s in e.free_symbols if isinstance(s, sp.Symbol) and s.is_integer}, key=str)
    int_values = {s: sp.Integer(rng.randint(2, 6)) for s in ints}
    both = [sp.sympify(e).xreplace(int_values) for e in both]
    both = [e.doit() if e.has(sp.Sum) else e for e in both]
    # 2. entries of IndexedBases, then every remaining symbol -> nonzero random rationals, carried as DIGITS-digit
    #    floats so that every operation is evaluated as soon as its arguments are numbers
    indexed = sorted({a for e in both for a in e.atoms(sp.Indexed)}, key=str)
    values: dict[sp.Basic, sp.Basic] = {a: _random_number(rng, positive=bool(a.is_positive)) for a in indexed}
    both = [e.xreplace(values) for e in both]
    symbols = sorted({s for e in both for s in e.free_symbols}, key=str)
    values = {s: _random_number(rng, positive=bool(s.is_positive)) for s in symbols}
    numbers = [sp.N(e.xreplace(values), DIGITS) for e in both]
    half = len(numbers) // 2
    return all(_close(a, b) for a, b in zip(numbers[:half], numbers[half:], strict=True))


def _random_number(rng: random.Random, *, positive: bool) -> sp.Float:
    """A nonzero rational of magnitude 1/90 .. 9.9, as a DIGITS-digit float: zero would hide a missing term."""
    value = sp.Rational(rng.randint(1, 99), rng.randint(1, 9)) / 10
    return sp.Float(value if positive or rng.random() < 0.5 else -value, DIGITS)


def _close(a: sp.Basic, b: sp.Basic) -> bool:
    if not (a.is_number and b.is_number):
        return False  # a symbol survived substitution: the two sides cannot be compared
    if not (a.is_finite and b.is_finite):
        return bool(a == b)  # e.g. both -oo (the empty softmax tile's max)
    scale = sp.Max(1, abs(a), abs(b))
    return bool(abs(a - b) <= REL_TOL * scale)


def _entries(e: Expression) -> list[sp.Expr]:
    return list(e) if isinstance(e, MatrixBase) else [e]


def _shape(e: Expression) -> tuple[int, int] | None:
    return e.shape if isinstance(e, MatrixBase) else None
