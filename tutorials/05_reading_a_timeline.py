# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 5. Reading a timeline: the mapping, the events, the critical path, the counterfactual, a Perfetto trace
#
# **Question.** The emulator says the fused order is faster. How do we check *why*, event by event, where each
# piece of work ran, and how do we know the emulated machine computes the same numbers as the plain forward pass?

# %%
import importlib.util
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from normfuse_ref.hw import EmulatingExecutor, chrome_trace, get_hardware
from normfuse_ref.hw.study import Scenario, compare, map_scenario
from normfuse_ref.models.llama import forward, get_preset, prepare, random_params
from normfuse_ref.ops import NumpyExecutor

console = Console(width=100)

# %% [markdown]
# ## Where everything lives
#
# The mapper decides where every weight and every KV-cache block lives, under the SRAM capacity of each slice,
# and picks the fastest of the mappings that fit. For llama2-7b decoding at context 2048 on the corsair-like
# machine:

# %%
corsair = get_hardware("corsair-like")
sc = Scenario(get_preset("llama2-7b"), "decode", context=2048, batch=1)
mapping = map_scenario(sc, corsair).to_dict()
console.print(
    f"{mapping['cards']} cards in {mapping['stages']} stages of {mapping['tp_cards']} card; the mapper compared "
    f"{mapping['candidates_compared']} mappings"
)
table = Table("matrix", "n x m", "slices", "K split (gk)", "column groups (gn)", "tiles a slice", title="grids")
for name, g in mapping["matrices"].items():
    table.add_row(name, f"{g['n']} x {g['m']}", str(g["slices"]), str(g["gk"]), str(g["gn"]), str(g["tiles_per_slice"]))
console.print(table)
first = mapping["stage_list"][0]
console.print(
    f"a slice of stage 0 holds {first['weight_bytes_per_slice']} B of weights, {first['kv_sram_bytes_per_slice']} B "
    f"of KV cache and {first['activation_bytes_per_slice']} B of activation buffers (of "
    f"{first['sram_bytes_per_slice']} B); blocks {first['layers'][0]}-{first['layers'][1]}"
)

# %% [markdown]
# ## Numeric emulation computes the same numbers
#
# In numeric mode the emulator really computes every operation the way the machine splits it: matmuls tile by
# tile with an adder tree, reductions as per-slice partials, the softmax per slice of keys with online merges.
# Only the summation order differs from NumPy, so the logits agree to rounding.

# %%
cfg, toy = get_preset("tiny"), get_hardware("toy")
params = random_params(cfg, seed=0)
ids = np.array([3, 1, 4, 1, 5, 9, 2, 6])
tiny_map = map_scenario(Scenario(cfg, "prefill", len(ids), 1), toy)
for mode in ("baseline", "fused"):
    w = prepare(params, cfg, mode)
    plain, _ = forward(w, cfg, ids, mode=mode, ex=NumpyExecutor())
    emu = EmulatingExecutor(toy, tiny_map, numeric=True)
    emulated, _ = forward(w, cfg, ids, mode=mode, ex=emu)
    diff = np.abs(np.asarray(emulated) - plain).max()
    console.print(f"{mode:>8}: max |emulated - plain| = {diff:.2e} (float32), {len(emu.timeline(mode).events)} events")

# %% [markdown]
# ## Events are plain records
#
# Each event has an engine, the resources it occupied (a stage's DIMC or SIMD units, or the highest network level
# it crossed), a layer, the op name the forward pass issued, a sub-step, start and end in cycles, its kind and
# whether it is a normalisation-statistic step. Here are the first events of block 1 in the fused order: the
# `attn_qkv` matmul's input delivery and the `attn_qkv.rms` statistic start side by side.

# %%
c = compare(sc, corsair)
console.print(repr(c))  # a Comparison runs its passes on first use; its repr is the one-line answer
table = Table(
    "order", "latency µs", "without normalisation µs", "normalisation share", "fused saves", title="c.to_records()"
)
for r in c.to_records():
    table.add_row(
        r["order"],
        f"{r['latency_us']:.1f}",
        f"{r['latency_without_normalisation_us']:.1f}",
        f"{r['normalisation_share']:.1%}",
        f"{r['saved_by_fused']:.1%}",
    )
