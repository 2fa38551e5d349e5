"""Read a Hugging Face Llama checkpoint directory: config.json and *.safetensors (never pickles).

HF stores linear weights (out, in) under `model.layers.{i}.self_attn.q_proj.weight` and friends, and its Q and K
rows use the "half" RoPE pairing (x[i], x[i + hd/2]); this loader renames to the GGUF names, transposes to
normfuse's row-vector (in, out) orientation, and returns `rope_layout="half"`. PyTorch `.bin` checkpoints are
pickles, which can run code when loaded: they are refused with a message, never opened.

If the directory has a `tokenizer.json`, it is loaded with the `tokenizers` package (and `tokenizer_config.json`
gives the chat template and the eos token); otherwise the model has no tokenizer and runs on token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ... import fields
from ...precision import resolve_dtype
from .config import LlamaConfig
from .tokenizer import END_OF_GENERATION, GGUFTokenizer
from .weights import pack_blocks_inplace, param_shapes

__all__ = ["HFModel", "hf_name", "read_hf_dir"]

Array = NDArray[Any]

_BLOCK = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def hf_name(gguf_name: str) -> str:
    """The HF tensor name of a GGUF tensor name (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`)."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if gguf_name in top:
        return top[gguf_name]
    if gguf_name == "output.weight":
        return "lm_head.weight"
    _, i, short, _ = gguf_name.split(".")
    hf = next(k for k, v in _BLOCK.items() if v == short)
    return f"model.layers.{i}.{hf}.weight"


@dataclass(frozen=True)
class HFModel:
    cfg: LlamaConfig
    params: dict[str, Array]
    tokenizer: GGUFTokenizer | None
    path: Path


#: model_type values whose config.json gives a Llama-family shape for the emulator (shape-only: `config_from_hf`).
SHAPE_MODEL_TYPES = ("llama", "mistral", "qwen2")


def _config(raw: Mapping[str, Any], path: Path, name: str | None) -> LlamaConfig:
    """The LlamaConfig of an HF config.json; one FieldError (naming the file and the field) for a bad value."""
    return config_from_hf(raw, path / "config.json", name)


def config_from_hf(
    raw: Mapping[str, Any], src_path: Path, name: str | None, *, shape_only: bool = False
) -> LlamaConfig:
    """The LlamaConfig of an HF config.json (`src_path`: the file). For numbers (`shape_only=False`) only llama,
    without RoPE scaling or biases. Shape-only (the emulator's `--model config.json`) also mistral and qwen2, whose
    differences do not change a matrix shape: RoPE scaling, Mistral's sliding window (it shortens attention only
    beyond `sliding_window` positions), Qwen2's Q/K/V biases (one add per element, not timed)."""
    src = str(src_path)
    kind = raw.get("model_type")
    kinds = SHAPE_MODEL_TYPES if shape_only else ("llama",)
    if kind not in kinds:
        raise ValueError(f"{src}: model_type is {kind!r}, but normfuse runs Llama-architecture models only ('llama')")
    if raw.get("rope_scaling") and not shape_only:
        raise ValueError(f"{src}: RoPE scaling {raw['rope_scaling']!r} is not supported")
    dim = fields.integer(raw, "hidden_size", src, minimum=1)
    heads = fields.integer(raw, "num_attention_heads", src, minimum=1)
    if raw.get("head_dim") is not None and fields.integer(raw, "head_dim", src, minimum=1) != dim // heads:
        raise ValueError(f"{src}: head_dim {raw['head_dim']} != hidden_size / num_attention_heads is not supported")
    if (raw.get("attention_bias") or raw.get("mlp_bias")) and not shape_only:
        raise ValueError(f"{src}: linear-layer biases are not supported")
    values = {
        "dim": dim,
        "n_layers": fields.integer(raw, "num_hidden_layers", src, minimum=1),
        "n_heads": heads,
        "n_kv_heads": fields.integer(raw, "num_key_value_heads", src, minimum=1, default=heads),
        "ffn_dim": fields.integer(raw, "intermediate_size", src, minimum=1),
        "vocab_size": fields.integer(raw, "vocab_size", src, minimum=1),
        "context_length": fields.integer(raw, "max_position_embeddings", src, minimum=1, default=2048),
        "rope_base": fields.number(raw, "rope_theta", src, positive=True, default=10000.0),
        "norm_eps": fields.number(raw, "rms_norm_eps", src, positive=True, default=1e-6),
        "tied_embeddings": fields.boolean(raw, "tie_word_embeddings", src, default=False),
    }
    return fields.construct(
        LlamaConfig,
        src,
        name=name or src_path.parent.name,
        rope_layout="half",
        source=f"{src_path.parent.name}/{src_path.name}",
        **values,
    )


def _token_text(tok: Any) -> str:
    """A tokenizer_config.json token entry (a string, or {"content": ...}) as its text; "" if absent."""
    if isinstance(tok, dict):
        return str(tok.get("content", ""))
    return tok if isinstance(tok, str) else ""


def _tokenizer(path: Path) -> GGUFTokenizer | None:
    tj = path / "tokenizer.json"
    if not tj.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(tj))
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ValueError(f"{tj} is not a tokenizer file the tokenizers package can read ({exc})") from None
    tc_path = path / "tokenizer_config.json"
    tc = fields.json_object(tc_path) if tc_path.is_file() else {}
    special = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    eos_tok = tc.get("eos_token")
    eos_text = _token_text(eos_tok)
    eos = {special[s] for s in (eos_text, *END_OF_GENERATION) if s in special}
    template = tc.get("chat_template")
    return GGUFTokenizer(
        backend=backend,
        bos_id=None,
        eos_ids=frozenset(eos),
        template_tokens=(_token_text(tc.get("bos_token")), _token_text(eos_tok)),
        chat_template=template if isinstance(template, str) else None,
        special=special,
    )


def read_hf_dir(
    path: str | Path,
    *,
    dtype: DTypeLike = np.float32,
    name: str | None = None,
    on_tensor: Callable[[int, int], None] | None = None,
) -> HFModel:
    """Config, weights (in `dtype`, GGUF names, row-vector orientation) and tokenizer of an HF checkpoint dir.
    `on_tensor(done, total)` is called after each tensor is converted (for a progress display)."""
    from ..checkpoint import read_config, read_safetensors

    path = Path(path).expanduser()
    dt = resolve_dtype(dtype)
    cfg = _config(read_config(path), path, name)
    tensors = read_safetensors(path)
    shapes = param_shapes(cfg)
    params: dict[str, Array] = {}
    for key, want in shapes.items():
        src = hf_name(key)
        if src not in tensors:
            raise ValueError(f"{path}: the checkpoint has no tensor {src!r} (needed for {key})")
        a = tensors.pop(src)
        if a.ndim == 2 and key != "token_embd.weight":
            a = a.T  # (out, in) -> (in, out)
        if a.shape != want:
            raise ValueError(f"{path}: tensor {src!r} has shape {a.shape[::-1]}, expected {want[::-1]} (out, in)")
        params[key] = np.asarray(a, dtype=dt)
        if on_tensor is not None:
            on_tensor(len(params), len(shapes))
    return HFModel(cfg=cfg, params=pack_blocks_inplace(params, cfg), tokenizer=_tokenizer(path), path=path)
