"""Model families, each written once against the executor (`normfuse_ref.ops`) and sharing the rule sites:

| family | package | normalisation | real model |
|---|---|---|---|
| Llama | `normfuse_ref.models.llama` | RMSNorm, pre-norm decoder | smollm2-135m |
| BERT | `normfuse_ref.models.bert` | LayerNorm, post-norm encoder | all-minilm-l6-v2 |
| GPT | `normfuse_ref.models.gpt` | LayerNorm, pre-norm decoder (GPT-2, OPT) | none (random weights; shape-only presets) |

`load_model(name_or_path)` (Llama and BERT, the families with real weights) finds the family of a model by its name or by what its path holds, and calls that
family's loader:
- a name one family knows (its fetched models, its random-weight presets; a shape-only preset is refused there);
- a directory: by the `model_type` of its config.json ("llama" -> Llama, "bert" -> BERT); any other type is one
  `UnsupportedArchitecture` error naming it and the supported ones;
- a file named config.json: the directory holding it, as above (the emulator's `--model` takes the same path);
- any other existing file: a GGUF file, read by the Llama family (the only family that reads GGUF); a file that
  does not start as one is refused here, before any family is named for it.

The emulator needs only a model's shape: `shapes.shape_config` reads any family's preset or config.json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from numpy.typing import DTypeLike

if TYPE_CHECKING:
    from .bert.model import BertModel
    from .llama.model import Model as LlamaModel

__all__ = ["MODEL_TYPES", "UnsupportedArchitecture", "family_of", "load_model", "model_names"]

#: config.json model_type -> family.
MODEL_TYPES = {"llama": "llama", "bert": "bert"}


class UnsupportedArchitecture(ValueError):
    """A model whose architecture no family runs (another model_type, or a variant a family lacks)."""


def model_names() -> dict[str, str]:
    """Every model name `load_model` accepts (fetched models and random-weight presets) -> its family."""
    from .bert.model import RANDOM_PRESETS as BERT_RANDOM
    from .llama.fetch import SOURCES
    from .llama.model import RANDOM_PRESETS as LLAMA_RANDOM

    return {
        **{name: src.family for name, src in SOURCES.items()},
        **{name: "llama" for name in LLAMA_RANDOM},
        **{name: "bert" for name in BERT_RANDOM},
    }


def family_of(name_or_path: str | Path) -> str:
    """ "llama" or "bert": the family a model name or path belongs to (see the module docstring)."""
    from .bert.config import PRESETS as BERT_PRESETS
    from .checkpoint import checkpoint_dir, read_config
    from .gpt.config import PRESETS as GPT_PRESETS
    from .llama.config import PRESETS as LLAMA_PRESETS

    name = str(name_or_path)
    known = model_names()
    if name in known:
        return known[name]
    if name in LLAMA_PRESETS:
        return "llama"
    if name in BERT_PRESETS:
        return "bert"
    if name in GPT_PRESETS:
        raise UnsupportedArchitecture(
            f"{name} is a preset of the GPT family (GPT-2, OPT), which has no loaded model: run it with "
            "normfuse_ref.models.gpt (random weights) or time it with normfuse timeline --model"
        )
    path = checkpoint_dir(Path(name).expanduser())
    if path.is_dir():
        kind = read_config(path).get("model_type")
        if kind not in MODEL_TYPES:
            raise UnsupportedArchitecture(
                f"{path}: model_type {kind!r} is not supported; supported: {', '.join(MODEL_TYPES)}"
            )
        return MODEL_TYPES[kind]
    if path.is_file():
        from .llama.gguf_loader import check_gguf_magic

        check_gguf_magic(path)
        return "llama"
    raise FileNotFoundError(
        f"model not found: {name!r} is neither a known model ({', '.join(known)}) nor an existing "
        "HF directory or .gguf file"
    )


def load_model(
    name_or_path: str | Path,
    dtype: DTypeLike = "float32",
    *,
    seed: int = 0,
    on_tensor: Callable[[int, int], None] | None = None,
) -> LlamaModel | BertModel:
    """A model of either family by name or path (see the module docstring); `seed` fills random-weight presets,
    `on_tensor(done, total)` reports the weights read so far. Errors as each family's `load_model` says."""
    if family_of(name_or_path) == "bert":
        from .bert.model import load_model as load_bert

        return load_bert(name_or_path, dtype, seed=seed, on_tensor=on_tensor)
    from .llama.model import load_model as load_llama

    return load_llama(name_or_path, dtype, seed=seed, on_tensor=on_tensor)
