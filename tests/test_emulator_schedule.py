"""The emulator's schedule: an analytic closed form of one block, the ordering rule, and the fusion properties.

The closed form below is written from the hardware formulas (normfuse_ref.hw.costs) and the block's dataflow
(forward.py), without the emulator's scheduler: in the baseline order a decode block is one chain, so its latency
is the sum of its costs; in the fused order each RMSNorm -> linear site costs max(matmul, reduction) + scale and
the softmax -> V site costs local + e@V + merge + scale.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from normfuse_ref.hw import costs
from normfuse_ref.hw.config import (
    PRESETS,
    ClockConfig,
    DIMCConfig,
    HardwareConfig,
    LayoutConfig,
    MemoryConfig,
    NetworkConfig,
    SIMDConfig,
    with_overrides,
)
from normfuse_ref.hw.study import Scenario, compare, emulate
from normfuse_ref.hw.timeline import ENGINES, Timeline
from normfuse_ref.llama.config import PRESETS as MODELS
from normfuse_ref.llama.config import LlamaConfig

# ---------------------------------------------------------------------------------------------------------------
# The analytic closed form of one decode block (T = 1, B = 1)
# ---------------------------------------------------------------------------------------------------------------


def ew(hw: HardwareConfig, op: str, load: int, row_len: int) -> int:
    elem, row = costs.simd_program(op)
    rows = -(-load // min(row_len, hw.layout.elems_per_slice))
    return costs.simd_cycles(hw, load=load, rows=rows, elem_ops=elem, row_ops=row)


def weight_mm(hw: HardwareConfig, n: int, m: int) -> int:
    mp = costs.weight_mapping(hw, n, m)
    return costs.dimc_cycles(hw, mp, rows=1) + costs.psum_cycles(hw, mp, rows=1, width=min(m, hw.dimc.tile_cols))


def rms_reduce(hw: HardwareConfig, d: int) -> int:
    E, w = hw.layout.elems_per_slice, hw.network.word_bytes
    load = min(d, E)
    return (
        costs.local_reduce_cycles(hw, kind="rms_scale", row_len=d, load=load)
        + costs.collective_cycles(
            hw, slices=-(-d // E), rows=1, combine=hw.simd.add_cycles, payload_bytes=w, broadcast=True
        )
        + costs.reduce_finish_cycles(hw, kind="rms_scale", rows=1)
    )


def analytic_block(cfg: LlamaConfig, hw: HardwareConfig, S: int) -> dict[str, int]:
    """Cycles of one decode block (S key positions after the new token) in both orders."""
    E, tn, w = hw.layout.elems_per_slice, hw.dimc.tile_cols, hw.network.word_bytes
    d, f, hd, G, Hkv, Hq = cfg.dim, cfg.ffn_dim, cfg.head_dim, cfg.group, cfg.n_kv_heads, cfg.n_heads
    m_qkv = (Hq + 2 * Hkv) * hd
    qkv_load = min(m_qkv, E)
    rope = ew(hw, "rope_q", qkv_load, hd) + ew(hw, "rope_k", qkv_load, hd)
    kmp = costs.activation_mapping(hw, hd, S, Hkv)
    scores = costs.dimc_cycles(hw, kmp, rows=G) + costs.psum_cycles(hw, kmp, rows=G, width=min(S, tn))
    z_load = G * min(S, E)
    mask = ew(hw, "attn_mask", z_load, S)
    P = -(-S // E)
    vmp = costs.activation_mapping(hw, S, hd, Hkv)
    pv_dimc = costs.dimc_cycles(hw, vmp, rows=G)
    out = weight_mm(hw, Hq * hd, d)
    residual = ew(hw, "residual", min(d, E), d)
    swiglu = ew(hw, "swiglu", min(2 * f, E), f)
    down = weight_mm(hw, f, d)

    def ar(kind: str, combine: int) -> int:
        return costs.local_reduce_cycles(hw, kind=kind, row_len=S, load=z_load) + costs.collective_cycles(
            hw, slices=P, rows=G, combine=combine, payload_bytes=w, broadcast=True
        )

    s = hw.simd
    baseline = (
        rms_reduce(hw, d)
        + ew(hw, "attn_qkv.norm", min(d, E), d)
        + weight_mm(hw, d, m_qkv)
        + rope
        + scores
        + mask
        + ar("max", s.max_cycles)
        + ew(hw, "softmax.exp", z_load, S)
        + ar("sum", s.add_cycles)
        + ew(hw, "softmax.div", z_load, S)
        + pv_dimc
        + costs.psum_cycles(hw, vmp, rows=G, width=min(hd, tn))
        + out
        + residual
        + rms_reduce(hw, d)
        + ew(hw, "ffn_gate_up.norm", min(d, E), d)
        + weight_mm(hw, d, 2 * f)
        + swiglu
        + down
        + residual
    )
    width = min(hd, tn)
    merge = costs.collective_cycles(
        hw,
        slices=P,
        rows=G,
        combine=costs.merge_combine_cycles(hw, width=width),
        payload_bytes=(width + 2) * w,
        broadcast=False,
    )
    fused = (
        max(weight_mm(hw, d, m_qkv), rms_reduce(hw, d))
        + ew(hw, "attn_qkv.scale", qkv_load, m_qkv)
        + rope
        + scores
        + mask
        + costs.softmax_local_cycles(hw, row_len=S, load=z_load)
        + pv_dimc
        + merge
        + ew(hw, "softmax.scale", G * min(hd, E), hd)
        + out
        + residual
        + max(weight_mm(hw, d, 2 * f), rms_reduce(hw, d))
        + ew(hw, "ffn_gate_up.scale", min(2 * f, E), 2 * f)
        + swiglu
        + down
        + residual
    )
    return {"baseline": baseline, "fused": fused}


def block_cycles(tl: Timeline, layer: int) -> int:
    s, e = tl.layer_window(layer)
    return e - s


@pytest.mark.parametrize(
    ("model", "hw_name", "context"),
    [
        ("tiny", "toy", 9),
        ("tiny", "corsair-like", 40),
        ("llama2-7b", "corsair-like", 2048),
        ("llama3-8b", "corsair-like", 777),
        ("llama3-70b", "corsair-like", 8191),
    ],
)
def test_analytic_block_latency_matches_the_emulator(model: str, hw_name: str, context: int) -> None:
    cfg, hw = MODELS[model].replace(n_layers=2), PRESETS[hw_name]
    for w in (
        costs.weight_mapping(hw, cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim),
        costs.weight_mapping(hw, cfg.dim, 2 * cfg.ffn_dim),
    ):
        assert w.k_split == 1  # the closed form assumes the RMSNorm sites' matmuls need no network partial sums
    want = analytic_block(cfg, hw, context + 1)
    c = compare(Scenario(cfg, "decode", context, 1), hw)
    for layer in (0, 1):
        assert block_cycles(c.baseline, layer) == want["baseline"], f"baseline block {layer}"
        assert block_cycles(c.fused, layer) == want["fused"], f"fused block {layer}"


# ---------------------------------------------------------------------------------------------------------------
# The ordering rule
# ---------------------------------------------------------------------------------------------------------------


def check_ordering_rule(tl: Timeline) -> None:
    ev = tl.events
    for engine in ENGINES:  # one sub-event at a time per engine
        spans = sorted((e.start, e.end) for e in ev if e.engine == engine)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), f"{engine} overlaps"
    for i, e in enumerate(ev):  # every start is caused by its pred's end (or t = 0)
        assert e.end > e.start >= 0
        if e.pred >= 0:
            assert e.pred < i and ev[e.pred].end == e.start
        else:
            assert e.start == 0
    path = tl.critical_path()  # contiguous from 0 to the makespan
    assert ev[path[0]].start == 0 and ev[path[-1]].end == tl.makespan
    assert all(ev[a].end == ev[b].start for a, b in itertools.pairwise(path))
    assert sum(ev[i].duration for i in path) == tl.makespan
    assert 0 <= tl.collective_exposed <= tl.collective_total


def test_ordering_rule_on_a_real_model() -> None:
    c = compare(Scenario(MODELS["llama3-8b"].replace(n_layers=3), "prefill", 100, 2), PRESETS["corsair-like"])
    for tl in (c.baseline, c.fused):
        check_ordering_rule(tl)
    again = compare(Scenario(MODELS["llama3-8b"].replace(n_layers=3), "prefill", 100, 2), PRESETS["corsair-like"])
    assert again.fused.events == c.fused.events  # deterministic


def test_back_filling_lets_a_collective_overtake_partial_sums() -> None:
    """A matmul whose K spans slices reserves the network for its partial sums when it is issued; the fused
    RMSNorm collective, issued after it but ready earlier, runs in the idle gap before them."""
    hw = with_overrides(PRESETS["toy"], {"memory": {"sram_bytes_per_cycle": 1}})  # slow tiles: a long gap
    cfg = LlamaConfig(
        "wide",
        dim=512,
        n_layers=1,
        n_heads=8,
        n_kv_heads=8,
        ffn_dim=64,
        vocab_size=32,
        context_length=64,
        rope_base=1e4,
        norm_eps=1e-5,
        tied_embeddings=False,
    )
    assert costs.weight_mapping(hw, 512, 3 * 512).k_split > 1
    tl = emulate(Scenario(cfg, "decode", 4, 1), hw, "fused")
    check_ordering_rule(tl)
    net = [e for e in tl.events if e.engine == "NET" and e.layer == 0]
    first_psum = next(i for i, e in enumerate(net) if e.op == "attn_qkv" and e.step == "psum")
    ar = next(i for i, e in enumerate(net) if e.op == "attn_qkv.rms")
    assert ar > first_psum  # issued later ...
    assert net[ar].end <= net[first_psum].start  # ... but placed earlier


# ---------------------------------------------------------------------------------------------------------------
# Properties over machines and shapes (Hypothesis)
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def machines(draw: st.DrawFn) -> HardwareConfig:
    """Small machines with every timing parameter free (within bounds that keep runs fast)."""

    def i(lo: int, hi: int) -> int:
        return draw(st.integers(lo, hi))

    return HardwareConfig(
        name="drawn",
        clock=ClockConfig(ghz=1.0),
        dimc=DIMCConfig(
            tile_rows=draw(st.sampled_from([4, 8, 16])),
            tile_cols=draw(st.sampled_from([4, 8, 16])),
            macs_per_cycle=draw(st.sampled_from([4, 16, 64])),
            pipeline_latency_cycles=i(0, 32),
            adder_level_cycles=i(0, 4),
        ),
        simd=SIMDConfig(
            lanes=draw(st.sampled_from([4, 8, 16])),
            pipeline_latency_cycles=i(0, 16),
            add_cycles=i(1, 4),
            mul_cycles=i(1, 4),
            max_cycles=i(1, 4),
            exp_cycles=i(1, 32),
            rsqrt_cycles=i(1, 32),
            reciprocal_cycles=i(1, 32),
        ),
        layout=LayoutConfig(elems_per_slice=draw(st.sampled_from([4, 8, 16]))),
        network=NetworkConfig(
            topology=draw(st.sampled_from(["mesh2d", "ring", "tree"])),
            hop_latency_cycles=i(0, 256),
            link_bytes_per_cycle=draw(st.sampled_from([4, 8, 32])),
            word_bytes=4,
        ),
        memory=MemoryConfig(
            sram_bytes_per_slice=draw(st.sampled_from([1024, 4096, 1 << 16])),
            sram_bytes_per_cycle=draw(st.sampled_from([4, 16, 64])),
            weight_fraction=0.75,
        ),
    )


@st.composite
def models(draw: st.DrawFn, *, min_dim: int = 1) -> LlamaConfig:
    Hkv, G = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 4]))
    hd = draw(st.sampled_from([4, 8, 16, 32]))
    assume(Hkv * G * hd >= min_dim)
    return LlamaConfig(
        "drawn",
        dim=Hkv * G * hd,
        n_layers=1,
        n_heads=Hkv * G,
        n_kv_heads=Hkv,
        ffn_dim=draw(st.sampled_from([8, 24, 64, 96])),
        vocab_size=48,
        context_length=1 << 12,
        rope_base=1e4,
        norm_eps=1e-5,
        tied_embeddings=False,
    )


SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


def site_events(tl: Timeline, layer: int | None, name: str) -> dict[str, list[Any]]:
    ev = [e for e in tl.events if e.layer == layer]
    return {
        "matmul": [e for e in ev if e.op == name],
        "reduce": [e for e in ev if e.op == f"{name}.rms"],
        "scale": [e for e in ev if e.op == f"{name}.scale"],
    }


@SLOW
@given(
    hw=machines(),
    cfg=models(),
    phase=st.sampled_from(["decode", "prefill"]),
    context=st.integers(1, 70),
    batch=st.integers(1, 2),
)
def test_no_scale_before_its_collective_and_the_lower_bound_is_reached(
    hw: HardwareConfig, cfg: LlamaConfig, phase: str, context: int, batch: int
) -> None:
    """Fused order: every scale op starts after its collective ends; each RMSNorm -> linear site takes exactly
    max(matmul path, reduction path) + scale when nothing else competes, so when the matmul path is the longer
    one, none of the site's collective time is on the critical path."""
    tl = emulate(Scenario(cfg, phase, context, batch), hw, "fused")  # type: ignore[arg-type]
    check_ordering_rule(tl)
    crit = {tl.events[i] for i in tl.critical_path()}
    for layer, name in ((0, "attn_qkv"), (0, "ffn_gate_up"), (None, "output")):
        s = site_events(tl, layer, name)
        (scale,) = s["scale"]
        t0 = min(e.start for e in s["matmul"] + s["reduce"])
        m_end, r_end = max(e.end for e in s["matmul"]), max(e.end for e in s["reduce"])
        assert scale.start >= r_end and scale.start >= m_end
        if s["matmul"][0].start == s["reduce"][0].start == t0 and len(s["matmul"]) == 1:
            # no partial sums on the network: the two paths run side by side from t0
            assert scale.start == max(m_end, r_end)
            if m_end - t0 >= r_end - t0:
                assert not crit & set(s["reduce"]), "a hidden collective is on the critical path"
    merge = {e.layer: e for e in tl.events if e.op == "softmax.merge"}  # none when one slice holds every key
    for f in (e for e in tl.events if e.op == "softmax.scale"):
        assert f.layer not in merge or f.start >= merge[f.layer].end


