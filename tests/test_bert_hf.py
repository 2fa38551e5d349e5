"""Independent cross-check: HF transformers' `BertModel` (CPU torch, eager attention) on the same safetensors must
give the same hidden states and sentence embeddings as normfuse in both orders, and HF's tokenizer the same ids.

transformers reads config.json and the safetensors with its own code and computes embeddings, LayerNorm,
attention with its additive padding mask (finfo.min where masked), exact GELU and the residual blocks with torch
kernels; its tokenizer (`BertTokenizerFast` from the same tokenizer.json, padding=True) pads on its own. The pooled
embedding on the HF side is written here with torch (masked mean, then `F.normalize`), as sentence-transformers'
Pooling and Normalize modules compute it.

Tolerances: `hidden_bound` and `embedding_bound` (normfuse_ref.models.bert, derived in normfuse_ref.accuracy.bounds) in float32;
in float64 the same bounds with u = 2^-53, so a float64 disagreement above ~1e-13 is a real difference of
computation, not rounding.

The tiny-BERT check needs no download; the real-model checks skip when all-MiniLM-L6-v2 is not fetched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from normfuse_ref.models import load_model
from normfuse_ref.models.bert import BertModel, embedding_bound, get_preset, hidden_bound, random_params
from tests.bert_support import MODES, minilm, write_hf_dir  # noqa: F401  (fixture)
from tests.hf_support import require

torch = require("torch")
transformers = require("transformers")

Array = NDArray[Any]

TEXTS = [
    "A cat sits on the mat.",
    "A dog lies on the rug.",
    "Hi",
    "The quick brown fox jumps over the lazy dog, again and again, until it is completely worn out.",
    "",
]

TOKENIZER_TEXTS = [
    *TEXTS,
    "UPPER case, MiXeD case and lower case",
    "naïve café résumé Ελληνικά",
    "東京は日本の首都です",
    "emoji 🙂👍 and symbols © ® ™ → ∑",
    "digits 0123456789 and 3.14159, 1,000,000",
    "whitespace   runs\t\ttabs\n\nnewlines   ",
    "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
    "[CLS] literal special tokens [SEP] [PAD] [MASK]",
    "don't won't it's o'clock e-mail U.S.A.",
]


def hf_embed(model: Any, ids: Array, mask: Array) -> tuple[Array, Array]:
    """HF hidden states (B, T, d) and sentence-transformers' pooled, normalised embeddings (B, d)."""
    with torch.inference_mode():
        m = torch.tensor(mask)
        h = model(input_ids=torch.tensor(ids), attention_mask=m).last_hidden_state  # (B, T, d)
        w = m.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)  # (B, d)
        e = torch.nn.functional.normalize(pooled, p=2, dim=1)  # (B, d)
    return h.numpy(), e.numpy()


def hf_model(path: Path, dtype: Any) -> Any:
    return transformers.BertModel.from_pretrained(
        str(path), dtype=dtype, attn_implementation="eager", add_pooling_layer=False
    ).eval()


def _check(ours: BertModel, hf: Any, ids: Array, mask: Array, dtype: str) -> None:
    want_h, want_e = hf_embed(hf, ids, mask)
    keep = mask.astype(bool)
    for mode in MODES:
        h = ours.forward(ids, mask, mode)
        diff = float(np.abs(h - want_h)[keep].max())
        assert diff <= hidden_bound(ours.cfg, want_h[keep], dtype), (mode, diff)
        e = ours.embed_batch(_batch(ids, mask), mode)
        ediff = float(np.abs(e - want_e).max())
        assert ediff <= embedding_bound(ours.cfg, want_h, mask, dtype), (mode, ediff)


def _batch(ids: Array, mask: Array) -> Any:
    from normfuse_ref.models.bert import Batch

    return Batch(ids=ids, attention_mask=mask, lengths=tuple(int(n) for n in mask.sum(-1)), truncated={})


# ---------------------------------------------------------------------------------------------------------------
# tiny BERT, random weights, float64: no download
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_tiny_bert_matches_transformers_in_float64(tmp_path: Path, prefix: str) -> None:
    """An HF directory written from random weights (with the `bert.` prefix of task-head checkpoints, too)."""
    cfg = get_preset("tiny-bert")
    path = write_hf_dir(tmp_path / "tiny", cfg, random_params(cfg, seed=7, dtype="float64"), prefix=prefix)
    ours = load_model(path, "float64")
    assert isinstance(ours, BertModel)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, cfg.vocab_size, (3, 17))  # (B, T)
    mask = np.ones_like(ids)  # (B, T)
    mask[0, 9:], mask[2, 1:] = 0, 0
    _check(ours, hf_model(path, torch.float64), ids, mask, "float64")


# ---------------------------------------------------------------------------------------------------------------
# the real model
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf(minilm: BertModel) -> tuple[Any, Any]:  # noqa: F811  (the fixture imported above)
    path = Path(minilm.source)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    return tok, hf_model(path, torch.float32)


def test_tokenizer_ids_equal_transformers(minilm: BertModel, hf: tuple[Any, Any]) -> None:  # noqa: F811
    tok, _ = hf
    want = tok(TOKENIZER_TEXTS, padding=True, return_tensors="np")
    got = minilm.tokenize(TOKENIZER_TEXTS)
    assert np.array_equal(got.ids, want["input_ids"])
    assert np.array_equal(got.attention_mask, want["attention_mask"])
    assert got.truncated == {}


def test_hidden_states_and_embeddings_match_transformers(minilm: BertModel, hf: tuple[Any, Any]) -> None:  # noqa: F811
    """A padded batch of texts of different lengths (one empty: [CLS] [SEP] only), in both orders."""
    tok, model = hf
    enc = tok(TEXTS, padding=True, return_tensors="np")
    _check(minilm, model, enc["input_ids"], enc["attention_mask"], "float32")


def test_a_single_text_matches_transformers(minilm: BertModel, hf: tuple[Any, Any]) -> None:  # noqa: F811
    tok, model = hf
    enc = tok(TEXTS[:1], return_tensors="np")
    _check(minilm, model, enc["input_ids"], enc["attention_mask"], "float32")
