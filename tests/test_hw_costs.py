"""The hardware formulas (normfuse_ref.hw.costs) against numbers worked out by hand."""

from __future__ import annotations

import pytest

from normfuse_ref.hw import costs
from normfuse_ref.hw.config import PRESETS, with_overrides

TOY = PRESETS["toy"]  # tiles 8x8, 16 MACs/cycle, E = 8, 8 lanes, ring, hop 4, links 8 B/cycle
CORSAIR = PRESETS["corsair-like"]


@pytest.mark.parametrize(
    ("topology", "P", "steps"),
    [
        ("ring", 1, 0),
        ("ring", 2, 1),
        ("ring", 8, 4),
        ("ring", 9, 4),  # ceil((P-1)/2)
        ("tree", 2, 1),
        ("tree", 8, 3),
        ("tree", 9, 4),  # ceil(log2 P)
        ("mesh2d", 2, 1),  # a 2x1 block
        ("mesh2d", 9, 2),  # 3x3, centre reached in 1 + 1
        ("mesh2d", 64, 8),  # 8x8: ceil(7/2) + ceil(7/2)
        ("mesh2d", 128, 11),  # 12 x 11: 6 + 5
    ],
)
def test_topology_steps(topology: str, P: int, steps: int) -> None:
    hw = with_overrides(TOY, {"network": {"topology": topology}})
    assert costs.topology_steps(hw, P) == steps


def test_all_reduce_on_the_toy_ring() -> None:
    # 8 slices on a ring: 4 steps to the root, each hop 4 + combine 1 + ser ceil(4 B / 8 B) = 1 -> 6;
    # 4 steps back, each 4 + 1 -> 5; two more rows pipelined at max(ser, combine, 1) = 1 cycle each.
    assert (
        costs.collective_cycles(TOY, slices=8, rows=3, combine=1, payload_bytes=4, broadcast=True) == 4 * 6 + 4 * 5 + 2
    )
    assert costs.collective_cycles(TOY, slices=1, rows=3, combine=1, payload_bytes=4, broadcast=True) == 0


def test_weight_mapping_dense_packing() -> None:
    # toy: 4 KiB SRAM x 0.75 / 64 B tiles = 48 tiles per slice
    assert TOY.weight_tiles_per_slice == 48
    mp = costs.weight_mapping(TOY, 64, 176)  # kt = 8, nt = 22: 6 whole K columns per slice -> 4 slices
    assert (mp.slices, mp.tiles, mp.k_split, mp.k_local) == (4, 48, 1, 8)
    mp = costs.weight_mapping(TOY, 512, 8)  # kt = 64 > 48: a column split over 2 slices of 32 tiles
    assert (mp.slices, mp.tiles, mp.k_split, mp.k_local) == (2, 32, 2, 32)
    # corsair-like: 768 KiB / 4 KiB = 192 tiles; llama2-7b's QKV (4096 x 12288): kt = 64 -> 3 columns per slice
    mp = costs.weight_mapping(CORSAIR, 4096, 12288)
    assert (mp.slices, mp.tiles, mp.k_split) == (64, 192, 1)


def test_dimc_is_the_slower_of_streaming_and_computing() -> None:
    mp = costs.weight_mapping(CORSAIR, 4096, 12288)  # 192 tiles of 4 KiB per slice
    stream = 192 * 4096 // 64  # 12288 cycles at 64 B/cycle
    adder = 6  # log2(64 K tiles) levels of 1 cycle
    assert costs.dimc_cycles(CORSAIR, mp, rows=1) == 16 + stream + adder
    compute = 16 * 192 * 8  # 16 rows x 192 tiles x (64*64 / 512) cycles
    assert costs.dimc_cycles(CORSAIR, mp, rows=16) == 16 + compute + adder


def test_simd_programs_by_op_name() -> None:
    assert costs.simd_program("attn_qkv.scale") == (("mul",), ())
    assert costs.simd_program("softmax.scale") == (("mul", "max"), ("recip",))
    with pytest.raises(ValueError, match="something_new"):
        costs.simd_program("something_new")
    # toy SIMD: latency 2; 64 elements on a slice = 8 vectors; swiglu = exp 4 + add 1 + recip 4 + mul 1 + mul 1
    assert costs.simd_cycles(TOY, load=64, rows=8, elem_ops=costs.simd_program("swiglu")[0]) == 2 + 8 * 11


def test_local_partials_and_finish() -> None:
    # rms_scale on a chunk of 8 per row, 2 rows per slice (load 16): 2 vectors x (mul + add + 3 tree levels x add)
    assert costs.local_reduce_cycles(TOY, kind="rms_scale", row_len=64, load=16) == 2 + 2 * (1 + 1 + 3)
    assert costs.reduce_finish_cycles(TOY, kind="rms_scale", rows=2) == 2 + 1 * (1 + 1 + 6)
    assert costs.reduce_finish_cycles(TOY, kind="max", rows=2) == 0
