"""Running a-priori error bounds: the rounding analysis of the reference and fused orders, made executable.

A `Bounded` pairs the oracle value `v` of an intermediate (float64 arithmetic on the *stored* inputs) with a
componentwise bound `b` on |computed - v|, where "computed" is what a storage/accumulation-dtype pipeline
produces. Each function below is one operation of the layers in `normfuse_ref.layers`, or of a primitive the fused
rules (`normfuse_ref.fusion`) issue under the rounding rule of `normfuse_ref.ops`, written the way that code computes
it, and returns the oracle value and a rigorous bound for its output. Chaining them bounds a whole composition (a
rule, a decoder block). This is the one place the rounding analysis lives: the criterion (`equivalence`) and the
unit tests' tolerances (tests/tolerances.py) use it.

The model of rounding (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., ch. 2-3):

- One rounding to a dtype with unit roundoff u: fl(t) = t (1 + δ) + η, |δ| <= u, |η| <= η_min, where η_min is
  half the smallest subnormal (only an underflow produces η; additions and subtractions never do).
- Errors of products of roundings are tracked in the log domain: |log(1 + δ)| <= ℓ(u) = -log(1 - u), so k
  roundings give a factor within [e^{-kℓ}, e^{kℓ}] and a relative error <= expm1(k ℓ). This is Higham's γ_k to
  first order and exact to all orders (it matters for fp8, where u = 2^-3).
- A sum of n terms in a 32- or 64-bit accumulator in any order (numpy's pairwise sums and BLAS's blocked kernels
  included): every term passes at most n - 1 additions. In a 16-bit accumulator every sum is the balanced adder
  tree of `precision.tree_sum`: a term passes ceil(log2 n) additions (`Precision.adds`). A dot product adds the
  rounding of each product: fl(Σ x_i w_i) = Σ x_i w_i (1 + θ_i), |θ_i| <= expm1((1 + adds(n)) ℓ).
- np.exp: at most 4 ulps = 8u relative (numpy's float32 SIMD exp is documented at 2.52 ulp; measured 2.45 ulp on
  this machine's AVX2 path; float64 exp is < 1 ulp; float16 exp is computed in float32 and rounded). sqrt and
  division are correctly rounded.
- Overflow: the rounding model holds only below the dtype's max. Every operation checks a bound on the magnitude
  of its partial results (|computed| <= mag) against the accumulation dtype's max, and `store` against the storage
  dtype's max; where it may be exceeded the bound is inf (no claim). `matmul_may_overflow` states the condition,
  so that the criterion can tell a fused-only overflow (a hazard) from an error.

The oracle itself is float64 arithmetic, so its own error is bounded by the same functions with
Precision.of("float64") and added to the allowance (see `equivalence`).

Whole models (the last section) get a probabilistic bound instead: chaining the rigorous bounds through a real
model is true but too loose to catch a slip, so two roundings of one forward pass (fused vs baseline, normfuse vs
HF transformers, decode vs recompute, a text padded in a batch vs alone) are judged by `forward_bound`, and sentence
embeddings by `pooled_bound` and `cosine_bound`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ..layers import rope_angles
from ..precision import F64, accumulation_dtype, dtype_info, resolve_dtype

__all__ = [
    "LAMBDA",
    "Bounded",
    "Precision",
    "add",
    "attention_scores",
    "cosine_bound",
    "exact",
    "fold",
    "forward_bound",
    "layer_norm_acc",
    "layer_norm_stats",
    "load",
    "matmul",
    "matmul_may_overflow",
    "may_exceed_acc",
    "mul",
    "pooled_bound",
    "quiet",
    "rms_norm_acc",
    "rms_scale",
    "rope",
    "scale_rows",
    "silu",
    "softmax_acc",
    "softmax_online_matmul",
    "softmax_reference_matmul",
    "store",
    "unnormalised_may_overflow",
]


#: np.exp's accuracy bound, in ulps (see the module docstring).
EXP_ULPS = 4.0

#: max |d/dx silu(x)| = 1.0998... (at x = 2.3994); silu is globally Lipschitz with this constant.
SILU_LIPSCHITZ = 1.1


_P = ParamSpec("_P")
_R = TypeVar("_R")


def quiet(f: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a bound computation without floating-point warnings: a vacuous bound (inf, or inf * 0 = NaN, which
    Bounded turns into inf) is a valid answer, not a problem to report."""

    @functools.wraps(f)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with np.errstate(all="ignore"):
            return f(*args, **kwargs)

    return wrapper


