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

__all__ = ["ATTENTION_PRODUCTS", "E4M3", "E4M3_MAX", "Fp8Executor", "quantise", "quantise_weights"]

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
    amax = np.max(np.abs(a32), axis=axis, keepdims=True)  # (..., 1) or (..., 1, m)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.floor(np.log2(np.float32(E4M3_MAX) / amax))
    e = np.clip(np.where(np.isfinite(e), e, 0), -126, 126)  # zero or non-finite slices: scale 1
    scale = np.exp2(e).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        return (a32 * scale).astype(E4M3).astype(np.float32) / scale  # exact apart from the e4m3fn rounding


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
