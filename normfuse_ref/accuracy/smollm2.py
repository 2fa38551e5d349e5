"""The study's Llama side: SmolLM2-135M (or any Llama `Model`) in every storage dtype, both orders, against float64.

How a `RunSpec` becomes weights and an executor:

| spec | weights | executor |
|---|---|---|
| float64 oracle | the file's values in float64, baseline order | float64 storage and accumulation |
| float32 / bfloat16 / float16 | the file's values rounded to the dtype; fused folds g ⊙ F into the dtype | storage = the dtype, float32 accumulation |
| float8_e4m3fn | `fp8.quantise_weights`; fused re-quantises g ⊙ F per column | `fp8.Fp8Executor` (e4m3fn matmul operands, bfloat16 storage) |
| mitigation "wide-fold" | fused folds g ⊙ F into `WIDE_FOLD[dtype]` (float32, or bfloat16 for fp8) | as for the dtype |
| summation "permuted" | the same, built from `orders.permute_llama` weights | as for the dtype |

Teacher forcing: the first `tokens` tokens of the corpus in windows of `window` tokens, each a fresh context;
position t of a window is scored on token t + 1, so a window of T tokens scores T - 1 positions. Greedy: the first
`prompt_tokens` tokens of `prompts` corpus documents spread evenly through it, continued for `new_tokens` tokens
as one batch (an end-of-text token does not stop a continuation, so every run is compared over the same length).

**Greedy agreement without decoding every run** (`Runner.greedy_agreement`). The figure is the number of leading
tokens of a run's greedy continuation equal to the float64 run's, G. Until its first disagreement a run's greedy
decoder is fed exactly the prompt and G's tokens, so its token at step t is the argmax of its logits at the last
position of prompt + G[:t]: one teacher-forced pass over prompt + G[:n-1] gives every step's logits at once, and
the agreement is the first step whose argmax is not G's (n if none). Only the float64 run decodes token by token
(`Runner.greedy`, which makes G). The two compute the same logits with the products cut into blocks differently
(a prefill against one token at a time); in float32 they differ in the last bits, in bfloat16 storage by a few ulps
of the logits (a flipped rounding somewhere in 30 blocks carries on, as in the permuted model). So they give the
same agreement except where the deciding step is a near-tie that such a difference can break: the tests check
that the two agree on the tiny model in every dtype and, on SmolLM2, that every difference is such a tie. It is
another blocking of the same figure, noise of the kind the verdict's spread measures. A decode step is ~60
matrix-vector products that each stream all the weights; one pass instead of `new_tokens` steps made the greedy
part of a bfloat16 run 2.7x faster (8.3 s -> 3.1 s, 8 prompts x 64 tokens, 2 alternating runs each on the 2-core
test machine at load 2.8).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..fusion import fold_rms_norm
from ..models.llama.config import LlamaConfig
from ..models.llama.forward import empty_cache, forward
from ..models.llama.model import Model
from ..models.llama.tokenizer import TextTokenizer
from ..models.llama.weights import Fold, Mode, pack_blocks_inplace, prepare, prepared_shapes
from ..ops import Executor, NumpyExecutor
from ..precision import resolve_dtype
from .corpus import Corpus
from .costs import study_costs
from .fp8 import BF16, E4M3, Fp8Executor, quantise, quantise_weights
from .metrics import Reference, ScoreAccumulator
from .orders import permute_llama
from .stored import StoredWeights
from .study import ORACLE, CorpusInfo, ModelStudy, Progress, RunRecord, RunSpec, StudyConfig, run_plan, silent

__all__ = ["LLAMA_MITIGATIONS", "WIDE_FOLD", "LlamaRuns", "Runner", "corpus_prompts", "corpus_windows", "study_llama"]

Array = NDArray[Any]

#: Mitigations of the fused RMSNorm -> linear rule run in each dtype. "wide-fold": g ⊙ F stored in the next wider
#: format (WIDE_FOLD) instead of the weights' own, so the fold adds no rounding of its own beyond what the wider
#: format has (docs/hazards.md, hazard 2). float32 needs none: its fold's rounding is at the level of its activations'.
LLAMA_MITIGATIONS: dict[str, tuple[str, ...]] = {
    "float32": (),
    "bfloat16": ("wide-fold",),
    "float16": ("wide-fold",),
    "float8_e4m3fn": ("wide-fold",),
}

#: The format a "wide-fold" mitigation stores g ⊙ F in, per storage dtype: float32 for 16-bit weights, bfloat16
#: for fp8 weights (the fold of fp8 weights kept in at least bfloat16).
WIDE_FOLD = {"bfloat16": "float32", "float16": "float32", "float8_e4m3fn": "bfloat16"}


def _fp8_fold(g: Array, F: Array) -> Array:
    """The fp8 rule's default: g ⊙ F (float64) re-quantised to e4m3fn with per-column scales, held in bfloat16."""
    return quantise(fold_rms_norm(g, F, dtype=np.float32), axis=0).astype(BF16)


