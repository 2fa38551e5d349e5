"""The study's results as tables, verdicts in words, JSON records, and the generated page docs/accuracy.md.

One `ModelStudy` per model (`normfuse_ref.accuracy.study`). The JSON document (`study_document`) holds every run's
figures, so `studies_from_document` rebuilds the studies from it - verdicts are recomputed by `study.judge`, never
read back - and `markdown` renders the page from them. docs/accuracy.md carries its own data in a comment at the end,
so a test can regenerate the page from that data and compare: the page is the code's output, never edited by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from .smollm2 import WIDE_FOLD
from .study import (
    FIGURES,
    FLOOR_ULPS,
    ORACLE,
    CorpusInfo,
    DtypeVerdict,
    FigureVerdict,
    ModelStudy,
    RunRecord,
    RunSpec,
    StudyConfig,
    judge,
)

__all__ = [
    "MITIGATIONS",
    "PROBES",
    "UNITS",
    "ablation_markdown",
    "ablation_words",
    "arm_label",
    "document_of_page",
    "dtype_table",
    "fmt",
    "markdown",
    "studies_from_document",
    "study_document",
    "verdict_sentence",
]

#: What each mitigation does, and the cause it removes when it makes the fused order no worse ("{wide}": the
#: wide fold's format for the dtype at hand).
MITIGATIONS: dict[str, tuple[str, str]] = {
    "wide-fold": (
        "the folded weights stored in {wide} instead of the weights' format",
        "rounding the folded weights to the weights' own format, a rounding the baseline order does not have",
    ),
    "compensate": (
        "column-sum compensation: s (x F~' - mu r) + b with r = the column sums of the stored F~'",
        "the centring folded into F' undone by rounding F' (hazard 1: an error mu s r_j that grows with |mu|/sigma)",
    ),
    "subtract": (
        "the mean subtracted on the SIMD units before the matmul (x - mu) F~' (one collective back on its path)",
        "the centring folded into F' undone by rounding F' (hazard 1)",
    ),
}

#: Units of the numeric keys of `normfuse accuracy --json` (docs/cli.md).
UNITS = {
    "perplexity": "1 (exp of the mean next-token cross-entropy in nats)",
    "top1_agreement": "fraction of positions",
    "kl_mean": "nats",
    "kl_p99": "nats",
    "greedy_agreement_tokens": "tokens (mean over prompts)",
    "greedy_agreement_per_prompt": "tokens",
    "cosine_mean": "1",
    "cosine_min": "1",
    "neighbour_agreement": "fraction of sentences",
    "seconds": "s",
    "chars": "characters",
    "tokens": "tokens",
    "documents": "docstrings",
    "baseline": "the figure's unit",
    "fused": "the figure's unit",
    "spread": "the figure's unit",
    "floor": "the figure's unit",
    "worse_by": "the figure's unit (larger is worse)",
    "worse_by_permuted": "the figure's unit (larger is worse)",
    "window": "tokens",
    "prompts": "prompts",
    "prompt_tokens": "tokens",
    "new_tokens": "tokens",
    "sentences": "sentences",
}


def fmt(v: float) -> str:
    """A figure in 4 significant digits ("nan", "inf" as such)."""
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    return f"{v:.4g}"


# ---------------------------------------------------------------------------------------------------------------
# Tables and words
# ---------------------------------------------------------------------------------------------------------------


def _mitigations(study: ModelStudy, dtype: str) -> list[str]:
    return [v.mitigation for v in study.verdicts if v.dtype == dtype and v.mitigation is not None and v.sites is None]


def _verdict(study: ModelStudy, dtype: str, mitigation: str | None, sites: str | None = None) -> DtypeVerdict:
    return next(v for v in study.verdicts if v.dtype == dtype and v.mitigation == mitigation and v.sites == sites)


def _yardstick(fv: FigureVerdict) -> str:
    """The spread a loss must exceed: the measured one, or its floor (marked) where that is larger."""
    return fmt(fv.spread) if fv.spread >= fv.floor else f"{fmt(fv.floor)} (floor)"


def dtype_table(study: ModelStudy, dtype: str) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of one dtype: each figure for float64, baseline, fused, the spread (or its floor, where that
    is larger), and each mitigation; a "*" marks an order worse than baseline by more than the spread (in both
    summation orders)."""
    mits = _mitigations(study, dtype)
    oracle = study.run(ORACLE).figures
    columns = ["figure", "float64", "baseline", "fused", "spread", *mits]
    verdicts = [_verdict(study, dtype, None), *(_verdict(study, dtype, m) for m in mits)]
    rows = []
    for i, fig in enumerate(FIGURES[study.family]):
        fv = verdicts[0].figures[i]
        show = fig.show
        cells = [fig.label, show(oracle[fig.key]), show(fv.baseline), show(fv.fused) + ("*" if fv.worse else "")]
        cells.append(_yardstick(fv))
        for v in verdicts[1:]:
            cells.append(show(v.figures[i].fused) + ("*" if v.figures[i].worse else ""))
        rows.append(cells)
    return columns, rows


