"""A loaded model and text generation: `load_model`, `Model.forward`, `generate`, and `compare_modes`.

    model = load_model("smollm2-135m")              # the cached GGUF (normfuse fetch smollm2-135m)
    out = generate(model, "What is the capital of France?", max_new_tokens=32)
    print(out.text)

`load_model` accepts
- "smollm2-135m": the GGUF in the user cache (`normfuse_ref.models.llama.fetch`); missing -> FileNotFoundError saying
  `run: normfuse fetch smollm2-135m`;
- "tiny": the `tiny` preset with seeded random weights and a `ByteTokenizer` (its vocabulary is exactly the 256
  byte values), for tests and demos without a download; it produces gibberish, deterministically;
- a path to a `.gguf` file or to a Hugging Face directory (config.json + *.safetensors).
The other presets are shape-only (the emulator times them without weights) and are refused.

`Model` is a frozen record of (cfg, params, tokenizer, dtype). The weights `forward` reads are prepared once per
mode, on first use (`weights.prepare`; fused mode folds the RMSNorm gains), and kept: a model that only ever runs
fused never pays for baseline weights. The executor's workers cut large products into blocks ($NORMFUSE_THREADS),
each one single-threaded BLAS call (`normfuse_ref.parallel`).

Generation is prefill (the whole prompt in one forward call) and then one forward call per new token with the
KV cache. Greedy by default (argmax, ties to the lowest id); with temperature > 0, a seeded inverse-CDF draw from
softmax(logits / temperature), optionally restricted to the top-k logits. Step k uses the k-th uniform number of
`numpy.random.default_rng(seed)`, so two runs with the same seed see the same draws, which makes the comparison
of the two orders meaningful under sampling too. Generation stops at an end-of-generation token (kept in
`tokens`, not in `text`), after `max_new_tokens`, or when the context is full.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ...extras import require
from ...fields import positive_int
from ...precision import Array, resolve_dtype
from ..checkpoint import checkpoint_dir
from ..inputs import check_text
from ..loaded import LoadedModel
from .config import PRESETS, LlamaConfig, get_preset
from .fetch import SOURCES, find_model
from .forward import KVCache, empty_cache, forward
from .tokenizer import ByteTokenizer, GGUFTokenizer, StreamDecoder, TextTokenizer, UnsupportedTokenizer
from .weights import Mode, prepare, random_params

__all__ = ["Generation", "ModeComparison", "Model", "choose_token", "compare_modes", "generate", "load_model"]


#: Storage dtypes a model can be loaded in (activations and weights; accumulation per `precision`).
MODEL_DTYPES = ("float32", "float64", "float16", "bfloat16")

#: Presets that `load_model` fills with seeded random weights.
RANDOM_PRESETS = ("tiny",)


@dataclass(frozen=True)
class Model(LoadedModel[LlamaConfig, TextTokenizer]):
    """A Llama model ready to run (`LoadedModel`: config, weights under their GGUF names, tokenizer, dtype)."""

    def prepare_weights(self, mode: Mode) -> Mapping[str, Array]:
        return prepare(self.params, self.cfg, mode)

    def cache(self, capacity: int) -> KVCache:
        """An empty KV cache in the model's dtype with room for `capacity` positions (at most the context)."""
        return empty_cache(self.cfg, self.dtype, capacity=min(capacity, self.cfg.context_length))

    def forward(
        self, ids: ArrayLike, cache: KVCache | None = None, mode: Mode = "fused", *, logits_to_keep: int | None = None
    ) -> tuple[Array, KVCache]:
        """Logits ([B,] T, V) of the new tokens `ids` after `cache` (of the last `logits_to_keep` only, if given),
        and the extended cache (see `forward`)."""
        return forward(
            self.weights(mode), self.cfg, ids, cache, mode=mode, ex=self.executor(), logits_to_keep=logits_to_keep
        )


def _other_family_presets() -> dict[str, str]:
    """The presets of the LayerNorm families (not fetched models: those are in SOURCES), by name -> family."""
    from ..bert.config import PRESETS as BERT
    from ..gpt.config import PRESETS as GPT

    return {**{n: "BERT" for n in BERT if n not in SOURCES}, **{n: "GPT: GPT-2 and OPT" for n in GPT}}


