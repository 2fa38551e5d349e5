"""Emulated vs plain for the LayerNorm families: the machine computes the same forward pass as NumpyExecutor, in
both orders, for the post-LN encoder (tiny BERT, a padded batch) and the pre-LN decoders (tiny GPT-2 and OPT,
prefill then decode through the KV cache).

The criterion and its justification are tests/test_emulator_numeric.py's: the two executors evaluate every
primitive in the same accumulation dtype from the same inputs and differ only in summation order (DIMC tiles and
an adder tree, per-slice partials), so against a float64 oracle on the same inputs
    err(emulated) <= 2 err(plain) + u max|output|,
and in float64 the emulator is the oracle to 4096 u64 max|output| (a wrong tile or a dropped partial is O(1)).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from normfuse_ref.hw import EmulatingExecutor, Value, get_hardware
from normfuse_ref.hw.study import Scenario, compare, map_scenario
from normfuse_ref.models import bert, gpt
from normfuse_ref.models.llama.weights import Mode
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref.precision import dtype_info

U32, U64 = dtype_info("float32").unit_roundoff, dtype_info("float64").unit_roundoff
BERT = bert.get_preset("tiny-bert")


def as_array(v: Any) -> np.ndarray:
    assert isinstance(v, Value)
    return np.asarray(v)


def padded() -> tuple[np.ndarray, np.ndarray]:
    """Two texts of 11 and 7 tokens, the second right-padded: ids and attention mask (2, 11)."""
    rng = np.random.default_rng(5)
    ids = rng.integers(1, BERT.vocab_size, size=(2, 11))  # (B, T)
    mask = np.ones((2, 11), dtype=np.int64)
    mask[1, 7:] = 0
    ids[1, 7:] = BERT.pad_id
    return ids, mask


@pytest.mark.parametrize("hw_name", ["toy", "corsair-like"])
@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_tiny_bert_emulated_equals_plain(hw_name: str, mode: Mode) -> None:
    hw = get_hardware(hw_name)
    ids, mask = padded()
    mp = map_scenario(Scenario(BERT, "prefill", 11, 2), hw)
    params = bert.random_params(BERT, seed=3)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    w, w64 = bert.prepare(params, BERT, mode), bert.prepare(p64, BERT, mode)
    plain = bert.forward(w, BERT, ids, mask, mode=mode)
    oracle = bert.forward(w64, BERT, ids, mask, mode=mode, ex=NumpyExecutor(np.float64))
    ex = EmulatingExecutor(hw, mp)
    em = as_array(bert.forward(w, BERT, ids, mask, mode=mode, ex=ex))
    keep = mask.astype(bool)
    err_plain = float(np.abs(plain - oracle)[keep].max())
    err_emul = float(np.abs(em - oracle)[keep].max())
    assert em.dtype == np.float32 and em.shape == plain.shape
    assert err_emul <= 2 * err_plain + U32 * float(np.abs(oracle).max()), (hw_name, mode, err_emul, err_plain)
    assert ex.timeline().makespan > 0
    # float64: the emulator is the oracle up to summation order
    ex64 = EmulatingExecutor(hw, mp, storage=np.float64)
    em64 = as_array(bert.forward(w64, BERT, ids, mask, mode=mode, ex=ex64))
    assert float(np.abs(em64 - oracle).max()) <= 4096 * U64 * float(np.abs(oracle).max())


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-opt"])
@pytest.mark.parametrize("hw_name", ["toy", "corsair-like"])
@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_tiny_gpt_prefill_then_decode_emulated_equals_plain(name: str, hw_name: str, mode: Mode) -> None:
    cfg = gpt.get_preset(name)
    hw = get_hardware(hw_name)
    mp = map_scenario(Scenario(cfg, "prefill", 13, 1), hw)
    params = gpt.random_params(cfg, seed=3)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    w, w64 = gpt.prepare(params, cfg, mode), gpt.prepare(p64, cfg, mode)
    ids = np.arange(13) * 7 % cfg.vocab_size
    cp = ce = c64 = None
    for step, chunk in enumerate((ids, np.array([5]), np.array([50]), np.array([17]))):
        plain, cp = gpt.forward(w, cfg, chunk, cp, mode=mode)
        oracle, c64 = gpt.forward(w64, cfg, chunk, c64, mode=mode, ex=NumpyExecutor(np.float64))
        emul, ce = gpt.forward(w, cfg, chunk, ce, mode=mode, ex=EmulatingExecutor(hw, mp))
        em = as_array(emul)
        err_plain, err_emul = float(np.abs(plain - oracle).max()), float(np.abs(em - oracle).max())
        assert em.shape == plain.shape
        assert err_emul <= 2 * err_plain + U32 * float(np.abs(oracle).max()), (step, err_emul, err_plain)


@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_cost_only_times_exactly_what_numeric_times(mode: Mode) -> None:
    """The timeline of the encoder depends on shapes only: numbers or dummies, the events are identical."""
    hw = get_hardware("toy")
    ids, mask = padded()
    mp = map_scenario(Scenario(BERT, "prefill", 11, 2), hw)
    w = bert.prepare(bert.random_params(BERT, seed=3), BERT, mode)
    shapes = {k: np.empty(s, dtype=np.dtype([])) for k, s in bert.prepared_shapes(BERT).items()}
    a, b = EmulatingExecutor(hw, mp, numeric=True), EmulatingExecutor(hw, mp, numeric=False)
    bert.forward(w, BERT, ids, mask, mode=mode, ex=a)
    bert.forward(shapes, BERT, ids, mask, mode=mode, ex=b)
    assert a.timeline().events == b.timeline().events


def test_an_encoder_has_no_decode_and_takes_its_prompt_in_one_call() -> None:
    cfg = bert.get_preset("all-minilm-l6-v2")
    with pytest.raises(ValueError, match=r"is an encoder .* no decode phase"):
        Scenario(cfg, "decode", 128)
    sc = Scenario(cfg, "prefill", 512, chunk=64)
    assert sc.chunks == (512,)  # bidirectional: chunks would hide later tokens from earlier ones
    c = compare(sc, get_hardware("corsair-like"))
    assert c.fused.makespan < c.baseline.makespan
    assert {e.op for e in c.baseline.events} >= {"embed_sum", "gelu", "attn_output.bias", "attn_qkv.norm_shift"}


def test_every_op_of_the_layernorm_families_is_priced() -> None:
    """An elementwise op without a SIMD program is an error (hw/costs.py): every op the three new forwards issue,
    in both orders, must have one. The GPT configs cover all three activations."""
    hw = get_hardware("toy")
    for cfg in (
        gpt.get_preset("tiny-gpt"),
        gpt.get_preset("tiny-opt"),
        gpt.get_preset("tiny-gpt").replace(activation="gelu"),
    ):
        c = compare(Scenario(cfg, "decode", 8), hw)
        ops = {e.op for e in c.fused.events} | {e.op for e in c.baseline.events}
        assert cfg.activation in ops and "embed_add" in ops and "output.scale_shift" in ops
