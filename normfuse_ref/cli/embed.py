"""`normfuse embed`: sentence embeddings of a BERT-family encoder in NumPy, in textbook (baseline) or fused order,
or both, compared.

For each text: its token count ([CLS] and [SEP] included) and the norm of its embedding (1 up to rounding: the
embeddings are L2-normalised); then the pairwise cosine similarities. With `--mode both` both orders embed the
same tokens in the same groups, and the output says how far apart they are: the largest difference of an
embedding component, the smallest cosine between a text's two embeddings, the largest difference of a last hidden
state, and whether that is within what rounding alone explains (`normfuse_ref.models.bert.embedding_bound`).

A text longer than the model's positions (512 for all-MiniLM-L6-v2) is an error; `--truncate` embeds its first
512 tokens instead, and the output says which texts were cut and from how many tokens.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..extras import MissingExtra
from .args import integer
from .console import Col, Console, UsageError, json_record

if TYPE_CHECKING:
    from ..models.bert import BertModel, ModeComparison
    from ..models.bert.tokenizer import Batch

#: Storage dtypes a model can be loaded in (the same list as normfuse_ref.models.bert.model.MODEL_DTYPES; that
#: module is imported only once a command line has been parsed, so that `normfuse embed --help` needs no extra).
DTYPES = ("float32", "float64", "float16", "bfloat16")

#: How a family is named in messages.
FAMILY_NAMES = {"llama": "Llama decoder", "bert": "BERT encoder"}

#: Units of the numeric keys of `embed --json` (docs/cli.md).
UNITS = {
    "batch_size": "texts",
    "tokens": "tokens",
    "truncated_from": "tokens",
    "seconds": "s",
    "norms": "1",
    "cosine": "1",
    "embeddings": "1",
    "max_abs_diff": "1 (embedding component)",
    "min_cosine": "1",
    "max_hidden_diff": "hidden-state units",
    "bound": "1 (embedding component)",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "embed",
        help="sentence embeddings with a real BERT model in NumPy, in baseline or fused order (or both, compared)",
        description="Embed sentences with a BERT-family encoder in NumPy, in textbook (baseline) or fused order.",
    )
    p.add_argument("texts", nargs="+", metavar="TEXT", help="the texts to embed (quote each one)")
    p.add_argument(
        "--model",
        default="all-minilm-l6-v2",
        help="all-minilm-l6-v2 (default; fetch it first), tiny-bert (random weights), or an HF BERT directory",
    )
    p.add_argument("--mode", choices=["fused", "baseline", "both"], default="fused", help="order (default fused)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="storage dtype (default float32)")
    p.add_argument(
        "--truncate", action="store_true", help="embed the first tokens of a text longer than the model's positions"
    )
    p.add_argument(
        "--batch-size", type=integer(minimum=1), default=32, metavar="N", help="texts per forward pass (default 32)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON record (with the embeddings)")
    p.set_defaults(func=run)


def _load(args: argparse.Namespace, console: Console) -> BertModel:
    """The model, with a progress bar while its weights are read; a model of another family is refused."""
    from ..models import family_of, load_model
    from ..models.bert import BertModel
    from ..models.llama.fetch import CorruptModel

    try:
        family = family_of(args.model)
        if family != "bert":
            raise UsageError(
                f"{args.model} is a {FAMILY_NAMES.get(family, family)} model; normfuse embed needs a BERT-family "
                "encoder (all-minilm-l6-v2, tiny-bert, or an HF BERT directory)"
            )
        with console.progress() as bar:
            task = bar.add_task(f"loading {args.model}", total=None)
            model = load_model(
                args.model, args.dtype, on_tensor=lambda done, total: bar.update(task, completed=done, total=total)
            )
    except (FileNotFoundError, CorruptModel, ValueError, MissingExtra) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read the model {args.model}: {exc.strerror or exc}") from None
    assert isinstance(model, BertModel)  # family_of said so
    return model


def run(args: argparse.Namespace, console: Console) -> int:
    from ..models.bert import TextTooLong

    model = _load(args, console)
    try:
        batch = model.tokenize(args.texts, truncate=args.truncate)
    except TextTooLong as exc:
        raise UsageError(str(exc).replace("(truncate=True, --truncate)", "(--truncate)")) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    modes = ("fused", "baseline") if args.mode == "both" else (args.mode,)
    for i, n in batch.truncated.items():
        console.warning(f"text {i + 1} has {n} tokens; only its first {batch.lengths[i]} were embedded (--truncate)")
    runs: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    cmp = None
    if args.mode == "both":
        from ..models.bert import compare_modes

        t0 = time.perf_counter()
        cmp = compare_modes(model, args.texts, truncate=args.truncate, batch_size=args.batch_size)
        runs, seconds = cmp.embeddings, {"both": time.perf_counter() - t0}
    else:
        t0 = time.perf_counter()
        runs[args.mode] = model.embed_batch(batch, args.mode, batch_size=args.batch_size)
        seconds[args.mode] = time.perf_counter() - t0
    if args.json:
        console.json(_record(args, model, batch, runs, seconds, cmp))
        return 0
    _report(args, console, model, batch, modes, runs, seconds, cmp)
    return 0


def _cosines(e: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities (B, B) of unit vectors (B, d), in float64."""
    f = e.astype(np.float64)  # (B, d)
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    return f @ f.T  # (B, B)


