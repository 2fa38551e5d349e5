"""Each fused rule as something a fuzzer can run: a strategy of Cases, and four functions found by name.

A `Case` holds the stored inputs of one example (arrays in the storage dtype, keyed by the rule's parameter names),
its shared parameters (eps, a block's config), the fused order's own parameters (a tiling, a merge tree), the input
family it was drawn from and the accumulation dtype. Its repr is a Python expression that rebuilds it, so a failing
example printed by Hypothesis can be pasted into a test:

    from normfuse_ref.fuzz.rules import Case, RULES, evaluate
    case = Case(rule='rms_norm_linear', dtype='float16', ...)      # pasted
    print(evaluate(RULES['rms_norm_linear'], case).explain())

A `Rule` is the rule's name, its case strategy and four plain functions, called with the Case's entries as keyword
arguments (the arrays' keys are the functions' parameter names):

    reference(**arrays, **params, acc=acc)           the textbook composition of `normfuse_ref.layers`
    fused(**arrays, **params, **order, acc=acc)      the library's fused rule (`normfuse_ref.fusion`, or the
                                                     model's own decoder block), the code the model runs
    exact(**arrays_in_float64, **params)             the independent oracle (`normfuse_ref.accuracy.oracle`)
    bounds(**arrays, **params, **order, acc=acc)     the allowance (`normfuse_ref.accuracy.equivalence`)

`evaluate(rule, case)` runs the three and returns the `equivalence.Verdict`. The fused functions are looked up on
their modules at call time, so a test can monkeypatch a wrong rule in and watch the checker say no.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from hypothesis import assume, event, note, target
from hypothesis import strategies as st

from .. import fusion, layers
from ..accuracy import equivalence as eq
from ..accuracy import oracle
from ..models.llama.config import LlamaConfig
from ..models.llama.forward import decoder_block, empty_cache
from ..models.llama.weights import param_shapes, prepare_block
from ..ops import NumpyExecutor
from ..precision import DTYPES, Array, accumulation_dtype, resolve_dtype
from . import strategies as s

__all__ = [
    "RULES",
    "Case",
    "Outcome",
    "Rule",
    "array_literal",
    "assert_no_worse",
    "decoder_block_cases",
    "evaluate",
    "layer_norm_linear_cases",
    "merge_tree",
    "online_merge_cases",
    "rms_norm_linear_cases",
    "run",
    "softmax_linear_cases",
    "tile_states",
]

#: Arrays up to this many entries are printed as np.array(...) literals in a Case's repr; larger ones by shape.
LITERAL_MAX = 512

#: What a strategy accepts for `acc`: a dtype name, None (the policy), or a strategy drawing one of those.
AccLike = str | None | st.SearchStrategy[str | None]


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
        return f"np.array({a.tolist()!r})"
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
    params: Mapping[str, Any] = field(default_factory=dict)  # every order's: eps, a block's config
    order: Mapping[str, Any] = field(default_factory=dict)  # the fused order's own: tile_size, tiles, merges
    family: str = "-"  # the input family drawn (finite, outlier, offset, ...)
    acc: str | None = None  # the accumulation dtype (None: the policy)

    def __repr__(self) -> str:
        arrs = ", ".join(f"{k!r}: {_describe(v)}" for k, v in self.arrays.items())
        return (
            f"Case(rule={self.rule!r}, dtype={self.dtype!r}, arrays={{{arrs}}}, params={dict(self.params)!r}, "
            f"order={dict(self.order)!r}, family={self.family!r}, acc={self.acc!r})"
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
# The rules and how a case is judged
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A fused rule under test: how to draw cases, the two orders, the oracle and the per-output allowance."""

    name: str
    summary: str  # the identity, in one line
    cases: Callable[..., st.SearchStrategy[Case]]  # cases(dtype=..., acc=..., rows=...) -> strategy
    reference: Callable[..., Array]
    fused: Callable[..., Array]
    exact: Callable[..., Array]
    bounds: Callable[..., eq.RuleBounds]
    row_kinds: tuple[str, ...]  # the input families `cases(rows=...)` accepts; the first is the default
    passthrough: str | None = None  # the input the output contains unchanged (a block's residual stream x)


class Outcome(NamedTuple):
    """Both orders' results, the oracle's, and the verdict on one case."""

    fused: Array
    reference: Array
    exact: Array
    verdict: eq.Verdict


