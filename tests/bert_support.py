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

Embeddings (`embedding_tol`): e = m / |m| with m the masked mean of the hidden rows. A mean of rows errs by no more
than its rows, |dm_j| <= delta (delta = hidden_tol), and to first order de_j = (dm_j - e_j (e . dm)) / |m|. The
projection e . dm = Sum_j e_j dm_j is again a sum of independent zero-mean rounding terms weighted by a unit
vector, so |e . dm| <= lambda delta with the same probability (a coherent part, a common relative error of the
whole row, scales m and cancels in the normalisation). Hence

    |e_a - e_b|_j <= (1 + lambda) delta / |m|      (the smallest |m| of the batch is the worst case)

and 1 - cos(e_a, e_b) = |e_a - e_b|^2 / 2 <= d ((1 + lambda) delta / |m|)^2 / 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from normfuse_ref.models.bert import BertConfig, BertModel, load_model
from normfuse_ref.models.bert.model import find_fetched
from normfuse_ref.models.bert.weights import Mode, param_shapes
from normfuse_ref.precision import dtype_info

Array = NDArray[Any]
MINILM = "all-minilm-l6-v2"
MODES: tuple[Mode, ...] = ("fused", "baseline")
LAMBDA = 4


def hidden_tol(cfg: BertConfig, hidden: Array, dtype: str = "float32") -> float:
    """The probabilistic bound of the module docstring on |a - b| for hidden states of scale max|hidden|."""
    K, n_max = 6 * cfg.n_layers + 1, max(cfg.dim, cfg.ffn_dim)
    u = dtype_info(dtype).unit_roundoff
    return 2 * LAMBDA * float(np.sqrt(n_max * K)) * u * float(np.abs(hidden).max())


def embedding_tol(cfg: BertConfig, hidden: Array, attention_mask: Array, dtype: str = "float32") -> float:
    """Bound on any component of |e_a - e_b| from `hidden_tol` (module docstring)."""
    h = np.asarray(hidden, dtype=np.float64)  # (B, T, d)
    keep = np.asarray(attention_mask, dtype=np.float64)[..., None]  # (B, T, 1)
    m = (h * keep).sum(axis=-2) / keep.sum(axis=-2)  # (B, d)
    delta = hidden_tol(cfg, h[keep[..., 0] > 0], dtype)  # from the real tokens' scale
    return (1 + LAMBDA) * delta / float(np.linalg.norm(m, axis=-1).min())


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


def hf_config(cfg: BertConfig, **changes: Any) -> dict[str, Any]:
    """The config.json of an HF BertModel with cfg's shape (changes override keys)."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_positions,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "pad_token_id": cfg.pad_id,
        **changes,
    }


def write_hf_dir(
    path: Path, cfg: BertConfig, params: dict[str, Array], *, prefix: str = "", **config_changes: Any
) -> Path:
    """An HF BERT checkpoint directory written independently of the loader: config.json, and model.safetensors
    with linear weights in the file's (out, in) orientation and every name prefixed by `prefix` ("bert." in the
    checkpoints of BERT with a task head)."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config(cfg, **config_changes)), encoding="utf-8")
    tensors = {}
    for name in param_shapes(cfg):
        a = params[name]
        tensors[prefix + name] = np.ascontiguousarray(a.T if a.ndim == 2 and "embeddings" not in name else a)
    save_file(tensors, str(path / "model.safetensors"))
    return path
