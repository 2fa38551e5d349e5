"""Read a Hugging Face BERT checkpoint directory: config.json, *.safetensors and tokenizer.json (never pickles).

What a directory must hold: `config.json` with `model_type: "bert"` (read by `config.config_from_hf`, which names
what it refuses), one or more `*.safetensors` files with every tensor of `weights.param_shapes`, and, for text
input, `tokenizer.json`. The sentence-transformers layout of all-MiniLM-L6-v2 is such a directory.

Tensor names are taken as the file has them; checkpoints of BERT with a task head (`BertForMaskedLM`, ...)
prefix the encoder's tensors with `bert.` and add the head's: the prefix is stripped and tensors the encoder
does not use (the pooler, task heads, the `position_ids` buffer) are ignored. Linear weights are transposed once
from the file's (out, in) to normfuse's row-vector (in, out). PyTorch `.bin` checkpoints are pickles, which can
run code when loaded: they are refused with a message, never opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ...precision import resolve_dtype
from .config import BertConfig, config_from_hf
from .tokenizer import WordPieceTokenizer
from .weights import param_shapes

__all__ = ["BertCheckpoint", "read_bert_dir", "read_config_json"]

Array = NDArray[Any]


@dataclass(frozen=True)
class BertCheckpoint:
    cfg: BertConfig
    params: dict[str, Array]
    tokenizer: WordPieceTokenizer | None
    path: Path


def read_config_json(path: Path) -> dict[str, Any]:
    """The dict of `path/config.json`; ValueError with one line when it is missing or not a JSON object."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{path} has no config.json (is it a Hugging Face checkpoint directory?)")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_file} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_file} is not a JSON object")
    return raw


def _safetensors_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
    if pickles:
        raise ValueError(
            f"{path} holds only PyTorch pickle checkpoints ({', '.join(pickles[:3])}); normfuse never loads "
            "pickles (loading one can run arbitrary code): convert them to safetensors first"
        )
    raise ValueError(f"{path} has no *.safetensors weight files")


def read_bert_dir(path: str | Path, *, dtype: DTypeLike = np.float32, name: str | None = None) -> BertCheckpoint:
    """Config, weights (in `dtype`, source names, row-vector orientation) and tokenizer of a BERT checkpoint dir."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path).expanduser()
    dt = resolve_dtype(dtype)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    try:
        cfg = config_from_hf(read_config_json(path), path, name)
    except ValueError as exc:
        raise type(exc)(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    tensors: dict[str, Array] = {}
    for f in _safetensors_files(path):
        try:
            tensors |= load_file(str(f))
        except (SafetensorError, OSError, ValueError) as exc:  # a bad header, a short file, an unknown dtype
            raise ValueError(f"{f} is a damaged or truncated safetensors file ({exc})") from None
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    params: dict[str, Array] = {}
    for key, want in param_shapes(cfg).items():
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
    tj = path / "tokenizer.json"
    tokenizer = WordPieceTokenizer.from_file(tj) if tj.is_file() else None
    return BertCheckpoint(cfg=cfg, params=params, tokenizer=tokenizer, path=path)
