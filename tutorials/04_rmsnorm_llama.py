# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 4. RMSNorm in Llama: fold the gain, defer 1/rms, pass through RoPE
#
# **Question.** Llama uses RMSNorm (no mean, no bias) before the QKV projection, before the FFN's gate/up
# projection, and before the output head. How does the fused order look inside a real decoder block, and is it
# still right when the Q and K projections are followed by a rotary position embedding (RoPE)?
#
#     rms_norm(x, g) @ F  ==  s * (x @ (g ⊙ F)),     s = 1/sqrt(mean(x^2) + eps)

# %%
import numpy as np
from rich.console import Console
from rich.table import Table

from normfuse_ref import fusion, layers
from normfuse_ref.models.llama import forward, get_preset, prepare, random_params
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref.precision import DTYPES

console = Console(width=100)
rng = np.random.default_rng(0)

# %% [markdown]
# ## The rule in every dtype
#
# Both orders are compared with the float64 value of the *same stored inputs*.

# %%
n = 576  # SmolLM2's width
x0, g0, F0 = rng.standard_normal((8, n)), 1 + 0.2 * rng.standard_normal(n), rng.standard_normal((n, 64)) / np.sqrt(n)
table = Table("dtype", "reference error", "fused error", title="RMSNorm -> linear, max |error| vs float64")
for name, dt in DTYPES.items():
    x, g, F = x0.astype(dt), g0.astype(dt), F0.astype(dt)
    exact = layers.linear(layers.rms_norm(x.astype(np.float64), g.astype(np.float64)), F.astype(np.float64))
    ref = layers.linear(layers.rms_norm(x, g), F)
    fused = fusion.rms_norm_linear(x, g, F)
    table.add_row(name, f"{np.abs(ref - exact).max():.2e}", f"{np.abs(fused - exact).max():.2e}")
console.print(table)

# %% [markdown]
# ## Through RoPE and into the attention scores
#
# In a Llama block the QKV matmul is followed by RoPE, which rotates pairs of entries of each head vector by a
# position-dependent angle. A rotation is linear, and s is one number per token, so rope(s q) = s rope(q): the
# scale can be applied before or after RoPE. Going further, it can even be carried into the scores,
# (s_q q) . (s_k k) = s_q s_k (q . k) (proved in `proofs/rope_scale.py`).

# %%
T, hd = 6, 64
q, k = rng.standard_normal((T, hd)), rng.standard_normal((T, hd))
s = rng.uniform(0.5, 2.0, size=(T, 1))  # one scale per token
pos = np.arange(T)
console.print(f"rope(s q) == s rope(q): {np.allclose(layers.rope(s * q, pos), s * layers.rope(q, pos))}")
scores = layers.rope(s * q, pos) @ layers.rope(s * k, pos).T
console.print(
    f"scores with s inside == s_q s_k (q.k): {np.allclose(scores, (s * s.T) * (layers.rope(q, pos) @ layers.rope(k, pos).T))}"
)

# %% [markdown]
# ## The order of operations in a decoder block
#
# The forward pass issues primitive operations through an *executor*; the rules it calls
# (`fusion.rms_norm_linear_folded` in fused mode, `fusion.rms_norm_linear_reference` in baseline) are the same
# functions the array calls above run. A small executor that records the names of the operations it is asked for
# shows the difference between the two orders at the first RMSNorm -> QKV site: the baseline waits for the
# collective (`.rms`) before its matmul; the fused order starts the matmul first, keeps its unnormalised result in
# the accumulation dtype (`keep_acc`, docs/numerics.md "Rounding rule") and applies the scale afterwards.

# %%


class Recorder(NumpyExecutor):
    """A NumpyExecutor that remembers the name of every matmul, reduction and softmax step it runs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.log: list[str] = []

    def matmul(self, x, F, *, op, keep_acc=False):  # type: ignore[no-untyped-def]
        self.log.append(f"matmul   {op}" + ("  (kept in acc)" if keep_acc else ""))
        return super().matmul(x, F, op=op, keep_acc=keep_acc)

    def reduce(self, x, kind, *, op, eps=0.0):  # type: ignore[no-untyped-def]
        self.log.append(f"reduce   {op}  (collective)")
        return super().reduce(x, kind, op=op, eps=eps)

    def elementwise(self, fn, *xs, op, keep_acc=False):  # type: ignore[no-untyped-def]
        if op.endswith((".norm", ".scale")):
            self.log.append(f"scale    {op}")
        return super().elementwise(fn, *xs, op=op, keep_acc=keep_acc)

    def softmax_tiles(self, z, V, *, op):  # type: ignore[no-untyped-def]
        self.log.append(f"tiles    {op}  (per slice: local max, exp, sum, e @ V; no communication)")
        return super().softmax_tiles(z, V, op=op)

    def softmax_merge(self, t, *, op):  # type: ignore[no-untyped-def]
        self.log.append(f"merge    {op}  (collective)")
        return super().softmax_merge(t, op=op)


cfg = get_preset("tiny")
params = random_params(cfg, seed=0)
ids = np.array([1, 2, 3, 4])
logits = {}
for mode in ("baseline", "fused"):
    ex = Recorder()
    logits[mode], _ = forward(prepare(params, cfg, mode), cfg, ids, mode=mode, ex=ex)
    console.print(f"[bold]{mode}[/], first site:", *ex.log[:3], sep="\n  ")
console.print(f"tiny model, max |logits fused - baseline| = {np.abs(logits['fused'] - logits['baseline']).max():.2e}")

# %% [markdown]
# ## What to remember
#
# - The RMSNorm gain folds into the next weight once, offline (`fusion.fold_rms_norm`); 1/rms is a per-token
#   scalar applied after the matmul.
# - RoPE is linear per token, so the deferred scale passes straight through it and even into the q . k scores.
# - In the fused order the matmul no longer waits for the collective: that is the whole point, and the tile
#   emulator (tutorial 5) shows what it buys.
#
# **Try this:** run the `Recorder` with `mode="fused"` and print the whole log. Where do the softmax collectives
# (`softmax.merge`) appear relative to the `attn_pv` work?
