"""Emulated vs plain: the machine computes the same forward pass as NumpyExecutor, in both orders.

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

from normfuse_ref.hw import EmulatingExecutor, MappingPolicy, Value, emulator, get_hardware
from normfuse_ref.hw.study import Scenario, map_scenario
from normfuse_ref.models.llama import PRESETS, forward, prepare, random_params
from normfuse_ref.models.llama.model import Model
from normfuse_ref.ops import NumpyExecutor, ReduceKind
from tests.test_model_smollm2 import model, smollm2_tol  # noqa: F401 (the fixture is used by name)

CFG = PRESETS["tiny"]
U32, U64 = 2.0**-24, 2.0**-53


@pytest.fixture(scope="module")
def params() -> dict[str, Any]:
    p = random_params(CFG, seed=3)
    return {"f32": p, "f64": {k: v.astype(np.float64) for k, v in p.items()}}


def logits_of(v: Any) -> np.ndarray:
    assert isinstance(v, Value)
    return np.asarray(v)


def mapping_for(hw_name: str, tokens: int = 13, batch: int = 1) -> Any:
    return map_scenario(Scenario(CFG, "prefill", tokens, batch), get_hardware(hw_name))


@pytest.mark.parametrize("hw_name", ["toy", "corsair-like"])
@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_prefill_then_decode_matches_the_plain_forward(params: dict[str, Any], hw_name: str, mode: str) -> None:
    hw, mp = get_hardware(hw_name), mapping_for(hw_name)
    w, w64 = prepare(params["f32"], CFG, mode), prepare(params["f64"], CFG, mode)  # type: ignore[arg-type]
    ids = np.arange(13) * 7 % CFG.vocab_size
    cp = ce = c64 = None
    for step, chunk in enumerate((ids, np.array([5]), np.array([250]), np.array([17]))):
        plain, cp = forward(w, CFG, chunk, cp, mode=mode)  # type: ignore[arg-type]
        oracle, c64 = forward(w64, CFG, chunk, c64, mode=mode, ex=NumpyExecutor(storage=np.float64))  # type: ignore[arg-type]
        ex = EmulatingExecutor(hw, mp)
        emul, ce = forward(w, CFG, chunk, ce, mode=mode, ex=ex)  # type: ignore[arg-type]
        em = logits_of(emul)
        scale = float(np.abs(oracle).max())
        err_plain, err_emul = float(np.abs(plain - oracle).max()), float(np.abs(em - oracle).max())
        assert em.dtype == np.float32 and em.shape == plain.shape
        assert err_emul <= 2 * err_plain + U32 * scale, (
            f"step {step} on {hw_name} ({mode}): emulated error {err_emul:.3e} vs plain {err_plain:.3e}; "
            f"reproduce: forward(prepare(random_params(PRESETS['tiny'], seed=3), ...), ex=EmulatingExecutor("
            f"get_hardware({hw_name!r}), map_scenario(...)))"
        )
        assert ex.timeline().makespan > 0


@pytest.mark.parametrize("hw_name", ["toy", "corsair-like"])
@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_float64_emulation_is_the_oracle_up_to_summation_order(params: dict[str, Any], hw_name: str, mode: str) -> None:
    w64 = prepare(params["f64"], CFG, mode)  # type: ignore[arg-type]
    ids = np.stack([np.arange(9) * 3 % CFG.vocab_size, np.arange(9) * 11 % CFG.vocab_size])  # (B, T) = (2, 9)
    oracle, _ = forward(w64, CFG, ids, mode=mode, ex=NumpyExecutor(storage=np.float64))  # type: ignore[arg-type]
    ex = EmulatingExecutor(get_hardware(hw_name), mapping_for(hw_name, 9, 2), storage=np.float64)
    emul, _ = forward(w64, CFG, ids, mode=mode, ex=ex)  # type: ignore[arg-type]
    em = logits_of(emul)
    assert em.dtype == np.float64
    assert float(np.abs(em - oracle).max()) <= 4096 * U64 * float(np.abs(oracle).max())


@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_a_prefill_in_chunks_is_the_whole_prefill(params: dict[str, Any], mode: str) -> None:
    """The study issues a prefill in chunks (each a forward call after the previous chunks' cache): the last
    token's logits are the whole prefill's to rounding (the same bound as above), and the chunks pipeline
    through the stages of a two-stage mapping (stage 1 works on chunk 1 while stage 0 works on chunk 2)."""
    hw = get_hardware("toy")
    mp = map_scenario(Scenario(CFG, "prefill", 24, 1, chunk=8, mapping=MappingPolicy(tp_cards=1, stages=2)), hw)
    assert len(mp.stages) == 2
    w, w64 = prepare(params["f32"], CFG, mode), prepare(params["f64"], CFG, mode)  # type: ignore[arg-type]
    ids = np.arange(24) * 5 % CFG.vocab_size
    oracle, _ = forward(w64, CFG, ids, mode=mode, ex=NumpyExecutor(storage=np.float64))  # type: ignore[arg-type]
    whole, _ = forward(w, CFG, ids, mode=mode)  # type: ignore[arg-type]
    ex = EmulatingExecutor(hw, mp)
    cache = None
    for c in range(3):
        if c:
            ex.new_pass()
        last, cache = forward(w, CFG, ids[8 * c : 8 * c + 8], cache, mode=mode, ex=ex)  # type: ignore[arg-type]
    got = logits_of(last)[-1]
    err_plain = float(np.abs(whole[-1] - oracle[-1]).max())
    assert float(np.abs(got - oracle[-1]).max()) <= 2 * err_plain + U32 * float(np.abs(oracle).max())
    tl = ex.timeline()
    d0 = [e for e in tl.events if "DIMC@0" in e.resources]
    d1 = [e for e in tl.events if "DIMC@1" in e.resources]
    assert any(a.start < b.end and b.start < a.end for a in d0 for b in d1), "the stages never overlap"


@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_cost_only_times_exactly_what_numeric_times(params: dict[str, Any], mode: str) -> None:
    """The timeline depends on shapes only: numbers or dummies, the events are identical."""
    hw, mp = get_hardware("toy"), mapping_for("toy", 6)
    w = prepare(params["f32"], CFG, mode)  # type: ignore[arg-type]
    ids = np.arange(6) % CFG.vocab_size
    a, b = EmulatingExecutor(hw, mp, numeric=True), EmulatingExecutor(hw, mp, numeric=False)
    la, _ = forward(w, CFG, ids, mode=mode, ex=a)  # type: ignore[arg-type]
    lb, _ = forward(w, CFG, ids, mode=mode, ex=b)  # type: ignore[arg-type]
    assert la.shape == lb.shape == (6, CFG.vocab_size)
    assert a.timeline().events == b.timeline().events
    assert np.asarray(lb).nbytes == 0  # cost-only values carry shapes, not numbers


@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_shared_plans_time_every_pass_as_cold_plans_do(params: dict[str, Any], mode: str) -> None:
    """The emulator memoises each primitive's plan (its steps, and the places and layouts they imply) per mapping,
    shared by every pass on it whatever its flags. So a pass times exactly the same on plans made by passes with
    other flags (in either order) as on plans it made itself from cold."""
    hw, mp = get_hardware("toy"), mapping_for("toy", 6)
    w = prepare(params["f32"], CFG, mode)  # type: ignore[arg-type]
    ids = np.arange(6) % CFG.vocab_size
    _, cache = forward(w, CFG, ids, mode=mode)  # type: ignore[arg-type]
    flag_sets: list[dict[str, Any]] = [
        {},
        {"free_normalisation": True},
        {"one_pass_softmax": True},
        {"numeric": False},
        {"free_normalisation": True, "one_pass_softmax": True},
    ]

    def events(flags: dict[str, Any]) -> list[tuple[Any, ...]]:  # a prefill, then a decode step after it
        out = []
        for tokens, past in ((ids, None), (np.array([5]), cache)):
            ex = EmulatingExecutor(hw, mp, **flags)
            forward(w, CFG, tokens, None if past is None else past.copy(), mode=mode, ex=ex)  # type: ignore[arg-type]
            out.append(ex.timeline().events)
        return out

    cold = []
    for flags in flag_sets:
        emulator._PLANS.clear()
        cold.append(events(flags))
    for order in (flag_sets, flag_sets[::-1]):
        emulator._PLANS.clear()
        warm = {}
        for flags in order:  # each pass on the plans the passes before it made
            warm[flag_sets.index(flags)] = events(flags)
        assert [warm[i] for i in range(len(flag_sets))] == cold


def test_tiles_really_split_the_work_on_toy() -> None:
    """A K = 176 matmul spans 22 tiles of 8 rows, summed by a binary adder tree; a reduction is per-slice partials."""
    ex = EmulatingExecutor(get_hardware("toy"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 176)).astype(np.float32)
    F = rng.standard_normal((176, 5)).astype(np.float32)
    y = np.asarray(ex.matmul(x, F, op="t"))
    parts = [x[:, j : j + 8] @ F[j : j + 8] for j in range(0, 176, 8)]  # 22 tiles
    while len(parts) > 1:  # the adder tree: pairs, odd one waits
        parts = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)] + (parts[-1:] if len(parts) % 2 else [])
    np.testing.assert_array_equal(y, parts[0])
    s = np.asarray(ex.reduce(x, "sum", op="t"))
    chunk = -(-176 // ex.mapping.default_place(0, 176).count)
    chunks = np.stack([x[:, i : i + chunk].sum(-1) for i in range(0, 176, chunk)], axis=1)
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


@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_smollm2_emulated_equals_plain(model: Model, mode: str) -> None:  # noqa: F811 (pytest fixture)
    """The real model on corsair-like, on the mapper's mapping: a prompt then one decode step, logits within the
    float32 bound of tests/test_model_smollm2.py (only summation orders differ), the same greedy tokens."""
    cfg, w = model.cfg, model.weights(mode)  # type: ignore[arg-type]
    hw = get_hardware("corsair-like")
    ids = np.array([1, 9690, 314, 253, 3575, 30])
    mp = map_scenario(Scenario(cfg, "prefill", len(ids), 1), hw)
    plain, cache_p = forward(w, cfg, ids, mode=mode)  # type: ignore[arg-type]
    emul, cache_e = forward(w, cfg, ids, mode=mode, ex=EmulatingExecutor(hw, mp))  # type: ignore[arg-type]
    em = logits_of(emul)
    assert float(np.abs(em - plain).max()) <= smollm2_tol(cfg, plain)
    assert (em.argmax(-1) == plain.argmax(-1)).all()
    nxt = np.array([int(plain[-1].argmax())])
    plain2, _ = forward(w, cfg, nxt, cache_p, mode=mode)  # type: ignore[arg-type]
    emul2, _ = forward(w, cfg, nxt, cache_e, mode=mode, ex=EmulatingExecutor(hw, mp))  # type: ignore[arg-type]
    assert float(np.abs(logits_of(emul2) - plain2).max()) <= smollm2_tol(cfg, plain2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("rows", "m"), [(32, 1100), (1, 21_000)])
def test_tiled_products_in_column_blocks_agree_with_the_one_call_tiles(
    monkeypatch: pytest.MonkeyPatch, dtype: str, rows: int, m: int
) -> None:
    """A weight product runs its tiles' partials and adder tree a block of columns at a time on the executor's
    workers: many rows (32 x 1100: four full blocks of MATMUL_COLUMNS and a short one), or a decode step's head
    (one row against 200 x 21,000 >= MATVEC_SPLIT weights: the plain executor's cut). The same tiles in one batched
    call must agree with it within twice the product's rounding bound (only BLAS's choice of kernel for each
    call's shape differs), and both with the exact product. K = 200: three full tiles and a padded one."""
    from normfuse_ref.accuracy import bounds as bd
    from normfuse_ref.hw import tiled

    rng = np.random.default_rng(5)
    x = rng.standard_normal((rows, 200)).astype(dtype)  # (T, n)
    F = rng.standard_normal((200, m)).astype(dtype)  # (n, m)
    kernels = tiled.TiledKernels(np.dtype(dtype), tile_rows=64)
    columns = kernels._columns(x.shape, F.shape)
    assert columns is not None and len(columns) > 1  # the case cuts F's columns
    blocks = kernels.matmul(x, F)
    monkeypatch.setattr(tiled.TiledKernels, "_columns", staticmethod(lambda x_shape, F_shape: None))
    one_call = kernels.matmul(x, F)  # every column in the one batched call
    bound = bd.matmul(bd.exact(x), bd.exact(F), bd.Precision.of(dtype)).b  # (T, m)
    exact = x.astype(np.float64) @ F.astype(np.float64)
    assert (np.abs(blocks - one_call) <= 2 * bound).all()
    assert (np.abs(blocks - exact) <= bound).all() and (np.abs(one_call - exact) <= bound).all()
