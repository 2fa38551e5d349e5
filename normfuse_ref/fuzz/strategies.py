"""Everything the fuzz suite draws, in one module (STYLE 7): names say what they produce.

Conventions, shared by every strategy here:
- Keyword-only parameters. Shape parameters (`n`, `m`, `rows`) take an int or a strategy of ints; pass the same
  `st.shared(...)` strategy to several strategies to couple their shapes (x of (rows, n) with F of (n, m)).
- Values are drawn in float64, bounded, and cast once to the storage `dtype`, so the returned arrays are exactly
  the stored inputs the oracle also sees (every supported dtype embeds exactly in float64). Strategies that
  promise a property of the values (an offset, an outlier factor) check it on the *stored* values.
- Small arrays (<= ELEMENTWISE_MAX entries) are drawn entry by entry, so Hypothesis shrinks them to short
  literal counterexamples; larger ones come from a drawn seed (numpy's PCG64), which keeps big n cheap. Entries
  are 0 or at least MIN_MAGNITUDE of their bound (no 1e-300s: bounded from below as well as above), and every
  row (last axis) has an entry of at least a quarter of the bound.
- Row lengths run from 1 to a few thousand; big n is rare (`row_lengths`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import DTypeLike

from ..models.llama.config import LlamaConfig
from ..precision import F64, Array, dtype_info, resolve_dtype

__all__ = [
    "ACCUMULATORS",
    "ELEMENTWISE_MAX",
    "MergeStep",
    "accumulators",
    "biases",
    "block_configs",
    "centred_rows",
    "eps_dominated_rows",
    "epsilons",
    "finite_rows",
    "gains",
    "masked_score_rows",
    "merge_orders",
    "offset_ratio",
    "offset_rows",
    "outlier_rows",
    "row_counts",
    "row_lengths",
    "score_rows",
    "tilings",
    "weights",
]

IntOrStrategy = int | st.SearchStrategy[int]

#: Arrays with at most this many entries are drawn entry by entry (they shrink to literal data).
ELEMENTWISE_MAX = 64


def _int(draw: st.DrawFn, v: IntOrStrategy) -> int:
    return v if isinstance(v, int) else draw(v)


#: Drawn entries are 0 or at least this fraction of their bound in magnitude (see `_standard`).
MIN_MAGNITUDE = 2.0**-12


def _standard(draw: st.DrawFn, shape: tuple[int, ...], *, bound: float = 3.0) -> F64:
    """Entries in [-bound, bound], roughly standard: entry by entry when small, from a seeded normal when large.

    Entries are 0 or at least MIN_MAGNITUDE * bound in magnitude: left alone, Hypothesis favours values such as
    1e-38 or 1e-300, which no activation or weight has, and in bfloat16 they reach the subnormal range where the
    fold-underflow hazard (pinned in tests/test_fuzz_rms_norm_linear.py) lives. Subnormal *stored* values still
    arise where a dtype's range puts realistic data there (fp8 weights of wide layers).
    """
    size = math.prod(shape)
    if size <= ELEMENTWISE_MAX:
        el = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False)
        x = np.asarray(draw(hnp.arrays(np.float64, shape, elements=el)), dtype=np.float64)
        x = np.where(np.abs(x) < MIN_MAGNITUDE * bound, 0.0, x)
        # Every row (last axis) gets an entry of full size: Hypothesis likes all-zero and all-tiny arrays, which
        # round to zero in fp8 and whose outputs are exactly zero, checking nothing about a normalisation's scale.
        # (How large a row is overall is the caller's `scale`.)
        for row in x.reshape(-1, shape[-1]) if size else ():
            if not np.max(np.abs(row)) >= bound / 4:
                j = draw(st.integers(0, shape[-1] - 1), label="full-size entry")
                row[j] = draw(st.sampled_from([bound, -bound]), label="its sign")
        return x
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    return np.clip(np.random.default_rng(seed).standard_normal(shape), -bound, bound)


def _log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    """A positive float between lo and hi, uniform in log scale (shrinks towards lo)."""
    return st.floats(math.log2(lo), math.log2(hi)).map(lambda e: 2.0**e)


def _cast(x: F64, dtype: DTypeLike) -> Array:
    return x.astype(resolve_dtype(dtype))


# ---------------------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------------------


def row_lengths(*, min_n: int = 1, max_n: int = 4096, big_percent: int = 4) -> st.SearchStrategy[int]:
    """A row length n in [min_n, max_n]: mostly <= 64, sometimes <= 512, `big_percent`% of the time up to max_n.

    The class is drawn first and shrinks towards the small class, so counterexamples shrink to short rows.
    """
    if not 1 <= min_n <= max_n:
        raise ValueError(f"need 1 <= min_n <= max_n; got min_n={min_n}, max_n={max_n}")

    @st.composite
    def _n(draw: st.DrawFn) -> int:
        roll = draw(st.integers(0, 99), label="size class")
        if roll >= 100 - big_percent and max_n > 512:
            lo, hi = max(min_n, 513), max_n
        elif roll >= 75 and max_n > 64:
            lo, hi = max(min_n, 65), min(max_n, 512)
        else:
            lo, hi = min_n, min(max_n, max(min_n, 64))
        return draw(st.integers(lo, hi))

    return _n()


def row_counts(*, max_rows: int = 3) -> st.SearchStrategy[int]:
    """How many rows a batch of inputs has (the leading axis), 1 .. max_rows."""
    return st.integers(1, max_rows)


# ---------------------------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------------------------


def _max_scale(dtype: DTypeLike, headroom: float) -> float:
    return dtype_info(dtype).max / headroom


@st.composite
def finite_rows(
    draw: st.DrawFn,
    *,
    n: IntOrStrategy,
    rows: IntOrStrategy = 1,
    dtype: DTypeLike = np.float64,
    min_scale: float = 2.0**-4,
    max_scale: float = 2.0**4,
) -> Array:
    """Ordinary activation rows (rows, n): roughly N(0, scale^2) entries, |x| <= 3 scale, scale log-uniform."""
    r, nn = _int(draw, rows), _int(draw, n)
    scale = min(draw(_log_uniform(min_scale, max_scale), label="scale"), _max_scale(dtype, 8.0))
    return _cast(scale * _standard(draw, (r, nn)), dtype)


@st.composite
def outlier_rows(
    draw: st.DrawFn,
    *,
    n: IntOrStrategy,
    rows: IntOrStrategy = 1,
    dtype: DTypeLike = np.float64,
    min_factor: float = 100.0,
    max_factor: float = 1000.0,
) -> Array:
    """Rows with a few outliers, as in LLM residual streams: 1 .. max(1, n // 16) entries per row whose magnitude
    is min_factor .. max_factor times the largest of the other entries (checked on the stored values); n >= 2."""
    r, nn = _int(draw, rows), _int(draw, n)
    if nn < 2:
        raise ValueError(f"outlier rows need n >= 2 (an outlier is relative to the rest); got n={nn}")
    info = dtype_info(dtype)
    base_scale = min(draw(_log_uniform(2.0**-3, 2.0**2), label="scale"), info.max / (4 * max_factor * 3))
    base = _cast(base_scale * _standard(draw, (r, nn)), dtype).astype(np.float64)  # (rows, n)
    k = draw(st.integers(1, max(1, nn // 16)), label="outliers per row")
    out = base.copy()
    for i in range(r):
        idx = draw(st.lists(st.integers(0, nn - 1), min_size=k, max_size=k, unique=True), label="outlier positions")
        rest = np.delete(base[i], idx)
        ref = max(float(np.max(np.abs(rest))), base_scale)
        for j in idx:
            factor = draw(st.floats(min_factor, max_factor), label="factor")
            sign = draw(st.sampled_from([1.0, -1.0]))
            out[i, j] = sign * factor * ref * (1 + 4 * info.unit_roundoff)  # survives the cast's rounding
        # the rows' non-outliers must stay below the outliers / min_factor after the cast too
        stored = _cast(out[i], dtype).astype(np.float64)
        assume(np.min(np.abs(stored[idx])) >= min_factor * float(np.max(np.abs(np.delete(stored, idx)))))
    return _cast(out, dtype)


def offset_ratio(x: Array) -> F64:
    """|mean| / std of each row (over the last axis), computed in float64 on the stored values; inf if std = 0."""
    a = np.asarray(x).astype(np.float64)
    mu = np.mean(a, axis=-1)
    sd = np.std(a, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd == 0, np.inf, np.abs(mu) / np.where(sd == 0, 1, sd))


def _max_offset(dtype: DTypeLike) -> float:
    """The largest |mean|/std a row of distinct entries can keep in the dtype, ~ 1/(2u)."""
    return 1 / (2 * dtype_info(dtype).unit_roundoff)


def _unit_noise(draw: st.DrawFn, n: int) -> F64:
    """n entries with mean 0 and std 1 (an alternating pattern if the draw is constant)."""
    noise = _standard(draw, (n,))
    noise = noise - noise.mean()
    sd = float(noise.std())
    if not (np.isfinite(sd) and sd > 1e-150):
        noise, sd = np.where(np.arange(n) % 2 == 0, 1.0, -1.0) - (n % 2) / n, 1.0
        sd = float(noise.std())
    return noise / sd


@st.composite
def offset_rows(
    draw: st.DrawFn,
    *,
    n: IntOrStrategy,
    rows: IntOrStrategy = 1,
    dtype: DTypeLike = np.float64,
    min_ratio: float | None = None,
    max_ratio: float = 1e4,
) -> Array:
    """Rows with a large |mean|/std (exact, on the stored values): x = mu + k * ulp(mu), k small integers, so every
    entry is representable and the ratio is what it was built to be. |mu|/sigma is aimed log-uniformly at
    [min_ratio, max_ratio]; n >= 2.

    min_ratio defaults to 10, or to half the dtype's cap where it cannot hold that (fp8: 2 for e5m2, 4 for
    e4m3fn); max_ratio is capped at 1/(2u), the most a row of distinct entries can have.
    """
    r, nn = _int(draw, rows), _int(draw, n)
    if nn < 2:
        raise ValueError(f"offset rows need n >= 2 (a row of one entry has no spread); got n={nn}")
    cap = _max_offset(dtype)
    lo = min(10.0, cap / 2) if min_ratio is None else min_ratio
    if lo > cap:
        raise ValueError(f"min_ratio={lo} is more offset than {resolve_dtype(dtype).name} can store (<= {cap:g})")
    hi = max(lo, min(max_ratio, cap))
    info = dtype_info(dtype)
    two_u = 2 * info.unit_roundoff
    kmax = max(1, int(0.2 / two_u))  # mu * (1.3 .. 1.7) + k ulp stays inside mu's binade [2^e, 2^(e+1))
    e_hi = math.floor(math.log2(min(2.0**8, info.max / 4)))
    out = np.empty((r, nn))
    for i in range(r):
        e = draw(st.integers(-2, e_hi), label="binade of mu")
        mu = draw(st.floats(1.3, 1.7), label="mu / 2^e") * 2.0**e
        mu = float(np.float64(mu).astype(resolve_dtype(dtype))) * draw(st.sampled_from([1.0, -1.0]), label="sign")
        ulp = 2.0**e * two_u  # the spacing of the dtype in mu's binade
        ratio = draw(_log_uniform(lo, hi) if hi > lo else st.just(lo), label="|mu|/sigma aimed at")
        k = np.clip(np.round(_unit_noise(draw, nn) * abs(mu) / (ratio * ulp)), -kmax, kmax)
        if np.all(k == k[0]):
            k[0] += 1 if k[0] < kmax else -1
        out[i] = mu + k * ulp
    x = _cast(out, dtype)
    assume(bool(np.all(offset_ratio(x) >= lo)))  # only when rounding k to integers overshoots the aim
    return x


@st.composite
def centred_rows(
    draw: st.DrawFn,
    *,
    n: IntOrStrategy,
    rows: IntOrStrategy = 1,
    dtype: DTypeLike = np.float64,
) -> Array:
    """Finite rows with their mean subtracted before the cast: |mean| <= u mean|x| on the stored rows (the regime
    where LayerNorm's folded centring is harmless). A drawn row without spread (constant: its centred values are
    float64 noise) is replaced by a zero-mean alternating pattern, since a constant row is the opposite of centred
    (see the centring hazard)."""
    x = draw(finite_rows(n=n, rows=rows, dtype=np.float64))
    d = x - x.mean(axis=-1, keepdims=True)  # (rows, n)
    nn = x.shape[-1]
    pattern = np.where(np.arange(nn) % 2 == 0, 1.0, -1.0)
    if nn % 2:
        pattern[-1] = 0.0
    flat = np.std(d, axis=-1, keepdims=True) <= 1e-9 * (np.max(np.abs(x), axis=-1, keepdims=True) + 1e-300)
    scale = np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), 2.0**-4)
    return _cast(np.where(flat, scale * pattern, d), dtype)


@st.composite
def eps_dominated_rows(
    draw: st.DrawFn,
    *,
    n: IntOrStrategy,
    rows: IntOrStrategy = 1,
    dtype: DTypeLike = np.float64,
    eps: float = 1e-6,
) -> Array:
    """Rows so small that eps dominates the normalisation: mean(x^2) <= eps / 100 (so var <= eps / 100 as well).
    Each row's largest entry is 1/4 to 1 times sqrt(eps)/10, so that it survives the cast (pass an eps from
    `epsilons(dominating=dtype)`); in fp8 most other entries are 0 or subnormal, which is what such rows look like."""
    r, nn = _int(draw, rows), _int(draw, n)
    top = math.sqrt(eps) / 10 / (1 + 2 * dtype_info(dtype).unit_roundoff)
    x = _standard(draw, (r, nn))  # (rows, n)
    x = x / np.max(np.abs(x), axis=-1, keepdims=True)  # each row's largest entry is +-1
    return _cast(draw(st.floats(0.25, 1.0), label="largest entry / (sqrt(eps)/10)") * top * x, dtype)


# ---------------------------------------------------------------------------------------------------------------
# Attention scores
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def score_rows(
    draw: st.DrawFn,
    *,
    n: IntOrStrategy,
    rows: IntOrStrategy = 1,
    dtype: DTypeLike = np.float64,
    max_spread: float = 1000.0,
) -> Array:
    """Attention-score rows (rows, n) with wide ranges: entries shift + spread * N(0, 1)-ish, spread log-uniform
    in [2^-4, max_spread], |shift| <= 2 spread; all finite, capped to a quarter of the dtype's max."""
    r, nn = _int(draw, rows), _int(draw, n)
    info = dtype_info(dtype)
    spread = min(draw(_log_uniform(2.0**-4, max_spread), label="spread"), info.max / 40)
    shift = draw(st.floats(-2.0, 2.0), label="shift / spread") * spread
    return _cast(shift + spread * _standard(draw, (r, nn)), dtype)


