"""Benchmark: sentence embeddings with all-MiniLM-L6-v2 in float32 on the CPU, normfuse (NumPy, baseline and fused
order) vs Hugging Face transformers (torch, eager attention), same safetensors, same machine, one run.

The task: embed 64 sentences of ~20 tokens each (one padded batch of 64), from tokens to unit vectors: tokenise,
pad to the longest, run the encoder, mean-pool over the real tokens, L2-normalise. The sentences are read at run
time from the standard library's docstrings (the first 64 with 16 to 24 WordPiece tokens), so nothing is copied
into the repository and every run on the same Python sees the same text.

Three workers, each its own subprocess so that its peak resident memory (getrusage ru_maxrss) is its own (model,
prepared weights, activations, imported libraries): normfuse baseline, normfuse fused, HF transformers eager
(`BertModel`, torch's default thread count; the pooling written in torch as sentence-transformers computes it).
Each worker loads and warms up once; then the parent *alternates* them (bench/workers.py), one timed embedding each per round, for
`--repeats` rounds, so that a burst of load from other processes hits all three alike. Reported: the best and
the median per worker, sentences per second (of the best), x HF = HF time / normfuse time (>= 1: as fast or
faster), and the load average before and after.

    .venv/bin/python bench/bench_embed.py              # needs: normfuse fetch all-minilm-l6-v2; pip install -e ".[hf]"
    .venv/bin/python bench/bench_embed.py --no-hf      # normfuse only
    .venv/bin/python bench/bench_embed.py --json       # one JSON record
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from workers import Worker, alternate, machine_info, serve  # this script's directory is on sys.path

MODEL = "all-minilm-l6-v2"
SENTENCES = 64
TOKENS = (16, 24)  # the WordPiece length of a sentence ([CLS] and [SEP] included): ~20
SOURCES = ("json", "collections", "argparse", "pathlib", "functools", "itertools", "subprocess", "threading",
           "logging", "decimal", "fractions", "statistics", "textwrap", "string", "heapq", "bisect", "csv",
           "zipfile", "tarfile", "shutil", "tempfile", "unittest", "inspect", "dataclasses", "enum", "typing")  # fmt: skip


def sentences(count_tokens: Callable[[str], int]) -> list[str]:
    """The first SENTENCES sentences of the standard-library docstrings in SOURCES with TOKENS[0]..TOKENS[1]
    tokens, in a fixed order (module by module, then every documented attribute in sorted order)."""
    import importlib

    out: list[str] = []
    for name in SOURCES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""]
        docs += [
            getattr(getattr(module, a), "__doc__", None) or "" for a in sorted(dir(module)) if not a.startswith("_")
        ]
        for doc in docs:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if not (s.endswith(".") and s[0].isupper() and len(s) < 300) or s in out:
                    continue
                if TOKENS[0] <= count_tokens(s) <= TOKENS[1]:
                    out.append(s)
                    if len(out) == SENTENCES:
                        return out
    raise SystemExit(f"only {len(out)} suitable sentences found in the standard library's docstrings")


# ---------------------------------------------------------------------------------------------------------------
# workers: load, warm up, then one timed embedding per "run" line on stdin
# ---------------------------------------------------------------------------------------------------------------


def worker_normfuse(mode: str) -> tuple[Callable[[], None], dict[str, Any]]:
    from normfuse_ref.models.bert import load_model

    model = load_model(MODEL)
    model.weights(mode)  # type: ignore[arg-type]  # fold the LayerNorms before the clock starts
    tok = model.tokenizer
    assert tok is not None
    texts = sentences(lambda s: len(tok.encode(s)))

    def once() -> None:
        e = model.embed(texts, mode, batch_size=SENTENCES)  # type: ignore[arg-type]
        assert e.shape == (SENTENCES, model.cfg.dim)

    threads = f"{model.executor().thread_count} workers, 1 BLAS thread"  # the executor sets it for the process
    info = {"impl": f"normfuse {mode}", "threads": threads, "mean_tokens": _mean_tokens(tok.encode, texts)}
    return once, info


def worker_hf() -> tuple[Callable[[], None], dict[str, Any]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from normfuse_ref.models.llama.fetch import find_model

    path = str(find_model(MODEL))
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.BertModel.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", add_pooling_layer=False
    ).eval()
    texts = sentences(lambda s: len(tok.encode(s)))

    def once() -> None:
        with torch.inference_mode():
            enc = tok(texts, padding=True, return_tensors="pt")
            h = model(**enc).last_hidden_state  # (B, T, d)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)  # (B, d)
        assert tuple(e.shape) == (SENTENCES, model.config.hidden_size)

    info = {
        "impl": "HF transformers eager",
        "threads": f"torch {torch.get_num_threads()} threads",
        "mean_tokens": _mean_tokens(tok.encode, texts),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    return once, info


def _mean_tokens(encode: Callable[[str], Any], texts: list[str]) -> float:
    return statistics.mean(len(encode(t)) for t in texts)


def serve_worker(kind: str, threads: int | None) -> int:
    """Load and warm up one worker, then time one embedding per "embed" line (bench/workers.py). `threads` caps
    torch too (BLAS, OpenMP and normfuse's executor were capped by the environment: `Worker`)."""
    if threads is not None and kind == "hf":
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    once, info = worker_hf() if kind == "hf" else worker_normfuse(kind)
    info["load_s"] = time.perf_counter() - t0

    def embed() -> float:
        t = time.perf_counter()
        once()
        return time.perf_counter() - t

    return serve({"embed": embed}, info)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="alternating rounds (one timed embedding per worker each)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    ap.add_argument("--json", action="store_true", help="print one JSON record")
    ap.add_argument(
        "--threads", type=int, default=None, help="cap BLAS and torch threads in every worker (default: theirs)"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return serve_worker(args.worker, args.threads)

    from normfuse_ref.models.llama.fetch import find_model

    try:
        find_model(MODEL)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    load_before = os.getloadavg()
    script = os.path.abspath(__file__)
    extra = [] if args.threads is None else ["--threads", str(args.threads)]
    kinds = ("baseline", "fused", *(() if args.no_hf else ("hf",)))
    workers = [Worker(k, [script, "--worker", k, *extra], args.threads) for k in kinds]
    rows = alternate(workers, ["embed"], args.repeats)
    for r in rows:
        r |= {"best_s": r["embed"]["best"], "median_s": r["embed"]["median"], "times_s": r["embed"]["times"]}
    load_after = os.getloadavg()
    hf = next((r for r in rows if r["impl"].startswith("HF")), None)
    for r in rows:
        r["sentences_per_s"] = SENTENCES / r["best_s"]
        r["vs_hf"] = hf["best_s"] / r["best_s"] if hf else None
        r["vs_hf_median"] = hf["median_s"] / r["median_s"] if hf else None
    machine = machine_info(load_before, load_after)
    if args.json:
        record = {"machine": machine, "sentences": SENTENCES, "repeats": args.repeats, "threads": args.threads}
        print(json.dumps({**record, "results": rows}, indent=2))
        return 0
    print(f"all-MiniLM-L6-v2 float32: {SENTENCES} sentences of {rows[0]['mean_tokens']:.1f} tokens on average, one batch, "
          f"{machine['cpus']} cores, Python {machine['python']}, load average {machine['load_average_before'][0]} -> "
          f"{machine['load_average_after'][0]}, {args.repeats} alternating rounds")  # fmt: skip
    head = f"{'implementation':24} {'best s':>8} {'median s':>9} {'sent/s':>7} {'x HF':>6} {'x HF med':>9} {'peak RSS MB':>12}"
    print(head)
    print("-" * len(head))
    for r in rows:
        x = f"{r['vs_hf']:.2f}" if r["vs_hf"] is not None else "-"
        xm = f"{r['vs_hf_median']:.2f}" if r["vs_hf_median"] is not None else "-"
        print(f"{r['impl']:24} {r['best_s']:8.4f} {r['median_s']:9.4f} {r['sentences_per_s']:7.0f} {x:>6} {xm:>9} "
              f"{r['peak_rss_mb']:12.0f}")  # fmt: skip
    print("x HF: HF time / normfuse time (best, and of the medians); >= 1 is as fast or faster.")
    print("threads: " + "; ".join(f"{r['impl']}: {r['threads']}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
