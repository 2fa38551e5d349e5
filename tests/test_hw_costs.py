"""The cost plans (normfuse_ref.hw.costs) against numbers worked out by hand, and the scaling laws they imply."""

from __future__ import annotations

import dataclasses

import pytest

from normfuse_ref.hw import costs, network
from normfuse_ref.hw.config import PRESETS, with_overrides
from normfuse_ref.hw.layout import Grid, pow2_floor
from normfuse_ref.hw.mapping import choose_grid

TOY = PRESETS["toy"]  # tiles 8x8, 16 MACs/cycle, 8 lanes, 4 KiB SRAM at 8 B/cycle a slice
CORSAIR = PRESETS["corsair-like"]  # tiles 64x64, 512 MACs/cycle, 64 lanes, 1 MiB at 64 B/cycle a slice


def test_simd_programs_by_op_name() -> None:
    assert costs.simd_program("attn_qkv.scale") == (("mul",), ())
    assert costs.simd_program("softmax.scale") == (("mul", "max"), ("recip",))
    with pytest.raises(ValueError, match="something_new"):
        costs.simd_program("something_new")
    # toy SIMD: latency 2; 64 elements on a slice = 8 vectors; swiglu = exp 4 + add 1 + recip 4 + mul 1 + mul 1
    assert costs.simd_cycles(TOY, load=64, rows=8, elem_ops=costs.simd_program("swiglu")[0]) == 2 + 8 * 11


def test_local_partials_and_finish() -> None:
    # rms_scale on chunks of 8, 2 rows a slice (load 16): 2 vectors x (mul + add + 3 tree levels x add)
    assert costs.local_reduce_cycles(TOY, kind="rms_scale", chunk=8, load=16) == 2 + 2 * (1 + 1 + 3)
    assert costs.reduce_finish_cycles(TOY, kind="rms_scale", rows=2) == 2 + 1 * (1 + 1 + 6)
    assert costs.reduce_finish_cycles(TOY, kind="max", rows=2) == 0


def test_a_slice_streams_a_tile_in_64_cycles_and_turns_compute_bound_past_8_rows() -> None:
    """corsair-like: a 64 x 64 int8 tile is 4096 B, 64 cycles at 64 B/cycle; one row against it is 4096 MACs,
    8 cycles at 512 MACs/cycle. So up to 8 rows the slice is bound by SRAM bandwidth, beyond it by compute."""
    lat = CORSAIR.dimc.pipeline_latency_cycles
    for rows in (1, 4, 8):
        assert costs.dimc_cycles(CORSAIR, k_tiles=1, n_tiles=3, rows=rows, tile_bytes=4096) == lat + 3 * 64
    assert costs.dimc_cycles(CORSAIR, k_tiles=1, n_tiles=3, rows=9, tile_bytes=4096) == lat + 9 * 3 * 8
    assert costs.dimc_cycles(CORSAIR, k_tiles=1, n_tiles=3, rows=64, tile_bytes=4096) == lat + 64 * 3 * 8
    # the adder tree over a slice's K tiles: ceil(log2 k_tiles) levels
    assert costs.dimc_cycles(CORSAIR, k_tiles=5, n_tiles=1, rows=1, tile_bytes=4096) == lat + 5 * 64 + 3


def test_matmul_time_scales_with_bytes_per_slice() -> None:
    """Spread the same weight over twice the slices: the busiest slice streams half the bytes, so the DIMC time
    (less its fixed pipeline and adder latency) halves; a weight twice as large on the same slices doubles it."""
    lat = CORSAIR.dimc.pipeline_latency_cycles

    def tiles_time(g: Grid) -> int:
        (dimc,) = [st for st in costs.matmul_steps(CORSAIR, g, rows=1, src=None) if st.engine == "DIMC"]
        return dimc.cycles - lat - costs.clog2(g.k_tiles) * CORSAIR.dimc.adder_level_cycles

    a = Grid(4096, 4096, 16, 64, 4, 1)  # 64 x 64 tiles over 1024 slices: 4 a slice
    b = Grid(4096, 4096, 64, 32, 1, 2)  # over 2048 slices: 2 a slice
    c = Grid(4096, 8192, 16, 64, 4, 2)  # twice the columns on 1024 slices: 8 a slice
    assert tiles_time(a) == 4 * 64 and tiles_time(b) == 2 * 64 and tiles_time(c) == 8 * 64
    # the mapper's grid for a card: every slice busy, 6 tiles each for llama2-7b's QKV (4096 x 12288)
    g = choose_grid(CORSAIR, 2048, 4096, 12288, 1, "search")
    assert g.slices <= 2048 and g.k_tiles * g.n_tiles * g.slices >= 64 * 192


def test_dense_packing_is_the_old_mapping() -> None:
    """normfuse 0.1: 75% of 1 MiB holds 192 tiles of 4 KiB; llama2-7b's QKV (64 x 192 tiles) puts 3 whole K
    columns on a slice: 64 slices of 192 tiles (~12,300 cycles of streaming)."""
    g = choose_grid(CORSAIR, 2048, 4096, 12288, 1, "dense")
    assert (g.gk, g.gn, g.k_tiles * g.n_tiles) == (1, 64, 192)
    assert costs.dimc_cycles(CORSAIR, k_tiles=g.k_tiles, n_tiles=g.n_tiles, rows=1, tile_bytes=4096) > 12288


