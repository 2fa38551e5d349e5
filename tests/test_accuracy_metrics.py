"""The study's figures against independent computations: Python loops over math (no numpy, no scipy), on the logits
of a tiny random Llama in two orders."""

from __future__ import annotations

import math

import numpy as np
import pytest

from normfuse_ref.accuracy.metrics import (
    Reference,
    ScoreAccumulator,
    agreement_length,
    cosine_rows,
    log_softmax,
    nearest_neighbours,
)
from normfuse_ref.models.llama.model import load_model


def _log_probs(row: list[float]) -> list[float]:
    """log softmax of one row, the textbook way: shift by the max, math.fsum of the exponentials."""
    m = max(row)
    lse = m + math.log(math.fsum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


@pytest.fixture(scope="module")
def logits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (T, V) of a tiny random model: in float64 (the reference) and in bfloat16 storage, fused order, so
    that the two differ by real rounding (KL ~1e-5), and the next tokens."""
    model = load_model("tiny", "float64", seed=3)
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, 40)
    z64, _ = model.forward(ids, mode="baseline")  # (T, V)
    low = load_model("tiny", "bfloat16", seed=3)
    z16, _ = low.forward(ids, mode="fused")  # (T, V)
    return np.asarray(z64)[:-1], np.asarray(z16, dtype=np.float32)[:-1], ids[1:]


def test_scores_match_a_direct_log_softmax_loop(logits: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    z64, z, targets = logits
    acc = ScoreAccumulator()
    half = len(targets) // 2
    for sl in (slice(0, half), slice(half, None)):  # two windows: the accumulator must concatenate, not overwrite
        acc.add(z[sl], Reference.of(z64[sl]), targets[sl])
    s = acc.result()

    nll, kl, top1 = [], [], []
    for t in range(len(targets)):
        lp = _log_probs([float(v) for v in z[t]])
        lr = _log_probs([float(v) for v in z64[t]])
        nll.append(-lp[int(targets[t])])
        kl.append(math.fsum(math.exp(a) * (a - b) for a, b in zip(lr, lp, strict=True)))
        top1.append(lp.index(max(lp)) == lr.index(max(lr)))
    ppl = math.exp(math.fsum(nll) / len(nll))
    kls = sorted(kl)
    rank = 0.99 * (len(kls) - 1)  # linear interpolation between order statistics (numpy's default percentile)
    lo = math.floor(rank)
    p99 = kls[lo] + (rank - lo) * (kls[min(lo + 1, len(kls) - 1)] - kls[lo])

    assert s.tokens == len(targets)
    # Perplexity: both are exp of a mean of O(1) nats summed in float64, so they agree to ~1e-15 relative.
    assert s.perplexity == pytest.approx(ppl, rel=1e-12)
    assert s.top1_agreement == sum(top1) / len(top1)
    assert 0 < min(kl)  # the orders differ: KL is a real, not a vacuous, comparison
    # KL: the accumulator writes sum p_64 (z - lse) out instead of forming log p_run; its terms are O(10) nats
    # over V = 256 entries, so float64 leaves an absolute error of ~256 * 10 * 1e-16 ~ 1e-13 against ~1e-5 here.
    assert s.kl_mean == pytest.approx(math.fsum(kl) / len(kl), abs=1e-12)
    assert s.kl_p99 == pytest.approx(p99, abs=1e-12)


def test_a_run_scored_against_itself(logits: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    z64, _, targets = logits
    acc = ScoreAccumulator()
    acc.add(z64, Reference.of(z64), targets)
    s = acc.result()
    assert s.top1_agreement == 1.0
    # The exact KL is 0; what is left is float64 rounding of O(10)-nat terms over 256 entries (~1e-15, never < 0).
    assert 0.0 <= s.kl_mean <= 1e-14 and 0.0 <= s.kl_p99 <= 1e-14


def test_log_softmax_rows_sum_to_one() -> None:
    z = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    lp = log_softmax(z)
    assert np.allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-15, atol=0)
    assert lp[1].tolist() == pytest.approx(_log_probs([1.0, 2.0, 3.0]), rel=1e-15)


def test_agreement_length() -> None:
    assert agreement_length([1, 2, 3], [1, 2, 3]) == 3
    assert agreement_length([1, 2, 3], [1, 5, 3]) == 1
    assert agreement_length([4, 2], [1, 2]) == 0
    assert agreement_length([1, 2], [1, 2, 3]) == 2


def test_cosine_and_nearest_neighbours_against_loops() -> None:
    rng = np.random.default_rng(1)
    e = rng.standard_normal((12, 5))
    f = e + 0.1 * rng.standard_normal((12, 5))

    def cos(a: list[float], b: list[float]) -> float:
        return math.fsum(x * y for x, y in zip(a, b, strict=True)) / (
            math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
        )

    rows = [r.tolist() for r in e]
    assert cosine_rows(e, f).tolist() == pytest.approx([cos(a, b.tolist()) for a, b in zip(rows, f, strict=True)])
    nn = []
    for i in range(12):
        others = [j for j in range(12) if j != i]
        sims = [cos(rows[i], rows[j]) for j in others]
        nn.append(others[sims.index(max(sims))])
    assert nearest_neighbours(e).tolist() == nn
    with pytest.raises(ValueError, match="at least 2"):
        nearest_neighbours(e[:1])
