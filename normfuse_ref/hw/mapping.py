"""The mapping: where every weight, every KV-cache block and every activation lives, under a capacity model, and
the mapper that searches for the latency-optimal one.

A mapping cuts the model into *stages* of consecutive decoder blocks (pipeline parallelism; the lm head on the
last stage). A stage spans `tp_cards` consecutive cards (tensor parallelism over all of their slices, as d-Matrix
describes: a matrix is spread over the slices of a card or a chosen group). Within a stage:

  weights   each stationary matrix F (n, m) is a `Grid` over gk x gn slices (`layout.py`). The mapper picks, for
            each shape, the grid with the lowest cost of the matmul on its own (delivering x, the DIMC tiles, the
            partial sums; `costs.grid_cycles`) over gk in powers of 4 and gn in powers of 2 (so that every group
            of slices is a full lattice of the NoC). A stage's matrices are laid out so that every slice carries
            the same share of the stage's tile bytes.
  copies    where the weights leave SRAM spare, a grid is held several times side by side, each copy computing
            its share of the rows (data parallelism inside a stage): `build` bounds the copies by the SRAM every
            stage has beside its weights, activation buffers and on-chip KV cache (one power of two for the
            mapping, at most the rows), and each matrix takes as many as make its matmul faster.
  KV cache  each layer's cache is split into one group per (sequence, key/value head), spread over the stage's
            slices (`layout.KVLayout`); what does not fit in SRAM goes to the cards' LPDDR (the off-chip tier)
            and is streamed from there at the LPDDR rate.
  capacity  per slice: weights + activations (two buffers of the largest input chunk and partial output of any
            matmul, and of a head's attention scores) + the KV cache's SRAM share <= SRAM. Weights must fit in
            SRAM: a model that does not fit on the machine is an error naming what failed.

The mapper (`search`) tries the tensor-parallel widths (powers of two up to the system) and, for each, every stage
count from the fewest that hold the weights to one stage a block (more stages give each layer more of a card's
slices and the KV cache more SRAM, and a prefill's chunks pipeline through them; the crossings between stages
cost more with each one: the estimate decides), and keeps the
candidate whose estimated latency (`estimate`, a timed pass of one block: `study.estimate_mapping`) is lowest. It
stops widening once two wider widths in a row estimate slower than the best so far.
`kind="dense"` is normfuse 0.1's packing instead: each matrix on the fewest slices that hold it at 75% of SRAM,
stages of one card filled in order. The idea of searching a mapping per operator under a hardware description is
LLMCompass's (Zhang et al., ISCA 2024); no code is taken from it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from . import costs
from .config import LEVELS, HardwareConfig
from .layout import Grid, KVLayout, Place, cdiv, pow2_floor
from .workload import Workload

__all__ = [
    "DENSE_WEIGHT_FRACTION",
    "DoesNotFit",
    "Mapping",
    "MappingPolicy",
    "Stage",
    "adhoc_mapping",
    "choose_grid",
    "kv_layout",
    "search",
]

MappingKind = Literal["search", "dense"]

#: Rows of activations a slice buffers at a time, at most (the rest stream through): assumed one SIMD vector's worth
#: of rows; fewer when the weights leave too little SRAM.
ROW_BLOCK = 64

#: normfuse 0.1's dense packing kept this share of a slice's SRAM for weights (the rest for KV and activations).
DENSE_WEIGHT_FRACTION = 0.75


class DoesNotFit(ValueError):
    """The model (or one of its weights) does not fit the machine under the mapping asked for: a finding about that
    machine, which a sweep reports as a point that does not fit, not a mistake in what was asked."""


@dataclass(frozen=True)
class MappingPolicy:
    """How to choose a mapping. None: searched."""

    kind: MappingKind = "search"
    tp_cards: int | None = None  # cards a stage spans (tensor parallel)
    stages: int | None = None  # pipeline stages
    max_cards: int | None = None  # cards the mapping may use (default: the whole system)

    def __post_init__(self) -> None:
        if self.kind not in ("search", "dense"):
            raise ValueError(f"mapping must be 'search' or 'dense'; got {self.kind!r}")
        for name in ("tp_cards", "stages", "max_cards"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1; got {v}")


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its cards, its decoder blocks, and what each of its slices holds (bytes)."""

    index: int
    first_card: int
    cards: int
    layers: tuple[int, int]  # blocks [start, stop)
    head: bool  # holds the lm head
    weight_bytes: int  # per slice
    act_bytes: int  # per slice (activation buffers)
    kv_sram_bytes: int  # per slice: the KV cache held in SRAM
    kv_offchip: float  # fraction of the stage's KV cache in LPDDR
    kv_lpddr_bytes: int  # per card: the KV cache held in LPDDR


