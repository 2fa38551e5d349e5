"""The SymPy derivations in proofs/: every step holds at symbolic n and at n = 1..6, every negative control is
rejected, every proof is tied to the code it specifies, and the checker itself can say no.

Each failure message names the proof, the dimension and the step; `python -m proofs <name>` reprints the whole
derivation with both witnesses. Results are cached per (name, n) in `proofs.prove`, so the CLI tests that run in the
same session reuse them.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sympy as sp

import proofs
from normfuse_ref import fusion, layers
from normfuse_ref.layers import check_eps
from proofs import CONCRETE_N, CONTROLS_UP_TO_N, PROOFS, Proof, Step, check_step
from proofs._steps import SEED, canonical_form, numeric_equal, rename_bound_indices, symbolic_equal

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(PROOFS)
a, b = sp.symbols("a b", real=True)


def _where(proof: Proof) -> str:
    return "symbolic n" if proof.n is None else f"n = {proof.n}"


def _assert_steps_hold(proof: Proof) -> None:
    failed = [f"{r.name} (symbolic {r.symbolic}, numeric {r.numeric})" for r in proof.steps if not r.holds]
    assert not failed, f"{proof.name} at {_where(proof)}: {failed}; reproduce: python -m proofs {proof.name}"


# ---------------------------------------------------------------------------------------------------------------
# the derivations
# ---------------------------------------------------------------------------------------------------------------


def test_the_registry_lists_one_file_per_identity() -> None:
    files = {p.stem for p in (ROOT / "proofs").glob("*.py") if not p.stem.startswith("_")}
    assert set(NAMES) == files
    assert NAMES == [
        "rms_norm_linear",
        "layer_norm_linear",
        "softmax_linear",
        "online_softmax_merge",
        "rope_scale",
        "post_layer_norm_block",
    ]
    for name, module in PROOFS.items():
        assert module.NAME == name
        doc = sys.modules[f"proofs.{name}"].__doc__ or ""
        assert "Derivation" in doc and "Negative controls" in doc, f"{name}: the docstring must explain the proof"


@pytest.mark.parametrize("name", NAMES)
def test_derivation_holds_for_symbolic_n(name: str) -> None:
    # every identity here has a symbolic-n derivation; a future one without must say so with SYMBOLIC_N = False
    assert PROOFS[name].SYMBOLIC_N
    proof = proofs.prove(name, None)
    assert proof.n is None and len(proof.steps) >= 4
    _assert_steps_hold(proof)


@pytest.mark.parametrize("n", CONCRETE_N)
@pytest.mark.parametrize("name", NAMES)
def test_derivation_holds_for_concrete_n(name: str, n: int) -> None:
    proof = proofs.prove(name, n)
    assert proof.n == n and proof.steps
    _assert_steps_hold(proof)
    assert proof.passed


@pytest.mark.parametrize("name", NAMES)
def test_negative_controls_are_rejected(name: str) -> None:
    checked = [proofs.prove(name, None), *(proofs.prove(name, n) for n in CONCRETE_N)]
    assert len(checked[0].negative_controls) >= 1, f"{name}: every identity needs a negative control"
    for proof in checked:
        if proof.n is not None and proof.n > CONTROLS_UP_TO_N:
            assert not proof.negative_controls  # documented policy: controls up to CONTROLS_UP_TO_N only
        for r in proof.negative_controls:
            assert r.name.startswith("WRONG: ")
            # rejected means *both* witnesses say "not equal"; the numeric one is the refutation
            assert not r.numeric, f"{name} at {_where(proof)}: control {r.name!r} not refuted numerically"
            assert not r.symbolic, f"{name} at {_where(proof)}: simplify claims control {r.name!r} is an identity"
            assert r.rejected


def test_prove_all_covers_symbolic_and_every_concrete_n() -> None:
    checked = proofs.prove_all("rms_norm_linear")
    assert [p.n for p in checked] == [None, *CONCRETE_N]
    assert all(p.passed for p in checked)


# ---------------------------------------------------------------------------------------------------------------
# the checker
# ---------------------------------------------------------------------------------------------------------------


def test_checker_says_no_to_a_wrong_identity() -> None:
    r = check_step(Step("freshman's dream", (a + b) ** 2, a**2 + b**2, "a wrong identity"))
    assert not r.symbolic and not r.numeric
    assert not r.holds and r.rejected


def test_checker_says_yes_to_a_true_identity_written_differently() -> None:
    r = check_step(Step("binomial", (a + b) ** 2, a**2 + 2 * a * b + b**2, "a true identity"))
    assert r.symbolic and r.numeric and r.holds and not r.rejected


def test_a_step_holds_only_if_both_witnesses_agree() -> None:
    step = Step("s", a, a, "")
    assert check_step(step).holds
    for symbolic, numeric in ((True, False), (False, True)):
        split = proofs.StepResult(step, symbolic=symbolic, numeric=numeric)
        assert not split.holds and not split.rejected  # a disagreement is neither a proof nor a refutation


def test_where_definitions_are_substituted_before_checking() -> None:
    s = sp.Symbol("s", positive=True)
    assert check_step(Step("defined", s * a, a / 2, "", ((s, sp.Rational(1, 2)),))).holds
    assert check_step(Step("undefined", s * a, a / 2, "")).rejected  # without the definition it is false


def test_bound_indices_are_renamed() -> None:
    n = sp.Symbol("n", integer=True, positive=True)
    i, j = sp.symbols("i j", integer=True, nonnegative=True)
    x = sp.IndexedBase("x")
    d = sp.Sum(x[i], (i, 0, n - 1)) - sp.Sum(x[j], (j, 0, n - 1))
    assert sp.simplify(d) != 0  # SymPy compares the names of bound indices
    assert rename_bound_indices(d) == 0
    assert symbolic_equal(sp.Sum(x[i], (i, 0, n - 1)), sp.Sum(x[j], (j, 0, n - 1)))
    # a factor free of the index leaves the sum, and a sum of ones is evaluated
    assert canonical_form(sp.Sum(a * x[i], (i, 0, n - 1)) - a * sp.Sum(x[j], (j, 0, n - 1))) == 0
    assert canonical_form(sp.Sum(1, (i, 0, n - 1)) - n) == 0


def test_numeric_witness_unrolls_sums_at_a_drawn_n() -> None:
    n = sp.Symbol("n", integer=True, positive=True)
    i = sp.Symbol("i", integer=True, nonnegative=True)
    x = sp.IndexedBase("x")
    row = sp.Sum(x[i], (i, 0, n - 1))
    assert numeric_equal(sp.Sum(2 * x[i], (i, 0, n - 1)), 2 * row, random.Random(SEED))
    assert not numeric_equal(row, sp.Sum(x[i], (i, 0, n)), random.Random(SEED))  # one more (nonzero) term


def test_numeric_witness_never_draws_n_1() -> None:
    """At n = 1 a missing 1/n passes (mean(x) = x): the witness draws dimensions from 2..6 (n = 1 is the concrete
    derivation's job), so it refutes a mean without its 1/n."""
    n = sp.Symbol("n", integer=True, positive=True)
    i = sp.Symbol("i", integer=True, nonnegative=True)
    x = sp.IndexedBase("x")
    mean = sp.Sum(x[i], (i, 0, n - 1)) / n
    assert all(not numeric_equal(mean, n * mean, random.Random(seed)) for seed in range(20))


def test_a_proof_runs_on_its_own(tmp_path: Path) -> None:
    # from another directory: `python -m proofs NAME` needs only the package on sys.path (an editable install)
    done = subprocess.run(
        [sys.executable, "-m", "proofs", "rms_norm_linear"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "rms_norm_linear (symbolic n)"
    assert any(line.strip().startswith("1. per-row scale:") for line in lines)
    assert lines[-1] == "rms_norm_linear: PASSED"


# ---------------------------------------------------------------------------------------------------------------
# the proofs are tied to the code
# ---------------------------------------------------------------------------------------------------------------

TIED = {
    "rms_norm_linear": "fusion.rms_norm_linear",
    "layer_norm_linear": "fusion.layer_norm_linear",
    "softmax_linear": "fusion.softmax_linear",
    "online_softmax_merge": "fusion.online_softmax_merge",
    "rope_scale": "layers.rope",
    "post_layer_norm_block": "fusion.layer_norm_linear_folded(norm=...)",
}


@pytest.mark.parametrize("n", [k for k in CONCRETE_N if k >= 2])
@pytest.mark.parametrize("name", NAMES)
def test_the_code_computes_the_right_hand_side(name: str, n: int) -> None:
    proof = proofs.prove(name, n)
    assert proof.code is not None and proof.code.code == TIED[name]
    assert proof.code.passed, f"{name} at n = {n}: {proof.code}"


def _rms_eps_outside(x: Any, g: Any, F: Any, eps: float = 1e-6, **_: Any) -> Any:
    """eps added outside the square root: 1/sqrt(mean x^2) + eps."""
    x = np.asarray(x, dtype=np.float64)
    s = 1 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True)) + check_eps(eps)
    return s * (x @ fusion.fold_rms_norm(g, F))


def _ln_beta_dropped(x: Any, gamma: Any, beta: Any, F: Any, eps: float = 1e-5, **_: Any) -> Any:
    return _LN(x, gamma, np.zeros_like(np.asarray(beta)), F, eps)


def _merge_without_rescale(a: fusion.SoftmaxState, b: fusion.SoftmaxState) -> fusion.SoftmaxState:
    return fusion.SoftmaxState(np.maximum(a.m, b.m), a.l + b.l, a.o + b.o)


def _rope_off_by_one(x: Any, positions: Any, **kw: Any) -> Any:
    return _ROPE(x, np.asarray(positions) + 1, **kw)


_ROPE, _LN = layers.rope, fusion.layer_norm_linear  # the right ones, called by the wrong ones
WRONG_CODE: list[tuple[str, Any, str, Callable[..., Any]]] = [
    ("rms_norm_linear", fusion, "rms_norm_linear", _rms_eps_outside),
    ("layer_norm_linear", fusion, "layer_norm_linear", _ln_beta_dropped),
    ("online_softmax_merge", fusion, "online_softmax_merge", _merge_without_rescale),
    ("rope_scale", layers, "rope", _rope_off_by_one),
]


@pytest.mark.parametrize(("name", "module", "attr", "wrong"), WRONG_CODE, ids=[w[0] for w in WRONG_CODE])
def test_a_proof_fails_when_the_code_does_not_compute_it(
    name: str, module: Any, attr: str, wrong: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a wrong rule in the library, the derivation still holds but the proof fails (uncached: module.prove)."""
    monkeypatch.setattr(module, attr, wrong)
    checked = PROOFS[name].prove(3)
    assert all(r.holds for r in checked.steps)
    assert checked.code is not None and not checked.code.passed and not checked.passed
