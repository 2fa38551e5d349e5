"""The hierarchical network: where a group of slices sits in it (`Span`) and closed-form costs of moving data.

Slices are numbered level by level, innermost first: slice i of a chiplet, chiplet j of a card, card k of a bridged
pair, pair m of a server, server n; a global index is i + 256 (j + 8 (k + 2 (m + 4 n))) on corsair-like. Inside a
mesh2d level the units are laid out on a near-square grid in Morton (Z) order when the fan-out is a power of 4, so
that every aligned block of 4^k units is a 2^k x 2^k square (a contiguous group of slices is a compact block);
otherwise row-major.

A *group* is `count` slices `stride` apart (the slices holding one row's vector, the K slices of a matmul column,
the roots of a matmul's output). Its `Span` says, for each level it crosses, how many participants it has in one
unit of that level (`p`), and for a mesh level their lattice (a x b, with sx, sy hops between lattice neighbours).

The micro-model (what the closed forms below compute, and what `netsim` simulates message by message):
  1. A message of b bytes between two participants k hops apart at level l arrives k * hop_ns + b / link_gbps
     after it is sent; its link is busy for b / link_gbps. Under a switch, messages to one unit share its link.
  2. A reducing participant combines one input at a time, in arrival order (c ns each: the SIMD instruction over
     the payload), and forwards only after it has combined all of its inputs (store-and-forward).
  3. A broadcast is forwarded as it arrives (cut-through): a participant reached through hops h_1, ..., h_n has
     the result sum(hops x hop_ns) + b / (the slowest link on the way) after the root sends it.
Collectives (`NetworkConfig.algorithm`), each level bottom-up and all units of a level side by side:
  tree    reduce toward one root per unit, by topology: mesh2d, along x then along y toward the centre of the
          lattice (a chain of L hops costs L (s hop + b/bw + c), plus one c when both sides of the root are
          equally long); all-to-all, straight to the root (hop + b/bw + (p - 1) c); switch, straight to the root
          through its one link (hop + b/bw + (p - 2) max(b/bw, c) + c). Then one cut-through broadcast down.
  ring    at every level a ring over the participants (a Hamiltonian cycle of the lattice on a mesh), payload in
          p pieces: reduce-scatter, (p - 1) (s hop + piece/bw + c), then all-gather (or the gather of the pieces
          to the unit's root), (p - 1) (s hop + piece/bw); the top level's result is broadcast down.
  gather  raw data travels to the root, accumulating: a mesh chain of L hops costs sum_j=1..L (s hop + j B / bw)
          (B = one participant's bytes); all-to-all hop + B/bw; switch hop + (p - 1) B/bw; the root then reduces
          everything (a SIMD step, `costs`) and broadcasts the result down.
Reduce-only collectives (partial sums of a matmul, the softmax merge) stop at the root: no broadcast.

Ideas taken from public work (no code): the per-level description (topology, units, link latency, link bandwidth)
follows ASTRA-sim 2.0's hierarchical network (Won et al., ISPASS 2023); the ring and tree formulas are the standard
alpha-beta costs (Thakur, Rabenseifner and Gropp, "Optimization of collective communication operations in MPICH",
IJHPCA 2005).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import LEVELS, HardwareConfig, LevelConfig

__all__ = [
    "LevelSpan",
    "Span",
    "allreduce_ns",
    "broadcast_ns",
    "chain_sides",
    "gather_ns",
    "level_sizes",
    "mesh_coords",
    "mesh_dims",
    "ns_to_cycles",
    "reduce_ns",
    "replicated_move",
    "ring_ns",
    "span_of",
    "tree_reduce_ns",
    "union",
]


def ns_to_cycles(hw: HardwareConfig, ns: float) -> int:
    """Whole cycles covering `ns` nanoseconds (a network cost becomes one event of this many cycles)."""
    return max(0, math.ceil(ns * hw.clock.ghz - 1e-9))


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------


def _is_power_of_4(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0 and (n.bit_length() - 1) % 2 == 0


def mesh_dims(fanout: int) -> tuple[int, int]:
    """(columns, rows) of a level's grid: a square for a power of 4, else ceil(sqrt) columns, row-major."""
    a = math.isqrt(fanout - 1) + 1 if fanout > 1 else 1
    return a, -(-fanout // a)


def mesh_coords(index: np.ndarray, fanout: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of units `index` on the level's grid: Morton order for a power-of-4 fan-out, else row-major."""
    index = np.asarray(index, dtype=np.int64)
    if _is_power_of_4(fanout):
        x = np.zeros_like(index)
        y = np.zeros_like(index)
        for bit in range((fanout.bit_length() - 1) // 2):
            x |= ((index >> (2 * bit)) & 1) << bit
            y |= ((index >> (2 * bit + 1)) & 1) << bit
        return x, y
    a, _ = mesh_dims(fanout)
    return index % a, index // a


def level_sizes(hw: HardwareConfig) -> tuple[int, ...]:
    """Slices in one unit of each level: (slices a chiplet, a card, a bridged pair, a server, the system)."""
    out, n = [], 1
    for level in hw.network.levels():
        n *= level.fanout
        out.append(n)
    return tuple(out)


@dataclass(frozen=True)
class LevelSpan:
    """A group's participants at one level, inside one unit of that level."""

    level: str  # noc, d2d, bridge, pcie or nic
    p: int  # participants: units of the level below (slices, for noc) taking part
    a: int = 1  # mesh lattice columns (a x b = p on a mesh; a = p otherwise)
    b: int = 1  # mesh lattice rows
    sx: int = 1  # hops between lattice neighbours along x (mesh); 1 otherwise
    sy: int = 1  # hops between lattice neighbours along y


@dataclass(frozen=True)
class Span:
    """The levels a group crosses (only those with more than one participant), innermost first."""

    levels: tuple[LevelSpan, ...]

    @property
    def participants(self) -> int:
        return math.prod(ls.p for ls in self.levels)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(ls.level for ls in self.levels)


def positions(count: int, stride: int) -> np.ndarray:
    return np.arange(count, dtype=np.int64) * stride  # (count,) slice offsets from the group's first slice


def span_of(hw: HardwareConfig, count: int, stride: int = 1) -> Span:
    """The span of `count` slices `stride` apart, starting at a unit boundary of every level it crosses.

    The participants of one unit (the unit of the group's first slice) stand for all: the mapper only makes
    regular groups (powers of two on power-of-two machines), for which every unit holds the same lattice. A span
    depends on the levels' topologies and fan-outs alone, so it is remembered by those (`_span`): the points of a
    sweep over latencies or bandwidths share it."""
    if count < 1 or stride < 1:
        raise ValueError(f"a group needs count >= 1 and stride >= 1; got {count}, {stride}")
    if (count - 1) * stride >= level_sizes(hw)[-1]:
        raise ValueError(f"{count} slices {stride} apart need more than the {level_sizes(hw)[-1]} slices of {hw.name}")
    return _span(tuple((level.topology, level.fanout) for level in hw.network.levels()), count, stride)


@functools.lru_cache(maxsize=4096)
def _span(shape: tuple[tuple[str, int], ...], count: int, stride: int) -> Span:
    """`span_of` on a machine whose levels have these (topology, fan-out) pairs."""
    pos = positions(count, stride)
    out = []
    below = 1
    for name, (topology, fanout) in zip(LEVELS, shape, strict=True):
        unit = below * fanout
        first = pos[pos // unit == 0]  # the positions inside the first unit of this level
        sub = np.unique(first // below)  # distinct units of the level below in it
        p = int(sub.size)
        if p > 1:
            if topology == "mesh2d":
                x, y = mesh_coords(sub, fanout)
                xs, ys = np.unique(x), np.unique(y)
                sx = int(np.min(np.diff(xs))) if xs.size > 1 else 1
                sy = int(np.min(np.diff(ys))) if ys.size > 1 else 1
                out.append(LevelSpan(name, p, int(xs.size), int(ys.size), sx, sy))
            else:
                out.append(LevelSpan(name, p, p, 1))
        below = unit
    return Span(tuple(out))


def union(s: Span, t: Span) -> Span:
    """The smallest span covering both (per level the larger lattice, the finer spacing): where a move travels."""
    by_level: dict[str, LevelSpan] = {ls.level: ls for ls in s.levels}
    for ls in t.levels:
        o = by_level.get(ls.level)
        if o is None:
            by_level[ls.level] = ls
        else:
            by_level[ls.level] = LevelSpan(
                ls.level, max(ls.p, o.p), max(ls.a, o.a), max(ls.b, o.b), min(ls.sx, o.sx), min(ls.sy, o.sy)
            )
    return Span(tuple(by_level[n] for n in LEVELS if n in by_level))


def replicated_move(src: Span, dst: Span) -> Span:
    """Where moving a *replicated* value (every slice of `src` holds all of it: the result of an all-reduce) to
    `dst` must travel: within the units of the highest level at which `dst` reaches more units than `src` (and
    within chiplets always). Levels above it carry nothing: every unit there already has a copy."""
    p_src = {ls.level: ls.p for ls in src.levels}
    both = union(src, dst)
    top = 0
    for i, name in enumerate(LEVELS):
        d = next((ls.p for ls in dst.levels if ls.level == name), 1)
        if d > p_src.get(name, 1):
            top = i
    return Span(tuple(ls for ls in both.levels if LEVELS.index(ls.level) <= top))


def _level(hw: HardwareConfig, name: str) -> LevelConfig:
    level: LevelConfig = getattr(hw.network, name)
    return level


# ---------------------------------------------------------------------------------------------------------------
# Closed forms (nanoseconds)
# ---------------------------------------------------------------------------------------------------------------


def chain_sides(n: int) -> tuple[int, int]:
    """A line of n participants reduced toward the one at index (n - 1) // 2: the lengths of its two sides."""
    r = (n - 1) // 2
    return max(r, n - 1 - r), min(r, n - 1 - r)


def packets(hw: HardwareConfig, nbytes: float) -> tuple[int, float]:
    """A message in packets of one SIMD vector of words (lanes x word_bytes): (how many, bytes each, equal)."""
    size = hw.simd.lanes * hw.memory.word_bytes
    n = max(1, math.ceil(nbytes / size - 1e-9))
    return n, nbytes / n


def _up_path(hw: HardwareConfig, span: Span, pkt_bytes: float, c: float) -> list[tuple[float, float]]:
    """The stations (delay, service per packet) on the longest leaf-to-root path of the reduction tree: a link
    serves a packet in packet / link_gbps after `delay` of hops; a combining node serves it in (children) x c,
    where its children are those of every level it is a root or an intermediate of."""
    out: list[tuple[float, float]] = []
    below = 0  # children a unit root has at the levels below (it is the root of its own units all the way down)
    for ls in span.levels:
        lv = _level(hw, ls.level)
        sigma = pkt_bytes / lv.link_gbps
        if lv.topology == "mesh2d":
            Lx, Rx = chain_sides(ls.a)
            Ly, Ry = chain_sides(ls.b)
            kx, ky = (Lx > 0) + (Rx > 0), (Ly > 0) + (Ry > 0)
            for j in range(1, Lx + 1):  # along x, from the far end of the outermost row to its row root
                out.append((ls.sx * lv.hop_ns, sigma))
                if j < Lx:
                    out.append((0.0, (below + 1) * c))
            if Lx:
                out.append((0.0, (below + kx + (ky if Ly == 0 else 0)) * c))
            for j in range(1, Ly + 1):  # along y, the row roots toward the unit root
                out.append((ls.sy * lv.hop_ns, sigma))
                out.append((0.0, (below + kx + (1 if j < Ly else ky)) * c))
            below += kx + ky
        else:  # all-to-all: a link of its own per child; switch: the root's one link carries all p - 1
            out.append((lv.hop_ns, sigma if lv.topology == "all-to-all" else (ls.p - 1) * sigma))
            out.append((0.0, (below + ls.p - 1) * c))
            below += ls.p - 1
    return out


def _down_path(hw: HardwareConfig, span: Span, pkt_bytes: float) -> list[tuple[float, float]]:
    """The links on the longest root-to-leaf path of the broadcast (forwarding nodes serve no time)."""
    out: list[tuple[float, float]] = []
    for ls in reversed(span.levels):
        lv = _level(hw, ls.level)
        sigma = pkt_bytes / lv.link_gbps
        if lv.topology == "mesh2d":
            out += [(ls.sy * lv.hop_ns, sigma)] * chain_sides(ls.b)[0]
            out += [(ls.sx * lv.hop_ns, sigma)] * chain_sides(ls.a)[0]
        else:  # a dedicated link (all-to-all) or the child's own switch port (the switch multicasts)
            out.append((lv.hop_ns, sigma))
    return out


def _pipelined(stations: list[tuple[float, float]], n: int) -> float:
    """n packets through a path of stations, each processing packets in order: the first packet's sum, plus n - 1
    times the slowest station (exact for index-ordered trees: the (max, +) longest path)."""
    if not stations:
        return 0.0
    return sum(d + s for d, s in stations) + (n - 1) * max(s for _, s in stations)


def tree_reduce_ns(
    hw: HardwareConfig, span: Span, nbytes: float, words: int, combine_ns_of: Callable[[int], float]
) -> float:
    """The tree's reduction to the root of a message of `nbytes` (`words` words) from every participant."""
    n, pkt = packets(hw, nbytes)
    return _pipelined(_up_path(hw, span, pkt, combine_ns_of(-(-words // n))), n)


def tree_allreduce_ns(
    hw: HardwareConfig, span: Span, nbytes: float, words: int, combine_ns_of: Callable[[int], float]
) -> float:
    """Reduction and broadcast, pipelined packet by packet through the root."""
    n, pkt = packets(hw, nbytes)
    return _pipelined(_up_path(hw, span, pkt, combine_ns_of(-(-words // n))) + _down_path(hw, span, pkt), n)


def broadcast_ns(hw: HardwareConfig, span: Span, payload_bytes: float) -> float:
    """One broadcast from the root down every level of the span, in pipelined packets. Also the cost of moving an
    activation to the slices of the next op (`costs`)."""
    if not span.levels:
        return 0.0
    n, pkt = packets(hw, payload_bytes)
    return _pipelined(_down_path(hw, span, pkt), n)


def _ring_step_hops(hw: HardwareConfig, ls: LevelSpan) -> float:
    lv = _level(hw, ls.level)
    return max(ls.sx, ls.sy) * lv.hop_ns if lv.topology == "mesh2d" else lv.hop_ns


def ring_ns(
    hw: HardwareConfig, span: Span, words: int, word_bytes: int, combine_ns_of: Callable[[int], float]
) -> float:
    """Every level's ring (reduce-scatter + all-gather of p pieces), innermost first. `combine_ns_of(words)` is the
    combine cost of a piece. Excludes the final broadcast to the levels below the top (see allreduce_ns)."""
    t = 0.0
    for ls in span.levels:
        lv = _level(hw, ls.level)
        piece = -(-words // ls.p)
        ser = piece * word_bytes / lv.link_gbps
        hop = _ring_step_hops(hw, ls)
        c = combine_ns_of(piece)
        t += (ls.p - 1) * (hop + ser + c) + (ls.p - 1) * (hop + ser)
    return t


def gather_ns(hw: HardwareConfig, span: Span, bytes_each: float) -> float:
    """Raw data to one root, level by level; a unit's root carries all of its unit's data up the next level."""
    t = 0.0
    carried = bytes_each
    for ls in span.levels:
        lv = _level(hw, ls.level)
        if lv.topology == "mesh2d":
            La, Lb = chain_sides(ls.a)[0], chain_sides(ls.b)[0]
            t += sum(ls.sx * lv.hop_ns + j * carried / lv.link_gbps for j in range(1, La + 1))
            row = ls.a * carried
            t += sum(ls.sy * lv.hop_ns + j * row / lv.link_gbps for j in range(1, Lb + 1))
        elif lv.topology == "all-to-all":
            t += lv.hop_ns + carried / lv.link_gbps
        else:
            t += lv.hop_ns + (ls.p - 1) * carried / lv.link_gbps
        carried *= ls.p
    return t


def _below_top(span: Span) -> Span:
    return Span(span.levels[:-1])


def reduce_ns(
    hw: HardwareConfig,
    span: Span,
    *,
    algorithm: str,
    words: int,
    word_bytes: int,
    combine_ns_of: Callable[[int], float],
    raw_bytes_each: float = 0.0,
) -> float:
    """The network part of a reduction to one root (the gather's root arithmetic is a SIMD step, not here).

    words: the partial each participant contributes (tree, ring); raw_bytes_each: what each participant sends in
    a gather. combine_ns_of(words) -> ns: the receiving SIMD unit's combine of that many words."""
    if not span.levels:
        return 0.0
    if algorithm == "tree":
        return tree_reduce_ns(hw, span, words * word_bytes, words, combine_ns_of)
    if algorithm == "ring":
        return ring_ns(hw, span, words, word_bytes, combine_ns_of)
    if algorithm == "gather":
        return gather_ns(hw, span, raw_bytes_each)
    raise ValueError(f"unknown collective algorithm {algorithm!r}")


def allreduce_ns(
    hw: HardwareConfig,
    span: Span,
    *,
    algorithm: str,
    words: int,
    word_bytes: int,
    combine_ns_of: Callable[[int], float],
) -> float:
    """Tree or ring all-reduce: the reduction plus the broadcast of the result back down (the ring's top level
    already leaves the result on all of its participants, so only the levels below it need the broadcast)."""
    if not span.levels:
        return 0.0
    if algorithm == "tree":
        return tree_allreduce_ns(hw, span, words * word_bytes, words, combine_ns_of)
    up = reduce_ns(hw, span, algorithm=algorithm, words=words, word_bytes=word_bytes, combine_ns_of=combine_ns_of)
    return up + broadcast_ns(hw, _below_top(span), words * word_bytes)
