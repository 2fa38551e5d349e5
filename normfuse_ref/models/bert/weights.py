"""BERT weights: their names and shapes, seeded random weights, and the per-mode prepared (folded) form.

Names are the tensor names of an HF `BertModel` safetensors file (`encoder.layer.{i}.attention.self.query.weight`,
...), so a file's tensors map one to one (checkpoints of the task heads prefix them with `bert.`: the loader strips
it). Orientation follows normfuse's row-vector convention: every linear weight is stored (n_in, n_out), the
transpose of the file's (out, in); the loader transposes once. Embedding tables are (rows, d) lookups.

`prepare(params, cfg, mode)` builds what `forward` reads, once per mode:
- both modes concatenate Q|K|V into one (d, 3d) matmul with one (3d,) bias, so baseline and fused issue the same
  matmul shapes and differ only in where the normalisation happens;
- "fused" folds every LayerNorm into the linear layer that reads it (`fusion.fold_layer_norm`):
  F' = (I - E/n) Gamma F and the bias b' = beta F + b. Which LayerNorm feeds which linear (post-LN):
      embeddings.LayerNorm                  -> layer 0 Q|K|V
      layer i attention.output.LayerNorm    -> layer i intermediate (FFN up)
      layer i output.LayerNorm              -> layer i+1 Q|K|V      (the last one feeds no linear: the output)
  gamma and beta stay in the prepared weights in both modes: post-LN needs LN(x) itself for the residual branch.
  Folding happens here, offline, in float64, rounded once to the weights' dtype; never inside the forward pass.

Prepared names (both modes): `word_embeddings` (V, d), `position_embeddings` (P, d), `token_type_embeddings`
(2, d), `embeddings.ln` (gamma, beta of the embeddings LayerNorm) and, per block `layer.{i}`: `.qkv` (d, 3d) and
`.qkv_bias` (3d,), `.attn_output` (d, d) and its bias, `.attn_ln` (attention.output.LayerNorm), `.ffn_up` (d, f)
and its bias, `.ffn_down` (f, d) and its bias, `.ffn_ln` (output.LayerNorm). A LayerNorm's gamma and beta are
`{name}.gamma` and `{name}.beta`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ...fusion import Centring, fold_column_sums, fold_layer_norm
from ...precision import resolve_dtype
from ..llama.weights import Mode  # one vocabulary of orders for every family
from .config import BertConfig

__all__ = [
    "Fold",
    "Mode",
    "fold_in_weight_dtype",
    "ln_feeding",
    "param_shapes",
    "prepare",
    "prepared_shapes",
    "random_params",
]

Array = NDArray[Any]


def _linear(prefix: str, n: int, m: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (n, m), f"{prefix}.bias": (m,)}


def _layer_norm(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,)}


def param_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape (row-vector orientation). The single source of truth for loaders."""
    d, f = cfg.dim, cfg.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, d),
        "embeddings.position_embeddings.weight": (cfg.max_positions, d),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, d),
        **_layer_norm("embeddings.LayerNorm", d),
    }
    for i in range(cfg.n_layers):
        b = f"encoder.layer.{i}"
        shapes |= {
            **_linear(f"{b}.attention.self.query", d, d),
            **_linear(f"{b}.attention.self.key", d, d),
            **_linear(f"{b}.attention.self.value", d, d),
            **_linear(f"{b}.attention.output.dense", d, d),
            **_layer_norm(f"{b}.attention.output.LayerNorm", d),
            **_linear(f"{b}.intermediate.dense", d, f),
            **_linear(f"{b}.output.dense", f, d),
            **_layer_norm(f"{b}.output.LayerNorm", d),
        }
    return shapes


def random_params(cfg: BertConfig, *, seed: int = 0, dtype: DTypeLike = np.float32) -> dict[str, Array]:
    """Seeded random weights of a plausible scale: N(0, 1/n_in) matrices, N(0, 1) embeddings, biases 0.1 N(0, 1),
    LayerNorm gains 1 + 0.1 N(0, 1) and biases 0.1 N(0, 1) (not 1 and 0, so that folding them is a real change)."""
    rng = np.random.default_rng(seed)
    dt = resolve_dtype(dtype)
    params: dict[str, Array] = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("LayerNorm.weight"):
            a = 1 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            a = 0.1 * rng.standard_normal(shape)
        elif "embeddings" in name:
            a = rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[0])
        params[name] = a.astype(dt)
    return params


def ln_feeding(cfg: BertConfig, i: int) -> str:
    """The source name of the LayerNorm whose output feeds block i's Q|K|V (post-LN: the previous block's last)."""
    return "embeddings.LayerNorm" if i == 0 else f"encoder.layer.{i - 1}.output.LayerNorm"


#: How a LayerNorm is folded into the linear layer after it: fold(gamma, beta, F) -> (F' as stored, beta F in float64).
Fold = Callable[[Array, Array, Array], tuple[Array, Array]]


def fold_in_weight_dtype(gamma: Array, beta: Array, F: Array) -> tuple[Array, Array]:
    """The default fold: `fusion.fold_layer_norm` in float64, F' rounded once to F's dtype."""
    F_prime, bF = fold_layer_norm(gamma, beta, F, dtype=np.float64)
    return F_prime.astype(F.dtype), bF


