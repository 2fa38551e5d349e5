"""The study's machinery on a tiny random Llama: the second summation order, fp8 operands, the verdict rule, the
whole pipeline, and its JSON and Markdown (regenerated from the data the page carries)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from normfuse_ref.accuracy.corpus import load_corpus
from normfuse_ref.accuracy.fp8 import E4M3_MAX, Fp8Executor, quantise, round_e4m3fn
from normfuse_ref.accuracy.metrics import agreement_length
from normfuse_ref.accuracy.orders import permute_llama
from normfuse_ref.accuracy.report import document_of_page, markdown, studies_from_document, study_document
from normfuse_ref.accuracy.smollm2 import LlamaRuns, Runner, corpus_prompts, study_llama
from normfuse_ref.accuracy.study import (
    FIGURES,
    ORACLE,
    ModelStudy,
    Progress,
    RunRecord,
    RunSpec,
    StudyConfig,
    judge,
    run_plan,
    spread_floor,
)
from normfuse_ref.models.llama.forward import forward
from normfuse_ref.models.llama.model import load_model
from normfuse_ref.models.llama.weights import prepare
from normfuse_ref.ops import NumpyExecutor

TINY = load_model("tiny", "float32", seed=5)
IDS = np.random.default_rng(0).integers(0, TINY.cfg.vocab_size, 48)


def _logits(params: dict[str, np.ndarray], dtype: str, mode: str = "baseline") -> np.ndarray:
    p = {k: v.astype(dtype) for k, v in params.items()}
    z, _ = forward(prepare(p, TINY.cfg, mode), TINY.cfg, IDS, None, mode=mode, ex=NumpyExecutor(storage=dtype))  # type: ignore[arg-type]
    return np.asarray(z)


def test_the_permuted_model_is_the_same_model_summed_in_another_order() -> None:
    perm = permute_llama(TINY.params, TINY.cfg)
    assert all(not np.array_equal(perm[k], TINY.params[k]) for k in perm if perm[k].size > 1)
    z, zp = _logits(dict(TINY.params), "float64"), _logits(perm, "float64")
    # The same logits in exact arithmetic: float64 rounding through 2 blocks of width 64 is ~1e-15 of the scale.
    assert np.max(np.abs(z - zp)) <= 1e-12 * np.max(np.abs(z))
    z32, zp32 = _logits(dict(TINY.params), "float32"), _logits(perm, "float32")
    assert not np.array_equal(z32, zp32)  # ... but another rounding: the spread it measures is not 0 by design


def test_quantise_is_e4m3fn_with_power_of_two_scales() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 16)) * np.array([[1e-3], [1], [30], [2e4], [0]])  # rows of very different scale
    q = quantise(a, axis=-1)
    for row, qrow in zip(a, q, strict=True):
        amax = np.abs(row).max()
        if amax == 0:
            assert not qrow.any()
            continue
        scale = 2.0 ** np.floor(np.log2(E4M3_MAX / amax))
        assert E4M3_MAX / 2 < amax * scale <= E4M3_MAX  # the largest entry lands in (224, 448]
        on_grid = (qrow * scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float64) / scale
        assert np.array_equal(on_grid, qrow)  # every entry is an e4m3fn number times the scale
        assert np.max(np.abs(qrow - row)) <= 2.0**-4 * amax  # half an ulp of e4m3fn at the top binade, at most
    assert np.array_equal(quantise(a.T, axis=-2), q.T)  # columns the same way


def _float32_rounding_cases() -> np.ndarray:
    """Float32 numbers that reach every case of rounding to e4m3fn: each sign and exponent, each pattern of the
    11 leading fraction bits (the 3 e4m3fn keeps, the tie bit and the next 7), and low bits that put a value on,
    just above and just below a tie; with +-0, +-inf and NaN among them."""
    high = (np.arange(2 * 256, dtype=np.uint32)[:, None] << np.uint32(23)) | (
        np.arange(1 << 11, dtype=np.uint32)[None, :] << np.uint32(12)
    )  # (512, 2048)   sign, exponent, leading fraction bits
    low = np.array([0, 1, 0x7FF, 0x800, 0x801, 0xFFE, 0xFFF], dtype=np.uint32)
    return (high.reshape(-1, 1) | low).view(np.float32).ravel()  # (7.3M,)


def test_round_e4m3fn_is_the_e4m3fn_cast() -> None:
    v = _float32_rounding_cases()
    with np.errstate(invalid="ignore", over="ignore"):
        cast = v.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    fast = round_e4m3fn(v.copy())
    assert np.array_equal(np.isnan(fast), np.isnan(cast))
    assert np.array_equal(fast.view(np.uint32), cast.view(np.uint32))  # the same bits, signs of zero and NaN too
    # quantise's scaled path (overflow=False) on values it can meet: |v| <= 448
    inside = v[np.abs(v) <= E4M3_MAX]
    assert np.array_equal(round_e4m3fn(inside.copy(), overflow=False).view(np.uint32),
                          cast[np.abs(v) <= E4M3_MAX].view(np.uint32))  # fmt: skip


def test_fp8_executor_quantises_operands() -> None:
    ex = Fp8Executor()
    rng = np.random.default_rng(3)
    x, F = rng.standard_normal((3, 8)), rng.standard_normal((8, 4)).astype(np.float32)
    y = ex.matmul(x, F, op="ffn_down")
    assert np.array_equal(y, (quantise(x, -1) @ F).astype(ml_dtypes.bfloat16))  # weights as given: quantised offline
    Fa = rng.standard_normal((8, 4))
    ya = ex.matmul(x, Fa, op="attn_pv")
    assert np.array_equal(ya, (quantise(x, -1) @ quantise(Fa, -2)).astype(ml_dtypes.bfloat16))


def _record(spec: RunSpec, **figures: float) -> RunRecord:
    return RunRecord(spec, {f.key: figures.get(f.key, 0.5) for f in FIGURES["bert"]})


def test_the_verdict_needs_a_loss_beyond_the_spread_in_both_summation_orders() -> None:
    def runs(b: float, bp: float, f: float, fp: float) -> list[RunRecord]:
        return [
            _record(ORACLE, cosine_mean=1.0),
            _record(RunSpec("bfloat16", "baseline"), cosine_mean=b),
            _record(RunSpec("bfloat16", "baseline", "permuted"), cosine_mean=bp),
            _record(RunSpec("bfloat16", "fused"), cosine_mean=f),
            _record(RunSpec("bfloat16", "fused", "permuted"), cosine_mean=fp),
        ]

    def worse(*cos: float) -> bool:
        return judge("bert", runs(*cos), "bfloat16").figures[0].worse

    assert worse(0.99, 0.989, 0.95, 0.951)  # spread 0.001, fused lower by ~0.04 in both
    assert not worse(0.99, 0.989, 0.95, 0.995)  # lower in one summation order only: chance
    assert not worse(0.99, 0.95, 0.96, 0.955)  # within the spread (0.04)
    assert not worse(0.99, 0.989, 0.995, 0.996)  # better
    assert worse(0.99, 0.989, float("nan"), float("nan"))  # NaN where baseline is finite
    v = judge("bert", runs(0.99, 0.989, 0.95, 0.951), "bfloat16")
    assert v.worse_figures == ["cosine_mean"] and not v.no_worse


def test_the_spread_has_a_floor_of_a_few_float32_roundings_and_counts_have_none() -> None:
    """MiniLM float32's case: cosines 1 - 1.7e-13 and 1 - 1.9e-13, spread 1.4e-14, are the same number in float32
    (an ulp of 1 is 6e-8): no worse. A bfloat16-sized loss (1e-6) is above the floor; a count (neighbour agreement)
    has no floor, so one sentence in 256 more disagreeing in both summation orders is a loss."""

    def verdict(dtype: str, b: float, bp: float, f: float, fp: float, key: str = "cosine_mean") -> bool:
        runs = [
            _record(ORACLE, cosine_mean=1.0, neighbour_agreement=1.0),
            _record(RunSpec(dtype, "baseline"), **{key: b}),
            _record(RunSpec(dtype, "baseline", "permuted"), **{key: bp}),
            _record(RunSpec(dtype, "fused"), **{key: f}),
            _record(RunSpec(dtype, "fused", "permuted"), **{key: fp}),
        ]
        fv = next(x for x in judge("bert", runs, dtype).figures if x.figure.key == key)
        return fv.worse

    assert spread_floor("float32", 1.0) == spread_floor("bfloat16", 1.0) == 4 * 2.0**-24  # u(float32) = 2^-24
    assert spread_floor("float8_e4m3fn", 0.5, -2.0) == 4 * 2.0**-24 * 2  # the largest |value|, float32 accumulation
    assert not verdict("float32", 1 - 1.72e-13, 1 - 1.86e-13, 1 - 1.92e-13, 1 - 2.08e-13)
    assert verdict("bfloat16", 1 - 3.9e-5, 1 - 3.9e-5, 1 - 4.1e-5, 1 - 4.1e-5)
    assert not verdict("bfloat16", 1 - 3.9e-5, 1 - 3.9e-5, 1 - 3.91e-5, 1 - 3.91e-5)  # 1e-8: below 4 u = 2.4e-7
    assert verdict("float32", 1.0, 1.0, 255 / 256, 255 / 256, "neighbour_agreement")


def test_greedy_agreement_by_teacher_forcing_equals_decoding() -> None:
    """Two implementations of the greedy figure: each run decoding token by token and counting the leading tokens
    it shares with the float64 run's continuation, and the study's one teacher-forced pass over the float64
    continuation (`Runner.greedy_agreement`). The tiny model's bfloat16 and fp8 runs leave the float64 path at
    various steps (0 to 23 of 24), so a shift of one position or a wrong first step would show."""
    config = StudyConfig(prompts=8, prompt_tokens=4, new_tokens=24)
    prompts = corpus_prompts(load_corpus(), TINY.tokenizer, config)  # type: ignore[arg-type]
    runs = LlamaRuns(TINY.params, TINY.cfg)
    g64 = Runner(runs, ORACLE).greedy(prompts, config.new_tokens)  # (P, n)
    seen: set[int] = set()
    for dtype in ("float32", "bfloat16", "float16", "float8_e4m3fn"):
        for order in ("baseline", "fused"):
            runner = Runner(runs, RunSpec(dtype, order))
            decoded = runner.greedy(prompts, config.new_tokens)
            expected = [agreement_length(a.tolist(), b.tolist()) for a, b in zip(decoded, g64, strict=True)]
            assert runner.greedy_agreement(prompts, g64) == expected, (dtype, order)
            seen |= set(expected)
    assert {0, config.new_tokens} <= seen and len(seen) > 5  # disagreements at the first, last and between


def test_mitigations_run_where_the_fused_order_is_worse() -> None:
    """With mitigate="when-worse" a dtype's mitigations run only after its fused order was judged worse."""
    fused_cos = {"float32": 1.0, "bfloat16": 0.90}  # only bfloat16's fused order is worse than its baseline (1.0)
    asked: list[str] = []

    def run(spec: RunSpec, label: str, _progress: Progress) -> RunRecord:
        asked.append(label)
        cos = 1.0 if spec.order != "fused" or spec.mitigation else fused_cos.get(spec.dtype, 1.0)
        return _record(spec, cosine_mean=cos if spec != ORACLE else 1.0)

    config = StudyConfig(dtypes=("float32", "bfloat16"))
    records, verdicts = run_plan("bert", "m", config, {"float32": ("compensate",), "bfloat16": ("compensate",)}, run)
    # run in stages (the oracle, every dtype's four, the arms), recorded per dtype
    assert asked[:9] == ["m float64 float64"] + [
        f"m {d} {o}{s}" for d in ("float32", "bfloat16") for o in ("baseline", "fused") for s in ("", " permuted")
    ]
    assert [r.spec.label for r in records] == [s.removeprefix("m ") for s in asked]  # bfloat16's arm ran last
    assert [(v.dtype, v.mitigation, v.no_worse) for v in verdicts] == [
        ("float32", None, True),
        ("bfloat16", None, False),
        ("bfloat16", "compensate", True),
    ]
    assert "float32 fused+compensate" not in asked and "m bfloat16 fused+compensate permuted" in asked

    # mitigate="never" (the quick profile): the same base runs and verdicts, no arm even where the fused order is worse
    asked.clear()
    never = StudyConfig(dtypes=("float32", "bfloat16"), mitigate="never")
    records, verdicts = run_plan("bert", "m", never, {"float32": ("compensate",), "bfloat16": ("compensate",)}, run)
    assert [(v.dtype, v.mitigation, v.no_worse) for v in verdicts] == [
        ("float32", None, True),
        ("bfloat16", None, False),
    ]
    assert len(records) == 1 + 2 * 4 and not any("+" in a for a in asked)