def verdict_sentence(study: ModelStudy, dtype: str) -> str:
    """The verdict of one dtype in plain words, with the cause when a mitigation isolates it."""
    v = _verdict(study, dtype, None)
    if v.no_worse:
        return f"{dtype}: the fused order is no worse than baseline on any figure."
    worse = "; ".join(
        f"{f.figure.label} {f.figure.show(f.fused)} against {f.figure.show(f.baseline)} (worse by {fmt(f.worse_by)}, "
        f"spread {_yardstick(f)})"
        for f in v.figures
        if f.worse
    )
    text = f"{dtype}: the fused order is WORSE than baseline on {worse}."
    fixes = [m for m in _mitigations(study, dtype) if _verdict(study, dtype, m).no_worse]
    if fixes:
        m = fixes[0]
        does = MITIGATIONS[m][0].format(wide=WIDE_FOLD.get(dtype, "a wider format"))
        text += f" Cause: {MITIGATIONS[m][1]}. With {does} ({m}) it is no worse than baseline."
    elif _mitigations(study, dtype):
        text += f" None of the mitigations run ({', '.join(_mitigations(study, dtype))}) makes it no worse."
    if any(x.dtype == dtype and x.sites for x in study.verdicts):
        text += " The ablation: " + ablation_words(study, dtype).removeprefix(f"{dtype}: ")
    return text


# ---------------------------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------------------------


def _record(study: ModelStudy, r: RunRecord) -> dict[str, Any]:
    return {
        "model": study.model,
        "dtype": r.spec.dtype,
        "order": r.spec.order,
        "summation": r.spec.summation,
        "mitigation": r.spec.mitigation,
        "sites": r.spec.sites,
        **r.figures,
        **r.details,
        "corpus_chars": study.corpus.chars,
        "corpus_sha256": study.corpus.sha256,
    }


def _verdict_record(study: ModelStudy, v: DtypeVerdict) -> dict[str, Any]:
    return {
        "model": study.model,
        "dtype": v.dtype,
        "mitigation": v.mitigation,
        "sites": v.sites,
        "no_worse": v.no_worse,
        "worse_figures": v.worse_figures,
        "figures": [
            {
                "figure": f.figure.key,
                "baseline": f.baseline,
                "fused": f.fused,
                "spread": f.spread,
                "floor": f.floor,
                "worse_by": f.worse_by,
                "worse_by_permuted": f.worse_by_permuted,
                "worse": f.worse,
            }
            for f in v.figures
        ],
        "verdict": verdict_sentence(study, v.dtype) if v.mitigation is None and v.sites is None else None,
    }


def study_document(studies: Sequence[ModelStudy]) -> dict[str, Any]:
    """The keys of `normfuse accuracy --json` (docs/cli.md): one record per model x dtype x order (x summation
    order x mitigation), the verdicts, and per model its configuration, corpus and hazard measurements."""
    return {
        "models": [
            {
                "model": s.model,
                "family": s.family,
                "seconds": s.seconds,
                "workers": s.workers,
                "config": asdict(s.config),
                "corpus": asdict(s.corpus),
                "notes": list(s.notes),
                "hazard": s.hazard.as_dict() if s.hazard is not None else None,
                "costs": dict(s.costs),
            }
            for s in studies
        ],
        "records": [_record(s, r) for s in studies for r in s.runs],
        "verdicts": [_verdict_record(s, v) for s in studies for v in s.verdicts],
    }


