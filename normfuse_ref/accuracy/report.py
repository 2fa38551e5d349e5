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
    ORACLE,
    CorpusInfo,
    DtypeVerdict,
    ModelStudy,
    RunRecord,
    RunSpec,
    StudyConfig,
    judge,
)

__all__ = [
    "MITIGATIONS",
    "UNITS",
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
    return [v.mitigation for v in study.verdicts if v.dtype == dtype and v.mitigation is not None]


def _verdict(study: ModelStudy, dtype: str, mitigation: str | None) -> DtypeVerdict:
    return next(v for v in study.verdicts if v.dtype == dtype and v.mitigation == mitigation)


def dtype_table(study: ModelStudy, dtype: str) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of one dtype: each figure for float64, baseline, fused, the spread, and each mitigation;
    a "*" marks an order worse than baseline by more than the spread (in both summation orders)."""
    mits = _mitigations(study, dtype)
    oracle = study.run(ORACLE).figures
    columns = ["figure", "float64", "baseline", "fused", "spread", *mits]
    verdicts = [_verdict(study, dtype, None), *(_verdict(study, dtype, m) for m in mits)]
    rows = []
    for i, fig in enumerate(FIGURES[study.family]):
        fv = verdicts[0].figures[i]
        show = fig.show
        cells = [fig.label, show(oracle[fig.key]), show(fv.baseline), show(fv.fused) + ("*" if fv.worse else "")]
        cells.append(fmt(fv.spread))
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
        f"spread {fmt(f.spread)})"
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
        "no_worse": v.no_worse,
        "worse_figures": v.worse_figures,
        "figures": [
            {
                "figure": f.figure.key,
                "baseline": f.baseline,
                "fused": f.fused,
                "spread": f.spread,
                "worse_by": f.worse_by,
                "worse_by_permuted": f.worse_by_permuted,
                "worse": f.worse,
            }
            for f in v.figures
        ],
        "verdict": verdict_sentence(study, v.dtype) if v.mitigation is None else None,
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
                RunSpec(r["dtype"], r["order"], r["summation"], r["mitigation"]),
                {k: float(r[k]) for k in figs},
                {k: v for k, v in r.items() if k not in (*figs, *_SPEC_KEYS)},
            )
            for r in doc["records"]
            if r["model"] == m["model"]
        )
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in m["config"].items()}
        cfg = StudyConfig(**fields)
        mits = {d: [r.spec.mitigation for r in runs if r.spec.dtype == d and r.spec.mitigation] for d in cfg.dtypes}
        verdicts = tuple(judge(m["family"], runs, d, x) for d in cfg.dtypes for x in (None, *dict.fromkeys(mits[d])))
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
            )
        )
    return out


def _hazard(data: Mapping[str, Any] | None) -> Any:
    if data is None:
        return None
    from .hazard import HazardReport

    return HazardReport.from_dict(data)


_SPEC_KEYS = ("model", "dtype", "order", "summation", "mitigation", "corpus_chars", "corpus_sha256")


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
summation orders (the same model with its channels permuted, run in each order). The fused order is *worse* on a
figure when it is worse than baseline by more than the spread, in both summation orders; it is *no worse* in a
dtype when it is worse on no figure. Perplexity counts as worse when it is further from the float64 run's. A "*"
in a table marks a worse figure. Mitigations of the fused rule are judged the same way against baseline.
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
            if v.mitigation is not None:
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


def _claim(studies: Sequence[ModelStudy]) -> str:
    """The verdict on the paper's claim, per model and dtype, in plain words."""
    lines = []
    for s in studies:
        for d in s.config.dtypes:
            lines.append(f"- **{s.model}**, {verdict_sentence(s, d)}")
    return "\n".join(lines)


def markdown(studies: Sequence[ModelStudy], doc: Mapping[str, Any]) -> str:
    """docs/accuracy.md: the intro, per model its corpus, a table per dtype with its verdict, the LayerNorm hazard on
    real activations (MiniLM), the verdict on the claim, and the data the page was made from."""
    parts = [INTRO.rstrip()]
    for s in studies:
        c = s.corpus
        parts.append(f"## {s.model}")
        parts.append(
            f"Corpus: {c.chars} characters from {c.documents} standard-library docstrings (Python {c.python}), "
            f"SHA-256 `{c.sha256}`; {c.tokens} {'positions scored' if s.family == 'llama' else 'sentences'}. "
            f"The study took {s.seconds:.0f} s."
        )
        parts.extend(s.notes)
        for d in s.config.dtypes:
            cols, rows = dtype_table(s, d)
            parts.append(f"### {s.model}, {d}\n\n" + _md_table(cols, rows) + "\n\n" + verdict_sentence(s, d))
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
