"""Pre-LayerNorm decoder hyper-parameters (GPT-2, OPT): one frozen dataclass, the named presets, and the reading of
an HF config.json.

Shape letters used across normfuse_ref.models.gpt (docs/notation.md, "Notation"):
    T   tokens in this call          S   key/value positions (cache + T)
    d   model width (dim)            f   FFN hidden width (ffn_dim)
    H   attention heads (n_heads; every head has its own keys and values)      hd = d / H
    V   vocabulary size              P   learned positions (context_length)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ... import fields
from .. import UnsupportedArchitecture

__all__ = ["ACTIVATIONS", "MODEL_TYPES", "PRESETS", "GptConfig", "config_from_hf", "get_preset"]

#: The FFN activations of the family, by the name of the elementwise op the forward issues (and the emulator prices).
Activation = Literal["gelu_tanh", "relu", "gelu"]
ACTIVATIONS: tuple[str, ...] = ("gelu_tanh", "relu", "gelu")


@dataclass(frozen=True)
class GptConfig:
    """A pre-LayerNorm decoder: learned absolute positions, a bias on every linear layer, LayerNorm before attention
    and before the FFN, a final LayerNorm, and an lm head tied to the token embeddings."""

    name: str  # preset or file name, for display
    dim: int  # d: width of the residual stream
    n_layers: int  # decoder blocks
    n_heads: int  # H: attention heads (no grouped-query attention in GPT-2 or OPT)
    ffn_dim: int  # f: width of the FFN's hidden layer
    vocab_size: int  # V
    context_length: int  # P: learned position embeddings, so the longest sequence (cache + prompt) in tokens
    norm_eps: float  # LayerNorm epsilon: 1e-5 in GPT-2 and OPT
    activation: Activation  # gelu_tanh (GPT-2's "gelu_new"), relu (OPT), gelu (exact, erf)
    position_offset: int = 0  # OPT's learned positions start at row 2 of the table (HF OPTLearnedPositionalEmbedding)
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        for f in ("dim", "n_layers", "n_heads", "ffn_dim", "vocab_size", "context_length"):
            if getattr(self, f) < 1:
                raise ValueError(f"GptConfig.{f} must be >= 1; got {getattr(self, f)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0; got {self.norm_eps}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}")
        if self.position_offset < 0:
            raise ValueError(f"position_offset must be >= 0; got {self.position_offset}")

    @property
    def head_dim(self) -> int:  # hd
        return self.dim // self.n_heads

    @property
    def n_kv_heads(self) -> int:  # every head has its own keys and values
        return self.n_heads

    def replace(self, **changes: object) -> GptConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_GPT2 = (
    "Radford et al. 2019, Language Models are Unsupervised Multitask Learners, Table 2 (1542M: 48 layers, d 1600), "
    "and openai-community/gpt2-xl config.json (n_head 25, n_inner null = 4 d, n_positions 1024, vocab 50257, "
    "layer_norm_epsilon 1e-5, activation_function gelu_new)"
)
_OPT = (
    "Zhang et al. 2022, OPT: Open Pre-trained Transformer Language Models (arXiv 2205.01068) Table 1 (66B: 64 "
    "layers, 72 heads, d 9216), and facebook/opt-66b config.json (ffn_dim 36864, max_position_embeddings 2048, "
    "vocab 50272, activation_function relu, do_layer_norm_before true)"
)

PRESETS: dict[str, GptConfig] = {
    # Random weights for tests: 4 heads so head splitting is exercised, an FFN width unequal to 4 d so a transposed
    # weight cannot pass by a coincidence of shapes; one GPT-2-like (tanh GELU), one OPT-like (ReLU, offset 2).
    "tiny-opt": GptConfig(
        "tiny-opt",
        dim=32,
        n_layers=2,
        n_heads=4,
        ffn_dim=80,
        vocab_size=96,
        context_length=64,
        norm_eps=1e-5,
        activation="relu",
        position_offset=2,
        source="normfuse test preset",
    ),
    "tiny-gpt": GptConfig(
        "tiny-gpt",
        dim=32,
        n_layers=2,
        n_heads=4,
        ffn_dim=80,
        vocab_size=96,
        context_length=64,
        norm_eps=1e-5,
        activation="gelu_tanh",
        source="normfuse test preset",
    ),
    # Shape-only presets for the emulator (no weights are fetched).
    "gpt2-xl": GptConfig(
        "gpt2-xl",
        dim=1600,
        n_layers=48,
        n_heads=25,
        ffn_dim=6400,
        vocab_size=50257,
        context_length=1024,
        norm_eps=1e-5,
        activation="gelu_tanh",
        source=_GPT2,
    ),
    "opt-66b": GptConfig(
        "opt-66b",
        dim=9216,
        n_layers=64,
        n_heads=72,
        ffn_dim=36864,
        vocab_size=50272,
        context_length=2048,
        norm_eps=1e-5,
        activation="relu",
        position_offset=2,
        source=_OPT,
    ),
}


def get_preset(name: str) -> GptConfig:
    """A preset by name; ValueError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown GPT preset {name!r}; known: {', '.join(PRESETS)}") from None


