"""The study's BERT side on the tiny random BERT (seconds), and on the real all-MiniLM-L6-v2 where it is fetched:
the permuted model, the float32 orders against float64, the hazard measurement and the mitigations' costs."""

from __future__ import annotations

import numpy as np
import pytest

from normfuse_ref import fusion
from normfuse_ref.accuracy.corpus import load_corpus
from normfuse_ref.accuracy.costs import LARGE_SITES, VARIANTS, SiteCost, bert_sites, site_costs
from normfuse_ref.accuracy.fp8 import Fp8Executor
from normfuse_ref.accuracy.hazard import HazardReport, Recorder, measure_hazard
from normfuse_ref.accuracy.minilm import BertRuns, embed, sentence_groups, study_bert
from normfuse_ref.accuracy.report import document_of_page, markdown, studies_from_document, study_document
from normfuse_ref.accuracy.study import ORACLE, ModelStudy, RunSpec, StudyConfig
from normfuse_ref.models.bert.config import get_preset
from normfuse_ref.models.bert.model import BertModel, load_model
from normfuse_ref.models.bert.weights import prepare
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref.precision import resolve_dtype

from .bert_support import minilm  # noqa: F401  (skips with one line when all-MiniLM-L6-v2 is not fetched)

TINY = load_model("tiny-bert", "float32", seed=7)
SENTENCES = load_corpus().sentences(24)


def test_the_permuted_bert_is_the_same_model() -> None:
    runs = BertRuns(TINY.params, TINY.cfg)
    groups = sentence_groups(TINY, SENTENCES)
    e = embed(runs, ORACLE, groups, len(SENTENCES))  # (N, d)
    ep = embed(runs, RunSpec("float64", "float64", "permuted"), groups, len(SENTENCES))
    assert np.max(np.abs(e - ep)) <= 1e-13  # unit vectors through 2 float64 blocks: ~1e-16 per operation
    e32 = embed(runs, RunSpec("float32", "baseline"), groups, len(SENTENCES))
    ep32 = embed(runs, RunSpec("float32", "baseline", "permuted"), groups, len(SENTENCES))
    assert not np.array_equal(e32, ep32)  # another rounding


@pytest.mark.parametrize("mitigation", ["compensate", "subtract", "wide-fold"])
def test_mitigations_run_end_to_end(mitigation: str) -> None:
    """Each mitigation changes the fused order's numbers (it is really applied) and stays as close to float64."""
    runs = BertRuns(TINY.params, TINY.cfg)
    groups = sentence_groups(TINY, SENTENCES)
    e64 = embed(runs, ORACLE, groups, len(SENTENCES))
    f = embed(runs, RunSpec("bfloat16", "fused"), groups, len(SENTENCES))
    m = embed(runs, RunSpec("bfloat16", "fused", mitigation=mitigation), groups, len(SENTENCES))
    assert not np.array_equal(f, m)
    # bfloat16 through 2 blocks: embeddings within a few 2^-8 of float64's (unit vectors, cosine error ~ u^2 n)
    assert np.min(np.sum(m * e64, axis=-1)) > 1 - 1e-3


def test_an_ablation_arm_fuses_one_kind_of_site() -> None:
    """The folds-only arm runs the fused order's weights with the reference softmax, the softmax-only arm the
    baseline's weights with the deferred softmax: each differs from both baseline and fused in bfloat16, and in
    float64 (where every order is the same maths) each agrees with baseline to float64's rounding."""
    runs = BertRuns(TINY.params, TINY.cfg)
    groups = sentence_groups(TINY, SENTENCES)
    folds, softmax = (
        RunSpec("bfloat16", "fused", sites="norm_linear"),
        RunSpec("bfloat16", "fused", sites="softmax_linear"),
    )
    wb, wf = runs.weights(RunSpec("bfloat16", "baseline")), runs.weights(RunSpec("bfloat16", "fused"))
    assert all(np.array_equal(runs.weights(folds)[k], wf[k]) for k in wf)
    assert all(np.array_equal(runs.weights(softmax)[k], wb[k]) for k in wb)
    e = {s: embed(runs, s, groups, len(SENTENCES)) for s in (folds, softmax)}
    for other in ("baseline", "fused"):
        e_other = embed(runs, RunSpec("bfloat16", other), groups, len(SENTENCES))
        assert all(not np.array_equal(e[s], e_other) for s in e), other
    e64 = embed(runs, ORACLE, groups, len(SENTENCES))
    for k in ("norm_linear", "softmax_linear"):
        arm = embed(runs, RunSpec("float64", "fused", sites=k), groups, len(SENTENCES))
        assert np.max(np.abs(arm - e64)) <= 1e-13, k  # unit vectors through 2 float64 blocks: ~1e-16 per operation