def ell(u: float) -> float:
    """ℓ(u) = -log(1 - u): the largest |log(1 + δ)| of one rounding with |δ| <= u."""
    return -math.log1p(-u)


def _eta(dtype: np.dtype) -> float:
    """Half the smallest subnormal: the absolute error of one rounding that underflows."""
    info = dtype_info(dtype)
    return max(info.tiny * info.unit_roundoff, float(np.nextafter(0.0, 1.0)))


@dataclass(frozen=True)
class Precision:
    """The rounding facts of one pipeline: storage dtype (inputs, outputs, stored intermediates) and acc dtype."""

    storage: np.dtype
    acc: np.dtype
    u_s: float  # unit roundoff of the storage dtype
    eta_s: float  # half its smallest subnormal
    u_a: float  # unit roundoff of the accumulation dtype
    eta_a: float  # half its smallest subnormal
    max_a: float  # largest finite accumulation-dtype value
    max_s: float  # largest finite storage-dtype value
    tree: bool  # sums in the accumulation dtype are adder trees (16-bit accumulators, `precision.tree_sum`)

    @classmethod
    def of(cls, storage: DTypeLike | str, acc: DTypeLike | str | None = None) -> Precision:
        st = resolve_dtype(storage)
        a = accumulation_dtype(st, acc)
        return cls(
            storage=st,
            acc=a,
            u_s=dtype_info(st).unit_roundoff,
            eta_s=_eta(st),
            u_a=dtype_info(a).unit_roundoff,
            eta_a=_eta(a),
            max_a=dtype_info(a).max,
            max_s=dtype_info(st).max,
            tree=a.itemsize <= 2,
        )

    @property
    def l_s(self) -> float:
        return ell(self.u_s)

    @property
    def l_a(self) -> float:
        return ell(self.u_a)

    @property
    def l_exp(self) -> float:
        """Log-domain error of one np.exp in the accumulation dtype: EXP_ULPS ulps = 2 EXP_ULPS u."""
        return ell(2 * EXP_ULPS * self.u_a)

    def gamma(self, k: float) -> float:
        """Relative error of k accumulation-dtype roundings: expm1(k ℓ(u_a)) (Higham's γ_k, all orders)."""
        return _expm1(k * self.l_a)

    def adds(self, n: int) -> int:
        """Additions one term of an n-term sum passes: n - 1 in any order, ceil(log2 n) in the 16-bit adder tree."""
        return max(0, (n - 1).bit_length()) if self.tree else max(0, n - 1)

    def gamma_dot(self, n: int) -> float:
        """Relative error of each term of a length-n dot product: its product's rounding plus the additions."""
        return self.gamma(1 + self.adds(n))


def _expm1(L: Any) -> Any:
    """expm1 that saturates to inf instead of warning (a vacuous bound is a valid bound)."""
    with np.errstate(over="ignore"):
        return np.expm1(L)


def _exp(L: Any) -> Any:
    with np.errstate(over="ignore"):
        return np.exp(L)


