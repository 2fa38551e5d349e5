"""The Llama forward pass on the random `tiny` preset: incremental decode vs full recompute, fused vs baseline in
float32 and float16, both RoPE layouts, the KV-cache buffer, and the speed helpers vs the reference layers.

Tolerances (float32, `decode_tol`): incremental decode and full recompute run the same operations on the same
numbers, but BLAS sums a matrix-vector product (one new token) in another order than a matrix-matrix product (the
whole prompt), and softmax sums over a different blocking. Each length-n dot product then differs by at most
gamma_n ~ n u of the magnitude of its terms (Higham, sec. 3.1; tests/bounds.py), with u = 2^-24. A block has 5
products in series (QKV, scores, P V, output, gate/up, down: n <= max(d, f, S)), and differences from L blocks and
the head add up through the residual stream, so |decode - recompute| <= 5 (L + 1) n_max u max|logit| in the worst
case, errors of opposite sign never cancelling in it. A position off by one, a stale cache slot or a wrong mask
gives O(max|logit|) differences instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from normfuse_ref.layers import rope
from normfuse_ref.llama import LlamaConfig, forward, get_preset, prepare, prepared_shapes, random_params
from normfuse_ref.llama.forward import kv_append, rope_tables, rotate
from normfuse_ref.llama.weights import convert_rope_layout, pack_blocks
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref.precision import dtype_info

Array = NDArray[Any]
U32 = dtype_info("float32").unit_roundoff
MODES = ["baseline", "fused"]
TINY = get_preset("tiny")


def decode_tol(cfg: LlamaConfig, logits: Array, S: int) -> float:
    """Worst-case |decode - recompute| in float32 (module docstring)."""
    n_max = max(cfg.dim, cfg.ffn_dim, S)
    return 5 * (cfg.n_layers + 1) * n_max * U32 * float(np.abs(logits).max())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("prompt_len", [1, 2, 7, 31])
def test_prefill_then_decode_equals_full_recompute_float32(mode: str, prompt_len: int) -> None:
    cfg = TINY
    w = prepare(pack_blocks(random_params(cfg, seed=1), cfg), cfg, mode)  # type: ignore[arg-type]
    ids = np.random.default_rng(prompt_len).integers(0, cfg.vocab_size, prompt_len + 6)
    full, _ = forward(w, cfg, ids, mode=mode)  # type: ignore[arg-type]  # (T, V) all at once
    logits, cache = forward(w, cfg, ids[:prompt_len], mode=mode)  # type: ignore[arg-type]  # prefill
    rows = [logits]
    for t in range(prompt_len, ids.size):
        step, cache = forward(w, cfg, ids[t : t + 1], cache, mode=mode)  # type: ignore[arg-type]  # decode
        rows.append(step)
    got = np.concatenate(rows)
    assert got.shape == full.shape and cache.length == ids.size
    np.testing.assert_allclose(got, full, rtol=0, atol=decode_tol(cfg, full, ids.size))


@pytest.mark.parametrize("mode", MODES)
def test_a_cache_can_be_extended_twice_and_stays_valid(mode: str) -> None:
    """Branching: appending different tokens to the same cache must not disturb the first branch (kv_append
    writes into spare capacity only when no later append has claimed it)."""
    cfg = TINY
    w = prepare(random_params(cfg, seed=2), cfg, mode)  # type: ignore[arg-type]
    prefix, a, b = np.array([3, 4, 5, 6]), np.array([7, 8]), np.array([9, 10, 11])
    _, cache = forward(w, cfg, prefix, mode=mode)  # type: ignore[arg-type]
    la, cache_a = forward(w, cfg, a, cache, mode=mode)  # type: ignore[arg-type]
    lb, cache_b = forward(w, cfg, b, cache, mode=mode)  # type: ignore[arg-type]  # same parent cache again
    la2, _ = forward(w, cfg, np.array([12]), cache_a, mode=mode)  # type: ignore[arg-type]  # continue branch a
    full_a, _ = forward(w, cfg, np.concatenate([prefix, a, [12]]), mode=mode)  # type: ignore[arg-type]
    full_b, _ = forward(w, cfg, np.concatenate([prefix, b]), mode=mode)  # type: ignore[arg-type]
    tol = decode_tol(cfg, full_a, 8)
    np.testing.assert_allclose(la, full_a[4:6], rtol=0, atol=tol)
    np.testing.assert_allclose(la2, full_a[6:], rtol=0, atol=tol)
    np.testing.assert_allclose(lb, full_b[4:], rtol=0, atol=tol)
    assert cache.length == 4 and cache_a.length == 6 and cache_b.length == 7


def test_kv_append_equals_concatenate_and_reuses_its_buffer() -> None:
    rng = np.random.default_rng(0)
    c = np.zeros((0, 2, 4), np.float32)  # (S, Hkv, hd)
    parts = []
    for T in (5, 1, 1, 3):
        a = rng.standard_normal((T, 2, 4)).astype(np.float32)
        parts.append(a)
        prev = c
        c = kv_append(c, a, limit=64)
        np.testing.assert_array_equal(c, np.concatenate(parts))
        assert c.flags.writeable and c.dtype == np.float32
    assert np.shares_memory(c, prev), "the second and later appends should write in place"
    branch = kv_append(prev, np.ones((1, 2, 4), np.float32), limit=64)  # prev's slot 9 is taken by c
    assert not np.shares_memory(branch, c)
    np.testing.assert_array_equal(c, np.concatenate(parts))  # untouched by the branch
    batched = kv_append(np.zeros((2, 0, 2, 4), np.float32), np.ones((2, 3, 2, 4), np.float32))
    assert batched.shape == (2, 3, 2, 4)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotate_equals_the_reference_rope(layout: str) -> None:
    x = np.random.default_rng(1).standard_normal((2, 7, 3, 16)).astype(np.float32)  # (B, T, H, hd)
    positions = 5 + np.arange(7)
    cos, sin = rope_tables(positions, 16, 10000.0)
    want = rope(x, positions[:, None], base=10000.0, layout=layout)  # type: ignore[arg-type]
    np.testing.assert_array_equal(rotate(x, cos, sin, layout), want)


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
        a, _ = forward(prepare(p, cfg, mode), cfg, ids, mode=mode)  # type: ignore[arg-type]
        b, _ = forward(prepare(ph, cfg_h, mode), cfg_h, ids, mode=mode)  # type: ignore[arg-type]
        np.testing.assert_allclose(a, b, rtol=0, atol=decode_tol(cfg, a, ids.size))
        wrong, _ = forward(prepare(ph, cfg, mode), cfg, ids, mode=mode)  # type: ignore[arg-type]
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
    got = {m: forward(prepare(p, cfg, m), cfg, ids, mode=m, ex=ex)[0].astype(np.float64) for m in MODES}  # type: ignore[arg-type]
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