@dataclass(frozen=True)
class Mapping:
    """A complete mapping (see the module docstring). `rows` and `positions` are the design point: the rows of
    one pass (batch x tokens per chunk) and the KV positions at the end (which size the grids and the KV layout)."""

    hw: HardwareConfig
    kind: MappingKind
    tp_cards: int
    stages: tuple[Stage, ...]
    rows: int
    positions: int
    batch: int = 1
    copies: int = 1  # the most copies of a weight the grids may hold (spare SRAM; `build`)
    estimate_cycles: int = 0  # the mapper's estimate of this mapping's latency
    candidates: int = 0  # how many mappings the search compared
    workload: Workload | None = field(default=None, compare=False)
    # grids fixed by `on` (matrix shape -> grid); None: chosen for this machine on first use
    fixed_grids: tuple[tuple[tuple[int, int], Grid], ...] | None = None

    @property
    def slices_per_stage(self) -> int:
        return self.tp_cards * self.hw.slices_per_card

    @property
    def cards(self) -> int:
        return self.tp_cards * len(self.stages)

    def stage_of_layer(self, layer: int) -> int:
        for st in self.stages:
            if st.layers[0] <= layer < st.layers[1]:
                return st.index
        return self.stages[-1].index  # a block beyond the mapped ones (ad hoc use) runs on the last stage

    @property
    def head_stage(self) -> int:
        return next((st.index for st in self.stages if st.head), self.stages[-1].index)

    def grid(self, n: int, m: int) -> Grid:
        if self.fixed_grids is not None:
            for shape, g in self.fixed_grids:
                if shape == (n, m):
                    return g
        return choose_grid(self.hw, self.slices_per_stage, n, m, self.rows, self.kind, self.copies)

    def on(self, hw: HardwareConfig) -> Mapping:
        """The same mapping (stages, grids, KV placement) on another machine of the same shape: for asking how a
        change of timing alone moves the latency, with no new choice by the mapper."""
        if (hw.slices_per_card, hw.max_cards, hw.tile_bytes) != (
            self.hw.slices_per_card,
            self.hw.max_cards,
            self.hw.tile_bytes,
        ):
            raise ValueError("a mapping moves only to a machine with the same slices, cards and tiles")
        shapes = {(m.n, m.m) for m in (*self.workload.block, *self.workload.head)} if self.workload else set()
        grids = tuple(sorted((sh, self.grid(*sh)) for sh in shapes))
        return replace(self, hw=hw, fixed_grids=grids)

    def kv(self, stage: int, groups: int, positions: int, rows: int) -> KVLayout:
        """The KV layout of a layer on `stage` for `groups` groups and `rows` query rows a group."""
        offchip = self.stages[stage].kv_offchip if stage < len(self.stages) else 0.0
        return kv_layout(self.hw, self.slices_per_stage, groups, max(positions, self.positions), offchip, rows)

    def crossing(self, a: int, b: int) -> str:
        """The network level joining stage a's cards to stage b's: the lowest level whose unit holds both."""
        return crossing_level(self.hw, self.stages[a].first_card, self.stages[b].first_card)

    def default_place(self, stage: int, n: int) -> Place:
        """Where a vector of length n lives when no op placed it (the embedding): spread like a matmul input."""
        count = min(costs.pow2_ceil(cdiv(n, self.hw.dimc.tile_rows)), self.slices_per_stage)
        return Place(stage, count)

    def to_dict(self) -> dict[str, Any]:
        """The `mapping` object of `normfuse timeline --json`."""
        hw = self.hw
        out: dict[str, Any] = {
            "kind": self.kind,
            "cards": self.cards,
            "tp_cards": self.tp_cards,
            "stages": len(self.stages),
            "slices_per_stage": self.slices_per_stage,
            "design_rows": self.rows,
            "design_positions": self.positions,
            "weight_copies": self.copies,
            "candidates_compared": self.candidates,
            "estimate_us": self.estimate_cycles / (hw.clock.ghz * 1e3),
            "stage_list": [
                {
                    "stage": st.index,
                    "cards": [st.first_card, st.first_card + st.cards - 1],
                    "layers": [st.layers[0], st.layers[1] - 1] if st.layers[1] > st.layers[0] else [],
                    "lm_head": st.head,
                    "weight_bytes_per_slice": st.weight_bytes,
                    "activation_bytes_per_slice": st.act_bytes,
                    "kv_sram_bytes_per_slice": st.kv_sram_bytes,
                    "kv_offchip_fraction": st.kv_offchip,
                    "kv_lpddr_bytes_per_card": st.kv_lpddr_bytes,
                    "sram_bytes_per_slice": hw.memory.sram_bytes_per_slice,
                    "crossing_to_next": self.crossing(st.index, st.index + 1)
                    if st.index + 1 < len(self.stages)
                    else None,
                }
                for st in self.stages
            ],
        }
        if self.workload is not None:
            wl = self.workload
            out["matrices"] = {mat.name: _grid_dict(self.grid(mat.n, mat.m)) for mat in (*wl.block, *wl.head)}
            q_rows = self.rows // max(1, self.batch) * (wl.q_heads // wl.kv_heads)
            kv = self.kv(0, wl.kv_heads * self.batch, self.positions, q_rows)
            out["kv_cache"] = {
                "groups": kv.groups,
                "slices_per_group": kv.group_slices,
                "key_slices_per_group": kv.key_slices,
                "copies_per_group": kv.row_sets,
                "positions_per_slice": kv.keys_per_slice(self.positions),
            }
            resid = self.grid(wl.width, wl.width).roots(0) if wl.block else self.default_place(0, wl.width)
            out["residual_stream"] = {"slices": resid.count, "stride": resid.stride}
        return out


