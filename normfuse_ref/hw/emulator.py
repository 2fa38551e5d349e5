"""The emulated SIMD/DIMC machine: an Executor that runs the forward pass on a mapping and records a timeline.

`EmulatingExecutor(hw, mapping)` implements `normfuse_ref.ops.Executor`. It is thin: for each primitive it finds
where the inputs live and where the work runs (the `Mapping`), asks `costs` for the steps, places them with the
`schedule.Scheduler` on the resources of the stage that runs them, and, in numeric mode, computes the values with
the `tiled` kernels. Where work runs:

    matmul (weight)  on the stage of the current block: deliver x to the grid's slices, DIMC tiles, partial sums;
                     the output lives on the grid's roots
    matmul (other)   on the KV layout of the current block's stage (the matrix is a KV-cache operand): the operand
                     already spread over the key axis (the scores, for P @ V) decides which axis is the key axis
    elementwise      on the slices of its latest-ready full-size input; every other input lives there or is
                     moved there (a move starts as soon as that input is ready)
    reduce           on its input's slices: local partials, the collective over their span, the finish
    softmax_tiles    on the KV layout: local max, exp and sum, then e @ V (no communication)
    softmax_merge    the online-softmax merge over the key slices, split into its partial-sum part and its
                     normalisation overhead (`costs.merge_steps`)
    layout           free (addressing); the output lives where its largest input lives, replicated if every
                     input is replicated there
A value produced on another stage first crosses to this one (`costs.stage_transfer_step`), once.

Flags (each a separate pass of the same forward): `free_normalisation` makes every normalisation-statistic step
cost nothing (every `reduce`, the normalisation part of the merge, and moving a statistic): the counterfactual
of the accounting. `one_pass_softmax` costs the two-pass order's max and sum as one (m, l) all-reduce: a `max`
reduction pays the one-pass local work and a collective of (m, l) pairs, and the `sum` over values derived from
it is then free.

Two ways to run: numeric=True computes real numbers (equal to NumpyExecutor up to rounding); numeric=False is
cost-only: values are zero-byte `dummy` arrays that carry shapes. Values come back as `Value` handles (`.shape`,
`.ndim`, `.dtype`; `np.asarray(v)` gives the array). Plain arrays passed in (weights, a cache), and Values of
another executor, are resident and ready at cycle 0. The ordering rule is `schedule.py`'s.

Per call, a primitive does three things: it looks its plan up by a key of shapes, places and the choices that
change its cost (the plan holds the steps with their resources, and whatever else follows from the key alone: the
output place, the grid or KV layout behind it); it places the steps (`schedule.Scheduler`); and, in numeric mode,
it computes (`tiled`). Plans are memoised per mapping and shared by every pass on it, whatever its flags (a free
step is skipped when placed). tiny's primitives are microseconds of NumPy, so the per-call bookkeeping is kept to
a few microseconds: plan keys hash in C (`Place` is a named tuple), values are built from positional fields.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..ops import ReduceKind, SoftmaxTiles
from ..precision import accumulation_dtype, in_acc, resolve_dtype, write_back
from . import costs, network
from .config import HardwareConfig
from .costs import Step
from .layout import KVLayout, Place, cdiv
from .mapping import Mapping, adhoc_mapping
from .schedule import Scheduler
from .tiled import TiledKernels
from .timeline import Event, Timeline

__all__ = ["EmulatingExecutor", "Value", "dummy"]

Array = NDArray[Any]

_NOTHING = np.dtype([])  # a structured dtype with no fields: itemsize 0, so arrays of it take no memory

#: Detail events list at most this many slices of one step (the others do the same work at the same time).
DETAIL_SLICES = 64


def dummy(shape: tuple[int, ...]) -> Array:
    """A shape-only array for cost-only runs: zero bytes at any shape; numpy views, gathers and concatenations of
    it work (and cost nothing), which is all a `layout` callable does."""
    return np.empty(shape, dtype=_NOTHING)


class Value:
    """An activation on the emulated machine: its array (or a `dummy`), when it is ready, and where it lives.

    The executor makes one per primitive, passing every field by position (keyword arguments cost as much again
    as the rest of the call); the flags are in the order fresh, norm, on_kv, pair, replicated."""

    __slots__ = (
        "copies",
        "data",
        "epoch",
        "fresh",
        "norm",
        "on_kv",
        "owner",
        "pair",
        "place",
        "ready",
        "replicated",
        "src",
    )

    def __init__(
        self,
        data: Array,
        ready: int,
        src: int,
        place: Place,
        owner: object,
        epoch: int,
        fresh: int | None = None,
        norm: bool = False,
        on_kv: bool = False,
        pair: int = 0,
        replicated: bool = False,
    ) -> None:
        self.data = data
        self.ready = ready  # cycle at which the value exists
        self.src = src  # index of the event that produced it (-1: ready at 0)
        self.place = place  # where it lives
        self.owner = owner  # the executor whose timeline `ready` and `src` refer to
        self.epoch = epoch  # the forward call (of a chunked prefill) that made it
        self.fresh = data.size if fresh is None else fresh  # elements made in that call
        self.norm = norm  # a normalisation statistic (moving it is a normalisation step)
        self.on_kv = on_kv  # spread over a KV layout's key axis
        self.pair = pair  # one-pass softmax: the (m, l) collective this value derives from (0: none)
        self.replicated = replicated  # every slice of its place holds all of it (an all-reduce's result)
        self.copies: dict[int, Value] | None = None  # copies sent to other stages (made on the first)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return int(self.data.ndim)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __len__(self) -> int:
        return len(self.data)

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> Array:
        return np.asarray(self.data, dtype=dtype)

    def __repr__(self) -> str:
        return f"Value(shape={self.shape}, dtype={self.dtype}, ready={self.ready}, stage={self.place.stage})"


def _event(
    st: Step, res: tuple[str, ...], layer: int | None, op: str, start: int, end: int, pred: int, stage: int
) -> Event:
    """The Event of a placed step (aggregated over the slices taking part)."""
    return Event(
        st.engine, "all", layer, op, st.step, st.kind, start, end, st.flops, st.nbytes, pred, stage, res, st.norm
    )


@functools.lru_cache(maxsize=16)
def _kernels(acc: np.dtype, tile_rows: int) -> TiledKernels:
    """The tiled kernels, one set per accumulation dtype and tile height (they hold no state of a pass)."""
    return TiledKernels(acc, tile_rows)


class _KVSite(NamedTuple):
    """A layer's KV layout on one stage as a product or a softmax against it sees it (`EmulatingExecutor._kv_site`)."""

    kv: KVLayout
    keys: int  # positions a key slice holds
    used: int  # key slices holding some of the S positions
    rows: int  # query rows a slice processes
    place: Place  # where values spread over the key slices live
    deliver: float  # bytes of the call's new K or V rows sent to each key slice
    nbytes: float  # bytes of the whole K or V of the layer


