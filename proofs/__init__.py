"""SymPy derivations of the commutation identities behind normfuse's fused rules (arXiv 2502.17728).

One file per identity, each runnable on its own (`python -m proofs <name>` prints its checked derivation; `python
-m proofs` prints them all) and importable; `_steps.py` holds the step checker and the tie to the code they
share. This package is `proofs` in a checkout (the repository root is on sys.path in an editable install) and
`normfuse_ref._proofs` in an installed wheel (hatchling force-include), so files import each other relatively;
`normfuse_ref.cli.prove.load_proofs` finds whichever is there.

The registry below is what `normfuse prove` and the tests use:

    PROOFS[name]          the proof module: NAME, TITLE, SYMBOLIC_N, steps(n), negative_controls(n), tie(n), prove(n)
    prove(name, n)        the checked Proof at symbolic n (None) or one concrete n, cached (checks are pure)
    prove_all(name)       symbolic n (if the identity has a symbolic-n derivation), then every n in CONCRETE_N
    equation_text(step), equation_latex(step)   how a step reads, for `normfuse prove` and the scripts
"""

from __future__ import annotations

from functools import cache
from typing import Protocol

from . import (
    layer_norm_linear,
    online_softmax_merge,
    post_layer_norm_block,
    rms_norm_linear,
    rope_scale,
    softmax_linear,
)
from ._display import equation_latex, equation_text
from ._steps import CONCRETE_N, CONTROLS_UP_TO_N, Proof, Step, StepResult, Tie, TieResult, check_step, check_tie

__all__ = [
    "CONCRETE_N",
    "CONTROLS_UP_TO_N",
    "PROOFS",
    "Proof",
    "ProofModule",
    "Step",
    "StepResult",
    "Tie",
    "TieResult",
    "check_step",
    "check_tie",
    "equation_latex",
    "equation_text",
    "prove",
    "prove_all",
]


class ProofModule(Protocol):
    """What every proof file provides."""

    NAME: str
    TITLE: str
    SYMBOLIC_N: bool  # False: SymPy cannot do this identity for symbolic n; only CONCRETE_N is checked

    def steps(self, size: int | None) -> list[Step]: ...

    def negative_controls(self, size: int | None) -> list[Step]: ...

    def tie(self, size: int) -> Tie: ...

    def prove(self, size: int | None = None) -> Proof: ...


#: name -> proof module, in the order of docs/notation.md: the three rules, then the online merge and RoPE they rely
#: on, then the post-LN block of BERT (docs/models.md) built on the LayerNorm rule
PROOFS: dict[str, ProofModule] = {
    module.NAME: module
    for module in (
        rms_norm_linear,
        layer_norm_linear,
        softmax_linear,
        online_softmax_merge,
        rope_scale,
        post_layer_norm_block,
    )
}


@cache
def prove(name: str, n: int | None = None) -> Proof:
    """The checked proof `name` at symbolic n (None) or concrete n. KeyError for an unknown name."""
    module = PROOFS[name]
    if n is None and not module.SYMBOLIC_N:
        raise ValueError(f"{name} has no symbolic-n derivation; pass a concrete n from {CONCRETE_N}")
    return module.prove(n)


def prove_all(name: str) -> list[Proof]:
    """Symbolic n first (when the identity has it), then every concrete n in CONCRETE_N."""
    sizes: list[int | None] = [None] if PROOFS[name].SYMBOLIC_N else []
    return [prove(name, n) for n in [*sizes, *CONCRETE_N]]
