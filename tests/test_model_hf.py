"""Independent cross-check: the same SmolLM2 GGUF file run by Hugging Face transformers (CPU torch, float32, eager
attention) must give the same logits and greedy tokens as normfuse, and its GGUF tokenizer the same token ids.

transformers reads the GGUF with its own code: it dequantises with gguf-py, reverses llama.cpp's Q/K permutation
back to HF's half RoPE layout, and computes RMSNorm, RoPE (cos/sin from float32 angles), attention and SwiGLU
with torch kernels. Agreement therefore checks normfuse's loader, interleaved RoPE, GQA, causal mask and tied
head against an implementation that shares none of that code.

Tolerance (`hf_tol`): the probabilistic float32 bound of tests/test_model_smollm2.py (rounding in both
implementations) plus one term for the RoPE angles: HF rounds p * theta_i to float32, normfuse computes it in
float64, so q and k differ by a relative p_max u per rotated pair; that perturbs every score like one more
rounded factor per block, bounded by 2 L p_max u max|logit| over the L blocks in series (first order).

Skipped when transformers/torch/accelerate are missing on a developer's machine, but FAILS when the environment
variable CI is set: CI installs the `hf` extra and must run this check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from normfuse_ref.models.llama.fetch import fetch
from normfuse_ref.models.llama.model import Model, generate, load_model, prompt_ids
from tests.hf_support import require
from tests.tolerances import U32, smollm2_tol

torch = require("torch")
transformers = require("transformers")
require("accelerate")  # transformers needs it to load a GGUF file

Array = NDArray[Any]


def hf_tol(model: Model, logits: Array, positions: int) -> float:
    """smollm2_tol plus the RoPE-angle term of the module docstring, in logit units."""
    rope = 2 * model.cfg.n_layers * positions * U32 * float(np.abs(logits).max())
    return smollm2_tol(model.cfg, logits) + rope


@pytest.fixture(scope="module")
def ours() -> Model:
    fetch("smollm2-135m")
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def hf(ours: Model) -> tuple[Any, Any]:
    path = fetch("smollm2-135m").path
    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return tok, model


def test_tokenizer_matches_transformers(ours: Model, hf: tuple[Any, Any]) -> None:
    hf_tok, _ = hf
    tok = ours.tokenizer
    assert tok is not None
    texts = [
        "What is the capital of France?",
        "digits 0123456789 and 3.14159, 1,000,000",
        "unicode: naïve café, Ελληνικά, 東京, emoji 🙂👍",
        "whitespace   runs\t\ttabs\n\n\nnewlines   ",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "code: def f(x):\n    return x ** 2  # square",
    ]
    for text in texts:
        want = hf_tok.encode(text, add_special_tokens=False)
        assert tok.encode(text) == want, text
        assert tok.decode(want) == hf_tok.decode(want, skip_special_tokens=True), text


def test_logits_match_transformers(ours: Model, hf: tuple[Any, Any]) -> None:
    """Logits at every position of a prompt plus normfuse's own greedy continuation, in both orders."""
    _, hf_model = hf
    g = generate(ours, "What is the capital of France?", 8)
    ids = list(g.prompt_ids) + list(g.tokens)
    with torch.inference_mode():
        want = hf_model(torch.tensor([ids])).logits[0].numpy()  # (T, V)
    for mode in ("fused", "baseline"):
        got, _ = ours.forward(ids, None, mode)
        diff = float(np.abs(got - want).max())
        assert diff <= hf_tol(ours, want, len(ids)), (mode, diff, hf_tol(ours, want, len(ids)))


def test_greedy_tokens_match_transformers(ours: Model, hf: tuple[Any, Any]) -> None:
    _, hf_model = hf
    for prompt in ("What is the capital of France?", "Give me a word that rhymes with cat."):
        ids = prompt_ids(ours, prompt)
        g = generate(ours, ids, 10, "fused")
        with torch.inference_mode():
            out = hf_model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=2)
        hf_tokens = out[0, len(ids) :].tolist()
        assert list(g.tokens) == hf_tokens[: len(g.tokens)], prompt
