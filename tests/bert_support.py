"""Shared by the BERT tests: the rounding tolerance of a whole encoder, the embedding bound that follows from it, and
the real model (all-minilm-l6-v2), which the tests skip without when it has not been fetched.

Tolerance (`hidden_tol`), for two computations of the same hidden states that round differently (fused vs
baseline order, normfuse vs HF transformers, a text padded in a batch vs alone). A worst-case bound is true but
too loose to catch a slip; instead, as for SmolLM2 (tests/test_model_smollm2.py), rounding errors of a length-n
dot product behave like a sum of n independent zero-mean terms, so with probability >= 1 - 2 exp(-lambda^2 / 2)
each is within lambda sqrt(n) u of the magnitude of its terms (Higham & Mary 2019, Thm 2.4), and the K products
in series add the same way. BERT has K = 6 L + 1 products in series (Q|K|V, q k^T, p V, the attention output, FFN
up and down per block, and the embedding sum's LayerNorm treated as one more), n_max = max(d, f). Hence

    |a - b| <= 2 lambda sqrt(n_max K) u max|h|,    lambda = 4   (factor 2: both computations err)

Post-LN keeps the scale of the residual stream fixed (every block ends in a LayerNorm), so relative errors pass
through a block unamplified to first order; the bound assumes no more. For all-MiniLM-L6-v2 in float32 it is
6.9e-4 max|h| with max|h| ~ 6; measured differences are ~3e-6, a hundred times inside, while a wrong mask, an
offset position or a misplaced bias gives differences of order max|h|.

Embeddings (`embedding_tol`): e = m / |m| with m the masked mean of the hidden rows, so a perturbation of every
hidden entry by at most delta moves m by at most sqrt(d) delta in the 2-norm, and the unit vector by at most
2 sqrt(d) delta / |m| (the normalisation at most doubles a relative perturbation); that is a bound on |e_a - e_b|
in every component, and 1 - cos(e_a, e_b) = |e_a - e_b|^2 / 2 follows.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from normfuse_ref.models.bert import BertConfig, BertModel, load_model
from normfuse_ref.models.bert.model import find_fetched
from normfuse_ref.precision import dtype_info

Array = NDArray[Any]
MINILM = "all-minilm-l6-v2"
LAMBDA = 4


def hidden_tol(cfg: BertConfig, hidden: Array, dtype: str = "float32") -> float:
    """The probabilistic bound of the module docstring on |a - b| for hidden states of scale max|hidden|."""
    K, n_max = 6 * cfg.n_layers + 1, max(cfg.dim, cfg.ffn_dim)
    u = dtype_info(dtype).unit_roundoff
    return 2 * LAMBDA * float(np.sqrt(n_max * K)) * u * float(np.abs(hidden).max())


def embedding_tol(cfg: BertConfig, hidden: Array, attention_mask: Array, dtype: str = "float32") -> float:
    """Bound on |e_a - e_b| (any component, and the 2-norm) from `hidden_tol` (module docstring): the smallest
    |mean of the real rows| over the batch is the worst case."""
    keep = np.asarray(attention_mask, dtype=np.float64)[..., None]  # (B, T, 1)
    m = (np.asarray(hidden, dtype=np.float64) * keep).sum(axis=-2) / keep.sum(axis=-2)  # (B, d)
    return 2 * np.sqrt(cfg.dim) * hidden_tol(cfg, hidden, dtype) / float(np.linalg.norm(m, axis=-1).min())


def require_minilm() -> None:
    """Skip (with the command that fixes it) when all-MiniLM-L6-v2 is not in the user cache."""
    try:
        find_fetched(MINILM)
    except (FileNotFoundError, ValueError) as exc:
        cache = os.environ.get("NORMFUSE_CACHE", "~/.cache/normfuse")
        pytest.skip(f"{MINILM} is not fetched ({exc}; cache {cache}); run: normfuse fetch {MINILM}")


@pytest.fixture(scope="module")
def minilm() -> BertModel:
    require_minilm()
    return load_model(MINILM)
