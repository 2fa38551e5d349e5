"""Loading BERT checkpoints and dispatching `load_model` by name or path: what loads, and one clear error for each
kind of bad input (missing or damaged files, pickles, unsupported architectures, mismatched tensors)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import normfuse_ref
from normfuse_ref.models import UnsupportedArchitecture, family_of, load_model
from normfuse_ref.models.bert import BertModel, get_preset, random_params
from normfuse_ref.models.bert.hf_loader import read_bert_dir
from normfuse_ref.models.llama.model import Model as LlamaModel
from tests.bert_support import write_hf_dir

CFG = get_preset("tiny-bert")


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return write_hf_dir(tmp_path / "ckpt", CFG, random_params(CFG, seed=1))


def test_a_directory_round_trips(ckpt: Path) -> None:
    params = random_params(CFG, seed=1)
    ck = read_bert_dir(ckpt)
    assert ck.cfg.replace(name="tiny-bert", source="") == CFG.replace(source="")
    assert ck.tokenizer is None  # no tokenizer.json in this directory
    assert set(ck.params) == set(params)
    for k, v in params.items():
        assert np.array_equal(ck.params[k], v), k  # transposed back to (in, out) exactly once


def test_load_model_dispatches_by_name_and_path(ckpt: Path) -> None:
    assert normfuse_ref.load_model is load_model
    assert isinstance(load_model("tiny-bert"), BertModel)
    assert isinstance(load_model("tiny"), LlamaModel)
    assert isinstance(load_model(ckpt), BertModel)
    assert family_of("smollm2-135m") == "llama" and family_of("all-minilm-l6-v2") == "bert"
    assert family_of("llama2-7b") == "llama"  # a shape-only preset: that family's loader refuses it
    with pytest.raises(ValueError, match="shape-only"):
        load_model("llama2-7b")
    from normfuse_ref.models.llama import random_params as llama_params
    from tests.test_llama_loaders import CFG as LLAMA_CFG
    from tests.test_llama_loaders import write_gguf

    gguf = write_gguf(ckpt.parent / "m.gguf", llama_params(LLAMA_CFG, seed=3), LLAMA_CFG)
    assert isinstance(load_model(gguf), LlamaModel)  # any other file: GGUF, the Llama family
    llama_dir = ckpt.parent / "llama"
    llama_dir.mkdir()
    (llama_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert family_of(llama_dir) == "llama"


def test_a_config_file_stands_for_its_directory(ckpt: Path, tmp_path: Path) -> None:
    """`--model dir/config.json` (the path the emulator takes) loads the directory's model, in either family."""
    by_dir, by_file = load_model(ckpt), load_model(ckpt / "config.json")
    assert isinstance(by_file, BertModel) and family_of(ckpt / "config.json") == "bert"
    for k, v in by_dir.params.items():
        assert np.array_equal(by_file.params[k], v), k
    from normfuse_ref.models.llama import random_params as llama_params
    from normfuse_ref.models.llama.weights import convert_rope_layout
    from tests.test_llama_loaders import CFG as LLAMA_CFG
    from tests.test_llama_loaders import write_hf_dir as write_llama_dir

    half, _ = convert_rope_layout(llama_params(LLAMA_CFG, seed=3), LLAMA_CFG, "half")
    llama_dir = write_llama_dir(tmp_path / "llama", half)
    llama = load_model(llama_dir / "config.json")
    assert isinstance(llama, LlamaModel) and family_of(llama_dir / "config.json") == "llama"
    for k, v in load_model(llama_dir).params.items():
        assert np.array_equal(llama.params[k], v), k


def test_a_file_that_is_no_model_is_named_so(tmp_path: Path) -> None:
    """Any file but config.json is read as GGUF; one that does not start as GGUF is refused before a family is
    named for it (`normfuse embed` said such a file "is a Llama decoder model")."""
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, not a model")
    for call in (family_of, load_model):
        with pytest.raises(ValueError, match=r"notes.txt is not a GGUF file \(it starts with b'hell'"):
            call(notes)


