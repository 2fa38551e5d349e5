"""The scheduler's ordering rule (normfuse_ref.hw.schedule) on hand-made steps, worked out by hand."""

from __future__ import annotations

import pytest

from normfuse_ref.hw.schedule import Placed, Task, schedule


def places(tasks: list[Task]) -> list[tuple[int, int, int]]:
    return [(p.start, p.end, p.pred) for p in schedule(tasks)]


def test_disjoint_resources_overlap() -> None:
    """Two stages' DIMC units, or one stage's DIMC and SIMD: side by side from t = 0."""
    got = places([Task("a", ("DIMC@0",), 10), Task("b", ("DIMC@1",), 7), Task("c", ("SIMD@0",), 3)])
    assert got == [(0, 10, -1), (0, 7, -1), (0, 3, -1)]


def test_a_shared_resource_serialises_and_names_its_blocker() -> None:
    got = places([Task("a", ("NET.noc@0",), 10), Task("b", ("NET.noc@0", "NET.d2d@0"), 5)])
    assert got == [(0, 10, -1), (10, 15, 0)]  # b waits for a on the NoC; a is its cause


def test_a_step_waits_until_all_of_its_resources_are_free() -> None:
    got = places(
        [
            Task("noc", ("NET.noc@0",), 10),
            Task("d2d", ("NET.d2d@0",), 4),
            Task("both", ("NET.noc@0", "NET.d2d@0"), 3),
            Task("d2d again", ("NET.d2d@0",), 2),  # fits before `both` in the d2d gap [4, 10): back-filled
        ]
    )
    assert got == [(0, 10, -1), (0, 4, -1), (10, 13, 0), (4, 6, 1)]


def test_inputs_set_the_ready_time_and_the_first_input_wins_a_tie() -> None:
    got = places(
        [
            Task("x", ("DIMC@0",), 5),
            Task("y", ("SIMD@0",), 5),
            Task("z", ("SIMD@1",), 2, after=(1, 0)),  # both inputs end at 5: the first listed (y) is the cause
        ]
    )
    assert got[2] == (5, 7, 1)


def test_an_input_and_a_free_resource_at_the_same_cycle_the_input_is_the_cause() -> None:
    got = places([Task("busy", ("SIMD@0",), 6), Task("input", ("DIMC@0",), 6), Task("next", ("SIMD@0",), 1, (1,))])
    assert got[2] == (6, 7, 1)


def test_back_filling_never_moves_a_placed_step() -> None:
    """A step issued later but ready earlier runs in an idle gap before steps issued earlier."""
    got = places(
        [
            Task("long input", ("DIMC@0",), 20),
            Task("after it", ("NET.noc@0",), 5, after=(0,)),  # NoC busy [20, 25)
            Task("early", ("NET.noc@0",), 8),  # ready at 0, fits in [0, 20)
            Task("too long", ("NET.noc@0",), 30),  # does not fit before 20: after 25
        ]
    )
    assert got == [(0, 20, -1), (20, 25, 0), (0, 8, -1), (25, 55, 1)]


def test_zero_cycle_steps_take_no_time_and_pass_their_cause_on() -> None:
    got = schedule([Task("a", ("DIMC@0",), 4), Task("free", ("SIMD@0",), 0, (0,)), Task("b", ("SIMD@0",), 2, (1,))])
    assert got[1] == Placed("free", 4, 4, 0)
    assert (got[2].start, got[2].pred) == (4, 1)


def test_determinism_and_a_gap_free_critical_path() -> None:
    tasks = [
        Task("rms", ("SIMD@0",), 3),
        Task("allreduce", ("NET.noc@0", "NET.d2d@0"), 9, (0,)),
        Task("matmul", ("DIMC@0",), 7),
        Task("scale", ("SIMD@0",), 2, (1, 2)),
        Task("next", ("NET.noc@0",), 4, (3,)),
    ]
    a, b = schedule(tasks), schedule(tasks)
    assert a == b
    # walk back from the last end: every step starts exactly when its cause ends, down to t = 0
    i = max(range(len(a)), key=lambda k: (a[k].end, k))
    total = 0
    while i >= 0:
        total += a[i].end - a[i].start
        if a[i].pred >= 0:
            assert a[a[i].pred].end == a[i].start
        else:
            assert a[i].start == 0
        i = a[i].pred
    assert total == max(p.end for p in a)


def test_an_input_issued_later_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs task 1, which is not issued before it"):
        schedule([Task("a", ("DIMC@0",), 1, after=(1,)), Task("b", ("DIMC@0",), 1)])


def test_a_step_that_exactly_fills_a_gap_is_back_filled_into_it() -> None:
    """Rule 3: the resource must be idle for [t, t + cycles), so a gap of exactly `cycles` takes the step. a holds R
    for [0, 2); b, after q, holds it for [5, 7); c (3 cycles, after a) fits [2, 5) exactly, caused by a."""
    tasks = [
        Task("a", ("R",), 2),
        Task("q", ("Q",), 5),
        Task("b", ("R",), 2, after=(1,)),
        Task("c", ("R",), 3, after=(0,)),
    ]
    assert places(tasks) == [(0, 2, -1), (0, 5, -1), (5, 7, 1), (2, 5, 0)]
