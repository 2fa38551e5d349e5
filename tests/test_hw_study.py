"""The calibration and the paper check: the preset still matches its one calibrated point, and the numbers
docs/hardware.md quotes are the numbers the emulator prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from normfuse_ref.hw.config import CALIBRATION, PRESETS
from normfuse_ref.hw.study import (
    PAPER_MODELS,
    Scenario,
    calibrate,
    calibration_scenario,
    capacity,
    compare,
    paper_check,
)
from normfuse_ref.llama.config import PRESETS as MODELS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hardware.md"


def test_the_preset_is_the_calibrated_value() -> None:
    """If a cost formula changes, recalibrate (normfuse_ref.hw.study.calibrate) and update the preset and docs."""
    hw = PRESETS["corsair-like"]
    assert calibrate(hw) == hw.network.hop_latency_cycles
    c = compare(calibration_scenario(), hw)
    assert 0.20 <= c.collective_share < 0.201
    assert CALIBRATION["parameter"] == "network.hop_latency_cycles"


def test_docs_quote_what_the_paper_check_prints() -> None:
    text = DOCS.read_text(encoding="utf-8")
    rows = paper_check(PRESETS["corsair-like"], context=2048, prefill_tokens=1024)
    assert len(rows) == 2 * len(PAPER_MODELS)
    for r in rows:
        pattern = rf"\| {re.escape(r['model'])}[^|]* \| {r['phase']} \| ([\d.]+)% \| ([\d.]+)% \|"
        m = re.search(pattern, text)
        assert m, f"docs/hardware.md has no row for {r['model']} {r['phase']}"
        assert float(m.group(1)) == pytest.approx(100 * r["collective_share_baseline"], abs=0.051)
        assert float(m.group(2)) == pytest.approx(100 * r["reduction"], abs=0.051)
    assert [r["calibration_point"] for r in rows].count(True) == 1


def test_capacity_counts_cards() -> None:
    cap = capacity(Scenario(MODELS["llama2-7b"], "decode", 2048, 1), PRESETS["corsair-like"])
    # 6.7e9 weights at 1 byte in 4 KiB tiles, 192 tiles a slice, 2048 slices a card
    assert 8000 < cap["weight_slices"] < 9000
    assert cap["cards"] == 5


def test_beyond_context_is_timed() -> None:
    sc = Scenario(MODELS["llama2-7b"].replace(n_layers=1), "decode", 5000, 1)
    assert sc.beyond_context
    assert compare(sc, PRESETS["corsair-like"]).reduction > 0
