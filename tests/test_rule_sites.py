"""One rule, one place: the code the fuzz suite checks is the code the model and the emulator run.

- site == rule: the fused order at each site of the real forward pass (RMSNorm -> QKV, softmax -> V, RMSNorm ->
  gate/up, the head) gives bit for bit what the rule's array call gives on the same inputs, in every dtype; a
  recording executor captures the site's inputs and output from the model's own primitive calls.
- the reference order issued as primitives (the model's baseline mode) is bit for bit the composition of the
  reference layers, so both orders round where docs/numerics.md says ("Rounding rule").
- the emulator runs the same rule code: where every primitive fits one slice and one DIMC tile (so that its
  tiling changes no summation order), it is bit for bit the array call too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from normfuse_ref import fusion, layers
from normfuse_ref.hw import EmulatingExecutor, get_hardware
from normfuse_ref.models.llama import Mode, forward, get_preset, prepare, random_params
from normfuse_ref.ops import NumpyExecutor, ReduceKind, SoftmaxTiles
from normfuse_ref.precision import DTYPES, Array

MODEL_DTYPES = ["float64", "float32", "float16", "bfloat16"]
CFG = get_preset("tiny")


class RecordingExecutor(NumpyExecutor):
    """A NumpyExecutor that keeps every primitive's arguments and result, by op name (first call of each name)."""

    def __init__(self, storage: str) -> None:
        super().__init__(storage=storage)
        self.calls: dict[str, tuple[tuple[Any, ...], Any]] = {}

    def _keep(self, op: str, args: tuple[Any, ...], out: Any) -> Any:
        self.calls.setdefault(op, (args, out))
        return out

    def matmul(self, x: Array, F: Array, *, op: str, keep_acc: bool = False) -> Array:
        return self._keep(op, (x, F), super().matmul(x, F, op=op, keep_acc=keep_acc))

    def elementwise(self, fn: Callable[..., Array], *xs: Array, op: str, keep_acc: bool = False) -> Array:
        return self._keep(op, xs, super().elementwise(fn, *xs, op=op, keep_acc=keep_acc))

    def reduce(self, x: Array, kind: ReduceKind, *, op: str, eps: float = 0.0) -> Array:
        return self._keep(op, (x,), super().reduce(x, kind, op=op, eps=eps))

    def softmax_tiles(self, z: Array, V: Array, *, op: str) -> SoftmaxTiles:
        return self._keep(op, (z, V), super().softmax_tiles(z, V, op=op))

    def layout(self, fn: Callable[..., Array], *xs: Array, op: str) -> Array:
        return self._keep(op, xs, super().layout(fn, *xs, op=op))


def _run_model(dtype: str, mode: Mode) -> RecordingExecutor:
    """The tiny model's forward pass on a prompt of 7 tokens, recorded."""
    params = random_params(CFG, seed=11, dtype=dtype)
    ex = RecordingExecutor(dtype)
    forward(prepare(params, CFG, mode), CFG, np.array([5, 17, 200, 3, 99, 42, 7]), mode=mode, ex=ex)
    return ex


@pytest.mark.parametrize("site", ["attn_qkv", "ffn_gate_up", "output"])
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_the_models_rms_norm_site_is_the_rule(dtype: str, site: str) -> None:
    """Fused mode: the model's first `site` equals fusion.rms_norm_linear_folded's array call, bit for bit."""
    ex = _run_model(dtype, "fused")
    (x, F_g), _ = ex.calls[site]
    _, out = ex.calls[f"{site}.scale"]
    want = fusion.rms_norm_linear_folded(x, F_g, CFG.norm_eps)
    assert out.dtype == want.dtype == DTYPES[dtype]
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("site", ["attn_qkv", "ffn_gate_up", "output"])
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_the_models_baseline_site_is_the_reference_layers(dtype: str, site: str) -> None:
    """Baseline mode: the model's `site` is linear(rms_norm(x, g), F) composed from the reference layers, bit for
    bit (the reference order rounds where the layers do: the normalised row and the output)."""
    ex = _run_model(dtype, "baseline")
    (x, _s, g), _ = ex.calls[f"{site}.norm"]
    (_h, F), out = ex.calls[site]
    np.testing.assert_array_equal(out, layers.linear(layers.rms_norm(x, g, CFG.norm_eps), F))
    np.testing.assert_array_equal(out, fusion.rms_norm_linear_reference(x, g, F, CFG.norm_eps))


