"""The equivalence criterion: is the fused order no worse than the reference order, against a float64 oracle?

docs/numerics.md, "Equivalent": the fused result is not worse than the reference result,
`|fused - exact| <= c * |reference - exact| + atol(dtype)`, with c and atol justified by the error analysis.
This module states the criterion, derives c and atol, computes both for the three rules, the online merge and a
whole Llama decoder block, and says which rows the criterion cannot check (and what checks them instead).

# ===============================================================================================================
# The criterion, per output row r (max norm over the row's m outputs: what the next layer sees)
#
#     E_fused(r) <= c * E_ref(r) + atol(r),          E_order(r) = max_j |order_rj - exact_rj|
#
# exact = the independent oracle (`oracle`: fsum-based float64 on the *stored* inputs; every storage dtype embeds
# exactly in float64, so the oracle and both orders see the same numbers). NaN and inf errors count as inf.
#
# Notation: u_s, η_s unit roundoff and half-smallest-subnormal of the storage dtype; u_a, η_a the same for the
# accumulation dtype; ℓ(u) = -log(1 - u) (one rounding in the log domain); γ_k = expm1(k ℓ(u_a)).
#
# Derivation, RMSNorm -> linear (the other rules repeat these steps; each step is one function in `bounds`).
#   s = 1/sqrt(mean x^2 + eps): every square passes n + 2 roundings (square, n - 1 adds, /n, +eps; in a 16-bit
#     accumulator's adder tree ceil(log2 n) adds instead of n - 1: `Precision.adds`), sqrt halves the log error,
#     sqrt and 1/. round once more:                         |log(s~/s)| <= L_s = (n + 2) ℓ_a / 2 + 2 ℓ_a.
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
#
# Overflow is a fused-only source of its own: the fused order accumulates unnormalised values (x @ (g ⊙ F),
# x @ F', e^{z - m_tile} @ V) that the reference only ever forms normalised. Where a partial sum of them may pass
# the accumulation dtype's max (`bounds.matmul_may_overflow`, `bounds.unnormalised_may_overflow`: realistic only
# for a float16 accumulator) the fused bound is inf and the output is flagged `overflow`.
# ===============================================================================================================
#
# What the criterion cannot check, and what it does instead (docs/numerics.md, "Equivalent"):
#
# - A row is *unchecked* when its limit c E_ref + atol is infinite or at least max_j |exact_rj| (and not zero):
#   any answer of the right size would pass, including zero. Unchecked rows are counted (`Verdict.unchecked`) and reported per
#   cell (rule x dtype) by the campaigns; an example whose exact output is all zeros checks nothing about the
#   scale and is rejected by the fuzz properties (`Verdict.exact_is_zero`).
# - A non-finite fused result fails unless the reference row is non-finite too (`Verdict.nonfinite`), whatever
#   the limit: inf <= inf must not pass an all-NaN fused block.
# - The fused-only hazards are stated, not avoided: `Verdict.ok` is the strict criterion (a hazard fails it, which
#   is how the hazard tests pin them); `Verdict.ok_given_hazards` lets a row exceed its limit by at most its
#   stated hazard term (`RuleBounds.hazard`: the fold's underflow, LayerNorm's centring), and lets a flagged
#   `overflow` row be non-finite. The fuzz properties assert the latter and count the rows that needed it.
# - A cell whose unchecked share is above MAX_UNCHECKED must also pass a statistical check over all its rows
#   (`CellStatistics`): it catches what no single row can, a fused order that returns its input, NaN, or a result
#   with a 1% scale bias.
# ===============================================================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ..models.llama.config import LlamaConfig
from ..precision import F64, dtype_info, resolve_dtype
from . import bounds as bd
from .bounds import Bounded, Precision

__all__ = [
    "MAX_UNCHECKED",
    "C",
    "CellStatistics",
    "RuleBounds",
    "Verdict",
    "compare",
    "decoder_block_bounds",
    "layer_norm_linear_bounds",
    "merge_tree_bounds",
    "rms_norm_linear_bounds",
    "row_errors",
    "softmax_linear_bounds",
]

#: The factor on the reference's actual error (derived above: the rounding-count differences live in atol).
C = 1.0


@dataclass(frozen=True)
class RuleBounds:
    """Per-output bounds (..., m) for one case: the two orders' a-priori bounds, the oracle's, the fused-only
    hazard terms that the allowance leaves out, and where the fused order alone may overflow its accumulator."""

    ref: F64
    fused: F64
    oracle: F64
    hazard: F64
    overflow: NDArray[np.bool_]

    @property
    def allowance(self) -> F64:
        """atol per output: the larger of the two orders' bounds, plus the oracle's own error."""
        return np.maximum(self.ref, self.fused) + self.oracle


def _f64(a: ArrayLike) -> F64:
    return np.asarray(a).astype(np.float64)


def _fold_precision(F_dtype: np.dtype, fold_dtype: DTypeLike | None) -> Precision:
    """The precision in which the fold is stored (its `storage`), F's dtype by default as in `fusion`."""
    return Precision.of(resolve_dtype(fold_dtype) if fold_dtype is not None else F_dtype, np.float64)