@st.composite
def masked_score_rows(
    draw: st.DrawFn,
    *,
    n: IntOrStrategy,
    rows: IntOrStrategy = 1,
    dtype: DTypeLike = np.float64,
    max_spread: float = 1000.0,
) -> Array:
    """Score rows with masked positions (-inf): per row none, a random subset, a causal-style visible prefix,
    or all of them (a fully masked row: no visible key). The dtype must have an infinity (not float8_e4m3fn:
    mask in the accumulation dtype there, as `layers.attention` does)."""
    dt = resolve_dtype(dtype)
    if not np.isinf(np.array(-np.inf).astype(dt)):
        raise ValueError(
            f"{dt.name} has no -inf: masked scores cannot be stored in it (mask in the accumulation dtype)"
        )
    r, nn = _int(draw, rows), _int(draw, n)
    z = draw(score_rows(n=nn, rows=r, dtype=np.float64, max_spread=max_spread)).copy()
    for i in range(r):
        kind = draw(st.sampled_from(["none", "random", "prefix", "full"]), label="mask kind")
        if kind == "random":
            keep = np.asarray(draw(hnp.arrays(np.bool_, (nn,))), dtype=bool)
        elif kind == "prefix":
            keep = np.arange(nn) < draw(st.integers(1, nn), label="visible prefix")
        elif kind == "full":
            keep = np.zeros(nn, dtype=bool)
        else:
            keep = np.ones(nn, dtype=bool)
        z[i, ~keep] = -np.inf
    return _cast(z, dt)


