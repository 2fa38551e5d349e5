"""Llama weights: their names and shapes, seeded random weights, and the per-mode prepared (folded) form.

Names are the GGUF tensor names (`blk.{i}.attn_q.weight`, ...), so a file's tensors map one to one. Orientation
follows normfuse's row-vector convention: every linear weight is stored (n_in, n_out), the transpose of the
(out, in) layout of GGUF and HF files; loaders transpose once. `token_embd.weight` is the (V, d) lookup table.

`prepare(params, cfg, mode)` builds what `forward` reads, once per mode:
- both modes concatenate Q|K|V into one (d, (Hq + 2 Hkv) hd) matmul and gate|up into one (d, 2f) matmul, so
  baseline and fused issue the same matmul shapes and differ only in where the normalisation scale goes;
- "fused" also folds each RMSNorm gain into the weight that follows it (`fusion.fold_rms_norm`): g ⊙ F_qkv,
  g ⊙ F_gate_up and g ⊙ F_output. Folding happens here, offline, never inside the forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..fusion import fold_rms_norm
from ..precision import resolve_dtype
from .config import LlamaConfig

__all__ = ["Mode", "param_shapes", "prepare", "prepared_shapes", "random_params"]

Array = NDArray[Any]
Mode = Literal["baseline", "fused"]


def param_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape (row-vector orientation). The single source of truth for loaders."""
    d, f, hd = cfg.dim, cfg.ffn_dim, cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (d,),
            f"blk.{i}.attn_q.weight": (d, cfg.n_heads * hd),
            f"blk.{i}.attn_k.weight": (d, cfg.n_kv_heads * hd),
            f"blk.{i}.attn_v.weight": (d, cfg.n_kv_heads * hd),
            f"blk.{i}.attn_output.weight": (cfg.n_heads * hd, d),
            f"blk.{i}.ffn_norm.weight": (d,),
            f"blk.{i}.ffn_gate.weight": (d, f),
            f"blk.{i}.ffn_up.weight": (d, f),
            f"blk.{i}.ffn_down.weight": (f, d),
        }
    shapes["output_norm.weight"] = (d,)
    if not cfg.tied_embeddings:
        shapes["output.weight"] = (d, cfg.vocab_size)
    return shapes


def random_params(cfg: LlamaConfig, *, seed: int = 0, dtype: DTypeLike = np.float32) -> dict[str, Array]:
    """Seeded random weights of a plausible scale: N(0, 1/n_in) matrices, N(0, 1) embeddings, and norm gains
    1 + 0.1 N(0, 1) (not all ones, so folding a gain into a weight is a real change)."""
    rng = np.random.default_rng(seed)
    dt = resolve_dtype(dtype)
    params: dict[str, Array] = {}
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1:
            a = 1 + 0.1 * rng.standard_normal(shape)
        elif name == "token_embd.weight":
            a = rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[0])
        params[name] = a.astype(dt)
    return params


def prepare(params: Mapping[str, Array], cfg: LlamaConfig, mode: Mode) -> dict[str, Array]:
    """The weights `forward` reads in `mode` (see the module docstring). Copies; `params` is not modified."""
    if mode not in ("baseline", "fused"):
        raise ValueError(f"mode must be 'baseline' or 'fused'; got {mode!r}")
    missing = [k for k in param_shapes(cfg) if k not in params]
    if missing:
        raise ValueError(f"weights are missing {len(missing)} tensors, e.g. {missing[0]!r}")

    def site(g: Array, F: Array) -> Array:
        return fold_rms_norm(g, F) if mode == "fused" else F

    w: dict[str, Array] = {"token_embd": params["token_embd.weight"]}  # (V, d)
    for i in range(cfg.n_layers):
        b = f"blk.{i}"
        qkv = np.concatenate([params[f"{b}.attn_{x}.weight"] for x in "qkv"], axis=1)  # (d, (Hq + 2 Hkv) hd)
        gate_up = np.concatenate([params[f"{b}.ffn_gate.weight"], params[f"{b}.ffn_up.weight"]], axis=1)  # (d, 2f)
        w |= {
            f"{b}.attn_norm": params[f"{b}.attn_norm.weight"],  # (d,)
            f"{b}.attn_qkv": site(params[f"{b}.attn_norm.weight"], qkv),
            f"{b}.attn_output": params[f"{b}.attn_output.weight"],  # (Hq hd, d)
            f"{b}.ffn_norm": params[f"{b}.ffn_norm.weight"],  # (d,)
            f"{b}.ffn_gate_up": site(params[f"{b}.ffn_norm.weight"], gate_up),
            f"{b}.ffn_down": params[f"{b}.ffn_down.weight"],  # (f, d)
        }
    out = params["token_embd.weight"].T if cfg.tied_embeddings else params["output.weight"]  # (d, V)
    w["output_norm"] = params["output_norm.weight"]  # (d,)
    w["output"] = site(params["output_norm.weight"], out)  # (d, V)
    return w


def prepared_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes `prepare` returns (the same in both modes), for cost-only emulation without weights."""
    d, f, hd, V = cfg.dim, cfg.ffn_dim, cfg.head_dim, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"token_embd": (V, d)}
    for i in range(cfg.n_layers):
        b = f"blk.{i}"
        shapes |= {
            f"{b}.attn_norm": (d,),
            f"{b}.attn_qkv": (d, (cfg.n_heads + 2 * cfg.n_kv_heads) * hd),
            f"{b}.attn_output": (cfg.n_heads * hd, d),
            f"{b}.ffn_norm": (d,),
            f"{b}.ffn_gate_up": (d, 2 * f),
            f"{b}.ffn_down": (f, d),
        }
    return shapes | {"output_norm": (d,), "output": (d, V)}