def _vacuous_as_inf(b: F64) -> F64:
    """A bound computed as inf * 0 = NaN says nothing: inf (as `bounds.Bounded` does)."""
    return np.where(np.isnan(b), np.inf, b)


def _fused_alone(may_overflow: NDArray[np.bool_], ref: Bounded) -> NDArray[np.bool_]:
    """Outputs where the fused order's accumulator may overflow while the reference's bound holds."""
    return may_overflow & np.isfinite(ref.b)


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
    growth = bd._exp(L + P.l_a) * (1 + P.gamma_dot(n)) * (1 + P.u_s)
    hazard = Pf.eta_s * s * np.sum(np.abs(x64), axis=-1, keepdims=True) * growth  # (..., 1)
    oracle = _rms_reference(x64, g64, F64_, eps, Precision.of(np.float64)).b
    return RuleBounds(
        ref=ref.b,
        fused=fused.b,
        oracle=oracle,
        hazard=np.broadcast_to(_vacuous_as_inf(hazard), ref.b.shape),
        overflow=_fused_alone(bd.matmul_may_overflow(X, Fg, P), ref),
    )


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
    second, |mu| Σ_i ρ_ij, is the centring hazard (left out). The accumulation term γ |x| @ |F'| stays in atol:
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
    # y = x @ F~' in acc: |x| @ ρ (fold rounding; split below) + γ |x| @ (|F'| + ρ) + underflow, and the casts of
    # x and F~' to acc when acc is narrower than storage (`bounds.load`)
    g = P.gamma_dot(n)
    Xl, Fl = bd.load(X, P), bd.load(Bounded(Fp, rho), P)  # (..., n), (n, m)
    mag = Xl.mag @ Fl.mag  # (..., m)   bounds every partial sum of x @ F~' in acc
    acc_term = g * mag + n * P.eta_a * (1 + g)  # (..., m)
    # the casts' term is zero when acc is at least as wide as storage (load is exact): not computed then
    cast = Xl.b @ Fl.mag + np.abs(x64) @ (Fl.b - rho) if P.u_a > P.u_s else 0.0  # (..., m)
    may_overflow = bd.may_exceed_acc(mag, P)  # (..., m)   `bd.matmul_may_overflow(X, Bounded(Fp, rho), P)`
    y_shared = Bounded(x64 @ Fp, np.where(may_overflow, np.inf, ad @ rho + cast + acc_term))  # (..., m)
    fused_y = bd.scale_rows(y_shared, st.s, st.L, P)  # (..., m)
    fused = bd.store(bd.add(fused_y, Bounded(bias, b_bias), P), P)

    growth = st.s * bd._exp(st.L + P.l_a) * (1 + P.u_a) * (1 + P.u_s)  # (..., 1)
    hazard = (amu * np.sum(rho, axis=0) + Pf.eta_s * np.sum(np.abs(x64), axis=-1, keepdims=True)) * growth
    oracle = _ln_reference(x64, ga, be, F64_, eps, Precision.of(np.float64)).b
    return RuleBounds(
        ref=ref.b,
        fused=fused.b,
        oracle=oracle,
        hazard=np.broadcast_to(_vacuous_as_inf(hazard), ref.b.shape),
        overflow=_fused_alone(may_overflow, ref),
    )


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
    every tile passes <= depth merges, finalised and rounded once. The only fused-only error source is the
    overflow of the unnormalised accumulator: hazard = 0."""
    zs = np.asarray(z)
    P = Precision.of(zs.dtype, acc)
    z64, V64 = _f64(z), _f64(V)
    ref = _sm_reference(z64, V64, P)
    Z, Vb = bd.exact(z64), bd.exact(V64)
    fused = bd.store(bd.softmax_online_matmul(Z, Vb, P, tile_len=tile_len, depth=depth), P)
    oracle = _sm_reference(z64, V64, Precision.of(np.float64)).b
    return RuleBounds(
        ref=ref.b,
        fused=fused.b,
        oracle=oracle,
        hazard=np.zeros_like(ref.b),
        overflow=_fused_alone(bd.unnormalised_may_overflow(Z, Vb, P), ref),
    )


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
# A Llama decoder block
# ---------------------------------------------------------------------------------------------------------------
#
# The block's reference order is the composition of the reference layers; its fused order is the model's own
# decoder block (`normfuse_ref.models.llama.forward.decoder_block` in fused mode). Both run the same operations
# everywhere but at the three sites (RMSNorm -> QKV, softmax -> V, RMSNorm -> gate/up), except that the model also
# stores the SwiGLU hidden layer h (a DIMC operand) where `layers.swiglu` keeps it in acc. So the block's allowance
# is the running error bound of the reference order in which, at each site, the larger of the two orders' bounds
# is carried on, and h is stored. Downstream operations are monotone in their input bounds, so this bounds both
# orders' errors, and it keeps the criterion unchanged: E_fused <= c E_ref + atol, c = 1.


def _site_rms_linear(X: Bounded, g: F64, W: F64, eps: float, P: Precision) -> tuple[Bounded, Bounded, Any]:
    """rms_norm -> linear at one site: (reference-order bound, fused-order bound, fused-only overflow), both
    stored. The fold is stored in the storage dtype without its underflow term (the fold-underflow hazard)."""
    G, Wb = bd.exact(g), bd.exact(W)
    ref = bd.store(bd.matmul(bd.store(bd.rms_norm_acc(X, G, eps, P), P), Wb, P), P)  # (T, out)
    Fg = bd.fold(G.v[:, None] * Wb.v, Precision.of(P.storage, np.float64), underflow=False)  # (d, out)
    s, L = bd.rms_scale(X, eps, P)  # (T, 1)
    fused = bd.store(bd.scale_rows(bd.matmul(X, Fg, P), s, L, P), P)  # (T, out)
    return ref, fused, np.any(bd.matmul_may_overflow(X, Fg, P))


def _widest(a: Bounded, b: Bounded) -> Bounded:
    """The same oracle value with the larger of two bounds: what either order may have made."""
    return Bounded(a.v, np.maximum(a.b, b.b))


def _heads(X: Bounded, T: int, H: int, hd: int) -> Bounded:
    """(T, H*hd) -> (H, T, hd)."""
    return Bounded(X.v.reshape(T, H, hd).transpose(1, 0, 2), X.b.reshape(T, H, hd).transpose(1, 0, 2))


def _block_bound(
    X: Bounded, positions: NDArray[Any], cfg: LlamaConfig, w: dict[str, F64], P: Precision, tile_size: int | None
) -> tuple[Bounded, bool]:
    """Oracle value and allowance of the block's output (T, d) for an input X (T, d) known to within X.b, and
    whether the fused order alone may overflow its accumulator somewhere in the block."""
    T = X.v.shape[0]
    Hq, Hkv, hd, G = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.group
    eps = cfg.norm_eps
    # site 1
    sites = [_site_rms_linear(X, w["attn_norm"], w[k], eps, P) for k in ("attn_q", "attn_k", "attn_v")]
    overflow = any(bool(o) for _, _, o in sites)
    qkv = [_widest(r, f) for r, f, _ in sites]
    Q = _heads(qkv[0], T, Hq, hd)  # (Hq, T, hd)
    K = _heads(qkv[1], T, Hkv, hd)  # (Hkv, T, hd)
    V = _heads(qkv[2], T, Hkv, hd)  # (Hkv, T, hd)
    Q = bd.store(bd.rope(Q, positions, base=cfg.rope_base, layout=cfg.rope_layout, P=P), P)  # (Hq, T, hd)
    K = bd.store(bd.rope(K, positions, base=cfg.rope_base, layout=cfg.rope_layout, P=P), P)  # (Hkv, T, hd)
    rep = lambda B: Bounded(np.repeat(B.v, G, axis=0), np.repeat(B.b, G, axis=0))  # noqa: E731  (Hq, T, hd)
    Z = bd.attention_scores(Q, rep(K), P)  # (Hq, T, T)
    keep = np.arange(T)[None, :] <= np.arange(T)[:, None]  # (T, T)
    Z = Bounded(np.where(keep, Z.v, -np.inf), np.where(keep, Z.b, 0.0))
    # site 2
    t = T if tile_size is None else min(tile_size, T)
    ref_o = bd.store(bd.matmul(bd.softmax_acc(Z, P), rep(V), P), P)  # (Hq, T, hd)
    fused_o = bd.store(bd.softmax_online_matmul(Z, rep(V), P, tile_len=t, depth=-(-T // t) - 1), P)
    overflow = overflow or bool(np.any(bd.unnormalised_may_overflow(Z, rep(V), P)))
    O = _widest(ref_o, fused_o)
    O = Bounded(O.v.transpose(1, 0, 2).reshape(T, Hq * hd), O.b.transpose(1, 0, 2).reshape(T, Hq * hd))
    X1 = bd.store(bd.add(X, bd.store(bd.matmul(O, bd.exact(w["attn_output"]), P), P), P), P)  # (T, d)
    # site 3: the reference keeps gate/up in acc, the fused order stores them (the rule's output)
    H2 = bd.store(bd.rms_norm_acc(X1, bd.exact(w["ffn_norm"]), eps, P), P)  # (T, d)
    sites3 = [_site_rms_linear(X1, w["ffn_norm"], w[k], eps, P) for k in ("ffn_gate", "ffn_up")]
    overflow = overflow or any(bool(o) for _, _, o in sites3)
    gate = _widest(bd.matmul(H2, bd.exact(w["ffn_gate"]), P), sites3[0][1])  # (T, f)
    up = _widest(bd.matmul(H2, bd.exact(w["ffn_up"]), P), sites3[1][1])  # (T, f)
    Hm = bd.store(bd.mul(bd.silu(gate, P), up, P), P)  # (T, f)   stored by the model, kept in acc by the layer
    down = bd.store(bd.matmul(Hm, bd.exact(w["ffn_down"]), P), P)  # (T, d)
    return bd.store(bd.add(X1, down, P), P), overflow


@bd.quiet
def decoder_block_bounds(
    x: ArrayLike,
    positions: ArrayLike,
    cfg: LlamaConfig,
    *,
    tile_size: int | None = None,
    acc: DTypeLike | None = None,
    **weights: ArrayLike,
) -> RuleBounds:
    """The block's allowance per output (T, d) for stored inputs (weights by their GGUF names, row-vector layout):
    its running bound in (x's dtype, acc) plus the float64 oracle's. The per-site maxima make `ref` and `fused`
    the same bound; a fused-only overflow anywhere flags every output (attention mixes the rows)."""
    P = Precision.of(np.asarray(x).dtype, acc)
    X = bd.exact(x)
    w = {k: _f64(v) for k, v in weights.items()}
    pos = np.asarray(positions)  # (T,): broadcasts over the heads of (H, T, hd)
    low, overflow = _block_bound(X, pos, cfg, w, P, tile_size)
    oracle, _ = _block_bound(X, pos, cfg, w, Precision.of(np.float64), tile_size)
    zero = np.zeros_like(low.b)
    return RuleBounds(ref=low.b, fused=low.b, oracle=oracle.b, hazard=zero, overflow=np.full(low.b.shape, overflow))


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


def _row_all(a: ArrayLike, m: int) -> NDArray[np.bool_]:
    return np.all(np.asarray(a).reshape(-1, m), axis=-1)


@dataclass(frozen=True)
class Verdict:
    """The criterion evaluated on one case, per row: E_fused <= c E_ref + atol (see the module docstring)."""

    err_fused: F64  # (rows,)
    err_ref: F64  # (rows,)
    atol: F64  # (rows,)
    floor: F64  # (rows,)  one storage rounding of the exact output: u_s |exact| + η_s
    hazard: F64  # (rows,)  the fused-only error terms that atol leaves out (bound)
    size: F64  # (rows,)  max_j |exact_rj|
    fused_finite: NDArray[np.bool_]  # (rows,)  every fused output of the row is finite
    ref_finite: NDArray[np.bool_]  # (rows,)  every reference output of the row is finite
    overflow: NDArray[np.bool_]  # (rows,)  the fused order alone may overflow its accumulator in this row
    tiny: float  # the storage dtype's smallest normal value
    top: float  # the storage dtype's largest finite value
    c: float = C

    @property
    def limit(self) -> F64:
        return self.c * self.err_ref + self.atol

    @property
    def unchecked(self) -> NDArray[np.bool_]:
        """Rows whose limit is infinite or at least as large as the exact output itself: anything of the right
        size passes there, including zero. (A row whose exact output is zero, such as a fully masked softmax row,
        is checked when its limit is below the storage dtype's smallest normal: then only underflow-sized results
        pass.)"""
        lim = self.limit
        return ~np.isfinite(lim) | np.where(self.size > 0, lim >= self.size, lim >= self.tiny)

    @property
    def exact_is_zero(self) -> bool:
        """The exact output is zero everywhere: the example checks nothing about the scale."""
        return bool(np.all(self.size == 0))

    @property
    def nonfinite(self) -> NDArray[np.bool_]:
        """Rows where the fused result is NaN or inf although the reference is finite: a failure at any limit."""
        return ~self.fused_finite & self.ref_finite

    @property
    def failing(self) -> NDArray[np.bool_]:
        """Rows that fail the strict criterion (every fused-only source counts against the fused order)."""
        return ~(self.err_fused <= self.limit) | self.nonfinite

    @property
    def ok(self) -> bool:
        return not bool(np.any(self.failing))

    @property
    def needs_hazard(self) -> NDArray[np.bool_]:
        """Failing rows that the stated hazards explain: the excess is within the hazard term; or the fused result
        is not finite where its accumulator alone may overflow, or where the hazard term carries the allowed result
        past the storage dtype's largest value (the centring hazard can, in fp8)."""
        within = self.err_fused <= self.limit + self.hazard
        beyond = (self.hazard > 0) & (self.size + self.limit + self.hazard > self.top)
        overflowed = ~self.fused_finite & (self.overflow | beyond)
        return self.failing & ((within & ~self.nonfinite) | overflowed)

    @property
    def ok_given_hazards(self) -> bool:
        """The criterion with the stated hazards allowed (see the module docstring)."""
        return not bool(np.any(self.failing & ~self.needs_hazard))

    @property
    def ratio(self) -> float:
        """Worst E_fused / E_ref, with E_ref floored at one output rounding (below that, errors are noise)."""
        r = self.ratios
        return float(np.max(r)) if r.size else 0.0

    @property
    def ratios(self) -> F64:
        """E_fused / max(E_ref, floor) per row (0 where the fused row is exact)."""
        den = np.maximum(self.err_ref, self.floor)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = np.where(self.err_fused == 0, 0.0, self.err_fused / np.where(den == 0, np.inf, den))
        return np.where((den == 0) & (self.err_fused > 0), np.inf, r)

    @property
    def budget(self) -> float:
        """Worst E_fused / (c E_ref + atol) over the checked rows: the share of the allowance used (> 1 fails)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = np.where(self.err_fused == 0, 0.0, self.err_fused / self.limit)
        r = np.where(np.isnan(r), np.inf, r)
        return float(np.max(r)) if r.size else 0.0

    @property
    def worst_abs(self) -> float:
        return float(np.max(self.err_fused)) if self.err_fused.size else 0.0

    def explain(self) -> str:
        """Which rows fail, by how much, in one paragraph (for assertion messages)."""
        bad = np.nonzero(self.failing)[0]
        head = f"fused order worse than allowed in {bad.size} of {self.err_fused.size} rows"
        lines = [head]
        for r in bad[:4]:
            if self.nonfinite[r]:
                lines.append(f"  row {r}: the fused result is not finite, the reference is")
                continue
            lines.append(
                f"  row {r}: |fused - exact| = {self.err_fused[r]:.3e} > c |ref - exact| + atol = "
                f"{self.c:g} * {self.err_ref[r]:.3e} + {self.atol[r]:.3e}  (fused-only hazard bound {self.hazard[r]:.3e}"
                f"{', accumulator may overflow' if self.overflow[r] else ''})"
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
    finite_ex = np.where(np.isfinite(ex), ex, 0.0)
    return Verdict(
        err_fused=row_errors(f, ex),
        err_ref=row_errors(ref, ex),
        atol=_row_max(bounds.allowance, m),
        floor=_row_max(info.unit_roundoff * np.abs(finite_ex), m) + bd._eta(st),
        hazard=_row_max(bounds.hazard, m),
        size=_row_max(np.abs(finite_ex), m),
        fused_finite=_row_all(np.isfinite(f.astype(np.float64)), m),
        ref_finite=_row_all(np.isfinite(np.asarray(ref).astype(np.float64)), m),
        overflow=np.any(np.asarray(bounds.overflow).reshape(-1, m), axis=-1),
        tiny=info.tiny,
        top=info.max,
    )


# ---------------------------------------------------------------------------------------------------------------
# A whole cell: what many rows say together
# ---------------------------------------------------------------------------------------------------------------

#: A cell (rule x dtype) whose share of unchecked rows is above this must also pass the statistical check.
MAX_UNCHECKED = 0.05

#: A row whose stated fused-only (hazard) term exceeds this many times the reference's actual error (at least one
#: output rounding) is in the hazard's regime and left out of the cell's statistics (`CellStatistics.add`): the same
#: factor as the median error ratio a correct fused order may have (fuzz.campaign.MAX_MEDIAN_RATIO), since such a
#: term alone could carry the row's ratio past it.
HAZARD_RATIO = 2.0

#: How far a correct fused order's median scale bias may be from the reference's, in units of the example's coarser
#: unit roundoff max(u_s, u_a) (`CellStatistics.bias`). Rounding to nearest is unbiased only for values spread evenly
#: over the grid: with a 2-3 bit significand the data's density is not flat across a spacing, so rounding shrinks or
#: inflates systematically by a fraction of a unit roundoff, and the fused order rounds different numbers (folded
#: weights instead of normalised activations). Measured on correct fused orders (200-500 examples per cell, several
#: seeds): medians up to 0.8 u in magnitude in the 16-bit cells and 1.2 u in the fp8 ones, every interval reaching
#: into [-1 u, 1 u]; a fused block returning its input sits at -1/u. A fused order whose deferred scale is 1% off is
#: 3.5 u off in a bfloat16 block cell, 20 u in float16 and 1.7e5 u in float32; in fp8 storage (u = 6.25% and 12.5%)
#: it is below the formats' own rounding bias, and the float32/float64 cells catch it.
BIAS_BAND = 1.0


@dataclass
class CellStatistics:
    """Evidence over all examples of one cell (rule x dtype), for what no single row's bound can check.

    - unchecked, hazard_rows: counts of rows (see `Verdict`); rows in a stated hazard's regime (its fused-only term
      above the allowance) are left out of the two statistics below: there the fused order is known to differ;
    - the error ratio R = E_fused / max(E_ref, one output rounding) of every row with finite errors: a correct
      fused order makes the same roundings as the reference, of the same sizes (the derivation above), so its
      errors are another draw of the same size and the median of R is at most near 1; a fused block that returns
      its input has R ~ |y - x| / (u |y|), far above;
    - the scale bias: per example, the least-squares slope of (fused - reference) on what the rule computes,
      (exact - passthrough), in units of the example's coarser unit roundoff u = max(u_s, u_a); over the cell, the
      median of these slopes and a distribution-free confidence interval for it (order statistics, level 1e-4),
      robust to the heavy tails of narrow formats. `passthrough` is the part of the output the rule does not
      compute: 0 for the rules, the residual input x for a decoder block, whose output x + Δ is often x to within
      fp8's resolution, so that a block returning its input has a slope of -1/u. A correct fused order's slopes
      centre near 0; a fused order whose deferred scale is 1% off centres near 0.01/u.
    """

    examples: int = 0
    rows: int = 0
    unchecked: int = 0
    hazard_rows: int = 0
    ratios: list[float] = field(default_factory=list)
    slopes: list[float] = field(default_factory=list)  # per example, in units of u

    def add(
        self,
        fused: ArrayLike,
        ref: ArrayLike,
        exact: ArrayLike,
        v: Verdict,
        *,
        unit: float,
        passthrough: ArrayLike = 0.0,
    ) -> None:
        """Record one example's verdict and outputs (`unit` = max(u_s, u_a); `passthrough`: see above)."""
        self.examples += 1
        self.rows += v.err_fused.size
        self.unchecked += int(np.sum(v.unchecked))
        # In a hazard's regime (counted as hazard rows: the first case): its fused-only term is above the allowance
        # (16/8-bit storage), or (statistics only) above HAZARD_RATIO times what the reference actually erred (float32/float64 storage with |mu| >> sigma, where
        # the allowance's accumulation term covers the term but the fused errors are no longer a draw of the
        # reference's: measured, LayerNorm offset rows in float64 with |mu|/sigma up to 1e4 have a median
        # E_fused / E_ref of 2e3, each row within its allowance).
        regime = v.hazard > v.atol  # (rows,)
        self.hazard_rows += int(np.sum(regime | v.needs_hazard))
        regime |= v.hazard > HAZARD_RATIO * np.maximum(v.err_ref, v.floor)
        r = v.ratios[~regime]
        self.ratios.extend(r[np.isfinite(r)].tolist())
        e = np.asarray(exact, dtype=np.float64)
        m = e.shape[-1] if e.ndim else 1
        outside = np.repeat(~regime, m)  # (rows * m,)
        f, rf, u = (np.asarray(a, dtype=np.float64).ravel() for a in (fused, ref, e - np.asarray(passthrough)))
        good = np.isfinite(f) & np.isfinite(rf) & np.isfinite(u) & outside
        uu = float(u[good] @ u[good])
        if uu > 0:
            self.slopes.append(float((f[good] - rf[good]) @ u[good]) / uu / unit)

    def pool(self, other: CellStatistics) -> None:
        """Add another campaign's evidence of the same cell (more examples, another seed) to this one."""
        self.examples += other.examples
        self.rows += other.rows
        self.unchecked += other.unchecked
        self.hazard_rows += other.hazard_rows
        self.ratios.extend(other.ratios)
        self.slopes.extend(other.slopes)

    @property
    def resolved(self) -> bool:
        """The scale bias's confidence interval is no wider than the band: enough slopes to say something."""
        _, lo, hi = self.bias
        return hi - lo <= 2 * BIAS_BAND

    @property
    def unchecked_share(self) -> float:
        return self.unchecked / self.rows if self.rows else 0.0

    @property
    def median_ratio(self) -> float:
        return float(np.median(self.ratios)) if self.ratios else 0.0

    @property
    def bias(self) -> tuple[float, float, float]:
        """(median slope, low, high): the fused order's scale bias against the reference in units of u, with a
        distribution-free confidence interval at level 1e-4 (the k-th smallest and largest slopes, k from the
        binomial(N, 1/2) tail; normal approximation, z = 3.89). (0, -inf, inf) with fewer than 16 slopes."""
        n = len(self.slopes)
        if n < 16:
            return 0.0, -math.inf, math.inf
        x = np.sort(self.slopes)
        k = max(0, math.floor(n / 2 - 3.89 * math.sqrt(n) / 2))
        return float(np.median(x)), float(x[k]), float(x[n - 1 - k])
