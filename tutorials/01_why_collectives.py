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
# squares of its chunk (cheap, local); the partial sums must then be combined across *all* slices over the network
# and the result broadcast back: a **collective**. In the textbook order the matmul that follows needs the
# normalised x, so it waits for that collective. In the fused order the matmul runs on raw x with the gain folded
# into its weight, and s is applied to its output afterwards.

# %%
from rich.console import Console
from rich.table import Table

from normfuse_ref.cli.gantt import block_gantt
from normfuse_ref.hw import get_hardware, netsim, network, with_overrides
from normfuse_ref.hw.study import Scenario, compare
from normfuse_ref.models.llama import get_preset

console = Console(width=100)

# %% [markdown]
# ## A toy machine
#
# The `toy` machine has chiplets of 16 slices on a 4 x 4 mesh, 2 chiplets a card and 2 cards: three levels of
# network, each with its own hop latency and link bandwidth. Its numbers are small so that one block of the `tiny`
# model (width 64) is spread over several slices and levels.

# %%
hw = get_hardware("toy")
table = Table("level", "units", "topology", "hop", "link", title="the toy machine's network")
for name in ("noc", "d2d", "bridge"):
    lv = getattr(hw.network, name)
    table.add_row(name, str(lv.fanout), lv.topology, f"{lv.hop_ns:g} ns", f"{lv.link_gbps:g} GB/s")
console.print(table)

# %% [markdown]
# ## One collective, two ways
#
# An all-reduce of one statistic (one 4-byte word a row) over 32 slices (two chiplets): the closed form of
# `normfuse_ref.hw.network` and a packet-by-packet simulation of the same tree (`netsim`) must agree.

# %%
span = network.span_of(hw, 32, 1)


def combine(words: int) -> float:
    return -(-words // hw.simd.lanes) * hw.simd.add_cycles * hw.clock.ns_per_cycle


closed = network.allreduce_ns(hw, span, algorithm="tree", words=1, word_bytes=4, combine_ns_of=combine)
simulated = netsim.simulate(hw, 32, 1, algorithm="tree", words=1, combine_ns_of=combine)["total"]
console.print(f"levels crossed: {span.names}; closed form {closed:.2f} ns, simulated {simulated:.2f} ns")
assert abs(closed - simulated) < 1e-9 * closed

# %% [markdown]
# ## One decode step of the tiny model, in both orders
#
# The emulator runs the very same forward pass as `normfuse_ref.models.llama.forward`, cost-only, on the mapping the
# mapper picks, and records when each engine and network level is busy. The Gantt shows block 0: the ▲ marks are
# normalisation statistics on the critical path, time the whole machine waits for them.

# %%
c = compare(Scenario(get_preset("tiny"), "decode", context=64, batch=1), hw)
console.print(block_gantt({"baseline": c.baseline, "fused": c.fused}, layer=0, width=100))

# %% [markdown]
# ## What normalisation costs: a counterfactual
#
# To ask what the statistics cost, run the same pass again with every normalisation-statistic step made free;
# the difference is their cost. The fused order hides the part of it that runs beside a matmul.

# %%
table = Table("", "baseline", "fused", title="whole model, one decode step (cycles)")
table.add_row("latency", str(c.baseline.makespan), str(c.fused.makespan))
table.add_row("with normalisation free", str(c.baseline_free.makespan), str(c.fused_free.makespan))
table.add_row("normalisation cost", str(c.cost("baseline")), str(c.cost("fused")))
console.print(table)
console.print(
    f"normalisation is {c.normalisation_share:.1%} of the baseline; the fused order hides {c.hidden_fraction:.0%} "
    f"of it and is {c.reduction:.1%} faster"
)

# %% [markdown]
# ## Where the time goes as the network gets slower
#
# A collective costs hops times the hop latency. Make the NoC hops slower and watch the baseline's normalisation
# cost grow, while the fused order hides part of it behind the matmuls (about half here, less at the fastest hops).

# %%
table = Table("NoC hop (ns)", "baseline", "fused", "share", "hidden", "saves", title="tiny, decode, toy machine")
for hop in (1.0, 4.0, 16.0, 64.0):
    ci = compare(
        Scenario(get_preset("tiny"), "decode", context=64, batch=1),
        with_overrides(hw, {"network": {"noc": {"hop_ns": hop}}}),
    )
    table.add_row(
        f"{hop:g}",
        str(ci.baseline.makespan),
        str(ci.fused.makespan),
        f"{ci.normalisation_share:.1%}",
        f"{ci.hidden_fraction:.0%}",
        f"{ci.reduction:.1%}",
    )
console.print(table)

# %% [markdown]
# ## What to remember
#
# - A normalisation is cheap arithmetic but a full-vector reduction: on a sliced machine it is a network
#   collective that crosses every level its slices span, and in the textbook order the next matmul waits for it.
# - Its cost is measured as a counterfactual: the pass with the statistics made free. The fused order starts the
#   matmul at once and hides the collective behind it, but not all of it: what cannot run beside a matmul stays.
# - How much it buys depends on how long a collective takes against the matmul: tutorial 9 asks that question for
#   Llama2/Llama3 on a Corsair-like machine.
#
# **Try this:** run `compare` with `phase="prefill"` and `context=16`. The matmuls now process 16 rows at once;
# what happens to the normalisation share, and why?
