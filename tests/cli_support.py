"""Shared by the in-process CLI tests: a pinned terminal width and a way to run `normfuse` and capture it."""

from __future__ import annotations

import pytest

from normfuse_ref.cli.main import main


@pytest.fixture(autouse=True)
def pinned_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
