"""`normfuse prove`: exit status, the rich display, --json, --latex, --n, one-line errors, and finding the proofs.

Most tests call the dispatcher in-process (`main([...])`), so they share `proofs.prove`'s cache with
tests/test_proofs.py; two run the real `python -m normfuse_ref` in a subprocess. The width is pinned (COLUMNS=100).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import sympy as sp

import proofs
from normfuse_ref.cli import prove as prove_cmd
from normfuse_ref.cli.main import main
from proofs import CONCRETE_N, PROOFS, Proof, Step, check_step

NAMES = list(PROOFS)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["prove", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_all_proofs_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("normfuse prove: ")  # the verdicts come first
    assert lines[-2] == f"✓ all {len(NAMES)} proofs passed"
    assert lines[-1] == "normfuse prove --verbose shows each derivation step by step."
    header = next(line for line in lines if line.startswith("┃ proof"))
    assert [c.strip() for c in header.split("┃")[1:-1]] == [
        "proof",
        "symbolic n",
        "n = 1..6",
        "controls rejected",
        "result",
    ]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    assert [r[0] for r in rows] == NAMES
    for r in rows:
        assert r[1] in ("✓", "none") and r[2] == "6/6 ✓" and r[4] == "pass"
        held, total = map(int, r[3].split("/"))
        assert held == total > 0
    assert not any(line.startswith(f"{NAMES[0]} (symbolic n): ") for line in lines)  # no derivation without -v
    assert "FAILED" not in out and err.count("error") == 0


def test_verbose_shows_each_derivation_after_the_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "rms_norm_linear", "softmax_linear", "--n", "symbolic", "--verbose")
    assert code == 0
    lines = out.splitlines()
    table_end = max(i for i, line in enumerate(lines) if line.startswith("└"))
    first = lines.index(next(line for line in lines if line.startswith("rms_norm_linear (symbolic n): ")))
    assert first > table_end
    assert any(line.startswith("softmax_linear (symbolic n): ") for line in lines)
    assert "  1. per-row scale: symbolic ✓, numeric ✓" in lines
    assert any(line.startswith("  negative control, WRONG: ") and line.endswith("rejected ✓") for line in lines)


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["schema_version"], data["command"], data["passed"]) == (1, "prove", True)
    assert set(data["units"]) == {"steps_held", "rejected", "max_difference"}
    records = data["proofs"]
    assert [r["name"] for r in records] == NAMES
    for r in records:
        assert set(r) == {"name", "title", "passed", "n", "steps", "negative_controls", "dimensions"}
        assert r["passed"] is True and r["n"] == "symbolic"
        assert r["steps"] and all(s["symbolic"] is True and s["numeric"] is True for s in r["steps"])
        assert all(set(s) == {"name", "symbolic", "numeric", "equation", "comment"} for s in r["steps"])
        assert r["negative_controls"] and all(c["rejected"] is True for c in r["negative_controls"])
        assert all({"name", "rejected"} <= set(c) for c in r["negative_controls"])
        assert [d["n"] for d in r["dimensions"]] == ["symbolic", *CONCRETE_N]
        assert all(d["passed"] and d["steps_held"] == d["steps"] for d in r["dimensions"])


def test_latex(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "softmax_linear", "--n", "symbolic", "--latex")
    assert code == 0
    lines = out.splitlines()
    assert "% 1. the denominator leaves the sum: symbolic ✓, numeric ✓" in lines
    assert any(r"\frac" in line and r"\sum_{i=0}^{n - 1}" in line for line in lines)
    assert any(r"\neq" in line for line in lines)  # the rejected controls
    # LaTeX lines are never wrapped at the terminal width, so they can be pasted
    assert any(len(line) > 100 and line.startswith(r"\sum") for line in lines)


def test_latex_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "layer_norm_linear", "--n", "symbolic", "--json", "--latex")
    assert code == 0
    (record,) = json.loads(out)["proofs"]
    assert all("latex" in s for s in record["steps"])
    assert any(r"\frac" in s["latex"] for s in record["steps"])


def test_one_concrete_n(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "rope_scale", "layer_norm_linear", "--n", "2", "--json")
    assert code == 0
    records = json.loads(out)["proofs"]
    assert [r["name"] for r in records] == ["rope_scale", "layer_norm_linear"]  # the order asked for
    assert all(r["n"] == 2 and [d["n"] for d in r["dimensions"]] == [2] for r in records)


def test_unknown_name_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rms_norm_linear", "no_such_proof")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"error: unknown proof 'no_such_proof'; choose from: {', '.join(NAMES)}"]


@pytest.mark.parametrize("bad", ["0", "7", "many"])
def test_bad_n_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    code, out, err = run(capsys, "--n", bad)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--n must be" in err and "Traceback" not in err


def test_a_failing_step_gives_status_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = sp.symbols("a b")
    broken = Proof("rms_norm_linear", None, (check_step(Step("wrong", (a + b) ** 2, a**2 + b**2, "")),), ())
    monkeypatch.setattr(proofs, "prove", lambda name, n=None: broken)
    code, out, err = run(capsys, "rms_norm_linear", "--n", "symbolic")
    assert code == 1
    assert "error: 1 of 1 proofs failed: rms_norm_linear" in err
    assert "FAILED" in out
    code, out, _ = run(capsys, "rms_norm_linear", "--n", "symbolic", "--json")
    data = json.loads(out)
    assert code == 1 and data["passed"] is False and data["proofs"][0]["passed"] is False


# ---------------------------------------------------------------------------------------------------------------
# the real command, and finding the proofs from a checkout or a wheel
# ---------------------------------------------------------------------------------------------------------------


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "normfuse_ref", "prove", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_subprocess_from_another_directory(tmp_path: Path) -> None:
    done = _cli("rms_norm_linear", "--n", "symbolic", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(done.stdout)["proofs"]
    assert record["name"] == "rms_norm_linear" and record["passed"] is True
    done = _cli("nope", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.fixture
def _forget() -> Iterator[str]:
    """A package name for a second copy of the proofs, removed (with its submodules) from sys.modules afterwards."""
    name = "normfuse_test_wheel_layout"
    yield name
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def test_the_wheel_layout_imports(_forget: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a wheel the proofs are a subpackage (normfuse_ref._proofs): a copy under another package imports, runs,
    and is tied to the installed code (its relative imports resolve inside it, its normfuse_ref import outside)."""
    root = tmp_path / _forget
    shutil.copytree(ROOT / "proofs", root / "_proofs", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    copy = importlib.import_module(f"{_forget}._proofs")
    assert list(copy.PROOFS) == NAMES
    assert sys.modules[f"{_forget}._proofs.rms_norm_linear"].Proof is sys.modules[f"{_forget}._proofs._steps"].Proof
    checked = copy.prove("rms_norm_linear", 2)
    assert checked.passed and checked.code is not None and checked.code.passed


def test_prefers_the_installed_package(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = ModuleType(prove_cmd.PROOF_PACKAGES[0])
    sentinel.PROOFS = {}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, prove_cmd.PROOF_PACKAGES[0], sentinel)
    assert prove_cmd.load_proofs() is sentinel


def test_a_foreign_package_of_the_same_name_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, prove_cmd.PROOF_PACKAGES[0], ModuleType(prove_cmd.PROOF_PACKAGES[0]))
    assert prove_cmd.load_proofs() is proofs


def test_in_a_checkout_the_tests_and_the_cli_share_one_package() -> None:
    assert prove_cmd.load_proofs() is proofs
