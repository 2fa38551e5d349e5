"""Each fused rule as something a fuzzer can run: a strategy of Cases, the two orders, the oracle, the allowance.

A `Case` holds the stored inputs of one example (arrays in the storage dtype) and its parameters, and its repr
is a Python expression that rebuilds it, so a failing example printed by Hypothesis can be pasted into a test:

    from normfuse_ref.testing.rules import Case, RULES, evaluate
    case = Case(rule='rms_norm_linear', dtype='float16', ...)      # pasted
    assert evaluate(RULES['rms_norm_linear'], case).ok, evaluate(RULES['rms_norm_linear'], case).explain()

`evaluate(rule, case)` runs the reference order, the fused order and the float64 oracle on the case and returns
the `equivalence.Verdict`. The fused functions are looked up on `normfuse_ref.fusion` at call time, so a test can
monkeypatch a wrong rule in and watch the checker say no.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import event, note, target
from hypothesis import strategies as st
from numpy.typing import NDArray

from .. import fusion, layers
from ..precision import DTYPES, accumulation_dtype, resolve_dtype
from . import block as blk
from . import strategies as s
from .equivalence import (
    RuleBounds,
    Verdict,
    compare,
    layer_norm_linear_bounds,
    merge_tree_bounds,
    rms_norm_linear_bounds,
    softmax_linear_bounds,
)

__all__ = [
    "RULES",
    "Case",
    "Rule",
    "array_literal",
    "assert_no_worse",
    "decoder_block_cases",
    "evaluate",
    "layer_norm_linear_cases",
    "merge_tree",
    "online_merge_cases",
    "rms_norm_linear_cases",
    "softmax_linear_cases",
]

Array = NDArray[Any]

#: Arrays up to this many entries are printed as np.array(...) literals in a Case's repr; larger ones by shape.
LITERAL_MAX = 512


# ---------------------------------------------------------------------------------------------------------------
# Cases and their copy-pasteable repr
# ---------------------------------------------------------------------------------------------------------------


def _num(v: float) -> str:
    if np.isnan(v):
        return "np.nan"
    if np.isinf(v):
        return "np.inf" if v > 0 else "-np.inf"
    return repr(float(v))


def array_literal(a: Array) -> str:
    """`np.array([...]).astype(DTYPES['<dtype>'])`: exact (float64 reprs round-trip, the dtype embeds in float64)."""
    a = np.asarray(a)
    name = next((k for k, v in DTYPES.items() if v == a.dtype), None)

    def rec(x: Any) -> str:
        if isinstance(x, list):
            return "[" + ", ".join(rec(e) for e in x) + "]"
        return _num(x)

    if a.dtype.kind in "iub":
        body = f"np.array({a.tolist()!r})"
        return body
    body = f"np.array({rec(a.astype(np.float64).tolist())})"
    return body if name in (None, "float64") else f"{body}.astype(DTYPES[{name!r}])"


def _describe(a: Array) -> str:
    a = np.asarray(a)
    if a.size <= LITERAL_MAX:
        return array_literal(a)
    return f"<array shape={a.shape} dtype={a.dtype.name}: too large to print; use the @reproduce_failure blob>"


@dataclass(frozen=True, eq=False)
class Case:
    """One example: the stored input arrays (storage dtype) and the parameters of one rule."""

    rule: str
    dtype: str
    arrays: Mapping[str, Array]
    params: Mapping[str, Any] = field(default_factory=dict)
    acc: str | None = None

    def __repr__(self) -> str:
        arrs = ", ".join(f"{k!r}: {_describe(v)}" for k, v in self.arrays.items())
        return (
            f"Case(rule={self.rule!r}, dtype={self.dtype!r}, arrays={{{arrs}}}, params={dict(self.params)!r}, "
            f"acc={self.acc!r})"
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """Hypothesis' pretty printer: print the pasteable repr, not a field-by-field dump."""
        p.text(repr(self))

    def shapes(self) -> str:
        """`x: float16 (2, 7), F: float16 (7, 3), ...` for notes."""
        return ", ".join(f"{k}: {np.asarray(v).dtype.name} {np.asarray(v).shape}" for k, v in self.arrays.items())

    def f64(self) -> dict[str, Array]:
        """The same inputs as float64 arrays (exactly; integer arrays unchanged): what the oracle runs on."""
        return {
            k: (v if np.asarray(v).dtype.kind in "iub" else np.asarray(v).astype(np.float64))
            for k, v in self.arrays.items()
        }


