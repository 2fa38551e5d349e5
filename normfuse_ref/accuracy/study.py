"""The accuracy claim on real models: both orders, every storage dtype, each against a float64 run.

The paper says the fused order "maintains model accuracy". This module measures it on real models, in the formats
accelerators store activations in, with float32 accumulation (docs/numerics.md):

- **SmolLM2-135M** (Llama, RMSNorm): teacher-forced next-token scores over the corpus (`corpus.py`) in windows of
  `StudyConfig.window` tokens - perplexity, top-1 agreement with the float64 run, KL(p_64 || p_run) mean and 99th
  percentile - and greedy continuations of `new_tokens` tokens from `prompts` prompts: how many leading tokens
  agree with the float64 run's continuation (`metrics.py`).
- **all-MiniLM-L6-v2** (BERT, post-LayerNorm): sentence embeddings of corpus sentences - cosine to the float64
  embedding (mean, worst) and agreement of each sentence's nearest neighbour with the float64 run's.

Every run is a `RunSpec`: a storage dtype, an order ("baseline" = textbook, "fused" = the paper's, "float64" = the
oracle), a summation order ("plain", or "permuted": the same model with its channels in another order,
`orders.py`), and optionally a mitigation. The float64 run uses the same weights (the file's values, exactly) in
float64 storage and accumulation; a dtype's runs store the weights in that dtype too, so their distance from float64
includes weight rounding - which both orders share.

**The verdict, per dtype.** A figure is "worse" in the fused order only if it is worse than baseline by more than
the spread of that figure between two equivalent summation orders, in *both* summation orders:

    spread = max(|F(baseline) - F(baseline, permuted)|, |F(fused) - F(fused, permuted)|)
    worse  = bad(fused) - bad(baseline) > spread   and   bad(fused, permuted) - bad(baseline, permuted) > spread

where bad(.) is the figure oriented so that larger is worse (perplexity: its distance from the float64 run's,
since rounding may move it either way). A single pair of runs differs by chance as much as the spread about one
time in four; asking for the difference in both equivalent models keeps chance verdicts rare while a systematic
loss (a second rounding the baseline does not have) shows in both. The fused order is "no worse" in a dtype when
no figure is worse. A mitigation (`RunSpec.mitigation`) is judged the same way against baseline.

**The spread's floor.** Two summation orders can agree more closely than the figure can be read: all-MiniLM's
float32 cosines differ from 1 by ~2e-13, and fused and baseline by 2e-14 of that, while a cosine computed in the
accumulation dtype (float32: what a deployment computes it in) cannot tell two numbers closer than an ulp of 1
apart. So the spread is at least `floor` = FLOOR_ULPS roundings of the figure's value in the dtype's accumulation
dtype (`spread_floor`): a difference below it is no loss any computation under the policy could show. Figures
that count events (agreements) are read exactly and have no floor.

**Where the time goes** (CPU seconds of the process, all threads, on the 2-core Intel Xeon test machine while other
work shared it, load 3-7, so +-10%; wall time there was 1.5-4x the CPU time and says little; on an idle 2-core
machine wall is at best about half the CPU time). MiniLM's full study, 255 CPU-s: a run (256 sentences, 4,209
tokens through 6 layers, ~89 GFLOP of products) is 3.2-5.4 CPU-s in 32/16-bit storage - ~1.8 of it the products
(~50 GFLOP/s a core), ~0.5 the executor writing each result back in storage and ~0.45 GELU - and 4.4-6.2 in fp8
(its operand quantisation, `fp8.quantise`); the float64 run 6.7; the 16 base runs with it 81, the 12 mitigation
runs 61, the 16 ablation runs 61, the LayerNorm hazard measurement 42 (21 of it the criterion's bounds,
`equivalence.layer_norm_linear_bounds`, 144 calls of 256 rows). A SmolLM2 run is one forward pass per 512-token
window (~4 CPU-s each), the greedy figure (one teacher-forced pass over the float64 continuation, 8 x 95 tokens,
4.5-8 CPU-s: more tokens than a window) and its weights (0.5-1.7 CPU-s; folding and casting ~135M weights); the
float64 run is ~2x a run and decodes its continuation token by token (~15 CPU-s). SmolLM2's full study, 1,285
CPU-s: 23 runs, the windows 1,013 of it, the greedy figure 156, scoring 79, weights 37; a float16 run 55-91 CPU-s
against bfloat16's ~43 (mostly the baseline's: a third of the attention probabilities it stores lie below float16's
smallest normal, where NumPy's cast is ~20x slower; bench/README.md), fp8 ~66. The quick
profile took 348 CPU-s for both models (17 + 17 runs). The runs are near the machine's
floor, so their number (1 + 4 per dtype, + 2 per mitigation or ablation arm where the fused order is worse) sets the
study's time.

**Processes** (`run_plan(workers=...)`; `normfuse accuracy --workers`, default one a core). The runs of a stage -
every dtype's four base runs, then every arm - are independent, so they run side by side in forked processes of
one executor thread each, after the oracle has run in the parent on every thread (each run reads the oracle's
scores). On the 2-core test machine, idle, measured in one session against one process of two threads (whose
threads meet at the end of every primitive): the quick profile 176 / 183 s -> 132 / 130 s (alternating, 1.36x);
SmolLM2's full study 692 s -> 440 s (1.57x: 16 base runs of 32 s median at one thread each, 6 arm runs, the oracle
48 s on two threads); MiniLM's 124 s (232 s in one process in an earlier session). Every figure is bit for bit the
same (the executor's results do not depend on its thread count, `normfuse_ref.parallel`;
tests/test_accuracy_workers.py compares the tiny models' studies both ways). MiniLM's 1-minute target is out of reach
with the arms (45 runs) and the hazard measurement (its 36 cells 34-38 s in one process, 19-20 s in two,
alternating); its figures and verdicts alone (17 runs, the quick profile's MiniLM part) take 32 s.

**The quick profile** (`mitigate="never"`, `--tokens 512 --mitigate never`): the figures and verdicts alone, SmolLM2
on one 512-token window - no mitigation or ablation arm and no hazard measurement, which exist to find the cause and
the fix of a loss the full study has found. Its verdicts on one window are noisier; it checks that the study runs.
The full study (the default, docs/accuracy.md) keeps every figure, arm and measurement. The quick profile takes
75-94 s (median 83 s of nine runs; within the 90 s aimed at in seven) on the idle 2-core AMD EPYC test machine
(12-02, with scoring in blocks, `metrics.ROWS`, and float16 stored and read without the CPU's subnormal assists,
`precision.to_storage`; 88-115 s before, 130-140 s on the Intel Xeon one). SmolLM2's 16 runs are
each a window (2.1-3.3 s at one thread), the greedy figure's pass over 760 tokens (2.8-4.7 s; the output layer only
on the 512 positions it reads, `forward(logits_to_keep=...)`) and their weights (0.4-2 s), ~110 s of one core in
all; before them its oracle (13.6-17.7 s in the parent on two threads: float64 weights, its window, and 64 decode
steps of 8 prompts token by token, each streaming ~1 GB of float64 weights at OpenBLAS's rate for 8-row products,
cut into two column halves, `parallel.FEW_ROWS_SPLIT`) must run, since every run is scored against it; MiniLM's 17
runs take 17-20 s. Every piece is a forward pass the figures need.

**The ablation** (`RunSpec.sites`): the fused order applied at one kind of site only - "norm_linear" (the
normalisation -> linear folds) or "softmax_linear" (softmax -> V deferred) - the other sites in the textbook order,
judged against baseline the same way. Where the fused order is worse, it names the kind of site that loses; run
with a mitigation (e.g. the folds alone with the folded weight stored wider), it names the mechanism.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..parallel import THREADS_ENV, fork_map, forks
from ..precision import accumulation_dtype, dtype_info
from .corpus import Corpus

__all__ = [
    "DTYPES",
    "FIGURES",
    "FLOOR_ULPS",
    "MITIGATE",
    "MODELS",
    "ORACLE",
    "SITES",
    "Ablation",
    "CorpusInfo",
    "DtypeVerdict",
    "Figure",
    "FigureVerdict",
    "ModelStudy",
    "Progress",
    "Run",
    "RunRecord",
    "RunSpec",
    "StudyConfig",
    "judge",
    "silent",
    "spread_floor",
]

Array = NDArray[Any]
Order = Literal["baseline", "fused", "float64"]
Summation = Literal["plain", "permuted"]
#: The kinds of fused site an ablation can fuse alone (`RunSpec.sites`).
Sites = Literal["norm_linear", "softmax_linear"]
SITES: tuple[Sites, ...] = ("norm_linear", "softmax_linear")

#: The models of the study (registry names, `normfuse_ref.models.llama.fetch.SOURCES`).
MODELS = ("smollm2-135m", "all-minilm-l6-v2")
#: Storage dtypes studied, widest first; float32 accumulation in each (the policy for 16/8-bit storage).
DTYPES = ("float32", "bfloat16", "float16", "float8_e4m3fn")

#: When a study runs a dtype's mitigation and ablation arms (`StudyConfig.mitigate`).
Mitigate = Literal["when-worse", "always", "never"]
MITIGATE: tuple[Mitigate, ...] = ("when-worse", "always", "never")

#: Reports progress: (what is running, steps done, steps in this stage).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class StudyConfig:
    """What one study measures. Defaults are the full study."""

    tokens: int = 4096  # corpus tokens SmolLM2 is scored on: at least 4,000, 8 windows of 512
    window: int = 512  # tokens per teacher-forced window, each a fresh context: long enough for real context,
    #                    short enough that attention (quadratic in it) stays a small part of the cost
    prompts: int = 8  # greedy continuations: prompts, each the first `prompt_tokens` tokens of a corpus document
    prompt_tokens: int = 32  # long enough to set a topic, short enough that the 8 prompts are distinct documents
    new_tokens: int = 64  # tokens generated greedily from each prompt, compared with the float64 run's
    sentences: int = 256  # MiniLM: corpus sentences embedded (nearest neighbours among 255 others)
    dtypes: tuple[str, ...] = DTYPES
    mitigate: Mitigate = "when-worse"  # run a dtype's mitigations (and ablations) only where the fused order is
    #                    worse (they exist to find the cause and the fix; each costs two full runs); "never": the
    #                    figures and verdicts alone - no mitigation or ablation arm, no hazard measurement (the
    #                    quick profile, module docstring)

    def __post_init__(self) -> None:
        for name in ("tokens", "window", "prompts", "prompt_tokens", "new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.tokens < 2 or self.window < 2:
            raise ValueError("tokens and window must be >= 2 (a position is scored on the token after it)")
        if self.sentences < 2:
            raise ValueError(f"sentences must be >= 2 (each needs a nearest neighbour); got {self.sentences}")
        if self.mitigate not in MITIGATE:
            raise ValueError(f"mitigate must be one of {', '.join(MITIGATE)}; got {self.mitigate!r}")
        for d in self.dtypes:
            if d not in DTYPES:
                raise ValueError(f"dtype {d!r} is not studied; choose from {', '.join(DTYPES)}")


@dataclass(frozen=True)
class RunSpec:
    """One run of a model: storage dtype, order, summation order, mitigation (None: the rule as the paper has it),
    and for an ablation the one kind of site the fused order is applied at (None: every site)."""

    dtype: str
    order: Order
    summation: Summation = "plain"
    mitigation: str | None = None
    sites: Sites | None = None

    @property
    def label(self) -> str:
        order = self.order if self.sites is None else f"{self.order}[{self.sites}]"
        parts = [self.dtype, order if self.mitigation is None else f"{order}+{self.mitigation}"]
        if self.summation != "plain":
            parts.append(self.summation)
        return " ".join(parts)


ORACLE = RunSpec("float64", "float64")


@dataclass(frozen=True)
class Figure:
    """A figure of merit: its key (also the JSON key), and whether larger values are better ("higher"), worse
    ("lower"), or whether the distance from the float64 run's value is what counts ("closer")."""

    key: str
    better: Literal["higher", "lower", "closer"]
    label: str
    near_one: bool = False  # shown as 1 - (1 - value): a cosine of 1 - 3e-7 reads as "1-3e-07", not "1"
    counted: bool = False  # a share of counted events (agreements): read exactly, so its spread has no floor

    def show(self, value: float) -> str:
        """The value for a table: 4 significant digits, or its distance from 1 for figures near 1."""
        if self.near_one and np.isfinite(value) and 0.9 < value <= 1:
            return "1" if value == 1 else f"1-{1 - value:.3g}"
        return f"{value:.4g}" if np.isfinite(value) and value != 0 else str(value if value else 0)

    def bad(self, value: float, oracle: float) -> float:
        """The figure oriented so that larger is worse."""
        if self.better == "higher":
            return -value
        if self.better == "lower":
            return value
        return abs(value - oracle)


