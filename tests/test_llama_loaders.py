"""Loading weights: GGUF files (written here with gguf.GGUFWriter), HF safetensors directories, `load_model`'s
names, the tokenizer built from GGUF metadata, and one clear error for every bad input.

The loaders are checked against the weights that were written: float tensors must come back bit for bit (only a
transpose happens), quantised ones equal to `gguf.quants.dequantize` of what was written, and a model loaded
from the GGUF (interleaved RoPE) and from the HF directory (half RoPE, Q and K rows permuted as llama.cpp's
converter undoes) must give the same logits to float32 rounding (tolerance: tests/test_llama_forward.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from numpy.typing import NDArray

from normfuse_ref.models.llama import LlamaConfig, get_preset, random_params
from normfuse_ref.models.llama.fetch import find_model
from normfuse_ref.models.llama.gguf_loader import read_gguf
from normfuse_ref.models.llama.hf_loader import hf_name, read_hf_dir
from normfuse_ref.models.llama.model import load_model
from normfuse_ref.models.llama.tokenizer import GGUFTokenizer, StreamDecoder, UnsupportedTokenizer
from normfuse_ref.models.llama.weights import convert_rope_layout
from tests.tolerances import decode_tol

Array = NDArray[Any]
Q8 = gguf.GGMLQuantizationType.Q8_0
CFG = get_preset("tiny").replace(rope_layout="interleaved", tied_embeddings=True)


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0..255 (the byte-level BPE alphabet)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_gguf(
    path: Path,
    params: dict[str, Array],
    cfg: LlamaConfig,
    *,
    arch: str = "llama",
    quantize: tuple[str, ...] = (),
    half: tuple[str, ...] = (),
    tokenizer: bool = True,
    meta: dict[str, Any] | None = None,
) -> Path:
    """A GGUF file of `params` (row-vector orientation) the way llama.cpp writes one: (out, in) rows. `meta`
    replaces (or, with None, leaves out) metadata fields, to write damaged files."""
    w = gguf.GGUFWriter(str(path), arch)
    fields: dict[str, Any] = {
        f"{arch}.block_count": cfg.n_layers,
        f"{arch}.context_length": cfg.context_length,
        f"{arch}.embedding_length": cfg.dim,
        f"{arch}.feed_forward_length": cfg.ffn_dim,
        f"{arch}.attention.head_count": cfg.n_heads,
        f"{arch}.attention.head_count_kv": cfg.n_kv_heads,
        f"{arch}.rope.freq_base": float(cfg.rope_base),
        f"{arch}.attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        f"{arch}.vocab_size": cfg.vocab_size,
    } | (meta or {})
    for key, v in fields.items():
        if v is None:
            continue
        if isinstance(v, str):
            w.add_string(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        else:
            w.add_uint32(key, v)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(byte_alphabet())
        w.add_token_merges([])
        w.add_token_types([1] * 256)
        w.add_eos_token_id(10)  # "\n" ends a generation in this toy vocabulary
    for name, a in params.items():
        rows = a if a.ndim == 1 or name == "token_embd.weight" else np.ascontiguousarray(a.T)  # (out, in)
        if name in quantize:
            w.add_tensor(name, gguf.quants.quantize(rows, Q8), raw_dtype=Q8)
        elif name in half:
            w.add_tensor(name, rows.astype(np.float16))
        else:
            w.add_tensor(name, rows.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> tuple[Path, dict[str, Array]]:
    p = random_params(CFG, seed=11)
    return write_gguf(
        tmp_path / "tiny.gguf", p, CFG, quantize=("blk.0.attn_q.weight",), half=("blk.1.ffn_gate.weight",)
    ), p


def test_gguf_round_trip(tiny_gguf: tuple[Path, dict[str, Array]]) -> None:
    path, p = tiny_gguf
    g = read_gguf(path)
    eps32 = float(np.float32(CFG.norm_eps))  # GGUF stores the epsilon as float32
    assert g.cfg.replace(name="x", source="") == CFG.replace(name="x", source="", norm_eps=eps32)
    assert g.cfg.rope_layout == "interleaved" and g.cfg.tied_embeddings
    assert set(g.params) == set(p)
    for k, want in p.items():
        if k == "blk.0.attn_q.weight":
            want = gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(want.T), Q8), Q8).T
        elif k == "blk.1.ffn_gate.weight":
            want = want.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(g.params[k], want, err_msg=k)
        assert g.params[k].dtype == np.float32


def test_load_model_from_gguf_runs_and_tokenizes(tiny_gguf: tuple[Path, dict[str, Array]]) -> None:
    path, _ = tiny_gguf
    m = load_model(path)
    assert m.tokenizer is not None and not m.tokenizer.has_chat_template
    ids = m.tokenizer.encode("hi there 42")
    assert m.tokenizer.decode(ids) == "hi there 42" and len(ids) == 11  # no merges: one token per byte
    assert m.tokenizer.eos_ids == frozenset({10})
    for mode in ("fused", "baseline"):
        logits, cache = m.forward(ids, None, mode)
        assert logits.shape == (11, CFG.vocab_size) and cache.length == 11
    assert load_model(path, "float16").forward(ids)[0].dtype == np.float16


def write_hf_dir(path: Path, params: dict[str, Array]) -> Path:
    """An HF checkpoint directory of `params` (GGUF names, half RoPE layout): (out, in) rows, config.json."""
    from safetensors.numpy import save_file

    path.mkdir()
    tensors = {
        hf_name(k): np.ascontiguousarray(a if a.ndim == 1 or k == "token_embd.weight" else a.T)
        for k, a in params.items()
    }
    save_file(tensors, str(path / "model.safetensors"))
    config = hf_config(rope_theta=CFG.rope_base, rms_norm_eps=CFG.norm_eps, tie_word_embeddings=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_loading_reports_every_tensor(tiny_gguf: tuple[Path, dict[str, Array]], tmp_path: Path) -> None:
    path, p = tiny_gguf
    calls: list[tuple[int, int]] = []
    load_model(path, on_tensor=lambda done, total: calls.append((done, total)))
    assert calls == [(k, len(p)) for k in range(1, len(p) + 1)]
    half, _ = convert_rope_layout(read_gguf(path).params, CFG, "half")
    calls.clear()
    load_model(write_hf_dir(tmp_path / "hf", half), on_tensor=lambda done, total: calls.append((done, total)))
    assert calls == [(k, len(p)) for k in range(1, len(p) + 1)]


def test_gguf_and_hf_layouts_give_the_same_logits(tiny_gguf: tuple[Path, dict[str, Array]], tmp_path: Path) -> None:
    """Write the GGUF model as an HF directory (Q, K un-permuted to the half pairing, (out, in) rows), load it
    with the HF loader, and compare logits with the GGUF load."""
    path, _ = tiny_gguf
    g = read_gguf(path)
    half, _ = convert_rope_layout(g.params, g.cfg, "half")
    hf_dir = write_hf_dir(tmp_path / "hf", half)
    hf = read_hf_dir(hf_dir)
    assert hf.cfg.rope_layout == "half" and hf.tokenizer is None
    for k in half:
        np.testing.assert_array_equal(hf.params[k], half[k], err_msg=k)
    m_gguf, m_hf = load_model(path), load_model(hf_dir)
    ids = np.arange(30) * 5 % CFG.vocab_size
    for mode in ("fused", "baseline"):
        a, _ = m_gguf.forward(ids, None, mode)
        b, _ = m_hf.forward(ids, None, mode)
        np.testing.assert_allclose(a, b, rtol=0, atol=decode_tol(CFG, a, ids.size))
    (hf_dir / "model.safetensors").rename(hf_dir / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pickle"):
        read_hf_dir(hf_dir)


def test_bad_gguf_files_give_one_clear_error(tiny_gguf: tuple[Path, dict[str, Array]], tmp_path: Path) -> None:
    path, p = tiny_gguf
    with pytest.raises(FileNotFoundError, match=r"model file not found"):
        read_gguf(tmp_path / "missing.gguf")
    data = path.read_bytes()
    for cut in (2, 20, 200, len(data) // 2, len(data) - 100):
        short = tmp_path / f"short{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"truncated|not a GGUF"):
            read_gguf(short)
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(ValueError, match=r"not a GGUF file"):
        read_gguf(text)
    other = write_gguf(tmp_path / "gpt2.gguf", {"token_embd.weight": p["token_embd.weight"]}, CFG, arch="gpt2")
    with pytest.raises(ValueError, match=r"architecture is 'gpt2'.*'llama'"):
        load_model(other)
    partial = {k: v for k, v in p.items() if k != "blk.1.ffn_up.weight"}
    with pytest.raises(ValueError, match=r"no tensor 'blk.1.ffn_up.weight'"):
        read_gguf(write_gguf(tmp_path / "partial.gguf", partial, CFG))


def test_bad_hf_directories_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_hf_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"no config.json"):
        read_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    with pytest.raises(ValueError, match=r"model_type is 'mistral'"):
        read_hf_dir(tmp_path)


def test_load_model_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tiny = load_model("tiny")
    assert tiny.cfg.name == "tiny" and tiny.tokenizer is not None
    assert tiny.tokenizer.decode(tiny.tokenizer.encode("héllo")) == "héllo"
    with pytest.raises(ValueError, match=r"shape-only"):
        load_model("llama2-7b")
    with pytest.raises(ValueError, match=r"not a model dtype"):
        load_model("tiny", "float8_e4m3fn")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"run: normfuse fetch smollm2-135m"):
        load_model("no-such-model")
    monkeypatch.setenv("NORMFUSE_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match=r"model not found: smollm2-135m .*run: normfuse fetch smollm2-135m"):
        load_model("smollm2-135m")
    (tmp_path / "empty-cache").mkdir()
    (tmp_path / "empty-cache" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ValueError, match=r"incomplete or changed.*normfuse fetch smollm2-135m --force"):
        find_model("smollm2-135m")
    with pytest.raises(ValueError, match=r"all-minilm-l6-v2 is a BERT model, not a Llama-architecture one"):
        load_model("all-minilm-l6-v2")


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"llama.attention.head_count": 0}, "field 'llama.attention.head_count' must be an integer >= 1; got 0"),
        ({"llama.attention.head_count": "big"}, "field 'llama.attention.head_count' must be an integer >= 1"),
        ({"llama.embedding_length": None}, "field 'llama.embedding_length' is missing"),
        ({"llama.attention.head_count_kv": 0}, "field 'llama.attention.head_count_kv' must be an integer >= 1"),
        ({"llama.attention.layer_norm_rms_epsilon": 0.0}, "'llama.attention.layer_norm_rms_epsilon' must be a finite number > 0"),
        ({"llama.context_length": 0}, "field 'llama.context_length' must be an integer >= 1; got 0"),
        ({"general.alignment": 0}, "field 'general.alignment' must be an integer >= 1; got 0"),
        ({"llama.attention.head_count": 5}, "dim 64 is not a multiple of n_heads 5"),
        ({"llama.rope.scaling.type": 3}, "field 'llama.rope.scaling.type' must be a string; got 3"),
    ],
)  # fmt: skip
def test_bad_gguf_metadata_names_the_file_and_the_field(
    tiny_gguf: tuple[Path, dict[str, Array]], tmp_path: Path, meta: dict[str, Any], message: str
) -> None:
    _, p = tiny_gguf
    bad = write_gguf(tmp_path / "bad.gguf", p, CFG, meta=meta)
    with pytest.raises(ValueError) as info:
        load_model(bad)
    assert str(info.value).startswith(f"{bad}: ") and message in str(info.value), str(info.value)


def test_damaged_gguf_tokenizer_metadata_is_one_error(tiny_gguf: tuple[Path, dict[str, Array]], tmp_path: Path) -> None:
    _, p = tiny_gguf
    bad = write_gguf(tmp_path / "bad.gguf", p, CFG, tokenizer=False, meta={"tokenizer.ggml.model": "gpt2"})
    with pytest.raises(ValueError, match=r"bad.gguf: the tokenizer in the GGUF metadata is damaged"):
        load_model(bad)


def hf_config(**changes: Any) -> dict[str, Any]:
    return {
        "model_type": "llama", "hidden_size": CFG.dim, "num_hidden_layers": CFG.n_layers,
        "num_attention_heads": CFG.n_heads, "num_key_value_heads": CFG.n_kv_heads, "intermediate_size": CFG.ffn_dim,
        "vocab_size": CFG.vocab_size, "max_position_embeddings": CFG.context_length,
    } | changes  # fmt: skip


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([1, 2, 3], "config.json must hold a JSON object {...}; it holds a list"),
        (hf_config(num_attention_heads=0), "config.json: field 'num_attention_heads' must be an integer >= 1; got 0"),
        (hf_config(hidden_size="big"), "config.json: field 'hidden_size' must be an integer >= 1; got 'big'"),
        (hf_config(num_hidden_layers=None), "config.json: field 'num_hidden_layers' is missing"),
        (hf_config(rms_norm_eps=-1), "config.json: field 'rms_norm_eps' must be a finite number > 0; got -1"),
        (hf_config(tie_word_embeddings="yes"), "config.json: field 'tie_word_embeddings' must be true or false"),
        (hf_config(num_key_value_heads=3), "config.json: n_heads 4 is not a multiple of n_kv_heads 3"),
        (hf_config(head_dim=0), "config.json: field 'head_dim' must be an integer >= 1; got 0"),
    ],
)
def test_bad_hf_config_names_the_file_and_the_field(tmp_path: Path, config: Any, message: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        read_hf_dir(tmp_path)
    assert f"{tmp_path}/{message}" in str(info.value), str(info.value)


def test_bad_hf_files_are_one_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b"\xff\xfe not text")
    with pytest.raises(ValueError, match=r"config.json is not a UTF-8 text file"):
        read_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ValueError, match=r"model.safetensors is a damaged or truncated safetensors file"):
        read_hf_dir(tmp_path)


def test_bad_hf_tokenizer_files_are_one_error(tiny_gguf: tuple[Path, dict[str, Array]], tmp_path: Path) -> None:
    half, _ = convert_rope_layout(read_gguf(tiny_gguf[0]).params, CFG, "half")
    hf_dir = write_hf_dir(tmp_path / "hf", half)
    (hf_dir / "tokenizer.json").write_text("{not a tokenizer")
    with pytest.raises(ValueError, match=r"tokenizer.json is not a tokenizer file the tokenizers package can read"):
        read_hf_dir(hf_dir)
    GGUFTokenizer.from_metadata(toy_metadata()).backend.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"tokenizer_config.json must hold a JSON object"):
        read_hf_dir(hf_dir)
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    assert read_hf_dir(hf_dir).tokenizer is not None


def toy_metadata(pre: str = "smollm") -> dict[str, Any]:
    alphabet = byte_alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["h e", "l l", "he ll", "Ġ w"]
    tokens = specials + alphabet + ["he", "ll", "hell", "Ġw"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(tokens) - 3),
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.bos_token_id": 1,  # not prepended: no tokenizer.ggml.add_bos_token
        "tokenizer.chat_template": (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
    }


def test_tokenizer_from_metadata() -> None:
    tok = GGUFTokenizer.from_metadata(toy_metadata())
    vocab = toy_metadata()["tokenizer.ggml.tokens"]
    ids = tok.encode("hello world")
    assert [vocab[i] for i in ids] == ["hell", "o", "Ġw", "o", "r", "l", "d"]
    assert tok.decode(ids) == "hello world"
    ids = tok.encode("<|im_start|>hi 123")
    assert ids[0] == 1 and [vocab[i] for i in ids[1:]] == ["h", "i", "Ġ", "1", "2", "3"]  # digits split one by one
    assert tok.decode(ids) == "hi 123" and tok.decode(ids, skip_special=False) == "<|im_start|>hi 123"
    assert tok.eos_ids == frozenset({0, 2})  # the file's eos, and <|endoftext|> as llama.cpp treats it
    assert tok.chat_prompt("Hi!") == "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(UnsupportedTokenizer, match=r"'llama'"):
        GGUFTokenizer.from_metadata(toy_metadata() | {"tokenizer.ggml.model": "llama"})
    with pytest.raises(UnsupportedTokenizer, match=r"pre-tokenizer"):
        GGUFTokenizer.from_metadata(toy_metadata("no-such-pre"))
    both = GGUFTokenizer.from_metadata(toy_metadata() | {"tokenizer.chat_template": "{{ bos_token }}+{{ eos_token }}"})
    assert both.chat_prompt("x") == "<|im_start|>+<|im_end|>"  # the file's bos and eos, as HF passes them
    bad = GGUFTokenizer.from_metadata(toy_metadata() | {"tokenizer.chat_template": "{{ raise_exception('no') }}"})
    with pytest.raises(ValueError, match=r"chat template failed"):
        bad.chat_prompt("x")


def test_stream_decoder_holds_incomplete_characters() -> None:
    tiny = load_model("tiny")
    assert tiny.tokenizer is not None
    ids = tiny.tokenizer.encode("aé€😀b")
    stream = StreamDecoder(tiny.tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == "aé€😀b"
    assert all("\ufffd" not in p for p in pieces)
