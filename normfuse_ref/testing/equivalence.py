"""The equivalence criterion: is the fused order no worse than the reference order, against a float64 oracle?

docs/numerics.md, "Equivalent": the fused result is not worse than the reference result,
`|fused - exact| <= c * |reference - exact| + atol(dtype)`, with c and atol justified by the error analysis.
This module states the criterion, derives c and atol, and computes both for the three rules.

# ===============================================================================================================
# The criterion, per output row r (max norm over the row's m outputs: what the next layer sees)
#
#     E_fused(r) <= c * E_ref(r) + atol(r),          E_order(r) = max_j |order_rj - exact_rj|
#
# exact = the reference composition evaluated in float64 on the *stored* inputs (every storage dtype embeds
# exactly in float64, so the oracle and both orders see the same numbers). NaN and inf errors count as inf.
#
# Notation: u_s, η_s unit roundoff and half-smallest-subnormal of the storage dtype; u_a, η_a the same for the
# accumulation dtype; ℓ(u) = -log(1 - u) (one rounding in the log domain); γ_k = expm1(k ℓ(u_a)).
#
# Derivation, RMSNorm -> linear (the other rules repeat these steps; each step is one function in `bounds`).
#   s = 1/sqrt(mean x^2 + eps): every square passes n + 2 roundings (square, n - 1 adds, /n, +eps), sqrt halves
#     the log error, sqrt and 1/. round once more:           |log(s~/s)| <= L_s = (n + 2) ℓ_a / 2 + 2 ℓ_a.
#   reference  h~ = fl_s(fl(fl(x s~) g)) = h (1 + θ),        |θ| <= expm1(L_s + 2ℓ_a + ℓ_s)  (+ η_s)
#              y~ = fl_s(Σ_i h~_i F_ij (1 + θ_ij)),          |θ_ij| <= γ_n
#     => |y~ - y| <= (1 + u_s) [ expm1(L_s + 2ℓ_a + ℓ_s + n ℓ_a) M_j + η_s e^{nℓ_a} Σ_i |F_ij| ] + u_s |y_j| + η_s
#   fused      F_g = fl_s(fl_64(g ⊙ F)),  y~ = fl_s(fl(s~ Σ_i x_i F_g,ij (1 + θ_ij)))
#     => |y~ - y| <= (1 + u_s) [ expm1(L_s + (n + 1) ℓ_a + ℓ_s + ℓ_64) M_j + η_s e^{...} s Σ_i |x_i| ] + u_s |y_j| + η_s
#   with the SAME magnitude M_j = (|h| @ |F|)_j = (s |x| @ |g ⊙ F|)_j in both orders.
#   To first order: B ≈ u_s |y| + (u_s + (3n/2 + 5) u_a) M: both orders round once to storage in the middle
#   (the reference rounds the activations h, the fused order rounds the folded weights g ⊙ F: the same relative
#   error on the same products h_i F_ij), accumulate n terms, and round once at the end.
#
# Why atol must contain the middle rounding u_s M and not only u_s |y| + n u_a M (the first sketch): the
# reference's middle rounding can be exact by luck while the fold's is not, and when y cancels the fused error
# u_s M is unbounded relative to u_s |y| and to E_ref. float16, x = [1, 1], g = [1.5, 1.5],
# F = [[0.6669921875], [-0.66650390625]]: h = 1.5 s rounds to 1.5 exactly, so E_ref = 3.7e-10, while 1.5 F_ij
# rounds, so E_fused = 7.3e-4 - 267 times the sketch's u_s |y| + n u_a M = 2.7e-6
# (tests/test_fuzz_checker.py::test_middle_rounding_term_is_needed). c cannot cover a term the reference did not
# happen to make; a rigorous bound can. So:
#
#   atol(r) = max_j [ max(B_ref,rj, B_fused,rj) + B_oracle,rj ]       c = 1
#
# - B_ref, B_fused: the two orders' bounds above, evaluated on the stored inputs (in float64). Taking, error
#   source by error source, the larger of the two accounts for the orders' different numbers of roundings (the
#   online merge does up to depth extra exps and 2 depth extra roundings; the reference rounds p or h to storage
#   and the fused order does not), so no factor c > 1 is needed for that.
# - B_oracle: the oracle's own float64 error (the reference bound with u_s = u_a = 2^-53). For float64 storage
#   the oracle *is* the reference, so E_ref = 0 there and the criterion reads "fused within its float64 bound".
# - c = 1: "no worse than the reference actually was". It matters where the standard model breaks for the
#   reference itself (an overflow makes E_ref = inf: the fused order cannot be worse than that).
# - Only error sources that BOTH orders have, at the same size, enter atol. A fused-only source is a hazard
#   and is deliberately left out (reported as `hazard`), so that the criterion fails where the rewrite is
#   genuinely worse:
#     * RMSNorm/LayerNorm fold underflow: η_s s Σ|x_i| - the fold re-quantises g ⊙ F; where |g_i F_ij| < tiny_s
#       (fp8 e4m3fn: 2^-6) the stored weight keeps only a few bits or becomes 0, while the reference uses F as
#       stored and rounds only normal-range activations.
#     * LayerNorm centring: the fold F' = (I - E/n) Γ F has zero column sums, fl_s(F') does not, and x @ F' sees
#       raw x = d + mu: the rounding error splits into Σ_i d_i δF'_ij (same size as the reference's rounding of
#       h: shared, in atol) and mu Σ_i δF'_ij <= |mu| u_s Σ_i |F'_ij| (the hazard: it grows with |mu|/σ, and the
#       reference's only mu-dependent error is its float32 mean, u_a-sized). In float32/float64 storage the two
#       are the same size and the accumulation term γ_n |x| @ |F'| (in atol) covers it; in 16- and 8-bit storage
#       it is u_s / u_a = 2^13 .. 2^21 times larger (measured: docs/hazards.md).
#   Overflow (softmax's unnormalised o in a float16 accumulator) is outside the model and shows up as inf.
#
# What the numbers are (leading order, policy accumulation, row length n):
#   storage    u_s       u_a       atol ≈ u_s |y| + (u_s + (3n/2 + 5) u_a) M     (+ the oracle's 2^-53 terms)
#   float64    2^-53     2^-53     (3n/2 + 7) 2^-53 M    - dominated by accumulation
#   float32    2^-24     2^-24     (3n/2 + 7) 2^-24 M
#   float16    2^-11     2^-24     2^-11 (|y| + M) + (3n/2 + 5) 2^-24 M   - storage rounding dominates for n < 5000
#   bfloat16   2^-8      2^-24     2^-8 (|y| + M) + ...
#   e4m3fn     2^-4      2^-24     2^-4 (|y| + M) (1 + O(u_s)) + ...     - expm1 keeps the second order exact
#   e5m2       2^-3      2^-24     2^-3 (|y| + M) (1 + O(u_s)) + ...
# For softmax -> linear M = p @ |V|; the exps add 8 u_a per call (np.exp is within 4 ulps), the max shift cancels
# between numerator and denominator, and the denominator's error is the p-weighted log-mean-exp of the entries'
# errors (Jensen), not their max (bounds._exponents, bounds.softmax_acc). The online merge adds, per merge level
# a tile passes, one exp and two roundings (bounds.softmax_online_matmul).
# For LayerNorm -> linear M = (|d s γ| + |β|) @ |F| plus the reference's mean term γ_n mean|x| s (|γ| @ |F|).
# ===============================================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ..precision import dtype_info, resolve_dtype
from . import bounds as bd
from .bounds import Bounded, Precision

__all__ = [
    "C",
    "RuleBounds",
    "Verdict",
    "compare",
    "layer_norm_linear_bounds",
    "merge_tree_bounds",
    "rms_norm_linear_bounds",
    "row_errors",
    "softmax_linear_bounds",
]

F64 = NDArray[np.float64]

#: The factor on the reference's actual error (derived above: the rounding-count differences live in atol).
C = 1.0


@dataclass(frozen=True)
class RuleBounds:
    """Per-output bounds (..., m) for one case: the two orders' a-priori bounds, the oracle's, and the fused-only
    hazard terms that the allowance leaves out."""

    ref: F64
    fused: F64
    oracle: F64
    hazard: F64

    @property
    def allowance(self) -> F64:
        """atol per output: the larger of the two orders' bounds, plus the oracle's own error."""
        return np.maximum(self.ref, self.fused) + self.oracle


def _f64(a: ArrayLike) -> F64:
    return np.asarray(a).astype(np.float64)


def _fold_precision(F_dtype: np.dtype, fold_dtype: DTypeLike | None) -> Precision:
    """The precision in which the fold is stored (its `storage`), F's dtype by default as in `fusion`."""
    return Precision.of(resolve_dtype(fold_dtype) if fold_dtype is not None else F_dtype, np.float64)


