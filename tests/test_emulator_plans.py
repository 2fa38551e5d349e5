"""Plan keys: the emulator memoises each primitive's plan per mapping, shared by every pass on it, so a key must
hold everything its plan depends on. Each test builds two calls that differ in one such input only, times each on a
cold plan cache, then both on one cache in either order: each must time exactly as it did cold (and the two must
time differently, or the test would not be testing anything). A layout keeps `replicated` (which decides a move's
plan) when every slice still holds all of its output.

The calls are built by hand (Values placed directly), on corsair-like's default mapping: one card, 256 slices a
chiplet, so slices 0 and 256 sit on two chiplets and slices 0-511 fill both."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from normfuse_ref.hw import EmulatingExecutor, Event, Value, dummy, emulator, get_hardware
from normfuse_ref.hw.layout import Place
from normfuse_ref.ops import SoftmaxTiles

HW = get_hardware("corsair-like")
SPREAD = Place(0, 512)  # a row spread over every slice of two chiplets: where the op runs
STAT = Place(0, 2, 256)  # one slice on each of those chiplets: where a row statistic lives

Call = Callable[[EmulatingExecutor], object]


def value(ex: EmulatingExecutor, shape: tuple[int, ...], place: Place, *, norm: bool, replicated: bool) -> Value:
    """A value of `ex`, ready at cycle 0, on `place` (fields by position, as the executor builds them)."""
    return Value(dummy(shape), 0, -1, place, ex, 0, None, norm, False, 0, replicated)


def timed(calls: list[Call], *, cold: bool) -> list[tuple[Event, ...]]:
    """The events of each call, each on a new executor on one mapping: on one plan cache, or each on a cold one."""
    out = []
    emulator._PLANS.clear()
    for call in calls:
        if cold:
            emulator._PLANS.clear()
        ex = EmulatingExecutor(HW, numeric=False)
        call(ex)
        out.append(tuple(ex.timeline().events))
    return out


def check_each_times_as_cold(a: Call, b: Call) -> None:
    cold_a, cold_b = timed([a], cold=True)[0], timed([b], cold=True)[0]
    assert cold_a != cold_b, "the two calls time alike: they cannot show a missing key"
    assert timed([a, b], cold=False) == [cold_a, cold_b]
    assert timed([b, a], cold=False) == [cold_b, cold_a]


def scale_by_statistic(replicated: bool) -> Call:
    """x * s with x spread over SPREAD and a statistic s on STAT: s moves to SPREAD first (`_move_plan`)."""

    def call(ex: EmulatingExecutor) -> object:
        x = value(ex, (4, 4096), SPREAD, norm=False, replicated=False)
        s = value(ex, (4, 1), STAT, norm=True, replicated=replicated)
        return ex.elementwise(np.multiply, x, s, op="scale")

    return call


def test_a_move_of_a_replicated_statistic_has_its_own_plan() -> None:
    """A replicated statistic (an all-reduce's result: both slices hold it all) reaches SPREAD inside each chiplet;
    one that is not (say a softmax state) must also cross between the chiplets. Same places, shapes and norm flag:
    only `replicated` tells the two moves apart."""
    check_each_times_as_cold(scale_by_statistic(True), scale_by_statistic(False))


def merge_states(mine: bool) -> Call:
    """The online-softmax merge of 8 states a row, given as this executor's values on the place the executor
    would give states passed in as plain arrays (one slice), or as plain arrays."""

    def call(ex: EmulatingExecutor) -> object:
        shapes = ((4, 8, 1), (4, 8, 1), (4, 8, 64))  # m, l, o
        if not mine:
            return ex.softmax_merge(SoftmaxTiles(*map(dummy, shapes)), op="softmax.merge")
        place = ex.mapping.default_place(0, 1)
        m, l, o = (value(ex, shape, place, norm=i < 2, replicated=False) for i, shape in enumerate(shapes))
        return ex.softmax_merge(SoftmaxTiles(m, l, o), op="softmax.merge")

    return call


def test_a_merge_of_this_executors_states_has_its_own_plan() -> None:
    """States of this executor are merged over the key slices of their place (here one slice: nothing crosses the
    network); states passed in are taken to lie on as many slices as there are states (8: a NoC reduction). The
    place the executor gives the latter is the former's place: only whose states they are tells the two apart."""
    check_each_times_as_cold(merge_states(True), merge_states(False))


@pytest.mark.parametrize(
    "reshape", [lambda a: a.reshape(2, 2, 1), lambda a: a[None], lambda a: a[::-1]], ids=["reshape", "axis", "flip"]
)
def test_a_layout_of_a_replicated_value_moves_as_the_value_does(reshape: Callable[[np.ndarray], np.ndarray]) -> None:
    """A layout is addressing: nothing moves, so each slice of a reduction's result still holds all of it after a
    reshape, and moving the layout costs what moving the result does (on cold plans)."""

    def move(through_layout: bool) -> Call:
        def call(ex: EmulatingExecutor) -> object:
            s = ex.reduce(value(ex, (4, 4096), STAT, norm=False, replicated=False), "sum", op="sum")
            assert s.place == STAT and s.replicated
            if through_layout:
                s = ex.layout(reshape, s, op="reshape")
            x = value(ex, (*s.shape[:-1], 4096), SPREAD, norm=False, replicated=False)
            return ex.elementwise(np.multiply, x, s, op="scale")

        return call

    direct, laid_out = timed([move(False), move(True)], cold=True)
    moves = [[e for e in events if e.op == "scale" and e.engine == "NET"] for events in (direct, laid_out)]
    assert len(moves[0]) == 1
    assert [(e.resources, e.duration) for e in moves[1]] == [(e.resources, e.duration) for e in moves[0]]


def test_a_layout_mixing_in_a_value_that_is_not_replicated_is_not_replicated() -> None:
    """Only when every part is replicated on the output's place does every slice of it hold all of the result."""
    ex = EmulatingExecutor(HW, numeric=False)
    s = value(ex, (4, 1), STAT, norm=True, replicated=True)
    t = value(ex, (4, 1), STAT, norm=True, replicated=False)
    elsewhere = value(ex, (4, 1), Place(0, 2, 128), norm=True, replicated=True)  # both on the first chiplet

    def pair(b: object) -> bool:
        return ex.layout(lambda *ab: np.concatenate(ab, axis=-1), s, b, op="pair").replicated

    assert pair(s)
    assert not pair(t)
    assert not pair(elsewhere)
    assert not pair(np.zeros((4, 1)))  # a plain array: where it lives is not known
