"""Every tutorial runs to completion (CI runs them all; each must finish within 2 minutes on 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("[0-9][0-9]_*.py"))


def test_there_are_tutorials() -> None:
    assert TUTORIALS


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path: Path) -> None:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    r = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=120, cwd=path.parent
    )
    assert r.returncode == 0, f"{path.name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    assert r.stdout.strip(), f"{path.name} printed nothing"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_shape(path: Path) -> None:
    """Jupytext percent format; states its question; ends with what to remember and one question to try."""
    src = path.read_text(encoding="utf-8")
    assert "# %% [markdown]" in src and "format_name: percent" in src
    assert "**Question.**" in src
    assert "## What to remember" in src and "**Try this:**" in src