@SLOW
@given(hw=machines(), cfg=models(), context=st.integers(1, 70), batch=st.integers(1, 2))
def test_fused_is_never_slower_in_decode_when_a_hop_outlasts_a_merge_step(
    hw: HardwareConfig, cfg: LlamaConfig, context: int, batch: int
) -> None:
    """fused latency <= baseline latency, for a decode step on any machine where one network hop takes at least
    as long as one online-softmax merge step on a SIMD unit (costs.merge_combine_cycles). Outside that domain the
    fused softmax can lose: see test_where_fusion_loses."""
    width = min(cfg.head_dim, hw.dimc.tile_cols)
    assume(hw.network.hop_latency_cycles >= costs.merge_combine_cycles(hw, width=width))
    c = compare(Scenario(cfg, "decode", context, batch), hw)
    assert c.fused.makespan <= c.baseline.makespan


@SLOW
@given(hw=machines(), cfg=models(), phase=st.sampled_from(["decode", "prefill"]), context=st.integers(1, 70))
def test_rms_norm_sites_never_lose(hw: HardwareConfig, cfg: LlamaConfig, phase: str, context: int) -> None:
    """Each RMSNorm -> linear site on its own: fused (matmul beside the reduction, then scale) is never slower than
    baseline (reduction, normalise, matmul), on any machine, whenever a row spans at least one full slice."""
    assume(cfg.dim >= hw.layout.elems_per_slice)
    c = compare(Scenario(cfg, phase, context, 1), hw)  # type: ignore[arg-type]
    for layer, name in ((0, "attn_qkv"), (0, "ffn_gate_up"), (None, "output")):
        sb, sf = site_events(c.baseline, layer, name), site_events(c.fused, layer, name)
        norm = [e for e in c.baseline.events if e.layer == layer and e.op == f"{name}.norm"]
        base = max(e.end for e in sb["matmul"]) - min(e.start for e in sb["reduce"] + norm + sb["matmul"])
        fused = sf["scale"][0].end - min(e.start for e in sf["matmul"] + sf["reduce"])
        assert fused <= base, f"{name}: fused {fused} > baseline {base}"


