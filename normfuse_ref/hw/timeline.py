"""Timed events of one emulated forward pass, and what they tell: makespan, busy time, critical path, exposure.

An `Event` is one piece of work on one engine: DIMC (matrix tiles), SIMD (vector units) or NET (the
network-on-chip). Times are integer clock cycles from the start of the pass. Aggregated events cover every slice
that takes part (unit "all"); for one chosen layer the emulator also records *detail* events, one per slice or per
network step (unit "slice 3", "reduce step 2", ...), which are for display only.

Kinds:
    matmul      DIMC work: a matmul, or the local e @ V of fused softmax
    psum        partial sums of a matmul whose K tiles span several slices, added over the network
    vector      SIMD work that needs no communication: elementwise ops, the local part of fused softmax
    collective  every sub-event of a normalisation statistic: a `reduce` (SIMD partials, NET all-reduce, SIMD
                finish) or the online-softmax `softmax_merge` (NET)

Critical path: start from the event that ends last (ties: the one issued last) and follow, event by event, the
predecessor that determined its start (`Event.pred`: the producer of its latest input, or the previous event on
its engine when the engine was the later of the two). Because every event starts exactly when its predecessor
ends, the path covers [0, makespan] without gaps.

Collective time:
    total    = sum of the durations of all collective events
    exposed  = sum of the durations of the collective events on the critical path (time the pass waits for
               collectives: removing them would shorten it by that much, other things equal)
    hidden   = total - exposed (collective time overlapped by work on the critical path)
The baseline share of collectives is exposed(baseline) / latency(baseline).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ENGINES", "KINDS", "Event", "Timeline", "chrome_trace"]

ENGINES: tuple[str, ...] = ("DIMC", "SIMD", "NET")
KINDS: tuple[str, ...] = ("matmul", "psum", "vector", "collective")


@dataclass(frozen=True, slots=True)
class Event:
    """One piece of work. start/end in cycles; flops and bytes are the work it does and the bytes it moves."""

    engine: str  # DIMC, SIMD or NET
    unit: str  # "all" (aggregated over the slices taking part) or a slice / network step in detail events
    layer: int | None  # decoder block, None outside the blocks (embedding, final norm, lm_head)
    op: str  # the op name forward.py issued (e.g. "attn_qkv", "attn_qkv.rms", "softmax.merge")
    step: str  # the sub-step of the op on this engine (e.g. "tiles", "partials", "all-reduce", "rsqrt")
    kind: str  # one of KINDS
    start: int  # cycles
    end: int  # cycles
    flops: int  # arithmetic operations (a MAC counts 2)
    bytes: int  # bytes read from SRAM (DIMC), moved on links (NET) or touched (SIMD)
    pred: int = -1  # index of the event whose end determined the start (-1: none, started at t = 0)

    @property
    def duration(self) -> int:
        return self.end - self.start


class Timeline:
    """The events of one forward pass in one mode, and the measures derived from them."""

    def __init__(self, events: Iterable[Event], *, ghz: float, mode: str = "", detail: Iterable[Event] = ()) -> None:
        self.events: tuple[Event, ...] = tuple(events)
        self.detail: tuple[Event, ...] = tuple(detail)
        self.ghz = ghz
        self.mode = mode
        self._critical: tuple[int, ...] | None = None

    def us(self, cycles: float) -> float:
        """Cycles to microseconds."""
        return cycles / (self.ghz * 1e3)

    @property
    def makespan(self) -> int:
        return max((e.end for e in self.events), default=0)

    def busy(self, engine: str) -> int:
        """Cycles the engine works (its events never overlap: one engine runs one event at a time)."""
        return sum(e.duration for e in self.events if e.engine == engine)

    def utilisation(self, engine: str) -> float:
        span = self.makespan
        return self.busy(engine) / span if span else 0.0

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

    @property
    def collective_total(self) -> int:
        return sum(e.duration for e in self.events if e.kind == "collective")

    @property
    def collective_exposed(self) -> int:
        return sum(self.events[i].duration for i in self.critical_path() if self.events[i].kind == "collective")

    @property
    def collective_hidden(self) -> int:
        return self.collective_total - self.collective_exposed

    def layer_window(self, layer: int) -> tuple[int, int]:
        """(start, end) of one decoder block: from the end of everything issued before it to its last event."""
        idx = [i for i, e in enumerate(self.events) if e.layer == layer]
        if not idx:
            raise ValueError(f"no events for layer {layer}")
        first = idx[0]
        start = max((e.end for e in self.events[:first]), default=0)
        return start, max(self.events[i].end for i in idx)

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
    """A Chrome trace (the JSON Perfetto and chrome://tracing open): one process per mode, one thread per engine
    and unit, complete ("X") events with ts/dur in microseconds; critical-path events carry args.critical."""
    out: list[dict[str, Any]] = []
    for pid, (mode, tl) in enumerate(timelines.items(), start=1):
        out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": mode}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        tids: dict[tuple[str, str], int] = {}
        for engine in ENGINES:  # the aggregated lanes first, in a fixed order
            tids[(engine, "all")] = len(tids) + 1
        for e in tl.detail:
            tids.setdefault((e.engine, e.unit), len(tids) + 1)
        for (engine, unit), tid in tids.items():
            name = engine if unit == "all" else f"{engine} {unit}"
            out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}})
            out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        critical = set(tl.critical_path())
        for group, events in (("aggregated", tl.events), ("detail", tl.detail)):
            for i, e in enumerate(events):
                out.append(
                    {
                        "name": f"{e.op} {e.step}",
                        "cat": e.kind,
                        "ph": "X",
                        "ts": tl.us(e.start),
                        "dur": tl.us(e.duration),
                        "pid": pid,
                        "tid": tids[(e.engine, e.unit)],
                        "args": {
                            "layer": e.layer,
                            "op": e.op,
                            "step": e.step,
                            "flops": e.flops,
                            "bytes": e.bytes,
                            "start_cycles": e.start,
                            "end_cycles": e.end,
                            "critical": group == "aggregated" and i in critical,
                        },
                    }
                )
    return {"traceEvents": out, "displayTimeUnit": "ns", "otherData": dict(metadata or {})}
