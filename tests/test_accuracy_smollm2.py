"""The study on the real SmolLM2 in float32 storage: both orders within a justified tolerance of each other and of
the float64 run, and the figures consistent with the logit differences that produce them.

Tolerance: `smollm2_tol` (tests/tolerances.py, the probabilistic float32 bound of a 30-block forward pass,
~7e-3 logits for SmolLM2). The figures then follow from the logit differences delta = z_run - z_64 of each position,
exactly, with no further tolerance:
- KL(p_64 || p_run) = log E_64[e^{delta - E_64 delta}] <= range(delta)^2 / 8 (Hoeffding's lemma);
- each next-token loss -log p(w) = lse(z) - z_w moves by at most range(delta), so log perplexity does too;
- the top-1 token cannot change where the float64 run's top-2 margin exceeds range(delta).
"""

from __future__ import annotations

import numpy as np
import pytest

from normfuse_ref.accuracy.corpus import load_corpus
from normfuse_ref.accuracy.metrics import Reference, ScoreAccumulator, agreement_length, log_softmax
from normfuse_ref.accuracy.smollm2 import LlamaRuns, Runner, corpus_prompts, corpus_windows
from normfuse_ref.accuracy.study import ORACLE, RunSpec, StudyConfig
from normfuse_ref.models.llama.forward import empty_cache, forward
from normfuse_ref.models.llama.model import Model
from tests.tolerances import smollm2_tol

from .test_model_smollm2 import model  # noqa: F401  (the fixture fetches the model once)


@pytest.fixture(scope="module")
def window(model: Model) -> np.ndarray:  # noqa: F811
    assert model.tokenizer is not None
    ids = model.tokenizer.encode(load_corpus().text)
    assert len(ids) >= 4000  # the corpus size: the default study reads 4,096 of them
    return corpus_windows(ids, StudyConfig(tokens=96, window=96))[0]


def test_float32_orders_agree_with_each_other_and_with_float64(model: Model, window: np.ndarray) -> None:  # noqa: F811
    runs = LlamaRuns(model.params, model.cfg)
    z64 = Runner(runs, ORACLE).logits(window)[:-1].astype(np.float64)  # (T-1, V)
    ref = Reference.of(z64)
    targets = window[1:]
    lp64 = log_softmax(z64)
    nll64 = -lp64[np.arange(targets.size), targets]
    margin = np.sort(z64, axis=-1)[:, -1] - np.sort(z64, axis=-1)[:, -2]  # (T-1,) float64 top-2 gap
    z = {o: Runner(runs, RunSpec("float32", o)).logits(window)[:-1].astype(np.float64) for o in ("baseline", "fused")}
    tol = smollm2_tol(model.cfg, z64)
    assert np.max(np.abs(z["fused"] - z["baseline"])) <= tol
    for order, zo in z.items():
        delta = zo - z64  # (T-1, V)
        assert np.max(np.abs(delta)) <= tol, order
        rng = delta.max(axis=-1) - delta.min(axis=-1)  # (T-1,)
        acc = ScoreAccumulator()
        acc.add(zo, ref, targets)
        kl = acc.kl[0]
        assert np.all(kl <= rng**2 / 8 + 1e-15), order  # + float64 rounding of the KL itself
        s = acc.result()
        assert abs(np.log(s.perplexity) - np.mean(nll64)) <= np.max(rng), order
        sure = margin > rng
        assert np.all(acc.top1[0][sure]), order
        assert sure.mean() > 0.9  # the check covers nearly every position


def test_greedy_agreement_by_teacher_forcing_against_decoding_on_smollm2(model: Model) -> None:  # noqa: F811
    """The study scores greedy agreement with one teacher-forced pass (`Runner.greedy_agreement`). Decoding token by
    token (fed the float64 continuation G, which is what a greedy decoder is fed until it first disagrees) computes
    the same logits with the products cut into blocks differently, so in bfloat16 storage the two differ by a few
    ulps of the logits. The agreements must then be equal, except where the step that decides differs is a near-tie
    that difference can flip: at the first step where the two disagree, G's token and its best rival are within
    twice the largest logit difference between the two computations, in both. (Measured on 3 prompts x 24 tokens:
    logits differ by up to 4 bfloat16 ulps; one of 9 agreements differs, at a tie 23.25 / 23.25 against 23.5 /
    23.375.) A shifted position or a wrong first step fails this at large margins."""
    assert model.tokenizer is not None
    config = StudyConfig(prompts=3, prompt_tokens=32, new_tokens=24)
    prompts = corpus_prompts(load_corpus(), model.tokenizer, config)
    P, T0, n = config.prompts, config.prompt_tokens, config.new_tokens
    runs = LlamaRuns(model.params, model.cfg)
    g64 = Runner(runs, ORACLE).greedy(prompts, n)  # (P, n)
    equal = 0
    for spec in (RunSpec("bfloat16", "fused"), RunSpec("float8_e4m3fn", "baseline"), RunSpec("float8_e4m3fn", "fused")):
        r = Runner(runs, spec)
        cache = empty_cache(r.cfg, r.w["token_embd"].dtype, batch=P, capacity=T0 + n)
        ids, steps = prompts, []
        for t in range(n):  # the decoder, fed G: its greedy run until its first disagreement
            logits, cache = forward(r.w, r.cfg, ids, cache, mode=r.mode, ex=r.ex)  # (P, T, V)
            steps.append(np.asarray(logits[:, -1], dtype=np.float32))  # (P, V)
            ids = g64[:, t : t + 1]  # (P, 1)
        dec = np.stack(steps, axis=1)  # (P, n, V)
        full, _ = forward(r.w, r.cfg, np.concatenate([prompts, g64[:, : n - 1]], axis=1), None, mode=r.mode, ex=r.ex)
        tf = np.asarray(full[:, T0 - 1 :], dtype=np.float32)  # (P, n, V)   the same steps, one prefill
        decoded = [agreement_length(np.argmax(d, axis=-1).tolist(), g.tolist()) for d, g in zip(dec, g64, strict=True)]
        forced = r.greedy_agreement(prompts, g64)
        assert forced == [
            agreement_length(np.argmax(z, axis=-1).tolist(), g.tolist()) for z, g in zip(tf, g64, strict=True)
        ]
        for b in range(P):
            if decoded[b] == forced[b]:
                equal += 1
                continue
            t = min(decoded[b], forced[b])  # the first step the two computations decide differently
            delta = float(np.max(np.abs(dec[b, t] - tf[b, t])))
            for z in (dec[b, t], tf[b, t]):
                rival = np.max(np.delete(z, g64[b, t]))
                assert abs(float(z[g64[b, t]] - rival)) <= 2 * delta, (spec.label, b, t)
    assert equal >= 7  # most agreements are equal outright (8 of 9 measured)
