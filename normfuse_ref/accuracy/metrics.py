"""The figures of the accuracy study, each a plain function of arrays, in float64.

A language model (SmolLM2), scored position by position against the float64 run of the same weights:

    log p(v | prefix) = z_v - max z - log sum_u e^{z_u - max z}             `log_softmax`, float64
    perplexity         = exp(mean_t -log p_run(w_{t+1} | w_<=t))            teacher forced over the corpus
    top-1 agreement    = mean_t [argmax_v p_run = argmax_v p_64]
    KL(p_64 || p_run)  = sum_v p_64(v) (log p_64(v) - log p_run(v))          per position; mean and 99th percentile
    greedy agreement   = the number of leading tokens of a greedy continuation equal to the float64 run's

KL is taken *from* the float64 distribution (the reference) to the run's, as llama.cpp's KL-divergence statistics
do: it weighs each token by the probability the exact model gives it. The 99th percentile is numpy's default
(linear interpolation between order statistics).

A sentence encoder (MiniLM), embedding by embedding:

    cosine             = <e_run, e_64> / (|e_run| |e_64|)                   mean and minimum over sentences
    neighbour agreement = mean_i [nn_run(i) = nn_64(i)],  nn(i) = argmax_{j != i} cos(e_i, e_j)

`ScoreAccumulator` collects the per-position scores of one run window by window, so that the float64 logits of
a window (T, V) are held only while that window is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "LMScores",
    "Reference",
    "ScoreAccumulator",
    "agreement_length",
    "cosine_rows",
    "log_softmax",
    "nearest_neighbours",
]

F64 = NDArray[np.float64]


def log_softmax(z: ArrayLike) -> F64:
    """log softmax over the last axis, in float64, shifted by the row max (a row with a NaN or +inf is NaN)."""
    z64 = np.asarray(z, dtype=np.float64)  # (..., V)
    m = np.max(z64, axis=-1, keepdims=True)  # (..., 1)
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = z64 - m  # (..., V)
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))  # (..., V)


def agreement_length(tokens: Sequence[int], reference: Sequence[int]) -> int:
    """How many leading tokens of `tokens` equal those of `reference` (0 if the first differs)."""
    n = 0
    for a, b in zip(tokens, reference, strict=False):
        if a != b:
            break
        n += 1
    return n


def cosine_rows(a: ArrayLike, b: ArrayLike) -> F64:
    """Cosine of each row of a (N, d) with the same row of b, in float64 (NaN for a zero or non-finite row)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)  # (N, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(a64 * b64, axis=-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))  # (N,)


def nearest_neighbours(e: ArrayLike) -> NDArray[np.int64]:
    """For each row of e (N, d), the index of the most cosine-similar *other* row (ties: the lowest index)."""
    e64 = np.asarray(e, dtype=np.float64)  # (N, d)
    if e64.shape[0] < 2:
        raise ValueError(f"nearest neighbours need at least 2 embeddings; got {e64.shape[0]}")
    with np.errstate(invalid="ignore", divide="ignore"):
        u = e64 / np.linalg.norm(e64, axis=-1, keepdims=True)  # (N, d)
    c = u @ u.T  # (N, N)
    np.fill_diagonal(c, -np.inf)
    c = np.where(np.isnan(c), -np.inf, c)  # a NaN embedding is nobody's neighbour
    return np.argmax(c, axis=-1).astype(np.int64)  # (N,)


@dataclass(frozen=True)
class LMScores:
    """The teacher-forced figures of one run over the corpus."""

    tokens: int  # positions scored
    perplexity: float
    top1_agreement: float  # fraction of positions, in [0, 1]
    kl_mean: float  # nats
    kl_p99: float  # nats


@dataclass(frozen=True)
class Reference:
    """What scoring a window against the float64 run needs from that run, computed once per window:
    p_64 (T, V), sum_v p_64 log p_64 (T,) and argmax_v p_64 (T,)."""

    p: F64
    neg_entropy: F64
    top1: NDArray[np.int64]

    @classmethod
    def of(cls, logits64: ArrayLike) -> Reference:
        logp = log_softmax(logits64)  # (T, V)
        p = np.exp(logp)  # (T, V)
        return cls(p=p, neg_entropy=np.sum(p * logp, axis=-1), top1=np.argmax(logp, axis=-1))


@dataclass
class ScoreAccumulator:
    """Per-position scores of one run, gathered window by window (see the module docstring).

    Per position, with z the run's logits and lse = log sum_v e^{z_v} (shifted by the max):

        -log p_run(target) = lse - z_target
        KL(p_64 || p_run)  = sum_v p_64 log p_64 - sum_v p_64 (z_v - lse)

    (the second sum written out, so that log p_run (T, V) is never formed: one exponential pass per window and run).
    The terms are O(1) nats and float64 carries 16 digits, so a KL as small as 1e-12 nats keeps ~3 of them (the
    float64 run scored against itself gives +-1e-16, clamped to 0); the test suite checks this against the
    textbook formula.
    """

    nll: list[F64] = field(default_factory=list)
    top1: list[NDArray[np.bool_]] = field(default_factory=list)
    kl: list[F64] = field(default_factory=list)

    def add(self, logits: ArrayLike, ref: Reference, targets: NDArray[np.int64]) -> None:
        """Score one window: logits (T, V) of the run, `ref` of the float64 run's logits on the same positions,
        and targets (T,) the token that follows each position."""
        z = np.asarray(logits, dtype=np.float64)  # (T, V)
        m = np.max(z, axis=-1, keepdims=True)  # (T, 1)
        with np.errstate(invalid="ignore", over="ignore"):
            lse = (m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)))[:, 0]  # (T,)
            self.nll.append(lse - z[np.arange(targets.size), targets])  # (T,)
            kl = ref.neg_entropy - (np.einsum("tv,tv->t", ref.p, z) - lse * np.sum(ref.p, axis=-1))  # (T,)
        self.kl.append(np.maximum(kl, 0.0))  # KL >= 0: a negative value is rounding of ~1e-16, read as 0
        self.top1.append(np.argmax(z, axis=-1) == ref.top1)  # (T,)

    def result(self) -> LMScores:
        nll, kl = np.concatenate(self.nll), np.concatenate(self.kl)  # (N,)
        return LMScores(
            tokens=int(nll.size),
            perplexity=float(np.exp(np.mean(nll))),
            top1_agreement=float(np.mean(np.concatenate(self.top1))),
            kl_mean=float(np.mean(kl)),
            kl_p99=float(np.percentile(kl, 99)),
        )
