"""Load a BERT-family encoder and embed sentences with it, in textbook (baseline) or fused order.

    from normfuse_ref import load_model
    model = load_model("all-minilm-l6-v2")          # after: normfuse fetch all-minilm-l6-v2
    e = model.embed(["A cat sits on the mat.", "A dog lies on the rug."])   # (2, 384) unit vectors
    h = model.forward(batch.ids, batch.attention_mask, mode="baseline")     # (B, T, 384) hidden states

`load_model` here accepts
- "all-minilm-l6-v2" (any BERT-family name of the fetch registry): the fetched directory, found and checked
  (size and SHA-256 of every file) by `normfuse_ref.models.llama.fetch.find_model`;
- "tiny-bert": the `tiny-bert` preset with seeded random weights and a character-level WordPiece tokenizer, for
  tests and demos without a download (its embeddings mean nothing, deterministically);
- a path to an HF BERT directory (config.json + *.safetensors [+ tokenizer.json]; `hf_loader`).

Sentence embedding (sentence-transformers' all-MiniLM-L6-v2 pipeline: Transformer -> mean Pooling -> Normalize):
the mean of the last hidden states over the text's real tokens ([CLS] and [SEP] included, padding excluded), then
divided by its Euclidean norm. Pooling is not a fusion site; it runs in float64 on the hidden states and the
result is rounded once to the model's dtype.

Texts are embedded `batch_size` at a time in order of token length, each group padded to its own longest text (padding
costs only the attention's products: `forward` packs the rest); a text's embedding does not depend on the group it
is in, up to rounding (tests/test_bert_model.py checks it), and comes back in the order the texts were given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ...accuracy.bounds import forward_bound, pooled_bound
from ...extras import require
from ...fields import positive_int
from ...precision import resolve_dtype
from ..loaded import LoadedModel
from .config import PRESETS, BertConfig, get_preset
from .forward import forward
from .tokenizer import Batch, WordPieceTokenizer, tiny_wordpiece
from .weights import Mode, prepare, random_params

__all__ = [
    "MODEL_DTYPES",
    "RANDOM_PRESETS",
    "BertModel",
    "ModeComparison",
    "compare_modes",
    "embedding_bound",
    "fetched_names",
    "hidden_bound",
    "load_model",
    "mean_pool",
]

Array = NDArray[Any]

#: Storage dtypes a model can be loaded in (activations and weights; accumulation per `precision`).
MODEL_DTYPES = ("float32", "float64", "float16", "bfloat16")

#: Presets that `load_model` fills with seeded random weights.
RANDOM_PRESETS = ("tiny-bert",)


def fetched_names() -> tuple[str, ...]:
    """The BERT-family models of the fetch registry (`normfuse fetch NAME` installs them)."""
    from ..llama.fetch import SOURCES

    return tuple(name for name, src in SOURCES.items() if src.family == "bert")


def mean_pool(hidden: ArrayLike, attention_mask: ArrayLike) -> NDArray[np.float64]:
    """Masked mean of hidden states (B, T, d) over real tokens (mask (B, T) of 0/1), L2-normalised: (B, d) float64."""
    h = np.asarray(hidden, dtype=np.float64)  # (B, T, d)
    m = np.asarray(attention_mask, dtype=np.float64)[..., None]  # (B, T, 1)
    count = m.sum(axis=-2)  # (B, 1)
    if (count == 0).any():
        raise ValueError("a sequence has no real tokens (its attention mask is all zeros); it has no embedding")
    mean = (h * m).sum(axis=-2) / count  # (B, d)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)  # (B, d)


def hidden_bound(cfg: BertConfig, hidden: ArrayLike, dtype: DTypeLike = "float32") -> float:
    """How far apart two roundings in storage `dtype` of the same hidden states may be (`accuracy.bounds.forward_bound`)
    given the real tokens' rows `hidden` (their largest magnitude sets the scale).

    BERT has K = 6 L + 1 products in series (Q|K|V, q k^T, p V, the attention output, FFN up and down per block, and
    the embedding sum's LayerNorm counted as one more) of length at most max(d, f). For all-MiniLM-L6-v2 in float32
    this is 6.9e-4 max|h| (max|h| ~ 6); measured differences are ~3e-6 (docs/models.md, "BERT")."""
    scale = float(np.abs(np.asarray(hidden, dtype=np.float64)).max())
    return forward_bound(n_max=max(cfg.dim, cfg.ffn_dim), products=6 * cfg.n_layers + 1, dtype=dtype, scale=scale)


def embedding_bound(
    cfg: BertConfig, hidden: ArrayLike, attention_mask: ArrayLike, dtype: DTypeLike = "float32"
) -> float:
    """Bound on every component of |e_a - e_b| for the sentence embeddings of hidden states (B, T, d) with mask
    (B, T): `accuracy.bounds.pooled_bound` of `hidden_bound`, at the smallest mean of the batch."""
    h = np.asarray(hidden, dtype=np.float64)  # (B, T, d)
    keep = np.asarray(attention_mask, dtype=np.float64)[..., None]  # (B, T, 1)
    m = (h * keep).sum(axis=-2) / keep.sum(axis=-2)  # (B, d)
    delta = hidden_bound(cfg, h[keep[..., 0] > 0], dtype)
    return pooled_bound(delta, float(np.linalg.norm(m, axis=-1).min()))


@dataclass(frozen=True)
class BertModel(LoadedModel[BertConfig, WordPieceTokenizer]):
    """A BERT encoder ready to run (`LoadedModel`: config, weights under their safetensors names, tokenizer, dtype)."""

    def prepare_weights(self, mode: Mode) -> Mapping[str, Array]:
        return prepare(self.params, self.cfg, mode)

    def forward(
        self,
        ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        mode: Mode = "fused",
        *,
        token_type_ids: ArrayLike | None = None,
    ) -> Array:
        """Last hidden states ([B,] T, d) of token ids ([B,] T); see `forward.forward`."""
        return forward(self.weights(mode), self.cfg, ids, attention_mask, token_type_ids, mode=mode, ex=self.executor())

    def tokenize(self, texts: Iterable[str], *, truncate: bool = False) -> Batch:
        """Ids and attention mask of `texts`, padded to the longest; a text longer than the model's positions is a
        `TextTooLong` error unless `truncate` (then `Batch.truncated` says which texts were cut)."""
        if self.tokenizer is None:
            raise ValueError(f"model {self.cfg.name} has no tokenizer (no tokenizer.json); pass token ids to forward")
        return self.tokenizer.encode_batch(texts, self.cfg.max_positions, truncate=truncate)

    def groups(self, batch: Batch, batch_size: int = 32) -> Iterator[tuple[NDArray[np.int64], Array, Array]]:
        """(indices into the batch, ids, attention_mask) of `batch_size` texts at a time, in order of token length
        (a stable sort), each group cut to its own longest text: texts of like length share a group, so the
        attention's products, the only work padding still costs (`forward.packed`), pad little."""
        positive_int(batch_size, "batch_size")
        order = np.argsort(np.asarray(batch.lengths), kind="stable")  # (B,)
        for j in range(0, order.size, batch_size):
            idx = order[j : j + batch_size]  # (b,)
            T = max(batch.lengths[i] for i in idx)  # this group's longest text
            yield idx, batch.ids[idx, :T], batch.attention_mask[idx, :T]  # (b,), (b, T), (b, T)

    def embed_batch(self, batch: Batch, mode: Mode = "fused", *, batch_size: int = 32) -> Array:
        """Unit-norm sentence embeddings (B, d) of a tokenised batch, in the model's dtype, in the batch's order."""
        out = np.empty((len(batch.lengths), self.cfg.dim), dtype=np.float64)  # (B, d)
        for idx, ids, mask in self.groups(batch, batch_size):
            out[idx] = mean_pool(self.forward(ids, mask, mode), mask)  # (b, d)
        return out.astype(self.dtype)  # (B, d)

    def embed(
        self, texts: Iterable[str], mode: Mode = "fused", *, truncate: bool = False, batch_size: int = 32
    ) -> Array:
        """Unit-norm sentence embeddings (B, d) of `texts` (masked mean pooling, L2 normalisation)."""
        return self.embed_batch(self.tokenize(texts, truncate=truncate), mode, batch_size=batch_size)


def load_model(
    name_or_path: str | Path,
    dtype: DTypeLike = "float32",
    *,
    seed: int = 0,
    on_tensor: Callable[[int, int], None] | None = None,
) -> BertModel:
    """A BERT model by name ("all-minilm-l6-v2", "tiny-bert") or HF directory path; see the module docstring.
    `on_tensor(done, total)` reports the weights read so far (for a progress display).

    Errors, one line each: FileNotFoundError for a model that is not there (a registry model says
    `run: normfuse fetch NAME`), ValueError for a damaged, changed or unsupported file (UnsupportedArchitecture for
    another architecture), MissingExtra when the model readers are not installed."""
    from .hf_loader import read_bert_dir

    dt = resolve_dtype(dtype)
    if dt.name not in MODEL_DTYPES:
        raise ValueError(f"dtype {dt.name!r} is not a model dtype; choose one of {', '.join(MODEL_DTYPES)}")
    name = str(name_or_path)
    require("model", "a BERT model")  # tokenizers for text, scipy for GELU, safetensors for the weights
    if name in RANDOM_PRESETS:
        cfg = get_preset(name)
        tok = tiny_wordpiece()
        return BertModel(cfg, random_params(cfg, seed=seed, dtype=dt), tok, dt, f"random weights, seed {seed}")
    if name in PRESETS and name not in fetched_names():
        models = ", ".join((*fetched_names(), *RANDOM_PRESETS))
        raise ValueError(f"preset {name!r} is shape-only (no weights); models: {models}, or an HF BERT directory")
    if name in fetched_names():
        from ..llama.fetch import find_model

        ck = read_bert_dir(find_model(name), dtype=dt, name=name, on_tensor=on_tensor)
    else:
        ck = read_bert_dir(name, dtype=dt, on_tensor=on_tensor)
    if ck.tokenizer is not None and ck.tokenizer.vocab_size > ck.cfg.vocab_size:
        raise ValueError(
            f"{ck.path}: tokenizer.json has {ck.tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"{ck.cfg.vocab_size}; they do not belong together"
        )
    return BertModel(ck.cfg, ck.params, ck.tokenizer, dt, str(ck.path))


# ---------------------------------------------------------------------------------------------------------------
# Both orders on the same texts
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeComparison:
    """The same texts embedded in both orders, and how far apart the orders are against the rounding bound."""

    batch: Batch
    embeddings: dict[str, Array]  # mode -> (B, d) unit vectors
    max_abs_diff: float  # max over texts and components of |fused - baseline| (embeddings)
    min_cosine: float  # min over texts of cos(fused_i, baseline_i), computed in float64
    max_hidden_diff: float  # max over real tokens of |fused - baseline| (last hidden states)
    bound: float  # `embedding_bound` of the baseline hidden states: what rounding alone can explain

    @property
    def checked(self) -> bool:
        """The bound says something: it is smaller than the embeddings' largest component (docs/numerics.md,
        "Equivalent": a bound as large as the result itself leaves the comparison unchecked; in float16 and
        bfloat16 the probabilistic bound exceeds 1 for all-MiniLM-L6-v2)."""
        return self.bound < float(np.abs(self.embeddings["baseline"]).max())

    @property
    def within_bound(self) -> bool:
        """The embeddings differ by no more than two roundings of the same computation can (`embedding_bound`)."""
        return self.max_abs_diff <= self.bound


def compare_modes(
    model: BertModel, texts: Sequence[str], *, truncate: bool = False, batch_size: int = 32
) -> ModeComparison:
    """Embed `texts` in fused and in baseline order (same tokens, same groups) and measure how far apart they are."""
    batch = model.tokenize(texts, truncate=truncate)
    pooled = {m: np.empty((len(texts), model.cfg.dim)) for m in ("fused", "baseline")}  # mode -> (B, d)
    hidden_diff, bound = 0.0, 0.0
    for idx, ids, mask in model.groups(batch, batch_size):
        h = {m: model.forward(ids, mask, m) for m in ("fused", "baseline")}
        keep = mask.astype(bool)  # (b, T)
        hidden_diff = max(hidden_diff, float(np.abs(h["fused"].astype(np.float64) - h["baseline"])[keep].max()))
        bound = max(bound, embedding_bound(model.cfg, h["baseline"], mask, model.dtype))
        for m, hm in h.items():
            pooled[m][idx] = mean_pool(hm, mask)  # (b, d)
    e = {m: p.astype(model.dtype) for m, p in pooled.items()}  # mode -> (B, d)
    f, b = e["fused"].astype(np.float64), e["baseline"].astype(np.float64)  # (B, d)
    cos = np.sum(f * b, axis=-1) / (np.linalg.norm(f, axis=-1) * np.linalg.norm(b, axis=-1))  # (B,)
    return ModeComparison(batch, e, float(np.max(np.abs(f - b))), float(np.min(cos)), hidden_diff, bound)
