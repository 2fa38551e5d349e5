"""The network's closed forms (normfuse_ref.hw.network) against the message-by-message simulation (netsim).

Both follow the micro-model written in network.py; they share only the machine's geometry (slice numbering,
Morton coordinates). The simulation builds the trees and rings from explicit nodes, measures hops between real
coordinates, and times every packet through links and combining nodes one at a time; the closed forms are
formulas over the lattice of the group. They must agree to floating-point rounding (both add the same few hundred
positive terms in different orders: a relative 1e-9 covers it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normfuse_ref.hw import netsim, network
from normfuse_ref.hw.config import PRESETS, HardwareConfig, NetworkConfig
from tests.hw_strategies import levels

CORSAIR, TOY = PRESETS["corsair-like"], PRESETS["toy"]
REL = 1e-9


def combine(hw: HardwareConfig, op_cycles: int = 1) -> object:
    return lambda words: -(-words // hw.simd.lanes) * op_cycles * hw.clock.ns_per_cycle


def closed(hw: HardwareConfig, count: int, stride: int, algorithm: str, words: int, *, reduce_only: bool) -> float:
    span = network.span_of(hw, count, stride)
    w = hw.memory.word_bytes
    if algorithm == "gather":
        return network.gather_ns(hw, span, words * 2.0)
    fn = network.reduce_ns if reduce_only else network.allreduce_ns
    return fn(hw, span, algorithm=algorithm, words=words, word_bytes=w, combine_ns_of=combine(hw))  # type: ignore[arg-type]


def simulated(hw: HardwareConfig, count: int, stride: int, algorithm: str, words: int, *, reduce_only: bool) -> float:
    out = netsim.simulate(
        hw,
        count,
        stride,
        algorithm=algorithm,
        words=words,
        combine_ns_of=combine(hw),  # type: ignore[arg-type]
        raw_bytes_each=words * 2.0,
        broadcast=not reduce_only and algorithm != "gather",
    )
    return out["reduce"] if reduce_only else out["total"]


# groups the mapper makes: contiguous blocks (KV key slices, a matmul's grid and K groups) and roots gk apart
# (gk a power of 4, so every lattice has equal spacing along x and y)
GROUPS = [(2, 1), (4, 1), (8, 1), (64, 1), (256, 1), (2048, 1), (4, 4), (32, 64), (128, 16), (8, 256), (16, 2048)]


@pytest.mark.parametrize(("count", "stride"), GROUPS)
@pytest.mark.parametrize("algorithm", ["tree", "ring", "gather"])
@pytest.mark.parametrize("words", [1, 64, 1000])
def test_closed_form_equals_simulation_on_corsair(count: int, stride: int, algorithm: str, words: int) -> None:
    if algorithm == "ring" and count > 256 and words > 1:
        pytest.skip("a 2048-slice ring with 1000 words takes the simulator too long; the 1-word case covers it")
    want = simulated(CORSAIR, count, stride, algorithm, words, reduce_only=False)
    got = closed(CORSAIR, count, stride, algorithm, words, reduce_only=False)
    assert got == pytest.approx(want, rel=REL), f"{algorithm} over {count} slices {stride} apart, {words} words"


@pytest.mark.parametrize(("count", "stride"), [(16, 1), (32, 1), (64, 1), (4, 4), (4, 16), (2, 16)])
@pytest.mark.parametrize("algorithm", ["tree", "ring", "gather"])
def test_closed_form_equals_simulation_on_toy(count: int, stride: int, algorithm: str) -> None:
    for words in (1, 9, 130):
        for reduce_only in (False, True):
            if algorithm == "ring" and reduce_only:
                continue  # the ring's reduce-only cost is its all-reduce cost (the gather to the root mirrors it)
            want = simulated(TOY, count, stride, algorithm, words, reduce_only=reduce_only)
            got = closed(TOY, count, stride, algorithm, words, reduce_only=reduce_only)
            assert got == pytest.approx(want, rel=REL), (count, stride, algorithm, words, reduce_only)


@pytest.mark.parametrize(("count", "stride"), GROUPS)
@pytest.mark.parametrize("nbytes", [4, 256, 32768])
def test_broadcast_equals_simulation(count: int, stride: int, nbytes: int) -> None:
    """A move (cut into packets, forwarded as they arrive) over the same trees."""
    want = netsim.simulate(CORSAIR, count, stride, algorithm="broadcast", raw_bytes_each=nbytes)["total"]
    assert network.broadcast_ns(CORSAIR, network.span_of(CORSAIR, count, stride), nbytes) == pytest.approx(
        want, rel=REL
    )


def test_tree_reduce_only_equals_simulation() -> None:
    for count, stride in GROUPS:
        for words in (1, 200):
            want = simulated(CORSAIR, count, stride, "tree", words, reduce_only=True)
            assert closed(CORSAIR, count, stride, "tree", words, reduce_only=True) == pytest.approx(want, rel=REL)


def test_two_slices_by_hand() -> None:
    """Two neighbouring slices, one word: the leaf's packet crosses one hop (2.6 ns) and its link (4 B at
    36.6 GB/s); the root combines it (1 cycle); the broadcast sends it back the same way."""
    hop, ser, c = 2.6, 4 / 36.6, 1 / 1.144
    span = network.span_of(CORSAIR, 2, 1)
    assert span.levels == (network.LevelSpan("noc", 2, 2, 1, 1, 1),)
    got = network.allreduce_ns(CORSAIR, span, algorithm="tree", words=1, word_bytes=4, combine_ns_of=combine(CORSAIR))  # type: ignore[arg-type]
    assert got == pytest.approx((hop + ser + c) + (hop + ser), rel=REL)
    # a packet is one SIMD vector: 64 words = 256 B; 65 words take two packets of 130 B
    assert network.packets(CORSAIR, 260) == (2, 130.0)


def test_spans_of_the_groups_the_mapper_makes() -> None:
    s = network.span_of(CORSAIR, 64, 1)  # 64 contiguous slices: an 8 x 8 Morton block on one chiplet
    assert s.levels == (network.LevelSpan("noc", 64, 8, 8, 1, 1),)
    s = network.span_of(CORSAIR, 32, 64)  # 32 roots 64 apart: 4 a chiplet (2 x 2, 8 hops apart), 8 chiplets
    assert s.levels == (network.LevelSpan("noc", 4, 2, 2, 8, 8), network.LevelSpan("d2d", 8, 8))
    s = network.span_of(CORSAIR, 4096, 1)  # two bridged cards
    assert s.names == ("noc", "d2d", "bridge") and s.participants == 4096
    assert network.union(network.span_of(CORSAIR, 4, 1), s).participants == 4096
    with pytest.raises(ValueError, match="need more than the 131072 slices"):
        network.span_of(CORSAIR, 2, 1 << 17)


def test_a_span_is_remembered_by_the_levels_topologies_and_fan_outs_only() -> None:
    """span_of is memoised on each level's (topology, fan-out): machines that differ in latency or bandwidth share
    a span (a sweep's points), machines that differ in a topology or a fan-out do not, whichever comes first."""
    net = CORSAIR.network

    def noc(**change: Any) -> HardwareConfig:  # CORSAIR with its slice network changed
        return dataclasses.replace(
            CORSAIR, network=dataclasses.replace(net, noc=dataclasses.replace(net.noc, **change))
        )

    slower, switched, wider = noc(hop_ns=9.0), noc(topology="all-to-all"), noc(fanout=4096)
    mesh = network.span_of(CORSAIR, 32, 64)
    assert network.span_of(slower, 32, 64) == mesh
    assert network.span_of(switched, 32, 64).levels[0] == network.LevelSpan("noc", 4, 4, 1)  # no lattice
    # one 64 x 64 chiplet: indices 64 k in Morton order have x bits 3-5 and y bits 3-4: an 8 x 4 lattice 8 apart
    assert network.span_of(wider, 32, 64).levels == (network.LevelSpan("noc", 32, 8, 4, 8, 8),)
    assert network.span_of(CORSAIR, 32, 64) == mesh


def test_ring_with_unequal_spacing_is_an_upper_bound() -> None:
    """Slices 2 apart in Morton order sit on a lattice twice as far apart along x as along y. The ring's closed
    form assumes every step is as long as the longer one, so it over-estimates there; the mapper never makes such
    groups (strides are powers of 4)."""
    span = network.span_of(CORSAIR, 32, 2)
    (ls,) = span.levels
    assert (ls.sx, ls.sy) == (2, 1)
    got = closed(CORSAIR, 32, 2, "ring", 8, reduce_only=False)
    assert got > simulated(CORSAIR, 32, 2, "ring", 8, reduce_only=False)


def test_the_simulation_refuses_a_ring_on_a_partial_lattice() -> None:
    with pytest.raises(ValueError, match="full lattice"):
        netsim.simulate(CORSAIR, 3, 1, algorithm="ring")


@st.composite
def small_machines(draw: st.DrawFn) -> HardwareConfig:
    """Toy-sized machines with every network parameter free."""

    net = NetworkConfig(
        noc=draw(levels([4, 16, 64], ["mesh2d", "all-to-all", "switch"], hop_max=100)),
        d2d=draw(levels([1, 2, 4], ["all-to-all", "switch", "mesh2d"], hop_max=100)),
        bridge=draw(levels([1, 2], ["all-to-all", "switch"], hop_max=100)),
        pcie=draw(levels([1, 2], ["switch"], hop_max=100)),
        nic=draw(levels([1], ["switch"], hop_max=100)),
    )
    return dataclasses.replace(TOY, network=net)


@settings(max_examples=60, deadline=None)
@given(hw=small_machines(), k=st.integers(0, 6), s=st.integers(0, 3), words=st.integers(1, 300), data=st.data())
def test_closed_forms_equal_simulation_on_drawn_machines(
    hw: HardwareConfig, k: int, s: int, words: int, data: st.DataObject
) -> None:
    total = math.prod(lv.fanout for lv in hw.network.levels())
    count, stride = 1 << k, 4**s
    if (count - 1) * stride >= total:
        return
    algorithm = data.draw(st.sampled_from(["tree", "gather", "ring"]))
    want = simulated(hw, count, stride, algorithm, words, reduce_only=False)
    assert closed(hw, count, stride, algorithm, words, reduce_only=False) == pytest.approx(want, rel=REL, abs=1e-9)