def studies_from_document(doc: Mapping[str, Any]) -> list[ModelStudy]:
    """The studies of a `study_document` (verdicts recomputed, not read)."""
    out = []
    for m in doc["models"]:
        figs = [f.key for f in FIGURES[m["family"]]]
        runs = tuple(
            RunRecord(
                RunSpec(r["dtype"], r["order"], r["summation"], r["mitigation"], r.get("sites")),
                {k: float(r[k]) for k in figs},
                {k: v for k, v in r.items() if k not in (*figs, *_SPEC_KEYS)},
            )
            for r in doc["records"]
            if r["model"] == m["model"]
        )
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in m["config"].items()}
        cfg = StudyConfig(**fields)
        arms = {
            d: dict.fromkeys(
                (r.spec.mitigation, r.spec.sites)
                for r in runs
                if r.spec.dtype == d and r.spec.order == "fused" and (r.spec.mitigation or r.spec.sites)
            )
            for d in cfg.dtypes
        }  # in the order the study ran them: mitigations, then the ablation's arms
        verdicts = tuple(judge(m["family"], runs, d, x, k) for d in cfg.dtypes for x, k in ((None, None), *arms[d]))
        out.append(
            ModelStudy(
                model=m["model"],
                family=m["family"],
                config=cfg,
                corpus=CorpusInfo(**m["corpus"]),
                runs=runs,
                verdicts=verdicts,
                seconds=float(m["seconds"]),
                notes=tuple(m["notes"]),
                hazard=_hazard(m["hazard"]),
                costs=m.get("costs", {}),
                workers=int(m["workers"]),
            )
        )
    return out


def _hazard(data: Mapping[str, Any] | None) -> Any:
    if data is None:
        return None
    from .hazard import HazardReport

    return HazardReport.from_dict(data)


_SPEC_KEYS = ("model", "dtype", "order", "summation", "mitigation", "sites", "corpus_chars", "corpus_sha256")


# ---------------------------------------------------------------------------------------------------------------
# docs/accuracy.md
# ---------------------------------------------------------------------------------------------------------------

DATA_MARK = "normfuse-accuracy-data"


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


INTRO = """# The accuracy claim on real models

*Generated by `normfuse accuracy --markdown docs/accuracy.md` (normfuse_ref/accuracy/report.py): every number on this
page is the code's output, and the data it was made from is at the end of the file.*

The paper (Salmani & Soloveychik, arXiv 2502.17728) says the fused order "maintains model accuracy without
requiring quantization or approximations". The fuzz suite (docs/hazards.md) checks the rules on random inputs;
this page checks the claim on real models in the formats accelerators store activations in. Each model runs in
both orders with storage float32, bfloat16, float16 and fp8 (float32 accumulation, docs/numerics.md), and each
run is scored against a float64 run of the same weights.

**What is measured.** SmolLM2-135M (Llama, RMSNorm): teacher-forced next-token perplexity over a corpus, top-1
agreement with the float64 run, KL(p_64 || p_run) per position (mean and 99th percentile, nats), and the number
of leading tokens of a greedy continuation (64 tokens from 8 prompts) that agree with the float64 run's.
all-MiniLM-L6-v2 (BERT, post-LayerNorm): the cosine of each sentence embedding to its float64 embedding (mean,
worst) and how often each sentence's nearest neighbour among the others is the float64 run's.

**The corpus** is read at run time from the docstrings of a fixed list of standard-library modules, cleaned the
same way every time (normfuse_ref/accuracy/corpus.py); nothing of it is copied into the repository. Its size and
SHA-256 identify the text (it changes between Python versions).

**fp8** means e4m3fn operands of the matrix engine, with power-of-two scales (weights per output column, offline;
activations per row, at run time), and bfloat16 for everything the vector units write: residual stream, KV
cache, logits. Storing the residual stream itself in e4m3fn gives NaN in both orders (SmolLM2's residual stream
reaches ~2e4; e4m3fn stops at 448). Details: normfuse_ref/accuracy/fp8.py.

**The verdict.** A figure moves by rounding alone. Its *spread* is the larger change between two equivalent
summation orders (the same model with its channels permuted, run in each order), and at least its *floor*: {ulps}
roundings of the figure's value in float32, the accumulation dtype, below which no computation under the policy
can tell two values apart (normfuse_ref/accuracy/study.py). The fused order is *worse* on a figure when it is worse
than baseline by more than the spread, in both summation orders; it is *no worse* in a dtype when it is worse on
no figure. Perplexity counts as worse when it is further from the float64 run's. A "*" in a table marks a worse
figure. Mitigations of the fused rule, and the ablation's arms, are judged the same way against baseline.

**What runs.** This page is the full study: per model the float64 run, then per dtype both orders in both summation
orders, and where the fused order is worse each mitigation and each ablation arm in both summation orders, and
MiniLM's LayerNorm hazard measurement. Every run is a whole pass of the model over the same text, near what the
machine can do (normfuse_ref/accuracy/study.py, "Where the time goes"), so the number of runs sets the time (below,
with the processes the runs were spread over; on 2 cores the project aims at 10 minutes for SmolLM2, 1 for MiniLM).
The quick profile, `normfuse accuracy --tokens 512 --mitigate never`, scores SmolLM2 on one window of 512 tokens and
runs no arm and no hazard measurement: the figures and verdicts only, a check that the study runs, not a verdict on
the claim.
"""


