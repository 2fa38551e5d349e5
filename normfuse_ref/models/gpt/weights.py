"""Weights of the pre-LayerNorm decoder family: names and shapes, seeded random weights, the per-mode prepared form.

Source names are HF GPT-2's (`wte.weight`, `h.{i}.attn.c_attn.weight`, ...): GPT-2 stores its linear layers as
Conv1D weights of shape (n_in, n_out), which is normfuse's row-vector orientation already, and Q|K|V as one (d, 3d)
matrix. (OPT's checkpoints name and split them differently; the family runs OPT shape-only, and numerically on the
random `tiny-opt`, whose weights use these names.) The lm head is tied to the token embeddings: F = wte^T.

`prepare(params, cfg, mode)` builds what `forward` reads, once per mode. Each LayerNorm feeds one linear layer
(pre-LN: ln_1 -> Q|K|V, ln_2 -> FFN up, ln_f -> the lm head), so in "fused" mode every LayerNorm is folded into it
(`fusion.fold_layer_norm`, offline, in float64, rounded once): F' = (I - E/n) Gamma F and b' = beta F + b (the lm
head has no bias of its own: b' = beta F). gamma and beta stay in the prepared weights of the baseline only.

Prepared names: `wte` (V, d), `wpe` (P + offset, d), per block `blk.{i}.`: `attn_norm.gamma`/`.beta`, `attn_qkv`
(d, 3d) and `attn_qkv_bias`, `attn_output` (d, d) and its bias, `ffn_norm.gamma`/`.beta`, `ffn_up` (d, f) and its
bias, `ffn_down` (f, d) and its bias; `output_norm.gamma`/`.beta`, `output` (d, V), and in fused mode `output_bias`
(V,) = beta_f F.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ...fusion import fold_layer_norm
from ...precision import resolve_dtype
from ..llama.weights import Mode  # one vocabulary of orders for every family
from .config import GptConfig

__all__ = ["Mode", "param_shapes", "prepare", "prepared_shapes", "random_params"]

Array = NDArray[Any]


def param_shapes(cfg: GptConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape (row-vector orientation)."""
    d, f = cfg.dim, cfg.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (cfg.vocab_size, d),
        "wpe.weight": (cfg.context_length + cfg.position_offset, d),
    }
    for i in range(cfg.n_layers):
        b = f"h.{i}"
        for name, n, m in (("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, f), ("mlp.c_proj", f, d)):
            shapes |= {f"{b}.{name}.weight": (n, m), f"{b}.{name}.bias": (m,)}
        for ln in ("ln_1", "ln_2"):
            shapes |= {f"{b}.{ln}.weight": (d,), f"{b}.{ln}.bias": (d,)}
    return shapes | {"ln_f.weight": (d,), "ln_f.bias": (d,)}


def random_params(cfg: GptConfig, *, seed: int = 0, dtype: DTypeLike = np.float32) -> dict[str, Array]:
    """Seeded random weights of a plausible scale: N(0, 1/n_in) matrices, N(0, 1) embeddings, biases 0.1 N(0, 1),
    LayerNorm gains 1 + 0.1 N(0, 1) and biases 0.1 N(0, 1) (not 1 and 0, so that folding them is a real change)."""
    rng = np.random.default_rng(seed)
    dt = resolve_dtype(dtype)
    params: dict[str, Array] = {}
    for name, shape in param_shapes(cfg).items():
        if "ln_" in name and name.endswith(".weight"):
            a = 1 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            a = 0.1 * rng.standard_normal(shape)
        elif name.startswith("w"):
            a = rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[0])
        params[name] = a.astype(dt)
    return params


def prepare(params: Mapping[str, Array], cfg: GptConfig, mode: Mode) -> dict[str, Array]:
    """The weights `forward` reads in `mode` (see the module docstring); `params` is not modified."""
    if mode not in ("baseline", "fused"):
        raise ValueError(f"mode must be 'baseline' or 'fused'; got {mode!r}")
    missing = [k for k in param_shapes(cfg) if k not in params]
    if missing:
        raise ValueError(f"weights are missing {len(missing)} tensors, e.g. {missing[0]!r}")

    def site(prefix: str, ln: str, F: Array, b: Array | None) -> dict[str, Array]:
        """A LayerNorm -> linear site: gamma, beta, F, b as stored (baseline), or F', b' folded (fused)."""
        gamma, beta = params[f"{ln}.weight"], params[f"{ln}.bias"]
        if mode == "baseline":
            out = {f"{prefix}_norm.gamma": gamma, f"{prefix}_norm.beta": beta, prefix: F}
            return out if b is None else out | {f"{prefix}_bias": b}
        F_prime, bF = fold_layer_norm(gamma, beta, F, dtype=np.float64)  # (n, m), (m,)
        b_prime = bF if b is None else bF + b.astype(np.float64)  # b' = beta F + b
        return {prefix: F_prime.astype(F.dtype), f"{prefix}_bias": b_prime.astype(F.dtype)}

    w: dict[str, Array] = {"wte": params["wte.weight"], "wpe": params["wpe.weight"]}  # (V, d), (P + offset, d)
    for i in range(cfg.n_layers):
        h, b = f"h.{i}", f"blk.{i}"
        qkv = site(f"{b}.attn_qkv", f"{h}.ln_1", params[f"{h}.attn.c_attn.weight"], params[f"{h}.attn.c_attn.bias"])
        up = site(f"{b}.ffn_up", f"{h}.ln_2", params[f"{h}.mlp.c_fc.weight"], params[f"{h}.mlp.c_fc.bias"])
        w |= {k.replace("attn_qkv_norm", "attn_norm"): v for k, v in qkv.items()}
        w |= {k.replace("ffn_up_norm", "ffn_norm"): v for k, v in up.items()}
        w[f"{b}.attn_output"] = params[f"{h}.attn.c_proj.weight"]  # (d, d)
        w[f"{b}.attn_output_bias"] = params[f"{h}.attn.c_proj.bias"]  # (d,)
        w[f"{b}.ffn_down"] = params[f"{h}.mlp.c_proj.weight"]  # (f, d)
        w[f"{b}.ffn_down_bias"] = params[f"{h}.mlp.c_proj.bias"]  # (d,)
    head = site("output", "ln_f", np.ascontiguousarray(params["wte.weight"].T), None)  # tied: F = wte^T (d, V)
    return w | head


def prepared_shapes(cfg: GptConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes of both modes' prepared weights (their union), for cost-only emulation without weights:
    each mode's forward reads only its own."""
    d, f, V = cfg.dim, cfg.ffn_dim, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte": (V, d), "wpe": (cfg.context_length + cfg.position_offset, d)}
    for i in range(cfg.n_layers):
        b = f"blk.{i}"
        shapes |= {
            f"{b}.attn_norm.gamma": (d,),
            f"{b}.attn_norm.beta": (d,),
            f"{b}.attn_qkv": (d, 3 * d),
            f"{b}.attn_qkv_bias": (3 * d,),
            f"{b}.attn_output": (d, d),
            f"{b}.attn_output_bias": (d,),
            f"{b}.ffn_norm.gamma": (d,),
            f"{b}.ffn_norm.beta": (d,),
            f"{b}.ffn_up": (d, f),
            f"{b}.ffn_up_bias": (f,),
            f"{b}.ffn_down": (f, d),
            f"{b}.ffn_down_bias": (d,),
        }
    return shapes | {"output_norm.gamma": (d,), "output_norm.beta": (d,), "output": (d, V), "output_bias": (V,)}
