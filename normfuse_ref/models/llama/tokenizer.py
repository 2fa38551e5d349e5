"""Text <-> token ids: the byte-level BPE tokenizer a GGUF file describes, its chat template, and a byte tokenizer.

`GGUFTokenizer.from_metadata` rebuilds the tokenizer from the GGUF `tokenizer.*` fields with the `tokenizers`
package:
- model: byte-level BPE (`tokenizer.ggml.model == "gpt2"`) over `tokenizer.ggml.tokens` and `.merges`;
- pre-tokenizer from `tokenizer.ggml.pre`, matching llama.cpp's table (llama-vocab.cpp). For "smollm" (and the
  other StarCoder-family vocabularies) llama.cpp first splits every digit on its own (regex \\p{N}) and then applies
  the GPT-2 regex: that is `Digits(individual_digits=True)` followed by `ByteLevel(use_regex=True)`, the same
  pre-tokenizer as SmolLM2's own tokenizer.json. "llama-bpe" (Llama 3) uses its split regex, then raw ByteLevel;
- control tokens (token_type 3, e.g. <|im_start|>, <|im_end|>, <|endoftext|>) are added as special tokens, so they
  match whole in a prompt; user-defined ones (type 4) as plain added tokens;
- the decoder is ByteLevel; `decode` drops special tokens by default.

The chat template (`tokenizer.chat_template`, Jinja) is rendered in jinja2's immutable sandbox, as HF does, with
one user message and `add_generation_prompt=True`. SmolLM2's template is ChatML:
`<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`.

`ByteTokenizer` is the tokenizer of the random `tiny` preset (vocabulary 256): one token per UTF-8 byte, no special
tokens, no chat template. It makes `normfuse generate --model tiny` run without any download.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ByteTokenizer", "GGUFTokenizer", "StreamDecoder", "TextTokenizer", "UnsupportedTokenizer"]

#: token_type values of the GGUF tokenizer (llama.cpp's llama_token_type).
CONTROL, USER_DEFINED = 3, 4

#: Names of control tokens that end a generation, besides the file's eos/eot ids (llama.cpp treats them the same).
END_OF_GENERATION = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>")

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: tokenizer.ggml.pre values whose llama.cpp regexes are "\p{N}" then the GPT-2 regex.
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
#: tokenizer.ggml.pre values that use the GPT-2 regex alone.
_GPT2 = {"gpt2", "default", "gpt-2", "jina-es", "jina-de", "phi-2", "poro-chat", "jais", "olmo"}


class UnsupportedTokenizer(ValueError):
    """The file's tokenizer is of a kind normfuse does not rebuild (the model still runs on token ids)."""


class TextTokenizer(Protocol):
    """What `generate` needs from a tokenizer."""

    @property
    def eos_ids(self) -> frozenset[int]: ...

    @property
    def has_chat_template(self) -> bool: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def chat_prompt(self, prompt: str) -> str: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255; decoding replaces invalid byte sequences with U+FFFD."""

    eos_ids: frozenset[int] = frozenset()
    has_chat_template: bool = False

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def chat_prompt(self, prompt: str) -> str:
        raise ValueError("this model's tokenizer has no chat template; pass chat=False (CLI: --no-chat)")


@dataclass(frozen=True)
class GGUFTokenizer:
    """A `tokenizers.Tokenizer` built from GGUF metadata, with its special ids and chat template."""

    backend: Any  # tokenizers.Tokenizer
    bos_id: int | None  # prepended by `encode` (None: the file says not to add one)
    eos_ids: frozenset[int]  # every id that ends a generation
    chat_template: str | None
    special: Mapping[str, int] = field(default_factory=dict)  # control token text -> id
    template_tokens: tuple[str, str] = ("", "")  # the file's bos and eos token text, for the chat template

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> GGUFTokenizer:
        """Build from the `tokenizer.*` fields of a GGUF file; UnsupportedTokenizer for non-BPE vocabularies."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise UnsupportedTokenizer(
                f"tokenizer model {kind!r} is not supported (normfuse rebuilds byte-level BPE, 'gpt2', only)"
            )
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
        pre = meta.get("tokenizer.ggml.pre", "default")
        pre_tok: Any
        if pre in _DIGITS_THEN_GPT2:
            pre_tok = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
        elif pre in _GPT2:
            pre_tok = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        elif pre in ("llama-bpe", "llama3", "llama-v3"):
            pre_tok = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        else:
            raise UnsupportedTokenizer(f"pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported")

        vocab = {t: i for i, t in enumerate(tokens)}
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = pre_tok
        backend.decoder = decoders.ByteLevel()
        special = {tokens[i]: i for i, t in enumerate(types) if t == CONTROL}
        backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
        user = [tokens[i] for i, t in enumerate(types) if t == USER_DEFINED]
        if user:
            backend.add_tokens([AddedToken(s, special=False, normalized=False) for s in user])

        def opt_id(key: str) -> int | None:
            v = meta.get(key)
            return None if v is None else int(v)

        eos = {
            i for i in (opt_id("tokenizer.ggml.eos_token_id"), opt_id("tokenizer.ggml.eot_token_id")) if i is not None
        }
        eos |= {special[s] for s in END_OF_GENERATION if s in special}
        return cls(
            backend=backend,
            bos_id=opt_id("tokenizer.ggml.bos_token_id") if meta.get("tokenizer.ggml.add_bos_token") else None,
            eos_ids=frozenset(eos),
            template_tokens=tuple(  # type: ignore[arg-type]
                tokens[i] if i is not None and 0 <= i < len(tokens) else ""
                for i in (opt_id("tokenizer.ggml.bos_token_id"), opt_id("tokenizer.ggml.eos_token_id"))
            ),
            chat_template=meta.get("tokenizer.chat_template"),
            special=special,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text (e.g. <|im_start|>) become their single ids."""
        ids: list[int] = self.backend.encode(text, add_special_tokens=False).ids
        return ids if self.bos_id is None else [self.bos_id, *ids]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return str(self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special))

    def chat_prompt(self, prompt: str) -> str:
        """The chat template applied to one user message, ending where the assistant's answer starts."""
        if self.chat_template is None:
            raise ValueError("this model's tokenizer has no chat template; pass chat=False (CLI: --no-chat)")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # HF's settings
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=[{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                bos_token=self.template_tokens[0],
                eos_token=self.template_tokens[1],
            )
        except TemplateError as exc:
            raise ValueError(f"the model's chat template failed to render ({exc})") from None


class StreamDecoder:
    """Turns a growing list of generated ids into text pieces as they become printable.

    Byte-level tokens can end inside a multi-byte UTF-8 character; a piece is released only when the decoded text
    no longer ends with U+FFFD (the replacement for an incomplete sequence), so printed pieces concatenate to the
    final text.
    """

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._printed = 0

    def push(self, token: int) -> str:
        self._ids.append(int(token))
        text = self._tok.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self._printed = text[self._printed :], len(text)
        return piece

    def flush(self) -> str:
        text = self._tok.decode(self._ids)
        piece, self._printed = text[self._printed :], len(text)
        return piece
