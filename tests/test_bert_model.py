"""BertModel end to end: tokenising, embedding, both orders, padding and length limits, on the random `tiny-bert`
(no download) and on the real all-MiniLM-L6-v2 (skipped when it is not fetched).

Tolerances are `hidden_bound` / `embedding_bound` (normfuse_ref.models.bert, derived in normfuse_ref.accuracy.bounds); each assert
says which.
"""

from __future__ import annotations

import numpy as np
import pytest

from normfuse_ref.accuracy.bounds import cosine_bound
from normfuse_ref.models.bert import BertModel, TextTooLong, compare_modes, embedding_bound, hidden_bound, load_model
from normfuse_ref.models.bert.model import mean_pool
from tests.bert_support import MINILM, MODES, minilm  # noqa: F401  (fixture)

TEXTS = ["A cat sits on the mat.", "A dog lies on the rug.", "hi", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def tiny() -> BertModel:
    return load_model("tiny-bert")


# ---------------------------------------------------------------------------------------------------------------
# tiny-bert: the API without a download
# ---------------------------------------------------------------------------------------------------------------


def test_embed_gives_unit_vectors(tiny: BertModel) -> None:
    for mode in MODES:
        e = tiny.embed(TEXTS, mode)
        assert e.shape == (len(TEXTS), tiny.cfg.dim) and e.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(e.astype(np.float64), axis=-1), 1, rtol=0, atol=4 * 2.0**-24)


def test_embedding_does_not_depend_on_the_batch(tiny: BertModel) -> None:
    """Each text alone (batch_size=1, no padding) vs all together padded to the longest."""
    together = tiny.embed(TEXTS, batch_size=32)
    alone = tiny.embed(TEXTS, batch_size=1)
    batch = tiny.tokenize(TEXTS)
    h = tiny.forward(batch.ids, batch.attention_mask)
    assert np.abs(together - alone).max() <= embedding_bound(tiny.cfg, h, batch.attention_mask)


def test_groups_are_in_length_order_and_embeddings_come_back_in_the_texts_order(tiny: BertModel) -> None:
    """Texts are grouped by token length (so a group pads little) and embedded in that order; each embedding is
    returned at its text's own place: equal, within the bound, to that text run alone through forward and pooling,
    in both orders and through compare_modes too."""
    long = "a much longer sentence than the others, with many more characters in it"
    texts = [TEXTS[0], "hi", long, "A dog lies on the rug!!", "ok", TEXTS[3]]  # 19, 4, 61, 20, 4, 33 tokens
    batch = tiny.tokenize(texts)
    groups = list(tiny.groups(batch, batch_size=2))
    seen = [int(i) for idx, _, _ in groups for i in idx]
    assert sorted(seen) == list(range(len(texts)))
    assert any(list(idx) != sorted(idx) for idx, _, _ in groups)  # a group out of the texts' order: [5, 2]
    lengths = [batch.lengths[i] for i in seen]
    assert lengths == sorted(lengths)
    assert all(ids.shape[1] == max(batch.lengths[i] for i in idx) for idx, ids, _ in groups)
    cmp = compare_modes(tiny, texts, batch_size=2)
    for mode in MODES:
        e = tiny.embed(texts, mode, batch_size=2)  # (B, d)
        for i, t in enumerate(texts):
            one = tiny.tokenize([t])
            h = tiny.forward(one.ids, one.attention_mask, mode)  # (1, T, d)
            alone = mean_pool(h, one.attention_mask)[0]  # (d,)
            bound = embedding_bound(tiny.cfg, h, one.attention_mask)
            assert np.abs(e[i] - alone).max() <= bound, (mode, i)
            assert np.abs(cmp.embeddings[mode][i] - alone).max() <= bound, (mode, i)


def test_tokenize_pads_on_the_right(tiny: BertModel) -> None:
    b = tiny.tokenize(["abc", "a", ""])
    tok = tiny.tokenizer
    assert tok is not None
    assert b.lengths == (5, 3, 2)  # [CLS] a ##b ##c [SEP]; [CLS] a [SEP]; [CLS] [SEP]
    assert b.ids[:, 0].tolist() == [tok.cls_id] * 3
    assert b.ids[1].tolist() == [tok.cls_id, tok.backend.token_to_id("a"), tok.sep_id, tok.pad_id, tok.pad_id]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]


