"""The paper's fused rules, each written once against the executor primitives: defer the normalisation scale until
after the following linear layer.

    RMSNorm -> linear    rms_norm(x, g) @ F                 == s * (x @ (g ⊙ F)),           s = 1/sqrt(mean x^2 + eps)
    LayerNorm -> linear  layer_norm(x, gamma, beta) @ F     == s * (x @ F') + beta @ F,     s = 1/sqrt(var + eps),
                                                               F' = (I - E/n) Gamma F  (centring folded into F)
    Softmax -> linear    softmax(z) @ V                     == (e^{z - m} @ V) / sum e^{z - m}

Why it pays (Salmani & Soloveychik, arXiv 2502.17728): the scale s needs a collective reduction over the whole
row; applied after the matmul, that collective runs on the SIMD units while the DIMC tiles do the matmul.

One implementation per order. Each rule has
- its fused order on an executor: `rms_norm_linear_folded`, `layer_norm_linear_folded` (weights folded once,
  offline, by `fold_rms_norm` / `fold_layer_norm`) and `softmax_linear`;
- its reference order on an executor: `rms_norm_linear_reference`, `layer_norm_linear_reference`,
  `softmax_linear_reference` - the textbook composition, issued as primitives so that a model's baseline mode and
  the emulator's baseline timeline run it;
- the array call `rms_norm_linear(x, g, F, eps)` / `layer_norm_linear(...)`, which folds and runs the fused order.
Every function takes `ex=` (a `normfuse_ref.ops.Executor`); without it, a plain `NumpyExecutor` for the first
argument's dtype and `acc` computes, so the array call, the model's forward pass (`normfuse_ref.models.llama.forward`), the
emulator (`normfuse_ref.hw`) and the fuzz suite run the same lines. `op` names the linear layer; the normalisation's
primitives are named after it (`{op}.rms`, `{op}.scale`, ...) so the emulator can price them (hw/costs.py).

Rounding: the one rule of `normfuse_ref.ops` (docs/numerics.md, "Rounding rule"). A folded weight is computed in
float64 and stored once in the weight's own dtype (what a DIMC tile would hold); the matmul, the statistics and the
scale run in the accumulation dtype, and the result is rounded once to storage. The reference order rounds where
the reference layers do: the normalised row (the matmul's operand) and the output.

The softmax max m is itself a collective. `softmax_linear` therefore never takes a global max before the matmul:
the row is split into tiles (the executor's slices), each tile keeps its own state (m, l, o) = (local max,
local sum e^{z-m}, local e^{z-m} @ V), and tiles are combined with `online_softmax_merge`. Merging is associative
and commutative in real arithmetic (proofs/online_softmax_merge.py), so any tiling and merge order gives the same
result up to rounding. A fully masked softmax row gives zeros and NaN/Inf propagate, as in the reference layers
(`layers.shifted_exp`, `layers.normalise_rows`).

Mitigations (docs/accuracy.md, "Mitigations"; proofs/layer_norm_fold_error.py, proofs/rms_norm_fold_error.py).
A stored fold is rounded, W = F' + Delta, and the fused order's error is then s x Delta: for LayerNorm that is
s (x - mu) Delta + mu s r with r = 1 W the stored fold's column sums, a term that grows with |mu|/sigma
(docs/hazards.md, hazard 1). Options of the rules remove it:
- `fold_dtype=` (both rules' array calls, and `fold_rms_norm` / `fold_layer_norm(dtype=...)` offline): store the
  fold in a wider format than the weights; the term shrinks by the ratio of unit roundoffs;
- `centring="compensate"` (LayerNorm): s (x W - mu r) + b with r = `fold_column_sums(W)` stored offline beside the
  bias; mu is computed for the variance anyway, so no collective enters the matmul's path;
- `centring="subtract"` (LayerNorm): s ((x - mu) W) + b, the mean subtracted on the SIMD units first: exact, but the
  matmul now waits for the mean collective.
"fold" (the default) is the paper's rule.

Validation (shapes, dtypes, eps) happens in the array calls (`ex=None`); a caller passing an executor has
validated its inputs (a forward pass), and its values may be emulator handles rather than arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .layers import check_eps, check_matrix, check_rows, check_vector, normalise_rows, shifted_exp
from .precision import Array, as_float_array, matmul_acc, resolve_dtype, sum_acc

if TYPE_CHECKING:
    from .ops import Executor

__all__ = [
    "CENTRINGS",
    "Centring",
    "SoftmaxState",
    "fold_column_sums",
    "fold_layer_norm",
    "fold_rms_norm",
    "layer_norm_alone",
    "layer_norm_linear",
    "layer_norm_linear_folded",
    "layer_norm_linear_reference",
    "online_softmax_merge",
    "rms_norm_linear",
    "rms_norm_linear_folded",
    "rms_norm_linear_reference",
    "softmax_finalize",
    "softmax_linear",
    "softmax_linear_reference",
    "softmax_tile_state",
]


def plain_executor(storage: DTypeLike, acc: DTypeLike | None = None, tile_size: int | None = None) -> Executor:
    """The executor of the array calls: NumPy, storage = the inputs' dtype, accumulation `acc` (default policy)."""
    from .ops import NumpyExecutor  # ops builds its softmax primitives on this module: imported when first needed

    return NumpyExecutor(storage=storage, acc=acc, tile_size=tile_size)