def run(rule: Rule, case: Case, *, fused: Callable[..., Array] | None = None) -> Outcome:
    """Run both orders and the oracle on `case` (`fused` overrides the rule's fused order)."""
    a, p, o = case.arrays, case.params, case.order
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        ref = np.asarray(rule.reference(**a, **p, acc=case.acc))
        out = np.asarray((fused or rule.fused)(**a, **p, **o, acc=case.acc))
        ex = np.asarray(rule.exact(**case.f64(), **p))
        for order, result in (("fused", out), ("reference", ref)):
            if result.shape != ex.shape:
                raise AssertionError(f"the {order} order returned shape {result.shape}, not {ex.shape}")
        bounds = rule.bounds(**a, **p, **o, acc=case.acc)
        return Outcome(out, ref, ex, eq.compare(out, ref, ex, bounds, storage=case.dtype))


def evaluate(rule: Rule, case: Case, *, fused: Callable[..., Array] | None = None) -> eq.Verdict:
    """The criterion's verdict on `case`."""
    return run(rule, case, fused=fused).verdict


def assert_no_worse(
    rule: Rule, case: Case, *, fused: Callable[..., Array] | None = None, strict: bool = False
) -> eq.Verdict:
    """The property body, inside a Hypothesis test: reject an all-zero exact output (it checks nothing about the
    scale), note the reproduction, steer towards the worst case (`target` on the share of the allowance used), and
    assert the criterion with the stated hazards (`Verdict.ok_given_hazards`; `strict`: without them, `Verdict.ok`,
    for a mitigation that must remove the hazard); a row that needed a hazard is an `event` (Hypothesis counts them
    in its statistics)."""
    v = evaluate(rule, case, fused=fused)
    assume(not v.exact_is_zero)
    note(f"{case.rule} in {case.dtype} (acc={case.acc or 'policy'}): {case.shapes()}")
    note(
        "reproduce: import numpy as np; from normfuse_ref.precision import DTYPES; from normfuse_ref.fuzz.rules "
        "import Case, RULES, evaluate; from normfuse_ref.fuzz.strategies import MergeStep; from "
        "normfuse_ref.models.llama.config import LlamaConfig; "
        f"print(evaluate(RULES[{case.rule!r}], <the Case drawn above>).explain())"
    )
    event(f"rows: {case.family}")
    if np.any(v.needs_hazard):
        event("a stated hazard was needed")
    if np.any(v.unchecked):
        event("some row unchecked (its bound says nothing)")
    target(min(v.budget, 1e6), label="share of the allowance used")
    assert v.ok if strict else v.ok_given_hazards, v.explain()
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


def _acc(draw: st.DrawFn, acc: AccLike) -> str | None:
    return draw(acc, label="acc") if isinstance(acc, st.SearchStrategy) else acc


def _eps(draw: st.DrawFn, kind: str, dtype: str) -> float:
    return draw(s.epsilons(dominating=dtype) if kind == "eps_dominated" else s.epsilons())


# --- RMSNorm -> linear ------------------------------------------------------------------------------------------

RMS_ROW_KINDS = ("mixed", "finite", "outlier", "eps_dominated", "offset")


# reference: the textbook order, from the reference layers
def reference_rms_norm_linear(x: Array, g: Array, F: Array, eps: float, *, acc: str | None) -> Array:
    return layers.linear(layers.rms_norm(x, g, eps, acc=acc), F, acc=acc)


@st.composite
def rms_norm_linear_cases(draw: st.DrawFn, *, dtype: str, acc: AccLike = None, rows: str = "mixed") -> Case:
    """x (rows, n), g (n,), F (n, m) in `dtype`, eps; `rows` picks the activations (mixed = finite | outlier |
    eps-dominated)."""
    kind = draw(st.sampled_from(["finite", "outlier", "eps_dominated"])) if rows == "mixed" else rows
    eps = _eps(draw, kind, dtype)
    n, m, r = _shapes("rms_norm_linear", min_n=_MIN_N.get(kind, 1))
    x = draw(_rows_strategy(kind, n=n, rows=r, dtype=dtype, eps=eps), label="x")
    g = draw(s.gains(n=n, dtype=dtype), label="g")
    F = draw(s.weights(n=n, m=m, dtype=dtype), label="F")
    return Case("rms_norm_linear", dtype, {"x": x, "g": g, "F": F}, {"eps": eps}, {}, kind, _acc(draw, acc))


# --- LayerNorm -> linear ----------------------------------------------------------------------------------------

LN_ROW_KINDS = ("mixed", "finite", "outlier", "offset", "centred", "eps_dominated")