def _record(
    args: argparse.Namespace,
    model: BertModel,
    batch: Batch,
    runs: dict[str, np.ndarray],
    seconds: dict[str, float],
    cmp: ModeComparison | None,
) -> dict[str, Any]:
    texts = [
        {"text": t, "tokens": batch.lengths[i], "truncated_from": batch.truncated.get(i)}
        for i, t in enumerate(args.texts)
    ]
    return json_record(
        "embed",
        UNITS,
        model=model.cfg.name,
        source=model.source,
        dtype=model.dtype.name,
        mode=args.mode,
        batch_size=args.batch_size,
        texts=texts,
        seconds=seconds,
        runs=[
            {
                "mode": m,
                "norms": np.linalg.norm(e.astype(np.float64), axis=-1),
                "cosine": _cosines(e),
                "embeddings": e.astype(np.float64),
            }
            for m, e in runs.items()
        ],
        max_abs_diff=None if cmp is None else cmp.max_abs_diff,
        min_cosine=None if cmp is None else cmp.min_cosine,
        max_hidden_diff=None if cmp is None else cmp.max_hidden_diff,
        bound=None if cmp is None else cmp.bound,
        checked=None if cmp is None else cmp.checked,
        within_bound=None if cmp is None else cmp.within_bound,
    )


def _report(
    args: argparse.Namespace,
    console: Console,
    model: BertModel,
    batch: Batch,
    modes: tuple[str, ...],
    runs: dict[str, np.ndarray],
    seconds: dict[str, float],
    cmp: ModeComparison | None,
) -> None:
    order = "both orders" if cmp is not None else f"{args.mode} order"
    took = " and ".join(f"{s:.2f} s" for s in seconds.values())
    console.note(f"{model.cfg.name} · {order} · {model.dtype.name} · {len(args.texts)} texts · {took}")
    for i, text in enumerate(args.texts):
        console.text(f"{i + 1}. {text}")
    tokens = [
        str(n) if i not in batch.truncated else f"{n} of {batch.truncated[i]}" for i, n in enumerate(batch.lengths)
    ]
    norms = {m: np.linalg.norm(runs[m].astype(np.float64), axis=-1) for m in modes}
    console.table(
        None,
        [Col("text"), Col("tokens"), *(Col(f"norm ({m})") for m in modes)],
        [(i + 1, tokens[i], *(f"{norms[m][i]:.7f}" for m in modes)) for i in range(len(args.texts))],
    )
    first = modes[0]
    cos = _cosines(runs[first])
    console.table(
        f"cosine similarity ({first} order)",
        [Col("text"), *(Col(str(j + 1)) for j in range(len(args.texts)))],
        [(i + 1, *(f"{c:.4f}" for c in row)) for i, row in enumerate(cos)],
    )
    if cmp is None:
        return
    dcos = float(np.abs(cos - _cosines(runs["baseline"])).max())
    console.fields(
        [
            ("max |fused - baseline|, embedding components", f"{cmp.max_abs_diff:.3g}"),
            ("min cosine(fused, baseline) of a text", f"1 - {1 - cmp.min_cosine:.3g}"),
            ("max |fused - baseline|, cosine similarities", f"{dcos:.3g}"),
            ("max |fused - baseline|, last hidden states", f"{cmp.max_hidden_diff:.3g}"),
            ("rounding bound on an embedding component", f"{cmp.bound:.3g}"),
        ],
        indent=0,
    )
    if not cmp.checked:
        console.note(
            f"unchecked: in {model.dtype.name} the rounding bound ({cmp.bound:.3g}) is no smaller than the "
            "embeddings' components, so it cannot tell the orders apart; the differences above are as measured"
        )
    elif cmp.within_bound:
        console.success("the embeddings match across orders (within the rounding bound)")
    else:
        console.text(
            f"the orders differ by more than rounding explains: {cmp.max_abs_diff:.3g} > {cmp.bound:.3g}",
            style="bold yellow",
        )
