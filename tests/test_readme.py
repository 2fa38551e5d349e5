"""The README stays true: its worked example runs, and .ci/run runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_python_examples_run() -> None:
    blocks = fenced("python")
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # the examples assert their own claims


def test_ci_runs_the_readme_test_command() -> None:
    commands = [b.strip() for b in fenced("bash")]
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd in ci.splitlines(), f"README test command not in .ci/run:\n{test_cmd}"
    assert any("normfuse timeline" in c for c in commands), "README lacks the main-job command"