def test_bad_texts_are_refused(tiny: BertModel) -> None:
    with pytest.raises(ValueError, match="no texts"):
        tiny.embed([])
    with pytest.raises(TypeError, match="not one string"):
        tiny.embed("a single string")
    with pytest.raises(TypeError, match="text 2 is a int"):
        tiny.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        tiny.embed(["ok"], batch_size=0)


def test_a_text_longer_than_the_positions_is_an_error_or_truncated_visibly(tiny: BertModel) -> None:
    P = tiny.cfg.max_positions  # 64 for tiny-bert
    long = "x" * 100  # one word: [CLS] x ##x ... [SEP], 102 tokens
    with pytest.raises(TextTooLong, match=f"text 2 has 102 tokens but the model takes at most {P}"):
        tiny.tokenize(["short", long])
    b = tiny.tokenize(["short", long], truncate=True)
    assert b.truncated == {1: 102} and b.lengths[1] == P
    assert tiny.tokenizer is not None and b.ids[1, P - 1] == tiny.tokenizer.sep_id  # [SEP] stays last
    # the truncated text embeds as its first P tokens would
    h = tiny.forward(b.ids[1:], b.attention_mask[1:])
    first = tiny.forward(np.r_[b.ids[1, : P - 1], b.ids[1, P - 1]][None])
    np.testing.assert_array_equal(h, first)
    e = tiny.embed(["short", long], truncate=True)
    assert e.shape == (2, tiny.cfg.dim)


def test_compare_modes_reports_both_orders(tiny: BertModel) -> None:
    cmp = compare_modes(tiny, TEXTS)
    assert set(cmp.embeddings) == {"fused", "baseline"}
    assert cmp.max_abs_diff == float(np.abs(cmp.embeddings["fused"] - cmp.embeddings["baseline"]).max())
    assert 0 < cmp.max_abs_diff and cmp.min_cosine <= 1 + 1e-12


# ---------------------------------------------------------------------------------------------------------------
# the real model
# ---------------------------------------------------------------------------------------------------------------


def test_config_comes_from_the_file(minilm: BertModel) -> None:  # noqa: F811
    c = minilm.cfg
    assert (c.dim, c.n_layers, c.n_heads, c.ffn_dim, c.vocab_size, c.max_positions) == (384, 6, 12, 1536, 30522, 512)
    assert c.norm_eps == 1e-12 and c.type_vocab_size == 2
    assert minilm.tokenizer is not None and minilm.tokenizer.vocab_size == 30522


def test_fused_and_baseline_embeddings_agree(minilm: BertModel) -> None:  # noqa: F811
    """max |fused - baseline| <= embedding_bound, hence 1 - cos <= d tol^2 / 2; and the two orders really differ."""
    cmp = compare_modes(minilm, TEXTS)
    b = cmp.batch
    h = minilm.forward(b.ids, b.attention_mask, "baseline")
    tol = embedding_bound(minilm.cfg, h, b.attention_mask)
    assert cmp.max_abs_diff <= tol, cmp.max_abs_diff
    assert 1 - cmp.min_cosine <= cosine_bound(minilm.cfg.dim, tol), cmp.min_cosine
    assert cmp.max_abs_diff > 0
    hf = minilm.forward(b.ids, b.attention_mask, "fused")
    keep = b.attention_mask.astype(bool)
    assert np.abs(hf - h)[keep].max() <= hidden_bound(minilm.cfg, h[keep])


def test_padded_batch_equals_each_text_alone(minilm: BertModel) -> None:  # noqa: F811
    b = minilm.tokenize(TEXTS)
    for mode in MODES:
        h = minilm.forward(b.ids, b.attention_mask, mode)
        together = minilm.embed(TEXTS, mode, batch_size=len(TEXTS))
        alone = minilm.embed(TEXTS, mode, batch_size=1)
        assert np.abs(together - alone).max() <= embedding_bound(minilm.cfg, h, b.attention_mask), mode


def test_similar_sentences_are_closer(minilm: BertModel) -> None:  # noqa: F811
    e = minilm.embed(TEXTS).astype(np.float64)
    cos = e @ e.T
    assert cos[0, 1] > 0.3 > cos[0, 3] and cos[0, 1] > cos[1, 3]  # cat/mat ~ dog/rug, not the stock market


def test_over_long_text_on_the_real_model(minilm: BertModel) -> None:  # noqa: F811
    text = "word " * 600
    with pytest.raises(TextTooLong, match="602 tokens but the model takes at most 512"):
        minilm.embed([text])
    b = minilm.tokenize([text], truncate=True)
    assert b.truncated == {0: 602} and b.ids.shape == (1, 512)
