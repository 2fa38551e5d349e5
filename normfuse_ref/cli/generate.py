"""`normfuse generate`: run a real model end to end in NumPy, in textbook (baseline) or fused order, or both.

With `--mode both` the first order (fused) generates freely and streams; the baseline order is then run along the
same tokens (teacher forcing), so the largest logit difference compares the two orders on identical prefixes, and
"identical" says whether baseline would have chosen the same token at every step. If it would not, baseline is
also run freely and its own continuation is printed.

`--max-new-tokens` is an upper bound: generation also stops at an end-of-generation token and when the model's
context is full, so a huge value costs nothing more than the context allows. `--top-k` only applies when sampling
(`--temperature` > 0) and is refused otherwise; `--seed` seeds the sampling draws and the random weights of `tiny`
(with greedy decoding of a real model it has no effect, and is accepted).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..extras import MissingExtra
from ..models.llama.fetch import CorruptModel
from ..models.llama.model import (
    MODEL_DTYPES,
    Generation,
    ModeComparison,
    Model,
    compare_modes,
    generate,
    load_model,
    prompt_ids,
)
from ..models.llama.weights import Mode
from .args import integer, number
from .console import Console, UsageError, json_record

#: Units of the numeric keys of `generate --json` (docs/cli.md).
UNITS = {
    "prompt_tokens": "tokens",
    "temperature": "1 (divides the logits)",
    "top_k": "tokens",
    "prefill_seconds": "s",
    "decode_tokens_per_second": "tokens/s",
    "max_logit_diff": "logit (nats)",
    "logit_scale": "logit (nats)",
    "first_divergence": "step (0 = the first new token)",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text with a real model in NumPy, in baseline or fused order (or both, compared)",
        description="Generate text with a Llama-architecture model in NumPy, in textbook (baseline) or fused order.",
    )
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="smollm2-135m (default; fetch it first), tiny (random weights, byte tokenizer), or a .gguf / HF dir path",
    )
    p.add_argument("--mode", choices=["fused", "baseline", "both"], default="fused", help="order (default fused)")
    p.add_argument(
        "--max-new-tokens",
        type=integer(minimum=1),
        default=64,
        metavar="N",
        help="at most N new tokens (default 64; the context also ends a generation)",
    )
    p.add_argument("--dtype", choices=MODEL_DTYPES, default="float32", help="storage dtype (default float32)")
    p.add_argument("--temperature", type=number(minimum=0.0), default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument(
        "--top-k", type=integer(minimum=1), default=None, metavar="K", help="sample among the K largest logits"
    )
    p.add_argument(
        "--seed", type=integer(minimum=0), default=0, metavar="S", help="seed of the sampling draws (default 0)"
    )
    p.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the model's chat template")
    p.add_argument("--json", action="store_true", help="print one JSON record instead of streaming text")
    p.set_defaults(func=run)


def _run_record(g: Generation) -> dict[str, Any]:
    n_decode = max(len(g.tokens) - 1, 0)
    return {
        "mode": g.mode,
        "tokens": list(g.tokens),
        "text": g.text,
        "finish_reason": g.finish_reason,
        "prefill_seconds": round(g.prefill_seconds, 4),
        "decode_tokens_per_second": round(n_decode / g.decode_seconds, 2) if n_decode and g.decode_seconds else None,
    }


def _speed(g: Generation) -> str:
    n_decode = len(g.tokens) - 1
    rate = f"{n_decode / g.decode_seconds:.1f} tok/s" if n_decode > 0 and g.decode_seconds > 0 else "-"
    return f"{len(g.prompt_ids)} prompt tokens in {g.prefill_seconds:.2f} s, decode {rate}"


def _load(args: argparse.Namespace, console: Console) -> Model:
    """The model, with a progress bar while its weights are read (a real model takes a few seconds)."""
    try:
        with console.progress() as bar:
            task = bar.add_task(f"loading {args.model}", total=None)
            model = load_model(
                args.model,
                args.dtype,
                seed=args.seed,
                on_tensor=lambda done, total: bar.update(task, completed=done, total=total),
            )
            modes: tuple[Mode, ...] = ("fused", "baseline") if args.mode == "both" else (args.mode,)
            bar.remove_task(task)
            bar.add_task(f"preparing {' and '.join(modes)} weights", total=None)
            for mode in modes:
                model.weights(mode)  # folds the RMSNorm gains for fused: part of loading, not of generating
    except (FileNotFoundError, CorruptModel, ValueError, MissingExtra) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read the model {args.model}: {exc.strerror or exc}") from None
    return model


def run(args: argparse.Namespace, console: Console) -> int:
    if args.top_k is not None and args.temperature == 0:
        raise UsageError("--top-k only applies when sampling; give --temperature > 0 as well (0 is greedy)")
    model = _load(args, console)
    sampling = (
        "greedy" if args.temperature == 0 else f"temperature {args.temperature:g}, top-k {args.top_k}, seed {args.seed}"
    )
    chat = not args.no_chat and model.tokenizer is not None and model.tokenizer.has_chat_template
    try:
        prompt_ids(model, args.prompt, chat=not args.no_chat)  # an empty or too long prompt: refused before output
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    common = {"temperature": args.temperature, "top_k": args.top_k, "seed": args.seed, "chat": not args.no_chat}

    def stream(_tok: int, piece: str) -> None:
        if piece:
            console.stream(piece)

    on_token = None if args.json else stream
    if not args.json:
        mode = "both orders" if args.mode == "both" else f"{args.mode} order"
        template = "chat template" if chat else "raw prompt"
        console.note(f"{model.cfg.name} · {mode} · {model.dtype.name} · {template} · {sampling}")
    try:
        if args.mode == "both":
            if not args.json:
                console.stream("fused:    ", style="bold")
            cmp = compare_modes(model, args.prompt, args.max_new_tokens, first="fused", on_token=on_token, **common)
        else:
            g = generate(model, args.prompt, args.max_new_tokens, args.mode, on_token=on_token, **common)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.mode == "both":
        return _report_both(args, console, model, cmp, chat)
    if args.json:
        console.json(_record(args, model, chat, [g], None))
        return 0
    console.blank()
    console.note(f"{len(g.tokens)} tokens ({g.finish_reason}) · {_speed(g)}")
    return 0


def _record(
    args: argparse.Namespace, model: Model, chat: bool, runs: list[Generation], cmp: ModeComparison | None
) -> dict[str, Any]:
    return json_record(
        "generate",
        UNITS,
        model=model.cfg.name,
        source=model.source,
        dtype=model.dtype.name,
        prompt=args.prompt,
        chat=chat,
        prompt_tokens=len(runs[0].prompt_ids),
        mode=args.mode,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        runs=[_run_record(g) for g in runs],
        max_logit_diff=None if cmp is None else cmp.max_logit_diff,
        logit_scale=None if cmp is None else cmp.logit_scale,
        identical=None if cmp is None else cmp.identical,
        first_divergence=None if cmp is None else cmp.first_divergence,
    )


def _report_both(args: argparse.Namespace, console: Console, model: Model, cmp: ModeComparison, chat: bool) -> int:
    fused, baseline = cmp.runs["fused"], cmp.runs["baseline"]
    if args.json:
        console.json(_record(args, model, chat, [fused, baseline], cmp))
        return 0
    console.blank()
    console.stream("baseline: ", style="bold")
    console.stream(baseline.text + "\n")
    console.table(
        None,
        ["order", "tokens", "finish", "prefill s", "decode tok/s"],
        [
            (
                g.mode,
                len(g.tokens),
                g.finish_reason,
                f"{g.prefill_seconds:.2f}",
                f"{(len(g.tokens) - 1) / g.decode_seconds:.1f}" if len(g.tokens) > 1 and g.decode_seconds else "-",
            )
            for g in (fused, baseline)
        ],
    )
    if cmp.identical:
        console.note("baseline ran teacher-forced along the fused tokens (its own choices were the same)")
    rel = cmp.max_logit_diff / cmp.logit_scale if cmp.logit_scale else float("nan")
    console.text(
        f"max |logit diff| fused vs baseline: {cmp.max_logit_diff:.3g} "
        f"(max |logit| {cmp.logit_scale:.3g}, relative {rel:.2g}), {len(fused.tokens)} steps, same prefixes"
    )
    if cmp.identical:
        console.success(f"tokens identical in both orders ({len(fused.tokens)}/{len(fused.tokens)})")
    else:
        console.text(
            f"tokens differ: baseline would choose another token at step {cmp.first_divergence} of {len(fused.tokens)}",
            style="bold yellow",
        )
    return 0
