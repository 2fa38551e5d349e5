"""The Llama forward pass on the random `tiny` preset: incremental decode vs full recompute, fused vs baseline in
float32 and float16, both RoPE layouts, the preallocated KV cache, and the RoPE tables vs the reference layer.

Tolerances: `tests.tolerances.decode_tol` (float32, worst case through the model); a position off by one, a stale
cache slot or a wrong mask gives O(max|logit|) differences instead.
"""

from __future__ import annotations

import numpy as np
import pytest

from normfuse_ref.layers import RopeLayout, rope, rotate_pairs
from normfuse_ref.models.llama import (
    KVCache,
    Mode,
    empty_cache,
    forward,
    get_preset,
    prepare,
    prepared_shapes,
    random_params,
)
from normfuse_ref.models.llama.forward import rope_tables
from normfuse_ref.models.llama.weights import convert_rope_layout, pack_blocks
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref.precision import dtype_info
from tests.tolerances import decode_tol

MODES: list[Mode] = ["baseline", "fused"]
TINY = get_preset("tiny")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("prompt_len", [1, 2, 7, 31])
def test_prefill_then_decode_equals_full_recompute_float32(mode: Mode, prompt_len: int) -> None:
    cfg = TINY
    w = prepare(pack_blocks(random_params(cfg, seed=1), cfg), cfg, mode)
    ids = np.random.default_rng(prompt_len).integers(0, cfg.vocab_size, prompt_len + 6)
    full, _ = forward(w, cfg, ids, mode=mode)  # (T, V) all at once
    logits, cache = forward(w, cfg, ids[:prompt_len], mode=mode)  # prefill
    rows = [logits]
    for t in range(prompt_len, ids.size):
        step, cache = forward(w, cfg, ids[t : t + 1], cache, mode=mode)  # decode
        rows.append(step)
    got = np.concatenate(rows)
    assert got.shape == full.shape and cache.length == ids.size
    np.testing.assert_allclose(got, full, rtol=0, atol=decode_tol(cfg, full, ids.size))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [(), (3,)])
