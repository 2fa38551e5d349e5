# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 1. Why normalisation needs a collective, and what it costs
#
# **Question.** On an accelerator whose vectors are spread over many slices, why is an RMSNorm expensive even
# though it does almost no arithmetic? And what does moving its scale after the matmul buy?
#
# A slice holds a chunk of the activation row x. To compute s = 1/sqrt(mean(x^2) + eps), every slice sums the
# squares of its chunk (cheap, local), and then the partial sums must be combined across *all* slices over the
# network-on-chip and the result broadcast back: a **collective**. In the textbook order the matmul that follows
# needs the normalised x, so it waits for that collective. In the fused order the matmul runs on raw x with the
# gain folded into its weight, and s is applied to its output afterwards.

# %%
import numpy as np
from rich.console import Console
from rich.table import Table

from normfuse_ref.cli.gantt import block_gantt
from normfuse_ref.hw import get_hardware
from normfuse_ref.hw.study import Scenario, compare
from normfuse_ref.llama import get_preset

console = Console(width=100)

# %% [markdown]
# ## A toy machine
#
# The `toy` machine has 16 slices, 8x8 DIMC tiles, 8 SIMD lanes and a ring network. Its parameters are small so
# that one decoder block of the `tiny` model (width 64, so 8 slices per vector) is spread over several slices.

# %%
hw = get_hardware("toy")
table = Table("part", "setting", title="the toy machine")
table.add_row("slices", str(hw.chip.slices_per_chiplet * hw.chip.chiplets_per_card))
table.add_row("DIMC tile", f"{hw.dimc.tile_rows} x {hw.dimc.tile_cols}, {hw.dimc.macs_per_cycle} MACs/cycle")
table.add_row("SIMD", f"{hw.simd.lanes} lanes, rsqrt {hw.simd.rsqrt_cycles} cycles")
table.add_row("network", f"{hw.network.topology}, {hw.network.hop_latency_cycles} cycles per hop")
console.print(table)

# %% [markdown]
# ## One decode step of the tiny model, in both orders
#
# The emulator runs the very same forward pass as `normfuse_ref.llama.forward`, cost-only, and records when each
# engine (DIMC tiles, SIMD units, network) is busy. The Gantt shows block 0: the ▲ marks are collectives on the
# critical path, i.e. time the whole machine spends waiting for a reduction.

# %%
c = compare(Scenario(get_preset("tiny"), "decode", context=64, batch=1), hw)
console.print(block_gantt({"baseline": c.baseline, "fused": c.fused}, layer=0, width=100))

# %%
b, f = c.baseline, c.fused
table = Table("", "baseline", "fused", title="whole model, one decode step")
table.add_row("latency (cycles)", str(b.makespan), str(f.makespan))
table.add_row("collective time on the critical path (cycles)", str(b.collective_exposed), str(f.collective_exposed))
table.add_row("collective time hidden behind other work (cycles)", str(b.collective_hidden), str(f.collective_hidden))
console.print(table)
console.print(
    f"collectives are {c.collective_share:.1%} of the baseline latency; the fused order is {c.reduction:.1%} faster"
)

# %% [markdown]
# ## Where the time goes as the network gets slower
#
# The cost of a collective is mostly network latency: hops times cycles per hop. Make hops slower and watch the
# baseline's exposed collective time grow, while the fused order keeps most of it behind the matmuls.

# %%
from normfuse_ref.hw import with_overrides  # noqa: E402

table = Table("cycles per hop", "baseline", "fused", "reduction", title="tiny, decode, toy machine")
for hop in (1, 4, 16, 64):
    h = with_overrides(hw, {"network": {"hop_latency_cycles": hop}})
    ci = compare(Scenario(get_preset("tiny"), "decode", context=64, batch=1), h)
    table.add_row(str(hop), str(ci.baseline.makespan), str(ci.fused.makespan), f"{ci.reduction:.1%}")
console.print(table)
assert np.isfinite(c.reduction)

# %% [markdown]
# ## What to remember
#
# - A normalisation is cheap arithmetic but a full-vector reduction: on a sliced machine it is a network
#   collective, and in the textbook order the next matmul waits for it.
# - Because the next layer is linear, the fused order starts the matmul at once and applies the scale after; the
#   collective then overlaps the matmul instead of preceding it.
# - How much that buys depends on how long a collective takes relative to the matmul: tutorial 9 asks that
#   question for Llama2/Llama3 on a Corsair-like machine.
#
# **Try this:** run `compare` with `phase="prefill"` and `context=64`. The matmuls now process 64 rows at once;
# what happens to the collective share, and why?