def _log1m(e: Any) -> Any:
    """-log(1 - e) for 0 <= e, inf when e >= 1 (the perturbation may have destroyed the quantity)."""
    e = np.asarray(e, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(e < 1, -np.log1p(-np.minimum(e, 1.0)), np.inf)


@dataclass(frozen=True)
class Bounded:
    """v: the oracle value (float64); b: a bound on |computed - v|, same shape (0 where the value is exact)."""

    v: F64
    b: F64

    def __post_init__(self) -> None:
        # inf * 0 in a vacuous bound gives NaN: a NaN bound is no bound, i.e. inf
        if np.isnan(self.b).any():
            object.__setattr__(self, "b", np.where(np.isnan(self.b), np.inf, self.b))

    @property
    def mag(self) -> F64:
        """|v| + b: a bound on |computed|."""
        return np.abs(self.v) + self.b


def exact(x: ArrayLike) -> Bounded:
    """A stored input: its float64 value is exact (every supported dtype embeds in float64)."""
    v = np.asarray(x).astype(np.float64)
    return Bounded(v, np.zeros_like(v))


# ---------------------------------------------------------------------------------------------------------------
# Elementwise and matrix operations
# ---------------------------------------------------------------------------------------------------------------


def load(X: Bounded, P: Precision) -> Bounded:
    """X as an operation sees it: cast to the accumulation dtype, which rounds once when acc is narrower than the
    storage dtype (float32 storage with a bfloat16 accumulator); exact otherwise. Every operation below loads its
    operands (harmlessly twice, for a value already in acc)."""
    if P.u_a <= P.u_s:
        return X
    return Bounded(X.v, X.b + P.u_a * X.mag + P.eta_a)


def _unless_over(b: Any, mag: Any, limit: float) -> Any:
    """b where the magnitude `mag` stays within `limit`, inf where it may not (the rounding model stops at max)."""
    return np.where(mag <= limit, b, np.inf)


def store(X: Bounded, P: Precision) -> Bounded:
    """Round a computed value to the storage dtype: |fl(c) - v| <= b + u_s (|v| + b) + η_s (below max_s)."""
    return Bounded(X.v, _unless_over(X.b + P.u_s * X.mag + P.eta_s, X.mag, P.max_s))


def add(X: Bounded, Y: Bounded, P: Precision) -> Bounded:
    """X + Y in acc: |fl(x~ + y~) - (x + y)| <= (b_x + b_y)(1 + u_a) + u_a |x + y|."""
    X, Y = load(X, P), load(Y, P)
    v = X.v + Y.v
    b = (X.b + Y.b) * (1 + P.u_a) + P.u_a * np.abs(v)
    return Bounded(v, _unless_over(b, np.abs(v) + b, P.max_a))


def mul(X: Bounded, Y: Bounded, P: Precision) -> Bounded:
    """X * Y (elementwise, broadcasting) in acc."""
    X, Y = load(X, P), load(Y, P)
    v = X.v * Y.v
    e = np.abs(X.v) * Y.b + np.abs(Y.v) * X.b + X.b * Y.b
    b = e * (1 + P.u_a) + P.u_a * np.abs(v) + P.eta_a
    return Bounded(v, _unless_over(b, np.abs(v) + b, P.max_a))


def matmul_may_overflow(X: Bounded, W: Bounded, P: Precision) -> NDArray[np.bool_]:
    """The stated condition of the overflow hazard: a partial sum of X @ W in acc, at most (|x| + b_x) @ (|w| + b_w),
    may exceed max_a, by magnitudes that are known (finite). An operand with no finite bound says nothing: `matmul`
    then gives no bound either, but this condition does not hold."""
    X, W = load(X, P), load(W, P)
    with np.errstate(over="ignore", invalid="ignore"):
        mag = X.mag @ W.mag
    return may_exceed_acc(mag, P)


def may_exceed_acc(mag: F64, P: Precision) -> NDArray[np.bool_]:
    """Where a known (finite) magnitude bound of partial sums passes the accumulation dtype's max: the condition of
    `matmul_may_overflow`, for a caller that has the product's magnitude `load(X).mag @ load(W).mag` already."""
    return np.isfinite(mag) & (mag > P.max_a)


def matmul(X: Bounded, W: Bounded, P: Precision) -> Bounded:
    """X @ W in acc (numpy matmul broadcasting), inner length n.

    computed = Σ_i x~_i w~_ij (1 + θ_ij), |θ_ij| <= γ = `P.gamma_dot(n)`, so
    |computed - x w| <= b_x |w| + |x| b_w + b_x b_w + γ (|x| + b_x)(|w| + b_w) + n η_a (1 + γ), unless a partial
    sum may overflow (`matmul_may_overflow`).
    """
    X, W = load(X, P), load(W, P)
    n = X.v.shape[-1]
    v = X.v @ W.v
    g = P.gamma_dot(n)
    with np.errstate(over="ignore", invalid="ignore"):
        mag = X.mag @ W.mag  # bounds every partial sum
    # An exact operand (b = 0, e.g. a stored weight) contributes no error terms: its products are not computed.
    # Leaving out an all-zero term changes no bound (adding +0 is exact), except where the other operand is not
    # finite - and there mag is not finite either, so the bound is inf both ways.
    xb, wb = bool(X.b.any()), bool(W.b.any())
    b = (
        (X.b @ np.abs(W.v) if xb else 0.0)
        + (np.abs(X.v) @ W.b if wb else 0.0)
        + (X.b @ W.b if xb and wb else 0.0)
        + g * mag
        + n * P.eta_a * (1 + g)
    )
    return Bounded(v, _unless_over(b, mag, P.max_a))


def scale_rows(Y: Bounded, s: F64, L: F64, P: Precision) -> Bounded:
    """s~ * y~ in acc, where s~ = s e^{±L} is a per-row scale (..., 1) with log-error L.

    |s~ y~ (1 + δ) - s y| <= s b_y e^{L + ℓ} + |s y| expm1(L + ℓ) + η_a.
    """
    Lt = L + P.l_a
    v = s * Y.v
    b = s * Y.b * _exp(Lt) + np.abs(v) * _expm1(Lt) + P.eta_a
    return Bounded(v, _unless_over(b, np.abs(v) + b, P.max_a))


def fold(W: ArrayLike, P_fold: Precision, *, n_f64_ops: int = 1, underflow: bool = True) -> Bounded:
    """A folded weight: its exact value W (float64 of the exact fold), computed with `n_f64_ops` float64
    roundings per entry and stored once in the fold dtype (P_fold.storage).

    `underflow=False` leaves out the η of the fold's rounding: the fold's underflow is a hazard of the fused
    order (weights re-quantised in the subnormal range), which the allowance must not grant (see equivalence).
    """
    v = np.asarray(W, dtype=np.float64)
    l64 = ell(dtype_info(np.float64).unit_roundoff)
    b = np.abs(v) * _expm1(n_f64_ops * l64 + P_fold.l_s) + (P_fold.eta_s if underflow else 0.0)
    return Bounded(v, b)


# ---------------------------------------------------------------------------------------------------------------
# Normalisations
# ---------------------------------------------------------------------------------------------------------------


def _eps_error(eps: float, P: Precision) -> float:
    """|fl_acc(eps) - eps|: the layers add eps as `acc.type(eps)`."""
    return abs(float(P.acc.type(eps)) - eps)


def rms_scale(X: Bounded, eps: float, P: Precision) -> tuple[F64, F64]:
    """s = 1/sqrt(mean(x^2) + eps) per row (..., 1), and L, a bound on |log(s~ / s)|.

    r~ = fl(fl(mean(x~^2)) + fl(eps)): each square passes <= adds(n) + 3 roundings (square, the additions, /n,
    +eps), so r~ / r lies within e^{±(adds(n)+3)ℓ} (1 ± ε), ε = [mean(2|x| b + b^2) + η_a + |fl(eps) - eps|] / r.
    sqrt halves the log error, sqrt and the reciprocal round once each. A sum of squares that may exceed max_a
    (it overflows to inf, s to 0) makes L inf.
    """
    X = load(X, P)
    n = X.v.shape[-1]
    r = np.mean(X.v * X.v, axis=-1, keepdims=True) + eps  # (..., 1)
    delta = np.mean(2 * np.abs(X.v) * X.b + X.b * X.b, axis=-1, keepdims=True) + P.eta_a + _eps_error(eps, P)
    L = 0.5 * ((P.adds(n) + 3) * P.l_a + _log1m(delta / r)) + 2 * P.l_a  # (..., 1)
    squares = np.sum(X.mag * X.mag, axis=-1, keepdims=True)  # (..., 1)   the largest partial sum
    return 1 / np.sqrt(r), _unless_over(L, squares, P.max_a)


def rms_norm_acc(X: Bounded, g: Bounded, eps: float, P: Precision) -> Bounded:
    """rms_norm's value before its final rounding: fl(fl(x~ s~) g), in acc (g is a stored input or a bound)."""
    X, g = load(X, P), load(g, P)
    s, L = rms_scale(X, eps, P)
    Lt = L + 2 * P.l_a
    xs = Bounded(X.v * s, s * (X.b * _exp(Lt) + np.abs(X.v) * _expm1(Lt)) + 2 * P.eta_a)
    v = xs.v * g.v
    # |x~s~ g~ - x s g| <= |x~s~ - xs| |g| + |xs| b_g + products of the two (the rounding of * g is in Lt above)
    return Bounded(v, xs.b * np.abs(g.v) + np.abs(xs.v) * g.b + xs.b * g.b)


@dataclass(frozen=True)
class LayerNormStats:
    """What layer_norm computes before the gain: mu (..., 1), d = x - mu (..., n), s = 1/sqrt(var + eps), L."""

    mu: Bounded
    d: Bounded
    s: F64
    L: F64


def layer_norm_stats(X: Bounded, eps: float, P: Precision) -> LayerNormStats:
    """The two-pass statistics of `layers.layer_norm` (and of the fused rule's collective), with bounds.

    mu~ = fl(Σ x~ / n): |mu~ - mu| <= mean(b) + γ_{adds(n)+1} mean(|x| + b) + η_a  (the cancellation term: it grows
    with |mu|, not with σ). d~ = fl(x~ - mu~), kept in acc: |d~ - d| <= (b + b_mu)(1 + u_a) + u_a |d|. Then var + eps
    as in rms_scale with d. Sums that may exceed max_a make the bounds inf.
    """
    X = load(X, P)
    n = X.v.shape[-1]
    mu_v = np.mean(X.v, axis=-1, keepdims=True)  # (..., 1)
    mag_sum = np.sum(X.mag, axis=-1, keepdims=True)  # (..., 1)
    mu_b = np.mean(X.b, axis=-1, keepdims=True) + P.gamma(P.adds(n) + 1) * mag_sum / n + P.eta_a
    mu_b = _unless_over(mu_b, mag_sum, P.max_a)
    d_v = X.v - mu_v  # (..., n)
    d_b = (X.b + mu_b) * (1 + P.u_a) + P.u_a * np.abs(d_v)  # (..., n)
    V = np.mean(d_v * d_v, axis=-1, keepdims=True) + eps  # (..., 1)
    delta = np.mean(2 * np.abs(d_v) * d_b + d_b * d_b, axis=-1, keepdims=True) + P.eta_a + _eps_error(eps, P)
    L = 0.5 * ((P.adds(n) + 3) * P.l_a + _log1m(delta / V)) + 2 * P.l_a  # (..., 1)
    squares = np.sum((np.abs(d_v) + d_b) ** 2, axis=-1, keepdims=True)  # (..., 1)
    L = _unless_over(L, squares, P.max_a)
    return LayerNormStats(mu=Bounded(mu_v, mu_b), d=Bounded(d_v, d_b), s=1 / np.sqrt(V), L=L)


def layer_norm_acc(X: Bounded, gamma: Bounded, beta: Bounded, eps: float, P: Precision) -> Bounded:
    """layer_norm's value before its final rounding: fl(fl(fl(d~ s~) gamma) + beta), in acc."""
    st = layer_norm_stats(X, eps, P)
    gamma, beta = load(gamma, P), load(beta, P)
    Lt = st.L + 2 * P.l_a
    ds = Bounded(st.d.v * st.s, st.s * (st.d.b * _exp(Lt) + np.abs(st.d.v) * _expm1(Lt)) + 2 * P.eta_a)
    t = Bounded(ds.v * gamma.v, ds.b * np.abs(gamma.v) + np.abs(ds.v) * gamma.b + ds.b * gamma.b)
    return add(t, beta, P)


# ---------------------------------------------------------------------------------------------------------------
# Softmax, alone and fused with the following matmul
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Exponents:
    """The oracle softmax p (..., n) and θ (..., n), a bound on the log-error of each e~_i up to a factor common to
    the whole row."""

    p: F64
    theta: F64
    masked: NDArray[np.bool_]


def _exponents(Z: Bounded, P: Precision, *, exps_per_entry: int) -> _Exponents:
    """θ_i = b_i + u_a (|z_i - m| + b_i + b_max) + k ℓ_exp.

    e~_i = e^{z~_i - m~ + ρ_i} (1 + δ) = e^{z_i - m} e^{m - m~} e^{z~_i - z_i} e^{ρ_i} (1 + δ). The factor e^{m - m~}
    is the same for every entry of the row and cancels exactly between the numerator and the denominator, so only
    the entry's own input error b_i, the rounding ρ_i of its subtraction (relative to |z~_i - m~| <=
    |z_i - m| + b_i + b_max) and the exps count. In the online merge the argument is split over the tile and the
    rescaling factors e^{m_a - m}, whose arguments telescope to m - m_tile, so the same sum bounds all the
    subtractions (and the common factor is e^{m - m~_root}); only the number k of exp calls on the path of
    entry i grows (1 + merge depth). Masked entries (-inf) are exact zeros in every order: θ = 0, p = 0 there.
    """
    Z = load(Z, P)
    z = Z.v
    masked = np.isneginf(z)
    bz = np.where(masked, 0.0, Z.b)
    m = np.max(z, axis=-1, keepdims=True)  # (..., 1); -inf for a fully masked row
    m_fin = np.where(np.isneginf(m), 0.0, m)
    b_max = np.max(bz, axis=-1, keepdims=True)  # (..., 1)
    arg = np.where(masked, 0.0, m_fin - np.where(masked, 0.0, z))  # (..., n) >= 0
    theta = np.where(masked, 0.0, bz + P.u_a * (arg + bz + b_max) + exps_per_entry * P.l_exp)
    with np.errstate(over="ignore"):
        e = np.where(masked, 0.0, np.exp(-arg))  # (..., n)
    lsum = np.sum(e, axis=-1, keepdims=True)  # (..., 1)
    p = np.where(lsum == 0, 0.0, e / np.where(lsum == 0, 1.0, lsum))
    return _Exponents(p=p, theta=theta, masked=masked)


def _log_mean_exp(p: F64, theta: F64) -> F64:
    """log Σ_j p_j e^{θ_j} (Σ p = 1): bounds |log(Σ_j p_j e^{δ_j})| for any |δ_j| <= θ_j (upper side directly,
    lower side by Jensen: Σ p e^{-θ} >= e^{-Σ p θ} >= e^{-log Σ p e^{θ}}). Rows with Σ p = 0 give 0."""
    with np.errstate(over="ignore"):
        w = np.sum(p * np.exp(theta), axis=-1, keepdims=True)  # (..., 1)
    return np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), 0.0)