#: The figures of each model family: "llama" (a language model), "bert" (a sentence encoder).
FIGURES: dict[str, tuple[Figure, ...]] = {
    "llama": (
        Figure("perplexity", "closer", "perplexity"),
        Figure("top1_agreement", "higher", "top-1 agreement", counted=True),
        Figure("kl_mean", "lower", "KL mean"),
        Figure("kl_p99", "lower", "KL p99"),
        Figure("greedy_agreement_tokens", "higher", "greedy agreement", counted=True),
    ),
    "bert": (
        Figure("cosine_mean", "higher", "cosine mean", near_one=True),
        Figure("cosine_min", "higher", "cosine min", near_one=True),
        Figure("neighbour_agreement", "higher", "neighbour agreement", counted=True),
    ),
}


@dataclass(frozen=True)
class RunRecord:
    """The figures one run scored (keys of FIGURES), and details (per-prompt agreements, seconds)."""

    spec: RunSpec
    figures: Mapping[str, float]
    details: Mapping[str, Any] = field(default_factory=dict)


#: The spread's floor in roundings of the figure's value in the accumulation dtype. A figure computed in float32
#: from unit-scale terms carries more than a few roundings of its own: a cosine of unit vectors of length d is a
#: d-term dot product (error up to d u, ~sqrt(d) u typically: Higham, Accuracy and Stability of Numerical
#: Algorithms, 2nd ed., section 3.1; d = 384 for MiniLM), a perplexity the exponential of a mean of log-sum-exps.
#: 4 is below every one of those, so the floor never exceeds what the figure's own float32 computation would blur.
FLOOR_ULPS = 4


