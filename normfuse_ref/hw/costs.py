"""The hardware formulas: cycles of every piece of work on the emulated machine, from shapes and parameters only.

Notation (all lengths in elements, all times in cycles):
    E    layout.elems_per_slice        L    simd.lanes            tk, tn  dimc.tile_rows, dimc.tile_cols
    P(n) = ceil(n / E)                 the slices holding one row of length n (the last axis is spread)
    load                               elements of a value held by one slice (rows x its chunk)
    r    = ceil(load / min(n, E))      serial rows one slice processes, one after another (pipelined)
    h    network.hop_latency_cycles    w = network.link_bytes_per_cycle

SIMD, on every slice at once:   lat_simd + ceil(load / L) * sum(element ops) + ceil(r / L) * sum(row ops)
Local reduce partial:           lat_simd + ceil(load / L) * (sum(element ops) + ceil(log2 min(L, n, E)) * combine)
Collective over P slices:       steps(P) * (h + combine + ser)  [reduce]  +  steps(P) * (h + ser)  [broadcast]
                                + (r - 1) * max(ser, combine)   [further rows pipelined]
                                with ser = ceil(payload bytes / w) and steps() from the topology (config.py)
DIMC matmul on one slice:       lat_dimc + max(ceil(tiles * tile bytes / SRAM rate),  r * tiles * ceil(tk tn / MACs))
                                + ceil(log2 k_local) * adder_level   [the adder tree over a column's K tiles]
Cross-slice partial sums:       a reduce over the k_split slices holding one column's K tiles (network)

Weight mapping (weight-stationary, dense): a weight F (n, m) is cut into kt x nt tiles (kt = ceil(n/tk),
nt = ceil(m/tn)); each slice holds C = HardwareConfig.weight_tiles_per_slice tiles. Whole K columns go to one
slice (floor(C / kt) columns a slice) when they fit, else a column is split over k_split = ceil(kt / C) slices
whose partial sums meet over the network. KV-cache operands (K^T, V) are spread one tile per slice along both
axes, so the key axis lies across slices ("the slices holding the key axis").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import HardwareConfig

__all__ = [
    "SIMD_PROGRAMS",
    "Mapping",
    "activation_mapping",
    "collective_cycles",
    "dimc_cycles",
    "local_reduce_cycles",
    "merge_combine_cycles",
    "psum_cycles",
    "reduce_finish_cycles",
    "simd_cycles",
    "simd_program",
    "slices_for",
    "softmax_local_cycles",
    "topology_steps",
    "weight_mapping",
]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def clog2(n: int) -> int:
    """ceil(log2 n) for n >= 1 (0 for n = 1)."""
    return max(0, (n - 1).bit_length())


def slices_for(hw: HardwareConfig, n: int) -> int:
    """P(n): slices one row of length n is spread over."""
    return cdiv(n, hw.layout.elems_per_slice)


def topology_steps(hw: HardwareConfig, P: int) -> int:
    """Network steps for a reduce (or a broadcast) over P slices; see NetworkConfig."""
    if P <= 1:
        return 0
    topo = hw.network.topology
    if topo == "ring":
        return cdiv(P - 1, 2)
    if topo == "tree":
        return clog2(P)
    a = math.isqrt(P - 1) + 1  # ceil(sqrt(P))
    b = cdiv(P, a)
    return cdiv(a - 1, 2) + cdiv(b - 1, 2)


# ---------------------------------------------------------------------------------------------------------------
# SIMD
# ---------------------------------------------------------------------------------------------------------------

#: The SIMD program of each elementwise op of the forward passes and the fused rules, by op name (the names are
#: forward.py's and fusion.py's):
#: (instructions per element vector, instructions per row vector). Matched exactly, then by the suffix after
#: the last dot; an op with no program is an error (add its program here).
SIMD_PROGRAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "residual": (("add",), ()),  # x + a
    "norm": (("mul", "mul"), ()),  # x * s * g                 (attn_qkv.norm, ffn_gate_up.norm, output.norm)
    "scale": (("mul",), ()),  # y * s                           (attn_qkv.scale, ffn_gate_up.scale, output.scale)
    "centre": (("add",), ()),  # x - mu                         (LayerNorm: <op>.centre, kept in registers)
    "norm_shift": (("mul", "mul", "add"), ()),  # d * s * gamma + beta    (LayerNorm's LN(x): <op>.norm_shift)
    "scale_shift": (("mul", "add"), ()),  # y * s + beta @ F             (fused LayerNorm: <op>.scale_shift)
    "rope_q": (("mul", "mul", "add"), ()),  # (u, v) -> (u cos - v sin, v cos + u sin), tables precomputed
    "rope_k": (("mul", "mul", "add"), ()),
    "attn_mask": (("mul", "max"), ()),  # z * 1/sqrt(hd), select -inf where masked
    "softmax.exp": (("add", "exp", "max"), ()),  # z - m, exp, select (fully masked rows)
    "softmax.div": (("mul", "max"), ("recip",)),  # e * (1/l), select l == 0; one reciprocal per row
    "softmax.scale": (("mul", "max"), ("recip",)),  # o * (1/l) after the merge
    "swiglu": (("exp", "add", "recip", "mul", "mul"), ()),  # g / (1 + e^-g) * u
}


def simd_program(op: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The SIMD program of an elementwise op, by its exact name or the suffix after its last dot."""
    if op in SIMD_PROGRAMS:
        return SIMD_PROGRAMS[op]
    suffix = op.rsplit(".", 1)[-1]
    if suffix in SIMD_PROGRAMS:
        return SIMD_PROGRAMS[suffix]
    raise ValueError(f"no SIMD program for elementwise op {op!r}; add one to normfuse_ref.hw.costs.SIMD_PROGRAMS")