def _fold(spec: RunSpec) -> Fold:
    """How the fused order of `spec` folds a gain into its weight."""
    if spec.mitigation is not None:
        if spec.mitigation != "wide-fold" or spec.dtype not in WIDE_FOLD:
            raise ValueError(f"no Llama mitigation {spec.mitigation!r} in {spec.dtype}")
        return functools.partial(fold_rms_norm, dtype=resolve_dtype(WIDE_FOLD[spec.dtype]))
    return _fp8_fold if resolve_dtype(spec.dtype) == E4M3 else fold_rms_norm


class LlamaRuns(StoredWeights):
    """Weights and executors of every `RunSpec` for one Llama model, built on demand from its float32 weights: a
    summation order's weights stored in a dtype (`stored`) are packed into blocks, made once per dtype and order."""

    def __init__(self, params: Mapping[str, Array], cfg: LlamaConfig) -> None:
        super().__init__(params, functools.partial(permute_llama, cfg=cfg), self._store_packed)
        self.cfg = cfg

    def _store_packed(self, p: Mapping[str, Array], dtype: str) -> dict[str, Array]:
        dt = resolve_dtype(dtype)
        stored = quantise_weights(p, row_scaled=frozenset({"token_embd.weight"})) if dt == E4M3 else _cast(p, dt)
        return pack_blocks_inplace(stored, self.cfg)

    def weights(self, spec: RunSpec) -> dict[str, Array]:
        mode: Mode = "baseline" if spec.order == "float64" else spec.order
        dt = resolve_dtype(spec.dtype)
        w = prepare(self.stored(spec.dtype, spec.summation), self.cfg, mode, fold=_fold(spec))
        # Every weight but the embedding table (a lookup: its rows enter the residual stream in storage) is held as
        # its exact value in the accumulation dtype, which is what every primitive casts it to before computing:
        # the same numbers, without converting ~135M weights on every call (a decode step makes ~180 calls).
        acc = np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)
        return {k: v if k == "token_embd" else v.astype(acc, copy=False) for k, v in w.items()}

    @staticmethod
    def executor(spec: RunSpec) -> Executor:
        dt = resolve_dtype(spec.dtype)
        return Fp8Executor() if dt == E4M3 else NumpyExecutor(storage=dt)


def _cast(params: Mapping[str, Array], dt: np.dtype) -> dict[str, Array]:
    return {k: np.asarray(v).astype(dt) for k, v in params.items()}


class Runner:
    """One run's forward passes: whole windows (teacher forcing) and a batch of greedy continuations."""

    def __init__(self, runs: LlamaRuns, spec: RunSpec) -> None:
        self.cfg, self.spec = runs.cfg, spec
        self.w = runs.weights(spec)
        self.ex = runs.executor(spec)
        self.mode: Mode = "baseline" if spec.order == "float64" else spec.order

    def logits(self, ids: NDArray[np.int64]) -> Array:
        out, _ = forward(self.w, self.cfg, ids, None, mode=self.mode, ex=self.ex)  # (T, V)
        return np.asarray(out)

    def greedy_agreement(self, prompts: NDArray[np.int64], reference: NDArray[np.int64]) -> list[int]:
        """Per prompt, how many leading tokens of this run's greedy continuation of prompts (P, T0) equal
        `reference` (P, n), the float64 run's, from one teacher-forced pass (module docstring)."""
        n = reference.shape[1]
        ids = np.concatenate([prompts, reference[:, : n - 1]], axis=1)  # (P, T0 + n - 1)
        out, _ = forward(self.w, self.cfg, ids, None, mode=self.mode, ex=self.ex, logits_to_keep=n)  # (P, n, V)
        steps = np.argmax(np.asarray(out, dtype=np.float32), axis=-1)  # (P, n)   from position T0 - 1, as `greedy`
        differs = steps != reference  # (P, n)
        return [int(np.argmax(row)) if row.any() else n for row in differs]

    def greedy(self, prompts: NDArray[np.int64], n: int) -> NDArray[np.int64]:
        """(P, n) tokens: each row of prompts (P, T0) continued greedily (argmax, ties to the lowest id), one
        forward step per token as `Model.forward` takes them."""
        P, T0 = prompts.shape
        cache = empty_cache(self.cfg, self.w["token_embd"].dtype, batch=P, capacity=T0 + n)
        ids = prompts
        steps: list[NDArray[np.int64]] = []
        for _ in range(n):
            logits, cache = forward(self.w, self.cfg, ids, cache, mode=self.mode, ex=self.ex, logits_to_keep=1)
            steps.append(np.argmax(np.asarray(logits[:, -1], dtype=np.float32), axis=-1))  # (P,)
            ids = steps[-1][:, None]  # (P, 1)
        return np.stack(steps, axis=1).astype(np.int64)  # (P, n)