def softmax_acc(Z: Bounded, P: Precision) -> Bounded:
    """softmax's value before its final rounding (also attention's p, which attention keeps in acc).

    l~ = Σ e~ (up to the common factor) has log-error <= Θ = log Σ_j p_j e^{θ_j} + adds(n) ℓ + λ_η (the exps'
    underflow, <= 8 η_a each, against l >= 1); p~_i = fl(e~_i / l~) = p_i e^{±(θ_i + Θ + ℓ)} + 8 η_a e^{Θ + ℓ} + η_a.
    (l <= n stays far below max_a for every row length here.)
    """
    n = Z.v.shape[-1]
    ex = _exponents(Z, P, exps_per_entry=1)
    lam = float(_log1m(min(16 * n * P.eta_a, 0.5)))
    Theta = _log_mean_exp(ex.p, ex.theta) + P.adds(n) * P.l_a + lam  # (..., 1)
    b = ex.p * _expm1(ex.theta + Theta + P.l_a) + 8 * P.eta_a * _exp(Theta + P.l_a) + P.eta_a
    return Bounded(ex.p, np.where(ex.masked, 0.0, b))


def softmax_reference_matmul(Z: Bounded, V: Bounded, P: Precision, *, store_p: bool) -> Bounded:
    """softmax(z) @ V in the reference order: p in acc, optionally stored (the softmax *layer* rounds p to the
    storage dtype; attention keeps it in acc), then the matmul in acc."""
    p = softmax_acc(Z, P)
    if store_p:
        p = store(p, P)
    return matmul(p, V, P)