def load_model(
    name_or_path: str | Path,
    dtype: DTypeLike = "float32",
    *,
    seed: int = 0,
    on_tensor: Callable[[int, int], None] | None = None,
) -> Model:
    """A model by name ("smollm2-135m", "tiny") or path (.gguf file, HF directory); see the module docstring.
    `on_tensor(done, total)` reports the weights read so far (for a progress display).

    Errors, each one line that names the file (and the field) at fault: FileNotFoundError for a model that is
    not there (with the `normfuse fetch` command that gets it), ValueError for a damaged, changed or unsupported
    file (a cached model whose hash is wrong says `normfuse fetch NAME --force`), MissingExtra when the model
    readers are not installed, OSError when a file cannot be read.
    """
    dt = resolve_dtype(dtype)
    if dt.name not in MODEL_DTYPES:
        raise ValueError(f"dtype {dt.name!r} is not a model dtype; choose one of {', '.join(MODEL_DTYPES)}")
    name = str(name_or_path)
    llama_sources = [n for n, s in SOURCES.items() if s.family == "llama"]
    if name in SOURCES and SOURCES[name].family != "llama":
        raise ValueError(
            f"{name} is a {SOURCES[name].family.upper()} model, not a Llama-architecture one; "
            f"models that generate: {', '.join((*llama_sources, *RANDOM_PRESETS))}"
        )
    if name in _other_family_presets():
        raise ValueError(
            f"{name} is a preset of another family ({_other_family_presets()[name]}), not a Llama-architecture "
            f"model; models that generate: {', '.join((*llama_sources, *RANDOM_PRESETS))}"
        )
    if name in RANDOM_PRESETS:
        cfg = get_preset(name)
        return Model(cfg, random_params(cfg, seed=seed, dtype=dt), ByteTokenizer(), dt, f"random weights, seed {seed}")
    if name in PRESETS and name not in SOURCES:
        raise ValueError(
            f"preset {name!r} is shape-only (no weights; the emulator times it); "
            f"models: {', '.join((*llama_sources, *RANDOM_PRESETS))}, or a path to a .gguf file or an HF directory"
        )
    require("model", "loading a real model")
    if name in SOURCES:
        return _from_gguf(find_model(name), dt, name, on_tensor)
    path = checkpoint_dir(Path(name).expanduser())
    if path.is_dir():
        from .hf_loader import read_hf_dir

        hf = read_hf_dir(path, dtype=dt, on_tensor=on_tensor)
        return Model(hf.cfg, hf.params, hf.tokenizer, dt, str(path))
    if path.exists():
        return _from_gguf(path, dt, None, on_tensor)
    raise FileNotFoundError(
        f"model not found: {name!r} is neither a known model ({', '.join((*llama_sources, *RANDOM_PRESETS))}) nor "
        f"an existing .gguf file or HF directory; run: normfuse fetch {llama_sources[0]}"
    )


def _from_gguf(
    path: Path, dt: np.dtype, name: str | None, on_tensor: Callable[[int, int], None] | None = None
) -> Model:
    from .gguf_loader import read_gguf

    g = read_gguf(path, dtype=dt, name=name, on_tensor=on_tensor)
    tok: TextTokenizer | None
    try:
        tok = GGUFTokenizer.from_metadata(g.metadata)
    except UnsupportedTokenizer:
        tok = None  # the model still runs on token ids
    except Exception as exc:  # damaged tokenizer.* fields: KeyError, TypeError, or the tokenizers package's own
        raise ValueError(
            f"{path}: the tokenizer in the GGUF metadata is damaged ({type(exc).__name__}: {exc})"
        ) from None
    return Model(g.cfg, g.params, tok, dt, str(path))


# ---------------------------------------------------------------------------------------------------------------
# Choosing the next token
# ---------------------------------------------------------------------------------------------------------------


def choose_token(logits: ArrayLike, *, temperature: float = 0.0, top_k: int | None = None, u: float = 0.5) -> int:
    """The next token from one row of logits (V,): argmax if temperature == 0, else the inverse-CDF draw at
    uniform u in [0, 1) from softmax(logits / temperature) over the top_k largest logits (all if None)."""
    z = np.asarray(logits, dtype=np.float64)  # (V,)
    if temperature == 0:
        return int(np.argmax(z))
    order = np.argsort(-z, kind="stable")  # (V,) largest first, ties to the lowest id
    if top_k is not None:
        order = order[:top_k]
    zk = z[order] / temperature  # (k,)
    p = np.exp(zk - zk[0])  # (k,)  shifted by the max
    c = np.cumsum(p)  # (k,)
    return int(order[min(int(np.searchsorted(c, u * c[-1], side="right")), order.size - 1)])