@pytest.fixture(scope="module")
def tiny_study() -> ModelStudy:
    config = StudyConfig(
        tokens=64,
        window=32,
        prompts=2,
        prompt_tokens=4,
        new_tokens=4,
        dtypes=("float32", "bfloat16"),
        mitigate="always",
    )
    return study_llama(TINY, load_corpus(), config, name="tiny")


def test_the_tiny_study(tiny_study: ModelStudy) -> None:
    s = tiny_study
    assert s.corpus.tokens == 62  # two windows of 32 tokens, each scoring 31 positions
    oracle = s.run(ORACLE).figures
    assert oracle["top1_agreement"] == 1.0 and oracle["kl_mean"] <= 1e-14 and oracle["greedy_agreement_tokens"] == 4
    labels = [r.spec.label for r in s.runs]
    assert "bfloat16 fused+wide-fold permuted" in labels and len(labels) == len(set(labels)) == 1 + 4 + 6
    f32 = s.run(RunSpec("float32", "fused")).figures
    b16 = s.run(RunSpec("bfloat16", "fused")).figures
    assert f32["kl_mean"] < 1e-8 < b16["kl_mean"]  # float32 rounding is invisible next to bfloat16's
    assert f32["perplexity"] == pytest.approx(oracle["perplexity"], rel=1e-5)
    assert [v.dtype for v in s.verdicts] == ["float32", "bfloat16", "bfloat16"]


