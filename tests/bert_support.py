"""Shared by the BERT tests: the tolerances (`hidden_bound`, `embedding_bound` of `normfuse_ref.models.bert`, derived in `normfuse_ref.accuracy.bounds`), an HF checkpoint
directory written independently of the loader, and the real model (all-minilm-l6-v2), which the tests skip
without when it has not been fetched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from normfuse_ref.models.bert import BertConfig, BertModel, load_model
from normfuse_ref.models.bert.weights import Mode, param_shapes
from normfuse_ref.models.llama.fetch import find_model

Array = NDArray[Any]
MINILM = "all-minilm-l6-v2"
MODES: tuple[Mode, ...] = ("fused", "baseline")


def require_minilm() -> None:
    """Skip (with the command that fixes it) when all-MiniLM-L6-v2 is not in the user cache."""
    try:
        find_model(MINILM)
    except (FileNotFoundError, ValueError) as exc:  # not fetched, or a file changed since (its message says so)
        pytest.skip(f"{MINILM} is not usable here: {exc}")


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