def _check_sampling(temperature: float, top_k: int | None, max_new_tokens: int, seed: int) -> None:
    """The sampling arguments, each named in its error: a bool, a string or a float where an integer goes is a
    mistake, not a number to convert."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a finite number >= 0; got {temperature!r}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0; got {temperature}")
    if top_k is not None:
        positive_int(top_k, "top_k")
    positive_int(max_new_tokens, "max_new_tokens")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")


def _uniforms(seed: int, n: int, temperature: float) -> list[float]:
    """The uniform draw of every step (unused, and fixed at 0.5, when greedy)."""
    if temperature == 0:
        return [0.5] * n
    return [float(u) for u in np.random.default_rng(seed).random(n)]


def prompt_ids(model: Model, prompt: str | Sequence[int], *, chat: bool = True) -> list[int]:
    """Token ids of the prompt: a string goes through the chat template (when `chat` and the tokenizer has one)
    and the tokenizer; a sequence of ints is used as is. ValueError for an empty or over-long prompt."""
    if isinstance(prompt, str):
        tok = model.tokenizer
        if tok is None:
            raise ValueError(f"model {model.cfg.name} has no tokenizer normfuse can rebuild; pass token ids")
        check_text(prompt, "the prompt")
        text = tok.chat_prompt(prompt) if chat and tok.has_chat_template else prompt
        ids = tok.encode(text)
    else:  # token ids: integers, never coerced (1.5, "12" or the bytes of b"hi" are not token ids)
        arr = np.asarray(prompt) if isinstance(prompt, (list, tuple, np.ndarray)) else None
        if arr is None or arr.dtype.kind not in "iu" or arr.ndim != 1:
            what = type(prompt).__name__ if arr is None else f"dtype {arr.dtype.name}, shape {arr.shape}"
            raise TypeError(f"the prompt must be a string or a sequence of integer token ids; got {what}")
        ids = [int(i) for i in arr]
    if not ids:
        raise ValueError("the prompt is empty")
    if len(ids) > model.cfg.context_length:
        raise ValueError(
            f"the prompt has {len(ids)} tokens but the model's context is {model.cfg.context_length} tokens"
        )
    return ids


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """One run of `generate`."""

    mode: Mode
    prompt_ids: tuple[int, ...]
    tokens: tuple[int, ...]  # the generated ids, including a final end-of-generation token
    text: str  # decoded `tokens` without special tokens ("" when the model has no tokenizer)
    finish_reason: str  # "eos" | "length" | "context"
    logits: Array | None  # (steps, V) float32: row k is what token k was chosen from (keep_logits=True)
    prefill_seconds: float  # the forward call on the prompt
    decode_seconds: float  # the forward calls of the new tokens after the first


def generate(
    model: Model,
    prompt: str | Sequence[int],
    max_new_tokens: int = 64,
    mode: Mode = "fused",
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    chat: bool = True,
    on_token: Callable[[int, str], None] | None = None,
    keep_logits: bool = False,
) -> Generation:
    """Generate up to `max_new_tokens` tokens after `prompt` (see the module docstring).

    `on_token(id, piece)` is called for every new token as soon as it is chosen, with the printable text it
    completes ("" while a multi-byte character is still incomplete, or for a special token).
    """
    _check_sampling(temperature, top_k, max_new_tokens, seed)
    ids = prompt_ids(model, prompt, chat=chat)
    ctx = model.cfg.context_length
    # The context bounds the steps (the loop stops when the cache is full), so a huge max_new_tokens costs nothing.
    us = _uniforms(seed, min(max_new_tokens, ctx - len(ids) + 1), temperature)
    stream = StreamDecoder(model.tokenizer) if model.tokenizer is not None else None
    eos = model.tokenizer.eos_ids if model.tokenizer is not None else frozenset()

    model.weights(mode)  # prepare (fold) the weights before the clock starts
    cache = model.cache(len(ids) + max_new_tokens)  # room for the whole generation: no cache copy while decoding
    t0 = time.perf_counter()
    logits, cache = model.forward(ids, cache, mode, logits_to_keep=1)  # (1, V) prefill: the next token's row only
    row = logits[-1]  # (V,)
    del logits
    t1 = time.perf_counter()
    tokens: list[int] = []
    rows: list[Array] = []
    finish = "length"
    for k in range(max_new_tokens):
        if keep_logits:
            rows.append(np.asarray(row, dtype=np.float32))
        tok = choose_token(row, temperature=temperature, top_k=top_k, u=us[k])
        tokens.append(tok)
        if on_token is not None:
            on_token(tok, stream.push(tok) if stream is not None else "")
        if tok in eos:
            finish = "eos"
            break
        if k == max_new_tokens - 1:
            break
        if cache.length >= ctx:
            finish = "context"
            break
        step_logits, cache = model.forward([tok], cache, mode)  # (1, V)
        row = step_logits[-1]
    t2 = time.perf_counter()
    if on_token is not None and stream is not None:
        rest = stream.flush()
        if rest:
            on_token(-1, rest)
    text = model.tokenizer.decode(tokens) if model.tokenizer is not None else ""
    return Generation(
        mode=mode,
        prompt_ids=tuple(ids),
        tokens=tuple(tokens),
        text=text,
        finish_reason=finish,
        logits=np.stack(rows) if keep_logits else None,
        prefill_seconds=t1 - t0,
        decode_seconds=t2 - t1,
    )


def teacher_forced_logits(
    model: Model, ids: Sequence[int], tokens: Sequence[int], mode: Mode
) -> tuple[Array, float, float]:
    """(len(tokens), V) float32: the logits `mode` computes at every step of a generation that produced `tokens`
    after prompt `ids`, following exactly the calls `generate` makes (prefill, then one token per call); and the
    prefill and decode seconds."""
    model.weights(mode)
    t0 = time.perf_counter()
    logits, cache = model.forward(list(ids), model.cache(len(ids) + len(tokens)), mode, logits_to_keep=1)  # (1, V)
    rows = [np.asarray(logits[-1], dtype=np.float32)]
    del logits
    t1 = time.perf_counter()
    for tok in tokens[:-1]:
        step, cache = model.forward([tok], cache, mode)  # (1, V)
        rows.append(np.asarray(step[-1], dtype=np.float32))
    return np.stack(rows), t1 - t0, time.perf_counter() - t1  # (steps, V)


@dataclass(frozen=True)
class ModeComparison:
    """Both orders on one prompt. `runs[first]` generated freely; the other order's logits were computed along the
    same tokens (teacher forcing), so step k of both saw the same prefix."""

    runs: dict[str, Generation]
    first: Mode
    max_logit_diff: float  # max over steps and vocabulary of |logits_first - logits_other|, same prefixes
    logit_scale: float  # max |logit| over the same steps, for a relative reading of max_logit_diff
    identical: bool  # the other order chooses the same token at every step (so its free run is the same)
    first_divergence: int | None  # the first step where it would not


def compare_modes(
    model: Model,
    prompt: str | Sequence[int],
    max_new_tokens: int = 64,
    *,
    first: Mode = "fused",
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    chat: bool = True,
    on_token: Callable[[int, str], None] | None = None,
) -> ModeComparison:
    """Run `first` freely (streaming via on_token), then the other order teacher-forced along its tokens.

    If the other order would choose a different token at some step, it is also run freely, so `runs` holds both
    orders' real continuations; the logit difference is always measured along the same prefixes.
    """
    other: Mode = "baseline" if first == "fused" else "fused"
    a = generate(
        model, prompt, max_new_tokens, first, temperature=temperature, top_k=top_k, seed=seed, chat=chat,
        on_token=on_token, keep_logits=True,
    )  # fmt: skip
    assert a.logits is not None
    tf, prefill_s, decode_s = teacher_forced_logits(model, a.prompt_ids, a.tokens, other)  # (steps, V)
    us = _uniforms(seed, len(a.tokens), temperature)
    choices = [choose_token(tf[k], temperature=temperature, top_k=top_k, u=us[k]) for k in range(len(a.tokens))]
    diverge = next((k for k, (x, y) in enumerate(zip(choices, a.tokens, strict=True)) if x != y), None)
    if diverge is None:
        b = Generation(other, a.prompt_ids, a.tokens, a.text, a.finish_reason, tf, prefill_s, decode_s)
    else:
        b = generate(
            model, list(a.prompt_ids), max_new_tokens, other, temperature=temperature, top_k=top_k, seed=seed,
            chat=False, keep_logits=True,
        )  # fmt: skip
    return ModeComparison(
        runs={first: a, other: b},
        first=first,
        max_logit_diff=float(np.max(np.abs(a.logits.astype(np.float64) - tf))),
        logit_scale=float(np.max(np.abs(a.logits))),
        identical=diverge is None,
        first_divergence=diverge,
    )