console.print(table)
table = Table("resource", "op", "step", "kind", "norm", "start", "end", title="llama2-7b decode, fused, block 1")
for e in [e for e in c.fused.events if e.layer == 1][:8]:
    table.add_row(",".join(e.resources), e.op, e.step, e.kind, "yes" if e.norm else "", str(e.start), str(e.end))
console.print(table)

# %% [markdown]
# ## The critical path, and two views of what normalisation costs
#
# Each event records the predecessor whose end determined its start (an input, or a resource being busy).
# Walking back from the last event gives the critical path: it has no gaps and its durations add up to the
# latency. Normalisation time *on* that path is **exposed**. The other view is the counterfactual: the same pass
# with every normalisation step made free; the difference in latency is what normalisation costs.

# %%
for name, tl, free in (("baseline", c.baseline, c.baseline_free), ("fused", c.fused, c.fused_free)):
    path = tl.critical_path()
    on_path = Counter(tl.events[i].kind for i in path)
    length = sum(tl.events[i].duration for i in path)
    assert length == tl.makespan
    console.print(
        f"{name:>8}: latency {tl.makespan} cycles = critical path {length}; normalisation exposed "
        f"{tl.collective_exposed}, counterfactual cost {tl.makespan - free.makespan}; on the path by kind "
        f"{dict(on_path)}"
    )
merge = c.fused.op_total("softmax.merge", "merge norm")
console.print(f"the fused order's softmax merge: {merge} cycles of normalisation overhead stay on the path")

# %% [markdown]
# ## A trace for Perfetto
#
# `chrome_trace` turns the timelines into Chrome trace JSON: one process per order, one thread per resource,
# complete ("X") events in microseconds. Open the file at ui.perfetto.dev (or chrome://tracing). The CLI writes
# the same with `normfuse timeline --trace trace.json`.

# %%
trace = chrome_trace({"baseline": c.baseline, "fused": c.fused})
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "trace.json"
    path.write_text(json.dumps(trace))
    loaded = json.loads(path.read_text())
kinds = Counter(ev["ph"] for ev in loaded["traceEvents"])
threads = sorted({ev["args"]["name"] for ev in loaded["traceEvents"] if ev["name"] == "thread_name"})
console.print(f"trace events by phase type: {dict(kinds)} ('X' = complete events, 'M' = metadata)")
console.print(f"threads: {', '.join(threads[:8])}, ...")

# %% [markdown]
# ## A figure of one block
#
# With matplotlib installed (`pip install 'normfuse[plot]'`), `c.plot(layer)` draws the Gantt chart of one block as
# a figure, baseline above fused, the critical path beneath each (red where a statistic is exposed); a notebook
# shows it, `save_figure` writes it (.png, .svg or .pdf). The CLI draws the same with `normfuse timeline --figure
# block.svg`.

# %%
if importlib.util.find_spec("matplotlib") is None:
    console.print("matplotlib is not installed: pip install 'normfuse[plot]' to draw the figure")
else:
    from normfuse_ref.plot import save_figure

    fig = c.plot(layer=1)
    with tempfile.TemporaryDirectory() as tmp:
        save_figure(fig, Path(tmp) / "block1.svg")
        console.print(
            f"block 1 as a figure: {len(fig.axes)} panels, {(Path(tmp) / 'block1.svg').stat().st_size} bytes of SVG"
        )

# %% [markdown]
# ## What to remember
#
# - The mapping says where everything lives and is part of the answer: `normfuse timeline --json` prints it.
# - The emulator executes the same forward pass as the plain path; in numeric mode it computes the same logits to
#   rounding, so the schedule it times is the computation we checked.
# - Latency = the critical path. What normalisation costs is a counterfactual (the pass with it made free); the
#   exposed time on the path is a second view. The fused order moves the RMSNorm statistics off the path; the
#   softmax merge's overhead stays on it by construction.
#
# **Try this:** pass `detail_layer=1` to `compare` and look at `c.fused.detail`: the per-slice and per-level
# events of one block. How many slices does one `attn_qkv` matmul of llama2-7b keep busy?
