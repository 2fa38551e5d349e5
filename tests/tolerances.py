"""The tolerance helpers the tests share, each with its justification. Rounding-error bounds themselves are derived
in one place, `normfuse_ref.accuracy.bounds` (rigorous, per operation); the helpers here either apply those bounds
(`assert_within_bounds`) or state a model-level tolerance that no single bound covers (`decode_tol`, `smollm2_tol`).
"""

from __future__ import annotations

import numpy as np

from normfuse_ref.accuracy.bounds import forward_bound
from normfuse_ref.models.llama import LlamaConfig
from normfuse_ref.precision import Array, dtype_info

U32 = dtype_info("float32").unit_roundoff
U64 = dtype_info("float64").unit_roundoff


def assert_within(got: Array, want: Array, limit: Array, what: str) -> None:
    """Every element of |got - want| within `limit` (NaN where both are NaN counts as equal); the message names
    the worst element and how many exceed."""
    f, r = np.asarray(got).astype(np.float64), np.asarray(want).astype(np.float64)
    both_nan = np.isnan(f) & np.isnan(r)
    with np.errstate(invalid="ignore"):
        err = np.where(both_nan | (f == r), 0.0, np.abs(f - r))
    limit = np.broadcast_to(np.asarray(limit, dtype=np.float64), err.shape)
    bad = ~(err <= limit)
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, err / np.maximum(limit, 1e-300), 0))), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements exceed the rounding bound; worst at {i}: "
            f"got={f[i]!r} want={r[i]!r} |diff|={err[i]:.3e} bound={limit[i]:.3e}"
        )


def decode_tol(cfg: LlamaConfig, logits: Array, S: int) -> float:
    """Worst-case |decode - recompute| of a Llama forward in float32, in logit units.

    Incremental decode and full recompute run the same operations on the same numbers, but BLAS sums a
    matrix-vector product (one new token) in another order than a matrix-matrix product (the whole prompt), and
    softmax sums over a different blocking. Each length-n dot product then differs by at most gamma_n ~ n u of the
    magnitude of its terms (Higham, sec. 3.1; `normfuse_ref.accuracy.bounds.matmul`), with u = 2^-24. A block has 5
    products in series (QKV, scores, P V, output, gate/up, down: n <= max(d, f, S)), and differences from L blocks
    and the head add up through the residual stream, so |decode - recompute| <= 5 (L + 1) n_max u max|logit| in the
    worst case, errors of opposite sign never cancelling in it. A position off by one, a stale cache slot or a wrong
    mask gives O(max|logit|) differences instead.
    """
    n_max = max(cfg.dim, cfg.ffn_dim, S)
    return 5 * (cfg.n_layers + 1) * n_max * U32 * float(np.abs(logits).max())


def smollm2_tol(cfg: LlamaConfig, logits: Array) -> float:
    """A probabilistic float32 bound on the difference of two computations of a real model's logits:
    `normfuse_ref.accuracy.bounds.forward_bound` (derived there) with K = 5 (L + 1) products in series and
    n_max = max(d, f).

    The worst-case `decode_tol` with L = 30 blocks and n_max = 1536 (SmolLM2's FFN width) is 0.014 max|logit|: true,
    but loose enough to hide a real slip. The probabilistic bound is 2.3e-4 max|logit|, about 7e-3 for SmolLM2's
    logits of magnitude ~30; measured differences are 4e-5 to 7e-5 (fused vs baseline, decode vs recompute), a
    hundred times inside it, while an off-by-one position, a gain applied twice or a wrong RoPE pairing gives
    differences of order max|logit|.
    """
    scale = float(np.abs(logits).max())
    return forward_bound(n_max=max(cfg.dim, cfg.ffn_dim), products=5 * (cfg.n_layers + 1), dtype="float32", scale=scale)