# reference: the textbook order, from the reference layers
def reference_layer_norm_linear(x: Array, gamma: Array, beta: Array, F: Array, eps: float, *, acc: str | None) -> Array:
    return layers.linear(layers.layer_norm(x, gamma, beta, eps, acc=acc), F, acc=acc)


@st.composite
def layer_norm_linear_cases(draw: st.DrawFn, *, dtype: str, acc: AccLike = None, rows: str = "mixed") -> Case:
    """x (rows, n), gamma, beta (n,), F (n, m), eps. rows="mixed" draws finite | outlier | offset | eps-dominated
    rows in every dtype: where the centring hazard applies (offset rows in 16/8-bit storage) the property states
    its condition instead of avoiding the inputs (docs/hazards.md, hazard 1)."""
    kind = draw(st.sampled_from(["finite", "outlier", "offset", "eps_dominated"])) if rows == "mixed" else rows
    eps = _eps(draw, kind, dtype)
    n, m, r = _shapes("layer_norm_linear", min_n=_MIN_N.get(kind, 1))
    x = draw(_rows_strategy(kind, n=n, rows=r, dtype=dtype, eps=eps), label="x")
    gamma = draw(s.gains(n=n, dtype=dtype), label="gamma")
    beta = draw(s.biases(n=n, dtype=dtype), label="beta")
    F = draw(s.weights(n=n, m=m, dtype=dtype), label="F")
    arrays = {"x": x, "gamma": gamma, "beta": beta, "F": F}
    return Case("layer_norm_linear", dtype, arrays, {"eps": eps}, {}, kind, _acc(draw, acc))


# --- Softmax -> linear ------------------------------------------------------------------------------------------

SM_ROW_KINDS = ("mixed", "scores", "masked")


def _score_kind(draw: st.DrawFn, dtype: str, rows: str) -> str:
    has_inf = bool(np.isinf(np.array(-np.inf).astype(resolve_dtype(dtype))))
    if rows == "mixed":
        return draw(st.sampled_from(["scores", "masked"])) if has_inf else "scores"
    if rows == "masked" and not has_inf:
        raise ValueError(f"{dtype} cannot store -inf: no masked score rows in it")
    return rows


# reference: the textbook order, from the reference layers
def reference_softmax_linear(z: Array, V: Array, *, acc: str | None) -> Array:
    return layers.linear(layers.softmax(z, acc=acc), V, acc=acc)


@st.composite
def softmax_linear_cases(draw: st.DrawFn, *, dtype: str, acc: AccLike = None, rows: str = "mixed") -> Case:
    """z (rows, n) scores (wide ranges; masked rows where the dtype has -inf), V (n, m), tile_size None or 1..n."""
    kind = _score_kind(draw, dtype, rows)
    n, m, r = _shapes("softmax_linear", min_n=1)
    strat = s.masked_score_rows if kind == "masked" else s.score_rows
    z = draw(strat(n=n, rows=r, dtype=dtype), label="z")
    V = draw(s.finite_rows(n=m, rows=n, dtype=dtype), label="V")
    tile = draw(st.none() | st.integers(1, z.shape[-1]), label="tile_size")
    return Case("softmax_linear", dtype, {"z": z, "V": V}, {}, {"tile_size": tile}, kind, _acc(draw, acc))


# --- The online merge over random tilings and merge trees --------------------------------------------------------


def merge_tree(
    states: list[fusion.SoftmaxState],
    steps: list[s.MergeStep],
    merge: Callable[[fusion.SoftmaxState, fusion.SoftmaxState], fusion.SoftmaxState] | None = None,
) -> fusion.SoftmaxState:
    """Merge tile states along `steps` (see strategies.merge_orders); `merge` defaults to the library's
    fusion.online_softmax_merge, looked up at call time."""
    merge = merge or fusion.online_softmax_merge
    work = list(states)
    for step in steps:
        a, b = work[step.i], work[step.j]
        merged = merge(b, a) if step.swap else merge(a, b)
        work = [w for k, w in enumerate(work) if k not in (step.i, step.j)] + [merged]
    if len(work) != 1:
        raise ValueError(f"the merge steps leave {len(work)} states; a tree over k tiles has k - 1 steps")
    return work[0]


def tree_depth(tiles: int, steps: list[s.MergeStep]) -> int:
    """The most merges any tile passes in the tree `steps` over `tiles` states."""
    depths: list[list[int]] = [[0] for _ in range(tiles)]
    for step in steps:
        merged = [d + 1 for d in depths[step.i] + depths[step.j]]
        depths = [d for k, d in enumerate(depths) if k not in (step.i, step.j)] + [merged]
    return max(depths[0]) if len(depths) == 1 else 0


