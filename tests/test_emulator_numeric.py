"""Emulated vs plain: the tile emulator computes the same forward pass as NumpyExecutor, in both orders.

Both executors evaluate every primitive in the same accumulation dtype from the same inputs; they differ only in
summation order (the emulator cuts each matmul's K axis into DIMC tiles summed by a binary adder tree, and each
reduction and softmax into per-slice partials combined by a tree). Standard rounding-error analysis (Higham,
Accuracy and Stability, Thm 3.1 and sec. 4.2) bounds the error of a sum of n terms by the same gamma_n * sum|terms|
for every order, and by the smaller gamma_(log2 n) for a tree, so the emulated pass is expected to be as accurate
as the plain one. We therefore require, against a float64 oracle on the same inputs,
    err(emulated) <= 2 * err(plain) + u * max|logit|
The factor 2 allows for the two errors being different draws of the same size (the max over all logits of each);
u * max|logit| is one final rounding of the logits. In float64 the emulator must match the oracle to
4096 u64 * max|logit|: each logit goes through ~10 dependent primitives with dot products of length <= 176, so the
worst case is ~2000 roundings; a wrong tile or a dropped partial would be off by O(1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from normfuse_ref.hw import EmulatingExecutor, Value, get_hardware
from normfuse_ref.llama import PRESETS, forward, prepare, random_params
from normfuse_ref.ops import NumpyExecutor, ReduceKind

CFG = PRESETS["tiny"]
U32, U64 = 2.0**-24, 2.0**-53


@pytest.fixture(scope="module")
def params() -> dict[str, Any]:
    p = random_params(CFG, seed=3)
    return {"f32": p, "f64": {k: v.astype(np.float64) for k, v in p.items()}}


def logits_of(v: Any) -> np.ndarray:
    assert isinstance(v, Value)
    return np.asarray(v)


@pytest.mark.parametrize("hw_name", ["toy", "corsair-like"])
@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_prefill_then_decode_matches_the_plain_forward(params: dict[str, Any], hw_name: str, mode: str) -> None:
    hw = get_hardware(hw_name)
    w, w64 = prepare(params["f32"], CFG, mode), prepare(params["f64"], CFG, mode)  # type: ignore[arg-type]
    ids = np.arange(13) * 7 % CFG.vocab_size
    cp = ce = c64 = None
    for step, chunk in enumerate((ids, np.array([5]), np.array([250]), np.array([17]))):
        plain, cp = forward(w, CFG, chunk, cp, mode=mode)  # type: ignore[arg-type]
        oracle, c64 = forward(w64, CFG, chunk, c64, mode=mode, ex=NumpyExecutor(storage=np.float64))  # type: ignore[arg-type]
        ex = EmulatingExecutor(hw)
        emul, ce = forward(w, CFG, chunk, ce, mode=mode, ex=ex)  # type: ignore[arg-type]
        em = logits_of(emul)
        scale = float(np.abs(oracle).max())
        err_plain, err_emul = float(np.abs(plain - oracle).max()), float(np.abs(em - oracle).max())
        assert em.dtype == np.float32 and em.shape == plain.shape
        assert err_emul <= 2 * err_plain + U32 * scale, (
            f"step {step} on {hw_name} ({mode}): emulated error {err_emul:.3e} vs plain {err_plain:.3e}; "
            f"reproduce: forward(prepare(random_params(PRESETS['tiny'], seed=3), ...), ex=EmulatingExecutor("
            f"get_hardware({hw_name!r})))"
        )
        assert ex.timeline().makespan > 0


@pytest.mark.parametrize("hw_name", ["toy", "corsair-like"])
@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_float64_emulation_is_the_oracle_up_to_summation_order(params: dict[str, Any], hw_name: str, mode: str) -> None:
    w64 = prepare(params["f64"], CFG, mode)  # type: ignore[arg-type]
    ids = np.stack([np.arange(9) * 3 % CFG.vocab_size, np.arange(9) * 11 % CFG.vocab_size])  # (B, T) = (2, 9)
    oracle, _ = forward(w64, CFG, ids, mode=mode, ex=NumpyExecutor(storage=np.float64))  # type: ignore[arg-type]
    emul, _ = forward(w64, CFG, ids, mode=mode, ex=EmulatingExecutor(get_hardware(hw_name), storage=np.float64))  # type: ignore[arg-type]
    em = logits_of(emul)
    assert em.dtype == np.float64
    assert float(np.abs(em - oracle).max()) <= 4096 * U64 * float(np.abs(oracle).max())


@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_cost_only_times_exactly_what_numeric_times(params: dict[str, Any], mode: str) -> None:
    """The timeline depends on shapes only: numbers or dummies, the events are identical."""
    hw = get_hardware("toy")
    w = prepare(params["f32"], CFG, mode)  # type: ignore[arg-type]
    ids = np.arange(6) % CFG.vocab_size
    a, b = EmulatingExecutor(hw, numeric=True), EmulatingExecutor(hw, numeric=False)
    la, _ = forward(w, CFG, ids, mode=mode, ex=a)  # type: ignore[arg-type]
    lb, _ = forward(w, CFG, ids, mode=mode, ex=b)  # type: ignore[arg-type]
    assert la.shape == lb.shape == (6, CFG.vocab_size)
    assert a.timeline().events == b.timeline().events
    assert np.asarray(lb).nbytes == 0  # cost-only values carry shapes, not numbers


def test_tiles_really_split_the_work_on_toy() -> None:
    """tiny on toy: d = 64 spans 8 slices of 8, the FFN's K = 176 spans 22 tiles of 8 rows."""
    hw = get_hardware("toy")
    ex = EmulatingExecutor(hw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 176)).astype(np.float32)
    F = rng.standard_normal((176, 5)).astype(np.float32)
    y = np.asarray(ex.matmul(x, F, op="t"))
    parts = [x[:, j : j + 8] @ F[j : j + 8] for j in range(0, 176, 8)]  # 22 tiles
    while len(parts) > 1:  # the adder tree: pairs, odd one waits
        parts = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)] + (parts[-1:] if len(parts) % 2 else [])
    np.testing.assert_array_equal(y, parts[0])
    s = np.asarray(ex.reduce(x, "sum", op="t"))
    chunks = x.reshape(3, 22, 8).sum(-1)
    while chunks.shape[1] > 1:
        k = chunks.shape[1]
        paired = chunks[:, 0 : k - 1 : 2] + chunks[:, 1:k:2]
        chunks = np.concatenate([paired, chunks[:, k - 1 :]], axis=1) if k % 2 else paired
    np.testing.assert_array_equal(s, chunks)


@pytest.mark.parametrize("kind", ["max", "sum", "mean", "rms_scale"])
@pytest.mark.parametrize("hw_name", ["toy", "corsair-like"])
def test_every_reduction_kind_matches_the_plain_executor(kind: ReduceKind, hw_name: str) -> None:
    """Each ReduceKind, per-slice partials combined by a tree vs numpy's whole-row reduction, in float64.

    A sum of n = 200 terms |x| <= 3 in any order is within n * u64 * sum|x| <= 200 * u64 * 600 of the exact sum
    (Higham, Thm 3.1), so two orders differ by at most twice that (~3e-11); the mean and 1/rms (of size ~0.6) are
    smaller still. A dropped partial or a missing 1/n is off by O(1)."""
    x = np.random.default_rng(0).uniform(-3, 3, size=(3, 200))
    plain = NumpyExecutor(storage=np.float64).reduce(x, kind, op="r", eps=1e-6)
    emulated = np.asarray(
        EmulatingExecutor(get_hardware(hw_name), storage=np.float64).reduce(x, kind, op="r", eps=1e-6)
    )
    assert emulated.shape == plain.shape == (3, 1)
    np.testing.assert_allclose(emulated, plain, rtol=0, atol=2 * 200 * U64 * 600)
