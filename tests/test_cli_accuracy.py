"""`normfuse accuracy` as a user runs it. The study itself is the tiny one (tests/test_accuracy_study.py) put in the
place of the real models' study, so that the output, the JSON and the page are checked in seconds; the real models
run in tests/test_accuracy_smollm2.py and the benchmark. Mistakes are in the battery (tests/test_cli_battery.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from normfuse_ref.accuracy.report import document_of_page, markdown, studies_from_document, study_document
from normfuse_ref.accuracy.study import ModelStudy, StudyConfig
from normfuse_ref.plot import SPREAD_CAP, spread_ratio

from .cli_support import pinned_width, run  # noqa: F401
from .test_accuracy_study import tiny_study  # noqa: F401


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tiny_study: ModelStudy) -> list[tuple[str, StudyConfig]]:  # noqa: F811
    """Replace the real models' study by the tiny one; record what was asked for."""
    asked: list[tuple[str, StudyConfig]] = []

    def study_model(
        name: str, corpus: Any, config: StudyConfig, *, progress: Any = None, workers: int = 1
    ) -> ModelStudy:
        asked.append((name, config))
        if progress is not None:
            progress(f"{name} float64", 1, 2)
        return tiny_study

    monkeypatch.setattr("normfuse_ref.accuracy.real_models.study_model", study_model)
    return asked