# ---------------------------------------------------------------------------------------------------------------
# Weights and normalisation parameters
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def weights(
    draw: st.DrawFn,
    *,
    n: IntOrStrategy,
    m: IntOrStrategy,
    dtype: DTypeLike = np.float64,
    min_gain: float = 0.5,
    max_gain: float = 2.0,
) -> Array:
    """A linear layer's weight F (n, m) at a realistic scale: ~ N(0, k^2 / n) with k log-uniform in
    [min_gain, max_gain] (entries bounded by 3 k / sqrt(n)). In float8_e4m3fn this puts many entries of a wide
    layer in the subnormal range (e4m3fn's smallest normal is 2^-6 = 1/sqrt(4096)), as storing unscaled weights
    there would."""
    nn, mm = _int(draw, n), _int(draw, m)
    k = draw(_log_uniform(min_gain, max_gain), label="weight gain")
    return _cast(k / math.sqrt(nn) * _standard(draw, (nn, mm)), dtype)


@st.composite
def gains(
    draw: st.DrawFn,
    *,
    n: IntOrStrategy,
    dtype: DTypeLike = np.float64,
    max_spread: float = 0.5,
) -> Array:
    """A normalisation gain (g for RMSNorm, gamma for LayerNorm), shape (n,): c (1 + spread * N(0, 1)-ish) with a
    common level c log-uniform in [1/4, 4] and spread in [0, max_spread]; entries may cross zero (rarely)."""
    nn = _int(draw, n)
    level = draw(_log_uniform(0.25, 4.0), label="gain level")
    spread = draw(st.floats(0.0, max_spread), label="gain spread")
    return _cast(level * (1 + spread * _standard(draw, (nn,), bound=2.0)), dtype)


