"""The study's BERT side: all-MiniLM-L6-v2 (or any BERT model) in every storage dtype, both orders, against float64.

How a `RunSpec` becomes weights and an executor mirrors the Llama side (`smollm2.py`): the file's values rounded
to the dtype (fp8: `fp8.quantise_weights`, the embedding tables, which are lookups and never a matmul operand, in
bfloat16), the fused order folding each LayerNorm into the linear layer after it (`fusion.fold_layer_norm`), stored
in the weights' format; the permuted model for the second summation order (`orders.permute_bert`, whose hidden
states are put back in the original channel order before pooling, an exact move). The mitigations are options of
the LayerNorm -> linear rule (`fusion.layer_norm_linear_folded`):

| mitigation | what the fused order does instead |
|---|---|
| "wide-fold" | F' stored one format wider (`WIDE_FOLD`: float32 for 16-bit weights, bfloat16 for fp8) |
| "compensate" | s (x F~' - mu r) + b, r = the column sums of the stored F~' (computed offline) |
| "subtract" | s ((x - mu) F~') + b: the mean subtracted on the SIMD units before the matmul |

**Ablation** (`RunSpec.sites`, `BERT_ABLATIONS`): where the fused order is worse, it runs again fused at one kind of
site only, the others in the textbook order - "norm_linear": the LayerNorm -> linear folds (weights prepared
fused, softmax -> V in the reference order); "softmax_linear": softmax -> V deferred (LayerNorm sites in the
reference order) - and the folds alone with each candidate mechanism removed: F' stored one format wider
("wide-fold"), or the folded bias b' = beta F + b kept in float32 instead of the bias's format ("wide-bias", a
probe, not a mitigation of the rule). The third thing the fused post-LN block does differently, forming the
residual's LN(x) beside the matmul from the site's own statistics, needs no arm: both orders form it with the same
primitives from the same mu and s (`fusion._layer_norm_out` after `fusion._layer_norm_stats`), so it is the same
bits given the same input (tests/test_accuracy_minilm.py).

The figures: sentence embeddings (masked mean of the last hidden states, L2-normalised: sentence-transformers'
pipeline) of `config.sentences` corpus sentences, in float64 from each run's hidden states; their cosine to the
float64 run's embedding (mean and minimum) and the agreement of each sentence's nearest neighbour among the others.
Sentences are embedded GROUP (16) at a time in order of token length, so a group pads little; every run uses the same
groups.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..fusion import Centring, fold_layer_norm
from ..models.bert.config import BertConfig
from ..models.bert.forward import forward
from ..models.bert.model import BertModel, mean_pool
from ..models.bert.weights import Fold, Mode, fold_in_weight_dtype, prepare
from ..models.bert.weights import prepared_shapes as bert_shapes
from ..ops import Executor, NumpyExecutor
from ..precision import resolve_dtype
from .corpus import Corpus
from .costs import study_costs
from .fp8 import BF16, E4M3, Fp8Executor, quantise, quantise_weights
from .metrics import cosine_rows, nearest_neighbours
from .orders import permute_bert, unpermute_hidden
from .smollm2 import WIDE_FOLD
from .stored import StoredWeights
from .study import ORACLE, Ablation, CorpusInfo, ModelStudy, Progress, RunRecord, RunSpec, StudyConfig, run_plan, silent

__all__ = ["BERT_ABLATIONS", "BERT_MITIGATIONS", "BertRuns", "embed", "sentence_groups", "study_bert"]

Array = NDArray[Any]

#: Mitigations of the fused LayerNorm -> linear rule, run in each dtype where the fused order is worse.
BERT_MITIGATIONS: dict[str, tuple[str, ...]] = {
    "float32": ("compensate", "subtract"),
    "bfloat16": ("wide-fold", "compensate", "subtract"),
    "float16": ("wide-fold", "compensate", "subtract"),
    "float8_e4m3fn": ("wide-fold", "compensate", "subtract"),
}

#: The ablation's arms (module docstring), run in each dtype where the fused order is worse: each kind of site
#: alone, then the folds alone with one candidate mechanism removed (float32 has no wider format to fold into).
_SITE_ARMS: tuple[Ablation, ...] = (("norm_linear", None), ("softmax_linear", None))
BERT_ABLATIONS: dict[str, tuple[Ablation, ...]] = {
    "float32": _SITE_ARMS,
    **{d: (*_SITE_ARMS, ("norm_linear", "wide-fold"), ("norm_linear", "wide-bias"))
       for d in ("bfloat16", "float16", "float8_e4m3fn")},
}  # fmt: skip

#: Embedding tables: row lookups, never a matmul operand, so fp8 runs keep them in bfloat16.
_LOOKUPS = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight")  # fmt: skip

#: Sentences embedded per forward call.
GROUP = 16


def _wide_fold(dtype: np.dtype) -> Fold:
    """Fold LayerNorms into F' stored in `dtype` (a wider format than the weights')."""

    def fold(gamma: Array, beta: Array, F: Array) -> tuple[Array, Array]:
        F_prime, bF = fold_layer_norm(gamma, beta, F, dtype=np.float64)
        return F_prime.astype(dtype), bF

    return fold


def _fp8_fold(gamma: Array, beta: Array, F: Array) -> tuple[Array, Array]:
    """The fp8 rule's default: F' (float64) re-quantised to e4m3fn with per-column scales, held in bfloat16."""
    F_prime, bF = fold_layer_norm(gamma, beta, F, dtype=np.float64)
    return quantise(F_prime, axis=0).astype(BF16), bF


def _store(p: Mapping[str, Array], dtype: str) -> dict[str, Array]:
    """A summation order's weights stored in `dtype` (fp8: `quantise_weights`, the lookup tables in bfloat16)."""
    dt = resolve_dtype(dtype)
    if dt == E4M3:
        return quantise_weights(p, lookups=frozenset(_LOOKUPS))
    return {k: np.asarray(v).astype(dt) for k, v in p.items()}