# ---------------------------------------------------------------------------------------------------------------
# RMSNorm -> linear
# ---------------------------------------------------------------------------------------------------------------


def _rms_reference(x: F64, g: F64, F: F64, eps: float, P: Precision) -> Bounded:
    h = bd.store(bd.rms_norm_acc(bd.exact(x), bd.exact(g), eps, P), P)  # (..., n)
    return bd.store(bd.matmul(h, bd.exact(F), P), P)  # (..., m)


@bd.quiet
def rms_norm_linear_bounds(
    x: ArrayLike,
    g: ArrayLike,
    F: ArrayLike,
    eps: float,
    *,
    acc: DTypeLike | None = None,
    fold_dtype: DTypeLike | None = None,
) -> RuleBounds:
    """Bounds for linear(rms_norm(x, g, eps), F) vs rms_norm_linear(x, g, F, eps) (fold stored in `fold_dtype`)."""
    xs = np.asarray(x)
    P = Precision.of(xs.dtype, acc)
    Pf = _fold_precision(np.asarray(F).dtype, fold_dtype)
    x64, g64, F64_ = _f64(x), _f64(g), _f64(F)
    ref = _rms_reference(x64, g64, F64_, eps, P)
    X = bd.exact(x64)
    Fg = bd.fold(g64[:, None] * F64_, Pf, underflow=False)  # (n, m)   hazard: the fold's underflow left out
    s, L = bd.rms_scale(X, eps, P)  # (..., 1)
    fused = bd.store(bd.scale_rows(bd.matmul(X, Fg, P), s, L, P), P)  # (..., m)
    n = x64.shape[-1]
    growth = bd._exp(L + P.l_a) * (1 + P.gamma(n)) * (1 + P.u_s)
    hazard = Pf.eta_s * s * np.sum(np.abs(x64), axis=-1, keepdims=True) * growth  # (..., 1)
    oracle = _rms_reference(x64, g64, F64_, eps, Precision.of(np.float64)).b
    return RuleBounds(ref=ref.b, fused=fused.b, oracle=oracle, hazard=np.broadcast_to(hazard, ref.b.shape))


