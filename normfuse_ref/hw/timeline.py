"""Timed events of one emulated forward pass, and what they tell: makespan, busy time, critical path, exposure.

An `Event` is one step on one or more resources (`schedule.py`): the DIMC or SIMD units of a stage, or the network
levels it crosses. Times are integer clock cycles from the start of the pass. Aggregated events cover every slice
that takes part (unit "all"); for one chosen layer the emulator also records *detail* events, one per slice or per
network level (unit "slice 3", "noc", ...), which are for display only.

Kinds:
    matmul      DIMC work: a matmul, or the local e @ V of the one-pass softmax
    vector      SIMD work that needs no communication: elementwise ops, the local part of the one-pass softmax
    psum        partial sums of a matmul whose K tiles span several slices, and the partial-sum part of the
                softmax merge (the same reduction of the outputs alone)
    move        moving an activation to the slices of the next op, within a stage or to the next stage
    collective  every step of a normalisation statistic: a `reduce` (partials, network, finish), the
                normalisation part of the softmax merge, and moving a statistic to where it is applied

Critical path: start from the event that ends last (ties: the one issued last) and follow, event by event, the
predecessor that determined its start (`Event.pred`: the producer of its latest input, or the step whose busy
block on one of its resources ended exactly at its start). Every event starts exactly when its predecessor ends,
so the path covers [0, makespan] without gaps.

Two views of what normalisation costs (`study.Comparison` has the first, the counterfactual):
    exposed  = the durations of the `collective` events on the critical path: time the pass waits for
               normalisation statistics. `psum` and `move` are counted apart, alike in both orders.
    hidden   = collective total - exposed: statistic work that ran beside the critical path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from .config import LEVELS

__all__ = ["ENGINES", "KINDS", "Event", "Timeline", "block_lanes", "chrome_trace", "lane_of"]

ENGINES: tuple[str, ...] = ("DIMC", "SIMD", "NET")
KINDS: tuple[str, ...] = ("matmul", "vector", "psum", "move", "collective")


class Event(NamedTuple):
    """One step. start/end in cycles; flops and bytes are the work it does and the bytes it moves.

    A named tuple: a pass makes one per step, and a frozen dataclass's __init__ costs ~4 us against ~1 us."""

    engine: str  # DIMC, SIMD or NET
    unit: str  # "all" (aggregated over the slices taking part) or a slice / network level in detail events
    layer: int | None  # decoder block, None outside the blocks (embedding, final norm, lm head)
    op: str  # the op name the forward pass issued (e.g. "attn_qkv", "attn_qkv.rms", "softmax.merge")
    step: str  # the sub-step (e.g. "deliver", "tiles", "psum", "partials", "all-reduce", "finish", "merge norm")
    kind: str  # one of KINDS
    start: int  # cycles
    end: int  # cycles
    flops: int  # arithmetic operations (a MAC counts 2)
    bytes: int  # bytes read from SRAM (DIMC), moved on links (NET) or touched (SIMD)
    pred: int = -1  # index of the event whose end determined the start (-1: none, started at t = 0)
    stage: int = 0  # the pipeline stage whose resources it uses
    resources: tuple[str, ...] = ()  # the resources it occupies ("DIMC@0", "NET.noc@0", "NET.pcie@0>1", ...)
    norm: bool = False  # a normalisation-statistic event (made free in the counterfactual pass)

    @property
    def duration(self) -> int:
        return self.end - self.start


def lane_of(resource: str) -> str:
    """The Gantt lane of a resource: its engine, or for the network its level ("DIMC", "SIMD", "NET.noc")."""
    return resource.split("@", 1)[0]


def block_lanes(timelines: Iterable[Timeline], layer: int) -> list[str]:
    """The lanes a block uses in any of the timelines, as pictures draw them: DIMC, SIMD, then the network levels
    innermost first ("NET.noc", "NET.d2d", ...)."""
    used = {lane_of(r) for tl in timelines for e in tl.events if e.layer == layer for r in e.resources}
    return ["DIMC", "SIMD", *(f"NET.{lv}" for lv in LEVELS if f"NET.{lv}" in used)]


