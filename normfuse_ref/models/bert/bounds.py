"""How far apart two roundings of the same BERT computation may be: the bound `normfuse embed --mode both` judges
the two orders by, and the tests use for every comparison of hidden states or embeddings (fused vs baseline,
normfuse vs HF transformers, a text padded in a batch vs alone).

Hidden states (`hidden_bound`). A worst-case bound is true but too loose to catch a slip. Instead, as for SmolLM2
(tests/test_model_smollm2.py): the rounding errors of a length-n dot product behave like a sum of n independent
zero-mean terms, so with probability >= 1 - 2 exp(-lambda^2 / 2) each is within lambda sqrt(n) u of the magnitude of
its terms (Higham & Mary 2019, "A new approach to probabilistic rounding error analysis", Thm 2.4), and the K
products in series add the same way. BERT has K = 6 L + 1 products in series (Q|K|V, q k^T, p V, the attention
output, FFN up and down per block, and the embedding sum's LayerNorm counted as one more), n_max = max(d, f):

    |a - b| <= 2 lambda sqrt(n_max K) u max|h|,    lambda = 4   (factor 2: both computations err)

Post-LN keeps the scale of the residual stream fixed (every block ends in a LayerNorm), so a relative error
passes through a block unamplified to first order; the bound assumes no more. For all-MiniLM-L6-v2 in float32 it
is 6.9e-4 max|h| (max|h| ~ 6); measured differences are ~3e-6, while a wrong mask, an offset position or a
misplaced bias moves hidden states by order max|h|.

Embeddings (`embedding_bound`). e = m / |m| with m the masked mean of the hidden rows. A mean errs by no more than
its rows, |dm_j| <= delta (delta = hidden_bound), and to first order de_j = (dm_j - e_j (e . dm)) / |m|. The
projection e . dm = Sum_j e_j dm_j is again a sum of independent zero-mean rounding terms weighted by a unit
vector, so |e . dm| <= lambda delta with the same probability (a coherent part, a common relative error of the
whole row, scales m and cancels in the normalisation). Hence

    |e_a - e_b|_j <= (1 + lambda) delta / |m|      (the smallest |m| of the batch is the worst case)

and 1 - cos(e_a, e_b) = |e_a - e_b|^2 / 2 <= d ((1 + lambda) delta / |m|)^2 / 2 (`cosine_bound`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ...precision import dtype_info
from .config import BertConfig

__all__ = ["LAMBDA", "cosine_bound", "embedding_bound", "hidden_bound"]

#: Standard deviations of the probabilistic bound: it fails with probability <= 2 exp(-8) = 7e-4 per product.
LAMBDA = 4


def hidden_bound(cfg: BertConfig, hidden: ArrayLike, dtype: DTypeLike = "float32") -> float:
    """Bound on |a - b| for two roundings in storage `dtype` of hidden states `hidden` (the real tokens' rows:
    their largest magnitude sets the scale)."""
    K, n_max = 6 * cfg.n_layers + 1, max(cfg.dim, cfg.ffn_dim)
    u = dtype_info(dtype).unit_roundoff
    return 2 * LAMBDA * float(np.sqrt(n_max * K)) * u * float(np.abs(np.asarray(hidden, dtype=np.float64)).max())


def embedding_bound(
    cfg: BertConfig, hidden: ArrayLike, attention_mask: ArrayLike, dtype: DTypeLike = "float32"
) -> float:
    """Bound on every component of |e_a - e_b| for the embeddings of hidden states (B, T, d) with mask (B, T)."""
    h = np.asarray(hidden, dtype=np.float64)  # (B, T, d)
    keep = np.asarray(attention_mask, dtype=np.float64)[..., None]  # (B, T, 1)
    m = (h * keep).sum(axis=-2) / keep.sum(axis=-2)  # (B, d)
    delta = hidden_bound(cfg, h[keep[..., 0] > 0], dtype)
    return (1 + LAMBDA) * delta / float(np.linalg.norm(m, axis=-1).min())


def cosine_bound(cfg: BertConfig, embedding_tol: float) -> float:
    """Bound on 1 - cos(e_a, e_b) when every component differs by at most `embedding_tol`."""
    return cfg.dim * embedding_tol**2 / 2