def prepare(
    params: Mapping[str, Array],
    cfg: BertConfig,
    mode: Mode,
    *,
    fold: Fold = fold_in_weight_dtype,
    centring: Centring = "fold",
    bias_dtype: DTypeLike | None = None,
) -> dict[str, Array]:
    """The weights `forward` reads in `mode` (see the module docstring). `params` is not modified; unfolded weights
    are shared with it, so treat both as read-only.

    The mitigations of the fused rule (`normfuse_ref.fusion`, "Mitigations"; the accuracy study uses them): `fold`
    stores F' another way (e.g. in a wider dtype), and `centring="compensate"` adds the stored F''s column sums
    `{L}.qkv_colsum` and `{L}.ffn_up_colsum` (`fusion.fold_column_sums`) for `forward(..., centring="compensate")`;
    `bias_dtype` stores the folded bias b' = beta F + b in that format (default: the bias's own dtype; the
    accumulation dtype is the "wide-bias" mitigation, `fusion.fold_layer_norm`)."""
    if mode not in ("baseline", "fused"):
        raise ValueError(f"mode must be 'baseline' or 'fused'; got {mode!r}")
    missing = [k for k in param_shapes(cfg) if k not in params]
    if missing:
        raise ValueError(f"weights are missing {len(missing)} tensors, e.g. {missing[0]!r}")

    def site(ln: str, F: Array, b: Array) -> tuple[Array, Array]:
        """(F, b) of a linear layer that reads LayerNorm `ln`: as stored in baseline, folded in fused mode."""
        if mode == "baseline":
            return F, b
        F_prime, bF = fold(params[f"{ln}.weight"], params[f"{ln}.bias"], F)
        b_dt = b.dtype if bias_dtype is None else resolve_dtype(bias_dtype)
        return F_prime, (bF + b.astype(np.float64)).astype(b_dt)  # (n, m), (m,): b' = beta F + b

    def ln(prefix: str, src: str) -> dict[str, Array]:
        return {f"{prefix}.gamma": params[f"{src}.weight"], f"{prefix}.beta": params[f"{src}.bias"]}  # (d,) each

    w: dict[str, Array] = {
        "word_embeddings": params["embeddings.word_embeddings.weight"],  # (V, d)
        "position_embeddings": params["embeddings.position_embeddings.weight"],  # (P, d)
        "token_type_embeddings": params["embeddings.token_type_embeddings.weight"],  # (2, d)
        **ln("embeddings.ln", "embeddings.LayerNorm"),
    }
    for i in range(cfg.n_layers):
        b, L = f"encoder.layer.{i}", f"layer.{i}"
        qkv = [f"{b}.attention.self.{x}" for x in ("query", "key", "value")]
        F_qkv = np.concatenate([params[f"{p}.weight"] for p in qkv], axis=1)  # (d, 3d)
        b_qkv = np.concatenate([params[f"{p}.bias"] for p in qkv])  # (3d,)
        w[f"{L}.qkv"], w[f"{L}.qkv_bias"] = site(ln_feeding(cfg, i), F_qkv, b_qkv)
        if mode == "fused" and centring == "compensate":
            w[f"{L}.qkv_colsum"] = fold_column_sums(w[f"{L}.qkv"])  # (3d,)
        w[f"{L}.attn_output"] = params[f"{b}.attention.output.dense.weight"]  # (d, d)
        w[f"{L}.attn_output_bias"] = params[f"{b}.attention.output.dense.bias"]  # (d,)
        w |= ln(f"{L}.attn_ln", f"{b}.attention.output.LayerNorm")
        up_F, up_b = params[f"{b}.intermediate.dense.weight"], params[f"{b}.intermediate.dense.bias"]
        w[f"{L}.ffn_up"], w[f"{L}.ffn_up_bias"] = site(f"{b}.attention.output.LayerNorm", up_F, up_b)  # (d, f), (f,)
        if mode == "fused" and centring == "compensate":
            w[f"{L}.ffn_up_colsum"] = fold_column_sums(w[f"{L}.ffn_up"])  # (f,)
        w[f"{L}.ffn_down"] = params[f"{b}.output.dense.weight"]  # (f, d)
        w[f"{L}.ffn_down_bias"] = params[f"{b}.output.dense.bias"]  # (d,)
        w |= ln(f"{L}.ffn_ln", f"{b}.output.LayerNorm")
    return w


def prepared_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes `prepare` returns (the same in both modes), for cost-only emulation without weights."""
    d, f = cfg.dim, cfg.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {
        "word_embeddings": (cfg.vocab_size, d),
        "position_embeddings": (cfg.max_positions, d),
        "token_type_embeddings": (cfg.type_vocab_size, d),
        "embeddings.ln.gamma": (d,),
        "embeddings.ln.beta": (d,),
    }
    for i in range(cfg.n_layers):
        L = f"layer.{i}"
        shapes |= {
            f"{L}.qkv": (d, 3 * d),
            f"{L}.qkv_bias": (3 * d,),
            f"{L}.attn_output": (d, d),
            f"{L}.attn_output_bias": (d,),
            f"{L}.attn_ln.gamma": (d,),
            f"{L}.attn_ln.beta": (d,),
            f"{L}.ffn_up": (d, f),
            f"{L}.ffn_up_bias": (f,),
            f"{L}.ffn_down": (f, d),
            f"{L}.ffn_down_bias": (d,),
            f"{L}.ffn_ln.gamma": (d,),
            f"{L}.ffn_ln.beta": (d,),
        }
    return shapes
