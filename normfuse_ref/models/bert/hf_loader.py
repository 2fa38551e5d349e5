"""Read a Hugging Face BERT checkpoint directory: config.json, *.safetensors and tokenizer.json (never pickles).

What a directory must hold (`normfuse_ref.models.checkpoint` reads the first two, as for every family):
`config.json` with `model_type: "bert"` (read by `config.config_from_hf`, which names what it refuses), one or more
`*.safetensors` files with every tensor of `weights.param_shapes`, and, for text input, `tokenizer.json`. The sentence-transformers layout of all-MiniLM-L6-v2 is such a directory.

Tensor names are taken as the file has them; checkpoints of BERT with a task head (`BertForMaskedLM`, ...)
prefix the encoder's tensors with `bert.` and add the head's: the prefix is stripped and tensors the encoder
does not use (the pooler, task heads, the `position_ids` buffer) are ignored. Linear weights are transposed once
from the file's (out, in) to normfuse's row-vector (in, out). Pickle checkpoints are refused, never opened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ...precision import resolve_dtype
from .config import BertConfig, config_from_hf
from .tokenizer import WordPieceTokenizer
from .weights import param_shapes

__all__ = ["BertCheckpoint", "read_bert_dir"]

Array = NDArray[Any]


@dataclass(frozen=True)
class BertCheckpoint:
    cfg: BertConfig
    params: dict[str, Array]
    tokenizer: WordPieceTokenizer | None
    path: Path


def read_bert_dir(
    path: str | Path,
    *,
    dtype: DTypeLike = np.float32,
    name: str | None = None,
    on_tensor: Callable[[int, int], None] | None = None,
) -> BertCheckpoint:
    """Config, weights (in `dtype`, source names, row-vector orientation) and tokenizer of a BERT checkpoint dir.
    `on_tensor(done, total)` is called after each tensor is converted (for a progress display)."""
    from ..checkpoint import checkpoint_dir, read_config, read_safetensors

    path = checkpoint_dir(Path(path).expanduser())
    dt = resolve_dtype(dtype)
    cfg = config_from_hf(read_config(path), path, name)
    tensors = {k.removeprefix("bert."): v for k, v in read_safetensors(path).items()}
    shapes = param_shapes(cfg)
    params: dict[str, Array] = {}
    for key, want in shapes.items():
        if key not in tensors:
            raise ValueError(f"{path}: the checkpoint has no tensor {key!r}")
        a = tensors.pop(key)
        linear = a.ndim == 2 and "embeddings" not in key
        if linear:
            a = a.T  # (out, in) -> (in, out)
        if a.shape != want:
            shown, expected = (a.shape[::-1], want[::-1]) if linear else (a.shape, want)
            raise ValueError(f"{path}: tensor {key!r} has shape {shown}, expected {expected}")
        params[key] = np.ascontiguousarray(a, dtype=dt)
        if on_tensor is not None:
            on_tensor(len(params), len(shapes))
    tj = path / "tokenizer.json"
    tokenizer = WordPieceTokenizer.from_file(tj) if tj.is_file() else None
    return BertCheckpoint(cfg=cfg, params=params, tokenizer=tokenizer, path=path)