def _executor(ex: Executor | None, acc: DTypeLike | None, x: Any) -> Executor:
    """`ex`, or the plain executor for x's dtype and `acc` when there is none."""
    if ex is None:
        return plain_executor(x.dtype, acc)
    if acc is not None:
        raise ValueError("pass acc= or ex=, not both: an executor has its own accumulation dtype")
    return ex


# ---------------------------------------------------------------------------------------------------------------
# RMSNorm -> linear
# ---------------------------------------------------------------------------------------------------------------


def fold_rms_norm(g: ArrayLike, F: ArrayLike, *, dtype: DTypeLike | None = None) -> Array:
    """g ⊙ F = diag(g) F: row i of F scaled by g_i. Computed in float64, stored in `dtype` (default F's dtype)."""
    F = as_float_array(F, "F")
    if F.ndim != 2:
        raise ValueError(f"F must be a matrix (n, m); got shape {F.shape}")
    g = check_vector(g, "g", F.shape[0], "F", F.shape)
    out = resolve_dtype(dtype) if dtype is not None else F.dtype
    return (g.astype(np.float64)[:, None] * F.astype(np.float64)).astype(out)  # (n, m)


# reference: linear(rms_norm(x, g, eps), F)
def rms_norm_linear_folded(
    x: Any,
    F_g: Any,
    eps: float = 1e-6,
    *,
    acc: DTypeLike | None = None,
    ex: Executor | None = None,
    op: str = "rms_norm_linear",
) -> Any:
    """The fused order: s * (x @ F_g), F_g = fold_rms_norm(g, F), s = 1/sqrt(mean(x^2) + eps) applied after."""
    eps = check_eps(eps)  # a scalar: checked whichever executor runs the rule
    if ex is None:
        x = check_rows(x, "x")
        F_g = check_matrix(F_g, "F_g", x.shape[-1], "x", x.shape)
    ex = _executor(ex, acc, x)
    y = ex.matmul(x, F_g, op=op, keep_acc=True)  # (..., m)   DIMC starts at once on raw x; y waits for s in acc
    s = ex.reduce(x, "rms_scale", op=f"{op}.rms", eps=eps)  # (..., 1)   the collective, beside the matmul
    return ex.elementwise(lambda y, s: y * s, y, s, op=f"{op}.scale")  # (..., m)


