# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 8. Proofs you can run
#
# **Question.** The fuzz suite tests the fused rules in floating point on many inputs, but no number of examples
# proves an identity. Does each rewrite hold in exact arithmetic, for *every* row length n? And would the checker
# notice if it did not?
#
# `proofs/` states each identity as a derivation, one claimed equality per step. The checker accepts a step only
# when two independent witnesses agree: SymPy simplifies `lhs - rhs` to zero, *and* a seeded 50-digit numeric
# substitution evaluates both sides equal. (`simplify(a - b) == 0`, never `a == b`, which only compares
# expression trees.)

# %%
import numpy as np
import sympy as sp
from rich.console import Console
from rich.table import Table

from normfuse_ref.cli.prove import load_proofs

proofs = load_proofs()  # `proofs/` in a checkout, `normfuse_ref._proofs` in an installed wheel

console = Console(width=100)

# %% [markdown]
# ## One derivation, step by step
#
# RMSNorm -> linear, for a symbolic row length n (IndexedBase symbols x[i], g[i], F[i, k] and sums over
# i = 0 .. n-1):

# %%
proof = proofs.prove("rms_norm_linear")  # None: symbolic n
for number, result in enumerate(proof.steps, start=1):
    console.print(
        f"{number}. [bold]{result.name}[/]  symbolic {'✓' if result.symbolic else '✗'}  numeric {'✓' if result.numeric else '✗'}"
    )
    console.print(f"   {proofs.equation_text(result.step)}", soft_wrap=True, markup=False)
console.print(f"passed: {proof.passed}")

# %% [markdown]
# ## Every identity, symbolic n and n = 1 .. 6
#
# Each concrete n re-checks the same facts with explicit matrices: for example (I - E/n)^2 = I - E/n and zero
# column sums of F' for LayerNorm, merges left-to-right, right-to-left and as a tree for the online softmax.

# %%
table = Table("identity", "symbolic n", *[f"n={n}" for n in proofs.CONCRETE_N], title="Checked derivations")
for name in proofs.PROOFS:
    row = ["✓" if p.passed else "✗" for p in proofs.prove_all(name)]
    table.add_row(name, *row)
console.print(table)

# %% [markdown]
# ## The checker can say no
#
# A checker that accepts everything proves nothing. Every proof file carries *negative controls*: plausible
# wrong rewrites, each of which must be rejected by both witnesses. Here are the LayerNorm ones: adding the
# bias beta F before dividing by sigma, and dropping the centring (Gamma F instead of (I - E/n) Gamma F).

# %%
for result in proofs.prove("layer_norm_linear").negative_controls:
    verdict = "rejected ✓" if result.rejected else "ACCEPTED ✗"
    console.print(f"- {result.name}: {verdict}")

# %% [markdown]
# And one of our own, built with the same `Step` record: is the scale allowed past the SiLU of the gate
# projection? silu(s a) = s silu(a) would let a fused kernel apply 1/rms after the whole FFN. It does not hold.

# %%
s, a = sp.symbols("s a", positive=True)


def silu(u: sp.Expr) -> sp.Expr:
    return u / (1 + sp.exp(-u))


wrong = proofs.Step("scale past SiLU", silu(s * a), s * silu(a), "a nonlinearity does not commute with a scale")
right = proofs.Step("scale past a linear map", 3 * (s * a), s * (3 * a), "a linear map commutes with a scale")
for step in (wrong, right):
    r = proofs.check_step(step)
    console.print(
        f"{step.name}: symbolic {'✓' if r.symbolic else '✗'}  numeric {'✓' if r.numeric else '✗'}  -> {'holds' if r.holds else 'rejected'}"
    )

# %% [markdown]
# ## A proof is tied to the code it specifies
#
# A derivation about symbols says nothing about `normfuse_ref.fusion` unless something connects the two. At every
# concrete n >= 2 each proof evaluates its end-to-end right-hand side (lambdified) on random float64 inputs and
# compares it with the library function it specifies; a disagreement fails the proof. Here is that tie at n = 4,
# and what it says when the library's rule puts eps outside the square root:

# %%
tied = proofs.prove("rms_norm_linear", 4).code
console.print(f"{tied.code}: max |code - proof| = {tied.error:.1e} -> {'agrees' if tied.passed else 'DISAGREES'}")

import normfuse_ref.fusion as fusion_module  # noqa: E402  (only for this demonstration)

right = fusion_module.rms_norm_linear


def eps_outside(x, g, F, eps=1e-6, **kw):  # type: ignore[no-untyped-def]
    xa = np.asarray(x, dtype=np.float64)
    return (1 / np.sqrt((xa * xa).mean(axis=-1, keepdims=True)) + eps) * (xa @ fusion_module.fold_rms_norm(g, F))


fusion_module.rms_norm_linear = eps_outside  # a wrong rule in the library ...
wrong = proofs.PROOFS["rms_norm_linear"].prove(4)  # ... (uncached: the module's own prove)
fusion_module.rms_norm_linear = right
console.print(
    f"with eps outside the sqrt: steps hold {all(r.holds for r in wrong.steps)}, "
    f"code off by {wrong.code.error:.1e}, proof passed {wrong.passed}"
)

# %% [markdown]
# The same proofs run from the command line, with LaTeX output for papers and JSON for scripts, and one alone with
# `python -m proofs rms_norm_linear`:
#
#     normfuse prove                       # all identities, a table of steps and a pass/fail summary
#     normfuse prove softmax_linear --latex
#     normfuse prove --json
#
# ## What to remember
#
# - Every fused rule in normfuse rests on an identity proved for symbolic n and re-checked at n = 1 .. 6, and the
#   library's code is checked against the proof's right-hand side at every n >= 2.
# - A step needs two witnesses (symbolic and numeric), and every proof carries wrong rewrites that must fail.
# - Exactness in real arithmetic is the starting point, not the end: tutorial 7 shows where floating point
#   breaks the "same" result.
#
# **Try this:** write a `Step` claiming that the online-softmax merge may skip rescaling l but still rescale o.
# Which witness rejects it, and what does the numeric witness's counterexample look like?
