"""The scheduler: places timed steps on named resources, in issue order, by one written rule.

Resources are names: one per engine and stage ("DIMC@0", "SIMD@0") and one per network level and stage
("NET.noc@0", "NET.d2d@0"), plus the links between stages ("NET.pcie@1>2"). A step occupies every resource it
names for its whole duration; steps on disjoint resources run side by side (two stages, or the DIMC and the SIMD
units of one stage), steps sharing a resource never overlap. The executor gives a network step the highest level
it crosses, whose links are the scarcest: two steps crossing the bridge take turns, while partial sums inside
the chiplets run beside an all-reduce that crosses the bridge. (Contention below that top level is not
modelled.)

ORDERING RULE (list scheduling in issue order):
  1. Steps are placed one at a time, in the order they are issued, and never moved afterwards.
  2. A step is ready at the latest end among the steps it needs (its inputs; for the later steps of a primitive,
     the step before it).
  3. It starts at the earliest cycle t >= ready at which every resource it names is idle for [t, t + cycles). It
     may fill an idle gap left before steps issued earlier (back-filling).
  4. Ties are broken deterministically: among inputs ending at the same cycle, the first is the cause; when an
     input and a resource become free at the same cycle, the input is the cause; when several resources push the
     start, the one whose busy block ends exactly at the start is the cause. The cause is the step's `pred`, which
     the critical path follows back.
The same steps in the same order always give the same placement. Zero-cycle steps are not placed.

`Scheduler` is what the executor uses; `schedule` runs the rule over hand-made `Task` records (for tests and for
reading the rule at work).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Placed", "Scheduler", "Task", "schedule"]


#: A resource's busy time: (starts, ends, last) lists of disjoint blocks sorted by time, `last` the step that ends
#: each block.
Blocks = tuple[list[int], list[int], list[int]]


def _idle() -> Blocks:
    return [], [], []


def _fit(blocks: Blocks, t: int, cycles: int) -> tuple[int, int]:
    """Earliest start >= t with the resource idle for `cycles`, and the step ending the block that pushed it there
    (-2: not pushed)."""
    starts, ends, lasts = blocks
    if not ends or t >= ends[-1]:
        return t, -2
    pos = bisect.bisect_right(ends, t)  # the first busy block ending after t
    blocker = -2
    while pos < len(starts) and t + cycles > starts[pos]:
        if ends[pos] > t:
            t, blocker = ends[pos], lasts[pos]
        pos += 1
    return t, blocker


def _occupy(blocks: Blocks, start: int, end: int, index: int) -> None:
    """Insert [start, end) as a busy block, merged with a neighbour it touches."""
    starts, ends, lasts = blocks
    if not ends or start >= ends[-1]:  # the common case: after everything so far
        if ends and ends[-1] == start:
            ends[-1], lasts[-1] = end, index
        else:
            starts.append(start)
            ends.append(end)
            lasts.append(index)
        return
    pos = bisect.bisect_right(starts, start)
    if pos > 0 and ends[pos - 1] == start:
        pos -= 1
        ends[pos], lasts[pos] = end, index
    else:
        starts.insert(pos, start)
        ends.insert(pos, end)
        lasts.insert(pos, index)
    if pos + 1 < len(starts) and starts[pos + 1] == ends[pos]:
        ends[pos], lasts[pos] = ends[pos + 1], lasts[pos + 1]
        del starts[pos + 1], ends[pos + 1], lasts[pos + 1]


class Scheduler:
    """The busy time of every resource (`Blocks`), and the rule that places a step on them."""

    def __init__(self) -> None:
        self._busy: defaultdict[str, Blocks] = defaultdict(_idle)

    def place(self, resources: Sequence[str], cycles: int, ready: int, cause: int, index: int) -> tuple[int, int]:
        """Place step number `index` (rule 3-4); returns (start, pred). `cause` is the input that sets `ready`."""
        if len(resources) == 1:  # most steps: the resource's earliest fit is the start
            blocks = self._busy[resources[0]]
            t, blocker = _fit(blocks, ready, cycles)
            _occupy(blocks, t, t + cycles, index)
            return (t, blocker) if t > ready else (t, cause)
        busy = [self._busy[r] for r in resources]
        t, pred = ready, cause
        moved = True
        while moved:  # the start only grows, so this ends
            moved = False
            for blocks in busy:
                s, blocker = _fit(blocks, t, cycles)
                if s > t:
                    t, pred, moved = s, blocker, True
        for blocks in busy:
            _occupy(blocks, t, t + cycles, index)
        return t, pred

    def busy(self, resource: str) -> int:
        """Cycles the resource is occupied."""
        starts, ends, _ = self._busy.get(resource) or _idle()
        return sum(e - s for s, e in zip(starts, ends, strict=True))


@dataclass(frozen=True)
class Task:
    """A hand-made step: its resources, its length, and the earlier tasks (by index) whose ends it needs."""

    name: str
    resources: tuple[str, ...]
    cycles: int
    after: tuple[int, ...] = ()


@dataclass(frozen=True)
class Placed:
    """Where the rule put a task: start and end in cycles, and its cause (-1: none; started at its ready time 0)."""

    name: str
    start: int
    end: int
    pred: int


def schedule(tasks: Sequence[Task]) -> list[Placed]:
    """Run the ordering rule over tasks in the order given. A zero-cycle task takes no resource time: it ends when
    it is ready, and its cause is the input that made it ready."""
    sched = Scheduler()
    out: list[Placed] = []
    for i, task in enumerate(tasks):
        ready, cause = 0, -1
        for j in task.after:
            if not 0 <= j < i:
                raise ValueError(f"task {task.name!r} needs task {j}, which is not issued before it")
            if out[j].end > ready:  # strictly later: the first input wins a tie
                ready, cause = out[j].end, j
        if task.cycles <= 0:
            out.append(Placed(task.name, ready, ready, cause))
            continue
        start, pred = sched.place(task.resources, task.cycles, ready, cause, i)
        out.append(Placed(task.name, start, start + task.cycles, pred))
    return out