def simd_cycles(
    hw: HardwareConfig, *, load: int, rows: int, elem_ops: Sequence[str], row_ops: Sequence[str] = ()
) -> int:
    """An elementwise SIMD operation on every slice at once (the slowest slice holds `load` elements)."""
    s = hw.simd
    per_vec = sum(s.op_cycles(o) for o in elem_ops)
    per_row = sum(s.op_cycles(o) for o in row_ops)
    return s.pipeline_latency_cycles + cdiv(load, s.lanes) * per_vec + cdiv(rows, s.lanes) * per_row


#: Per element instructions of a local partial, and the combine instruction, for each reduction kind.
REDUCE_OPS: dict[str, tuple[tuple[str, ...], str]] = {
    "rms_scale": (("mul", "add"), "add"),  # sum of squares
    "sum": (("add",), "add"),
    "mean": (("add",), "add"),  # a sum, finished by one multiply by 1/n
    "max": (("max",), "max"),
}


def local_reduce_cycles(hw: HardwareConfig, *, kind: str, row_len: int, load: int) -> int:
    """Each slice reduces its chunk of each row to one partial: the element ops on `load` elements, L lanes at a
    time (rows shorter than L share a vector), then a tree across the lanes of each vector (segmented by row)."""
    s = hw.simd
    elems, combine = REDUCE_OPS[kind]
    chunk = min(row_len, hw.layout.elems_per_slice)
    per_vec = sum(s.op_cycles(o) for o in elems) + clog2(min(s.lanes, chunk)) * s.op_cycles(combine)
    return s.pipeline_latency_cycles + cdiv(load, s.lanes) * per_vec


def reduce_finish_cycles(hw: HardwareConfig, *, kind: str, rows: int) -> int:
    """After the all-reduce: rms_scale turns the sum of squares into 1/sqrt(sum/n + eps), mean multiplies the sum
    by 1/n; max and sum are done."""
    s = hw.simd
    if kind == "mean":
        return s.pipeline_latency_cycles + cdiv(rows, s.lanes) * s.mul_cycles
    if kind != "rms_scale":
        return 0
    return s.pipeline_latency_cycles + cdiv(rows, s.lanes) * (s.mul_cycles + s.add_cycles + s.rsqrt_cycles)


# ---------------------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------------------


def collective_cycles(
    hw: HardwareConfig, *, slices: int, rows: int, combine: int, payload_bytes: int, broadcast: bool
) -> int:
    """A reduce over `slices` slices (each step: hop, combine on the receiving SIMD unit, serialisation), then
    optionally the broadcast of the result back (multicast: hop and serialisation only); rows are pipelined."""
    steps = topology_steps(hw, slices)
    if steps == 0:
        return 0
    net = hw.network
    ser = cdiv(payload_bytes, net.link_bytes_per_cycle)
    t = steps * (net.hop_latency_cycles + combine + ser)
    if broadcast:
        t += steps * (net.hop_latency_cycles + ser)
    return t + (rows - 1) * max(ser, combine, 1)


