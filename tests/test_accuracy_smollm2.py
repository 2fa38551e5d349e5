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
from normfuse_ref.accuracy.metrics import Reference, ScoreAccumulator, log_softmax
from normfuse_ref.accuracy.smollm2 import LlamaRuns, Runner, corpus_windows
from normfuse_ref.accuracy.study import ORACLE, RunSpec, StudyConfig
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
