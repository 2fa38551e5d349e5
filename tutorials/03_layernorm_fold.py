# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 3. LayerNorm: folding the centring into the weights
#
# **Question.** LayerNorm subtracts the row mean mu and divides by sigma before the next linear layer. Both are
# collectives. The paper folds the centring into the weight, `F' = (I - E/n) Gamma F`, so only the variance
# remains a collective, and defers 1/sigma past the matmul:
#
#     layer_norm(x, gamma, beta) @ F  ==  s * (x @ F') + beta @ F,     s = 1/sqrt(var + eps)
#
# How does the fold work, and is it as accurate as the textbook order?

# %%
import numpy as np
from rich.console import Console
from rich.table import Table

from normfuse_ref import fusion, layers

console = Console(width=100)
rng = np.random.default_rng(0)
n, m = 8, 3
gamma, beta = 1 + 0.1 * rng.standard_normal(n), 0.1 * rng.standard_normal(n)
F = rng.standard_normal((n, m))

# %% [markdown]
# ## The centring matrix
#
# E is the all-ones n x n matrix, so x (E/n) puts the row mean in every entry and x (I - E/n) = x - mu.
# (I - E/n) is a projection: applying it twice is the same as once.

# %%
E = np.ones((n, n))
C = np.eye(n) - E / n
x = rng.standard_normal(n) + 5
console.print(f"x (I - E/n) == x - mean(x): {np.allclose(x @ C, x - x.mean())}")
console.print(f"(I - E/n)^2 == (I - E/n):   {np.allclose(C @ C, C)}")

# %% [markdown]
# ## The fold, once, offline
#
# `fold_layer_norm` returns F' and the bias b = beta @ F. Every column of F' sums to zero: that is the centring,
# now living in the weights. The matmul can start on raw x.

# %%
F_prime, b = fusion.fold_layer_norm(gamma, beta, F)
console.print("column sums of F':", F_prime.sum(axis=0))
X = rng.standard_normal((4, n)) + 5
ref = layers.linear(layers.layer_norm(X, gamma, beta), F)
fused = fusion.layer_norm_linear_folded(X, F_prime, b)
console.print(f"max |fused - reference| = {np.abs(fused - ref).max():.2e}")

# %% [markdown]
# ## The price: cancellation when |mu| / sigma is large
#
# The textbook order subtracts mu *before* the matmul. The fused order computes x @ F' on raw x: the products
# are of size |x| ~ |mu|, and they cancel (F' has zero column sums) down to a result of size sigma, so the
# rounding error of the n-term sum is relative to |mu|, not sigma. The reference is not immune either: the mean
# it subtracts is itself rounded relative to |mu|. Watch both in float32 (storage and accumulation):

# %%
n = 256
gamma, beta = 1 + 0.1 * rng.standard_normal(n), np.zeros(n)
F = rng.standard_normal((n, 16)) / np.sqrt(n)
table = Table(
    "|mu| / sigma", "reference error", "fused error", "fused / reference", title="float32, error vs float64 oracle"
)
for ratio in [0, 10, 100, 1_000, 10_000]:
    X = (rng.standard_normal((8, n)) + ratio).astype(np.float32)
    exact = layers.linear(layers.layer_norm(X.astype(np.float64), gamma, beta), F)
    e_ref = np.abs(
        layers.linear(layers.layer_norm(X, gamma.astype(np.float32), beta.astype(np.float32)), F.astype(np.float32))
        - exact
    ).max()
    e_fused = np.abs(
        fusion.layer_norm_linear(X, gamma.astype(np.float32), beta.astype(np.float32), F.astype(np.float32)) - exact
    ).max()
    table.add_row(str(ratio), f"{e_ref:.1e}", f"{e_fused:.1e}", f"{e_fused / e_ref:.0f}x")
console.print(table)

# %% [markdown]
# Read the table as it comes out: both errors grow roughly in proportion to |mu| / sigma, and the fused order's
# is a few times larger once the offset dominates. At |mu|/sigma of order 1, typical of residual streams, the
# two orders are about equally accurate. Activations with a large common offset would call for a wider
# accumulator, or for subtracting a mean estimate before the matmul. The fuzz suite pins this hazard with its
# smallest counterexample (see `docs/hazards.md`).
#
# ## What to remember
#
# - The centring (I - E/n) folds into the weight: F' = (I - E/n) Gamma F has zero column sums, and beta F is a
#   constant bias. Only the variance is still a collective, and it runs beside the matmul.
# - The fold trades a collective for cancellation: with a large |mu| / sigma its error is a few times the
#   reference's in float32 storage (the table), and grows with |mu| / sigma in 16- and 8-bit storage
#   (docs/hazards.md, hazard 1).
#
# **Try this:** repeat the table in float64 (`astype(np.float64)` everywhere). At what |mu|/sigma does the fused
# error become visible there?