def _mitigations_section(studies: Sequence[ModelStudy]) -> str:
    """What each mitigation is, where it made the fused order no worse, and what it costs."""
    lines = [
        "## Mitigations, and what they cost",
        "",
        "Each is an option of the rule in normfuse_ref/fusion.py, proven in proofs/ (`rms_norm_fold_error`, "
        "`layer_norm_fold_error`) and fuzzed in 16/8-bit on offset rows (tests/test_fuzz_*_norm_linear.py, where the "
        "rule without it fails the same property). A study runs a dtype's mitigations where its fused order is worse.",
        "",
        "| mitigation | what the fused order does instead | cause it removes |",
        "|---|---|---|",
    ]
    for m, (does, cause) in MITIGATIONS.items():
        lines.append(f"| {m} | {does.format(wide='a wider format')} | {cause} |")
    lines += ["", "Where a mitigation was run, its verdict against baseline:", ""]
    for s in studies:
        for v in s.verdicts:
            if v.mitigation is not None and v.sites is None:
                state = (
                    "no worse" if v.no_worse else f"worse on {', '.join(f.figure.label for f in v.figures if f.worse)}"
                )
                lines.append(f"- {s.model}, {v.dtype}, {v.mitigation}: {state}")
    for s in studies:
        costed = s.costs.get("sites")
        if costed:
            lines += ["", _site_costs_table(costed, str(s.costs.get("hardware", "")))]
        wide = s.costs.get("wide_fold")
        if wide:
            parts = [
                f"{d} weights: +{w['extra_bytes'] / 2**20:.1f} MiB ({w['format']}; the folded matrices are "
                f"{w['weights_bytes'] / 2**20:.1f} MiB)"
                for d, w in wide.items()
            ]
            lines += [
                "",
                f"{s.model}, the wide fold's weight memory (all its folded matrices): " + "; ".join(parts) + ".",
            ]
    return "\n".join(lines)