@st.composite
def biases(draw: st.DrawFn, *, n: IntOrStrategy, dtype: DTypeLike = np.float64) -> Array:
    """A LayerNorm bias beta (n,): small, |beta| <= 3 b with b log-uniform in [2^-6, 1]."""
    nn = _int(draw, n)
    b = draw(_log_uniform(2.0**-6, 1.0), label="bias scale")
    return _cast(b * _standard(draw, (nn,)), dtype)


def epsilons(*, dominating: DTypeLike | None = None) -> st.SearchStrategy[float]:
    """The eps values real models use (Llama 1e-6 / 1e-5, GPT-2 1e-5, BERT 1e-12 is left out: below fp16).

    `dominating=dtype`: an eps that can dominate rows stored in that dtype (`eps_dominated_rows`: mean(x^2) <=
    eps / 100 with some entries nonzero). float8_e4m3fn's smallest subnormal is 2^-9, so its rows cannot be that
    small for the usual eps: there eps is 1e-2 (a large eps, but what an eps-dominated e4m3fn row needs).
    """
    if dominating is not None and resolve_dtype(dominating).name == "float8_e4m3fn":
        return st.just(1e-2)
    return st.sampled_from([1e-5, 1e-6])


#: The accumulation dtypes the rule properties draw (None: the policy, float32 for 16/8-bit storage). float16 and
#: bfloat16 accumulate in an adder tree (`precision.tree_sum`), as 16-bit hardware would.
ACCUMULATORS: tuple[str | None, ...] = (None, "float32", "bfloat16", "float16")