class Timeline:
    """The events of one forward pass in one mode, and the measures derived from them."""

    def __init__(self, events: Iterable[Event], *, ghz: float, mode: str = "", detail: Iterable[Event] = ()) -> None:
        self.events: tuple[Event, ...] = tuple(events)
        self.detail: tuple[Event, ...] = tuple(detail)
        self.ghz = ghz
        self.mode = mode
        self._critical: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        """One line for a notebook: the mode, the events, the latency and the normalisation time exposed."""
        mode = f" {self.mode}" if self.mode else ""
        return (
            f"<Timeline{mode}: {len(self.events)} events, latency {self.us(self.makespan):.4g} µs "
            f"({self.makespan} cycles at {self.ghz:g} GHz), normalisation exposed {self.us(self.collective_exposed):.4g} µs>"
        )

    def us(self, cycles: float) -> float:
        """Cycles to microseconds."""
        return cycles / (self.ghz * 1e3)

    @property
    def makespan(self) -> int:
        return max((e.end for e in self.events), default=0)

    def busy(self, engine: str) -> int:
        """Cycles of work on the engine's resources, summed over them (each resource runs one event at a time)."""
        return sum(e.duration * sum(lane_of(r).split(".")[0] == engine for r in e.resources) for e in self.events)

    def resources(self, engine: str) -> set[str]:
        return {r for e in self.events for r in e.resources if lane_of(r).split(".")[0] == engine}

    def utilisation(self, engine: str) -> float:
        """Busy time / (latency x the engine's resources the pass used): the mean occupancy of its resources."""
        span, n = self.makespan, len(self.resources(engine))
        return self.busy(engine) / (span * n) if span and n else 0.0

    def critical_path(self) -> tuple[int, ...]:
        """Indices of the critical-path events, first to last."""
        if self._critical is None:
            path: list[int] = []
            if self.events:
                last = max(range(len(self.events)), key=lambda i: (self.events[i].end, i))
                i = last
                while i >= 0:
                    path.append(i)
                    i = self.events[i].pred
            self._critical = tuple(reversed(path))
        return self._critical

    def total(self, kind: str) -> int:
        return sum(e.duration for e in self.events if e.kind == kind)

    def exposed(self, kind: str) -> int:
        return sum(self.events[i].duration for i in self.critical_path() if self.events[i].kind == kind)

    @property
    def collective_total(self) -> int:
        return self.total("collective")

    @property
    def collective_exposed(self) -> int:
        return self.exposed("collective")

    @property
    def collective_hidden(self) -> int:
        return self.collective_total - self.collective_exposed

    def op_total(self, op: str, step: str | None = None) -> int:
        return sum(e.duration for e in self.events if e.op == op and (step is None or e.step == step))

    def layer_window(self, layer: int) -> tuple[int, int]:
        """(start, end) of one decoder block: its first event's start to its last event's end."""
        ev = [e for e in self.events if e.layer == layer]
        if not ev:
            raise ValueError(f"no events for layer {layer}")
        return min(e.start for e in ev), max(e.end for e in ev)

    def summary(self) -> dict[str, Any]:
        """Plain numbers, times in microseconds."""
        return {
            "latency_us": self.us(self.makespan),
            "collective_total_us": self.us(self.collective_total),
            "collective_exposed_us": self.us(self.collective_exposed),
            "collective_hidden_us": self.us(self.collective_hidden),
            "busy_us": {e: self.us(self.busy(e)) for e in ENGINES},
            "utilisation": {e: self.utilisation(e) for e in ENGINES},
            "events": len(self.events),
        }


def chrome_trace(timelines: Mapping[str, Timeline], *, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Chrome trace (the JSON Perfetto and chrome://tracing open): one process per mode, one thread per resource
    (and per detail unit), complete ("X") events with ts/dur in microseconds; critical-path events carry
    args.critical. An event on several resources (a collective crossing two network levels) is drawn on each."""
    out: list[dict[str, Any]] = []
    for pid, (mode, tl) in enumerate(timelines.items(), start=1):
        out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": mode}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        tids: dict[str, int] = {}
        for e in tl.events:
            for r in e.resources:
                tids.setdefault(r, 0)
        names = sorted(
            tids, key=lambda r: (int(r.rsplit("@", 1)[1].split(">")[0]), ENGINES.index(r[:4].rstrip(".")), r)
        )
        tids = {r: i + 1 for i, r in enumerate(names)}
        for e in tl.detail:
            tids.setdefault(f"{e.engine} {e.unit}", len(tids) + 1)
        for name, tid in tids.items():
            out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}})
            out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        critical = set(tl.critical_path())
        rows: list[tuple[str, int, Event]] = []
        for i, e in enumerate(tl.events):
            rows += [("aggregated", i, e) for _ in e.resources]
        for i, e in enumerate(tl.detail):
            rows.append(("detail", i, e))
        seen: dict[tuple[str, int], int] = {}
        for group, i, e in rows:
            k = seen[(group, i)] = seen.get((group, i), -1) + 1
            tid = tids[e.resources[k]] if group == "aggregated" else tids[f"{e.engine} {e.unit}"]
            out.append(
                {
                    "name": f"{e.op} {e.step}",
                    "cat": e.kind,
                    "ph": "X",
                    "ts": tl.us(e.start),
                    "dur": tl.us(e.duration),
                    "pid": pid,
                    "tid": tid,
                    "args": {
                        "layer": e.layer,
                        "stage": e.stage,
                        "op": e.op,
                        "step": e.step,
                        "flops": e.flops,
                        "bytes": e.bytes,
                        "start_cycles": e.start,
                        "end_cycles": e.end,
                        "normalisation": e.norm,
                        "critical": group == "aggregated" and i in critical,
                    },
                }
            )
    return {"traceEvents": out, "displayTimeUnit": "ns", "otherData": dict(metadata or {})}
