"""`normfuse generate`: streaming text, --mode both, --json, and one-line errors (exit 2, no traceback).

Runs the CLI in-process with the terminal width pinned (COLUMNS=100). The fast cases use the random `tiny` model
(byte tokenizer, no download); the real-model case fetches SmolLM2 (idempotent) and checks the issue's
acceptance command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normfuse_ref.llama.fetch import fetch

from .cli_support import pinned_width, run  # noqa: F401  (pinned_width is an autouse fixture)


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_generate_tiny_streams_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "generate", "--model", "tiny", "--prompt", "hello", "--max-new-tokens", "5")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "tiny · fused order · float32 · raw prompt · greedy"
    assert lines[-1].startswith("5 tokens (length) · 5 prompt tokens in ")


def test_generate_tiny_json_is_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "6", "--json"]
    code, out, _ = run(capsys, *argv, "--temperature", "0.7", "--top-k", "5", "--seed", "9")
    rec = json.loads(out)
    assert code == 0 and rec["mode"] == "fused" and rec["prompt"] == "hi" and rec["prompt_tokens"] == 2
    assert rec["identical"] is None and rec["max_logit_diff"] is None
    (r,) = rec["runs"]
    assert len(r["tokens"]) == 6 and r["finish_reason"] == "length" and isinstance(r["text"], str)
    _, again, _ = run(capsys, *argv, "--temperature", "0.7", "--top-k", "5", "--seed", "9")
    assert json.loads(again)["runs"][0]["tokens"] == r["tokens"]


def test_generate_tiny_both_modes_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "generate", "--model", "tiny", "--prompt", "abc", "--mode", "both", "--json",
                       "--max-new-tokens", "8")  # fmt: skip
    rec = json.loads(out)
    assert code == 0 and rec["mode"] == "both"
    assert [r["mode"] for r in rec["runs"]] == ["fused", "baseline"]
    assert 0 < rec["max_logit_diff"] < 1e-3 * rec["logit_scale"]
    assert rec["identical"] is True and rec["first_divergence"] is None
    assert rec["runs"][0]["tokens"] == rec["runs"][1]["tokens"]


def test_generate_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NORMFUSE_CACHE", str(tmp_path / "empty"))
    code, _, err = run(capsys, "generate", "--prompt", "hi")
    assert_one_line_error(code, err, "model not found", "run: normfuse fetch smollm2-135m")
    code, _, err = run(capsys, "generate", "--model", "tiny", "--prompt", "x" * 300)
    assert_one_line_error(code, err, "300 tokens", "context is 256 tokens")
    code, _, err = run(capsys, "generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "0")
    assert_one_line_error(code, err, "--max-new-tokens must be >= 1")
    code, _, err = run(capsys, "generate", "--model", "llama2-7b", "--prompt", "hi")
    assert_one_line_error(code, err, "shape-only")
    code, _, err = run(capsys, "generate", "--model", "tiny", "--prompt", "hi", "--mode", "sideways")
    assert_one_line_error(code, err, "invalid choice")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 40)
    code, _, err = run(capsys, "generate", "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, "damaged or truncated")


def test_generate_real_model_both_orders(capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's acceptance command: a sensible answer and identical tokens in both orders."""
    fetch("smollm2-135m")
    code, out, err = run(capsys, "generate", "--prompt", "What is the capital of France?", "--mode", "both",
                         "--max-new-tokens", "16")  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "smollm2-135m · both orders · float32 · chat template · greedy"
    assert lines[1].startswith("fused:") and "Paris" in lines[1]
    assert lines[2].startswith("baseline:") and "Paris" in lines[2]
    assert "max |logit diff| fused vs baseline: " in out
    assert "✓ tokens identical in both orders" in out