def test_where_fusion_loses() -> None:
    """The pinned counterexample: a long prefill on a machine whose network hop is cheap and whose exp is slow.
    The fused softmax keeps one reduction tree (the online-softmax merge) whose every step rescales a row of the
    output (two exps and 2 (hd + 1) multiplies on a SIMD unit), pipelined over every query row; the baseline's
    max and sum all-reduces move one number per row. With many rows and cheap hops, the merge's per-row work
    outweighs the collectives it removes, and the whole forward pass is slower fused.
    Mitigation: merge fewer, larger slice states (a longer `layout.elems_per_slice`), or keep the baseline order
    for softmax in long prefills; the RMSNorm sites still gain (test_rms_norm_sites_never_lose)."""
    hw = HardwareConfig(
        name="cheap-hops",
        clock=ClockConfig(ghz=1.0),
        dimc=DIMCConfig(tile_rows=8, tile_cols=8, macs_per_cycle=64, pipeline_latency_cycles=0, adder_level_cycles=0),
        simd=SIMDConfig(lanes=4, pipeline_latency_cycles=0, exp_cycles=16),
        layout=LayoutConfig(elems_per_slice=4),
        network=NetworkConfig(topology="tree", hop_latency_cycles=1, link_bytes_per_cycle=32),
        memory=MemoryConfig(sram_bytes_per_slice=1 << 16, sram_bytes_per_cycle=64),
    )
    cfg = LlamaConfig(
        "small",
        dim=16,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        ffn_dim=8,
        vocab_size=16,
        context_length=128,
        rope_base=1e4,
        norm_eps=1e-5,
        tied_embeddings=False,
    )
    c = compare(Scenario(cfg, "prefill", 64, 1), hw)
    assert c.fused.makespan > c.baseline.makespan
    merge = sum(e.duration for e in c.fused.events if e.op == "softmax.merge")
    replaced = sum(
        e.duration
        for e in c.baseline.events
        if e.op in ("softmax.max", "softmax.sum") or (e.op == "attn_pv" and e.step == "psum")
    )
    assert merge > replaced


def test_matmul_path_longer_hides_everything_on_corsair_like() -> None:
    """On the calibrated machine a decode step's RMSNorm collectives are fully hidden; what stays exposed in the
    fused order is the softmax merge, which must follow the local e @ V."""
    c = compare(Scenario(MODELS["llama2-7b"].replace(n_layers=2), "decode", 2048, 1), PRESETS["corsair-like"])
    crit = [c.fused.events[i] for i in c.fused.critical_path()]
    exposed_ops = {e.op for e in crit if e.kind == "collective"}
    assert exposed_ops == {"softmax.merge"}
    assert np.isclose(c.fused.collective_exposed, sum(e.duration for e in c.fused.events if e.op == "softmax.merge"))
