"""Benchmark: SmolLM2-135M-Instruct in float32 on the CPU, normfuse (NumPy, baseline and fused order) vs Hugging Face
transformers (torch, eager attention), same GGUF file, same machine, one run, alternating.

Each implementation is a persistent worker in its own subprocess, so its peak resident memory (getrusage ru_maxrss)
is its own: model, prepared weights, KV cache, activations and the libraries it imports (bench/workers.py). Each
worker loads and warms up once; then the parent alternates them, one timed run of each measurement per worker per
round, for `--repeats` rounds, so that load from other processes hits all three alike. Measured:

- decode: prefill a short chat prompt, then 64 single-token forward steps with the KV cache, feeding back the
  greedy token (end-of-generation tokens are ignored so every run does 64 steps); tokens/s = 64 / time of the
  64 steps. HF runs the same hand-written loop (model(next_id, past_key_values=...)), not `generate`, so neither
  side pays for sampling machinery;
- prefill: one forward call over 512 token ids (fixed seed), returning the logits of all 512 positions and the
  KV cache (HF: model(ids), whose default also returns all logits).
Reported: the best (fastest) run, the one least disturbed by other processes, with the median beside it; x HF of
both.

Threads: torch its default (torch.get_num_threads(), printed); normfuse its executor's setting ($NORMFUSE_THREADS,
else the CPUs: worker threads that run products, elementwise work and softmax in blocks of rows), with BLAS on one
thread (`normfuse_ref.parallel.one_blas_thread`). `--threads N` caps every worker at N.

    .venv/bin/python bench/bench_model.py            # needs: normfuse fetch smollm2-135m; pip install -e ".[hf]"
    .venv/bin/python bench/bench_model.py --no-hf    # normfuse only
    .venv/bin/python bench/bench_model.py --json     # one JSON record
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers import Worker, alternate, machine_info, serve  # this script's directory is on sys.path

if TYPE_CHECKING:
    from normfuse_ref.models.llama.weights import Mode

PROMPT = "What is the capital of France?"
NEW_TOKENS = 64
PREFILL = 512
JOBS = ["decode", "prefill"]


def worker_normfuse(mode: Mode) -> tuple[dict[str, Callable[[], float]], dict[str, Any]]:
    import numpy as np

    from normfuse_ref.models.llama.model import load_model, prompt_ids

    t0 = time.perf_counter()
    model = load_model("smollm2-135m")
    model.weights(mode)
    load_s = time.perf_counter() - t0
    ids = prompt_ids(model, PROMPT)
    big = np.random.default_rng(0).integers(100, 40000, PREFILL)

    def decode() -> float:
        logits, cache = model.forward(ids, model.cache(len(ids) + NEW_TOKENS), mode)
        tok = int(np.argmax(logits[-1]))
        t = time.perf_counter()
        for _ in range(NEW_TOKENS):
            logits, cache = model.forward([tok], cache, mode)
            tok = int(np.argmax(logits[-1]))
        return time.perf_counter() - t

    def prefill() -> float:
        t = time.perf_counter()
        logits, _ = model.forward(big, None, mode)
        dt = time.perf_counter() - t
        assert logits.shape == (PREFILL, model.cfg.vocab_size)
        return dt

    threads = model.executor().thread_count
    info = {"impl": f"normfuse {mode}", "load_s": load_s, "threads": f"{threads} workers, 1 BLAS thread"}
    return {"decode": decode, "prefill": prefill}, info


def worker_hf() -> tuple[dict[str, Callable[[], float]], dict[str, Any]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    import transformers

    from normfuse_ref.models.llama.fetch import find_model

    path = find_model("smollm2-135m")
    t0 = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    load_s = time.perf_counter() - t0
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok.encode(chat, add_special_tokens=False)])
    big = torch.tensor(np.random.default_rng(0).integers(100, 40000, PREFILL)[None])

    def decode() -> float:
        with torch.inference_mode():
            out = model(ids, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(NEW_TOKENS):
                out = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            return time.perf_counter() - t

    def prefill() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            out = model(big)
            dt = time.perf_counter() - t
        assert tuple(out.logits.shape) == (1, PREFILL, model.config.vocab_size)
        return dt

    info = {
        "impl": "HF transformers eager",
        "load_s": load_s,
        "threads": f"torch {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    return {"decode": decode, "prefill": prefill}, info


def ratios(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """a / b of the best runs and of the medians."""
    return {k: a[k] / b[k] for k in ("best", "median")}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds (one timed run per worker each)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    ap.add_argument("--json", action="store_true", help="print one JSON record")
    ap.add_argument("--threads", type=int, default=None, help="cap every worker's threads (default: theirs)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.worker == "hf":
            if args.threads is not None:
                import torch

                torch.set_num_threads(args.threads)
            jobs, info = worker_hf()
        else:
            jobs, info = worker_normfuse(args.worker)
        return serve(jobs, info)

    from normfuse_ref.models.llama.fetch import find_model

    try:
        find_model("smollm2-135m")
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    load_before = os.getloadavg()
    kinds = ["baseline", "fused", *(() if args.no_hf else ("hf",))]
    script = os.path.abspath(__file__)
    extra = [] if args.threads is None else ["--threads", str(args.threads)]
    workers = [Worker(k, [script, "--worker", k, *extra], args.threads) for k in kinds]
    rows = alternate(workers, JOBS, args.repeats)
    load_after = os.getloadavg()
    hf = rows[-1] if not args.no_hf else None
    for r in rows:
        r["decode_tok_s"] = {k: NEW_TOKENS / r["decode"][k] for k in ("best", "median")}
    for r in rows:
        r["decode_vs_hf"] = ratios(r["decode_tok_s"], hf["decode_tok_s"]) if hf else None
        r["prefill_vs_hf"] = ratios(hf["prefill"], r["prefill"]) if hf else None
    machine = machine_info(load_before, load_after)
    if args.json:
        print(json.dumps({"machine": machine, "prompt": PROMPT, "new_tokens": NEW_TOKENS, "prefill_tokens": PREFILL,
                          "repeats": args.repeats, "threads": args.threads, "results": rows}, indent=2))  # fmt: skip
        return 0
    print(f"SmolLM2-135M-Instruct float32, {machine['cpus']} cores, Python {machine['python']}, "
          f"load average {machine['load_average_before'][0]} -> {machine['load_average_after'][0]}, "
          f"{args.repeats} alternating rounds; best (median)")  # fmt: skip
    head = f"{'implementation':22} {'decode tok/s':>13} {'x HF':>13} {'prefill 512 s':>13} {'x HF':>11} {'peak RSS MB':>11}"
    print(head)
    print("-" * len(head))

    def pair(d: dict[str, float] | None, fmt: str) -> str:
        return "-" if d is None else f"{d['best']:{fmt}} ({d['median']:{fmt}})"

    for r in rows:
        print(f"{r['impl']:22} {pair(r['decode_tok_s'], '.1f'):>13} {pair(r['decode_vs_hf'], '.2f'):>13} "
              f"{pair(r['prefill'], '.2f'):>13} {pair(r['prefill_vs_hf'], '.2f'):>11} {r['peak_rss_mb']:11.0f}")  # fmt: skip
    print(
        "x HF: normfuse speed / HF speed (decode tokens/s ratio; prefill HF time / normfuse time), of the best runs "
        "and of the medians; >= 1 is as fast or faster."
    )
    print("threads: " + "; ".join(f"{r['impl']}: {r['threads']}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