def test_wide_fold_and_fp8_weights() -> None:
    runs = LlamaRuns(TINY.params, TINY.cfg)
    w = runs.weights(RunSpec("bfloat16", "fused"))
    ww = runs.weights(RunSpec("bfloat16", "fused", mitigation="wide-fold"))
    g, F = TINY.params["blk.0.attn_norm.weight"], TINY.params["blk.0.attn_q.weight"]
    fold16 = (g.astype(ml_dtypes.bfloat16).astype(np.float64)[:, None] * F.astype(ml_dtypes.bfloat16)).astype(
        np.float64
    )
    q = F.shape[1]
    assert np.array_equal(w["blk.0.attn_qkv"][:, :q], fold16.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert np.array_equal(ww["blk.0.attn_qkv"][:, :q], fold16.astype(np.float32))  # exact: 8 x 8 bits fit
    w8 = runs.weights(RunSpec("float8_e4m3fn", "baseline"))
    assert np.array_equal(w8["blk.0.attn_qkv"][:, :q], quantise(F, axis=0))
    fresh = LlamaRuns(TINY.params, TINY.cfg).weights(RunSpec("bfloat16", "fused"))  # no stored weights kept yet
    again = runs.weights(RunSpec("bfloat16", "fused"))  # after fp8's, which dropped bfloat16's stored weights
    assert fresh.keys() == w.keys() == again.keys()
    assert all(np.array_equal(fresh[k], w[k]) and np.array_equal(again[k], w[k]) for k in w)


def test_the_page_is_regenerated_from_its_own_data(tiny_study: ModelStudy) -> None:
    doc = study_document([tiny_study])
    page = markdown([tiny_study], doc)
    again = studies_from_document(document_of_page(page))
    assert markdown(again, study_document(again)) == page
    assert "### tiny, bfloat16" in page and tiny_study.corpus.sha256 in page


def test_a_loss_in_one_summation_order_alone_is_not_a_verdict_and_perplexity_counts_its_distance() -> None:
    """Two rules of `judge` that only the committed page pinned before: the loss must exceed the spread in *both*
    summation orders (here it does in the plain order only: 0.03 > 0.01, but 0.01 is not), and perplexity is
    judged by its distance from the float64 run's, either side (a fused perplexity 0.1 below the oracle's is
    worse than a baseline 0.01 above it)."""

    def bert(b: float, bp: float, f: float, fp: float) -> bool:
        runs = [
            _record(ORACLE, cosine_mean=1.0),
            _record(RunSpec("bfloat16", "baseline"), cosine_mean=b),
            _record(RunSpec("bfloat16", "baseline", "permuted"), cosine_mean=bp),
            _record(RunSpec("bfloat16", "fused"), cosine_mean=f),
            _record(RunSpec("bfloat16", "fused", "permuted"), cosine_mean=fp),
        ]
        return judge("bert", runs, "bfloat16").figures[0].worse

    assert not bert(0.99, 0.98, 0.96, 0.97)  # spread 0.01; losses 0.03 (plain) and 0.01 (permuted)
    assert bert(0.99, 0.98, 0.96, 0.95)  # 0.03 in both

    def llama(b: float, bp: float, f: float, fp: float) -> bool:
        def rec(spec: RunSpec, ppl: float) -> RunRecord:
            return RunRecord(spec, {fig.key: ppl if fig.key == "perplexity" else 0.5 for fig in FIGURES["llama"]})

        runs = [
            rec(ORACLE, 10.0),
            rec(RunSpec("bfloat16", "baseline"), b),
            rec(RunSpec("bfloat16", "baseline", "permuted"), bp),
            rec(RunSpec("bfloat16", "fused"), f),
            rec(RunSpec("bfloat16", "fused", "permuted"), fp),
        ]
        return next(v for v in judge("llama", runs, "bfloat16").figures if v.figure.key == "perplexity").worse

    assert llama(10.01, 10.012, 9.9, 9.902)  # fused 0.1 below the oracle, baseline 0.01 above: farther, worse
    assert not llama(10.01, 10.012, 10.005, 10.007)  # closer to the oracle than baseline
