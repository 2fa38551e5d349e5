"""What "fp8" means in the study: e4m3fn operands of the matrix engine, everything else in bfloat16.

Storing *every* activation in float8_e4m3fn does not give a model to study: SmolLM2's residual stream reaches
~2.2e4 (a few "massive activation" channels) and its FFN down-projection input ~2.8e3, far beyond e4m3fn's 448
(no infinity: NaN), and a residual add in 3 significant bits loses every small update. No fp8 deployment does that.
What accelerators (and fp8 inference libraries) keep in fp8 is the operands of the matrix engine, with scales; the
vector units work in wider formats. So the fp8 rows of the study mean:

| value | stored as |
|---|---|
| weights of every linear layer (and the tied embedding table) | e4m3fn, one power-of-two scale per output column (per channel), set offline so the column's largest entry lands in (224, 448] |
| the folded weights of the fused order | the same: g ⊙ F re-quantised to e4m3fn with its own per-column scales (the rule's default: the fold is stored in the weight's format); mitigation "wide-fold" keeps g ⊙ F in bfloat16 instead (`smollm2.WIDE_FOLD`) |
| the activation operand of every matmul (the DIMC input: x in the fused order, the normalised h in baseline, attention's q, k, p or e^{z-m}, v) | e4m3fn, one power-of-two scale per row (per token, chosen at run time the same way), the second operand of attention's products per column |
| everything the SIMD units write (residual stream, KV cache, norm outputs, logits) | bfloat16 (the executor's storage dtype) |
| per-row statistics and accumulators | float32 (the accumulation dtype) |
| norm gains and biases | bfloat16 |

Scales are powers of two, so scaling and unscaling are exact: a quantised value is held as its dequantised number
(exact in bfloat16 and float32) and the products run in float32, as on a DIMC that accumulates wide. Without scales
the fused order's raw residual-stream operand would overflow (NaN) where the baseline's normalised operand does
not; with per-row scales the remaining difference between the orders is which row is scaled: x (fused) or
x s g (baseline), and one more rounding of the weights (the re-quantised fold).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ..layers import shifted_exp
from ..ops import NumpyExecutor, SoftmaxTiles
from ..precision import matmul_acc, resolve_dtype, sum_acc

__all__ = ["ATTENTION_PRODUCTS", "E4M3", "E4M3_MAX", "Fp8Executor", "quantise", "quantise_weights", "round_e4m3fn"]

Array = NDArray[Any]

E4M3 = resolve_dtype("float8_e4m3fn")
BF16 = resolve_dtype("bfloat16")
#: Largest finite float8_e4m3fn.
E4M3_MAX = 448.0


def quantise(a: ArrayLike, axis: int) -> NDArray[np.float32]:
    """`a` rounded to float8_e4m3fn with one power-of-two scale per slice along `axis` (the contraction axis: -1
    for a row operand, -2 for a column operand), returned dequantised in float32.

    scale = 2^floor(log2(448 / max|slice|)), so the largest entry lands in (224, 448]; an all-zero slice keeps
    scale 1; NaN (and inf, which e4m3fn cannot hold) give NaN.
    """
    a32 = np.asarray(a, dtype=np.float32)  # (..., n)
    # max |a| as max(max a, -min a): two reductions without an |a| temporary (NaN propagates through both)
    amax = np.maximum(np.max(a32, axis=axis, keepdims=True), -np.min(a32, axis=axis, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.floor(np.log2(np.float32(E4M3_MAX) / amax))  # (..., 1) or (..., 1, m)
    finite = np.isfinite(e)
    e = np.clip(np.where(finite, e, 0), -126, 126)  # zero or non-finite slices: scale 1
    scale = np.exp2(e).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        v = a32 * scale  # exact: a power of two
    # A slice with a finite largest entry lands in [-448, 448], where e4m3fn has no overflow; only a zero-scale
    # (scale 1) slice of a non-finite one can hold values that round past 448 (NaN in e4m3fn).
    round_e4m3fn(v, overflow=not bool(np.all(finite | (amax == 0))))
    v /= scale  # exact apart from the e4m3fn rounding
    return v


#: Smallest normal float8_e4m3fn (2^-6); below it e4m3fn's numbers are the multiples of 2^-9 (subnormals).
_E4M3_TINY = 2.0**-6
#: Past this |v| (the midpoint between 448 and 480, which e4m3fn lacks), rounding to e4m3fn gives NaN.
_E4M3_NAN_FROM = 464.0


def round_e4m3fn(v: NDArray[np.float32], *, overflow: bool = True) -> NDArray[np.float32]:
    """v rounded in place to the nearest float8_e4m3fn number (ties to even), kept in float32: the same numbers as
    `v.astype(E4M3).astype(np.float32)` (NaN where e4m3fn has none: |v| > 464, infinities, NaN), 3-4x faster
    (ml_dtypes converts each element through a scalar routine; this is a few whole-array integer passes).

    Normal range (|v| >= 2^-6): keep 3 of float32's 23 fraction bits, rounding the 20 dropped bits to nearest,
    ties to even (add 0x7FFFF plus the last kept bit, then clear the 20 bits; a carry rounds into the exponent as
    it should). Below 2^-6, e4m3fn's subnormals are the multiples of 2^-9: rint(v 2^9) 2^-9 (exact scalings).
    `overflow=False` when the caller knows every |v| <= 448 (skips the pass that finds NaNs)."""
    small = np.flatnonzero(np.abs(v) < _E4M3_TINY)  # (k,)
    tiny = np.rint(v.flat[small] * 2.0**9) * 2.0**-9  # (k,)   exact scalings
    bad = np.flatnonzero(~(np.abs(v) <= _E4M3_NAN_FROM)) if overflow else np.empty(0, np.intp)  # NaN included
    nans = np.copysign(np.float32(np.nan), v.flat[bad])  # (b,)   e4m3fn's NaN keeps the sign, as ml_dtypes'
    bits = v.view(np.uint32)
    last = bits >> 20
    last &= 1
    bits += np.uint32(0x7FFFF)
    bits += last
    bits &= np.uint32(0xFFF00000)
    v.flat[small] = tiny
    v.flat[bad] = nans
    return v


def quantise_weights(
    params: Mapping[str, Array], *, row_scaled: frozenset[str] = frozenset(), lookups: frozenset[str] = frozenset()
) -> dict[str, Array]:
    """fp8 weights as the study stores them: every matrix quantised per output column (`quantise(F, axis=0)` for
    (n_in, n_out) weights; per row for the names in `row_scaled`, e.g. a (V, d) embedding table whose transpose
    is the output head), held in bfloat16 (exact); vectors (gains, biases) and `lookups` (tables that are only
    ever indexed, never a matmul operand) rounded to bfloat16."""
    out: dict[str, Array] = {}
    for k, a in params.items():
        if a.ndim == 2 and k not in lookups:
            out[k] = quantise(a, axis=1 if k in row_scaled else 0).astype(BF16)
        else:
            out[k] = np.asarray(a).astype(BF16)
    return out


#: The matmuls whose second operand is an activation too (attention's products), quantised per column at run time.
ATTENTION_PRODUCTS = frozenset({"attn_scores", "attn_pv"})


@dataclass
class Fp8Executor(NumpyExecutor):
    """The plain executor in bfloat16 storage, whose matrix engine takes e4m3fn operands (module docstring): the
    activation operand of every matmul quantised per row, attention's second operand per column, and the fused
    softmax's e^{z - m} and V likewise before their product. Weights arrive quantised (`quantise_weights`)."""

    storage: DTypeLike = BF16

    def matmul(self, x: Array, F: Array, *, op: str, **kw: Any) -> Array:
        Fq = quantise(F, axis=-2) if op in ATTENTION_PRODUCTS else F
        return super().matmul(quantise(x, axis=-1), Fq, op=op, **kw)

    def softmax_tiles(self, z: Array, V: Array, *, op: str) -> SoftmaxTiles:
        """One slice per row (the whole row): m, l from the exponentials in float32 (the SIMD unit's own), o from
        their e4m3fn copy times V's, as the DIMC receives them (`fusion.softmax_tile_state` with quantised operands)."""
        za = self._a(z)  # (..., n)
        m = np.max(za, axis=-1, keepdims=True)  # (..., 1)
        p = shifted_exp(za, m)  # (..., n)
        o = matmul_acc(quantise(p, axis=-1), quantise(V, axis=-2), self._acc)  # (..., hd)
        return SoftmaxTiles(m=m[..., None, :], l=sum_acc(p)[..., None, :], o=o[..., None, :])
