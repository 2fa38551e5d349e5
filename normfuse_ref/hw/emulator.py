"""The emulated SIMD/DIMC machine: an Executor that runs the forward pass slice by slice and records a timeline.

`EmulatingExecutor(hw)` implements `normfuse_ref.ops.Executor`. Each primitive the forward pass issues becomes one
or more timed sub-events on the machine's engines (formulas in `costs.py`):

    matmul         DIMC "tiles" (stream / compute the weight tiles, adder tree)  [+ NET "psum" when K spans slices]
    elementwise    SIMD "vector" on every slice holding the output
    reduce         SIMD "partials" (each slice's chunk)  ->  NET "all-reduce"  ->  SIMD "rsqrt" (rms_scale only)
    softmax_tiles  SIMD "local max,exp,sum" (each slice's keys)  ->  DIMC "e@V" (each slice's e_j @ V_j)
    softmax_merge  NET "merge" (the online-softmax merge of the slice states, a reduction tree)
    layout         free: no event, the output is ready when its inputs are

Two ways to run the same forward pass:
  numeric=True   real numbers, computed the way the machine splits them: a matmul's K axis in DIMC tiles of
                 `dimc.tile_rows`, whose partial products are summed by a balanced binary adder tree; a reduction
                 as per-slice partials (chunks of `layout.elems_per_slice`) combined by a binary tree; softmax_tiles
                 per slice of the key axis, merged by a binary tree of online-softmax merges. Equal to
                 `NumpyExecutor` up to rounding (only summation orders differ); the same dtype rule.
  numeric=False  cost only: values are zero-byte, zero-stride arrays (`dummy`) that carry shapes, so `layout`
                 callables still run for free; matmul, elementwise and reduce shapes are computed, not evaluated.

Values come back as `Value` handles (`.shape`, `.ndim`, `.dtype`; `np.asarray(v)` gives the array) that carry
the cycle at which they are ready, the event that produced them, and how many elements one slice holds. Weights
and cache arrays passed in as plain arrays are resident and ready at cycle 0, and so are Values returned by an
earlier run of another executor (e.g. the KV cache of the previous step).

ORDERING RULE (dataflow, list scheduling in issue order):
  1. Sub-events are scheduled one at a time, in the order the forward pass issues the primitives, and within a
     primitive in the order listed above.
  2. A sub-event is ready at the latest end among its inputs: for the first sub-event of a primitive, the
     primitive's input values; for a later one, the sub-event before it.
  3. It starts at the earliest cycle t >= ready at which its engine (DIMC, SIMD or NET; each runs one sub-event
     at a time) is idle for its whole duration [t, t + cost). It may fill an idle gap left before sub-events issued
     earlier (back-filling: a collective issued after a matmul may run on the network before that matmul's
     partial sums, if it fits), but never moves a sub-event already placed. Costs are whole cycles; a zero-cost
     sub-event is not recorded.
  4. Ties are broken deterministically: among inputs ready at the same cycle, the first argument is the cause;
     when an input and the engine's previous sub-event end at the same cycle, the input is. The cause is recorded
     as the event's `pred`, which the critical path follows.
The same forward pass on the same machine always gives the same events.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..fusion import SoftmaxState, online_softmax_merge
from ..ops import NumpyExecutor, ReduceKind, SoftmaxTiles
from ..precision import accumulation_dtype, resolve_dtype
from . import costs
from .config import HardwareConfig
from .timeline import Event, Timeline

__all__ = ["EmulatingExecutor", "Value", "dummy"]

Array = NDArray[Any]

_NOTHING = np.dtype([])  # a structured dtype with no fields: itemsize 0, so arrays of it take no memory

#: Detail events list at most this many slices of one sub-event (the others do the same work at the same time).
DETAIL_SLICES = 64


def dummy(shape: tuple[int, ...]) -> Array:
    """A shape-only array for cost-only runs: zero bytes at any shape; numpy views, gathers and concatenations of
    it work (and cost nothing), which is all a `layout` callable does."""
    return np.empty(shape, dtype=_NOTHING)


class Value:
    """An activation on the emulated machine: its array (or a `dummy`), when it is ready, and its layout."""

    __slots__ = ("data", "load", "owner", "ready", "src")

    def __init__(self, data: Array, ready: int, src: int, load: int, owner: object = None) -> None:
        self.data = data
        self.ready = ready  # cycle at which the value exists
        self.src = src  # index of the event that produced it (-1: an input, ready at 0)
        self.load = load  # elements of it held by one slice (the busiest)
        self.owner = owner  # the executor whose timeline `ready` and `src` refer to

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
        return f"Value(shape={self.shape}, dtype={self.dtype}, ready={self.ready})"


class _Step(NamedTuple):
    """One sub-event of a primitive, before it is placed in time."""

    engine: str
    step: str
    kind: str
    dur: int  # cycles
    flops: int
    nbytes: int
    slices: int = 0  # for detail events: slices doing the same work side by side
    net: tuple[int, int, int] | None = None  # for detail events: (slices, cycles per reduce step, per broadcast step)


class _Plan(NamedTuple):
    steps: tuple[_Step, ...]
    load: int  # elements per slice of the (main) output
    extra: int = 0  # a second output load (softmax_tiles' o), or 0


#: Cost plans by machine, then by signature (primitive, shapes, layout): every block repeats the same shapes, and a
#: new executor for the same machine reuses them.
_PLANS: weakref.WeakKeyDictionary[HardwareConfig, dict[tuple[Any, ...], _Plan]] = weakref.WeakKeyDictionary()


def _plans_for(hw: HardwareConfig) -> dict[tuple[Any, ...], _Plan]:
    plans = _PLANS.get(hw)
    if plans is None:
        plans = _PLANS[hw] = {}
    return plans


def _tree(p: Array, combine: np.ufunc) -> Array:
    """Combine p[0], p[1], ... along axis 0 by a balanced binary tree: pairs, then pairs of pairs; an odd last one
    waits a level. Works in place in p (which the caller owns)."""
    k = p.shape[0]
    while k > 1:
        h = k // 2
        combine(p[0 : 2 * h : 2], p[1 : 2 * h : 2], out=p[:h])  # numpy buffers the overlapping operands
        if k % 2:
            p[h] = p[k - 1]
        k = h + k % 2
    return p[0]


def _tree_list(parts: list[Array]) -> Array:
    """The same tree over a list of arrays the caller owns (added in place)."""
    while len(parts) > 1:
        paired = [np.add(parts[i], parts[i + 1], out=parts[i]) for i in range(0, len(parts) - 1, 2)]
        parts = paired + parts[len(parts) - 1 :] if len(parts) % 2 else paired
    return parts[0]


def _pad(a: Array, to: int, value: float, axis: int) -> Array:
    n = a.shape[axis]
    if n == to:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, to - n)
    return np.pad(a, widths, constant_values=value)


def _last_first(a: Array) -> Array:
    """Move the last axis to the front (a view)."""
    return a.transpose((a.ndim - 1, *range(a.ndim - 1)))


class EmulatingExecutor:
    """The tile emulator; see the module docstring for what each primitive costs and the ordering rule.

    hw: the machine. numeric: compute real numbers (True) or shapes only (False).
    storage, acc: as in NumpyExecutor (numeric mode). detail_layer: a decoder block to record detail events for
    (one per slice or network step), besides the aggregated events.
    """

    def __init__(
        self,
        hw: HardwareConfig,
        *,
        numeric: bool = True,
        storage: DTypeLike = np.float32,
        acc: DTypeLike | None = None,
        detail_layer: int | None = None,
    ) -> None:
        self.hw = hw
        self.numeric = numeric
        self._st = resolve_dtype(storage)
        self._acc = accumulation_dtype(self._st, acc)
        self.detail_layer = detail_layer
        self._E = hw.layout.elems_per_slice
        self._events: list[tuple[Any, ...]] = []  # Event fields as plain tuples; Events are built by timeline()
        self._detail: list[Event] = []
        # each engine's busy time as disjoint blocks sorted by time: starts, ends, and the event ending each block
        self._busy: dict[str, tuple[list[int], list[int], list[int]]] = {
            e: ([], [], []) for e in ("DIMC", "SIMD", "NET")
        }
        self._layer: int | None = None
        self._plans = _plans_for(hw)
        # one tile's product, summed in `acc` and kept in `acc` (NumpyExecutor's matmul)
        self._tile = NumpyExecutor(storage=self._acc, acc=self._acc)

    def timeline(self, mode: str = "") -> Timeline:
        """The events recorded so far."""
        return Timeline((Event(*e) for e in self._events), ghz=self.hw.clock.ghz, mode=mode, detail=self._detail)

    # -- scheduling (the ordering rule) ----------------------------------------------------------------------------

    def _run(self, op: str, plan: _Plan, ready: int, src: int) -> tuple[int, int]:
        """Place the plan's sub-events one after another (ordering rule 2-4); returns (end, index of the last)."""
        events, layer = self._events, self._layer
        for st in plan.steps:
            dur = st.dur
            if dur <= 0:
                continue
            starts, ends, lasts = self._busy[st.engine]
            idx = len(events)
            if not ends or ready >= ends[-1]:  # the engine is idle from `ready` on: the common case
                start, pred = ready, src
                if ends and start == ends[-1]:
                    ends[-1], lasts[-1] = start + dur, idx  # extends the last busy block
                else:
                    starts.append(start)
                    ends.append(start + dur)
                    lasts.append(idx)
            else:  # the first idle gap at or after `ready` that fits (back-filling)
                pos = bisect.bisect_right(ends, ready)  # the first busy block ending after `ready`
                start, pred = ready, src
                while pos < len(starts) and start + dur > starts[pos]:
                    if ends[pos] > start:
                        start, pred = ends[pos], lasts[pos]
                    pos += 1
                self._occupy(st.engine, pos, start, start + dur, idx)
            end = start + dur
            events.append((st.engine, "all", layer, op, st.step, st.kind, start, end, st.flops, st.nbytes, pred))
            if self.detail_layer is not None and layer == self.detail_layer:
                self._add_detail(Event(*events[idx]), st)
            ready, src = end, idx
        return ready, src

    def _occupy(self, engine: str, pos: int, start: int, end: int, idx: int) -> None:
        """Insert [start, end) as busy block `pos`, merged with a neighbour it touches."""
        starts, ends, lasts = self._busy[engine]
        if pos > 0 and ends[pos - 1] == start:
            pos -= 1
            ends[pos], lasts[pos] = end, idx
        else:
            starts.insert(pos, start)
            ends.insert(pos, end)
            lasts.insert(pos, idx)
        if pos + 1 < len(starts) and starts[pos + 1] == end:
            ends[pos], lasts[pos] = ends[pos + 1], lasts[pos + 1]
            del starts[pos + 1], ends[pos + 1], lasts[pos + 1]

    def _add_detail(self, e: Event, st: _Step) -> None:
        parts: list[tuple[str, int, int]] = []
        if st.net is not None:
            P, up, down = st.net
            steps, t = costs.topology_steps(self.hw, P), 0
            for s in range(steps):
                parts.append((f"reduce step {s + 1}", t, up))
                t += up
            for s in range(steps if down else 0):
                parts.append((f"broadcast step {s + 1}", t, down))
                t += down
            if e.duration > t:
                parts.append(("further rows", t, e.duration - t))
        else:
            parts = [(f"slice {s}", 0, e.duration) for s in range(min(max(1, st.slices), DETAIL_SLICES))]
        n = max(1, len(parts))
        for unit, off, dur in parts:
            self._detail.append(
                Event(
                    e.engine,
                    unit,
                    e.layer,
                    e.op,
                    e.step,
                    e.kind,
                    e.start + off,
                    e.start + off + dur,
                    e.flops // n,
                    e.bytes // n,
                )
            )

    def _ready(self, xs: tuple[Any, ...]) -> tuple[int, int]:
        """Latest ready cycle among the inputs and the event behind it (the first argument wins ties)."""
        ready, src = 0, -1
        for x in xs:
            if type(x) is Value and x.owner is self and x.ready > ready:
                ready, src = x.ready, x.src
        return ready, src

    # -- layout helpers ----------------------------------------------------------------------------------------------

    def _default_load(self, shape: tuple[int, ...]) -> int:
        """Elements per slice by the layout rule: last axis in chunks of E, leading axes as rows."""
        if not shape:
            return 1
        return math.prod(shape[:-1]) * min(shape[-1], self._E)

    def _rows(self, load: int, n: int) -> int:
        """Serial rows one slice holds: its load over its chunk of one row."""
        return max(1, -(-load // max(1, min(n, self._E))))

    @staticmethod
    def _data(x: Any) -> Array:
        return x.data if type(x) is Value else x

    def _a(self, x: Any) -> Array:
        d = x.data if type(x) is Value else x
        return d if d.dtype == self._acc else d.astype(self._acc)

    # -- primitives ----------------------------------------------------------------------------------------------

    def matmul(self, x: Any, F: Any, *, op: str, keep_acc: bool = False) -> Value:
        xd, Fd = self._data(x), self._data(F)
        weight = Fd.ndim == 2 and type(F) is not Value
        key = ("mm", xd.shape, Fd.shape, weight)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan_matmul(xd.shape, Fd.shape, weight)
        ready, src = self._ready((x, F))
        end, idx = self._run(op, plan, ready, src)
        if self.numeric:
            data = self._tiled_matmul(self._a(x), self._a(F)).astype(self._acc if keep_acc else self._st, copy=False)
        else:
            data = dummy(self._matmul_shape(xd.shape, Fd.shape))
        return Value(data, end, idx, plan.load, self)

    @staticmethod
    def _matmul_shape(xs: tuple[int, ...], Fs: tuple[int, ...]) -> tuple[int, ...]:
        if len(Fs) == 2:
            return (*xs[:-1], Fs[-1])
        return (*np.broadcast_shapes(xs[:-2], Fs[:-2]), xs[-2], Fs[-1])

    def _plan_matmul(self, xs: tuple[int, ...], Fs: tuple[int, ...], weight: bool) -> _Plan:
        hw = self.hw
        n, m = Fs[-2], Fs[-1]
        out = self._matmul_shape(xs, Fs)
        groups = math.prod(Fs[:-2])
        rows_total = math.prod(out[:-1])
        r = max(1, -(-rows_total // groups))
        mp = costs.weight_mapping(hw, n, m) if weight else costs.activation_mapping(hw, n, m, groups)
        width = min(m, hw.dimc.tile_cols)
        net = hw.network
        steps = [
            _Step(
                "DIMC",
                "tiles",
                "matmul",
                costs.dimc_cycles(hw, mp, rows=r),
                2 * rows_total * n * m,
                mp.slices * mp.tiles * mp.tile_bytes,
                slices=mp.slices,
            ),
        ]
        ps = costs.psum_cycles(hw, mp, rows=r, width=width)
        if ps:
            ser = costs.cdiv(width * net.word_bytes, net.link_bytes_per_cycle)
            comb = costs.cdiv(width, hw.simd.lanes) * hw.dimc.adder_level_cycles
            moved = rows_total * m * (mp.k_split - 1)
            steps.append(
                _Step(
                    "NET",
                    "psum",
                    "psum",
                    ps,
                    moved,
                    moved * net.word_bytes,
                    net=(mp.k_split, net.hop_latency_cycles + comb + ser, 0),
                )
            )
        return _Plan(tuple(steps), r * min(m, self._E))

    def _tiled_matmul(self, xa: Array, Fa: Array) -> Array:
        """x @ F with K cut into DIMC tiles of tile_rows rows; the tiles' partial products summed by a binary
        adder tree (pairs of tiles, then pairs of pairs)."""
        tk = self.hw.dimc.tile_rows
        n = Fa.shape[-2]
        if n <= tk:  # one tile: the plain product (and NumpyExecutor's BLAS thread policy)
            return self._tile.matmul(xa, Fa, op="tile")
        mm = self._tile.matmul
        parts = [mm(xa[..., j : j + tk], Fa[..., j : j + tk, :], op="tile") for j in range(0, n, tk)]  # (..., m)
        return _tree_list(parts)

    def elementwise(self, fn: Callable[..., Array], *xs: Any, op: str, keep_acc: bool = False) -> Value:
        if self.numeric:
            data = np.asarray(fn(*[self._a(x) for x in xs])).astype(self._acc if keep_acc else self._st, copy=False)
            out_shape = data.shape
        else:
            shapes = [x.data.shape if type(x) is Value else np.shape(x) for x in xs]
            out_shape = shapes[0] if all(s == shapes[0] for s in shapes) else np.broadcast_shapes(*shapes)
            data = dummy(out_shape)
        load, ready, src = 0, 0, -1  # the output's layout follows its full-size inputs; readiness as in _ready
        for x in xs:
            if type(x) is Value:
                if x.load > load and x.data.shape == out_shape:
                    load = x.load
                if x.owner is self and x.ready > ready:
                    ready, src = x.ready, x.src
            elif np.shape(x) == out_shape:
                load = max(load, self._default_load(out_shape))
        if not load:
            load = self._default_load(out_shape)
        key = ("ew", op, out_shape, load)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan_elementwise(op, out_shape, load)
        end, idx = self._run(op, plan, ready, src)
        return Value(data, end, idx, load, self)

    def _plan_elementwise(self, op: str, shape: tuple[int, ...], load: int) -> _Plan:
        n = shape[-1] if shape else 1
        elem_ops, row_ops = costs.simd_program(op)
        dur = costs.simd_cycles(self.hw, load=load, rows=self._rows(load, n), elem_ops=elem_ops, row_ops=row_ops)
        size = math.prod(shape)
        step = _Step(
            "SIMD",
            "vector",
            "vector",
            dur,
            size * len(elem_ops),
            size * self.hw.memory.act_bits // 8,
            slices=-(-size // max(1, load)),
        )
        return _Plan((step,), load)

    def reduce(self, x: Any, kind: ReduceKind, *, op: str, eps: float = 0.0) -> Value:
        if kind not in costs.REDUCE_OPS:
            raise ValueError(f"unknown reduction kind {kind!r}")
        xd = self._data(x)
        load = x.load if type(x) is Value else self._default_load(xd.shape)
        key = ("red", kind, xd.shape, load)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan_reduce(kind, xd.shape, load)
        ready, src = self._ready((x,))
        end, idx = self._run(op, plan, ready, src)
        data = self._tiled_reduce(self._a(x), kind, eps) if self.numeric else dummy((*xd.shape[:-1], 1))
        return Value(data, end, idx, plan.load, self)

    def _plan_reduce(self, kind: str, shape: tuple[int, ...], load: int) -> _Plan:
        hw, net = self.hw, self.hw.network
        n = shape[-1]
        P = costs.slices_for(hw, n)
        r = self._rows(load, n)
        size = math.prod(shape)
        rows_total = size // max(1, n)
        combine = hw.simd.op_cycles(costs.REDUCE_OPS[kind][1])
        ser = costs.cdiv(net.word_bytes, net.link_bytes_per_cycle)
        moved = rows_total * max(0, P - 1)
        steps = (
            _Step(
                "SIMD",
                "partials",
                "collective",
                costs.local_reduce_cycles(hw, kind=kind, row_len=n, load=load),
                2 * size,
                size * hw.memory.act_bits // 8,
                slices=P,
            ),
            _Step(
                "NET",
                "all-reduce",
                "collective",
                costs.collective_cycles(
                    hw, slices=P, rows=r, combine=combine, payload_bytes=net.word_bytes, broadcast=True
                ),
                moved,
                2 * moved * net.word_bytes,
                net=(P, net.hop_latency_cycles + combine + ser, net.hop_latency_cycles + ser),
            ),
            _Step(
                "SIMD",
                "rsqrt",
                "collective",
                costs.reduce_finish_cycles(hw, kind=kind, rows=r),
                3 * rows_total,
                0,
                slices=P,
            ),
        )
        return _Plan(steps, r)

    def _tiled_reduce(self, xa: Array, kind: str, eps: float) -> Array:
        """Per-slice partials over chunks of E, combined by a binary tree (the network's reduction order)."""
        n, E = xa.shape[-1], self._E
        P = -(-n // E)
        if P <= 1:
            if kind == "max":
                return np.max(xa, axis=-1, keepdims=True)
            tot = np.sum(xa * xa if kind == "rms_scale" else xa, axis=-1, keepdims=True)  # (..., 1)
        else:
            ident = -np.inf if kind == "max" else 0.0
            xr = _pad(xa, P * E, ident, -1).reshape(*xa.shape[:-1], P, E)  # (..., P, E)  one row chunk per slice
            if kind == "max":
                return _tree(_last_first(np.max(xr, axis=-1)), np.maximum)[..., None]  # (..., 1)  exact in any order
            part = np.sum(xr * xr if kind == "rms_scale" else xr, axis=-1)  # (..., P)  each slice's partial
            tot = _tree(_last_first(part), np.add)[..., None]  # (..., 1)
        if kind == "sum":
            return tot
        if kind == "mean":
            return (tot / self._acc.type(n)).astype(self._acc)  # (..., 1)
        return (1 / np.sqrt(tot / self._acc.type(n) + self._acc.type(eps))).astype(self._acc)  # (..., 1)

    def softmax_tiles(self, z: Any, V: Any, *, op: str) -> SoftmaxTiles:
        zd, Vd = self._data(z), self._data(V)
        S, hd = zd.shape[-1], Vd.shape[-1]
        k = -(-S // self._E)
        E = self._E if k > 1 else S  # keys per slice
        load = z.load if type(z) is Value else self._default_load(zd.shape)
        key = ("st", zd.shape, Vd.shape, load)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan_softmax_tiles(zd.shape, Vd.shape, load)
        ready, src = self._ready((z, V))
        end, idx = self._run(op, plan, ready, src)
        lead = zd.shape[:-1]  # (..., GT)
        if self.numeric:
            za, Va = self._a(z), self._a(V)
            za = _pad(za, k * E, -np.inf, -1).reshape(*lead, k, E)  # (..., GT, k, E)  slice j holds keys j*E..
            Vr = _pad(Va, k * E, 0.0, -2).reshape(*Va.shape[:-2], k, E, hd)  # (..., k, E, hd)
            m = np.max(za, axis=-1, keepdims=True)  # (..., GT, k, 1)  local max only
            m_shift = np.where(np.isneginf(m), 0, m)  # an all-masked slice shifts by 0: its e^z are all 0
            with np.errstate(invalid="ignore"):
                p = np.exp(za - m_shift)  # (..., GT, k, E)
            l = np.sum(p, axis=-1, keepdims=True)  # (..., GT, k, 1)
            pk = np.moveaxis(p, -2, -3)  # (..., k, GT, E)
            gap = pk.ndim - Vr.ndim
            if gap > 0:
                Vr = Vr.reshape(*(1,) * gap, *Vr.shape)
            o = np.moveaxis(self._tile.matmul(pk, Vr, op="tile"), -3, -2)  # (..., GT, k, hd)  each slice's e_j @ V_j
        else:
            m, l, o = dummy((*lead, k, 1)), dummy((*lead, k, 1)), dummy((*lead, k, hd))
        return SoftmaxTiles(
            Value(m, end, idx, plan.load, self),
            Value(l, end, idx, plan.load, self),
            Value(o, end, idx, plan.extra, self),
        )

    def _plan_softmax_tiles(self, zs: tuple[int, ...], Vs: tuple[int, ...], load: int) -> _Plan:
        hw = self.hw
        S, hd = zs[-1], Vs[-1]
        r = self._rows(load, S)
        rows_total = math.prod(zs[:-1])
        groups = math.prod(Vs[:-2])
        mp = costs.activation_mapping(hw, S, hd, groups)
        steps = (
            _Step(
                "SIMD",
                "local max,exp,sum",
                "vector",
                costs.softmax_local_cycles(hw, row_len=S, load=load),
                4 * rows_total * S,
                rows_total * S * hw.memory.act_bits // 8,
                slices=groups * costs.slices_for(hw, S),
            ),
            _Step(
                "DIMC",
                "e@V",
                "matmul",
                costs.dimc_cycles(hw, mp, rows=r),
                2 * rows_total * S * hd,
                mp.slices * mp.tile_bytes,
                slices=mp.slices,
            ),
        )
        return _Plan(steps, r, r * min(hd, self._E))

    def softmax_merge(self, t: SoftmaxTiles, *, op: str) -> SoftmaxTiles:
        md, od = self._data(t.m), self._data(t.o)
        r = t.m.load if type(t.m) is Value else 1
        key = ("sm", md.shape, od.shape, r)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan_merge(md.shape, od.shape, r)
        ready, src = self._ready((t.m, t.l, t.o))
        end, idx = self._run(op, plan, ready, src)
        if self.numeric:
            m, l, o = self._data(t.m), self._data(t.l), self._data(t.o)
            while m.shape[-2] > 1:  # a binary tree over the slice axis: pairs, then pairs of pairs
                kk = m.shape[-2]
                a, b = slice(0, kk - 1, 2), slice(1, kk, 2)
                s = online_softmax_merge(
                    SoftmaxState(m[..., a, :], l[..., a, :], o[..., a, :]),
                    SoftmaxState(m[..., b, :], l[..., b, :], o[..., b, :]),
                )
                if kk % 2:
                    m = np.concatenate((s.m, m[..., kk - 1 :, :]), axis=-2)
                    l = np.concatenate((s.l, l[..., kk - 1 :, :]), axis=-2)
                    o = np.concatenate((s.o, o[..., kk - 1 :, :]), axis=-2)
                else:
                    m, l, o = s.m, s.l, s.o
        else:
            m, l, o = (
                dummy((*md.shape[:-2], 1, 1)),
                dummy((*md.shape[:-2], 1, 1)),
                dummy((*od.shape[:-2], 1, od.shape[-1])),
            )
        return SoftmaxTiles(
            Value(m, end, idx, plan.load, self),
            Value(l, end, idx, plan.load, self),
            Value(o, end, idx, plan.extra, self),
        )

    def _plan_merge(self, ms: tuple[int, ...], os_: tuple[int, ...], r: int) -> _Plan:
        hw, net = self.hw, self.hw.network
        k, hd = ms[-2], os_[-1]
        width = min(hd, hw.dimc.tile_cols)
        combine = costs.merge_combine_cycles(hw, width=width)
        payload = (width + 2) * net.word_bytes
        ser = costs.cdiv(payload, net.link_bytes_per_cycle)
        rows_total = math.prod(ms[:-2])
        dur = costs.collective_cycles(hw, slices=k, rows=r, combine=combine, payload_bytes=payload, broadcast=False)
        step = _Step(
            "NET",
            "merge",
            "collective",
            dur,
            rows_total * (k - 1) * (2 * hd + 8),
            rows_total * (k - 1) * (hd + 2) * net.word_bytes,
            net=(k, net.hop_latency_cycles + combine + ser, 0),
        )
        return _Plan((step,), r, r * min(hd, self._E))

    def layout(self, fn: Callable[..., Array], *xs: Any, op: str) -> Value:
        if self.numeric:
            out = fn(*(x.data if type(x) is Value else x for x in xs))
        else:  # every input as a dummy, so real arrays passed in (weights, a cache) mix with dummies for free
            out = fn(*(x.data if type(x) is Value else dummy(np.shape(x)) for x in xs))
        if not self.numeric and isinstance(out, np.ndarray) and out.nbytes:
            out = dummy(out.shape)  # a materialised copy (e.g. a gather from real arrays): keep the shape only
        ready, src = self._ready(xs)
        load = 0
        for x in xs:
            if type(x) is Value and x.load > load:
                load = x.load
        return Value(out, ready, src, load or self._default_load(np.shape(out)), self)

    @contextlib.contextmanager
    def scope(self, *, layer: int | None) -> Iterator[None]:
        previous, self._layer = self._layer, layer
        try:
            yield
        finally:
            self._layer = previous