def spread_floor(dtype: str, *values: float) -> float:
    """FLOOR_ULPS unit roundoffs of the dtype's accumulation dtype, times the largest |value| (module docstring)."""
    u = dtype_info(accumulation_dtype(dtype)).unit_roundoff
    finite = [abs(v) for v in values if np.isfinite(v)]
    return FLOOR_ULPS * u * max(finite, default=0.0)


@dataclass(frozen=True)
class FigureVerdict:
    figure: Figure
    baseline: float
    fused: float
    spread: float  # max |F(order) - F(order, permuted)| over both orders
    worse_by: float  # bad(fused) - bad(baseline), plain summation order
    worse_by_permuted: float  # the same in the permuted model
    worse: bool
    floor: float = 0.0  # the spread's floor (`spread_floor`): a loss must exceed max(spread, floor)


@dataclass(frozen=True)
class DtypeVerdict:
    """Fused (or a mitigation of it, or an ablation: the fused order at one kind of site) against baseline in one
    dtype."""

    dtype: str
    mitigation: str | None
    figures: tuple[FigureVerdict, ...]
    sites: Sites | None = None

    @property
    def no_worse(self) -> bool:
        return not any(f.worse for f in self.figures)

    @property
    def worse_figures(self) -> list[str]:
        return [f.figure.key for f in self.figures if f.worse]


