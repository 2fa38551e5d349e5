"""The accuracy study's runs spread over forked worker processes (`study.run_plan(workers=...)`) score exactly
what one process scores, report through the parent, and fail with the run's own error."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from normfuse_ref.accuracy.corpus import load_corpus
from normfuse_ref.accuracy.minilm import study_bert
from normfuse_ref.accuracy.smollm2 import study_llama
from normfuse_ref.accuracy.study import FIGURES, ORACLE, ModelStudy, Progress, RunRecord, RunSpec, StudyConfig, run_plan
from normfuse_ref.parallel import THREADS_ENV, process_pool, run_blocks

from .test_accuracy_minilm import TINY as TINY_BERT
from .test_accuracy_minilm import tiny_bert_study  # noqa: F401
from .test_accuracy_study import TINY, tiny_study  # noqa: F401


def _figures(s: ModelStudy) -> list[tuple[str, dict[str, float], object]]:
    return [(r.spec.label, dict(r.figures), r.details.get("greedy_agreement_per_prompt")) for r in s.runs]


def test_a_study_in_worker_processes_scores_what_one_process_does(tiny_study: ModelStudy) -> None:  # noqa: F811
    """Two implementations: the tiny study's runs in one process (the fixture, the executor on all threads) and in
    two forked processes of one thread each - every figure bit for bit, every verdict, in the same order."""
    apart = study_llama(TINY, load_corpus(), tiny_study.config, name="tiny", workers=2)
    assert _figures(apart) == _figures(tiny_study)
    assert apart.verdicts == tiny_study.verdicts
    assert len(apart.runs) == 11  # the oracle, 2 dtypes x 4, one mitigation's 2 (mitigate="always")


def test_a_bert_study_and_its_hazard_in_worker_processes_are_what_one_process_makes(
    tiny_bert_study: ModelStudy,  # noqa: F811
) -> None:
    """The tiny BERT's study (mitigations and ablation arms in both summation orders) and its LayerNorm hazard
    cells computed by two forked processes: every figure and every hazard cell as in one process."""
    apart = study_bert(TINY_BERT, load_corpus(), tiny_bert_study.config, name="tiny-bert", workers=2)
    assert _figures(apart) == _figures(tiny_bert_study)
    assert apart.verdicts == tiny_bert_study.verdicts
    assert apart.hazard == tiny_bert_study.hazard and len(apart.hazard.cells) >= 2


def _bert_record(spec: RunSpec, **details: object) -> RunRecord:
    return RunRecord(spec, {f.key: 1.0 for f in FIGURES["bert"]}, details)


def test_worker_runs_are_forked_with_one_thread_each_and_report_through_the_parent() -> None:
    def run(spec: RunSpec, label: str, progress: Progress) -> RunRecord:
        progress(label, 1, 1)  # a worker's reports go nowhere: the progress bar is the parent's
        return _bert_record(spec, pid=os.getpid(), threads=os.environ.get(THREADS_ENV))

    parent = os.getpid()
    heard: list[tuple[str, int, int]] = []
    config = StudyConfig(dtypes=("float32", "bfloat16"), mitigate="always")
    records, _ = run_plan("bert", "m", config, {"bfloat16": ("compensate",)}, run,
                          progress=lambda *a: heard.append(a), workers=2)  # fmt: skip
    oracle, *others = records
    assert oracle.details["pid"] == parent and oracle.details["threads"] == os.environ.get(THREADS_ENV)
    assert {r.details["threads"] for r in others} == {"1"}
    pids = {r.details["pid"] for r in others}
    assert parent not in pids and 1 <= len(pids) <= 4  # two workers in each of the two stages
    assert heard[0] == ("m float64 float64", 1, 1)
    stage = [h for h in heard[1:] if h[0] == "m: 8 runs, 2 at a time"]
    assert [h[1] for h in stage] == list(range(9)) and not any(h[0].startswith("m bfloat16") for h in heard)
    assert [h[0] for h in heard[-3:]] == ["m: 2 runs, 2 at a time"] * 3
    assert multiprocessing.active_children() == []


def test_a_failing_run_fails_the_study_with_its_own_error_and_leaves_no_worker() -> None:
    def run(spec: RunSpec, label: str, _progress: Progress) -> RunRecord:
        if spec == RunSpec("bfloat16", "fused", "permuted"):
            raise ValueError(f"{label}: a damaged weight")
        return _bert_record(spec)

    config = StudyConfig(dtypes=("float32", "bfloat16"))
    with pytest.raises(ValueError, match=r"^m bfloat16 fused permuted: a damaged weight$"):
        run_plan("bert", "m", config, {}, run, workers=2)
    assert multiprocessing.active_children() == []


def test_the_records_are_in_plan_order_whatever_order_the_workers_finish_in() -> None:
    """Later runs finish first (each sleeps less than the one before), yet records come out in the plan's order."""
    import time

    order = [ORACLE] + [RunSpec(d, o, s) for d in ("float32", "bfloat16") for o in ("baseline", "fused")
                        for s in ("plain", "permuted")]  # fmt: skip

    def run(spec: RunSpec, _label: str, _progress: Progress) -> RunRecord:
        time.sleep(0.05 * (len(order) - order.index(spec)))
        return _bert_record(spec)

    records, verdicts = run_plan("bert", "m", StudyConfig(dtypes=("float32", "bfloat16")), {}, run, workers=3)
    assert [r.spec for r in records] == order
    assert [v.dtype for v in verdicts] == ["float32", "bfloat16"]


def _blocks_sum(n: int) -> float:
    out = np.zeros(n)

    def work(i: int) -> None:
        out[i] = i

    run_blocks(work, list(range(n)), threads=2)
    return float(out.sum())


def test_a_forked_process_makes_its_own_worker_threads() -> None:
    """The executor's thread pool, made in the parent, is not the forked child's (it has none of the parent's
    threads): a child that runs blocks on two threads makes its own, and finishes."""
    assert _blocks_sum(64) == sum(range(64))  # the parent's pool exists now
    with process_pool(1) as pool:
        assert pool.apply_async(_blocks_sum, (64,)).get(timeout=60) == sum(range(64))


def test_without_fork_the_runs_run_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a process cannot fork (Windows), `workers` > 1 runs the study in this process instead of failing."""
    monkeypatch.setattr("normfuse_ref.parallel.can_fork", lambda: False)

    def run(spec: RunSpec, _label: str, _progress: Progress) -> RunRecord:
        return _bert_record(spec, pid=os.getpid())

    records, _ = run_plan("bert", "m", StudyConfig(dtypes=("float32",)), {}, run, workers=2)
    assert {r.details["pid"] for r in records} == {os.getpid()} and len(records) == 5
