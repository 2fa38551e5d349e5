"""Text -> token ids for BERT: the WordPiece tokenizer of a `tokenizer.json`, run by the `tokenizers` package.

The file describes the whole pipeline (BERT's normaliser: clean-up, lower-casing, accents as the checkpoint
says, CJK characters split; BERT's pre-tokeniser; WordPiece with `##` continuations; the template
`[CLS] text [SEP]`); normfuse only loads it. Two of its settings are not the model's but one application's:
sentence-transformers saves all-MiniLM-L6-v2's tokenizer.json with truncation at 128 tokens and padding to a fixed
128. Both are switched off here, and `encode_batch` pads and truncates itself:

- padding: a batch is padded on the right to its longest text with the [PAD] id, and the attention mask marks
  the real tokens (what HF tokenizers do with `padding=True`);
- length: a text longer than `max_tokens` (the model's position embeddings, [CLS] and [SEP] included) is an
  error unless `truncate=True`, which keeps its first `max_tokens` tokens ([SEP] stays last, as the tokenizer's
  own truncation does it) and records the original length in `Batch.truncated`, so callers can say so.
  sentence-transformers truncates this model at 256 tokens (`sentence_bert_config.json`) without a word;
  normfuse uses every position the model has and never truncates silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..inputs import check_text

__all__ = ["Batch", "TextTooLong", "WordPieceTokenizer", "tiny_wordpiece"]


class TextTooLong(ValueError):
    """A text has more tokens than the model has positions, and truncation was not asked for."""


@dataclass(frozen=True)
class Batch:
    """Token ids of a batch of texts, padded on the right."""

    ids: NDArray[np.int64]  # (B, T) T = the longest text's length
    attention_mask: NDArray[np.int64]  # (B, T) 1 for a real token, 0 for padding
    lengths: tuple[int, ...]  # real tokens per text (after truncation)
    truncated: dict[int, int]  # text index -> its length before truncation (only truncated texts)


@dataclass(frozen=True)
class WordPieceTokenizer:
    """A `tokenizers.Tokenizer` with its padding and truncation switched off, and the ids BERT needs."""

    backend: Any  # tokenizers.Tokenizer
    pad_id: int
    cls_id: int
    sep_id: int

    @classmethod
    def from_backend(cls, backend: Any, where: str) -> WordPieceTokenizer:
        backend.no_padding()
        backend.no_truncation()
        ids = {t: backend.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{where} has no {', '.join(missing)} token; it is not a BERT WordPiece tokenizer")
        return cls(backend=backend, pad_id=ids["[PAD]"], cls_id=ids["[CLS]"], sep_id=ids["[SEP]"])

    @classmethod
    def from_file(cls, path: str | Path) -> WordPieceTokenizer:
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"{path} is not a valid tokenizer.json ({exc})") from None
        return cls.from_backend(backend, str(path))

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """The ids of one text with [CLS] and [SEP], untruncated."""
        return list(self.backend.encode(check_text(text, "the text")).ids)

    def tokens(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, [CLS] and [SEP] included (for display)."""
        return list(self.backend.encode(text).tokens)

    def encode_batch(self, texts: Iterable[str], max_tokens: int, *, truncate: bool = False) -> Batch:
        """Ids and attention mask of `texts`, padded to the longest (see the module docstring for length limits)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        texts = list(texts)  # any iterable of strings (a generator is read once, here)
        if not texts:
            raise ValueError("no texts to encode")
        for i, t in enumerate(texts):
            check_text(t, f"text {i + 1}")
        rows = [e.ids for e in self.backend.encode_batch(texts)]
        long = {i: len(r) for i, r in enumerate(rows) if len(r) > max_tokens}
        if long and not truncate:
            i, n = next(iter(long.items()))
            raise TextTooLong(
                f"text {i + 1} has {n} tokens but the model takes at most {max_tokens} ([CLS] and [SEP] included); "
                f"shorten it, or truncate (truncate=True, --truncate) to keep its first {max_tokens} tokens"
            )
        if long:
            self.backend.enable_truncation(max_tokens)
            try:
                for i in long:
                    rows[i] = self.backend.encode(texts[i]).ids
            finally:
                self.backend.no_truncation()
        T = max(len(r) for r in rows)
        ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)  # (B, T)
        mask = np.zeros((len(rows), T), dtype=np.int64)  # (B, T)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = r
            mask[b, : len(r)] = 1
        return Batch(ids=ids, attention_mask=mask, lengths=tuple(len(r) for r in rows), truncated=long)


#: The alphabet of `tiny_wordpiece`: every character is a token, alone and as a `##` continuation.
_TINY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"


def tiny_wordpiece() -> WordPieceTokenizer:
    """A character-level WordPiece tokenizer for the random `tiny-bert` preset (vocabulary 5 + 2 x 42 = 89 ids):
    the same pipeline as a real BERT tokenizer (normaliser, pre-tokeniser, WordPiece, [CLS]/[SEP] template) built in
    memory, so that `embed` runs end to end without a download. Other characters become [UNK]."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate([*special, *_TINY_ALPHABET, *(f"##{c}" for c in _TINY_ALPHABET)])}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    backend.add_special_tokens(special)
    return WordPieceTokenizer.from_backend(backend, "the tiny-bert tokenizer")