def _run(runs: Sequence[RunRecord], spec: RunSpec) -> RunRecord:
    for r in runs:
        if r.spec == spec:
            return r
    raise KeyError(spec.label)


def judge(
    family: str, runs: Sequence[RunRecord], dtype: str, mitigation: str | None = None, sites: Sites | None = None
) -> DtypeVerdict:
    """The verdict of the fused order (or `mitigation` of it, at `sites` only) against baseline in `dtype` (module
    docstring)."""
    oracle = _run(runs, ORACLE).figures
    b = _run(runs, RunSpec(dtype, "baseline"))
    bp = _run(runs, RunSpec(dtype, "baseline", "permuted"))
    f = _run(runs, RunSpec(dtype, "fused", mitigation=mitigation, sites=sites))
    fp = _run(runs, RunSpec(dtype, "fused", "permuted", mitigation, sites))
    out = []
    for fig in FIGURES[family]:
        k, o = fig.key, oracle[fig.key]
        spread = max(abs(b.figures[k] - bp.figures[k]), abs(f.figures[k] - fp.figures[k]))
        floor = 0.0 if fig.counted else spread_floor(dtype, b.figures[k], f.figures[k])
        d = fig.bad(f.figures[k], o) - fig.bad(b.figures[k], o)
        dp = fig.bad(fp.figures[k], o) - fig.bad(bp.figures[k], o)
        bar = max(spread, floor)
        worse = bool(d > bar and dp > bar) or (not np.isfinite(f.figures[k]) and np.isfinite(b.figures[k]))
        out.append(FigureVerdict(fig, b.figures[k], f.figures[k], spread, d, dp, worse, floor))
    return DtypeVerdict(dtype, mitigation, tuple(out), sites)