@pytest.mark.parametrize("mode", ["fused", "baseline"])
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
def test_the_models_softmax_site_is_the_rule(dtype: str, mode: Mode) -> None:
    """The model's softmax -> V (scores in acc, per kv head) equals the rule's call on the same scores and values:
    fusion.softmax_linear in fused mode, fusion.softmax_linear_reference in baseline."""
    ex = _run_model(dtype, mode)
    _, z = ex.calls["attn_mask"]  # (Hkv, G*T, S): the masked, scaled scores, in acc
    (_, vh), _ = ex.calls["attn_pv"]  # (Hkv, S, hd): the values, stored
    (o,), _ = ex.calls["merge_heads"]  # (Hkv, G*T, hd): the site's output
    # The scores are an acc value, so the rule runs with the model's storage dtype rather than the scores' own.
    if mode == "fused":
        want = fusion.softmax_linear(z, vh, ex=NumpyExecutor(storage=dtype))
    else:
        want = fusion.softmax_linear_reference(z, vh, ex=NumpyExecutor(storage=dtype))
    assert o.dtype == DTYPES[dtype]
    np.testing.assert_array_equal(o, want)


def _inputs(dtype: str, seed: int, n: int, m: int, offset: float = 0.0) -> dict[str, Array]:
    """Rows x (3, n) and scores z (3, n), a gain and a bias (n,), a weight F (n, m), stored in `dtype`."""
    rng = np.random.default_rng(seed)
    dt = DTYPES[dtype]
    return {
        "x": (rng.standard_normal((3, n)) + offset).astype(dt),
        "z": (3 * rng.standard_normal((3, n))).astype(dt),
        "g": (1 + 0.1 * rng.standard_normal(n)).astype(dt),
        "beta": (0.1 * rng.standard_normal(n)).astype(dt),
        "F": (rng.standard_normal((n, m)) / np.sqrt(n)).astype(dt),
    }


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_the_reference_order_is_the_reference_layers(dtype: str) -> None:
    """The reference twins, issued as primitives, are the layer compositions bit for bit in every dtype (so the
    model's baseline mode is the textbook order, rounded where the layers round)."""
    a = _inputs(dtype, 3, 40, 7)
    x, z, g, beta, F = a["x"], a["z"], a["g"], a["beta"], a["F"]
    np.testing.assert_array_equal(
        fusion.rms_norm_linear_reference(x, g, F, 1e-5), layers.linear(layers.rms_norm(x, g, 1e-5), F)
    )
    y, h = fusion.layer_norm_linear_reference(x, g, beta, F, 1e-5, return_norm=True)
    np.testing.assert_array_equal(h, layers.layer_norm(x, g, beta, 1e-5))
    np.testing.assert_array_equal(y, layers.linear(layers.layer_norm(x, g, beta, 1e-5), F))
    np.testing.assert_array_equal(fusion.softmax_linear_reference(z, F), layers.linear(layers.softmax(z), F))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_layer_norm_returns_its_normalised_row_from_the_same_statistics(dtype: str) -> None:
    """Post-LN blocks need LN(x) beside LN(x) @ F: the fused rule returns it from the same mu and s, and it is the
    reference layer's LN(x) bit for bit (same statistics, same rounding); the projection is unchanged."""
    a = _inputs(dtype, 4, 24, 5, offset=0.5)
    x, gamma, beta, F = a["x"], a["g"], a["beta"], a["F"]
    y, h = fusion.layer_norm_linear(x, gamma, beta, F, 1e-5, return_norm=True)
    np.testing.assert_array_equal(y, fusion.layer_norm_linear(x, gamma, beta, F, 1e-5))
    np.testing.assert_array_equal(h, layers.layer_norm(x, gamma, beta, 1e-5))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_the_emulator_runs_the_same_rule(dtype: str) -> None:
    """On the corsair-like machine, rows of <= 64 entries fit one slice and one DIMC tile: the emulator's
    primitives then sum in the plain executor's order, and each rule on the emulator is its array call bit for
    bit (policy accumulation; its tiling of longer rows is checked to rounding in test_emulator_numeric.py)."""
    a = _inputs(dtype, 5, 48, 16)
    x, z, g, beta, F = a["x"], a["z"], a["g"], a["beta"], a["F"]
    dt = DTYPES[dtype]
    hw = get_hardware("corsair-like")

    def emulated(rule: Callable[..., Any], *args: Any, **kw: Any) -> Array:
        return np.asarray(rule(*args, ex=EmulatingExecutor(hw, storage=dt), **kw))

    F_g = fusion.fold_rms_norm(g, F)
    F_p, b = fusion.fold_layer_norm(g, beta, F)
    np.testing.assert_array_equal(
        emulated(fusion.rms_norm_linear_folded, x, F_g, 1e-5), fusion.rms_norm_linear(x, g, F, 1e-5)
    )
    np.testing.assert_array_equal(
        emulated(fusion.layer_norm_linear_folded, x, F_p, b, 1e-5), fusion.layer_norm_linear(x, g, beta, F, 1e-5)
    )
    np.testing.assert_array_equal(emulated(fusion.softmax_linear, z, F), fusion.softmax_linear(z, F))
    np.testing.assert_array_equal(
        emulated(fusion.rms_norm_linear_reference, x, g, F, 1e-5), fusion.rms_norm_linear_reference(x, g, F, 1e-5)
    )
