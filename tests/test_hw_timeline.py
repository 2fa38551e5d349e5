"""Timeline measures on hand-made events, detail events, and the Chrome trace."""

from __future__ import annotations

import json

from normfuse_ref.hw import EmulatingExecutor, Event, Timeline, chrome_trace, get_hardware
from normfuse_ref.hw.study import Scenario, compare, map_scenario
from normfuse_ref.models.llama import PRESETS as MODELS
from normfuse_ref.models.llama import forward, prepare, random_params


def ev(engine: str, op: str, kind: str, start: int, end: int, pred: int, res: tuple[str, ...]) -> Event:
    return Event(engine, "all", 0, op, "s", kind, start, end, 0, 0, pred, 0, res, kind == "collective")


def test_exposed_and_hidden_by_hand() -> None:
    # 0: matmul 0-10 on DIMC; 1: a statistic 0-4 on the NoC beside it; 2: scale 10-12 after both (pred: the
    # matmul); 3: a second statistic 12-15 on the path, over two levels; 4: partial sums 15-20.
    tl = Timeline(
        [
            ev("DIMC", "mm", "matmul", 0, 10, -1, ("DIMC@0",)),
            ev("NET", "r", "collective", 0, 4, -1, ("NET.noc@0",)),
            ev("SIMD", "scale", "vector", 10, 12, 0, ("SIMD@0",)),
            ev("NET", "r2", "collective", 12, 15, 2, ("NET.noc@0", "NET.d2d@0")),
            ev("NET", "mm", "psum", 15, 20, 3, ("NET.noc@0",)),
        ],
        ghz=1.0,
    )
    assert tl.makespan == 20
    assert tl.critical_path() == (0, 2, 3, 4)
    assert (tl.collective_total, tl.collective_exposed, tl.collective_hidden) == (7, 3, 4)
    assert tl.exposed("psum") == 5 and tl.total("matmul") == 10
    assert tl.busy("DIMC") == 10 and tl.busy("NET") == 4 + 2 * 3 + 5  # a two-level step counts on both
    assert tl.utilisation("NET") == 15 / (20 * 2)  # two network resources used
    assert tl.us(1144) == 1.144
    assert tl.layer_window(0) == (0, 20)


def test_detail_events_of_one_layer() -> None:
    cfg, hw = MODELS["tiny"], get_hardware("toy")
    mp = map_scenario(Scenario(cfg, "prefill", 3, 1), hw)
    w = prepare(random_params(cfg), cfg, "fused")
    ex = EmulatingExecutor(hw, mp, numeric=False, detail_layer=1)
    forward(w, cfg, [1, 2, 3], mode="fused", ex=ex)
    tl = ex.timeline("fused")
    assert tl.detail and all(e.layer == 1 for e in tl.detail)
    units = {e.unit for e in tl.detail}
    assert "slice 0" in units and "noc" in units
    for d in tl.detail:  # each detail event lies within an aggregated event of the same op and step
        assert any(a.op == d.op and a.step == d.step and a.start <= d.start and d.end <= a.end for a in tl.events)


def test_chrome_trace_is_valid_and_complete() -> None:
    c = compare(Scenario(MODELS["tiny"], "decode", 5, 1), get_hardware("toy"), detail_layer=0)
    trace = json.loads(json.dumps(chrome_trace({"baseline": c.baseline, "fused": c.fused}, metadata={"m": 1})))
    events = trace["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    meta = [e for e in events if e["ph"] == "M"]
    n = sum(len(e.resources) for t in (c.baseline, c.fused) for e in t.events)
    assert len(complete) == n + sum(len(t.detail) for t in (c.baseline, c.fused))
    for e in complete:
        assert {"name", "ph", "ts", "dur", "pid", "tid", "cat", "args"} <= set(e)
        assert e["dur"] > 0 and e["ts"] >= 0 and e["pid"] in (1, 2)
    names = {(e["pid"], e["args"]["name"]) for e in meta if e["name"] == "process_name"}
    assert names == {(1, "baseline"), (2, "fused")}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert {"DIMC@0", "SIMD@0", "NET.noc@0"} <= {threads[k] for k in threads if k[0] == 1}
    assert all((e["pid"], e["tid"]) in threads for e in complete)
    on_path = {(e["args"]["start_cycles"], e["name"]) for e in complete if e["pid"] == 1 and e["args"]["critical"]}
    assert len(on_path) == len(c.baseline.critical_path())
    assert trace["otherData"] == {"m": 1}


def test_the_critical_path_ends_at_the_last_issued_of_the_events_ending_last() -> None:
    """Ties at the makespan: the event issued last ends the path (the module's rule), so a collective ending with
    the matmul it ran beside is counted exposed."""
    tl = Timeline(
        [
            ev("DIMC", "mm", "matmul", 0, 10, -1, ("DIMC@0",)),
            ev("NET", "r", "collective", 2, 10, -1, ("NET.noc@0",)),
        ],
        ghz=1.0,
    )
    assert tl.critical_path() == (1,) and tl.collective_exposed == 8


def test_the_emulator_takes_the_first_of_inputs_ready_at_the_same_cycle_as_the_cause() -> None:
    """Rule 4 of the scheduler, in the emulator's own reading of its inputs: among inputs ready at the same cycle the
    first argument is the cause (the `pred` the critical path follows)."""
    from normfuse_ref.hw.emulator import Value, dummy

    mp = map_scenario(Scenario(MODELS["tiny"], "decode", 4, 1), get_hardware("toy"))
    ex = EmulatingExecutor(get_hardware("toy"), mp, numeric=False)
    place = mp.default_place(0, 4)
    x, y = (Value(dummy((4,)), 10, src, place, ex, 0) for src in (3, 7))
    early = Value(dummy((4,)), 5, 1, place, ex, 0)
    assert ex._ready((x, y)) == (10, 3) and ex._ready((y, x)) == (10, 7)
    assert ex._ready((early, y)) == (10, 7)  # a later input is the cause, wherever it is
