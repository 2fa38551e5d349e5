"""The shape of any model the emulator times, by preset name or by an HF config.json: a config of one family.

Shape-only: nothing but the hyper-parameters is read (no weights, no tokenizer), so a config.json of a 70B model
is enough to time it. The families and the `model_type` values they read:

| family | config | model_type | normalisation |
|---|---|---|---|
| Llama | `LlamaConfig` | llama, mistral, qwen2 | RMSNorm, pre-norm decoder |
| BERT | `BertConfig` | bert | LayerNorm, post-norm encoder |
| GPT | `GptConfig` | gpt2, opt | LayerNorm, pre-norm decoder |

Any other model_type is one `UnsupportedArchitecture` naming it and the supported ones; a file that is not a JSON
object, or a missing or malformed field, is one `fields.FieldError` naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import fields
from . import UnsupportedArchitecture

__all__ = ["SHAPE_MODEL_TYPES", "shape_config", "shape_presets"]

#: model_type -> family, for shape-only configs.
SHAPE_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "bert": "bert",
    "gpt2": "gpt",
    "opt": "gpt",
}


def shape_presets() -> dict[str, Any]:
    """Every named preset of every family (random-weight, real and shape-only), by name."""
    from .bert.config import PRESETS as BERT
    from .gpt.config import PRESETS as GPT
    from .llama.config import PRESETS as LLAMA

    return {**LLAMA, **BERT, **GPT}


def shape_config(name_or_path: str | Path) -> Any:
    """The config of a preset name, or of an HF config.json (the file, or a directory holding it)."""
    name = str(name_or_path)
    presets = shape_presets()
    if name in presets:
        return presets[name]
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} has no config.json (is it a Hugging Face checkpoint directory?)")
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(
            f"unknown model preset {name!r}, and no config.json file or directory of that name; presets: "
            f"{', '.join(presets)}"
        )
    raw = fields.json_object(path)
    kind = raw.get("model_type")
    family = SHAPE_MODEL_TYPES.get(kind) if isinstance(kind, str) else None
    label = path.parent.name if path.name == "config.json" else path.stem
    if family == "llama":
        from .llama.hf_loader import config_from_hf as llama_config

        return llama_config(raw, path, label, shape_only=True)
    if family == "bert":
        from .bert.config import config_from_hf as bert_config

        return bert_config(raw, path, label)
    if family == "gpt":
        from .gpt.config import config_from_hf as gpt_config

        return gpt_config(raw, path, label)
    raise UnsupportedArchitecture(
        f"{path}: model_type {kind!r} is not supported; supported: {', '.join(SHAPE_MODEL_TYPES)}"
    )
