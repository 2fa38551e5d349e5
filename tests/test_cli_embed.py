"""`normfuse embed`: the text output, --json, both orders, truncation, and the real model's closing command.

In-process (`main([...])`) at a pinned width (COLUMNS=100), on the random `tiny-bert` (no download); the real
all-MiniLM-L6-v2 run skips when it is not fetched. User mistakes are in tests/test_cli_battery.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from normfuse_ref.cli.embed import DTYPES, UNITS
from normfuse_ref.models.bert import embedding_bound, load_model
from normfuse_ref.models.bert.model import MODEL_DTYPES
from tests.bert_support import require_minilm
from tests.cli_support import pinned_width, run  # noqa: F401  (autouse fixture)

TEXTS = ["A cat sits on the mat.", "A dog lies on the rug.", "[bold]markup[/] stays text"]


def test_fused_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "embed", "--model", "tiny-bert", *TEXTS)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("tiny-bert · fused order · float32 · 3 texts · ")
    assert lines[1:4] == [f"{i + 1}. {t}" for i, t in enumerate(TEXTS)]  # markup printed as typed
    assert "norm (fused)" in out and "cosine similarity (fused order)" in out and "baseline" not in out
    assert out.count("1.0000000") == 3  # three unit norms
    assert err == ""


def test_json_record(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "embed", "--model", "tiny-bert", "--mode", "both", "--json", *TEXTS)
    assert code == 0
    rec = json.loads(out)
    assert rec["schema_version"] == 1 and rec["command"] == "embed" and rec["units"] == UNITS
    assert rec["model"] == "tiny-bert" and rec["mode"] == "both" and rec["dtype"] == "float32"
    assert [t["text"] for t in rec["texts"]] == TEXTS and all(t["truncated_from"] is None for t in rec["texts"])
    model = load_model("tiny-bert")
    assert [t["tokens"] for t in rec["texts"]] == list(model.tokenize(TEXTS).lengths)
    runs = {r["mode"]: r for r in rec["runs"]}
    assert set(runs) == {"fused", "baseline"}
    for mode, r in runs.items():
        e = np.array(r["embeddings"])  # (3, d)
        want = model.embed(TEXTS, mode)
        np.testing.assert_array_equal(e, want.astype(np.float64))  # the same computation, printed exactly
        np.testing.assert_allclose(r["norms"], np.linalg.norm(e, axis=-1), rtol=1e-15)
        c = np.array(r["cosine"])
        np.testing.assert_allclose(c, c.T, rtol=0, atol=1e-15)
    diff = np.abs(np.array(runs["fused"]["embeddings"]) - np.array(runs["baseline"]["embeddings"])).max()
    assert rec["max_abs_diff"] == diff and 0 < diff <= rec["bound"] and rec["within_bound"] is True
    assert rec["checked"] is True
    assert 0 < 1 - rec["min_cosine"] < 1e-9 and rec["max_hidden_diff"] > 0
    numeric = {k for k, v in rec.items() if isinstance(v, float | int) and not isinstance(v, bool)}
    assert numeric - {"schema_version"} <= set(UNITS)


def test_both_orders_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "embed", "--model", "tiny-bert", "--mode", "both", *TEXTS[:2])
    assert code == 0
    assert "norm (fused)" in out and "norm (baseline)" in out
    for label in ("embedding components", "min cosine(fused, baseline)", "last hidden states", "rounding bound"):
        assert label in out
    assert out.rstrip().endswith("✓ the embeddings match across orders (within the rounding bound)")


def test_truncation_is_stated(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "embed", "--model", "tiny-bert", "--truncate", "ok", "x" * 100)
    assert code == 0
    assert err.strip() == "warning: text 2 has 102 tokens; only its first 64 were embedded (--truncate)"
    assert "64 of 102" in out
    code, out, _ = run(capsys, "embed", "--model", "tiny-bert", "--truncate", "--json", "ok", "x" * 100)
    assert [t["truncated_from"] for t in json.loads(out)["texts"]] == [None, 102]


def test_batch_size_does_not_change_the_embeddings(capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for n in ("1", "32"):
        code, out, _ = run(capsys, "embed", "--model", "tiny-bert", "--json", "--batch-size", n, *TEXTS)
        assert code == 0
        outs.append(np.array(json.loads(out)["runs"][0]["embeddings"]))
    model = load_model("tiny-bert")
    b = model.tokenize(TEXTS)
    tol = embedding_bound(model.cfg, model.forward(b.ids, b.attention_mask), b.attention_mask)
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=tol)


def test_the_real_model_closing_command(capsys: pytest.CaptureFixture[str]) -> None:
    require_minilm()
    code, out, err = run(capsys, "embed", "A cat sits on the mat.", "A dog lies on the rug.", "--mode", "both")
    assert code == 0, err
    assert out.splitlines()[0].startswith("all-minilm-l6-v2 · both orders · float32 · 2 texts")
    assert "✓ the embeddings match across orders" in out


def test_the_dtype_choices_are_the_models() -> None:
    assert DTYPES == MODEL_DTYPES  # embed.py keeps its own copy so that `--help` imports no model code


def test_a_vacuous_bound_is_said_to_be_unchecked(capsys: pytest.CaptureFixture[str]) -> None:
    """In float16 the rounding bound exceeds every embedding component: no verdict, a note saying why."""
    code, out, _ = run(capsys, "embed", "--model", "tiny-bert", "--mode", "both", "--dtype", "float16", *TEXTS)
    assert code == 0
    assert "unchecked: in float16 the rounding bound" in " ".join(out.split()) and "✓" not in out
    code, out, _ = run(
        capsys, "embed", "--model", "tiny-bert", "--mode", "both", "--dtype", "float16", "--json", *TEXTS
    )
    assert json.loads(out)["checked"] is False