@pytest.mark.parametrize("storage", ["bfloat16", "float16", "float8_e4m3fn"])
def test_the_residual_layer_norm_is_the_same_bits_in_both_orders(storage: str) -> None:
    """Why the ablation has no arm for the post-LN residual: the fused rule's LN(x), formed beside the matmul from
    the site's own statistics, is the reference order's LN(x) bit for bit (same primitives, same mu and s)."""
    rng = np.random.default_rng(11)
    n, m = 64, 48
    x = (rng.standard_normal((5, 7, n)) * 3 + rng.standard_normal(n) * 20).astype(resolve_dtype(storage))  # outliers
    gamma, beta = (1 + 0.1 * rng.standard_normal(n)), 0.1 * rng.standard_normal(n)
    F = rng.standard_normal((n, m)) / np.sqrt(n)
    F_prime, b = fusion.fold_layer_norm(gamma, beta, F)
    ex = Fp8Executor() if storage == "float8_e4m3fn" else NumpyExecutor(storage=storage)
    _, ln_fused = fusion.layer_norm_linear_folded(x, F_prime, b, 1e-12, ex=ex, norm=(gamma, beta))
    _, ln_ref = fusion.layer_norm_linear_reference(x, gamma, beta, F, 1e-12, ex=ex, return_norm=True)
    assert ln_fused.dtype == ln_ref.dtype and np.array_equal(ln_fused, ln_ref)


def test_the_wide_bias_probe_keeps_the_folded_bias_in_float32() -> None:
    """b' = beta F + b is rounded once to the bias's format by default, and kept in float32 by the probe (the same
    float64 sum, rounded to float32 instead)."""
    p = {k: v.astype(resolve_dtype("bfloat16")) for k, v in TINY.params.items()}
    folded, wide = prepare(p, TINY.cfg, "fused"), prepare(p, TINY.cfg, "fused", bias_dtype=np.float32)
    for k in ("layer.0.qkv_bias", "layer.1.ffn_up_bias"):
        assert folded[k].dtype == resolve_dtype("bfloat16") and wide[k].dtype == np.float32
        assert np.array_equal(wide[k].astype(resolve_dtype("bfloat16")), folded[k])  # the same sum, rounded twice
        assert not np.array_equal(wide[k], folded[k].astype(np.float32))
    baseline = prepare(p, TINY.cfg, "baseline", bias_dtype=np.float32)
    assert baseline["layer.0.qkv_bias"].dtype == resolve_dtype("bfloat16")  # nothing is folded in baseline