def test_partial_sums_cost_what_the_network_says() -> None:
    span = network.span_of(CORSAIR, 16, 1)
    (st,) = costs.psum_steps(CORSAIR, span=span, words=128)
    add = costs._combine(CORSAIR, CORSAIR.simd.add_cycles)
    want = network.tree_reduce_ns(CORSAIR, span, 128 * 4, 128, add)
    assert st.cycles == network.ns_to_cycles(CORSAIR, want) and st.kind == "psum" and not st.norm
    assert costs.psum_steps(CORSAIR, span=network.span_of(CORSAIR, 1, 1), words=128) == ()


def test_the_merge_splits_into_its_partial_sums_and_its_normalisation_overhead() -> None:
    """The merge carries m, l and the hd outputs and rescales; its partial-sum part is exactly the partial sums of
    the outputs alone (what the two-pass order's P @ V pays), and the rest is its normalisation overhead."""
    span = network.span_of(CORSAIR, 64, 1)
    psum, norm = costs.merge_steps(CORSAIR, span=span, rows=8, width=128)
    (pv,) = costs.psum_steps(CORSAIR, span=span, words=8 * 128, step="merge psum")
    assert psum == pv and norm.norm and norm.kind == "collective" and not psum.norm
    assert norm.cycles > 0
    gathered = with_overrides(CORSAIR, {"network": {"algorithm": "gather"}})
    steps = costs.merge_steps(gathered, span=span, rows=8, width=128)
    assert [s.step for s in steps] == ["merge psum", "merge norm", "merge psum root", "merge norm root"]
    assert [s.norm for s in steps] == [False, True, False, True]


def test_reduce_steps_by_algorithm() -> None:
    span = network.span_of(CORSAIR, 64, 1)
    kw = {"kind": "rms_scale", "span": span, "n": 4096, "chunk": 64, "load": 64, "rows": 1}
    tree = costs.reduce_steps(CORSAIR, **kw)
    assert [s.step for s in tree] == ["partials", "all-reduce", "finish"] and all(s.norm for s in tree)
    ring = costs.reduce_steps(with_overrides(CORSAIR, {"network": {"algorithm": "ring"}}), **kw)
    gather = costs.reduce_steps(with_overrides(CORSAIR, {"network": {"algorithm": "gather"}}), **kw)
    assert [s.step for s in gather] == ["gather", "root", "broadcast", "finish"]
    net = {
        a: sum(s.cycles for s in st if s.engine == "NET")
        for a, st in (("tree", tree), ("ring", ring), ("gather", gather))
    }
    assert net["tree"] < net["ring"] and net["tree"] < net["gather"]  # one word a row: the tree's latency wins
    one = costs.reduce_steps(CORSAIR, **{**kw, "kind": "max"}, one_pass=True)
    assert [(s.step, s.norm) for s in one] == [
        ("local max", True),
        ("local exp", False),
        ("local sum", True),
        ("all-reduce", True),
    ]


@pytest.mark.parametrize("rows", [64, 100, 512])
def test_copies_of_a_grid_cost_what_one_copy_costs_for_its_share_of_the_rows(rows: int) -> None:
    """Two implementations agree: c copies of a grid over R rows take, step by step, what one copy takes for
    ceil(R / c) rows (the busiest copy), while the work counted is all R rows' and the bytes all c copies'; the
    copies' delivery crosses all of their slices. And a copy never slows the matmul down against one copy."""
    one = Grid(384, 1152, 1, 18, 6, 1)  # all-MiniLM's QKV, 6 x 18 tiles over 18 slices
    for c in (2, 8, 64):
        many = dataclasses.replace(one, copies=c)
        share = -(-rows // c)
        got = costs.matmul_steps(CORSAIR, many, rows=rows, src=None)
        ref = costs.matmul_steps(CORSAIR, one, rows=share, src=None)
        assert [(st.engine, st.kind, st.cycles) for st in got if st.engine != "NET"] == [
            (st.engine, st.kind, st.cycles) for st in ref if st.engine != "NET"
        ]
        (dimc,) = [st for st in got if st.engine == "DIMC"]
        assert dimc.flops == 2 * rows * 384 * 1152 and dimc.slices == 18 * c
        assert many.tile_bytes_total(CORSAIR) == c * one.tile_bytes_total(CORSAIR)
        assert costs.grid_cycles(CORSAIR, many, rows=rows) <= costs.grid_cycles(CORSAIR, one, rows=rows)
    # the mapper's grid for those rows on a card, allowed 64 copies: no slower than the best with one copy
    best1 = choose_grid(CORSAIR, 2048, 384, 1152, rows, "search")
    best64 = choose_grid(CORSAIR, 2048, 384, 1152, rows, "search", 64)
    assert best64.copies > 1 and best64.slices <= 2048
    assert costs.grid_cycles(CORSAIR, best64, rows=rows) < costs.grid_cycles(CORSAIR, best1, rows=rows)
    assert choose_grid(CORSAIR, 2048, 384, 1152, 1, "search", 64).copies == 1  # one row: nothing to share out


def test_pow2_floor_is_the_largest_power_of_two_not_above_n() -> None:
    """The count of slices, copies or row groups a budget of n allows (at least one): against a plain search."""
    for n in range(-3, 2100):
        want = max([1, *(1 << i for i in range(12) if 1 << i <= n)])
        assert pow2_floor(n) == want, n