def rms_norm_linear_reference(
    x: Any,
    g: Any,
    F: Any,
    eps: float = 1e-6,
    *,
    acc: DTypeLike | None = None,
    ex: Executor | None = None,
    op: str = "rms_norm_linear",
) -> Any:
    """The reference order: linear(rms_norm(x, g, eps), F); the matmul waits for the collective s."""
    eps = check_eps(eps)  # a scalar: checked whichever executor runs the rule
    if ex is None:
        x = check_rows(x, "x")
        g = check_vector(g, "g", x.shape[-1], "x", x.shape)
        F = check_matrix(F, "F", x.shape[-1], "x", x.shape)
    ex = _executor(ex, acc, x)
    s = ex.reduce(x, "rms_scale", op=f"{op}.rms", eps=eps)  # (..., 1)   the collective, then the matmul waits
    h = ex.elementwise(lambda x, s, g: x * s * g, x, s, g, op=f"{op}.norm")  # (..., n)   stored: the DIMC operand
    return ex.matmul(h, F, op=op)  # (..., m)


# reference: linear(rms_norm(x, g, eps), F)
def rms_norm_linear(
    x: ArrayLike,
    g: ArrayLike,
    F: ArrayLike,
    eps: float = 1e-6,
    *,
    acc: DTypeLike | None = None,
    ex: Executor | None = None,
    op: str = "rms_norm_linear",
    fold_dtype: DTypeLike | None = None,
) -> Any:
    """RMSNorm followed by a linear layer, with g folded into F (here, on every call) and 1/rms after the matmul.

    `fold_dtype` stores g ⊙ F in that format (default F's; a wider one is the "wide fold" mitigation). A model folds
    once, offline (`fold_rms_norm`), and calls `rms_norm_linear_folded`."""
    x = check_rows(x, "x")
    F = check_matrix(F, "F", x.shape[-1], "x", x.shape)
    eps = check_eps(eps)
    return rms_norm_linear_folded(x, fold_rms_norm(g, F, dtype=fold_dtype), eps, ex=_executor(ex, acc, x), op=op)


# ---------------------------------------------------------------------------------------------------------------
# LayerNorm -> linear
# ---------------------------------------------------------------------------------------------------------------


def fold_layer_norm(
    gamma: ArrayLike, beta: ArrayLike, F: ArrayLike, *, dtype: DTypeLike | None = None
) -> tuple[Array, Array]:
    """The paper's fold: F' = (I - E/n) Gamma F and the bias b = beta @ F.

    (I - E/n) subtracts from each row of Gamma F the column mean, so F' has zero column sums (exactly in real
    arithmetic; to one rounding of F' in its stored dtype here). Computed in float64, stored in `dtype`
    (default F's dtype).
    """
    F = as_float_array(F, "F")
    if F.ndim != 2:
        raise ValueError(f"F must be a matrix (n, m); got shape {F.shape}")
    n = F.shape[0]
    gamma = check_vector(gamma, "gamma", n, "F", F.shape)
    beta = check_vector(beta, "beta", n, "F", F.shape)
    out = resolve_dtype(dtype) if dtype is not None else F.dtype
    GF = gamma.astype(np.float64)[:, None] * F.astype(np.float64)  # (n, m)   Gamma F
    F_prime = GF - GF.mean(axis=0, keepdims=True)  # (n, m)   (I - E/n) Gamma F
    b = beta.astype(np.float64) @ F.astype(np.float64)  # (m,)
    return F_prime.astype(out), b.astype(out)


#: How the fused LayerNorm -> linear rule removes the row mean (module docstring, "Mitigations").
Centring = Literal["fold", "compensate", "subtract"]
CENTRINGS: tuple[Centring, ...] = ("fold", "compensate", "subtract")


def fold_column_sums(F_prime: ArrayLike) -> Array:
    """r = 1 F~': the column sums of a *stored* fold, in float64 (exact to float64's rounding), for
    `centring="compensate"`. Zero for the exact fold; for a rounded one, the sums of its rounding errors."""
    F_prime = as_float_array(F_prime, "F_prime")
    if F_prime.ndim != 2:
        raise ValueError(f"F_prime must be a matrix (n, m); got shape {F_prime.shape}")
    return np.sum(F_prime.astype(np.float64), axis=0)  # (m,)


