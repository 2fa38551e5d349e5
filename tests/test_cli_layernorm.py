"""`normfuse timeline` and `normfuse sweep` on the LayerNorm models, as a user runs them (in-process, width pinned):
an encoder's defaults, the LayerNorm table of `--paper --models`, sweeps over a LayerNorm preset; and, beneath
them, the composition the mapper and the decode sweeps rely on, checked against the full pass for a GPT decoder."""

from __future__ import annotations

import json

import pytest

from normfuse_ref.hw import MappingPolicy, get_hardware
from normfuse_ref.hw.study import PASSES, Scenario, compare, compose
from normfuse_ref.models.shapes import shape_config
from tests.cli_support import pinned_width, run  # noqa: F401 (pinned_width is an autouse fixture)


def test_an_encoder_defaults_to_a_prefill_of_its_positions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "timeline", "--model", "all-minilm-l6-v2")
    assert code == 0, err
    lines = out.splitlines()
    assert " ".join(lines[:2]) == (
        "normfuse timeline: all-minilm-l6-v2, prefill, prompt 512 in one pass (an encoder), batch 1, 6 layers on "
        "corsair-like"
    )
    assert "Whole model (6 blocks + final LayerNorm)" in out
    assert "beyond" not in err  # 512 is the model's own context: no warning
    # its weights leave SRAM spare: the mapping line says the matrices are held in copies, as --json does
    assert "weights in up to 64 copies (each computing a share of the rows)" in " ".join(out.split())
    code, out, err = run(capsys, "timeline", "--model", "all-minilm-l6-v2", "--context", "128", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["phase"], data["context"], data["chunk"], data["layers"]) == ("prefill", 128, 128, 6)
    assert data["fused_latency"] < data["baseline_latency"]
    held = {g["copies"] for g in data["mapping"]["matrices"].values()}
    assert max(held) > 1 and max(held) <= data["mapping"]["weight_copies"]
    code, out, err = run(capsys, "timeline")  # llama2-7b decode: one row, one copy, nothing said
    assert code == 0 and "weights in up to" not in out, err


def test_a_decoder_beyond_its_positions_is_timed_at_them_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "timeline", "--model", "gpt2-xl", "--layers", "2", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["phase"], data["context"]) == ("decode", 1023)  # 1023 cached + the new token = its 1024 positions
    code, _, err = run(capsys, "timeline", "--model", "gpt2-xl", "--layers", "2", "--context", "2048", "--json")
    assert code == 0 and "exceed gpt2-xl's trained context of 1024; timed anyway" in err


def test_the_layernorm_paper_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "timeline", "--paper", "--models", "all-minilm-l6-v2,gpt2-xl", "--workers", "1", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    rows = [(r["model"], r["phase"], r["context"]) for r in data["rows"]]
    assert rows == [("all-minilm-l6-v2", "prefill", 512), ("gpt2-xl", "decode", 1023), ("gpt2-xl", "prefill", 1024)]
    assert data["published"] == []  # the press figures are of Llama 3 models
    code, out, err = run(capsys, "timeline", "--paper", "--models", "all-minilm-l6-v2", "--workers", "1")
    assert code == 0, err
    assert "tokens" in out and "Published d-Matrix figures" not in out and "calibrated: false" in out
    row = next(line for line in out.splitlines() if line.startswith("│ all-minilm-l6-v2"))
    assert [c.strip() for c in row.split("│")[2:4]] == ["prefill", "512"]


def test_sweeps_take_the_layernorm_presets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "sweep", "--model", "bert-large", "--param", "context", "64,128", "--workers", "1", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["phase"] == "prefill" and [p["params"]["context"] for p in data["points"]] == [64, 128]
    assert all(p["reduction"] > 0 for p in data["points"])
    code, out, err = run(
        capsys, "sweep", "--model", "opt-66b", "--param", "d2d-hop", "20,80", "--workers", "1", "--json"
    )
    assert code == 0, err
    points = json.loads(out)["points"]
    assert [p["phase"] for p in points] == ["decode", "decode"]
    assert points[1]["normalisation_share_baseline"] > points[0]["normalisation_share_baseline"]


@pytest.mark.parametrize(("model", "context"), [("gpt2-xl", 1023), ("tiny-opt", 40)])
def test_a_composed_gpt_decode_pass_is_the_full_pass(model: str, context: int) -> None:
    """Two implementations agree (as tests/test_hw_study.py checks for Llama): a decode pass composed from two timed
    blocks and the head per stage equals the full emulated pass, cycle for cycle, for all six passes."""
    hw = get_hardware("corsair-like")
    sc = Scenario(shape_config(model), "decode", context, mapping=MappingPolicy(stages=2))
    c = compare(sc, hw)
    assert len(c.mapping.stages) == 2
    for name, (mode, free, one_pass) in PASSES.items():
        assert compose(sc, hw, c.mapping, mode, free=free, one_pass=one_pass) == getattr(c, name).makespan, name


def test_the_paper_note_states_the_default_context(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--context defaults per model now (None on the command line): the paper table still says what it used."""
    from normfuse_ref.cli import timeline

    monkeypatch.setattr(timeline, "PAPER_MODELS", ("tiny",))
    monkeypatch.setattr(timeline, "PAPER_PREFILL", 64)
    monkeypatch.setattr(timeline, "validate", lambda *a, **k: [])  # the published figures are another test's
    code, out, err = run(capsys, "timeline", "--paper", "--workers", "1")
    assert code == 0, err
    assert "Decode at context 2048," in " ".join(out.split())


@pytest.mark.parametrize(
    "argv",
    [
        ("timeline", "--model", "tiny-bert", "--hw", "toy", "--json"),
        ("timeline", "--model", "tiny-gpt", "--hw", "toy", "--context", "8", "--json"),
    ],
)
def test_the_emulator_needs_no_extra_for_the_layernorm_families(argv: tuple[str, ...]) -> None:
    """`normfuse timeline` is core (numpy, rich, sympy, ml_dtypes): timing a BERT or GPT model imports every family's
    forward but none of the `model` extra's packages (scipy's erf is imported only where a float64 GELU runs)."""
    from tests.test_packaging import OPTIONAL, imported_by

    top = {m.split(".")[0] for m in imported_by(*argv)}
    assert not top & OPTIONAL, top & OPTIONAL