def accumulators() -> st.SearchStrategy[str | None]:
    """An accumulation dtype for a rule property (ACCUMULATORS); shrinks to the policy."""
    return st.sampled_from(ACCUMULATORS)


# ---------------------------------------------------------------------------------------------------------------
# Tilings and merge trees (the online-softmax merge)
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def tilings(draw: st.DrawFn, *, n: IntOrStrategy, max_tiles: int = 16) -> list[int]:
    """A random partition of n positions into 1 .. max_tiles contiguous tiles of varying length; returns the
    tile lengths (they sum to n)."""
    nn = _int(draw, n)
    k = draw(st.integers(1, min(nn, max_tiles)), label="tiles")
    cuts = sorted(draw(st.lists(st.integers(1, nn - 1), min_size=k - 1, max_size=k - 1, unique=True))) if k > 1 else []
    edges = [0, *cuts, nn]
    return [b - a for a, b in itertools.pairwise(edges)]


@dataclass(frozen=True)
class MergeStep:
    """Merge the states at positions i and j (i != j) of the current list; the result replaces them at the end.
    `swap` merges (j, i) instead of (i, j) (the merge is commutative in real arithmetic)."""

    i: int
    j: int
    swap: bool


def merge_orders(*, tiles: IntOrStrategy) -> st.SearchStrategy[list[MergeStep]]:
    """A random binary merge tree over `tiles` states, as tiles - 1 MergeSteps (any pairs, any argument order)."""

    def tree(k: int) -> st.SearchStrategy[list[MergeStep]]:
        def step(left: int) -> st.SearchStrategy[MergeStep]:
            # i, then j among the other left - 1 states
            return st.tuples(st.integers(0, left - 1), st.integers(0, left - 2), st.booleans()).map(
                lambda t: MergeStep(i=t[0], j=t[1] + 1 if t[1] >= t[0] else t[1], swap=t[2])
            )

        return st.tuples(*(step(left) for left in range(k, 1, -1))).map(list)

    return tree(tiles) if isinstance(tiles, int) else tiles.flatmap(tree)


# ---------------------------------------------------------------------------------------------------------------
# Decoder-block shapes
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def block_configs(draw: st.DrawFn, *, max_ffn: int = 32) -> LlamaConfig:
    """A tiny one-block Llama config: 1-2 kv heads, 1-3 query heads per kv head (GQA), head dim 2/4/8 (model width
    = heads x head dim, up to 48), FFN width up to max_ffn, Llama's eps values, both RoPE bases and layouts."""
    hkv = draw(st.integers(1, 2), label="n_kv_heads")
    hq = hkv * draw(st.integers(1, 3), label="group size")
    return LlamaConfig(
        "fuzz",
        dim=hq * draw(st.sampled_from([2, 4, 8]), label="head_dim"),
        n_layers=1,
        n_heads=hq,
        n_kv_heads=hkv,
        ffn_dim=draw(st.integers(1, max_ffn), label="ffn_dim"),
        vocab_size=1,
        context_length=128,
        rope_base=draw(st.sampled_from([10000.0, 500000.0]), label="rope_base"),
        norm_eps=draw(epsilons(), label="eps"),
        tied_embeddings=False,
        rope_layout=draw(st.sampled_from(["half", "interleaved"]), label="rope_layout"),
    )