def _grid_dict(g: Grid) -> dict[str, int]:
    return {
        "n": g.n,
        "m": g.m,
        "gk": g.gk,
        "gn": g.gn,
        "copies": g.copies,
        "slices": g.slices,
        "tiles_per_slice": g.k_tiles * g.n_tiles,
    }


def crossing_level(hw: HardwareConfig, card_a: int, card_b: int) -> str:
    """The lowest level above the card whose unit contains both cards (bridge, pcie or nic)."""
    size = 1
    for name, level in zip(LEVELS[2:], hw.network.levels()[2:], strict=True):
        size *= level.fanout
        if card_a // size == card_b // size:
            return name
    return LEVELS[-1]


# ---------------------------------------------------------------------------------------------------------------
# Grids and the KV layout
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def choose_grid(hw: HardwareConfig, slices: int, n: int, m: int, rows: int, kind: MappingKind, copies: int = 1) -> Grid:
    """The grid of a stationary weight (n, m) on a stage of `slices` slices (see the module docstring), with at
    most `copies` copies (a power of two; never more than the rows, which they share out)."""
    kt, nt = costs.tiles_of(hw, n, m)
    if kind == "dense":
        C = max(1, int(DENSE_WEIGHT_FRACTION * hw.memory.sram_bytes_per_slice) // hw.tile_bytes)
        if kt <= C:
            cols = min(nt, C // kt)
            return Grid(n, m, 1, cdiv(nt, cols), kt, cols)
        gk = cdiv(kt, C)
        return Grid(n, m, gk, nt, cdiv(kt, gk), 1)
    best: tuple[tuple[int, int, int], Grid] | None = None
    # column groups: for each number t of tile columns a slice (1..16, and powers of two beyond), the fewest groups
    # that give it, ceil(nt / t): with the same tiles a slice, more groups only widen the delivery of x
    ts = sorted({*range(1, 17), *(1 << i for i in range(5, nt.bit_length() + 1))})
    widths = sorted({cdiv(nt, t) for t in ts if t <= nt})
    counts = [1 << i for i in range(pow2_floor(min(copies, rows)).bit_length())]  # 1, 2, 4, .. copies
    gk = 1
    while gk <= slices and gk < 4 * kt:
        for gn in widths:
            for c in counts:
                if gk * gn * c > slices:
                    break
                g = Grid(n, m, gk, gn, cdiv(kt, gk), cdiv(nt, gn), c)
                if g.k_tiles * g.n_tiles * hw.tile_bytes <= hw.memory.sram_bytes_per_slice:
                    key = (costs.grid_cycles(hw, g, rows=rows), g.slices, gk)
                    if best is None or key < best[0]:
                        best = (key, g)
        gk *= 4
    if best is None:
        raise DoesNotFit(
            f"a {n} x {m} weight does not fit on {slices} slices of {hw.memory.sram_bytes_per_slice} bytes"
        )
    return best[1]


def kv_layout(
    hw: HardwareConfig, slices: int, groups: int, positions: int, offchip: float = 0.0, rows: int = 1
) -> KVLayout:
    """One layer's KV cache: `groups` groups over `slices` slices; a group's keys over a power-of-two number of
    slices (a tile of keys each, at most); its query rows (`rows`) dealt out over as many copies as its idle
    slices hold (a power of two, at most one row a copy). A copy uses slices that hold no KV otherwise, so the
    bytes a slice holds do not change."""
    if groups <= slices:
        per_group, per_slice = slices // groups, 1
    else:
        per_group, per_slice = 1, cdiv(groups, slices)
    wanted = costs.pow2_ceil(cdiv(max(1, positions), hw.dimc.tile_rows))
    key_slices = min(wanted, pow2_floor(per_group))
    copies = 1
    while copies * 2 * key_slices <= per_group and copies * 2 <= rows * per_slice:
        copies *= 2
    return KVLayout(groups, per_group, key_slices, per_slice, offchip, copies)


def adhoc_mapping(hw: HardwareConfig, *, rows: int = 1, positions: int = 1) -> Mapping:
    """One stage on one card, grids chosen on first use: for running an executor without a model (tests)."""
    stage = Stage(0, 0, 1, (0, 1 << 30), True, 0, 0, 0, 0.0, 0)
    return Mapping(hw, "search", 1, (stage,), rows, positions)


# ---------------------------------------------------------------------------------------------------------------
# Capacity and the search
# ---------------------------------------------------------------------------------------------------------------


def _splits(n_layers: int, stages: int, layer_bytes: int, head_bytes: int) -> list[list[tuple[int, int]]]:
    """Ways to cut the blocks into consecutive stages, balancing bytes: the last stage, which also holds the head,
    gets the nearest number of blocks to its balanced share first, then one fewer and one more (the first that
    fits wins: with dense packing a stage's slices, not its bytes, are the limit)."""
    if stages == 1:
        return [[(0, n_layers)]]
    total = n_layers * layer_bytes + head_bytes
    share = (total / stages - head_bytes) / max(1, layer_bytes)
    out = []
    for last in dict.fromkeys((round(share), math.floor(share), math.ceil(share))):
        last = max(0, min(n_layers, last))
        rest = n_layers - last
        counts = [rest // (stages - 1) + (1 if i < rest % (stages - 1) else 0) for i in range(stages - 1)] + [last]
        split, start = [], 0
        for c in counts:
            split.append((start, start + c))
            start += c
        out.append(split)
    return out


class _Sized(NamedTuple):
    """What `build` sizes a stage by, for grids of at most so many copies each."""

    grids: dict[Any, Grid]
    layer_bytes: int  # a block's weights, all of its slices
    head_bytes: int  # the head's weights
    act_bytes: int  # the activation buffers a slice holds


def build(
    wl: Workload,
    hw: HardwareConfig,
    *,
    kind: MappingKind,
    tp_cards: int,
    stages: int,
    rows: int,
    positions: int,
    batch: int,
) -> Mapping | str:
    """The mapping with this many cards a stage and stages, or the reason it does not fit (a one-line string).

    Copies: once a split of the blocks fits, the SRAM its stages leave spare (beside their weights, activation
    buffers and on-chip KV cache) holds copies of the weights, the same most-copies bound for every matrix of the
    mapping (a power of two, at most the rows); each matrix then takes as many as make it faster
    (`choose_grid`). Copies never push KV cache off chip: the copies bound halves until they do not."""
    slices = tp_cards * hw.slices_per_card
    mem = hw.memory
    sram = mem.sram_bytes_per_slice
    kv = kv_layout(hw, slices, batch * wl.kv_heads, positions)  # (the copies do not change bytes a slice)
    keys = kv.keys_per_slice(positions)
    q_rows = rows // max(1, batch) * (wl.q_heads // wl.kv_heads)
    kv_layer_slice = 2 * keys * wl.head_dim * kv.groups_per_slice * mem.kv_bits // 8  # K and V, one layer
    kv_layer_total = batch * positions * wl.kv_bytes_per_position(mem.kv_bits)

    def sized(copies: int) -> _Sized:
        """The grids with at most `copies` copies, a block's and the head's weight bytes, and the activation
        buffers a slice holds."""
        grids = {mat: choose_grid(hw, slices, mat.n, mat.m, rows, kind, copies) for mat in (*wl.block, *wl.head)}
        layer_bytes = sum(grids[mat].tile_bytes_total(hw) for mat in wl.block)
        head_bytes = sum(grids[mat].tile_bytes_total(hw) for mat in wl.head)

        # activation buffers: a slice holds one block of up to ROW_BLOCK rows of a matmul's input chunk and output
        # share, double-buffered (the rest of the rows stream through); fewer rows if the weights leave too little
        # SRAM (dense packing keeps whole input rows on a slice); the lm head's logits stream out as they are made
        def buffers(block: int) -> int:
            widest = max(
                max(g.k_tiles * hw.dimc.tile_rows, g.n_tiles * hw.dimc.tile_cols)
                for mat, g in grids.items()
                if mat in wl.block
            )
            scores = min(block, q_rows) * keys * kv.groups_per_slice * mem.word_bytes
            return 2 * max(block * widest * mem.act_bits // 8, scores)

        block_rows = min(rows, ROW_BLOCK)
        if kind == "dense":
            heaviest = int(DENSE_WEIGHT_FRACTION * sram)
        else:
            heaviest = max(grids[mat].k_tiles * grids[mat].n_tiles for mat in wl.block) * hw.tile_bytes
        while block_rows > 1 and buffers(block_rows) + heaviest > sram:
            block_rows //= 2
        return _Sized(grids, layer_bytes, head_bytes, buffers(block_rows))

    def place(split: list[tuple[int, int]], sizes: _Sized) -> list[Stage] | str:
        grids, layer_bytes, head_bytes, act_bytes = sizes
        out = []
        for s, (lo, hi) in enumerate(split):
            head = s == stages - 1
            wbytes = (hi - lo) * layer_bytes + (head_bytes if head else 0)
            if kind == "dense":
                used = sum(grids[mat].slices * (hi - lo) for mat in wl.block) + (
                    sum(grids[mat].slices for mat in wl.head) if head else 0
                )
                if used > slices:
                    return f"stage {s} needs {used} slices for its weights packed densely; a stage has {slices}"
                per_slice = int(DENSE_WEIGHT_FRACTION * sram)
            else:
                per_slice = cdiv(wbytes, slices)
            free = sram - per_slice - act_bytes
            if free < 0:
                return (
                    f"stage {s}: weights {per_slice} + activations {act_bytes} bytes a slice exceed the SRAM of "
                    f"{sram} bytes"
                )
            kv_slice = (hi - lo) * kv_layer_slice
            in_sram = min(kv_slice, free)
            offchip = 0.0 if kv_slice == 0 else 1 - in_sram / kv_slice
            lpddr = math.ceil(offchip * (hi - lo) * kv_layer_total / tp_cards)
            if lpddr > mem.lpddr_bytes_per_card:
                return (
                    f"stage {s}: KV cache of {lpddr} bytes a card exceeds the LPDDR of {mem.lpddr_bytes_per_card} bytes"
                )
            out.append(Stage(s, s * tp_cards, tp_cards, (lo, hi), head, per_slice, act_bytes, in_sram, offchip, lpddr))
        return out

    def spare_copies(got: list[Stage]) -> int:
        """The most copies (a power of two, at most the rows) whose weights fit beside each stage's activation
        buffers and KV cache, as placed with one copy."""
        room = min((sram - st.act_bytes - st.kv_sram_bytes) // max(1, st.weight_bytes) for st in got)
        return pow2_floor(min(room, rows))

    first: str | None = None
    one = sized(1)  # the grids of one copy each, shared by every split
    for split in _splits(wl.n_layers, stages, one.layer_bytes, one.head_bytes):
        got = place(split, one)
        if isinstance(got, str):
            first = first or got
            continue
        copies = 1 if kind == "dense" else spare_copies(got)
        while copies > 1:
            wide = place(split, sized(copies))
            if not isinstance(wide, str) and all(w.kv_offchip <= g.kv_offchip for w, g in zip(wide, got, strict=True)):
                got = wide
                break
            copies //= 2
        return Mapping(hw, kind, tp_cards, tuple(got), rows, positions, batch, copies, workload=wl)
    assert first is not None
    return first


def weight_cards(wl: Workload, hw: HardwareConfig) -> float:
    """Cards of SRAM the weights alone need (int8 bytes / SRAM a card): the floor of any mapping."""
    total = wl.n_layers * sum(mat.n * mat.m for mat in wl.block) + sum(mat.n * mat.m for mat in wl.head)
    return total * hw.memory.weight_bits / 8 / (hw.memory.sram_bytes_per_slice * hw.slices_per_card)


def search(
    wl: Workload,
    hw: HardwareConfig,
    policy: MappingPolicy,
    *,
    rows: int,
    positions: int,
    batch: int,
    estimate: Callable[[Mapping], int],
) -> Mapping:
    """The latency-optimal mapping under capacity (see the module docstring); ValueError, one line, naming the
    capacity that failed when nothing fits."""
    max_cards = policy.max_cards or hw.max_cards
    if max_cards > hw.max_cards:
        raise ValueError(f"--max-cards {max_cards} exceeds the {hw.max_cards} cards of {hw.name}")
    if policy.tp_cards is not None and policy.tp_cards > max_cards:
        raise DoesNotFit(f"a stage of {policy.tp_cards} cards is more than the {max_cards} cards available")
    most_stages = wl.n_layers + 1  # a stage holds at least one block, or the lm head alone
    if policy.stages is not None and policy.stages > most_stages:
        raise ValueError(
            f"--stages {policy.stages} is more than {wl.name} can use: {wl.n_layers} blocks and the lm head make at "
            f"most {most_stages} stages"
        )
    if policy.stages is not None and (policy.tp_cards or 1) * policy.stages > max_cards:
        tp = policy.tp_cards or 1
        raise DoesNotFit(
            f"{policy.stages} stages of {tp} card{'s' if tp > 1 else ''} need {tp * policy.stages} cards; "
            f"{hw.name} has {max_cards}"
        )
    if policy.kind == "dense":
        tps = [1] if policy.tp_cards is None else [policy.tp_cards]
    elif policy.tp_cards is not None:
        tps = [policy.tp_cards]
    else:
        tps = [1 << i for i in range(max_cards.bit_length()) if 1 << i <= max_cards]
    reasons: list[str] = []

    def candidates(tp: int) -> list[Mapping]:
        """The mappings of stages `tp` cards wide that fit, in increasing stage count, up to one stage a block and
        the head (not one a card: there may be billions), or for `kind="dense"` the first that fits; why a count
        does not fit goes to `reasons`. Every count is tried: with fewer layers a stage each layer's matrices
        spread over more slices and the KV cache has more SRAM (opt-66b's decode step: 765 us on 64 stages of one
        card, 1008 us on the 10 stages of 4 cards found while counts stopped three past the fewest), and C chunks
        through n stages of equal time take (n + C - 1) / n of one chunk's pass, which shrinks past one stage a
        chunk too (gpt2-xl's 4-chunk prefill: 1010 us on 10 stages of 2 cards, 1515 us on 4 of 8)."""
        counts = [policy.stages] if policy.stages is not None else range(1, min(max_cards // tp, most_stages) + 1)
        out: list[Mapping] = []
        for n in counts:
            if out and policy.kind == "dense":
                break  # normfuse 0.1's packing: stages of one card filled in order, as few as hold the model
            m = build(wl, hw, kind=policy.kind, tp_cards=tp, stages=n, rows=rows, positions=positions, batch=batch)
            if isinstance(m, str):
                reasons.append(f"{n} stage(s) of {tp} card(s): {m}")
            else:
                out.append(m)
        return out

    # widths in increasing order, each estimated as soon as its stage counts are built; stop once two wider widths
    # in a row estimate slower than the best so far (the wider a stage, the more of every collective crosses slow
    # levels: the estimate turns up and stays up)
    scored: list[tuple[int, int, int, Mapping]] = []  # (estimate, cards, order tried, mapping)
    worse = 0
    for tp in tps:
        here = candidates(tp)
        if not here:
            continue
        best_before = min((t[0] for t in scored), default=None)
        mine = [(estimate(m), m.cards, len(scored) + i, m) for i, m in enumerate(here)]
        scored += mine
        if best_before is not None and min(t[0] for t in mine) > best_before:
            worse += 1
            if worse == 2:
                break
        else:
            worse = 0
    if not scored:
        need = weight_cards(wl, hw)
        last = reasons[-1] if reasons else "no candidate"
        raise DoesNotFit(
            f"{wl.name} does not fit on {hw.name} within {max_cards} card{'s' if max_cards > 1 else ''}: its weights "
            f"alone need {need:.1f} cards of SRAM ({last})"
        )
    best_est, _, _, best = min(scored, key=lambda t: t[:3])
    return replace(best, estimate_cycles=best_est, candidates=len(scored))