# ---------------------------------------------------------------------------------------------------------------
# LayerNorm -> linear
# ---------------------------------------------------------------------------------------------------------------


def _ln_reference(x: F64, gamma: F64, beta: F64, F: F64, eps: float, P: Precision) -> Bounded:
    h = bd.store(bd.layer_norm_acc(bd.exact(x), bd.exact(gamma), bd.exact(beta), eps, P), P)  # (..., n)
    return bd.store(bd.matmul(h, bd.exact(F), P), P)  # (..., m)


@bd.quiet
def layer_norm_linear_bounds(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike,
    F: ArrayLike,
    eps: float,
    *,
    acc: DTypeLike | None = None,
    fold_dtype: DTypeLike | None = None,
) -> RuleBounds:
    """Bounds for linear(layer_norm(x, gamma, beta, eps), F) vs layer_norm_linear (fold stored in `fold_dtype`).

    The fused matmul x @ F~' sees raw x = d + mu. Its fold-rounding term Σ_i |x_i| ρ_ij (ρ = the fold's rounding
    error bound) is split with |x_i| <= |d_i| + |mu|: the first part is shared with the reference (in atol), the
    second, |mu| Σ_i ρ_ij, is the centring hazard (left out). The accumulation term γ_n |x| @ |F'| stays in atol:
    the reference has the same u_a-sized cancellation in its mean.
    """
    xs = np.asarray(x)
    P = Precision.of(xs.dtype, acc)
    Pf = _fold_precision(np.asarray(F).dtype, fold_dtype)
    x64, ga, be, F64_ = _f64(x), _f64(gamma), _f64(beta), _f64(F)
    n = x64.shape[-1]
    ref = _ln_reference(x64, ga, be, F64_, eps, P)

    # The fold, its float64 computation error and its rounding in the fold dtype.
    u64 = dtype_info(np.float64).unit_roundoff
    GF = ga[:, None] * F64_  # (n, m)
    Fp = GF - GF.mean(axis=0, keepdims=True)  # (n, m)   (I - E/n) Γ F
    e64 = u64 * np.abs(GF) + Precision.of(np.float64).gamma(n + 1) * np.mean(np.abs(GF), axis=0, keepdims=True)
    rho = (np.abs(Fp) + e64) * Pf.u_s + e64  # (n, m)   |fl(F'_64) - F'| without the underflow η (a hazard)
    bias = beta_at_F = be @ F64_  # (m,)
    b_bias = (
        Precision.of(np.float64).gamma(n) * (np.abs(be) @ np.abs(F64_)) * (1 + Pf.u_s)
        + Pf.u_s * np.abs(beta_at_F)
        + Pf.eta_s
    )  # (m,)

    X = bd.exact(x64)
    st = bd.layer_norm_stats(X, eps, P)
    ad = np.abs(st.d.v)  # (..., n)
    amu = np.abs(st.mu.v)  # (..., 1)
    # y = x @ F~' in acc: |x| @ ρ (fold rounding; split below) + γ_n |x| @ (|F'| + ρ) + underflow
    acc_term = P.gamma(n) * (np.abs(x64) @ (np.abs(Fp) + rho)) + n * P.eta_a * (1 + P.gamma(n))  # (..., m)
    y_shared = Bounded(x64 @ Fp, ad @ rho + acc_term)  # (..., m)
    fused_y = bd.scale_rows(y_shared, st.s, st.L, P)  # (..., m)
    fused = bd.store(bd.add(fused_y, Bounded(bias, b_bias), P), P)

    growth = st.s * bd._exp(st.L + P.l_a) * (1 + P.u_a) * (1 + P.u_s)  # (..., 1)
    hazard = (amu * np.sum(rho, axis=0) + Pf.eta_s * np.sum(np.abs(x64), axis=-1, keepdims=True)) * growth
    oracle = _ln_reference(x64, ga, be, F64_, eps, Precision.of(np.float64)).b
    return RuleBounds(ref=ref.b, fused=fused.b, oracle=oracle, hazard=np.broadcast_to(hazard, ref.b.shape))