def corpus_windows(ids: Sequence[int], config: StudyConfig) -> list[NDArray[np.int64]]:
    """The first `config.tokens` ids in windows of `config.window` (a last window shorter than 2 is dropped)."""
    if len(ids) < config.tokens:
        raise ValueError(f"the corpus holds {len(ids)} tokens; the study asks for {config.tokens}")
    a = np.asarray(ids[: config.tokens], dtype=np.int64)
    return [a[i : i + config.window] for i in range(0, a.size, config.window) if a[i : i + config.window].size >= 2]


def corpus_prompts(corpus: Corpus, tok: TextTokenizer, config: StudyConfig) -> NDArray[np.int64]:
    """(prompts, prompt_tokens): the first tokens of documents spread evenly through the corpus (documents too
    short are skipped in favour of the next one)."""
    docs = corpus.documents
    out: list[list[int]] = []
    for k in range(config.prompts):
        for d in docs[k * len(docs) // config.prompts :]:
            ids = tok.encode(d.text)
            if len(ids) >= config.prompt_tokens:
                out.append(ids[: config.prompt_tokens])
                break
    if len(out) < config.prompts:
        raise ValueError(f"the corpus has fewer than {config.prompts} documents of {config.prompt_tokens} tokens")
    return np.asarray(out, dtype=np.int64)  # (P, T0)


def study_llama(
    model: Model,
    corpus: Corpus,
    config: StudyConfig | None = None,
    *,
    name: str = "smollm2-135m",
    mitigations: Mapping[str, Sequence[str]] = LLAMA_MITIGATIONS,
    progress: Progress | None = None,
    workers: int = 1,
) -> ModelStudy:
    """The study of one Llama model (module docstring). `model` holds float32 weights and a tokenizer. `workers`:
    processes a stage's runs are spread over (`study.run_plan`)."""
    config = StudyConfig() if config is None else config
    if model.tokenizer is None:
        raise ValueError(f"model {model.cfg.name} has no tokenizer: the study reads text")
    t0 = time.perf_counter()
    tok = model.tokenizer
    windows = corpus_windows(tok.encode(corpus.text), config)
    prompts = corpus_prompts(corpus, tok, config)
    runs = LlamaRuns(model.params, model.cfg)
    steps = len(windows) + 1  # windows, then the greedy batch
    report = progress or silent
    refs: list[Reference] = []
    greedy64: list[NDArray[np.int64]] = []

    def run(spec: RunSpec, what: str, report: Progress) -> RunRecord:
        report(what, 0, steps)
        t_run = time.perf_counter()
        runner = Runner(runs, spec)
        acc = ScoreAccumulator()
        for j, w in enumerate(windows):
            z = runner.logits(w)[:-1]  # (T-1, V)   position t predicts token t + 1
            if spec == ORACLE:
                refs.append(Reference.of(z))
            acc.add(z, refs[j], w[1:])
            report(what, j + 1, steps)
        if spec == ORACLE:
            greedy64.append(runner.greedy(prompts, config.new_tokens))  # (P, n)   decoded token by token
            agree = [config.new_tokens] * config.prompts
        else:
            agree = runner.greedy_agreement(prompts, greedy64[0])  # one teacher-forced pass (module docstring)
        report(what, steps, steps)
        s = acc.result()
        figures = {
            "perplexity": s.perplexity,
            "top1_agreement": s.top1_agreement,
            "kl_mean": s.kl_mean,
            "kl_p99": s.kl_p99,
            "greedy_agreement_tokens": float(np.mean(agree)),
        }
        return RunRecord(spec, figures, {"greedy_agreement_per_prompt": agree, "seconds": time.perf_counter() - t_run})

    records, verdicts = run_plan("llama", name, config, mitigations, run, progress=report, workers=workers)
    scored = sum(w.size - 1 for w in windows)
    folded = {
        k: v for k, v in prepared_shapes(model.cfg).items() if k.endswith(("attn_qkv", "ffn_gate_up")) or k == "output"
    }
    costs = study_costs(folded, {d: WIDE_FOLD[d] for d in config.dtypes if d in WIDE_FOLD}, None)
    return ModelStudy(
        model=name,
        family="llama",
        config=config,
        corpus=CorpusInfo.of(corpus, scored),
        runs=records,
        costs=costs,
        verdicts=verdicts,
        seconds=time.perf_counter() - t0,
        workers=workers,
    )