#: An ablation arm: the kind of site fused alone, and the mitigation applied to it (None: the paper's rule).
Ablation = tuple[Sites, str | None]


#: Runs one spec: run(spec, label, progress) -> its record, reporting its steps to `progress`.
Run = Callable[[RunSpec, str, Progress], RunRecord]


def run_plan(
    family: str,
    name: str,
    config: StudyConfig,
    mitigations: Mapping[str, Sequence[str]],
    run: Run,
    ablations: Mapping[str, Sequence[Ablation]] | None = None,
    *,
    progress: Progress | None = None,
    workers: int = 1,
) -> tuple[tuple[RunRecord, ...], tuple[DtypeVerdict, ...]]:
    """Every run a study needs, and the verdicts, in three stages: the float64 oracle (every other run is scored
    against it); per dtype baseline and fused, each in both summation orders; then, for each dtype where the fused
    order is worse (or every dtype if `config.mitigate` is "always"; none if "never"), each of its `mitigations`,
    then each of its `ablations` arms, in both summation orders. The runs of a stage are independent, so with
    `workers` > 1 they run side by side in that many forked processes of one executor thread each (`_map_runs`).
    Records and verdicts come out in one order whatever `workers` is: the oracle, then per dtype its four runs and
    its arms."""
    report = progress or silent
    oracle = run(ORACLE, f"{name} {ORACLE.label}", report)
    sums: tuple[Summation, ...] = ("plain", "permuted")
    base = {d: [RunSpec(d, o, s) for o in ("baseline", "fused") for s in sums] for d in config.dtypes}
    done = dict(zip(_flat(base), _map_runs(run, _flat(base), name, report, workers), strict=True))
    verdicts = {d: [judge(family, [oracle, *done.values()], d)] for d in config.dtypes}
    arms: dict[str, list[RunSpec]] = {d: [] for d in config.dtypes}
    for d in config.dtypes:
        if config.mitigate == "never" or (verdicts[d][0].no_worse and config.mitigate == "when-worse"):
            continue
        pairs: list[tuple[str | None, Sites | None]] = [(m, None) for m in mitigations.get(d, ())]
        pairs += [(m, k) for k, m in (ablations or {}).get(d, ())]
        arms[d] = [RunSpec(d, "fused", s, m, k) for m, k in pairs for s in sums]
    done.update(zip(_flat(arms), _map_runs(run, _flat(arms), name, report, workers), strict=True))
    records = [oracle]
    for d in config.dtypes:
        records += [done[spec] for spec in (*base[d], *arms[d])]
        verdicts[d] += [judge(family, records, d, s.mitigation, s.sites) for s in arms[d][::2]]
    return tuple(records), tuple(v for d in config.dtypes for v in verdicts[d])


