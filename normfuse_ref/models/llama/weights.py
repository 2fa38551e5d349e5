"""Llama weights: their names and shapes, seeded random weights, and the per-mode prepared (folded) form.

Names are the GGUF tensor names (`blk.{i}.attn_q.weight`, ...), so a file's tensors map one to one. Orientation
follows normfuse's row-vector convention: every linear weight is stored (n_in, n_out), the transpose of the
(out, in) layout of GGUF and HF files; loaders transpose once. `token_embd.weight` is the (V, d) lookup table.

`prepare(params, cfg, mode)` builds what `forward` reads, once per mode:
- both modes concatenate Q|K|V into one (d, (Hq + 2 Hkv) hd) matmul and gate|up into one (d, 2f) matmul, so
  baseline and fused issue the same matmul shapes and differ only in where the normalisation scale goes;
- "fused" also folds each RMSNorm gain into the weight that follows it (`fusion.fold_rms_norm`): g ⊙ F_qkv,
  g ⊙ F_gate_up and g ⊙ F_output. Folding happens here, offline, never inside the forward pass.

Memory: when Q, K, V (or gate, up) already are adjacent column views of one buffer, as the loaders store them,
the baseline weights are views of `params` rather than copies; a 135M-parameter model then costs its float32
weights once, plus the folded copies of the fused mode and a row-major copy of a tied output head. Prepared arrays
are never written to.

RoPE layouts: `convert_rope_layout` permutes the Q and K columns between the "half" pairing of HF checkpoints
and the "interleaved" pairing of GGUF files (llama.cpp's converter applies the same permutation to HF weights).
Attention scores are sums over the head dimension, so permuting Q and K alike changes only their summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
from numpy.typing import DTypeLike

from ...fusion import fold_rms_norm
from ...precision import Array, resolve_dtype
from .config import LlamaConfig

__all__ = [
    "Mode",
    "convert_rope_layout",
    "pack_blocks",
    "pack_blocks_inplace",
    "param_shapes",
    "prepare",
    "prepare_block",
    "prepared_shapes",
    "random_params",
]

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


def pack_blocks(params: Mapping[str, Array], cfg: LlamaConfig) -> dict[str, Array]:
    """The same weights with each block's Q, K, V (and gate, up) stored as adjacent column views of one
    C-contiguous buffer, and every other tensor C-contiguous, so that `prepare` shares those buffers instead of
    concatenating (see "Memory" above). `params` is not modified."""
    return pack_blocks_inplace(dict(params), cfg)


def pack_blocks_inplace(params: dict[str, Array], cfg: LlamaConfig) -> dict[str, Array]:
    """`pack_blocks` on a dict the caller owns: replaced arrays are dropped as it goes, so peak memory stays near
    one copy of the weights plus one block."""
    grouped: set[str] = set()
    for i in range(cfg.n_layers):
        b = f"blk.{i}"
        for group in ([f"{b}.attn_{x}.weight" for x in "qkv"], [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"]):
            widths = [params[k].shape[1] for k in group]
            first = params[group[0]]
            buf = np.empty((first.shape[0], sum(widths)), dtype=first.dtype)  # (d, sum m_i), C order
            start = 0
            for k, m in zip(group, widths, strict=True):
                buf[:, start : start + m] = params.pop(k)
                params[k] = buf[:, start : start + m]  # (d, m), a view
                start += m
            grouped.update(group)
    for k in params.keys() - grouped:
        params[k] = np.ascontiguousarray(params[k])
    return params


def _concat_columns(parts: list[Array]) -> Array:
    """np.concatenate(parts, axis=1), or a view when the parts already are adjacent column blocks of one buffer."""
    base = parts[0].base
    if (
        isinstance(base, np.ndarray)
        and base.ndim == 2
        and base.flags.c_contiguous
        and all(p.base is base and p.ndim == 2 and p.strides == base.strides for p in parts)
    ):
        item = base.itemsize
        start = (parts[0].__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item
        col = start
        for p in parts:
            if (p.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item != col:
                break
            col += p.shape[1]
        else:
            if parts[0].shape[0] == base.shape[0]:
                return base[:, start:col]  # (n, sum m_i), a view
    return np.concatenate(parts, axis=1)


#: Fold big matrices this many columns at a time: `fold_rms_norm` works in float64, which for a (d, V) output
#: head would briefly cost four times the float32 matrix.
_FOLD_COLUMNS = 4096


#: How a gain is folded into the weight that follows it: fold(g, F) -> g ⊙ F, stored in the dtype it chooses.
Fold = Callable[[Array, Array], Array]


def _fold(g: Array, F: Array, fold: Fold) -> Array:
    """fold(g, F) (by default g ⊙ F rounded once to F's dtype), computed in column blocks to bound peak memory
    (`fold` must act on columns independently)."""
    if F.shape[1] <= _FOLD_COLUMNS:
        return fold(g, F)
    first = fold(g, F[:, :_FOLD_COLUMNS])  # (n, C)   its dtype is the fold's choice
    out = np.empty(F.shape, dtype=first.dtype)  # (n, m)
    out[:, :_FOLD_COLUMNS] = first
    for j in range(_FOLD_COLUMNS, F.shape[1], _FOLD_COLUMNS):
        out[:, j : j + _FOLD_COLUMNS] = fold(g, F[:, j : j + _FOLD_COLUMNS])
    return out


def _site(g: Array, F: Array, mode: Mode, fold: Fold) -> Array:
    """The weight of an RMSNorm -> linear site as `mode` reads it: g ⊙ F in fused mode, F in baseline."""
    return _fold(g, F, fold) if mode == "fused" else F


def prepare_block(
    params: Mapping[str, Array], layer: int, mode: Mode, *, fold: Fold = fold_rms_norm
) -> dict[str, Array]:
    """The weights of decoder block `layer` that `forward.decoder_block` reads in `mode` (see `prepare`)."""
    b = f"blk.{layer}"
    qkv = _concat_columns([params[f"{b}.attn_{x}.weight"] for x in "qkv"])  # (d, (Hq + 2 Hkv) hd)
    gate_up = _concat_columns([params[f"{b}.ffn_gate.weight"], params[f"{b}.ffn_up.weight"]])  # (d, 2f)
    return {
        f"{b}.attn_norm": params[f"{b}.attn_norm.weight"],  # (d,)
        f"{b}.attn_qkv": _site(params[f"{b}.attn_norm.weight"], qkv, mode, fold),
        f"{b}.attn_output": params[f"{b}.attn_output.weight"],  # (Hq hd, d)
        f"{b}.ffn_norm": params[f"{b}.ffn_norm.weight"],  # (d,)
        f"{b}.ffn_gate_up": _site(params[f"{b}.ffn_norm.weight"], gate_up, mode, fold),
        f"{b}.ffn_down": params[f"{b}.ffn_down.weight"],  # (f, d)
    }


def prepare(
    params: Mapping[str, Array], cfg: LlamaConfig, mode: Mode, *, fold: Fold = fold_rms_norm
) -> dict[str, Array]:
    """The weights `forward` reads in `mode` (see the module docstring). `params` is not modified; the result may
    share memory with it (see "Memory" above), so treat both as read-only.

    `fold` folds each gain in fused mode: by default `fusion.fold_rms_norm`, stored in the weight's own dtype; the
    accuracy study passes e.g. `functools.partial(fold_rms_norm, dtype="float32")` to fold into a wider dtype."""
    if mode not in ("baseline", "fused"):
        raise ValueError(f"mode must be 'baseline' or 'fused'; got {mode!r}")
    missing = [k for k in param_shapes(cfg) if k not in params]
    if missing:
        raise ValueError(f"weights are missing {len(missing)} tensors, e.g. {missing[0]!r}")
    w: dict[str, Array] = {"token_embd": params["token_embd.weight"]}  # (V, d)
    for i in range(cfg.n_layers):
        w |= prepare_block(params, i, mode, fold=fold)
    out = params["token_embd.weight"].T if cfg.tied_embeddings else params["output.weight"]  # (d, V)
    w["output_norm"] = params["output_norm.weight"]  # (d,)
    # Both modes hold the head row-major: BLAS streams a tied head through the transposed (V, d) embedding ~35%
    # slower in a decode step's matrix-vector product (bench/README.md), and the head is a fifth of the weights.
    w["output"] = np.ascontiguousarray(_site(params["output_norm.weight"], out, mode, fold))  # (d, V)
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


def _permute_heads(F: Array, n_heads: int, to: str) -> Array:
    """Reorder the columns of each head of F (n, H hd) between the two RoPE pairings.

    interleaved -> half: head column 2i + a (pair i, member a) moves to a hd/2 + i; half -> interleaved undoes it.
    """
    n, width = F.shape
    hd = width // n_heads
    if to == "half":
        out = F.reshape(n, n_heads, hd // 2, 2).swapaxes(-1, -2)  # (n, H, 2, hd/2)
    else:
        out = F.reshape(n, n_heads, 2, hd // 2).swapaxes(-1, -2)  # (n, H, hd/2, 2)
    return np.ascontiguousarray(out.reshape(n, width))  # (n, H hd)


def convert_rope_layout(
    params: Mapping[str, Array], cfg: LlamaConfig, layout: str
) -> tuple[dict[str, Array], LlamaConfig]:
    """The same model with its Q and K columns permuted to RoPE pairing `layout` ("half" or "interleaved").

    Returns new params (Q and K permuted copies, everything else shared) and `cfg` with `rope_layout=layout`.
    """
    if layout not in ("half", "interleaved"):
        raise ValueError(f"layout must be 'half' or 'interleaved'; got {layout!r}")
    if layout == cfg.rope_layout:
        return dict(params), cfg
    out = dict(params)
    for i in range(cfg.n_layers):
        out[f"blk.{i}.attn_q.weight"] = _permute_heads(params[f"blk.{i}.attn_q.weight"], cfg.n_heads, layout)
        out[f"blk.{i}.attn_k.weight"] = _permute_heads(params[f"blk.{i}.attn_k.weight"], cfg.n_kv_heads, layout)
    return out, cfg.replace(rope_layout=layout)
