# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 2. Deferring the softmax denominator
#
# **Question.** In attention, `softmax(z) @ V` divides every score by the row sum *before* the matmul. That sum
# is a collective: every slice of the chip holding part of the row must contribute. Can we divide *after* the
# matmul instead, and what about the max that softmax subtracts first, which is a collective too?
#
# The identity (proved in `proofs/softmax_linear.py`) is
#
#     softmax(z) @ V  ==  (e^{z - m} @ V) / sum(e^{z - m})      for any shift m.
#
# We will check it, see why the shift m matters, and then remove the need for a *global* max with the
# online-softmax merge.

# %%
import numpy as np
from rich.console import Console
from rich.table import Table

from normfuse_ref import fusion, layers

console = Console(width=100)
rng = np.random.default_rng(0)
z = 4 * rng.standard_normal((3, 64))  # 3 rows of attention scores, n = 64 keys
V = rng.standard_normal((64, 8))  # the values: the "linear layer" after the softmax

reference = layers.softmax(z) @ V
m = z.max(axis=-1, keepdims=True)
deferred = (np.exp(z - m) @ V) / np.exp(z - m).sum(axis=-1, keepdims=True)
console.print(f"max |reference - deferred| = {np.abs(reference - deferred).max():.2e}  (float64 rounding)")

# %% [markdown]
# ## Why the shift m matters
#
# Mathematically any m works. In floating point, e^z overflows for z > 88.7 in float32, and then the ratio is
# inf/inf = NaN. Shifting by the row max keeps every exponent <= 0.

# %%
big = np.array([[90.0, 89.0, 10.0]], dtype=np.float32)
V3 = np.eye(3, dtype=np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    no_shift = (np.exp(big) @ V3) / np.exp(big).sum(axis=-1, keepdims=True)
console.print("without a shift:", no_shift)
console.print("with the max shift:", fusion.softmax_linear(big, V3))

# %% [markdown]
# ## Removing the global max: the online-softmax merge
#
# The max is itself a collective, so "shift by the row max, then matmul" would still wait for a collective
# before the matmul. Instead each slice (tile) of the row keeps its own state (m, l, o): its local max, its
# local sum of e^{z - m}, and its local e^{z - m} @ V. Two states merge by rescaling both to the larger max:
#
#     m = max(m_a, m_b);   l = l_a e^{m_a - m} + l_b e^{m_b - m};   o = o_a e^{m_a - m} + o_b e^{m_b - m}
#
# and the answer is o / l at the end. The merge is associative and commutative, so tiles can be merged in any
# order, in a tree across the chip.

# %%
tiles = [(0, 10), (10, 33), (33, 40), (40, 64)]
states = [fusion.softmax_tile_state(z[:, a:b], V[a:b]) for a, b in tiles]
table = Table("tile", "keys", "local max m (row 0)", "local sum l (row 0)", title="Per-tile states")
for (a, b), s in zip(tiles, states, strict=True):
    table.add_row(f"{a}:{b}", str(b - a), f"{s.m[0, 0]:.3f}", f"{s.l[0, 0]:.3f}")
console.print(table)

orders = {"left to right": [0, 1, 2, 3], "right to left": [3, 2, 1, 0], "shuffled": [2, 0, 3, 1]}
for name, order in orders.items():
    acc = states[order[0]]
    for i in order[1:]:
        acc = fusion.online_softmax_merge(acc, states[i])
    diff = np.abs(fusion.softmax_finalize(acc) - reference).max()
    console.print(f"merge {name:>13}: max |merged - reference| = {diff:.2e}")

tree = fusion.online_softmax_merge(
    fusion.online_softmax_merge(states[0], states[1]), fusion.online_softmax_merge(states[2], states[3])
)
console.print(
    f"merge as a tree   : max |merged - reference| = {np.abs(fusion.softmax_finalize(tree) - reference).max():.2e}"
)

# %% [markdown]
# ## Masked rows
#
# A causal or padding mask puts -inf in the scores. A tile that is entirely masked has m = -inf, l = 0, o = 0
# and the merge treats it as the identity (naively, e^{-inf - (-inf)} would be NaN). A row that is masked
# *everywhere* has no defined softmax; normfuse defines its output as zeros in both orders.

# %%
zm = z.copy()
zm[0, :40] = -np.inf  # row 0: the first four tiles (of 10) are fully masked
zm[1, :] = -np.inf  # row 1: fully masked
out = fusion.softmax_linear(zm, V, tile_size=10)
console.print(f"row 0 matches the reference: {np.allclose(out[0], layers.softmax(zm)[0] @ V)}")
console.print(
    f"row 1 (fully masked) is all zeros in both orders: {np.all(out[1] == 0) and np.all(layers.softmax(zm)[1] == 0)}"
)

# %% [markdown]
# ## The catch: the unnormalised accumulator
#
# The deferred order keeps o = e^{z - m} @ V *unnormalised* until the end. Its entries can be as large as
# n * max|V|, while the reference's p @ V never exceeds max|V|. With float16 storage and a float16 accumulator,
# that overflows; accumulating in float32 (normfuse's default for 16-bit storage) fixes it.

# %%
n = 4096
z16 = np.zeros((1, n), dtype=np.float16)  # all scores equal: e^{z - m} = 1 everywhere
V16 = np.full((n, 1), 100.0, dtype=np.float16)  # so o = n * 100 = 409600 > 65504
with np.errstate(over="ignore"):
    narrow = fusion.softmax_linear(z16, V16, acc="float16")
wide = fusion.softmax_linear(z16, V16)  # default: float32 accumulation
console.print(f"reference (float16): {layers.linear(layers.softmax(z16), V16)[0, 0]}")
console.print(f"fused, float16 accumulator: {narrow[0, 0]}    fused, float32 accumulator: {wide[0, 0]}")

# %% [markdown]
# ## What to remember
#
# - softmax -> V can divide after the matmul; the shift m only guards against overflow and cancels out.
# - The global max is not needed before the matmul: per-tile (m, l, o) states merged by rescaling give the same
#   result in any split and any order. The merge is the only collective, and it comes *after* the matmul work.
# - The unnormalised accumulator needs a wider accumulation dtype than a 16-bit storage format.
#
# **Try this:** make one tile's scores 50 larger than the rest and watch its weight e^{m_a - m} in the merge.
# What happens to the other tiles' contributions in float16?