@pytest.mark.parametrize("columns", [80, 120])
def test_tables_and_verdicts(
    fake: list[tuple[str, StudyConfig]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = run(capsys, "accuracy", "--model", "smollm2-135m", "--dtype", "bfloat16", "--dtype", "float32")
    assert code == 0, err
    assert [(n, c.dtypes, c.tokens) for n, c in fake] == [("smollm2-135m", ("float32", "bfloat16"), 4096)]
    assert "sha256" in out and "…" not in out
    assert all(len(line) <= columns for line in out.splitlines())
    for label in ("perplexity", "top-1 agreement", "KL mean", "KL p99", "greedy agreement", "wide-fold"):
        assert label in out
    assert "float32: the fused order is" in out and "bfloat16: the fused order is" in out


def test_quick_profile_and_both_models(fake: list[tuple[str, StudyConfig]], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "accuracy", "--tokens", "300")
    assert code == 0, err
    assert [n for n, _ in fake] == ["smollm2-135m", "all-minilm-l6-v2"]
    assert fake[0][1].tokens == 300 and fake[0][1].window == 300  # one window when fewer tokens than a window
    assert fake[0][1].mitigate == "when-worse"
    fake.clear()
    code, _, err = run(capsys, "accuracy", "--tokens", "512", "--mitigate", "never")
    assert code == 0, err
    assert [c.mitigate for _, c in fake] == ["never", "never"]


@pytest.mark.parametrize(("argv", "env", "workers"), [((), "", 2), ((), "3", 3), (("--workers", "1"), "3", 1)])
def test_workers_default_to_the_thread_setting(
    argv: tuple[str, ...],
    env: str,
    workers: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_study: ModelStudy,  # noqa: F811
) -> None:
    """--workers, else $NORMFUSE_THREADS, else the CPUs this process may run on (pinned to 2 here)."""
    asked: list[int] = []

    def study_model(name: str, corpus: Any, config: StudyConfig, *, progress: Any = None, workers: int = 1) -> Any:
        asked.append(workers)
        return tiny_study

    monkeypatch.setattr("normfuse_ref.accuracy.real_models.study_model", study_model)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setenv("NORMFUSE_THREADS", env)
    code, _, err = run(capsys, "accuracy", "--model", "smollm2-135m", *argv)
    assert code == 0, err
    assert asked == [workers]


def test_json_records(
    fake: list[tuple[str, StudyConfig]],
    capsys: pytest.CaptureFixture[str],
    tiny_study: ModelStudy,  # noqa: F811
) -> None:
    code, out, err = run(capsys, "accuracy", "--model", "smollm2-135m", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and doc["command"] == "accuracy"
    assert len(doc["records"]) == len(tiny_study.runs)
    for r in doc["records"]:
        assert r["order"] in ("baseline", "fused", "float64")
        for key in ("model", "dtype", "perplexity", "top1_agreement", "kl_mean", "kl_p99", "greedy_agreement_tokens"):
            assert key in r
        assert r["corpus_sha256"] == tiny_study.corpus.sha256 and r["corpus_chars"] == tiny_study.corpus.chars
    numeric = {
        k for r in doc["records"] for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    assert numeric - {"corpus_chars"} <= set(doc["units"])
    assert [v["dtype"] for v in doc["verdicts"]] == [v.dtype for v in tiny_study.verdicts]


def test_markdown_page(fake: list[tuple[str, StudyConfig]], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    page = tmp_path / "accuracy.md"
    code, out, err = run(capsys, "accuracy", "--model", "smollm2-135m", "--markdown", str(page))
    assert code == 0, err
    text = page.read_text()
    assert f"wrote {page}" in err.replace("\n", "") and "wrote" not in out  # stdout is the table alone
    studies = studies_from_document(document_of_page(text))
    assert markdown(studies, study_document(studies)) == text
    code, _, err = run(capsys, "accuracy", "--model", "smollm2-135m", "--markdown", str(page))
    assert code == 2 and "exists; pass --force" in err
    assert page.read_text() == text
    code, _, err = run(capsys, "accuracy", "--model", "smollm2-135m", "--markdown", str(page), "--force")
    assert code == 0, err


@pytest.mark.parametrize("suffix", ["png", "svg", "pdf"])
def test_figure(
    fake: list[tuple[str, StudyConfig]], capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    pytest.importorskip("matplotlib")
    fig = tmp_path / f"accuracy.{suffix}"
    code, out, err = run(capsys, "accuracy", "--model", "smollm2-135m", "--figure", str(fig))
    assert code == 0, err
    data = fig.read_bytes()
    assert data.startswith({"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[suffix])
    assert f"wrote {fig}" in err.replace("\n", "") and "wrote" not in out


def test_figure_without_the_plot_extra_fails_before_the_study(
    fake: list[tuple[str, StudyConfig]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("normfuse_ref.extras.missing", lambda extra: ["matplotlib"] if extra == "plot" else [])
    code, _, err = run(capsys, "accuracy", "--figure", str(tmp_path / "f.png"), "--markdown", str(tmp_path / "p.md"))
    assert code == 2 and "pip install 'normfuse[plot]'" in err and len(err.strip().splitlines()) == 1
    assert fake == [] and list(tmp_path.iterdir()) == []  # nothing studied, nothing written


def test_spread_ratio() -> None:
    """worse_by in units of the spread; a change where two summation orders agree exactly is drawn at the cap."""
    assert spread_ratio(3.0, 2.0) == 1.5 and spread_ratio(-1e9, 1.0) == -SPREAD_CAP
    assert (
        spread_ratio(0.0, 0.0) == 0.0
        and spread_ratio(1e-9, 0.0) == SPREAD_CAP
        and spread_ratio(-1e-9, 0.0) == -SPREAD_CAP
    )


def test_the_committed_page_is_the_codes_output_for_its_own_data() -> None:
    """docs/accuracy.md as committed is what `markdown` makes of the data the page carries (verdicts recomputed by
    the current rule): no number on it was edited by hand, and it was regenerated after the last change to the
    report or the verdict rule. (`normfuse accuracy --markdown docs/accuracy.md --force` makes it again.)"""
    page = (Path(__file__).resolve().parents[1] / "docs" / "accuracy.md").read_text(encoding="utf-8")
    again = studies_from_document(document_of_page(page))
    assert markdown(again, study_document(again)) == page
    assert {s.model for s in again} == {"smollm2-135m", "all-minilm-l6-v2"}
    assert all(s.config == StudyConfig(dtypes=s.config.dtypes) for s in again)  # the full study, every dtype


def test_force_without_an_output_file_is_refused_before_the_study(
    fake: list[tuple[str, StudyConfig]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "accuracy", "--model", "smollm2-135m", "--force")
    assert code == 2 and out == "" and fake == []
    assert err.strip() == "error: --force does not apply without an output file (--markdown or --figure)"