# ---------------------------------------------------------------------------------------------------------------
# Softmax -> linear, and arbitrary merge trees
# ---------------------------------------------------------------------------------------------------------------


def _sm_reference(z: F64, V: F64, P: Precision) -> Bounded:
    return bd.store(bd.softmax_reference_matmul(bd.exact(z), bd.exact(V), P, store_p=True), P)


@bd.quiet
def merge_tree_bounds(
    z: ArrayLike, V: ArrayLike, *, tile_len: int, depth: int, acc: DTypeLike | None = None
) -> RuleBounds:
    """Bounds for linear(softmax(z), V) vs any tiling with tiles of <= tile_len entries merged by a tree in which
    every tile passes <= depth merges, finalised and rounded once. No fused-only error source: hazard = 0."""
    zs = np.asarray(z)
    P = Precision.of(zs.dtype, acc)
    z64, V64 = _f64(z), _f64(V)
    ref = _sm_reference(z64, V64, P)
    fused = bd.store(bd.softmax_online_matmul(bd.exact(z64), bd.exact(V64), P, tile_len=tile_len, depth=depth), P)
    oracle = _sm_reference(z64, V64, Precision.of(np.float64)).b
    return RuleBounds(ref=ref.b, fused=fused.b, oracle=oracle, hazard=np.zeros_like(ref.b))