class BertRuns(StoredWeights):
    """Weights, executors and the rule's options of every `RunSpec` for one BERT model, from its float32 weights
    (each summation order's weights stored in each dtype made once: `StoredWeights`)."""

    def __init__(self, params: Mapping[str, Array], cfg: BertConfig) -> None:
        super().__init__(params, functools.partial(permute_bert, cfg=cfg), _store)
        self.cfg = cfg

    @staticmethod
    def centring(spec: RunSpec) -> Centring:
        return (
            "compensate" if spec.mitigation == "compensate" else "subtract" if spec.mitigation == "subtract" else "fold"
        )

    @staticmethod
    def modes(spec: RunSpec) -> tuple[Mode, Mode]:
        """(order of the LayerNorm -> linear sites, order of the softmax -> V sites) of a run: both the spec's
        order, except in an ablation, which fuses only its kind of site (module docstring, "Ablation")."""
        if spec.order != "fused":
            return "baseline", "baseline"
        if spec.sites is None:
            return "fused", "fused"
        return ("fused", "baseline") if spec.sites == "norm_linear" else ("baseline", "fused")

    def weights(self, spec: RunSpec) -> dict[str, Array]:
        stored = self.stored(spec.dtype, spec.summation)
        mode, _ = self.modes(spec)
        dt = resolve_dtype(spec.dtype)
        if spec.mitigation not in (None, "wide-fold", "compensate", "subtract", "wide-bias"):
            raise ValueError(f"no BERT mitigation {spec.mitigation!r}")
        if spec.mitigation == "wide-fold":
            fold = _wide_fold(resolve_dtype(WIDE_FOLD[spec.dtype]))
        else:
            fold = _fp8_fold if dt == E4M3 else fold_in_weight_dtype
        bias = np.float32 if spec.mitigation == "wide-bias" else None  # the accumulation dtype of every studied run
        w = prepare(stored, self.cfg, mode, fold=fold, centring=self.centring(spec), bias_dtype=bias)
        # Every weight but the embedding tables (lookups: their rows enter the residual stream in storage) is held as
        # its exact value in the accumulation dtype, what every primitive casts it to: the same numbers, faster.
        acc = np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)
        lookups = ("word_embeddings", "position_embeddings", "token_type_embeddings")
        return {k: v if k in lookups else np.asarray(v).astype(acc, copy=False) for k, v in w.items()}

    @staticmethod
    def executor(spec: RunSpec) -> Executor:
        dt = resolve_dtype(spec.dtype)
        return Fp8Executor() if dt == E4M3 else NumpyExecutor(storage=dt)