def _site_costs_table(costed: Sequence[Mapping[str, Any]], hardware: str) -> str:
    """One LayerNorm -> linear site per row (costs.site_costs): each variant's latency, and the mitigations' change
    against the fused order's latency and what they add to the weights."""
    by: dict[tuple[Any, ...], dict[str, Mapping[str, Any]]] = {}
    for c in costed:
        by.setdefault((c["model"], c["op"], c["n"], c["m"], c["weight_bits"], c["tokens"]), {})[c["variant"]] = c
    head = (
        f"One LayerNorm -> linear site (with LN(x) for the residual, as in a post-LN block) on the emulated {hardware} "
        "machine, cost-only (normfuse_ref/accuracy/costs.py): latency in us; for each mitigation its change against "
        "the fused order and the weight bytes it adds (compensate: r, one float32 a column; wide fold: the folded "
        "matrix at twice the weights' width). Exposed collective time: baseline and subtract only (the fused order "
        "and compensation expose none)."
    )
    rows = [
        "| site | n x m | weight bits | tokens | baseline | fused | compensate | subtract | wide fold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(c: Mapping[str, Any], fused: float) -> str:
        extra = c["extra_weight_bytes"]
        size = f"{extra / 2**20:.1f} MiB" if extra >= 2**20 else f"{extra / 2**10:.1f} KiB" if extra else "0 B"
        return f"{c['latency_us']:.3f} ({100 * (c['latency_us'] / fused - 1):+.1f}%; +{size})"

    for (model, op, n, m, bits, tokens), v in by.items():
        fused = v["fused"]["latency_us"]
        rows.append(
            f"| {model} {op} | {n} x {m} | {bits} | {tokens} | {v['baseline']['latency_us']:.3f} "
            f"(exposed {v['baseline']['collective_exposed_us']:.3f}) | {fused:.3f} | {cell(v['compensate'], fused)} | "
            f"{cell(v['subtract'], fused)} (exposed {v['subtract']['collective_exposed_us']:.3f}) | {cell(v['wide-fold'], fused)} |"
        )
    return head + "\n\n" + "\n".join(rows)


#: The ablation's probes that are not mitigations of the rule: what each removes from the folds.
PROBES: dict[str, str] = {
    "wide-bias": "the folded bias b' = beta F + b kept in float32 instead of the bias's format",
}

#: What each kind of site of an ablation is (`study.SITES`).
SITE_LABELS = {"norm_linear": "normalisation -> linear folds", "softmax_linear": "softmax -> V deferred"}


def arm_label(v: DtypeVerdict) -> str:
    """An ablation arm (or the fused order itself) in words: the kind of site fused alone, and its probe."""
    if v.sites is None:
        return "fused (every site)"
    label = f"{SITE_LABELS[v.sites]} only"
    return label if v.mitigation is None else f"{label}, {v.mitigation}"


def ablation_markdown(study: ModelStudy) -> str:
    """The ablation's section: per dtype where it ran, each arm's figures (a "*" where worse than baseline by more
    than the spread in both summation orders) and, in words chosen by the verdicts, the site and the mechanism."""
    dtypes = [d for d in study.config.dtypes if any(v.dtype == d and v.sites for v in study.verdicts)]
    if not dtypes:
        return ""
    figs = FIGURES[study.family]
    lines = [
        "### Where the loss comes from: the ablation",
        "",
        "Where the fused order is worse, it runs again fused at one kind of site only, the other sites in the "
        "textbook order, and then at the normalisation -> linear folds only with one candidate mechanism removed "
        "(wide-fold: the folded weight stored one format wider; wide-bias: "
        f"{PROBES['wide-bias'].removeprefix('the ')}). Each arm is judged against baseline like the fused order. "
        "The residual's LN(x), which a fused post-LN block forms beside the matmul, needs no arm: both orders form "
        "it with the same primitives from the same statistics, the same bits given the same input.",
    ]
    for d in dtypes:
        base = _verdict(study, d, None)
        arms = [base, *(v for v in study.verdicts if v.dtype == d and v.sites is not None)]
        rows = [["baseline", *(f.figure.show(f.baseline) for f in base.figures), ""]]
        for v in arms:
            cells = [f.figure.show(f.fused) + ("*" if f.worse else "") for f in v.figures]
            rows.append([arm_label(v), *cells, "no worse" if v.no_worse else "worse"])
        rows.append(["spread (fused, every site)", *(_yardstick(f) for f in base.figures), ""])
        lines += ["", f"{study.model}, {d}:", "", _md_table(["arm", *(f.label for f in figs), "verdict"], rows)]
        lines += ["", ablation_words(study, d)]
    return "\n".join(lines)


def ablation_words(study: ModelStudy, dtype: str) -> str:
    """The site and the mechanism of one dtype's loss, as the ablation's verdicts say."""
    site = {k: _verdict(study, dtype, None, k) for k in SITE_LABELS if _has(study, dtype, None, k)}
    losing = [k for k, v in site.items() if not v.no_worse]
    clean = [k for k, v in site.items() if v.no_worse]
    text = f"{dtype}: "
    if _verdict(study, dtype, None).no_worse:
        text += "the fused order is no worse here (the arms ran because the study was asked to run them always). "
    elif losing:
        worse = "; ".join(
            f"{SITE_LABELS[k]} alone worse on {', '.join(f.figure.label for f in site[k].figures if f.worse)}"
            for k in losing
        )
        text += f"{worse}"
        text += f"; {', '.join(SITE_LABELS[k] for k in clean)} alone no worse. " if clean else ". "
    else:
        text += "no kind of site alone is worse than baseline. "
    probes = [v for v in study.verdicts if v.dtype == dtype and v.sites == "norm_linear" and v.mitigation]
    if "norm_linear" in losing and probes:
        fixed = [v.mitigation for v in probes if v.no_worse]
        kept = [v.mitigation for v in probes if not v.no_worse]
        if fixed:
            text += f"The folds alone are no worse with {' or '.join(str(m) for m in fixed)}"
            text += f" and still worse with {', '.join(str(m) for m in kept)}" if kept else ""
            text += f": the mechanism is what {' / '.join(_removes(m) for m in fixed)} removes."
        else:
            text += f"No probe ({', '.join(str(m) for m in kept)}) makes the folds alone no worse."
    return text.rstrip()


def _has(study: ModelStudy, dtype: str, mitigation: str | None, sites: str | None) -> bool:
    return any(v.dtype == dtype and v.mitigation == mitigation and v.sites == sites for v in study.verdicts)


def _removes(mitigation: str | None) -> str:
    if mitigation in MITIGATIONS:
        return f"{mitigation} ({MITIGATIONS[mitigation][1]})"
    return f"{mitigation} ({PROBES.get(str(mitigation), '?')})"


def _claim(studies: Sequence[ModelStudy]) -> str:
    """The verdict on the paper's claim, per model and dtype, in plain words."""
    lines = []
    for s in studies:
        for d in s.config.dtypes:
            lines.append(f"- **{s.model}**, {verdict_sentence(s, d)}")
    return "\n".join(lines)


def _processes(workers: int) -> str:
    return "in one process" if workers == 1 else f"its runs {workers} processes at a time"


def markdown(studies: Sequence[ModelStudy], doc: Mapping[str, Any]) -> str:
    """docs/accuracy.md: the intro, per model its corpus, a table per dtype with its verdict, the LayerNorm hazard on
    real activations (MiniLM), the verdict on the claim, and the data the page was made from."""
    parts = [INTRO.format(ulps=FLOOR_ULPS).rstrip()]
    for s in studies:
        c = s.corpus
        parts.append(f"## {s.model}")
        parts.append(
            f"Corpus: {c.chars} characters from {c.documents} standard-library docstrings (Python {c.python}), "
            f"SHA-256 `{c.sha256}`; {c.tokens} {'positions scored' if s.family == 'llama' else 'sentences'}. "
            f"The study took {s.seconds:.0f} s ({_processes(s.workers)})."
        )
        parts.extend(s.notes)
        for d in s.config.dtypes:
            cols, rows = dtype_table(s, d)
            parts.append(f"### {s.model}, {d}\n\n" + _md_table(cols, rows) + "\n\n" + verdict_sentence(s, d))
        ablation = ablation_markdown(s)
        if ablation:
            parts.append(ablation)
        if s.hazard is not None:
            parts.append(s.hazard.markdown())
    parts.append(_mitigations_section(studies))
    parts.append("## The verdict on the claim\n\n" + _claim(studies))
    data = json.dumps(doc, sort_keys=True, allow_nan=True, separators=(",", ":"))
    parts.append(f"<!-- {DATA_MARK}\n{data}\n-->")
    return "\n\n".join(parts) + "\n"


def document_of_page(text: str) -> dict[str, Any]:
    """The data a generated page carries (ValueError if it has none)."""
    start = text.find(f"<!-- {DATA_MARK}\n")
    if start < 0:
        raise ValueError("the page carries no study data")
    body = text[start + len(DATA_MARK) + 6 :]
    return dict(json.loads(body[: body.index("\n-->")]))
