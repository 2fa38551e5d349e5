"""`normfuse accuracy`: the paper's accuracy claim on real models, both orders, every storage dtype, against float64.

A long run (the full SmolLM2 study is ~20 forward passes over 4,096 tokens plus greedy continuations), so it shows
a progress bar per run on stderr. The table, per model and dtype, gives each figure for the float64 run, baseline,
fused, the spread of the figure between two equivalent summation orders, and each mitigation; a "*" marks an order
worse than baseline by more than that spread in both summation orders. The verdicts follow in words.

`--markdown FILE` also writes the page docs/accuracy.md is (generated, with the data it was made from);
`--figure FILE` (the `plot` extra) draws how far the fused order is from baseline in units of the spread
(`plot.accuracy_figure`); `--json` prints one record per model x dtype x order (docs/cli.md). Output files are
checked, and the plot extra is looked for, before the long run starts.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..accuracy.corpus import EmptyCorpus, load_corpus
from ..accuracy.report import UNITS, dtype_table, markdown, study_document, verdict_sentence
from ..accuracy.study import DTYPES, MITIGATE, MODELS, ModelStudy, StudyConfig
from ..extras import MissingExtra
from ..models.llama.fetch import CorruptModel
from ..parallel import threads_setting
from .args import integer, refuse
from .console import Console, UsageError, json_record
from .outputs import OutputFiles, add_figure_argument


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "accuracy",
        help="the accuracy claim on real models: both orders, every storage dtype, against float64 (long)",
        description="Both orders of SmolLM2-135M and all-MiniLM-L6-v2 in float32, bfloat16, float16 and fp8 "
        "storage (float32 accumulation), each against a float64 run of the same weights.",
    )
    p.add_argument("--model", choices=MODELS, action="append", help="study this model (repeatable); default both")
    p.add_argument("--dtype", choices=DTYPES, action="append", help="storage dtype (repeatable); default all four")
    p.add_argument(
        "--tokens",
        type=integer(minimum=2),
        default=StudyConfig.tokens,
        metavar="N",
        help=f"corpus tokens SmolLM2 is scored on (default {StudyConfig.tokens}; 512 is a quick profile)",
    )
    p.add_argument(
        "--mitigate",
        choices=MITIGATE,
        default=StudyConfig.mitigate,
        help="run a dtype's mitigation and ablation arms where the fused order is worse (default), always, or never "
        "(never: no arms and no LayerNorm hazard measurement; the quick profile is --tokens 512 --mitigate never)",
    )
    p.add_argument(
        "--workers",
        type=integer(minimum=1),
        default=None,
        metavar="N",
        help="processes a stage's runs are spread over, one executor thread each (default: all cores; 1: here, "
        "on all of them)",
    )
    p.add_argument("--markdown", metavar="FILE", help="also write the results as a Markdown page (docs/accuracy.md)")
    p.add_argument("--force", action="store_true", help="overwrite the --markdown / --figure file if it exists")
    add_figure_argument(p, "each figure's loss against baseline in units of its spread")
    p.add_argument("--json", action="store_true", help="print the results as JSON (docs/cli.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.markdown is None and args.figure is None:
        refuse(getattr(args, "given", frozenset()), ("--force",), "without an output file (--markdown or --figure)")
    models = list(dict.fromkeys(args.model or MODELS))
    dtypes = tuple(d for d in DTYPES if d in (args.dtype or DTYPES))  # widest first, whatever the order given
    config = StudyConfig(
        tokens=args.tokens, window=min(StudyConfig.window, args.tokens), dtypes=dtypes, mitigate=args.mitigate
    )
    with OutputFiles(force=args.force) as outputs:
        md = outputs.add("--markdown", args.markdown, suffixes=(".md",))
        fig = outputs.add_figure(args.figure)  # the plot extra required before the long run, not after it
        try:
            corpus = load_corpus()
        except EmptyCorpus as exc:
            raise UsageError(str(exc)) from None
        try:
            workers = args.workers or threads_setting(None)
        except ValueError as exc:  # a bad $NORMFUSE_THREADS
            raise UsageError(str(exc)) from None
        studies = [_study(name, corpus, config, console, workers) for name in models]
        doc = study_document(studies)
        if md is not None:
            outputs.write_text(md, markdown(studies, doc))
        if fig is not None:
            from ..plot import accuracy_figure

            outputs.write_figure(fig, accuracy_figure(studies))
        if md is not None or fig is not None:
            outputs.commit()
    if args.json:
        console.json(json_record("accuracy", UNITS, **doc))
        return 0
    for s in studies:
        _print(console, s)
    for path in (md, fig):
        if path is not None:
            console.wrote(path)
    return 0


def _study(name: str, corpus: Any, config: StudyConfig, console: Console, workers: int) -> ModelStudy:
    from ..accuracy.real_models import study_model

    with console.progress() as bar:
        task = bar.add_task(f"{name}: loading", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        try:
            return study_model(name, corpus, config, progress=progress, workers=workers)
        except (FileNotFoundError, CorruptModel, ValueError, MissingExtra) as exc:
            raise UsageError(str(exc)) from None


def _print(console: Console, s: ModelStudy) -> None:
    c = s.corpus
    console.heading(f"normfuse accuracy: {s.model}")
    console.note(
        f"corpus: {c.chars} characters of standard-library docstrings (Python {c.python}), "
        f"{c.tokens} {'positions scored' if s.family == 'llama' else 'sentences'}, {s.seconds:.0f} s"
    )
    console.fields([("sha256", c.sha256)])
    for d in s.config.dtypes:
        cols, rows = dtype_table(s, d)
        console.table(f"{s.model}, {d} storage, float32 accumulation", cols, rows)
        console.text(verdict_sentence(s, d))
    console.note(
        "spread: the largest change of the figure between two equivalent summation orders (the model with its "
        "channels permuted); * = worse than baseline by more than the spread in both summation orders."
    )
