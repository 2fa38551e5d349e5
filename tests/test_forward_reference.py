"""The executor-driven Llama forward pass equals a plain composition of the public reference layers.

Two independent implementations: `normfuse_ref.models.llama.forward` (primitives through an Executor, concatenated
QKV and gate|up, folded gains in fused mode, tiled online softmax) and the textbook composition below (separate
Q, K, V projections, `layers.attention`, `layers.swiglu`). Compared in float64 so that any structural slip
(head grouping, causal offset, RoPE layout, a gain folded twice) shows as an O(1) error.

Tolerance: each of the ~12 ops per block is accurate to (n + 4) u of its magnitude (tests/bounds.py), n <= 176
here, L = 2 blocks, and the logits are O(1)-O(10): 24 * 180 * 1.1e-16 * max|logit| ~ 5e-13 * max|logit|.
We allow 1e-11 * max|logit| (20x that: error growth through the residual stream is not strictly additive).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from normfuse_ref.layers import attention, linear, rms_norm, rope, swiglu
from normfuse_ref.models.llama import LlamaConfig, Mode, forward, get_preset, prepare, random_params
from normfuse_ref.ops import NumpyExecutor

Array = NDArray[Any]
REL = 1e-11


def composed_logits(p: dict[str, Array], cfg: LlamaConfig, ids: Array) -> Array:
    x = p["token_embd.weight"][ids]  # (T, d)
    T = ids.size
    pos = np.arange(T)[:, None]  # (T, 1)
    for i in range(cfg.n_layers):
        b = f"blk.{i}"
        h = rms_norm(x, p[f"{b}.attn_norm.weight"], cfg.norm_eps)
        q = linear(h, p[f"{b}.attn_q.weight"]).reshape(T, cfg.n_heads, cfg.head_dim)
        k = linear(h, p[f"{b}.attn_k.weight"]).reshape(T, cfg.n_kv_heads, cfg.head_dim)
        v = linear(h, p[f"{b}.attn_v.weight"]).reshape(T, cfg.n_kv_heads, cfg.head_dim)
        q = rope(q, pos, base=cfg.rope_base, layout=cfg.rope_layout)
        k = rope(k, pos, base=cfg.rope_base, layout=cfg.rope_layout)
        x = x + linear(attention(q, k, v).reshape(T, -1), p[f"{b}.attn_output.weight"])
        h = rms_norm(x, p[f"{b}.ffn_norm.weight"], cfg.norm_eps)
        x = x + swiglu(h, p[f"{b}.ffn_gate.weight"], p[f"{b}.ffn_up.weight"], p[f"{b}.ffn_down.weight"])
    out = p["token_embd.weight"].T if cfg.tied_embeddings else p["output.weight"]
    return linear(rms_norm(x, p["output_norm.weight"], cfg.norm_eps), out)


CONFIGS = {
    "tiny": get_preset("tiny"),
    "mha-tied-interleaved": get_preset("tiny").replace(n_kv_heads=4, tied_embeddings=True, rope_layout="interleaved"),
    "mqa": get_preset("tiny").replace(n_kv_heads=1, n_layers=1),
}


@pytest.mark.parametrize("tile_size", [None, 1, 5])
@pytest.mark.parametrize("mode", ["baseline", "fused"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_equals_composed_layers(name: str, mode: Mode, tile_size: int | None) -> None:
    cfg = CONFIGS[name]
    p = random_params(cfg, seed=3, dtype=np.float64)
    ids = np.array([3, 17, 250, 9, 9, 100, 42])
    want = composed_logits(p, cfg, ids)
    got, cache = forward(prepare(p, cfg, mode), cfg, ids, mode=mode, ex=NumpyExecutor(np.float64, tile_size=tile_size))
    np.testing.assert_allclose(got, want, rtol=0, atol=REL * np.abs(want).max())
    assert cache.length == ids.size


@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_decode_one_token_at_a_time_equals_full_recompute(mode: Mode) -> None:
    cfg = CONFIGS["tiny"]
    p = random_params(cfg, seed=4, dtype=np.float64)
    w, ex = prepare(p, cfg, mode), NumpyExecutor(np.float64)
    ids = np.array([[5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6]])  # a batch of two sequences
    full, _ = forward(w, cfg, ids, mode=mode, ex=ex)
    steps, cache = [], None
    for t in range(ids.shape[1]):
        logits, cache = forward(w, cfg, ids[:, t : t + 1], cache, mode=mode, ex=ex)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0, atol=REL * np.abs(full).max())
    for b in range(2):
        single, _ = forward(w, cfg, ids[b], mode=mode, ex=ex)
        np.testing.assert_allclose(single, full[b], rtol=0, atol=REL * np.abs(full).max())


def test_forward_rejects_bad_ids_and_context_overflow() -> None:
    cfg = CONFIGS["mqa"].replace(context_length=8)
    w = prepare(random_params(cfg), cfg, "fused")
    with pytest.raises(ValueError, match="out of range"):
        forward(w, cfg, np.array([1, cfg.vocab_size]))
    with pytest.raises(ValueError, match="exceed the model's context of 8"):
        forward(w, cfg, np.arange(9))
    _, cache = forward(w, cfg, np.arange(6))
    with pytest.raises(ValueError, match="6 cached \\+ 3 new"):
        forward(w, cfg, np.arange(3), cache)
    with pytest.raises(ValueError, match="integer"):
        forward(w, cfg, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="mode"):
        forward(w, cfg, np.arange(2), mode="sideways")  # type: ignore[arg-type]