def tile_states(za: Array, Va: Array, tiles: list[int]) -> list[fusion.SoftmaxState]:
    """The states of consecutive tiles of the given lengths (in za's dtype, the accumulation dtype)."""
    edges = np.cumsum([0, *tiles])
    return [fusion.softmax_tile_state(za[..., a:b], Va[..., a:b, :]) for a, b in itertools.pairwise(edges)]


# reference: softmax(z) @ V, as any tiling merged by any tree
def merge_tree_linear(z: Array, V: Array, *, tiles: list[int], merges: list[s.MergeStep], acc: str | None) -> Array:
    """The fused order over an arbitrary tiling and merge tree: the library's tile state, merge and finalisation."""
    a = accumulation_dtype(z.dtype, acc)
    root = merge_tree(tile_states(z.astype(a), V.astype(a), list(tiles)), list(merges))
    return fusion.softmax_finalize(root).astype(z.dtype)


def merge_tree_bounds(
    z: Array, V: Array, *, tiles: list[int], merges: list[s.MergeStep], acc: str | None
) -> eq.RuleBounds:
    return eq.merge_tree_bounds(z, V, tile_len=max(tiles), depth=tree_depth(len(tiles), list(merges)), acc=acc)


def _exact_softmax_linear(z: Array, V: Array) -> Array:
    return oracle.softmax_linear(z, V)


@st.composite
def online_merge_cases(draw: st.DrawFn, *, dtype: str, acc: AccLike = None, rows: str = "mixed") -> Case:
    """z (rows, n), V (n, m), a random tiling of n and a random merge tree over its tiles."""
    kind = _score_kind(draw, dtype, rows)
    n, m, r = _shapes("online_softmax_merge", min_n=1, max_n=1024)
    strat = s.masked_score_rows if kind == "masked" else s.score_rows
    z = draw(strat(n=n, rows=r, dtype=dtype), label="z")
    V = draw(s.finite_rows(n=m, rows=n, dtype=dtype), label="V")
    tiles = draw(s.tilings(n=z.shape[-1]), label="tiles")
    steps = draw(s.merge_orders(tiles=len(tiles)), label="merge order")
    order = {"tiles": tiles, "merges": steps}
    return Case("online_softmax_merge", dtype, {"z": z, "V": V}, {}, order, kind, _acc(draw, acc))


# --- A Llama decoder block ----------------------------------------------------------------------------------------

#: One layer's weights, by their GGUF tensor names (blk.N.<name>.weight), in row-vector layout (in, out).
BLOCK_WEIGHTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def block_weight_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The shape of each weight of one block of `cfg` (from `weights.param_shapes`)."""
    shapes = param_shapes(cfg.replace(n_layers=1))
    return {name: shapes[f"blk.0.{name}.weight"] for name in BLOCK_WEIGHTS}


# reference: the textbook order, from the reference layers
def reference_decoder_block(
    x: Array,
    positions: Array,
    cfg: LlamaConfig,
    *,
    acc: str | None,
    attn_norm: Array,
    attn_q: Array,
    attn_k: Array,
    attn_v: Array,
    attn_output: Array,
    ffn_norm: Array,
    ffn_gate: Array,
    ffn_up: Array,
    ffn_down: Array,
) -> Array:
    """x (T, d) at positions (T,): every layer rounds its output once to x's dtype; T queries over the same T keys."""
    T, Hq, Hkv, hd = x.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    a = accumulation_dtype(x.dtype, acc)
    pos = np.asarray(positions)[:, None]  # (T, 1)
    base, layout = cfg.rope_base, cfg.rope_layout
    h = layers.rms_norm(x, attn_norm, cfg.norm_eps, acc=acc)  # (T, d)
    q = layers.rope(layers.linear(h, attn_q, acc=acc).reshape(T, Hq, hd), pos, base=base, layout=layout, acc=acc)
    k = layers.rope(layers.linear(h, attn_k, acc=acc).reshape(T, Hkv, hd), pos, base=base, layout=layout, acc=acc)
    v = layers.linear(h, attn_v, acc=acc).reshape(T, Hkv, hd)  # (T, Hkv, hd)
    o = layers.attention(q, k, v, causal=True, acc=acc).reshape(T, Hq * hd)  # (T, Hq*hd)
    x1 = (x.astype(a) + layers.linear(o, attn_output, acc=acc).astype(a)).astype(x.dtype)  # (T, d)
    h2 = layers.rms_norm(x1, ffn_norm, cfg.norm_eps, acc=acc)  # (T, d)
    down = layers.swiglu(h2, ffn_gate, ffn_up, ffn_down, acc=acc)  # (T, d)
    return (x1.astype(a) + down.astype(a)).astype(x.dtype)  # (T, d)