def test_logits_to_keep_gives_the_last_rows_of_the_whole_call(mode: Mode, batch: tuple[int, ...]) -> None:
    """The kept rows are the whole call's last rows (their output product is cut differently, so within
    `decode_tol`, which bounds such a difference; bit for bit when nothing is cut off), and the cache is the same
    bits: only the output layer reads fewer rows."""
    cfg, T = TINY, 24
    w = prepare(pack_blocks(random_params(cfg, seed=4), cfg), cfg, mode)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, (*batch, T))
    full, cache = forward(w, cfg, ids, mode=mode)  # ([B,] T, V)
    for k in (1, 3, 17, T - 1, T, T + 5):
        kept, kcache = forward(w, cfg, ids, mode=mode, logits_to_keep=k)
        assert kept.shape == (*batch, min(k, T), cfg.vocab_size), k
        assert np.array_equal(kcache.k, cache.k) and np.array_equal(kcache.v, cache.v) and kcache.length == T
        if k >= T:
            assert np.array_equal(kept, full), k
        np.testing.assert_allclose(kept, full[..., -min(k, T) :, :], rtol=0, atol=decode_tol(cfg, full, T))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="logits_to_keep must be a positive integer; got"):
            forward(w, cfg, ids, mode=mode, logits_to_keep=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_a_cache_branches_by_explicit_copy(mode: Mode) -> None:
    """Branching: continuing a copy of a cache leaves the first branch intact; continuing the same cache twice is
    refused (it would overwrite the slots the first continuation wrote)."""
    cfg = TINY
    w = prepare(random_params(cfg, seed=2), cfg, mode)
    prefix, a, b = np.array([3, 4, 5, 6]), np.array([7, 8]), np.array([9, 10, 11])
    _, cache = forward(w, cfg, prefix, empty_cache(cfg, capacity=16), mode=mode)
    la, cache_a = forward(w, cfg, a, cache, mode=mode)
    with pytest.raises(ValueError, match=r"already continued to 6 positions.*cache\.copy"):
        forward(w, cfg, b, cache, mode=mode)
    lb, cache_b = forward(w, cfg, b, cache.copy(), mode=mode)  # the same parent, copied
    la2, _ = forward(w, cfg, np.array([12]), cache_a, mode=mode)  # continue branch a
    full_a, _ = forward(w, cfg, np.concatenate([prefix, a, [12]]), mode=mode)
    full_b, _ = forward(w, cfg, np.concatenate([prefix, b]), mode=mode)
    tol = decode_tol(cfg, full_a, 8)
    np.testing.assert_allclose(la, full_a[4:6], rtol=0, atol=tol)
    np.testing.assert_allclose(la2, full_a[6:], rtol=0, atol=tol)
    np.testing.assert_allclose(lb, full_b[4:], rtol=0, atol=tol)
    assert cache.length == 4 and cache_a.length == 6 and cache_b.length == 7


def test_the_cache_is_written_in_place_and_grows_by_copying() -> None:
    """Decoding writes each new position into the buffers passed in (no copy) while they have room; a full cache
    moves into larger buffers once (doubling), and every cache a caller holds keeps its positions."""
    cfg = TINY
    w = prepare(random_params(cfg, seed=8), cfg, "fused")
    ids = np.arange(12) * 5 % cfg.vocab_size
    cache = empty_cache(cfg, capacity=6)
    _, c = forward(w, cfg, ids[:4], cache, mode="fused")
    assert c.k is cache.k and c.length == 4 and cache.length == 0
    _, c2 = forward(w, cfg, ids[4:6], c, mode="fused")
    assert c2.k is cache.k and c2.capacity == 6
    _, c3 = forward(w, cfg, ids[6:7], c2, mode="fused")  # full: moved, once
    assert c3.k is not cache.k and c3.capacity >= 7 and c3.length == 7
    np.testing.assert_array_equal(c3.k[:, :6], cache.k[:, :6])
    _, c4 = forward(w, cfg, ids[7:8], c3, mode="fused")
    assert c4.k is c3.k
    _, full = forward(w, cfg, ids[:8], mode="fused")
    np.testing.assert_allclose(c4.k[:, :8], full.k, rtol=0, atol=1e-5)
    assert isinstance(full, KVCache) and full.capacity == 8  # without a cache: room for exactly these tokens
    with pytest.raises(ValueError, match="capacity 3 cannot hold"):
        c4.copy(capacity=3)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_tables_give_the_reference_rope(layout: RopeLayout) -> None:
    """The forward pass's angles, computed once per call and broadcast over heads, rotate as `layers.rope` does."""
    x = np.random.default_rng(1).standard_normal((2, 7, 3, 16)).astype(np.float32)  # (B, T, H, hd)
    positions = 5 + np.arange(7)
    cos, sin = rope_tables(positions, 16, 10000.0)
    want = rope(x, positions[:, None], base=10000.0, layout=layout)
    np.testing.assert_array_equal(rotate_pairs(x, cos, sin, layout), want)


def test_both_rope_layouts_give_the_same_logits() -> None:
    """The same model with Q and K columns permuted between the two pairings, each run with its own RoPE
    layout: attention scores sum the same products in another order, so logits agree to rounding."""
    cfg = TINY.replace(rope_layout="interleaved")
    p = random_params(cfg, seed=5)
    ph, cfg_h = convert_rope_layout(p, cfg, "half")
    assert cfg_h.rope_layout == "half"
    back, _ = convert_rope_layout(ph, cfg_h, "interleaved")
    for k in p:
        np.testing.assert_array_equal(back[k], p[k])
    ids = np.arange(20) * 7 % cfg.vocab_size
    for mode in MODES:
        a, _ = forward(prepare(p, cfg, mode), cfg, ids, mode=mode)
        b, _ = forward(prepare(ph, cfg_h, mode), cfg_h, ids, mode=mode)
        np.testing.assert_allclose(a, b, rtol=0, atol=decode_tol(cfg, a, ids.size))
        wrong, _ = forward(prepare(ph, cfg, mode), cfg, ids, mode=mode)
        assert np.abs(wrong - a).max() > 100 * decode_tol(cfg, a, ids.size), "the layouts must matter"


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_fused_is_as_accurate_as_baseline(storage: str) -> None:
    """The equivalence of docs/numerics.md: |fused - exact| <= c |baseline - exact| + atol, exact = float64 on the stored
    weights. Both orders round at the same number of places (fused rounds g ⊙ F once where baseline rounds x s g
    once, and s (x F) once where baseline rounds x s g F once), so to first order their error bounds are equal;
    c = 2 leaves room for the maxima of two different rounding patterns, and atol = 2 u_s max|logit| is the final
    rounding of the logits to storage, which neither order avoids (it covers a baseline that lands luckily close).
    Measured (seed 6): float32 1.7e-6 vs 1.6e-6, float16 4.9e-3 vs 3.5e-3, max|logit| 4.8."""
    cfg = TINY
    p = random_params(cfg, seed=6, dtype=storage)
    ids = np.random.default_rng(6).integers(0, cfg.vocab_size, 24)
    exact, _ = forward(
        prepare({k: v.astype(np.float64) for k, v in p.items()}, cfg, "baseline"), cfg, ids,
        mode="baseline", ex=NumpyExecutor(np.float64),
    )  # fmt: skip
    ex = NumpyExecutor(storage)
    got = {m: forward(prepare(p, cfg, m), cfg, ids, mode=m, ex=ex)[0].astype(np.float64) for m in MODES}
    err = {m: float(np.abs(got[m] - exact).max()) for m in MODES}
    u_s = dtype_info(storage).unit_roundoff
    atol = 2 * u_s * float(np.abs(exact).max())
    assert err["fused"] <= 2 * err["baseline"] + atol, (storage, err, atol)
    assert got["fused"].dtype == np.float64 and np.isfinite(got["fused"]).all()


def test_prepare_shares_packed_blocks_and_keeps_its_keys() -> None:
    cfg = TINY
    p = pack_blocks(random_params(cfg, seed=7), cfg)
    base = prepare(p, cfg, "baseline")
    fused = prepare(p, cfg, "fused")
    shapes = prepared_shapes(cfg)
    for w in (base, fused):
        assert {k: tuple(v.shape) for k, v in w.items()} == shapes
    assert np.shares_memory(base["blk.0.attn_qkv"], p["blk.0.attn_q.weight"])
    assert np.shares_memory(base["blk.1.ffn_gate_up"], p["blk.1.ffn_up.weight"])
    want = np.concatenate([p["blk.0.attn_q.weight"], p["blk.0.attn_k.weight"], p["blk.0.attn_v.weight"]], axis=1)
    np.testing.assert_array_equal(base["blk.0.attn_qkv"], want)
    g = p["blk.0.attn_norm.weight"].astype(np.float64)
    np.testing.assert_array_equal(fused["blk.0.attn_qkv"], (g[:, None] * want).astype(np.float32))
    unpacked = random_params(cfg, seed=7)
    for k in ("blk.0.attn_qkv", "blk.1.ffn_gate_up", "output"):
        np.testing.assert_array_equal(prepare(unpacked, cfg, "fused")[k], fused[k])