#: model_type values of HF config.json files this family reads.
MODEL_TYPES = ("gpt2", "opt")

#: HF activation_function names -> the family's.
_HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "gelu": "gelu"}


def config_from_hf(raw: Mapping[str, Any], path: Path, name: str | None = None) -> GptConfig:
    """A GptConfig from the dict of an HF config.json (`path`: the file); UnsupportedArchitecture for what the
    family does not run (another model_type, post-LN OPT, OPT's embedding projection, another activation),
    `fields.FieldError` naming the file and the field for a missing or malformed value."""
    src = str(path)
    kind = raw.get("model_type")
    if kind not in MODEL_TYPES:
        raise UnsupportedArchitecture(f"{src}: model_type is {kind!r}, but the GPT family reads only gpt2 and opt")
    act_key = "activation_function"
    act = fields.string(raw, act_key, src, default="gelu_new" if kind == "gpt2" else "relu")
    if act not in _HF_ACTIVATIONS:
        raise UnsupportedArchitecture(f"{src}: {act_key} {act!r} is not supported (only {', '.join(_HF_ACTIVATIONS)})")
    if kind == "gpt2":
        dim = fields.integer(raw, "n_embd", src, minimum=1)
        inner = raw.get("n_inner")
        values = {
            "dim": dim,
            "n_layers": fields.integer(raw, "n_layer", src, minimum=1),
            "n_heads": fields.integer(raw, "n_head", src, minimum=1),
            "ffn_dim": 4 * dim if inner is None else fields.integer(raw, "n_inner", src, minimum=1),
            "vocab_size": fields.integer(raw, "vocab_size", src, minimum=1),
            "context_length": fields.integer(raw, "n_positions", src, minimum=1),
            "norm_eps": fields.number(raw, "layer_norm_epsilon", src, positive=True, default=1e-5),
            "position_offset": 0,
        }
    else:
        if not fields.boolean(raw, "do_layer_norm_before", src, default=True):
            raise UnsupportedArchitecture(f"{src}: post-LayerNorm OPT (do_layer_norm_before false) is not supported")
        dim = fields.integer(raw, "hidden_size", src, minimum=1)
        proj = raw.get("word_embed_proj_dim")
        if proj is not None and fields.integer(raw, "word_embed_proj_dim", src, minimum=1) != dim:
            raise UnsupportedArchitecture(f"{src}: word_embed_proj_dim {proj} != hidden_size {dim} is not supported")
        values = {
            "dim": dim,
            "n_layers": fields.integer(raw, "num_hidden_layers", src, minimum=1),
            "n_heads": fields.integer(raw, "num_attention_heads", src, minimum=1),
            "ffn_dim": fields.integer(raw, "ffn_dim", src, minimum=1),
            "vocab_size": fields.integer(raw, "vocab_size", src, minimum=1),
            "context_length": fields.integer(raw, "max_position_embeddings", src, minimum=1),
            "norm_eps": 1e-5,  # OPT's LayerNorms use torch's default; its config.json has no field for it
            "position_offset": 2,
        }
    return fields.construct(
        GptConfig, src, name=name or path.stem, activation=_HF_ACTIVATIONS[act], source=src, **values
    )
