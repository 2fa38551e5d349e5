# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 5. Reading a timeline: the emulator, the Gantt, the Perfetto trace, the critical path
#
# **Question.** The emulator says the fused order is faster. How do we check *why*, event by event, and how do we
# know the emulated machine computes the same numbers as the plain forward pass?

# %%
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from normfuse_ref.hw import EmulatingExecutor, chrome_trace, get_hardware
from normfuse_ref.hw.study import Scenario, compare
from normfuse_ref.llama import forward, get_preset, prepare, random_params
from normfuse_ref.ops import NumpyExecutor

console = Console(width=100)

# %% [markdown]
# ## Numeric emulation computes the same numbers
#
# In numeric mode the emulator really computes every operation the way the machine splits it: matmuls tile by
# tile with an adder tree, reductions as per-slice partials, the softmax per slice of keys with online merges.
# Only the summation order differs from NumPy, so the logits agree to rounding.

# %%
cfg = get_preset("tiny")
params = random_params(cfg, seed=0)
ids = np.array([3, 1, 4, 1, 5, 9, 2, 6])
for mode in ("baseline", "fused"):
    w = prepare(params, cfg, mode)
    plain, _ = forward(w, cfg, ids, mode=mode, ex=NumpyExecutor())
    emu = EmulatingExecutor(get_hardware("toy"), numeric=True)
    emulated, _ = forward(w, cfg, ids, mode=mode, ex=emu)
    diff = np.abs(np.asarray(emulated) - plain).max()
    console.print(f"{mode:>8}: max |emulated - plain| = {diff:.2e} (float32), {len(emu.timeline(mode).events)} events")

# %% [markdown]
# ## Events are plain records
#
# Each event has an engine, a unit, a layer, the op name the forward pass issued, a sub-step, start and end in
# cycles, and the work done (flops, bytes). Here are the first events of block 0 in the fused order: note the
# `attn_qkv` matmul and the `attn_qkv.rms` collective starting together.

# %%
c = compare(Scenario(get_preset("llama2-7b"), "decode", context=2048, batch=1), get_hardware("corsair-like"))
fused = c.fused
table = Table("engine", "op", "step", "kind", "start", "end", title="llama2-7b decode, fused, block 0 (first 8 events)")
for e in [e for e in fused.events if e.layer == 0][:8]:
    table.add_row(e.engine, e.op, e.step, e.kind, str(e.start), str(e.end))
console.print(table)

# %% [markdown]
# ## The critical path, and exposed vs hidden collective time
#
# Each event records the predecessor whose end determined its start (an input, or the engine being busy). Walking
# back from the last event gives the critical path: it has no gaps and its durations add up to the latency.
# Collective time *on* that path is **exposed** (the machine waits for it); the rest is **hidden** (it overlapped
# other work).

# %%
for name, tl in (("baseline", c.baseline), ("fused", c.fused)):
    path = tl.critical_path()
    on_path = Counter(tl.events[i].kind for i in path)
    length = sum(tl.events[i].duration for i in path)
    console.print(
        f"{name:>8}: latency {tl.makespan} cycles = critical path {length} cycles; "
        f"collectives exposed {tl.collective_exposed}, hidden {tl.collective_hidden}; events on the path by kind {dict(on_path)}"
    )

# %% [markdown]
# ## A trace for Perfetto
#
# `chrome_trace` turns the timelines into Chrome trace JSON: one process per mode, one thread per engine, complete
# ("X") events in microseconds. Open the file at ui.perfetto.dev (or chrome://tracing). The CLI writes the same
# with `normfuse timeline --trace trace.json`.

# %%
trace = chrome_trace({"baseline": c.baseline, "fused": c.fused})
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "trace.json"
    path.write_text(json.dumps(trace))
    loaded = json.loads(path.read_text())
kinds = Counter(ev["ph"] for ev in loaded["traceEvents"])
console.print(f"trace events by phase type: {dict(kinds)} ('X' = complete events, 'M' = metadata)")

# %% [markdown]
# ## What to remember
#
# - The emulator executes the same forward pass as the plain path; in numeric mode it computes the same logits to
#   rounding, so the schedule it times is the computation we checked.
# - Latency = the critical path. A collective costs time only where it is *on* that path; the fused order moves
#   the normalisation collectives off it.
# - `normfuse timeline --trace FILE` gives the same events to Perfetto for a closer look.
#
# **Try this:** create `EmulatingExecutor(..., detail_layer=0)` and look at `timeline.detail`: the per-slice
# events of one layer. How many slices does one `attn_qkv` matmul of llama2-7b use?