# ---------------------------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A fused rule under test: how to draw cases, the two orders, the oracle and the per-output allowance."""

    name: str
    summary: str  # the identity, in one line
    cases: Callable[..., st.SearchStrategy[Case]]  # cases(dtype=..., acc=..., rows=...) -> strategy
    reference: Callable[[Case], Array]
    fused: Callable[[Case], Array]
    exact: Callable[[Case], Array]  # the oracle: the reference composition in float64 on the stored inputs
    bounds: Callable[[Case], RuleBounds]
    row_kinds: tuple[str, ...]  # the input families `cases(rows=...)` accepts; the first is the default


def evaluate(rule: Rule, case: Case, *, fused: Callable[[Case], Array] | None = None) -> Verdict:
    """Run both orders and the oracle on `case`; the criterion's verdict (`fused` overrides the rule's fused order)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        ref = rule.reference(case)
        out = (fused or rule.fused)(case)
        ex = rule.exact(case)
        return compare(out, ref, ex, rule.bounds(case), storage=case.dtype)


def assert_no_worse(rule: Rule, case: Case, *, fused: Callable[[Case], Array] | None = None) -> Verdict:
    """The property body, inside a Hypothesis test: evaluate, note the reproduction, steer towards the worst
    case (`target` on the share of the allowance used), and assert E_fused <= c E_ref + atol."""
    v = evaluate(rule, case, fused=fused)
    note(f"{case.rule} in {case.dtype} (acc={case.acc or 'policy'}): {case.shapes()}")
    note(
        "reproduce: import numpy as np; from normfuse_ref.precision import DTYPES; from normfuse_ref.testing.rules "
        "import Case, RULES, evaluate; from normfuse_ref.testing.strategies import MergeStep; from "
        "normfuse_ref.testing.block import BlockConfig; "
        f"print(evaluate(RULES[{case.rule!r}], <the Case drawn above>).explain())"
    )
    event(f"rows: {case.params.get('rows', '-')}")
    target(min(v.budget, 1e6), label="share of the allowance used")
    assert v.ok, v.explain()
    return v


_ROWS: dict[str, Callable[..., st.SearchStrategy[Array]]] = {
    "finite": s.finite_rows,
    "outlier": s.outlier_rows,
    "offset": s.offset_rows,
    "centred": s.centred_rows,
    "eps_dominated": s.eps_dominated_rows,
}
_MIN_N = {"outlier": 2, "offset": 2}


def _rows_strategy(
    kind: str, *, n: st.SearchStrategy[int], rows: st.SearchStrategy[int], dtype: str, eps: float
) -> st.SearchStrategy[Array]:
    if kind not in _ROWS:
        raise ValueError(f"unknown row kind {kind!r}; known: {', '.join(_ROWS)}")
    if kind == "eps_dominated":
        return s.eps_dominated_rows(n=n, rows=rows, dtype=dtype, eps=eps)
    return _ROWS[kind](n=n, rows=rows, dtype=dtype)


def _shapes(key: str, *, min_n: int, max_n: int = 4096, max_m: int = 16) -> tuple[st.SearchStrategy[int], ...]:
    """Coupled shapes: n (row length, = F's rows), m (outputs), rows; shared within one example by key."""
    n = st.shared(s.row_lengths(min_n=min_n, max_n=max_n), key=f"{key}.n")
    m = st.shared(st.integers(1, max_m), key=f"{key}.m")
    r = st.shared(s.row_counts(), key=f"{key}.rows")
    return n, m, r


# --- RMSNorm -> linear ------------------------------------------------------------------------------------------

RMS_ROW_KINDS = ("mixed", "finite", "outlier", "eps_dominated", "offset")


@st.composite
def rms_norm_linear_cases(draw: st.DrawFn, *, dtype: str, acc: str | None = None, rows: str = "mixed") -> Case:
    """x (rows, n), g (n,), F (n, m) in `dtype`, eps; `rows` picks the activations (mixed = finite | outlier |
    eps-dominated)."""
    kind = draw(st.sampled_from(["finite", "outlier", "eps_dominated"])) if rows == "mixed" else rows
    eps = draw(s.epsilons())
    n, m, r = _shapes("rms_norm_linear", min_n=_MIN_N.get(kind, 1))
    x = draw(_rows_strategy(kind, n=n, rows=r, dtype=dtype, eps=eps), label="x")
    g = draw(s.gains(n=n, dtype=dtype), label="g")
    F = draw(s.weights(n=n, m=m, dtype=dtype), label="F")
    return Case("rms_norm_linear", dtype, {"x": x, "g": g, "F": F}, {"eps": eps, "rows": kind}, acc)


def _rms_ref(c: Case) -> Array:
    a = c.arrays
    return layers.linear(layers.rms_norm(a["x"], a["g"], c.params["eps"], acc=c.acc), a["F"], acc=c.acc)


def _rms_exact(c: Case) -> Array:
    a = c.f64()
    return layers.linear(layers.rms_norm(a["x"], a["g"], c.params["eps"]), a["F"])


def _rms_fused(c: Case) -> Array:
    a = c.arrays
    return fusion.rms_norm_linear(a["x"], a["g"], a["F"], c.params["eps"], acc=c.acc)


def _rms_bounds(c: Case) -> RuleBounds:
    a = c.arrays
    return rms_norm_linear_bounds(a["x"], a["g"], a["F"], c.params["eps"], acc=c.acc)


# --- LayerNorm -> linear ----------------------------------------------------------------------------------------

LN_ROW_KINDS = ("mixed", "finite", "outlier", "offset", "centred", "eps_dominated")


@st.composite
def layer_norm_linear_cases(draw: st.DrawFn, *, dtype: str, acc: str | None = None, rows: str = "mixed") -> Case:
    """x (rows, n), gamma, beta (n,), F (n, m), eps. rows="mixed" draws finite | outlier | offset | eps-dominated
    rows in float32/float64 storage, and centred rows in 16/8-bit storage (where offsets are the centring hazard,
    see tests/test_fuzz_layer_norm_linear.py)."""
    if rows == "mixed":
        wide = resolve_dtype(dtype).itemsize >= 4
        kind = draw(st.sampled_from(["finite", "outlier", "offset", "eps_dominated"])) if wide else "centred"
    else:
        kind = rows
    eps = draw(s.epsilons())
    n, m, r = _shapes("layer_norm_linear", min_n=_MIN_N.get(kind, 1))
    x = draw(_rows_strategy(kind, n=n, rows=r, dtype=dtype, eps=eps), label="x")
    gamma = draw(s.gains(n=n, dtype=dtype), label="gamma")
    beta = draw(s.biases(n=n, dtype=dtype), label="beta")
    F = draw(s.weights(n=n, m=m, dtype=dtype), label="F")
    return Case(
        "layer_norm_linear", dtype, {"x": x, "gamma": gamma, "beta": beta, "F": F}, {"eps": eps, "rows": kind}, acc
    )


def _ln_ref(c: Case) -> Array:
    a = c.arrays
    return layers.linear(
        layers.layer_norm(a["x"], a["gamma"], a["beta"], c.params["eps"], acc=c.acc), a["F"], acc=c.acc
    )


def _ln_exact(c: Case) -> Array:
    a = c.f64()
    return layers.linear(layers.layer_norm(a["x"], a["gamma"], a["beta"], c.params["eps"]), a["F"])


def _ln_fused(c: Case) -> Array:
    a = c.arrays
    return fusion.layer_norm_linear(a["x"], a["gamma"], a["beta"], a["F"], c.params["eps"], acc=c.acc)


def _ln_bounds(c: Case) -> RuleBounds:
    a = c.arrays
    return layer_norm_linear_bounds(a["x"], a["gamma"], a["beta"], a["F"], c.params["eps"], acc=c.acc)


# --- Softmax -> linear ------------------------------------------------------------------------------------------

SM_ROW_KINDS = ("mixed", "scores", "masked")


def _score_kind(draw: st.DrawFn, dtype: str, rows: str) -> str:
    has_inf = bool(np.isinf(np.array(-np.inf).astype(resolve_dtype(dtype))))
    if rows == "mixed":
        return draw(st.sampled_from(["scores", "masked"])) if has_inf else "scores"
    if rows == "masked" and not has_inf:
        raise ValueError(f"{dtype} cannot store -inf: no masked score rows in it")
    return rows


@st.composite
def softmax_linear_cases(draw: st.DrawFn, *, dtype: str, acc: str | None = None, rows: str = "mixed") -> Case:
    """z (rows, n) scores (wide ranges; masked rows where the dtype has -inf), V (n, m), tile_size None or 1..n."""
    kind = _score_kind(draw, dtype, rows)
    n, m, r = _shapes("softmax_linear", min_n=1)
    strat = s.masked_score_rows if kind == "masked" else s.score_rows
    z = draw(strat(n=n, rows=r, dtype=dtype), label="z")
    V = draw(s.finite_rows(n=m, rows=n, dtype=dtype), label="V")
    nn = z.shape[-1]
    tile = draw(st.none() | st.integers(1, nn), label="tile_size")
    return Case("softmax_linear", dtype, {"z": z, "V": V}, {"tile_size": tile, "rows": kind}, acc)


def _sm_ref(c: Case) -> Array:
    a = c.arrays
    return layers.linear(layers.softmax(a["z"], acc=c.acc), a["V"], acc=c.acc)


def _sm_exact(c: Case) -> Array:
    a = c.f64()
    return layers.linear(layers.softmax(a["z"]), a["V"])


def _sm_fused(c: Case) -> Array:
    a = c.arrays
    return fusion.softmax_linear(a["z"], a["V"], tile_size=c.params["tile_size"], acc=c.acc)


def _sm_bounds(c: Case) -> RuleBounds:
    a = c.arrays
    return softmax_linear_bounds(a["z"], a["V"], tile_size=c.params["tile_size"], acc=c.acc)


# --- The online merge over random tilings and merge trees --------------------------------------------------------


def merge_tree(
    states: list[fusion.SoftmaxState],
    steps: list[s.MergeStep],
    merge: Callable[[fusion.SoftmaxState, fusion.SoftmaxState], fusion.SoftmaxState] | None = None,
) -> tuple[fusion.SoftmaxState, int]:
    """Merge tile states along `steps` (see strategies.merge_orders); returns the root and the tree's depth (the
    most merges any tile passes). `merge` defaults to fusion.online_softmax_merge."""
    merge = merge or fusion.online_softmax_merge
    work = list(states)
    depths: list[list[int]] = [[0] for _ in states]  # per state: the merge depth of each of its leaves
    for step in steps:
        a, b = work[step.i], work[step.j]
        merged = merge(b, a) if step.swap else merge(a, b)
        d = [x + 1 for x in depths[step.i] + depths[step.j]]
        keep = [k for k in range(len(work)) if k not in (step.i, step.j)]
        work = [work[k] for k in keep] + [merged]
        depths = [depths[k] for k in keep] + [d]
    if len(work) != 1:
        raise ValueError(f"the merge steps leave {len(work)} states; a tree over k tiles has k - 1 steps")
    return work[0], max(depths[0])


def tile_states(za: Array, Va: Array, tiles: list[int]) -> list[fusion.SoftmaxState]:
    """The states of consecutive tiles of the given lengths (in za's dtype, the accumulation dtype)."""
    edges = np.cumsum([0, *tiles])
    return [fusion.softmax_tile_state(za[..., a:b], Va[..., a:b, :]) for a, b in itertools.pairwise(edges)]


@st.composite
def online_merge_cases(draw: st.DrawFn, *, dtype: str, acc: str | None = None, rows: str = "mixed") -> Case:
    """z (rows, n), V (n, m), a random tiling of n and a random merge tree over its tiles."""
    kind = _score_kind(draw, dtype, rows)
    n, m, r = _shapes("online_merge", min_n=1, max_n=1024)
    strat = s.masked_score_rows if kind == "masked" else s.score_rows
    z = draw(strat(n=n, rows=r, dtype=dtype), label="z")
    V = draw(s.finite_rows(n=m, rows=n, dtype=dtype), label="V")
    tiles = draw(s.tilings(n=z.shape[-1]), label="tiles")
    steps = draw(s.merge_orders(tiles=len(tiles)), label="merge order")
    return Case("online_merge", dtype, {"z": z, "V": V}, {"tiles": tiles, "merges": steps, "rows": kind}, acc)


def _merge_fused(c: Case) -> Array:
    z, V = c.arrays["z"], c.arrays["V"]
    a = accumulation_dtype(z.dtype, c.acc)
    root, _ = merge_tree(tile_states(z.astype(a), V.astype(a), list(c.params["tiles"])), list(c.params["merges"]))
    return fusion.softmax_finalize(root).astype(z.dtype)


def _merge_bounds(c: Case) -> RuleBounds:
    z, V = c.arrays["z"], c.arrays["V"]
    tiles = list(c.params["tiles"])
    depth = 0
    if len(tiles) > 1:
        zero = [fusion.SoftmaxState(np.zeros(1), np.zeros(1), np.zeros(1)) for _ in tiles]
        _, depth = merge_tree(zero, list(c.params["merges"]), merge=lambda p, q: p)
    return merge_tree_bounds(z, V, tile_len=max(tiles), depth=depth, acc=c.acc)


# --- A Llama decoder block ----------------------------------------------------------------------------------------


@st.composite
def decoder_block_cases(draw: st.DrawFn, *, dtype: str, acc: str | None = None, rows: str = "mixed") -> Case:
    """A tiny Llama block: config (GQA, even head dim), x (T, d) ordinary or outlier activations, positions,
    weights at realistic scale, gains, and the fused attention's tile size."""
    kind = draw(st.sampled_from(["finite", "outlier"])) if rows == "mixed" else rows
    cfg = draw(s.block_configs(), label="cfg")
    T = draw(st.integers(1, 8), label="T")
    x = draw(_rows_strategy(kind, n=st.just(cfg.d), rows=st.just(T), dtype=dtype, eps=cfg.eps), label="x")
    p0 = draw(st.integers(0, 64), label="first position")
    w = {name: draw(_weight(shape, dtype), label=name) for name, shape in blk.weight_shapes(cfg).items()}
    tile = draw(st.none() | st.integers(1, T), label="tile_size")
    arrays = {"x": x, "positions": np.arange(p0, p0 + T), **w}
    return Case("decoder_block", dtype, arrays, {"cfg": cfg, "tile_size": tile, "rows": kind}, acc)


def _weight(shape: tuple[int, ...], dtype: str) -> st.SearchStrategy[Array]:
    if len(shape) == 1:
        return s.gains(n=shape[0], dtype=dtype)
    return s.weights(n=shape[0], m=shape[1], dtype=dtype)


def _block_weights(arrays: Mapping[str, Array]) -> dict[str, Array]:
    return {k: v for k, v in arrays.items() if k not in ("x", "positions")}


def _block_ref(c: Case) -> Array:
    a = c.arrays
    return blk.decoder_block_reference(a["x"], a["positions"], c.params["cfg"], acc=c.acc, **_block_weights(a))


def _block_fused(c: Case) -> Array:
    a = c.arrays
    return blk.decoder_block_fused(
        a["x"], a["positions"], c.params["cfg"], tile_size=c.params["tile_size"], acc=c.acc, **_block_weights(a)
    )


def _block_exact(c: Case) -> Array:
    a = c.f64()
    return blk.decoder_block_reference(a["x"], a["positions"], c.params["cfg"], **_block_weights(a))


def _block_bounds(c: Case) -> RuleBounds:
    a = c.arrays
    allow = blk.decoder_block_allowance(
        a["x"], a["positions"], c.params["cfg"], tile_size=c.params["tile_size"], acc=c.acc, **_block_weights(a)
    )
    z = np.zeros_like(allow)
    return RuleBounds(ref=allow, fused=allow, oracle=z, hazard=z)


# ---------------------------------------------------------------------------------------------------------------

RULES: dict[str, Rule] = {
    r.name: r
    for r in [
        Rule(
            "rms_norm_linear",
            "rms_norm(x, g) @ F == s * (x @ (g ⊙ F))",
            rms_norm_linear_cases,
            _rms_ref,
            _rms_fused,
            _rms_exact,
            _rms_bounds,
            RMS_ROW_KINDS,
        ),
        Rule(
            "layer_norm_linear",
            "layer_norm(x, gamma, beta) @ F == s * (x @ F') + beta @ F",
            layer_norm_linear_cases,
            _ln_ref,
            _ln_fused,
            _ln_exact,
            _ln_bounds,
            LN_ROW_KINDS,
        ),
        Rule(
            "softmax_linear",
            "softmax(z) @ V == (e^{z-m} @ V) / sum e^{z-m}, tiles merged left to right",
            softmax_linear_cases,
            _sm_ref,
            _sm_fused,
            _sm_exact,
            _sm_bounds,
            SM_ROW_KINDS,
        ),
        Rule(
            "online_merge",
            "any tiling, any merge tree of the online-softmax states == softmax(z) @ V",
            online_merge_cases,
            _sm_ref,
            _merge_fused,
            _sm_exact,
            _merge_bounds,
            SM_ROW_KINDS,
        ),
        Rule(
            "decoder_block",
            "Llama block, fused at rms_norm->QKV, softmax->V, rms_norm->gate/up == reference order",
            decoder_block_cases,
            _block_ref,
            _block_fused,
            _block_exact,
            _block_bounds,
            ("mixed", "finite", "outlier"),
        ),
    ]
}
