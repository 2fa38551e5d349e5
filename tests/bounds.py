"""Rounding-error bounds for comparing a fused rule with its reference order (used by the unit tests).

Both orders approximate the same exact value y (the float64 evaluation of the reference on the *stored*
inputs). By the triangle inequality |fused - ref| <= |fused - y| + |ref - y|, so it suffices to bound each
order's forward error. With u_s the unit roundoff of the storage dtype and u_a that of the accumulation dtype
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 3.1: a length-n dot product in precision
u has error <= gamma_n |x|.|F| with gamma_n = n u / (1 - n u) ~ n u):

  * both orders round their result to storage once:                         u_s |y|
  * the reference also rounds its normalised intermediate to storage
    (x s g, or p = softmax(z)), and fused rounds its folded weight
    (g ⊙ F, F') to the weight's storage dtype: each is a relative
    perturbation of one factor of the matmul:                               u_s M
  * the matmul accumulates n products in acc, and the scale s (a mean
    of n squares, a sqrt, a division) adds a few more roundings:           (n + 4) u_a M

where M >= |y| is the magnitude of the terms being summed, per output element (for RMSNorm
M = s (|x| @ |g ⊙ F|)). Summing both orders' bounds:

    |fused - ref| <= 2 u_s |y| + 2 (u_s + (n + 4 + k) u_a) M

k covers rule-specific extra roundings: for softmax, exp(z - m) with z - m rounded carries a relative error of
about |z - m| u_a, so k = 2 max|z - m|. The bound is a worst case (errors of opposite sign do not cancel in it),
so a correct rule passes comfortably; a wrong rule (an unfolded gain, a missing centring, a missing rescale)
makes errors of order |y| and fails it in float64 and float32 (see test_fusion.py, the "checker says no" tests).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from normfuse_ref.precision import accumulation_dtype, dtype_info

Array = NDArray[Any]


def roundoffs(storage: np.dtype) -> tuple[float, float]:
    """(u_s, u_a) for a storage dtype under the default accumulation policy."""
    return dtype_info(storage).unit_roundoff, dtype_info(accumulation_dtype(storage)).unit_roundoff


def bound(storage: np.dtype, y: Array, M: Array, n: int, k: float = 0.0) -> Array:
    """The elementwise bound on |fused - ref| derived in the module docstring."""
    u_s, u_a = roundoffs(storage)
    return 2 * u_s * np.abs(y) + 2 * (u_s + (n + 4 + k) * u_a) * M


def assert_within(fused: Array, ref: Array, limit: Array, what: str) -> None:
    """Every element of |fused - ref| within `limit` (NaN where both are NaN counts as equal)."""
    f, r = fused.astype(np.float64), ref.astype(np.float64)
    both_nan = np.isnan(f) & np.isnan(r)
    err = np.where(both_nan, 0.0, np.abs(f - r))
    bad = ~(err <= limit)
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, err / np.maximum(limit, 1e-300), 0))), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements exceed the rounding bound; worst at {i}: "
            f"fused={f[i]!r} ref={r[i]!r} |diff|={err[i]:.3e} bound={limit[i]:.3e}"
        )
