"""A whole Llama decoder block, reference order vs fused order at its three sites, in every dtype.

x -> rms_norm -> Q, K, V (GQA) -> rope -> causal attention -> output projection -> residual -> rms_norm ->
gate/up -> swiglu -> down -> residual; fused at rms_norm->QKV, softmax->V (tiled online softmax), rms_norm->
gate/up. The allowance is the block's running error bound with the larger of the two orders' bounds carried on at
each site (normfuse_ref/testing/block.py); the criterion is the same as for the single rules.

In 16- and 8-bit storage the worst-case bound through attention and the gated FFN is wide (often wider than the
outputs, or infinite once a perturbation can cancel a row's norm): there the property mostly checks that nothing
blows up. float32/float64 carry the sharp check (and the wrong-rewrite test in test_fuzz_checker.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normfuse_ref import layers
from normfuse_ref.precision import DTYPES
from normfuse_ref.testing.block import BlockConfig
from normfuse_ref.testing.rules import RULES, assert_no_worse

BLOCK = RULES["decoder_block"]


@pytest.mark.parametrize("dtype", list(DTYPES))
@given(data=st.data())
def test_decoder_block_no_worse_than_reference(dtype: str, data: st.DataObject) -> None:
    v = assert_no_worse(BLOCK, data.draw(BLOCK.cases(dtype=dtype), label="case"))
    if dtype in ("float64", "float32"):
        assert np.all(np.isfinite(v.atol))  # the bound is informative where it should be


def naive_block(x: np.ndarray, positions: np.ndarray, cfg: BlockConfig, w: dict[str, np.ndarray]) -> np.ndarray:
    """An independent float64 block: explicit loops over query heads (kv head = h // group), explicit causal
    mask and softmax; only rope and rms_norm come from normfuse_ref.layers."""
    T, G, hd = x.shape[0], cfg.n_heads // cfg.n_kv_heads, cfg.head_dim
    pos = positions[:, None]

    def rms(v: np.ndarray, g: np.ndarray) -> np.ndarray:
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + cfg.eps) * g

    h = rms(x, w["attn_norm"])
    q = layers.rope((h @ w["attn_q"]).reshape(T, cfg.n_heads, hd), pos, base=cfg.rope_base, layout=cfg.rope_layout)
    k = layers.rope((h @ w["attn_k"]).reshape(T, cfg.n_kv_heads, hd), pos, base=cfg.rope_base, layout=cfg.rope_layout)
    v = (h @ w["attn_v"]).reshape(T, cfg.n_kv_heads, hd)
    out = np.zeros((T, cfg.n_heads, hd))
    for head in range(cfg.n_heads):
        kv = head // G
        for t in range(T):
            z = np.array([q[t, head] @ k[j, kv] / np.sqrt(hd) for j in range(t + 1)])
            p = np.exp(z - z.max())
            out[t, head] = (p / p.sum()) @ v[: t + 1, kv]
    x1 = x + out.reshape(T, -1) @ w["attn_output"]
    h2 = rms(x1, w["ffn_norm"])
    a = h2 @ w["ffn_gate"]
    return x1 + ((a / (1 + np.exp(-a))) * (h2 @ w["ffn_up"])) @ w["ffn_down"]


@given(data=st.data())
def test_decoder_block_reference_matches_an_independent_implementation(data: st.DataObject) -> None:
    """Two implementations must agree (STYLE 6): the block wiring (GQA head map, causal mask, positions) in float64."""
    case = data.draw(BLOCK.cases(dtype="float64"), label="case")
    a = case.f64()
    w = {k: v for k, v in a.items() if k not in ("x", "positions")}
    expected = naive_block(a["x"], case.arrays["positions"], case.params["cfg"], w)
    np.testing.assert_allclose(BLOCK.reference(case), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
