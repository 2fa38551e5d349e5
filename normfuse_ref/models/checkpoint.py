"""What every family's loader of a Hugging Face checkpoint directory shares: its config.json and its safetensors.

An HF directory holds `config.json` (hyper-parameters; `model_type` names the architecture) and one or more
`*.safetensors` files (the tensors by name, each a header and raw bytes: nothing in it can run code). PyTorch
`.bin` / `.pt` checkpoints are pickles, which can run arbitrary code when loaded: normfuse refuses them with a
message and never opens them. Every error is one line naming the directory or the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from .. import fields

__all__ = ["checkpoint_dir", "read_config", "read_safetensors"]


def checkpoint_dir(path: Path) -> Path:
    """The checkpoint directory `path` names: a config.json file stands for the directory holding it (the path a
    user may give, as the emulator's `--model` takes it); any other path is itself."""
    return path.parent if path.name == "config.json" and path.is_file() else path


def read_config(path: Path) -> Mapping[str, Any]:
    """The JSON object of `path/config.json`; FileNotFoundError without the directory, ValueError without the file
    or for a file that is not a JSON object (`fields.json_object`)."""
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{path} has no config.json (is it a Hugging Face checkpoint directory?)")
    return fields.json_object(cfg_file)


def read_safetensors(path: Path) -> dict[str, NDArray[Any]]:
    """Every tensor of every `*.safetensors` file in `path`, by name; ValueError for no files, only pickles, or a
    damaged or truncated file."""
    from safetensors.numpy import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        if pickles:
            raise ValueError(
                f"{path} holds only PyTorch pickle checkpoints ({', '.join(pickles[:3])}); normfuse never loads "
                "pickles (loading one can run arbitrary code): convert them to safetensors first"
            )
        raise ValueError(f"{path} has no *.safetensors weight files")
    tensors: dict[str, NDArray[Any]] = {}
    for f in files:
        try:
            tensors |= load_file(str(f))
        except Exception as exc:  # safetensors raises its own SafetensorError on a bad header or short file
            raise ValueError(f"{f} is a damaged or truncated safetensors file ({exc})") from None
    return tensors