def softmax_online_matmul(Z: Bounded, V: Bounded, P: Precision, *, tile_len: int, depth: int) -> Bounded:
    """fusion.softmax_linear / a merge tree: (e^{z - m} @ V) / Σ e^{z - m} via tile states and online merges.

    Tiles of at most `tile_len` entries; every leaf passes at most `depth` merges. Per entry i:
      o: θ_i + depth ℓ_exp (rescaling factors) + (1 + adds(tile_len) + 2 depth) ℓ  (tile matmul; a multiply and an
         add per merge)
      l: Λ = log Σ_i p_i e^{θ_i} + (adds(tile_len) + 2 depth) ℓ + λ_η   (θ_i includes the depth ℓ_exp)
    and the final division rounds once: |y~ - y| <= Σ_i p_i |V_ij| expm1(φ_i + Λ + ℓ) + Σ_i p_i b_V,ij e^{φ_i + Λ + ℓ}
    plus underflow. Z (..., n), V (..., n, m) or (n, m). The unnormalised o is not divided until the end: where it
    may exceed max_a (`unnormalised_may_overflow`) the bound is inf.
    """
    V = load(V, P)
    n = Z.v.shape[-1]
    ex = _exponents(Z, P, exps_per_entry=1 + depth)
    lam = float(_log1m(min(16 * n * P.eta_a, 0.5)))
    phi = ex.theta + (1 + P.adds(tile_len) + 2 * depth) * P.l_a  # (..., n)
    Lam = _log_mean_exp(ex.p, ex.theta) + (P.adds(tile_len) + 2 * depth) * P.l_a + lam  # (..., 1)
    w_rel = np.where(ex.masked, 0.0, ex.p * _expm1(phi + Lam + P.l_a))  # (..., n)
    w_abs = np.where(ex.masked, 0.0, ex.p * _exp(phi + Lam + P.l_a))  # (..., n)
    y = ex.p @ V.v  # (..., rows, m): (rows, n) @ (n, m), or (H, T, n) @ (H, n, m) batched
    b = w_rel @ np.abs(V.v) + w_abs @ V.b
    # underflow: each e~ (<= 8 η_a) times |V~|, 2 η_a per merge level, then / l~ (l >= 1)
    vsum = np.sum(V.mag, axis=-2)[..., None, :]  # (..., 1, m)
    b = b + (8 * P.eta_a * vsum + 2 * depth * P.eta_a) * _exp(Lam + P.l_a) + P.eta_a  # (..., rows, m)
    full = np.all(ex.masked, axis=-1, keepdims=True)  # a fully masked row is exactly zero in every order
    visible = (~ex.masked).astype(np.float64)  # (..., rows, n)
    with np.errstate(over="ignore", invalid="ignore"):
        b = _unless_over(b, visible @ V.mag, P.max_a)  # the unnormalised o
    return Bounded(y, np.where(full, 0.0, b))