def _layer_norm_stats(ex: Executor, x: Any, eps: float, op: str) -> tuple[Any, Any, Any]:
    """The collective of both orders: mu, d = x - mu (kept in acc) and s = 1/sqrt(mean(d^2) + eps) (two-pass)."""
    mu = ex.reduce(x, "mean", op=f"{op}.mean")  # (..., 1)
    d = ex.elementwise(lambda x, mu: x - mu, x, mu, op=f"{op}.centre", keep_acc=True)  # (..., n)   in registers
    s = ex.reduce(d, "rms_scale", op=f"{op}.rms", eps=eps)  # (..., 1)
    return mu, d, s


def _layer_norm_out(ex: Executor, d: Any, s: Any, gamma: Any, beta: Any, op: str) -> Any:
    """LN(x) = d * s * gamma + beta, stored."""
    return ex.elementwise(lambda d, s, gamma, beta: d * s * gamma + beta, d, s, gamma, beta, op=f"{op}.norm_shift")


# reference: layer_norm(x, gamma, beta, eps)
def layer_norm_alone(
    x: Any, gamma: Any, beta: Any, eps: float = 1e-5, *, ex: Executor | None = None, op: str = "layer_norm"
) -> Any:
    """A LayerNorm that feeds no linear layer (a post-LN encoder's last), with the primitives of both orders."""
    eps = check_eps(eps)  # a scalar: checked whichever executor runs the rule
    if ex is None:
        x = check_rows(x, "x")
        gamma = check_vector(gamma, "gamma", x.shape[-1], "x", x.shape)
        beta = check_vector(beta, "beta", x.shape[-1], "x", x.shape)
    ex = _executor(ex, None, x)
    _, d, s = _layer_norm_stats(ex, x, eps, op)  # (..., n), (..., 1)
    return _layer_norm_out(ex, d, s, gamma, beta, op)  # (..., n)


def _check_centring(centring: str, r: Any, ex: Executor | None, F_prime: Any) -> Any:
    """r for `centring` (computed from F' for an array call that gives none); ValueError for a bad combination."""
    if centring not in CENTRINGS:
        raise ValueError(f"centring must be one of {', '.join(CENTRINGS)}; got {centring!r}")
    if centring != "compensate":
        if r is not None:
            raise ValueError(f"r (the fold's column sums) is only used by centring='compensate', not {centring!r}")
        return None
    if r is None:
        if ex is not None:
            raise ValueError("centring='compensate' needs r = fold_column_sums(F_prime), computed offline")
        return fold_column_sums(F_prime)
    return r