def _flat(specs: Mapping[str, Sequence[RunSpec]]) -> list[RunSpec]:
    return [s for group in specs.values() for s in group]


def silent(_what: str, _done: int, _total: int) -> None:
    """A Progress that reports nothing."""


def _map_runs(run: Run, specs: Sequence[RunSpec], name: str, report: Progress, workers: int) -> list[RunRecord]:
    """run(spec) for each spec, in order: here (workers 1, a single spec, or no fork), or in `workers` forked
    processes of one executor thread each (`parallel.fork_map`).

    A process of one executor thread does more of this work than a thread of a process does (module docstring,
    "Processes"). Workers report nothing themselves (the progress bar is the parent's): the parent reports runs as
    they finish. A run's figures do not depend on its thread count (the executor's promise, `normfuse_ref.parallel`),
    so neither do the study's."""
    tasks = [(s, f"{name} {s.label}") for s in specs]
    if not forks(workers, len(specs)):
        return [run(s, label, report) for s, label in tasks]
    n = min(workers, len(specs))
    what = f"{name}: {len(specs)} runs, {n} at a time"
    report(what, 0, len(specs))
    return fork_map(lambda t: run(t[0], t[1], silent), tasks, n, initializer=_one_thread,
                    done=lambda k: report(what, k, len(specs)))  # fmt: skip


def _one_thread() -> None:
    os.environ[THREADS_ENV] = "1"  # read by each executor the worker makes (`parallel.threads_setting`)


@dataclass(frozen=True)
class CorpusInfo:
    """Which text was read: enough to tell whether two studies read the same one."""

    chars: int
    sha256: str
    python: str
    documents: int
    tokens: int  # tokens the model read from it (SmolLM2: scored positions + 1 per window; MiniLM: sentences)

    @classmethod
    def of(cls, corpus: Corpus, tokens: int) -> CorpusInfo:
        return cls(corpus.chars, corpus.sha256, corpus.python, len(corpus.documents), tokens)


@dataclass(frozen=True)
class ModelStudy:
    """Everything one model's study measured."""

    model: str
    family: str  # "llama" or "bert": which FIGURES it has
    config: StudyConfig
    corpus: CorpusInfo
    runs: tuple[RunRecord, ...]
    verdicts: tuple[DtypeVerdict, ...]
    seconds: float  # wall-clock seconds of the whole study
    notes: tuple[str, ...] = ()
    hazard: Any = None  # MiniLM: the LayerNorm hazard measured on real activations (`hazard.HazardReport`)
    costs: Mapping[str, Any] = field(default_factory=dict)  # what the mitigations cost (`costs.py`): plain data
    workers: int = 1  # processes a stage's runs were spread over (`run_plan`): what `seconds` was measured with

    def run(self, spec: RunSpec) -> RunRecord:
        return _run(self.runs, spec)
