"""One rule, one place, for the LayerNorm family: the sites of the BERT forward are the rules of fusion.py.

Like tests/test_rule_sites.py for Llama: a recording executor captures each site's inputs and outputs from the
model's own primitive calls on a random tiny BERT, and the rule's array call on the same inputs must give them bit
for bit, in every model dtype:
- fused LayerNorm -> linear (Q|K|V, FFN up): `fusion.layer_norm_linear_folded(..., norm=(gamma, beta))`, both the
  projection and LN(x) for the post-LN residual;
- baseline LayerNorm -> linear: `fusion.layer_norm_linear_reference(..., return_norm=True, b=b)`, and that is the
  reference layers composed (layer_norm, then the product and its bias in acc, rounded once);
- softmax -> V: `fusion.softmax_linear` / `softmax_linear_reference` on the masked scores;
- the last LayerNorm: `fusion.layer_norm_alone`, which is `layers.layer_norm`.
"""

from __future__ import annotations

import numpy as np
import pytest

from normfuse_ref import fusion, layers
from normfuse_ref.models.bert import forward, get_preset, prepare, random_params
from normfuse_ref.models.sites import Mode
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref.precision import DTYPES, accumulation_dtype, matmul_acc
from tests.test_rule_sites import MODEL_DTYPES, RecordingExecutor

CFG = get_preset("tiny-bert")
SITES = ["attn_qkv", "ffn_up"]


def _run_model(dtype: str, mode: Mode) -> RecordingExecutor:
    """The tiny BERT on a padded batch of two texts (7 and 4 tokens), recorded (first call of each op: block 0)."""
    params = random_params(CFG, seed=13, dtype=dtype)
    ids = np.array([[5, 17, 100, 3, 99, 42, 7], [8, 9, 10, 11, 0, 0, 0]])  # (2, 7)
    mask = (np.arange(7) < np.array([[7], [4]])).astype(np.int64)  # (2, 7)
    ex = RecordingExecutor(dtype)
    forward(prepare(params, CFG, mode), CFG, ids, mask, mode=mode, ex=ex)
    return ex


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_the_models_fused_layer_norm_site_is_the_rule(dtype: str, site: str) -> None:
    """Fused mode: the site's projection and its LN(x) equal fusion.layer_norm_linear_folded(norm=...)."""
    ex = _run_model(dtype, "fused")
    (z, F_prime), _ = ex.calls[site]  # the matmul on the raw residual sum
    (_y, _s, b_prime), y = ex.calls[f"{site}.scale_shift"]
    (_d, _s2, gamma, beta), h = ex.calls[f"{site}.norm_shift"]
    want_y, want_h = fusion.layer_norm_linear_folded(z, F_prime, b_prime, CFG.norm_eps, norm=(gamma, beta))
    assert y.dtype == h.dtype == want_y.dtype == DTYPES[dtype]
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(h, want_h)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_the_models_baseline_layer_norm_site_is_the_reference_layers(dtype: str, site: str) -> None:
    """Baseline mode: the site is fusion.layer_norm_linear_reference(b=...), which is layer_norm and then the
    product and its bias in acc, rounded once (how the fused order rounds its folded bias too)."""
    ex = _run_model(dtype, "baseline")
    (z,), _ = ex.calls[f"{site}.mean"]
    (_d, _s, gamma, beta), h = ex.calls[f"{site}.norm_shift"]
    (_h, F), _ = ex.calls[site]
    (_y, b), y = ex.calls[f"{site}.bias"]
    want_y, want_h = fusion.layer_norm_linear_reference(z, gamma, beta, F, CFG.norm_eps, return_norm=True, b=b)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(h, want_h)
    dt = DTYPES[dtype]
    acc = accumulation_dtype(dt)
    ln = layers.layer_norm(z, gamma, beta, CFG.norm_eps)  # (B, T, d)
    np.testing.assert_array_equal(h, ln)
    np.testing.assert_array_equal(y, (matmul_acc(ln, F, acc) + b.astype(acc)).astype(dt))


@pytest.mark.parametrize("mode", ["fused", "baseline"])
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_the_models_softmax_site_is_the_rule(dtype: str, mode: Mode) -> None:
    """The encoder's softmax -> V (padded keys at -inf, scores in acc) is the rule's call on the same scores."""
    ex = _run_model(dtype, mode)
    _, z = ex.calls["attn_mask"]  # (B, H, T, T): masked, scaled scores, in acc
    _, v = ex.calls["split_v"]  # (B, H, T, hd)
    (o,), _ = ex.calls["merge_heads"]  # (B, H, T, hd): the site's output
    assert np.isneginf(z[1, :, :, 4:]).all()  # the second text's padding is invisible to every query
    rule = fusion.softmax_linear if mode == "fused" else fusion.softmax_linear_reference
    want = rule(z, v, ex=NumpyExecutor(storage=dtype))
    assert o.dtype == DTYPES[dtype]
    np.testing.assert_array_equal(o, want)


@pytest.mark.parametrize("mode", ["fused", "baseline"])
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_the_last_layer_norm_is_the_reference_layer(dtype: str, mode: Mode) -> None:
    """The encoder's last LayerNorm (no linear after it) is fusion.layer_norm_alone, i.e. layers.layer_norm."""
    ex = _run_model(dtype, mode)
    (z,), _ = ex.calls["output_ln.mean"]
    (_d, _s, gamma, beta), h = ex.calls["output_ln.norm_shift"]
    np.testing.assert_array_equal(h, fusion.layer_norm_alone(z, gamma, beta, CFG.norm_eps))
    np.testing.assert_array_equal(h, layers.layer_norm(z, gamma, beta, CFG.norm_eps))
