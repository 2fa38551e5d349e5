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
a window (T, V) are held only while that window is scored. Both it and `Reference.of` work through a window
`ROWS` positions at a time: each position's figures are computed from its own row alone, so the blocks change no
bit of them, and a block's float64 temporaries (~6 MB for SmolLM2's 49,152 logits) are reused from one block to the
next instead of ~200 MB arrays page-faulted in afresh for every window (~1 s of system time a window and run on the
2-core AMD EPYC test machine, 12-02; a page fault there costs 7-10 us).
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

#: Positions scored at a time by `Reference.of` and `ScoreAccumulator.add` (module docstring).
ROWS = 16


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
        z = np.asarray(logits64)  # (T, V)
        p = np.empty(z.shape, np.float64)  # (T, V)
        neg_entropy, top1 = np.empty(z.shape[0], np.float64), np.empty(z.shape[0], np.int64)  # (T,)
        for i in range(0, z.shape[0], ROWS):  # ROWS positions at a time (module docstring)
            b = slice(i, i + ROWS)
            logp = log_softmax(z[b])  # (rows, V)
            np.exp(logp, out=p[b])
            neg_entropy[b] = np.sum(p[b] * logp, axis=-1)
            top1[b] = np.argmax(logp, axis=-1)
        return cls(p=p, neg_entropy=neg_entropy, top1=top1)


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
        zs = np.asarray(logits)  # (T, V)
        T = zs.shape[0]
        nll, kl, top1 = np.empty(T, np.float64), np.empty(T, np.float64), np.empty(T, np.bool_)  # (T,)
        for i in range(0, T, ROWS):  # ROWS positions at a time (module docstring)
            b = slice(i, i + ROWS)
            z, p = np.asarray(zs[b], dtype=np.float64), ref.p[b]  # (rows, V)
            m = np.max(z, axis=-1, keepdims=True)  # (rows, 1)
            with np.errstate(invalid="ignore", over="ignore"):
                lse = (m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)))[:, 0]  # (rows,)
                nll[b] = lse - z[np.arange(lse.size), targets[b]]
                kl[b] = ref.neg_entropy[b] - (np.einsum("tv,tv->t", p, z) - lse * np.sum(p, axis=-1))
            top1[b] = np.argmax(z, axis=-1) == ref.top1[b]
        self.nll.append(nll)
        self.kl.append(np.maximum(kl, 0.0))  # KL >= 0: a negative value is rounding of ~1e-16, read as 0
        self.top1.append(top1)

    def result(self) -> LMScores:
        nll, kl = np.concatenate(self.nll), np.concatenate(self.kl)  # (N,)
        return LMScores(
            tokens=int(nll.size),
            perplexity=float(np.exp(np.mean(nll))),
            top1_agreement=float(np.mean(np.concatenate(self.top1))),
            kl_mean=float(np.mean(kl)),
            kl_p99=float(np.percentile(kl, 99)),
        )