def merge_combine_cycles(hw: HardwareConfig, *, width: int) -> int:
    """One online-softmax merge step on a SIMD unit: m = max(ma, mb); alpha, beta = e^(ma-m), e^(mb-m) (scalars,
    side by side in the lanes); l and o (`width` values + l) rescaled and added: o_a alpha + o_b beta."""
    s = hw.simd
    return s.max_cycles + s.add_cycles + s.exp_cycles + cdiv(width + 1, s.lanes) * (2 * s.mul_cycles + s.add_cycles)


# ---------------------------------------------------------------------------------------------------------------
# DIMC
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    """Where a matmul operand's tiles live: `slices` slices of `tiles` tiles each (the busiest slice), with a
    K column split over `k_split` slices (partial sums meet over the network) and `k_local` K tiles of a column
    on one slice (summed by that slice's adder tree)."""

    slices: int
    tiles: int
    k_split: int
    k_local: int
    tile_bytes: int


def weight_mapping(hw: HardwareConfig, n: int, m: int) -> Mapping:
    """Dense weight-stationary packing of a weight F (n, m); see the module docstring."""
    kt, nt = cdiv(n, hw.dimc.tile_rows), cdiv(m, hw.dimc.tile_cols)
    C = hw.weight_tiles_per_slice
    if kt <= C:
        cols = min(nt, C // kt)
        return Mapping(slices=cdiv(nt, cols), tiles=cols * kt, k_split=1, k_local=kt, tile_bytes=hw.tile_bytes)
    k_split = cdiv(kt, C)
    k_local = cdiv(kt, k_split)
    return Mapping(slices=nt * k_split, tiles=k_local, k_split=k_split, k_local=k_local, tile_bytes=hw.tile_bytes)


def activation_mapping(hw: HardwareConfig, n: int, m: int, groups: int = 1) -> Mapping:
    """A KV-cache operand (..., n, m): one tile per slice, `groups` (heads x sequences) on disjoint slices."""
    kt, nt = cdiv(n, hw.dimc.tile_rows), cdiv(m, hw.dimc.tile_cols)
    return Mapping(slices=groups * kt * nt, tiles=1, k_split=kt, k_local=1, tile_bytes=hw.kv_tile_bytes)


def dimc_cycles(hw: HardwareConfig, mp: Mapping, *, rows: int) -> int:
    """The busiest slice: stream its tiles from SRAM or compute `rows` rows against them, whichever is longer,
    then the adder tree over the K tiles of a column held on the slice."""
    d = hw.dimc
    stream = cdiv(mp.tiles * mp.tile_bytes, hw.memory.sram_bytes_per_cycle)
    compute = rows * mp.tiles * d.tile_cycles
    return d.pipeline_latency_cycles + max(stream, compute) + clog2(mp.k_local) * d.adder_level_cycles


def psum_cycles(hw: HardwareConfig, mp: Mapping, *, rows: int, width: int) -> int:
    """Partial sums of a column split over k_split slices, reduced over the network (`width` outputs a row)."""
    if mp.k_split <= 1:
        return 0
    return collective_cycles(
        hw,
        slices=mp.k_split,
        rows=rows,
        combine=cdiv(width, hw.simd.lanes) * hw.dimc.adder_level_cycles,
        payload_bytes=width * hw.network.word_bytes,
        broadcast=False,
    )


def softmax_local_cycles(hw: HardwareConfig, *, row_len: int, load: int) -> int:
    """The local part of fused softmax on each slice: max over its chunk, e^(z - m), their sum (no network); the
    same vector instructions as the baseline's local max, exp and local sum, in one pass."""
    s = hw.simd
    chunk = min(row_len, hw.layout.elems_per_slice)
    per_vec = (
        s.max_cycles
        + s.add_cycles
        + s.exp_cycles
        + s.add_cycles
        + clog2(min(s.lanes, chunk)) * (s.max_cycles + s.add_cycles)
    )
    return s.pipeline_latency_cycles + cdiv(load, s.lanes) * per_vec