def test_a_model_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a known model"):
        load_model(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        read_bert_dir(tmp_path / "nothing")


def test_unsupported_architectures_are_named(ckpt: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    changes: list[tuple[dict[str, object], str]] = [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported; supported: llama, bert"),
        ({"model_type": None}, "model_type None is not supported"),
        ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
        ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' is not supported"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        ({"is_decoder": True}, "decoder"),
    ]
    for change, message in changes:
        (ckpt / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(UnsupportedArchitecture, match=message):
            load_model(ckpt)


def test_broken_config_json(ckpt: Path) -> None:
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape("config.json is not valid JSON")):
        load_model(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(ValueError, match=re.escape("has no config.json")):
        read_bert_dir(ckpt)
    (ckpt / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ValueError, match=re.escape("config.json: field 'num_hidden_layers' is missing")):
        load_model(ckpt)
    good = write_hf_dir(ckpt.parent / "good", CFG, random_params(CFG, seed=1))
    raw = json.loads((good / "config.json").read_text())
    bad: list[tuple[dict[str, object], str]] = [
        ({"hidden_size": "big"}, "field 'hidden_size' must be an integer >= 1; got 'big'"),
        ({"num_attention_heads": 0}, "field 'num_attention_heads' must be an integer >= 1; got 0"),
        ({"num_attention_heads": 5}, "dim 32 is not a multiple of n_heads 5"),
        ({"layer_norm_eps": -1}, "field 'layer_norm_eps' must be a finite number > 0"),
        ({"hidden_act": ["gelu"]}, "field 'hidden_act' must be a string"),
    ]
    for change, message in bad:
        (good / "config.json").write_text(json.dumps({**raw, **change}))
        with pytest.raises(ValueError, match=re.escape(f"{good / 'config.json'}: ") + ".*" + re.escape(message)):
            load_model(good)


def test_missing_and_truncated_safetensors(ckpt: Path) -> None:
    st = ckpt / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or truncated safetensors"):
        load_model(ckpt)
    st.write_bytes(b"")
    with pytest.raises(ValueError, match="damaged or truncated safetensors"):
        load_model(ckpt)
    st.unlink()
    with pytest.raises(ValueError, match=r"has no \*\.safetensors weight files"):
        load_model(ckpt)
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle that is never opened")
    with pytest.raises(ValueError, match="never loads pickles"):
        load_model(ckpt)


def test_missing_or_misshapen_tensors(tmp_path: Path) -> None:
    params = random_params(CFG, seed=1)
    path = write_hf_dir(tmp_path / "wide", CFG.replace(ffn_dim=CFG.ffn_dim + 1), random_params(CFG.replace(ffn_dim=81)))
    (path / "config.json").write_text(
        json.dumps({**json.loads((path / "config.json").read_text()), "intermediate_size": 80})
    )
    with pytest.raises(ValueError, match=r"intermediate.dense.weight' has shape \(81, 32\), expected \(80, 32\)"):
        load_model(path)
    del params["encoder.layer.1.output.LayerNorm.bias"]
    from safetensors.numpy import save_file

    path = write_hf_dir(tmp_path / "short", CFG, random_params(CFG, seed=1))
    save_file({k: np.ascontiguousarray(v.T if v.ndim == 2 and "embeddings" not in k else v) for k, v in params.items()},
              str(path / "model.safetensors"))  # fmt: skip
    with pytest.raises(ValueError, match=re.escape("no tensor 'encoder.layer.1.output.LayerNorm.bias'")):
        load_model(path)


def test_a_tokenizer_that_does_not_belong(ckpt: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {f"w{i}": i for i in range(CFG.vocab_size + 10)} | {"[PAD]": 200, "[CLS]": 201, "[SEP]": 202}
    Tokenizer(WordLevel(vocab, unk_token="w0")).save(str(ckpt / "tokenizer.json"))
    with pytest.raises(ValueError, match=re.escape("tokenizer.json has 141 tokens but the model's vocabulary is 128")):
        load_model(ckpt)
    Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(ckpt / "tokenizer.json"))
    with pytest.raises(ValueError, match="has no \\[PAD\\], \\[CLS\\], \\[SEP\\] token"):
        load_model(ckpt)
    (ckpt / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape("not a valid tokenizer.json")):
        load_model(ckpt)


def test_a_model_without_tokenizer_runs_on_ids(ckpt: Path) -> None:
    m = load_model(ckpt)
    assert isinstance(m, BertModel)
    assert m.forward(np.arange(1, 6)).shape == (5, CFG.dim)
    with pytest.raises(ValueError, match="has no tokenizer"):
        m.embed(["text"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_other_dtypes_load(ckpt: Path, dtype: str) -> None:
    m = load_model(ckpt, dtype)
    assert isinstance(m, BertModel) and m.forward(np.arange(1, 6)).dtype.name == dtype
    with pytest.raises(ValueError, match="not a model dtype"):
        load_model(ckpt, "float8_e4m3fn")
