"""Where things live on the machine: plain records that the cost plans, the mapper and the executor share.

A *stage* is a run of `cards` consecutive cards holding consecutive decoder blocks (pipeline parallelism across
stages, tensor parallelism over the stage's slices). Slice offsets below are counted from the stage's first
slice, in the machine's numbering (`network.py`: slices of a chiplet first, Morton order on a mesh).

    Grid     a stationary weight F (n, m) in DIMC tiles over gk x gn slices: column group j holds tile columns
             j, j + gn, ...; its gk slices (offsets j gk .. j gk + gk - 1) split the K tiles of those columns, and
             their partial sums meet at the group's root. The output y lives on the gn roots (gk apart). With
             `copies` > 1 the whole grid is held that many times side by side (copy c on offsets c gk gn ..), each
             copy computing its share of the rows (data parallelism inside a stage, in SRAM the stage has spare).
    KVLayout a layer's KV cache: the stage's slices are split into one group per (sequence, key/value head); a
             group's keys lie over `key_slices` slices, `ceil(S / key_slices)` positions each, in `row_sets` copies
             on the group's otherwise idle slices, so that its query rows are dealt out over the copies.
    Place    where an activation lives: `groups` groups side by side (`group_stride` slices apart), each spreading
             the last axis of its rows over `count` slices `stride` apart; with `rows` > 1, the rows themselves
             are dealt out over that many such sets of slices (adjacent: set r starts at slice r).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .config import HardwareConfig
from .network import Span, span_of, union

__all__ = ["Grid", "KVLayout", "Place"]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2_floor(n: int) -> int:
    """The largest power of two <= n (1 for n <= 1): how many slices, copies or row groups a count allows."""
    return 1 << (max(1, n).bit_length() - 1)


class Place(NamedTuple):
    """Where an activation lives (see the module docstring). `count` slices hold one group's row vectors.

    A named tuple rather than a dataclass: the emulator looks its plans up by Place a few times a primitive, and a
    tuple hashes and compares in C (a frozen dataclass's generated __hash__ and __eq__ cost ~0.3-0.4 us a call)."""

    stage: int
    count: int  # type: ignore[assignment]  # shadows tuple.count, which nothing calls on a Place
    stride: int = 1
    groups: int = 1
    group_stride: int = 1
    rows: int = 1
    row_stride: int = 1

    @property
    def slices(self) -> int:
        return self.count * self.groups * self.rows

    def span(self, hw: HardwareConfig) -> Span:
        """The slices of one group: what a reduction over the last axis crosses."""
        return span_of(hw, self.count, self.stride)

    def footprint(self, hw: HardwareConfig) -> Span:
        """Every slice of every group: what a move to or from this place crosses."""
        out = span_of(hw, self.count, self.stride)
        if self.groups > 1:
            out = union(out, span_of(hw, self.groups, self.group_stride))
        if self.rows > 1:
            out = union(out, span_of(hw, self.rows, self.row_stride))
        return out


@dataclass(frozen=True)
class Grid:
    """A stationary weight F (n, m) over gk x gn slices, k_tiles x n_tiles tiles on each (the busiest)."""

    n: int
    m: int
    gk: int  # slices that split one column's K tiles (partial sums over the network when > 1)
    gn: int  # column groups side by side
    k_tiles: int  # K tiles a slice holds of each of its columns
    n_tiles: int  # tile columns a slice holds
    copies: int = 1  # copies of the whole gk x gn grid, each computing its share of the rows

    @property
    def slices(self) -> int:
        return self.gk * self.gn * self.copies

    def copy_rows(self, rows: int) -> int:
        """Rows one copy computes (the busiest copy's share)."""
        return cdiv(rows, self.copies)

    def place(self, stage: int) -> Place:
        """All of its slices: where the input row must be delivered."""
        return Place(stage, self.slices)

    def roots(self, stage: int, rows: int = 1) -> Place:
        """Where the output lives: each row across the gn column groups (gk slices apart) of the copy that computed
        it (the copies are groups, gk gn slices apart); the partial sums are reduce-scattered by rows, so a copy's
        rows are dealt out over the gk slices of a group (up to a power of two <= gk; a single row stays on the
        groups' roots)."""
        split = pow2_floor(min(self.gk, self.copy_rows(rows)))
        return Place(stage, self.gn, self.gk, self.copies, self.gk * self.gn, rows=split)

    def tile_bytes_total(self, hw: HardwareConfig) -> int:
        """Bytes of SRAM this weight takes over all of its slices (tiles padded to whole tiles)."""
        return self.slices * self.k_tiles * self.n_tiles * hw.tile_bytes


@dataclass(frozen=True)
class KVLayout:
    """One layer's KV cache on a stage (see the module docstring)."""

    groups: int  # B x Hkv groups (sequences x key/value heads)
    group_slices: int  # slices each group owns (stage slices / groups, at least 1)
    key_slices: int  # slices of a group that hold its keys (a power of two, <= group_slices)
    groups_per_slice: int  # groups sharing one slice when there are more groups than slices
    offchip: float  # fraction of the stage's KV bytes in LPDDR (0: all in SRAM)
    row_sets: int = 1  # copies of the group's keys, each serving its share of the query rows

    def place(self, stage: int) -> Place:
        side_by_side = cdiv(self.groups, self.groups_per_slice)
        return Place(stage, self.key_slices, 1, side_by_side, self.group_slices, self.row_sets, self.key_slices)

    def keys_per_slice(self, positions: int) -> int:
        return cdiv(positions, self.key_slices)

    def root(self, stage: int) -> Place:
        """Each group's root (where a reduction over its keys ends): one slice per group."""
        side_by_side = cdiv(self.groups, self.groups_per_slice)
        return Place(stage, 1, 1, side_by_side, self.group_slices, self.row_sets, self.key_slices)
