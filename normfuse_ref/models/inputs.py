"""What every family checks of the token ids a forward call is given, and of the texts its tokenizer is given, with
one message for each mistake."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["check_ids", "check_text"]


def check_ids(ids: ArrayLike, vocab_size: int, positions: int, past: int = 0) -> NDArray[np.int64]:
    """Token ids, (T,) or (B, T) integers within the vocabulary, whose T new positions after `past` cached ones fit
    the model's `positions` (its context, or its learned position embeddings); ValueError otherwise."""
    a = np.asarray(ids)
    if a.dtype.kind not in "iu" or a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(
            f"ids must be a non-empty (T,) or (B, T) integer array; got dtype {a.dtype.name}, shape {a.shape}"
        )
    bad = a[(a < 0) | (a >= vocab_size)]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} is out of range for a vocabulary of {vocab_size}")
    T = a.shape[-1]
    if past + T > positions:
        what = f"{past} cached + {T} new tokens" if past else f"{T} tokens"
        raise ValueError(f"{what} exceed the model's context of {positions} tokens")
    return a.astype(np.int64)


def check_text(text: object, what: str) -> str:
    """`text` if it is a string that UTF-8 can encode; TypeError or ValueError naming `what` (e.g. "text 2", "the
    prompt") otherwise. A command-line argument that is not valid UTF-8 reaches Python with each bad byte as a lone
    surrogate U+DC80-U+DCFF (PEP 383); the tokenizers cannot take any lone surrogate."""
    if not isinstance(text, str):
        raise TypeError(f"{what} is a {type(text).__name__}, not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        c = ord(text[exc.start])
        bad = f"byte {c - 0xDC00:#04x}" if 0xDC80 <= c <= 0xDCFF else f"a lone surrogate U+{c:04X}"
        raise ValueError(f"{what} is not valid UTF-8 text ({bad} at character {exc.start + 1})") from None
    return text