def unnormalised_may_overflow(Z: Bounded, V: Bounded, P: Precision) -> NDArray[np.bool_]:
    """Whether the fused softmax's unnormalised o = Σ_i e^{z_i - m_tile} V_ij may exceed max_a (..., rows, m).

    With local maxima every e <= 1, so |o| <= Σ_i |V_ij| over the visible entries of the row, at any merge: the
    condition of the float16-accumulator hazard (docs/hazards.md), conservatively."""
    visible = (~np.isneginf(Z.v)).astype(np.float64)  # (..., rows, n)
    with np.errstate(over="ignore", invalid="ignore"):
        mag = visible @ load(V, P).mag
    return np.isfinite(mag) & (mag > P.max_a)


# ---------------------------------------------------------------------------------------------------------------
# The rest of a Llama block
# ---------------------------------------------------------------------------------------------------------------


def silu(X: Bounded, P: Precision) -> Bounded:
    """silu(x) = x / (1 + e^{-x}) in acc. 1.1-Lipschitz for the input error; exp, the add (of positives) and the
    division give expm1(ℓ_exp + 2ℓ); e^{-x} overflowing for x < -log(max) returns -0 instead of a value of
    magnitude <= log(max)/max (benign, bounded absolutely)."""
    X = load(X, P)
    v = X.v / (1 + _exp(-X.v))
    prop = SILU_LIPSCHITZ * X.b
    over = math.log(P.max_a) / P.max_a
    return Bounded(v, prop + (np.abs(v) + prop) * _expm1(P.l_exp + 2 * P.l_a) + 2 * P.eta_a + over)