# reference: linear(layer_norm(x, gamma, beta, eps), F)
def layer_norm_linear_folded(
    x: Any,
    F_prime: Any,
    b: Any,
    eps: float = 1e-5,
    *,
    acc: DTypeLike | None = None,
    ex: Executor | None = None,
    op: str = "layer_norm_linear",
    norm: tuple[Any, Any] | None = None,
    centring: Centring = "fold",
    r: Any = None,
) -> Any:
    """The fused order: s * (x @ F') + b, (F', b) = fold_layer_norm(gamma, beta, F), s = 1/sqrt(var + eps) after.

    The matmul sees raw x: the centring lives in F'. Only the variance is still a collective (it needs mu too,
    computed beside it on the SIMD side; two-pass, as in the reference). With `norm=(gamma, beta)` the result is
    the pair (y, LN(x)), LN(x) = (x - mu) s gamma + beta computed from the same mu and s (a post-LN block feeds it
    into the residual stream).

    `centring` (module docstring, "Mitigations"): "fold" as above; "compensate" returns s * (x @ F' - mu r) + b
    with r = `fold_column_sums(F')` (pass it when giving `ex`; the array call computes it); "subtract" returns
    s * ((x - mu) @ F') + b, the centred row stored as the DIMC operand, the matmul after the mean collective.
    """
    r = _check_centring(centring, r, ex, F_prime)
    eps = check_eps(eps)  # a scalar: checked whichever executor runs the rule
    if ex is None:
        x = check_rows(x, "x")
        F_prime = check_matrix(F_prime, "F_prime", x.shape[-1], "x", x.shape)
        b = as_float_array(b, "b")
        if b.shape != (F_prime.shape[1],):
            raise ValueError(
                f"b has shape {b.shape} but F_prime has shape {F_prime.shape}; expected b of shape ({F_prime.shape[1]},)"
            )
        if r is not None and np.shape(r) != (F_prime.shape[1],):
            raise ValueError(f"r has shape {np.shape(r)} but F_prime has shape {F_prime.shape}")
        if norm is not None:
            gamma, beta = norm
            norm = (
                check_vector(gamma, "gamma", x.shape[-1], "x", x.shape),
                check_vector(beta, "beta", x.shape[-1], "x", x.shape),
            )
    ex = _executor(ex, acc, x)
    if centring == "subtract":
        mu, d, s = _layer_norm_stats(ex, x, eps, op)  # (..., 1), (..., n), (..., 1)   the mean first
        xc = ex.elementwise(lambda x, mu: x - mu, x, mu, op=f"{op}.subtract_mean")  # (..., n)   stored: DIMC operand
        y = ex.matmul(xc, F_prime, op=op, keep_acc=True)  # (..., m)   waits for mu; s is computed beside it
        out = ex.elementwise(lambda y, s, b: y * s + b, y, s, b, op=f"{op}.scale_shift")  # (..., m)
    else:
        y = ex.matmul(x, F_prime, op=op, keep_acc=True)  # (..., m)   DIMC: runs while the SIMD units compute s
        mu, d, s = _layer_norm_stats(ex, x, eps, op)  # (..., 1), (..., n), (..., 1)   the collective
        if centring == "compensate":  # s (x F' - mu r) + b: mu from the statistics, r a stored constant
            out = ex.elementwise(
                lambda y, mu, r, s, b: (y - mu * r) * s + b, y, mu, r, s, b, op=f"{op}.compensate_scale_shift"
            )  # (..., m)
        else:
            out = ex.elementwise(lambda y, s, b: y * s + b, y, s, b, op=f"{op}.scale_shift")  # (..., m)
    if norm is None:
        return out
    return out, _layer_norm_out(ex, d, s, norm[0], norm[1], op)  # (..., m), (..., n)


def layer_norm_linear_reference(
    x: Any,
    gamma: Any,
    beta: Any,
    F: Any,
    eps: float = 1e-5,
    *,
    acc: DTypeLike | None = None,
    ex: Executor | None = None,
    op: str = "layer_norm_linear",
    return_norm: bool = False,
    b: Any = None,
) -> Any:
    """The reference order: linear(layer_norm(x, gamma, beta, eps), F) (+ b, the linear layer's own bias, added to
    the product in acc and rounded once with it); with `return_norm` the pair (y, LN(x))."""
    eps = check_eps(eps)  # a scalar: checked whichever executor runs the rule
    if ex is None:
        x = check_rows(x, "x")
        n = x.shape[-1]
        gamma = check_vector(gamma, "gamma", n, "x", x.shape)
        beta = check_vector(beta, "beta", n, "x", x.shape)
        F = check_matrix(F, "F", n, "x", x.shape)
        if b is not None:
            b = check_vector(b, "b", F.shape[1], "F", F.shape)
    ex = _executor(ex, acc, x)
    _, d, s = _layer_norm_stats(ex, x, eps, op)  # (..., n), (..., 1)   the collective, then the matmul waits
    h = _layer_norm_out(ex, d, s, gamma, beta, op)  # (..., n)   stored: the DIMC operand
    y = ex.matmul(h, F, op=op, keep_acc=b is not None)  # (..., m)
    if b is not None:
        y = ex.elementwise(lambda y, b: y + b, y, b, op=f"{op}.bias")  # (..., m)
    return (y, h) if return_norm else y