def sentence_groups(model: BertModel, sentences: Sequence[str]) -> list[tuple[NDArray[np.int64], Array, Array]]:
    """(indices, ids, attention mask) of GROUP sentences at a time, in order of token length (each group cut to its
    own longest sentence, so it pads little)."""
    return list(model.groups(model.tokenize(sentences, truncate=True), GROUP))  # (b,), (b, T), (b, T) each


def embed(
    runs: BertRuns,
    spec: RunSpec,
    groups: Sequence[tuple[NDArray[np.int64], Array, Array]],
    n: int,
    ex: Executor | None = None,
) -> Array:
    """(n, d) float64 unit sentence embeddings of one run (the permuted model's put back in channel order). `ex`:
    an executor computing as `runs.executor(spec)` does (the float64 run's LayerNorm recorder, `hazard.Recorder`)."""
    w, cfg = runs.weights(spec), runs.cfg
    ex = runs.executor(spec) if ex is None else ex
    mode, softmax = runs.modes(spec)
    out = np.empty((n, cfg.dim))  # (N, d)
    for idx, ids, mask in groups:
        h = np.asarray(
            forward(w, cfg, ids, mask, mode=mode, ex=ex, centring=runs.centring(spec), softmax=softmax)
        )  # (b, T, d)
        if spec.summation == "permuted":
            h = unpermute_hidden(h, cfg.dim, f=cfg.ffn_dim)
        out[idx] = mean_pool(h, mask)  # (b, d)
    return out


def study_bert(
    model: BertModel,
    corpus: Corpus,
    config: StudyConfig | None = None,
    *,
    name: str = "all-minilm-l6-v2",
    mitigations: Mapping[str, Sequence[str]] = BERT_MITIGATIONS,
    ablations: Mapping[str, Sequence[Ablation]] = BERT_ABLATIONS,
    progress: Progress | None = None,
    hazard: bool = True,
    workers: int = 1,
) -> ModelStudy:
    """The study of one BERT model (module docstring); with `hazard` (and arms: `config.mitigate` not "never"),
    also the LayerNorm centring hazard measured on its real activations (`hazard.measure_hazard`). `workers`:
    processes a stage's runs are spread over (`study.run_plan`)."""
    from .hazard import Recorder, measure_hazard

    config = StudyConfig() if config is None else config
    t0 = time.perf_counter()
    sentences = corpus.sentences(config.sentences)
    if len(sentences) < 2:
        raise ValueError(f"the corpus has {len(sentences)} sentences to embed; the study needs at least 2")
    groups = sentence_groups(model, sentences)
    runs = BertRuns(model.params, model.cfg)
    report = progress or silent
    e64: list[Array] = []
    # The hazard measurement reads the LayerNorm inputs of the float64 run: recorded as it runs, not run again.
    recorder = Recorder(storage=np.float64) if hazard and config.mitigate != "never" else None

    def run(spec: RunSpec, what: str, report: Progress) -> RunRecord:
        report(what, 0, 1)
        t_run = time.perf_counter()
        e = embed(runs, spec, groups, len(sentences), recorder if spec == ORACLE else None)  # (N, d)
        if not e64:
            e64.append(e)
        cos = cosine_rows(e, e64[0])  # (N,)
        agree = nearest_neighbours(e) == nearest_neighbours(e64[0])  # (N,)
        report(what, 1, 1)
        figures = {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
                   "neighbour_agreement": float(np.mean(agree))}  # fmt: skip
        return RunRecord(spec, figures, {"seconds": time.perf_counter() - t_run})

    records, verdicts = run_plan("bert", name, config, mitigations, run, ablations, progress=report, workers=workers)
    report(f"{name} LayerNorm hazard on real activations", 0, 1)
    measured = measure_hazard(model, runs, groups, config.dtypes, recorder, workers) if recorder is not None else None
    folded = {k: v for k, v in bert_shapes(model.cfg).items() if k.endswith((".qkv", ".ffn_up"))}
    costs = study_costs(folded, {d: WIDE_FOLD[d] for d in config.dtypes if d in WIDE_FOLD}, model.cfg)
    return ModelStudy(
        model=name,
        family="bert",
        config=config,
        corpus=CorpusInfo.of(corpus, len(sentences)),
        runs=records,
        verdicts=verdicts,
        seconds=time.perf_counter() - t0,
        workers=workers,
        hazard=measured,
        costs=costs,
    )