def fused_decoder_block(
    x: Array, positions: Array, cfg: LlamaConfig, *, tile_size: int | None, acc: str | None, **weights: Array
) -> Array:
    """The model's own decoder block (`llama.forward.decoder_block`) in fused mode on a plain executor, with its
    weights prepared as the model prepares them (gains folded) and an empty cache: the code the model runs."""
    params = {f"blk.0.{k}.weight": v for k, v in weights.items()}
    w = prepare_block(params, 0, "fused")
    cache = empty_cache(cfg.replace(n_layers=1), x.dtype, capacity=x.shape[0])
    ex = NumpyExecutor(storage=x.dtype, acc=acc, tile_size=tile_size)
    return np.asarray(decoder_block(ex, x, w, 0, cache, np.asarray(positions), cfg, "fused"))


def _exact_decoder_block(x: Array, positions: Array, cfg: LlamaConfig, **weights: Array) -> Array:
    return oracle.decoder_block(x, positions, cfg, **weights)


@st.composite
def decoder_block_cases(draw: st.DrawFn, *, dtype: str, acc: AccLike = None, rows: str = "mixed") -> Case:
    """A tiny Llama block: config (GQA, even head dim), x (T, d) ordinary or outlier activations, positions,
    weights at realistic scale, gains, and the fused attention's tile size."""
    kind = draw(st.sampled_from(["finite", "outlier"])) if rows == "mixed" else rows
    cfg = draw(s.block_configs(), label="cfg")
    T = draw(st.integers(1, 8), label="T")
    x = draw(_rows_strategy(kind, n=st.just(cfg.dim), rows=st.just(T), dtype=dtype, eps=cfg.norm_eps), label="x")
    p0 = draw(st.integers(0, 64), label="first position")
    w = {name: draw(_weight(shape, dtype), label=name) for name, shape in block_weight_shapes(cfg).items()}
    tile = draw(st.none() | st.integers(1, T), label="tile_size")
    arrays = {"x": x, "positions": np.arange(p0, p0 + T), **w}
    return Case("decoder_block", dtype, arrays, {"cfg": cfg}, {"tile_size": tile}, kind, _acc(draw, acc))


def _weight(shape: tuple[int, ...], dtype: str) -> st.SearchStrategy[Array]:
    if len(shape) == 1:
        return s.gains(n=shape[0], dtype=dtype)
    return s.weights(n=shape[0], m=shape[1], dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------

RULES: dict[str, Rule] = {
    r.name: r
    for r in [
        Rule(
            "rms_norm_linear",
            "rms_norm(x, g) @ F == s * (x @ (g ⊙ F))",
            rms_norm_linear_cases,
            reference_rms_norm_linear,
            lambda **k: fusion.rms_norm_linear(**k),
            oracle.rms_norm_linear,
            eq.rms_norm_linear_bounds,
            RMS_ROW_KINDS,
        ),
        Rule(
            "layer_norm_linear",
            "layer_norm(x, gamma, beta) @ F == s * (x @ F') + beta @ F",
            layer_norm_linear_cases,
            reference_layer_norm_linear,
            lambda **k: fusion.layer_norm_linear(**k),
            oracle.layer_norm_linear,
            eq.layer_norm_linear_bounds,
            LN_ROW_KINDS,
        ),
        Rule(
            "softmax_linear",
            "softmax(z) @ V == (e^{z-m} @ V) / sum e^{z-m}, tiles merged left to right",
            softmax_linear_cases,
            reference_softmax_linear,
            lambda **k: fusion.softmax_linear(**k),
            _exact_softmax_linear,
            eq.softmax_linear_bounds,
            SM_ROW_KINDS,
        ),
        Rule(
            "online_softmax_merge",
            "any tiling, any merge tree of the online-softmax states == softmax(z) @ V",
            online_merge_cases,
            reference_softmax_linear,
            merge_tree_linear,
            _exact_softmax_linear,
            merge_tree_bounds,
            SM_ROW_KINDS,
        ),
        Rule(
            "decoder_block",
            "Llama block with rms_norm_linear at QKV and gate/up, softmax_linear at V == reference order",
            decoder_block_cases,
            reference_decoder_block,
            lambda **k: fused_decoder_block(**k),
            _exact_decoder_block,
            eq.decoder_block_bounds,
            ("mixed", "finite", "outlier"),
            passthrough="x",
        ),
    ]
}
