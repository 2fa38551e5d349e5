"""`normfuse generate`: streaming text, --mode both, --json, and one-line errors (exit 2, no traceback).

Runs the CLI in-process with the terminal width pinned (COLUMNS=100). The fast cases use the random `tiny` model
(byte tokenizer, no download); the real-model case fetches SmolLM2 (idempotent) and checks the issue's
acceptance command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normfuse_ref.models.llama.fetch import fetch

from .cli_support import pinned_width, run  # noqa: F401  (pinned_width is an autouse fixture)


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


def test_generate_json_carries_schema_and_units(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "2", "--json")
    rec = json.loads(out)
    assert code == 0 and rec["schema_version"] == 1 and rec["command"] == "generate"
    numeric = {k for k, v in rec.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    numeric |= {k for r in rec["runs"] for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert numeric - {"seed", "schema_version"} <= set(rec["units"]), numeric - set(rec["units"])
    assert rec["units"]["prefill_seconds"] == "s" and rec["units"]["decode_tokens_per_second"] == "tokens/s"


def test_model_load_shows_progress_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A GGUF model takes seconds to load: a terminal sees a bar (counting its tensors: load_model's on_tensor,
    tests/test_llama_loaders.py); a pipe sees nothing."""
    from normfuse_ref.models.llama import random_params

    from .test_llama_loaders import CFG, write_gguf

    path = write_gguf(tmp_path / "m.gguf", random_params(CFG, seed=1), CFG)
    argv = ["generate", "--model", str(path), "--prompt", "hi", "--max-new-tokens", "1", "--no-chat"]
    code, _, err = run(capsys, *argv)
    assert code == 0 and err == ""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat stderr as a terminal
    code, _, err = run(capsys, *argv)
    assert code == 0 and f"loading {path}" in err and "preparing fused weights" in err


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