def softmax_linear_bounds(
    z: ArrayLike, V: ArrayLike, *, tile_size: int | None, acc: DTypeLike | None = None
) -> RuleBounds:
    """Bounds for linear(softmax(z), V) vs softmax_linear(z, V, tile_size): tiles merged left to right, so the
    first tile passes T - 1 merges (T = number of tiles)."""
    n = np.asarray(z).shape[-1]
    t = n if tile_size is None else min(tile_size, n)
    T = -(-n // t)
    return merge_tree_bounds(z, V, tile_len=t, depth=T - 1, acc=acc)


# ---------------------------------------------------------------------------------------------------------------
# Errors and the verdict
# ---------------------------------------------------------------------------------------------------------------


def row_errors(out: ArrayLike, exact: ArrayLike) -> F64:
    """max_j |out_rj - exact_rj| per row r (rows = all leading axes flattened); NaN/inf errors count as inf.

    Entries where both are the same infinity (or both NaN) count as exact."""
    o = np.asarray(out).astype(np.float64)
    e = np.asarray(exact).astype(np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(o - e)
    same = (o == e) | (np.isnan(o) & np.isnan(e))
    d = np.where(same, 0.0, np.where(np.isnan(d), np.inf, d))
    m = d.shape[-1] if d.ndim else 1
    return np.max(d.reshape(-1, m), axis=-1)


def _row_max(a: ArrayLike, m: int) -> F64:
    return np.max(np.asarray(a, dtype=np.float64).reshape(-1, m), axis=-1)


@dataclass(frozen=True)
class Verdict:
    """The criterion evaluated on one case, per row: E_fused <= c E_ref + atol."""

    err_fused: F64  # (rows,)
    err_ref: F64  # (rows,)
    atol: F64  # (rows,)
    floor: F64  # (rows,)  one storage rounding of the exact output: u_s |exact| + η_s
    hazard: F64  # (rows,)  the fused-only error terms that atol leaves out (bound)
    c: float = C

    @property
    def limit(self) -> F64:
        return self.c * self.err_ref + self.atol

    @property
    def ok(self) -> bool:
        return bool(np.all(self.err_fused <= self.limit))

    @property
    def ratio(self) -> float:
        """Worst E_fused / E_ref, with E_ref floored at one output rounding (below that, errors are noise)."""
        den = np.maximum(self.err_ref, self.floor)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = np.where(self.err_fused == 0, 0.0, self.err_fused / np.where(den == 0, np.inf, den))
        r = np.where((den == 0) & (self.err_fused > 0), np.inf, r)
        return float(np.max(r)) if r.size else 0.0

    @property
    def budget(self) -> float:
        """Worst E_fused / (c E_ref + atol): the share of the allowance used (> 1 is a counterexample)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = np.where(self.err_fused == 0, 0.0, self.err_fused / self.limit)
        r = np.where(np.isnan(r), np.inf, r)
        return float(np.max(r)) if r.size else 0.0

    @property
    def worst_abs(self) -> float:
        return float(np.max(self.err_fused)) if self.err_fused.size else 0.0

    def explain(self) -> str:
        """Which rows fail, by how much, in one paragraph (for assertion messages)."""
        bad = np.nonzero(~(self.err_fused <= self.limit))[0]
        head = f"fused order worse than allowed in {bad.size} of {self.err_fused.size} rows"
        lines = [head]
        for r in bad[:4]:
            lines.append(
                f"  row {r}: |fused - exact| = {self.err_fused[r]:.3e} > c |ref - exact| + atol = "
                f"{self.c:g} * {self.err_ref[r]:.3e} + {self.atol[r]:.3e}  (fused-only hazard bound {self.hazard[r]:.3e})"
            )
        lines.append(f"  worst ratio fused/ref = {self.ratio:.3g}, allowance used = {self.budget:.3g}")
        return "\n".join(lines)


def compare(
    fused: ArrayLike, ref: ArrayLike, exact: ArrayLike, bounds: RuleBounds, *, storage: DTypeLike | None = None
) -> Verdict:
    """The verdict for one case: per-row errors of both orders against the oracle, and the per-row atol."""
    f = np.asarray(fused)
    m = f.shape[-1] if f.ndim else 1
    st = resolve_dtype(storage) if storage is not None else resolve_dtype(f.dtype)
    info = dtype_info(st)
    ex = np.asarray(exact).astype(np.float64)
    with np.errstate(invalid="ignore"):
        floor = _row_max(info.unit_roundoff * np.abs(np.where(np.isfinite(ex), ex, 0.0)), m) + bd._eta(st)
    return Verdict(
        err_fused=row_errors(f, ex),
        err_ref=row_errors(ref, ex),
        atol=_row_max(bounds.allowance, m),
        floor=floor,
        hazard=_row_max(bounds.hazard, m),
    )