# reference: linear(layer_norm(x, gamma, beta, eps), F)
def layer_norm_linear(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike,
    F: ArrayLike,
    eps: float = 1e-5,
    *,
    acc: DTypeLike | None = None,
    ex: Executor | None = None,
    op: str = "layer_norm_linear",
    return_norm: bool = False,
    centring: Centring = "fold",
    fold_dtype: DTypeLike | None = None,
) -> Any:
    """LayerNorm followed by a linear layer, with centring and gain folded into F' (here, on every call) and
    1/sigma after the matmul; with `return_norm` the pair (y, LN(x)). `centring` and `fold_dtype` are the
    mitigations of the module docstring (F' stored in `fold_dtype`, default F's; r computed from the stored F').
    A model folds once, offline (`fold_layer_norm`, `fold_column_sums`), and calls `layer_norm_linear_folded`."""
    x = check_rows(x, "x")
    F = check_matrix(F, "F", x.shape[-1], "x", x.shape)
    eps = check_eps(eps)
    F_prime, b = fold_layer_norm(gamma, beta, F, dtype=fold_dtype)  # checks gamma and beta against F, hence x
    r = fold_column_sums(F_prime) if centring == "compensate" else None
    norm = (np.asarray(gamma), np.asarray(beta)) if return_norm else None
    return layer_norm_linear_folded(
        x, F_prime, b, eps, ex=_executor(ex, acc, x), op=op, norm=norm, centring=centring, r=r
    )


# ---------------------------------------------------------------------------------------------------------------
# Softmax -> linear, and the online-softmax merge
# ---------------------------------------------------------------------------------------------------------------


class SoftmaxState(NamedTuple):
    """What one tile of a softmax row knows: m (..., 1) its max, l (..., 1) sum e^{z - m}, o (..., m) e^{z - m} @ V.

    A tile with no visible entries has m = -inf, l = 0, o = 0; the merge treats it as the identity.
    """

    m: Array
    l: Array
    o: Array


def softmax_tile_state(z_tile: ArrayLike, V_tile: ArrayLike) -> SoftmaxState:
    """The state of one tile of scores z (..., n_t) against values V (n_t, m) or (..., n_t, m), computed in z's
    (accumulation) dtype, no collective needed; TypeError or ValueError (one line) for operands that are not a
    tile's scores and values."""
    z, V = _check_scores(z_tile, V_tile, None)
    return tile_state(z, V)


def tile_state(z: Array, V: Array) -> SoftmaxState:
    """`softmax_tile_state` without the checks: the executors' inner loop (operands they made themselves)."""
    m = np.max(z, axis=-1, keepdims=True)  # (..., 1)   local max only
    p = shifted_exp(z, m)  # (..., n_t)
    return SoftmaxState(m=m, l=sum_acc(p), o=matmul_acc(p, V, p.dtype))


def online_softmax_merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """Combine two tiles' states: rescale each to the common max m = max(m_a, m_b), then add.

        l = l_a e^{m_a - m} + l_b e^{m_b - m},   o = o_a e^{m_a - m} + o_b e^{m_b - m}

    A side whose max is -inf (all masked) gets weight e^{-inf} = 0; when both are, m = -inf and `shifted_exp`
    shifts by 0 instead of computing e^{-inf - (-inf)} = NaN. NaN maxima propagate. a and b must be states of the
    same rows (TypeError or ValueError, one line, otherwise).
    """
    a, b = _check_state(a, "a"), _check_state(b, "b")
    if a.m.shape != b.m.shape or a.o.shape != b.o.shape:
        raise ValueError(
            f"a and b must be states of the same rows; got m of shapes {a.m.shape} and {b.m.shape}, "
            f"o of shapes {a.o.shape} and {b.o.shape}"
        )
    return merge_states(a, b)


