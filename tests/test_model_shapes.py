"""Any model by its config: `normfuse timeline --model path/to/config.json` times an HF config.json of the Llama
family (llama, mistral, qwen2) or the LayerNorm families (bert, gpt2, opt), shape-only.

Two implementations must agree: a config.json written from a preset's fields (here, independently of the readers:
HF's own key names) gives the very timeline of the preset, every number of `--json` but the model's name. And the
mistakes are one clear line naming the file, the field, or the model_type and the supported ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from normfuse_ref import fields
from normfuse_ref.cli.main import main
from normfuse_ref.models import UnsupportedArchitecture
from normfuse_ref.models.bert import get_preset as bert_preset
from normfuse_ref.models.gpt import get_preset as gpt_preset
from normfuse_ref.models.llama import get_preset as llama_preset
from normfuse_ref.models.shapes import SHAPE_MODEL_TYPES, shape_config
from tests.bert_support import hf_config as bert_hf_config


def llama_json(name: str, model_type: str = "llama") -> dict[str, Any]:
    c = llama_preset(name)
    return {
        "model_type": model_type, "hidden_size": c.dim, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "intermediate_size": c.ffn_dim,
        "vocab_size": c.vocab_size, "max_position_embeddings": c.context_length, "rope_theta": c.rope_base,
        "rms_norm_eps": c.norm_eps, "tie_word_embeddings": c.tied_embeddings,
    }  # fmt: skip


def gpt2_json(name: str) -> dict[str, Any]:
    c = gpt_preset(name)
    return {
        "model_type": "gpt2", "n_embd": c.dim, "n_layer": c.n_layers, "n_head": c.n_heads, "n_inner": None,
        "vocab_size": c.vocab_size, "n_positions": c.context_length, "layer_norm_epsilon": c.norm_eps,
        "activation_function": "gelu_new",
    }  # fmt: skip


def opt_json(name: str) -> dict[str, Any]:
    c = gpt_preset(name)
    return {
        "model_type": "opt", "hidden_size": c.dim, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
        "ffn_dim": c.ffn_dim, "vocab_size": c.vocab_size, "max_position_embeddings": c.context_length,
        "activation_function": "relu", "do_layer_norm_before": True, "word_embed_proj_dim": c.dim,
    }  # fmt: skip


CASES = [
    ("llama2-7b", llama_json("llama2-7b"), ("--layers", "2")),
    ("llama3-8b", llama_json("llama3-8b", "mistral"), ("--layers", "2")),  # the same shapes as a mistral config
    ("llama3-8b", llama_json("llama3-8b", "qwen2"), ("--layers", "2", "--phase", "prefill", "--context", "300")),
    ("bert-large", bert_hf_config(bert_preset("bert-large")), ("--layers", "3")),
    ("gpt2-xl", gpt2_json("gpt2-xl"), ("--layers", "2")),
    ("opt-66b", opt_json("opt-66b"), ("--layers", "2", "--phase", "prefill", "--context", "300")),
]


def timeline_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["timeline", *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    out.pop("model")
    return out


@pytest.mark.parametrize(("preset", "config", "args"), CASES, ids=[f"{c[0]}-{c[1]['model_type']}" for c in CASES])
def test_a_config_json_times_like_its_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preset: str, config: dict[str, Any], args: tuple[str, ...]
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    from_file = timeline_json(capsys, "--model", str(path), *args)
    from_dir = timeline_json(capsys, "--model", str(tmp_path), *args)
    from_preset = timeline_json(capsys, "--model", preset, *args)
    assert from_file == from_preset
    assert from_dir == from_preset


def test_the_shape_readers_give_the_presets_fields(tmp_path: Path) -> None:
    for preset, config, _ in CASES:
        path = tmp_path / f"{preset}-{config['model_type']}.json"
        path.write_text(json.dumps(config))
        want = shape_config(preset)
        assert shape_config(path).replace(name=want.name, source=want.source) == want, preset


@pytest.mark.parametrize(
    ("config", "error", "needle"),
    [
        ({"model_type": "t5"}, UnsupportedArchitecture, "model_type 't5' is not supported; supported: llama, mistral"),
        ({"hidden_size": 4}, UnsupportedArchitecture, "model_type None is not supported"),
        ({**gpt2_json("gpt2-xl"), "n_head": None}, fields.FieldError, "field 'n_head' is missing"),
        ({**opt_json("opt-66b"), "do_layer_norm_before": False}, UnsupportedArchitecture, "post-LayerNorm OPT"),
        ({**opt_json("opt-66b"), "word_embed_proj_dim": 512}, UnsupportedArchitecture, "word_embed_proj_dim 512"),
        ({**gpt2_json("gpt2-xl"), "activation_function": "swish"}, UnsupportedArchitecture, "'swish' is not supported"),
        ({**gpt2_json("gpt2-xl"), "n_head": 7}, fields.FieldError, "dim 1600 is not a multiple of n_heads 7"),
        (
            {**bert_hf_config(bert_preset("bert-large")), "num_hidden_layers": "24"},
            fields.FieldError,
            "field 'num_hidden_layers' must be an integer",
        ),
    ],
)
def test_bad_configs_are_one_error_naming_what(
    tmp_path: Path, config: dict[str, Any], error: type, needle: str
) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(config))
    with pytest.raises(error) as info:
        shape_config(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_every_supported_model_type_has_a_reader() -> None:
    assert set(SHAPE_MODEL_TYPES) == {"llama", "mistral", "qwen2", "bert", "gpt2", "opt"}