def rope(X: Bounded, positions: ArrayLike, *, base: float, layout: str, P: Precision) -> Bounded:
    """`layers.rope` in acc: each pair (u, w) -> (u c - w s, w c + u s), c and s rounded once to acc.

    |fl(fl(u~ c~) - fl(w~ s~)) - (u c - w s)| <= (b_u |c| + b_w |s|) e^{3ℓ} + (|u c| + |w s|) expm1(3ℓ) + 2 η_a.
    """
    X = load(X, P)
    hd = X.v.shape[-1]
    cos, sin = rope_angles(np.asarray(positions), hd, base)  # (..., hd/2)
    if layout == "half":
        i1, i2 = np.arange(hd // 2), np.arange(hd // 2, hd)
    else:
        i1, i2 = np.arange(0, hd, 2), np.arange(1, hd, 2)
    u, w = X.v[..., i1], X.v[..., i2]  # (..., hd/2)
    bu, bw = X.b[..., i1], X.b[..., i2]
    k3 = _expm1(3 * P.l_a)
    e3 = 1 + k3
    b1 = (bu * np.abs(cos) + bw * np.abs(sin)) * e3 + (np.abs(u * cos) + np.abs(w * sin)) * k3 + 2 * P.eta_a
    b2 = (bw * np.abs(cos) + bu * np.abs(sin)) * e3 + (np.abs(w * cos) + np.abs(u * sin)) * k3 + 2 * P.eta_a
    v = np.empty_like(X.v)
    b = np.empty_like(X.v)
    v[..., i1], v[..., i2] = u * cos - w * sin, w * cos + u * sin
    b[..., i1], b[..., i2] = b1, b2
    return Bounded(v, b)


def attention_scores(Q: Bounded, K: Bounded, P: Precision) -> Bounded:
    """z = q k^T / sqrt(hd) in acc, for Q (..., T, hd) and K (..., S, hd) -> (..., T, S).

    The dot product is a matmul over hd; the scaling adds 3 roundings, which covers both ways the code does it:
    a division by fl(sqrt(hd)) (`layers.attention`: 2 roundings) and a product with fl(1/fl(sqrt(hd))) (the forward
    pass: the reciprocal's two float64 roundings are below one of acc's, plus its cast and the product)."""
    hd = Q.v.shape[-1]
    Kt = Bounded(np.swapaxes(K.v, -1, -2), np.swapaxes(K.b, -1, -2))
    dot = matmul(Q, Kt, P)  # (..., T, S)
    r = math.sqrt(hd)
    k3 = _expm1(3 * P.l_a)
    return Bounded(dot.v / r, dot.b / r * (1 + k3) + np.abs(dot.v / r) * k3 + P.eta_a)


# ---------------------------------------------------------------------------------------------------------------
# Whole models: two roundings of one forward pass (probabilistic)
# ---------------------------------------------------------------------------------------------------------------

#: Standard deviations of the probabilistic bounds below: each fails with probability <= 2 exp(-8) = 7e-4 per
#: product.
LAMBDA = 4


def forward_bound(*, n_max: int, products: int, dtype: DTypeLike | str, scale: float) -> float:
    """How far apart two roundings in storage `dtype` of the same forward pass may be, in the units of `scale` (the
    largest magnitude of the output compared: max|logit|, max|h|).

    The rounding errors of a length-n dot product behave like a sum of n independent zero-mean terms, so with
    probability >= 1 - 2 exp(-lambda^2 / 2) each is within lambda sqrt(n) u of the magnitude of its terms (Higham &
    Mary 2019, "A new approach to probabilistic rounding error analysis", Thm 2.4), and the K = `products` products
    in series (n <= `n_max`) add in the same way. Hence

        |a - b| <= 2 lambda sqrt(n_max K) u scale,    lambda = LAMBDA   (factor 2: both computations err)

    It assumes the network does not amplify a perturbation of its residual stream by more than the factor already
    counted per product (a post-LN encoder keeps the stream's scale fixed; a pre-norm decoder's stream grows
    slowly). A slip (an off-by-one position, a wrong mask, a misplaced bias or gain) moves outputs by order `scale`.
    """
    u = dtype_info(dtype).unit_roundoff
    return 2 * LAMBDA * math.sqrt(n_max * products) * u * scale


def pooled_bound(delta: float, norm: float) -> float:
    """Bound on every component of |e_a - e_b| for the unit vectors e = m / |m| of two means m of rows that differ
    by at most `delta` each (`forward_bound`), `norm` the smallest |m| among them.

    A mean errs by no more than its rows, |dm_j| <= delta, and to first order de_j = (dm_j - e_j (e . dm)) / |m|.
    The projection e . dm = Sum_j e_j dm_j is again a sum of independent zero-mean rounding terms weighted by a unit
    vector, so |e . dm| <= lambda delta with the same probability (a coherent part, a common relative error of the
    whole row, scales m and cancels in the normalisation). Hence |e_a - e_b|_j <= (1 + lambda) delta / |m|.
    """
    return (1 + LAMBDA) * delta / norm


def cosine_bound(width: int, tol: float) -> float:
    """Bound on 1 - cos(e_a, e_b) for unit vectors of `width` components that differ by at most `tol` each:
    1 - cos = |e_a - e_b|^2 / 2 <= width tol^2 / 2."""
    return width * tol**2 / 2