def test_the_floor_does_not_hide_a_real_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 storage: the fused order of the tiny BERT is no worse than baseline (their differences are below the
    spread's floor); with the planted mutant "the fold stored in bfloat16" (a rounding 2^16 times coarser than
    float32's) the same study reads worse on cosine mean, floor and all."""
    config = StudyConfig(sentences=24, dtypes=("float32",))

    def study() -> ModelStudy:
        return study_bert(TINY, load_corpus(), config, name="tiny-bert", mitigations={}, ablations={}, hazard=False)

    assert study().verdicts[0].no_worse

    def fold_in_bfloat16(gamma: np.ndarray, beta: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        F_prime, bF = fusion.fold_layer_norm(gamma, beta, F, dtype=np.float64)
        return F_prime.astype(resolve_dtype("bfloat16")).astype(F.dtype), bF

    monkeypatch.setattr("normfuse_ref.accuracy.minilm.fold_in_weight_dtype", fold_in_bfloat16)
    v = study().verdicts[0]
    assert "cosine_mean" in v.worse_figures
    cos = v.figures[0]
    assert cos.worse_by > 10 * cos.floor and cos.floor > cos.spread  # the floor is the bar here, far below the loss


@pytest.fixture(scope="module")
def tiny_bert_study() -> ModelStudy:
    config = StudyConfig(sentences=24, dtypes=("float32", "bfloat16"), mitigate="always")
    return study_bert(TINY, load_corpus(), config, name="tiny-bert")


def test_the_tiny_bert_study(tiny_bert_study: ModelStudy) -> None:
    s = tiny_bert_study
    oracle = s.run(ORACLE).figures
    assert oracle == {"cosine_mean": 1.0, "cosine_min": 1.0, "neighbour_agreement": 1.0}
    f32 = s.run(RunSpec("float32", "fused")).figures
    assert 1 - f32["cosine_min"] < 1e-10 and f32["neighbour_agreement"] == 1.0
    labels = {r.spec.label for r in s.runs}
    assert {"bfloat16 fused+compensate", "bfloat16 fused+subtract permuted", "bfloat16 fused+wide-fold"} <= labels
    assert isinstance(s.hazard, HazardReport) and s.hazard.sites and s.hazard.cells
    assert {c.dtype for c in s.hazard.cells} == {"bfloat16"}  # float32 storage has no centring hazard to measure
    quick = study_bert(TINY, load_corpus(), StudyConfig(sentences=24, dtypes=("bfloat16",), mitigate="never"))
    assert quick.hazard is None and {r.spec.mitigation for r in quick.runs} == {None}  # the quick profile: neither
    assert [r["variant"] for r in s.costs["sites"]][:5] == list(VARIANTS)


def test_the_hazard_prediction_holds_where_it_says_the_fold_breaks(tiny_bert_study: ModelStudy) -> None:
    """At 4x the predicted threshold of |mu|/sigma the fused order's error must exceed the reference's, at 1/4 of it
    the fold must not matter: the prediction is checked by measurement, in every cell."""
    h = tiny_bert_study.hazard
    assert h is not None
    for c in h.cells:
        sweep = dict(c.sweep)
        lo, hi = sweep[min(sweep)], sweep[max(sweep)]
        assert hi.ratio > 1.5 and hi.ratio > 2 * lo.ratio, c
        assert c.mitigations["compensate"].failing == 0 and c.mitigations["subtract"].failing == 0, c


def test_the_hazard_reads_the_float64_runs_layer_norm_inputs(tiny_bert_study: ModelStudy) -> None:
    """The study records the LayerNorm inputs as its float64 run embeds the sentences (`minilm.embed` on a
    `hazard.Recorder`) instead of running that forward again: the same report as the hazard's own forward passes,
    and a recorder of other sentence groups is refused."""
    groups = sentence_groups(TINY, SENTENCES)
    runs = BertRuns(TINY.params, TINY.cfg)
    assert measure_hazard(TINY, runs, groups, ("bfloat16",)) == tiny_bert_study.hazard
    rec = Recorder(storage=np.float64)
    embed(runs, ORACLE, groups[:-1], len(SENTENCES), rec)
    with pytest.raises(ValueError, match="sentence groups"):
        measure_hazard(TINY, runs, groups, ("bfloat16",), rec)


def test_the_page_carries_the_hazard_and_costs(tiny_bert_study: ModelStudy) -> None:
    doc = study_document([tiny_bert_study])
    page = markdown([tiny_bert_study], doc)
    again = studies_from_document(document_of_page(page))
    assert markdown(again, study_document(again)) == page
    assert (
        "The LayerNorm centring hazard on real activations" in page
        and "One LayerNorm -> linear site" in page
        and "| opt-66b ffn_up | 9216 x 36864 | 8 | 1 |" in page
        and "### Where the loss comes from: the ablation" in page
        and "| normalisation -> linear folds only, wide-bias |" in page
    )


def test_what_the_mitigations_cost_on_the_machine() -> None:
    """At MiniLM's and OPT-66B's sites, one token and 128, 8- and 16-bit weights: the fused order exposes no
    collective and beats baseline; compensation adds SIMD work after the matmul (slower than fused, strictly) and
    no collective on its path, and costs less than subtracting the mean first, which puts the mean's collective
    back in front of the matmul; the wide fold streams twice the weight bytes, which a one-token step (bound by
    weight streaming) pays for and 128 tokens (bound by multiply-accumulates) do not. Extra memory: r is one
    float32 a column, the wide fold the matrix again at the weights' width."""
    costs = site_costs((*bert_sites(get_preset("all-minilm-l6-v2")), *LARGE_SITES))
    by: dict[tuple[object, ...], dict[str, SiteCost]] = {}
    for c in costs:
        by.setdefault((c.model, c.op, c.tokens, c.weight_bits), {})[c.variant] = c
    assert len(by) == 16 and all(set(v) == set(VARIANTS) for v in by.values())
    for key, v in by.items():
        base, fused, comp, sub, wide = (v[k] for k in ("baseline", "fused", "compensate", "subtract", "wide-fold"))
        assert fused.latency_us < base.latency_us and fused.collective_exposed_us == 0, key
        assert comp.collective_exposed_us == 0 and fused.latency_us < comp.latency_us < sub.latency_us, key
        assert sub.collective_exposed_us > 0, key
        if key[2] == 1:
            assert wide.latency_us > fused.latency_us, key
        assert comp.extra_weight_bytes == 4 * comp.m and sub.extra_weight_bytes == 0, key
        assert wide.extra_weight_bytes == comp.n * comp.m * comp.weight_bits // 8, key


def test_minilm_float32_orders_agree_with_float64(minilm: BertModel) -> None:  # noqa: F811
    """The real model: float32 embeddings in both orders within a cosine of 1 - 1e-10 of float64's (a few float32
    roundings through 6 blocks of width 384 and 1536: errors ~1e-6 relative, cosine deficit ~ their square)."""
    model = minilm
    sentences = load_corpus().sentences(48)
    runs, groups = BertRuns(model.params, model.cfg), sentence_groups(model, sentences)
    e64 = embed(runs, ORACLE, groups, len(sentences))
    for order in ("baseline", "fused"):
        e = embed(runs, RunSpec("float32", order), groups, len(sentences))
        assert np.min(np.sum(e * e64, axis=-1)) > 1 - 1e-10, order