def merge_states(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """`online_softmax_merge` without the checks: the executors' inner loop (states they made themselves)."""
    m = np.maximum(a.m, b.m)  # (..., 1)
    alpha = shifted_exp(a.m, m)  # (..., 1)   e^{m_a - m}: 0 for a masked side, also when both are (m = -inf)
    beta = shifted_exp(b.m, m)  # (..., 1)   e^{m_b - m}
    return SoftmaxState(m=m, l=a.l * alpha + b.l * beta, o=a.o * alpha + b.o * beta)


def softmax_finalize(state: SoftmaxState) -> Array:
    """The deferred division o / l; a row with l = 0 (fully masked) is defined to be zeros."""
    s = _check_state(state, "state")
    return normalise_rows(s.o, s.l)


def _check_state(s: Any, name: str) -> SoftmaxState:
    """`s` as a SoftmaxState of floating arrays: m and l (..., 1), o (..., k) with m's leading axes."""
    if not isinstance(s, SoftmaxState):
        raise TypeError(f"{name} must be a SoftmaxState (m, l, o); got {type(s).__name__}")
    m, l, o = (as_float_array(v, f"{name}.{k}") for k, v in zip("mlo", s, strict=True))
    if m.ndim == 0 or m.shape[-1] != 1 or l.shape != m.shape or o.ndim != m.ndim or o.shape[:-1] != m.shape[:-1]:
        raise ValueError(
            f"{name} must hold m and l of shape (..., 1) and o of shape (..., k) with the same leading axes; "
            f"got m {m.shape}, l {l.shape}, o {o.shape}"
        )
    return SoftmaxState(m, l, o)


# reference: softmax(z) @ V
def softmax_linear(
    z: ArrayLike,
    V: ArrayLike,
    *,
    tile_size: int | None = None,
    acc: DTypeLike | None = None,
    ex: Executor | None = None,
    op: str = "softmax_linear",
) -> Any:
    """softmax(z) @ V with the denominator applied after the matmul and no global max before it.

    z (..., n) scores; V (n, m), or (..., n, m) with the same leading axes as z (as in per-head attention, z of
    shape (H, T, n) and V of shape (H, n, m)). The row is split into the executor's slices (for the array call,
    tiles of `tile_size` entries, default one tile), each slice's state is computed locally, and the states are
    merged by the online-softmax collective. `op` names the matmul (e.g. "attn_pv"); the softmax's own primitives
    are "softmax.merge" and "softmax.scale".
    """
    if ex is None:
        z, V = _check_scores(z, V, tile_size)
        ex = plain_executor(z.dtype, acc, tile_size)
    elif acc is not None or tile_size is not None:
        raise ValueError("pass acc= and tile_size= or ex=, not both: an executor has its own dtype and slices")
    t = ex.softmax_tiles(z, V, op=op)  # per slice: local max, e^{z-m}, sum, e @ V (no communication)
    t = ex.softmax_merge(t, op="softmax.merge")  # the collective: online-softmax merge of the slice states
    o = ex.elementwise(normalise_rows, t.o, t.l, op="softmax.scale")  # (..., 1, m)   the deferred division
    return ex.layout(lambda o: o[..., 0, :], o, op="softmax.rows")  # (..., m)


def softmax_linear_reference(
    z: ArrayLike,
    V: ArrayLike,
    *,
    acc: DTypeLike | None = None,
    ex: Executor | None = None,
    op: str = "softmax_linear",
) -> Any:
    """The reference order: linear(softmax(z), V); two collectives (max, sum) before the matmul can start."""
    if ex is None:
        z, V = _check_scores(z, V, None)
        ex = plain_executor(z.dtype, acc)
    elif acc is not None:
        raise ValueError("pass acc= or ex=, not both: an executor has its own accumulation dtype")
    m = ex.reduce(z, "max", op="softmax.max")  # (..., 1)   collective 1
    e = ex.elementwise(shifted_exp, z, m, op="softmax.exp", keep_acc=True)  # (..., n)
    l = ex.reduce(e, "sum", op="softmax.sum")  # (..., 1)   collective 2
    p = ex.elementwise(normalise_rows, e, l, op="softmax.div")  # (..., n)   stored: the DIMC operand
    return ex.matmul(p, V, op=op)  # (..., m)


def _check_scores(z: ArrayLike, V: ArrayLike, tile_size: int | None) -> tuple[Array, Array]:
    z = check_rows(z, "z")
    V = as_float_array(V, "V")
    n = z.shape[-1]
    if V.ndim < 2 or V.shape[-2] != n or (V.ndim > 2 and V.shape[:-2] != z.shape[:-2]):
        raise ValueError(
            f"V has shape {V.shape} but z has shape {z.shape}; expected V of shape ({n}, m) or {(*z.shape[:-2], n)} + (m,)"
        )
    if tile_size is not None and tile_size < 1:
        raise ValueError(f"tile_size must be >= 1; got {tile_size}")
    return z, V
