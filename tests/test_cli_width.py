"""Every command's default output at 80 and 120 columns: no line wider than the terminal, and every identifier
and key name whole.

The identifiers are taken from the code (the presets, the registries of rules, dtypes, proofs, models and
published figures, the lanes a block uses), never from the output. A name counts as whole when it appears with
no word character, dot or hyphen glued to either side (so `llama2-7` does not pass for `llama2-70b`); "…", rich's
mark of a cut cell, must never appear.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pytest
from rich.cells import cell_len

from normfuse_ref.cli import timeline as timeline_cmd
from normfuse_ref.cli.main import main
from normfuse_ref.fuzz.rules import RULES
from normfuse_ref.hw.study import PAPER_MODELS, PUBLISHED
from normfuse_ref.models.llama.fetch import SOURCES
from normfuse_ref.precision import DTYPES
from proofs import PROOFS

WIDTHS = (80, 120)


def shown(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setenv("NO_COLOR", "1")
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def assert_reads(out: str, width: int, names: Iterable[str]) -> None:
    """No line wider than `width` (display cells), nothing cut, and each name whole somewhere."""
    wide = [line for line in out.splitlines() if cell_len(line) > width]
    assert not wide, f"{len(wide)} lines wider than {width}: {wide[0]!r}"
    assert "…" not in out
    for name in names:
        assert re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", out), f"{name!r} is not shown whole"


@pytest.mark.parametrize("width", WIDTHS)
def test_timeline(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    from normfuse_ref.hw.study import Scenario, compare
    from normfuse_ref.hw.timeline import block_lanes

    out = shown(capsys, monkeypatch, width, "timeline")
    c = compare(
        Scenario(timeline_cmd.shape_config(timeline_cmd.DEFAULT_MODEL)), timeline_cmd.load_hardware("corsair-like")
    )
    lanes = block_lanes([c.baseline, c.fused], 0)
    assert_reads(out, width, [timeline_cmd.DEFAULT_MODEL, "corsair-like", *lanes, "baseline", "one-pass", "fused"])
    assert "4 cards = 4 stages of 1 card" in " ".join(out.split())  # plurals by count (the line may wrap)


@pytest.mark.parametrize("width", WIDTHS)
def test_timeline_paper(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    """The layout of --paper with the real model names and the published figures' names, and numbers as wide as
    the slowest rows print (a 70B prefill takes ~12,000 µs): the emulation itself is tested elsewhere."""
    row: dict[str, Any] = {
        "baseline_latency": 123456.0,
        "roofline_latency": 4567.0,
        "normalisation_share_baseline": 0.123,
        "hidden_fraction": 0.999,
        "reduction": -0.123,
        "reduction_vs_one_pass": 0.1,
    }
    rows = [{"model": m, "phase": p, **row} for m in PAPER_MODELS for p in ("decode", "prefill")]
    published = [
        {**pub, "baseline_latency": 1234.5, "fused_latency": 1234.5, "ratio_fused": 1.23, "cards": 64}
        for pub in PUBLISHED
    ]
    monkeypatch.setattr(timeline_cmd, "paper_check", lambda hw, **kw: rows)
    monkeypatch.setattr(timeline_cmd, "validate", lambda hw, **kw: published)
    out = shown(capsys, monkeypatch, width, "timeline", "--paper", "--workers", "1")
    assert_reads(out, width, [*PAPER_MODELS, *(p["name"] for p in PUBLISHED), "decode", "prefill"])


@pytest.mark.parametrize("width", WIDTHS)
def test_sweep(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    argv = ("sweep", "--param", "network.d2d.link_gbps", "4,8", "--param", "algorithm", "tree,ring,gather")
    out = shown(capsys, monkeypatch, width, *argv, "--model", "tiny", "--hw", "toy", "--workers", "1")
    assert_reads(out, width, ["network.d2d.link_gbps", "tree", "ring", "gather", "tiny", "toy"])
    out = shown(capsys, monkeypatch, width, "sweep", "--param", "context", "8..64", "--model", "tiny", "--hw", "toy")
    assert_reads(out, width, ["context (tokens)", "baseline µs", "fused µs", "tiny"])


@pytest.mark.parametrize("width", WIDTHS)
def test_prove(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    out = shown(capsys, monkeypatch, width, "prove")  # proofs.prove caches: the second width costs nothing
    assert_reads(out, width, [*PROOFS, "symbolic n", "n = 1..6", "controls rejected"])
    assert out.splitlines()[0].startswith("normfuse prove: ")  # the verdicts first


@pytest.mark.parametrize("width", WIDTHS)
def test_fuzz(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    out = shown(capsys, monkeypatch, width, "fuzz", "--examples", "2")  # every rule x dtype; the layout is the point
    assert_reads(out, width, [*RULES, *DTYPES, "fused / ref", "max |err|", "unchecked rows"])
    results = [line.split("│")[-2].strip() for line in out.splitlines() if line.startswith("│")]
    assert len(results) == len(RULES) * len(DTYPES) and set(results) <= {"pass", "FOUND", "skipped"}


@pytest.mark.parametrize("width", WIDTHS)
def test_demo_fetch_generate_embed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int, tmp_path: Any
) -> None:
    out = shown(capsys, monkeypatch, width, "demo")
    assert_reads(out, width, ["rms_norm_linear", "layer_norm_linear", "softmax_linear", *DTYPES])
    monkeypatch.setenv("NORMFUSE_CACHE", str(tmp_path))
    out = shown(capsys, monkeypatch, width, "fetch", "--list")
    assert_reads(out, width, list(SOURCES))
    out = shown(capsys, monkeypatch, width, "generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "2")
    assert_reads(out, width, ["tiny"])
    out = shown(capsys, monkeypatch, width, "embed", "--model", "tiny-bert", "a sentence", "another one")
    assert_reads(out, width, ["tiny-bert"])


@pytest.mark.parametrize("columns", ["0", "5", "abc", "-3", ""])
def test_an_unusable_columns_is_read_as_80(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    """COLUMNS=0 made rich lay everything out in no columns: every command printed nothing, its errors included."""
    monkeypatch.setenv("COLUMNS", columns)
    assert main(["timeline", "--model", "nosuch"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model preset 'nosuch'")
    assert main(["timeline", "--model", "tiny", "--hw", "toy"]) == 0
    out = capsys.readouterr().out
    assert "fused order is" in " ".join(out.split()) and max(cell_len(line) for line in out.splitlines()) <= 80