#: Plans by mapping, then by signature: every block repeats the same shapes and places.
_PLANS: dict[Mapping, dict[tuple[Any, ...], Any]] = {}

Plan = tuple[tuple[Step, tuple[str, ...]], ...]


class EmulatingExecutor:
    """The machine emulator; see the module docstring.

    hw: the machine. mapping: where everything lives (default: one card, grids chosen on first use).
    numeric: compute real numbers (True) or shapes only (False). storage, acc: as in NumpyExecutor.
    detail_layer: a decoder block to record detail events for (per slice or per network level).
    free_normalisation, one_pass_softmax: see the module docstring.
    """

    def __init__(
        self,
        hw: HardwareConfig,
        mapping: Mapping | None = None,
        *,
        numeric: bool = True,
        storage: DTypeLike = np.float32,
        acc: DTypeLike | None = None,
        detail_layer: int | None = None,
        free_normalisation: bool = False,
        one_pass_softmax: bool = False,
    ) -> None:
        self.hw = hw
        self.mapping = mapping if mapping is not None else adhoc_mapping(hw)
        if self.mapping.hw != hw:
            raise ValueError("the mapping was made for another machine")
        self.numeric = numeric
        self.free = free_normalisation
        self.one_pass = one_pass_softmax
        self._st = resolve_dtype(storage)
        self._acc = accumulation_dtype(self._st, acc)
        self.detail_layer = detail_layer
        # each placed step as (step, resources, layer, op, start, end, pred, stage); Events are built by timeline()
        self._events: list[tuple[Step, tuple[str, ...], int | None, str, int, int, int, int]] = []
        self._detail: list[Event] = []
        self._schedule = Scheduler().place  # puts a step on its resources by the ordering rule
        self._layer: int | None = None
        self._stage = 0
        self._seen_block = False
        self._epoch = 0
        self._pairs = 0
        # plans do not depend on the flags (a free step is skipped when run; the one-pass choices are in the keys),
        # so every pass on one mapping shares them
        plans = _PLANS.get(self.mapping)
        if plans is None:
            if len(_PLANS) > 256:
                _PLANS.clear()
            plans = _PLANS[self.mapping] = {}
        self._plans = plans
        self._kernels = _kernels(self._acc, hw.dimc.tile_rows)

    def new_pass(self) -> None:
        """Start the next forward call of a chunked prefill: values made before are no longer fresh."""
        self._epoch += 1
        self._seen_block = False

    def timeline(self, mode: str = "") -> Timeline:
        """The events recorded so far."""
        return Timeline((_event(*e) for e in self._events), ghz=self.hw.clock.ghz, mode=mode, detail=self._detail)

    # -- placing steps -------------------------------------------------------------------------------------------

    def _resources(self, st: Step, stage: int) -> tuple[str, ...]:
        if st.engine == "NET":  # the highest level it crosses: its scarcest links (see schedule.py)
            return (f"NET.{st.levels[-1]}@{stage}",)
        return (f"{st.engine}@{stage}",)

    def _plan(self, steps: tuple[Step, ...], stage: int) -> Plan:
        return tuple((st, self._resources(st, stage)) for st in steps if st.cycles > 0)

    def _run(self, op: str, plan: Plan, ready: int, src: int, stage: int) -> tuple[int, int]:
        """Place the plan's steps one after another (ordering rule 2-4); returns (end, index of the last)."""
        events, layer, free, schedule = self._events, self._layer, self.free, self._schedule
        detail = self.detail_layer is not None and layer == self.detail_layer
        for st, res in plan:
            if free and st.norm:
                continue
            idx = len(events)
            start, pred = schedule(res, st.cycles, ready, src, idx)
            end = start + st.cycles
            events.append((st, res, layer, op, start, end, pred, stage))
            if detail:
                self._add_detail(_event(*events[idx]), st)
            ready, src = end, idx
        return ready, src

    def _add_detail(self, e: Event, st: Step) -> None:
        units = (
            list(st.levels)
            if st.engine == "NET"
            else [f"slice {s}" for s in range(min(max(1, st.slices), DETAIL_SLICES))]
        )
        n = max(1, len(units))
        for unit in units:
            self._detail.append(
                Event(
                    e.engine,
                    unit,
                    e.layer,
                    e.op,
                    e.step,
                    e.kind,
                    e.start,
                    e.end,
                    e.flops // n,
                    e.bytes // n,
                    -1,
                    e.stage,
                    e.resources,
                    e.norm,
                )
            )

    # -- where values live ---------------------------------------------------------------------------------------

    def _mine(self, x: Any) -> bool:
        return type(x) is Value and x.owner is self

    def _here(self, x: Any) -> Any:
        """x on the current stage: a value made on another stage crosses over once (then the copy is reused)."""
        if type(x) is not Value or x.owner is not self or x.place.stage == self._stage:
            return x
        return self._cross(x)

    def _inputs(self, xs: tuple[Any, ...]) -> list[Value]:
        """The inputs made on this machine (this executor's Values), in order, each on the current stage."""
        stage = self._stage
        return [x if x.place.stage == stage else self._cross(x) for x in xs if type(x) is Value and x.owner is self]

    def _cross(self, x: Value) -> Value:
        """x's copy on the current stage, sent there on first use."""
        stage = self._stage
        if x.copies is None:
            x.copies = {}
        copy = x.copies.get(stage)
        if copy is not None:
            return copy
        a, b = x.place.stage, stage
        level = self.mapping.crossing(min(a, b), max(a, b))
        width = self.hw.memory.word_bytes if x.norm else self.hw.memory.act_bits / 8
        key = ("xfer", a, b, x.shape, x.norm)
        plan = self._plans.get(key)
        if plan is None:
            st = costs.stage_transfer_step(self.hw, level, math.prod(x.shape) * width, norm=x.norm)
            plan = self._plans[key] = ((st, (f"NET.{level}@{a}>{b}",)),)
        end, idx = self._run("stage transfer", plan, x.ready, x.src, b)
        copy = Value(
            x.data,
            end,
            idx,
            x.place._replace(stage=b),
            self,
            x.epoch,
            fresh=x.fresh,
            norm=x.norm,
            on_kv=x.on_kv,
            pair=x.pair,
            replicated=x.replicated,
        )
        x.copies[stage] = copy
        return copy

    def _fresh(self, x: Any) -> int:
        return x.fresh if self._mine(x) and x.epoch == self._epoch else 0

    def _default_place(self, stage: int, shape: tuple[int, ...]) -> Place:
        """Where a value of this shape lives when no op placed it (`Mapping.default_place`)."""
        n = shape[-1] if shape else 1
        key = ("place", stage, n)
        place = self._plans.get(key)
        if place is None:
            place = self._plans[key] = self.mapping.default_place(stage, n)
        return place

    def _ready(self, xs: Sequence[Any]) -> tuple[int, int]:
        """Latest ready cycle among the inputs and the event behind it (the first argument wins ties)."""
        ready, src = 0, -1
        for x in xs:
            if type(x) is Value and x.owner is self and x.ready > ready:
                ready, src = x.ready, x.src
        return ready, src

    @staticmethod
    def _data(x: Any) -> Array:
        return x.data if type(x) is Value else x

    def _a(self, x: Any) -> Array:
        """An operand in acc, as the plain executor reads it (`precision.in_acc`)."""
        return in_acc(x.data if type(x) is Value else np.asarray(x), self._acc)

    @staticmethod
    def _matmul_shape(xs: tuple[int, ...], Fs: tuple[int, ...]) -> tuple[int, ...]:
        if len(Fs) == 2:
            return (*xs[:-1], Fs[-1])
        return (*np.broadcast_shapes(xs[:-2], Fs[:-2]), xs[-2], Fs[-1])

    def _act_bytes(self) -> float:
        return self.hw.memory.act_bits / 8

    # -- primitives ----------------------------------------------------------------------------------------------

    def matmul(self, x: Any, F: Any, *, op: str, keep_acc: bool = False) -> Value:
        x, F = self._here(x), self._here(F)
        xd, Fd = self._data(x), self._data(F)
        stage = self._stage
        if Fd.ndim == 2 and type(F) is not Value:
            plan, out_place, on_kv = self._weight_matmul(x, xd.shape, Fd.shape, stage)
        else:
            plan, out_place, on_kv = self._kv_matmul(x, F, xd.shape, Fd.shape, stage)
        ready, src = self._ready((x, F))
        end, idx = self._run(op, plan, ready, src, stage)
        if self.numeric:
            data = write_back(self._kernels.matmul(self._a(x), self._a(F)), self._st, self._acc, keep_acc)
        else:
            data = dummy(self._matmul_shape(xd.shape, Fd.shape))
        return Value(data, end, idx, out_place, self, self._epoch, None, False, on_kv)

    def _weight_matmul(self, x: Any, xs: tuple[int, ...], Fs: tuple[int, ...], stage: int) -> tuple[Plan, Place, bool]:
        """The plan of x @ F for a stationary weight F, and where the output lives (the grid's roots)."""
        n, m = Fs
        src = x.place if self._mine(x) else None
        key = ("mm", stage, xs, n, m, src)
        entry = self._plans.get(key)
        if entry is None:
            grid = self.mapping.grid(n, m)
            rows = math.prod(xs[:-1])
            span = src.footprint(self.hw) if src is not None else None
            plan = self._plan(costs.matmul_steps(self.hw, grid, rows=rows, src=span), stage)
            entry = self._plans[key] = (plan, grid.roots(stage, rows), False)
        return entry

    def _kv_matmul(
        self, x: Any, F: Any, xs: tuple[int, ...], Fs: tuple[int, ...], stage: int
    ) -> tuple[Plan, Place, bool]:
        """The plan of a product with a KV-cache operand F, where the output lives, and whether it is spread over
        the key axis."""
        pv = self._mine(x) and x.on_kv  # P @ V: x is spread over the key axis already, which is F's K axis
        fresh = self._fresh(F)
        x_place = x.place if self._mine(x) and not pv else None
        key = ("kv", stage, xs, Fs, pv, fresh, x_place)
        entry = self._plans.get(key)
        if entry is not None:
            return entry
        d = self.hw.dimc
        n, m = Fs[-2], Fs[-1]
        groups = math.prod(Fs[:-2]) or 1
        S = n if pv else m
        site = self._kv_site(stage, groups, S, m if pv else n, math.prod(xs[:-1]) // groups, fresh)
        per_dest, span = site.deliver, site.place.footprint(self.hw)
        if x_place is not None:  # q travels to its group's key slices (its share of the rows, to each copy)
            per_dest += site.rows * n * self._act_bytes()
            span = network.union(x_place.footprint(self.hw), span)
        steps: list[Step] = []
        mv = costs.move_step(self.hw, span, per_dest) if per_dest > 0 else None
        if mv is not None:
            steps.append(mv)
        k_tiles, n_tiles = (
            (cdiv(site.keys, d.tile_rows), cdiv(m, d.tile_cols))
            if pv
            else (cdiv(n, d.tile_rows), cdiv(site.keys, d.tile_cols))
        )
        flops = 2 * math.prod(xs[:-1]) * n * m
        steps.append(self._kv_dimc_step("tiles", site, k_tiles, n_tiles, flops, site.used * site.place.groups))
        if pv:
            span = network.span_of(self.hw, min(site.kv.key_slices, costs.pow2_ceil(site.used)), 1)
            steps += costs.psum_steps(self.hw, span=span, words=site.rows * n_tiles * d.tile_cols)
        out_place = site.kv.root(stage) if pv else site.place
        entry = self._plans[key] = (self._plan(tuple(steps), stage), out_place, not pv)
        return entry

    def _kv_site(self, stage: int, groups: int, S: int, hd: int, rows_pg: int, fresh: int) -> _KVSite:
        """Where a layer's K or V (`groups` heads of S positions x hd) lives for `rows_pg` query rows a group, and
        what a call that made `fresh` of its elements delivers to each key slice (see `_KVSite`)."""
        hw = self.hw
        kv = self.mapping.kv(stage, groups, S, rows_pg)
        keys = kv.keys_per_slice(S)
        used = cdiv(S, keys)
        place = kv.place(stage)
        nbytes = groups * S * hd * hw.memory.kv_bits / 8
        return _KVSite(
            kv,
            keys,
            used,
            cdiv(rows_pg * kv.groups_per_slice, kv.row_sets),
            place,
            fresh * hw.memory.act_bits / 8 / max(1, used * place.groups),
            nbytes,
        )

    def _kv_dimc_step(self, name: str, site: _KVSite, k_tiles: int, n_tiles: int, flops: int, slices: int) -> Step:
        """The DIMC step of a product against the KV cache (q k^T, P V, or a softmax tile's e @ V)."""
        hw = self.hw
        return Step(
            "DIMC",
            name,
            "matmul",
            costs.dimc_cycles(
                hw,
                k_tiles=k_tiles,
                n_tiles=n_tiles,
                rows=site.rows,
                tile_bytes=hw.kv_tile_bytes,
                offchip_cycles=costs.lpddr_cycles(
                    hw, nbytes=site.kv.offchip * site.nbytes, cards=self.mapping.tp_cards
                ),
            ),
            flops,
            int(site.nbytes),
            (),
            False,
            slices,
        )

    def elementwise(self, fn: Callable[..., Array], *xs: Any, op: str, keep_acc: bool = False) -> Value:
        mine = self._inputs(xs)
        if self.numeric:
            data = write_back(np.asarray(fn(*map(self._a, xs))), self._st, self._acc, keep_acc)
            out_shape = data.shape
        else:
            shapes = [x.data.shape if type(x) is Value else np.shape(x) for x in xs]
            out_shape = shapes[0] if all(s == shapes[0] for s in shapes) else np.broadcast_shapes(*shapes)
            data = dummy(out_shape)
        anchor: Value | None = None  # the latest-ready full-size input: the op runs where it lives
        pair, rescale = 0, False
        for x in mine:
            pair = pair or x.pair
            rescale = rescale or (self.one_pass and x.norm and x.pair > 0)
            if x.data.shape == out_shape and (anchor is None or x.ready > anchor.ready):
                anchor = x
        stage = self._stage
        place = anchor.place if anchor is not None else self._default_place(stage, out_shape)
        ready, src = 0, -1  # every input on `place`, moved there if it lives elsewhere; the last to arrive is the cause
        for x in mine:
            if x.place == place:
                end, idx = x.ready, x.src
            else:  # the move starts as soon as x is ready, beside the other inputs' moves
                end, idx = self._run(op, self._move_plan(x, place, out_shape, stage), x.ready, x.src, stage)
            if end > ready:  # strictly later: the first input wins a tie (rule 4)
                ready, src = end, idx
        key = ("ew", op, out_shape, place, rescale)
        plan = self._plans.get(key)
        if plan is None:
            n = out_shape[-1] if out_shape else 1
            size = math.prod(out_shape)
            load = cdiv(size, place.slices)
            rows = cdiv(load, max(1, min(n, cdiv(n, place.count))))
            step = costs.elementwise_step(
                self.hw, op=op, load=load, rows=rows, size=size, slices=place.slices, rescale=rescale
            )
            plan = self._plans[key] = self._plan((step,), stage)
        end, idx = self._run(op, plan, ready, src, stage)
        on_kv = anchor.on_kv if anchor is not None else False
        return Value(data, end, idx, place, self, self._epoch, None, False, on_kv, pair)

    def _move_plan(self, x: Value, place: Place, out_shape: tuple[int, ...], stage: int) -> Plan:
        """Moving input x to the slices of `place`, where an elementwise op of output shape `out_shape` runs."""
        key = ("mv", x.place, place, x.shape, out_shape, x.norm, x.replicated)  # replicated: the span below
        plan = self._plans.get(key)
        if plan is None:
            width = self.hw.memory.word_bytes if x.norm else self._act_bytes()
            per_dest = cdiv(math.prod(x.shape), place.slices) * width
            src_span, dst_span = x.place.footprint(self.hw), place.footprint(self.hw)
            if x.replicated:  # every slice of its place holds all of it: no need to cross what it covers
                span = network.replicated_move(src_span, dst_span)
            else:
                span = network.union(src_span, dst_span)
            mv = costs.move_step(self.hw, span, per_dest, norm=x.norm)
            plan = self._plans[key] = self._plan((mv,) if mv else (), stage)
        return plan

    def reduce(self, x: Any, kind: ReduceKind, *, op: str, eps: float = 0.0) -> Value:
        if kind not in costs.REDUCE_OPS:
            raise ValueError(f"unknown reduction kind {kind!r}")
        x = self._here(x)
        mine = self._mine(x)
        shape = self._data(x).shape
        stage = self._stage
        place = x.place if mine else self._default_place(stage, shape)
        pair = 0
        free_sum = bool(self.one_pass and kind == "sum" and mine and x.pair)
        one_pass = self.one_pass and kind == "max"
        if one_pass:
            self._pairs += 1
            pair = self._pairs
        key = ("red", kind, shape, place, one_pass, free_sum)
        entry = self._plans.get(key)
        if entry is None:
            n = shape[-1]
            count = min(place.count, costs.pow2_ceil(n))
            chunk = cdiv(n, count)
            if free_sum:  # its l came with the (m, l) collective of the max
                plan: Plan = ()
            else:
                load = cdiv(math.prod(shape), count * place.groups * place.rows)
                span = network.span_of(self.hw, count, place.stride)
                steps = costs.reduce_steps(
                    self.hw,
                    kind=kind,
                    span=span,
                    n=n,
                    chunk=chunk,
                    load=load,
                    rows=cdiv(load, chunk),
                    one_pass=one_pass,
                )
                plan = self._plan(steps, stage)
            # the result is on the slices that took part, each holding all of it (an all-reduce)
            entry = self._plans[key] = (plan, place._replace(count=count), chunk)
        plan, out_place, chunk = entry
        ready, src = self._ready((x,))
        end, idx = self._run(op, plan, ready, src, stage)
        if self.numeric:
            data = self._kernels.reduce(self._a(x), kind, eps, chunk)
        else:
            data = dummy((*shape[:-1], 1))
        on_kv, pair = mine and x.on_kv, pair or (x.pair if mine else 0)
        return Value(data, end, idx, out_place, self, self._epoch, None, True, on_kv, pair, True)  # replicated

    def softmax_tiles(self, z: Any, V: Any, *, op: str) -> SoftmaxTiles:
        z, V = self._here(z), self._here(V)
        zs, Vs = self._data(z).shape, self._data(V).shape
        stage = self._stage
        fresh = self._fresh(V)
        key = ("st", stage, zs, Vs, fresh)
        entry = self._plans.get(key)
        if entry is None:
            entry = self._plans[key] = self._softmax_tiles_plan(zs, Vs, fresh, stage)
        deliver, local_plan, dimc_plan, kv_place, keys = entry
        # the local max, then the exponentials; e @ V needs only those, so the local sum runs beside it
        (max_st, exp_st, sum_st) = local_plan
        z_ready, z_src = self._ready((z,))
        m_end, m_idx = self._run(op, (max_st,), z_ready, z_src, stage)
        e_end, e_idx = self._run(op, (exp_st,), m_end, m_idx, stage)
        l_end, l_idx = self._run(op, (sum_st,), e_end, e_idx, stage)
        v_end, v_idx = self._run(op, deliver, *self._ready((V,)), stage)  # V's new rows to the key slices
        ready, src = (v_end, v_idx) if v_end >= e_end else (e_end, e_idx)  # e @ V needs both (V wins a tie)
        end, idx = self._run(op, dimc_plan, ready, src, stage)
        if self.numeric:
            m, l, o = self._kernels.softmax_tiles(self._a(z), self._a(V), keys)
        else:
            lead, used = zs[:-1], cdiv(zs[-1], keys)  # (..., GT), slices of the key axis
            m, l, o = dummy((*lead, used, 1)), dummy((*lead, used, 1)), dummy((*lead, used, Vs[-1]))
        epoch = self._epoch
        return SoftmaxTiles(
            Value(m, m_end, m_idx, kv_place, self, epoch, None, True, True),  # norm, on_kv
            Value(l, l_end, l_idx, kv_place, self, epoch, None, True, True),
            Value(o, end, idx, kv_place, self, epoch, None, False, True),
        )

    def _softmax_tiles_plan(
        self, zs: tuple[int, ...], Vs: tuple[int, ...], fresh: int, stage: int
    ) -> tuple[Plan, Plan, Plan, Place, int]:
        """softmax_tiles on the KV layout: delivering V's new rows, the local max, exp and sum, and e @ V; where
        the states live and the keys a slice holds."""
        hw, d = self.hw, self.hw.dimc
        S, hd = zs[-1], Vs[-1]
        groups = math.prod(Vs[:-2]) or 1
        site = self._kv_site(stage, groups, S, hd, math.prod(zs[:-1]) // groups, fresh)
        kv_place, keys = site.place, site.keys
        local = costs.softmax_local_steps(hw, chunk=keys, load=site.rows * keys, slices=kv_place.slices)
        mv = costs.move_step(hw, kv_place.footprint(hw), site.deliver) if site.deliver > 0 else None
        flops = 2 * math.prod(zs) * hd
        dimc = self._kv_dimc_step("e@V", site, cdiv(keys, d.tile_rows), cdiv(hd, d.tile_cols), flops, kv_place.slices)
        return (
            self._plan((mv,) if mv else (), stage),
            self._plan(local, stage),
            self._plan((dimc,), stage),
            kv_place,
            keys,
        )

    def softmax_merge(self, t: SoftmaxTiles, *, op: str) -> SoftmaxTiles:
        m0, l0, o0 = self._here(t.m), self._here(t.l), self._here(t.o)
        ms, os_ = self._data(m0).shape, self._data(o0).shape
        stage = self._stage
        mine = self._mine(m0)
        place = m0.place if mine else self._default_place(stage, ms)
        key = ("sm", stage, ms, os_, place, mine)  # mine: which slices the states lie on (the span below)
        entry = self._plans.get(key)
        if entry is None:
            k, hd = ms[-2], os_[-1]
            rows = cdiv(math.prod(ms[:-2]), place.groups * place.rows)  # rows one set of key slices merges
            # this executor's states lie on the key slices of their place; states passed in, on k slices
            span = network.span_of(self.hw, min(place.count, costs.pow2_ceil(k)) if mine else k, 1)
            plan = self._plan(costs.merge_steps(self.hw, span=span, rows=rows, width=hd), stage)
            entry = self._plans[key] = (plan, place._replace(count=1))  # merged on each group's root
        plan, root = entry
        ready, src = self._ready((m0, l0, o0))
        end, idx = self._run(op, plan, ready, src, stage)
        if self.numeric:
            m, l, o = self._kernels.softmax_merge(self._a(m0), self._a(l0), self._a(o0))
        else:
            m, l, o = dummy((*ms[:-2], 1, 1)), dummy((*ms[:-2], 1, 1)), dummy((*os_[:-2], 1, os_[-1]))
        epoch = self._epoch
        return SoftmaxTiles(
            Value(m, end, idx, root, self, epoch, None, True),  # norm
            Value(l, end, idx, root, self, epoch, None, True),
            Value(o, end, idx, root, self, epoch),
        )

    def layout(self, fn: Callable[..., Array], *xs: Any, op: str) -> Value:
        if self.numeric:
            out = fn(*[x.data if type(x) is Value else x for x in xs])
        else:  # every input as a dummy, so real arrays passed in (weights, a cache) mix with dummies for free
            out = fn(*[x.data if type(x) is Value else dummy(np.shape(x)) for x in xs])
            if isinstance(out, np.ndarray) and out.nbytes:
                out = dummy(out.shape)  # a materialised copy (e.g. a gather from real arrays): keep the shape only
        if len(xs) == 1 and type(x := xs[0]) is Value and x.owner is self and x.place.stage == self._stage:
            # the common case, one input of this stage's (a reshape, a slice): what the loop below makes of it
            ready, src = self._ready(xs)
            return Value(out, ready, src, x.place, self, self._epoch, min(self._fresh(x), out.size), x.norm, x.on_kv,
                         x.pair, x.replicated)  # fmt: skip
        mine = self._inputs(xs)
        ready, src = self._ready(mine)
        biggest: Value | None = None
        fresh, norm, on_kv, pair = 0, False, False, 0
        for x in mine:
            fresh += self._fresh(x)
            norm, on_kv, pair = norm or x.norm, on_kv or x.on_kv, pair or x.pair
            if biggest is None or x.data.size > biggest.data.size:
                biggest = x
        place = biggest.place if biggest is not None else self._default_place(self._stage, out.shape)
        # A layout is addressing: no data moves, so every slice holds after it what it held before. If every input
        # is replicated on the output's place (each of its slices holds all of each input), each slice holds all of
        # any reshape, slice or gather of them: the output is replicated too. An input living elsewhere, or a plain
        # array (where it lives is not modelled), leaves some slices without part of it: not replicated.
        replicated = len(mine) == len(xs) > 0 and all(x.replicated and x.place == place for x in mine)
        return Value(out, ready, src, place, self, self._epoch, min(fresh, out.size), norm, on_kv, pair, replicated)

    def rows(self, fn: Callable[..., Any], x: Any, *xs: Any, batched: tuple[Any, ...] = (), op: str) -> Any:
        return fn(self, x, *xs, *batched)  # the machine runs the primitives themselves, each on its slices

    def scope(self, *, layer: int | None) -> contextlib.AbstractContextManager[None]:
        return _Scope(self, layer)


class _Scope:
    """`EmulatingExecutor.scope`: the layer label and the stage that runs it, restored on exit (a plain context
    manager: a @contextmanager generator costs ~3 us a use)."""

    __slots__ = ("ex", "layer", "previous")

    def __init__(self, ex: EmulatingExecutor, layer: int | None) -> None:
        self.ex, self.layer = ex, layer
        self.previous: tuple[int | None, int] = (None, 0)

    def __enter__(self) -> None:
        ex, layer = self.ex, self.layer
        self.previous = ex._layer, ex._stage
        ex._layer = layer
        if layer is not None:
            ex._seen_block = True
            ex._stage = ex.mapping.stage_of_layer(layer)
        else:
            ex._stage = ex.mapping.head_stage if ex._seen_block else 0

    def __exit__(self, *exc: object) -> None:
        self.ex._layer, self.ex._stage = self.previous
