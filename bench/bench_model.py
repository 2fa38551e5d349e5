"""Benchmark: SmolLM2-135M-Instruct in float32 on the CPU, normfuse (NumPy, baseline and fused order) vs Hugging Face
transformers (torch, eager attention), same GGUF file, same machine, one run.

Each implementation runs in its own subprocess, so its peak resident memory (getrusage ru_maxrss) is its own:
model, prepared weights, KV cache, activations and the libraries it imports. Measured in every worker:

- decode: prefill a short chat prompt, then 64 single-token forward steps with the KV cache, feeding back the
  greedy token (end-of-generation tokens are ignored so every run does 64 steps); tokens/s = 64 / time of the
  64 steps. HF runs the same hand-written loop (model(next_id, past_key_values=...)), not `generate`, so neither
  side pays for sampling machinery;
- prefill: one forward call over 512 token ids (fixed seed), returning the logits of all 512 positions and the
  KV cache (HF: model(ids), whose default also returns all logits).
Each is repeated `--repeats` times after a warm-up, and the best (fastest) run is reported with the median beside
it: the best run is the one least disturbed by other processes on a shared machine.

torch uses its default thread count (torch.get_num_threads(), printed); numpy's OpenBLAS its default for a large
step, and one thread for a decode-sized step (`Model.forward` wraps each step in `ops.step_blas_threads`).

    .venv/bin/python bench/bench_model.py            # needs: normfuse fetch smollm2-135m; pip install -e ".[hf]"
    .venv/bin/python bench/bench_model.py --no-hf    # normfuse only
    .venv/bin/python bench/bench_model.py --json     # one JSON record
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normfuse_ref.models.llama.weights import Mode

PROMPT = "What is the capital of France?"
NEW_TOKENS = 64
PREFILL = 512


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _summary(times: list[float]) -> dict[str, float]:
    return {"best": min(times), "median": statistics.median(times)}


def worker_normfuse(mode: Mode, repeats: int) -> dict[str, Any]:
    import numpy as np

    from normfuse_ref.models.llama.model import load_model, prompt_ids

    t0 = time.perf_counter()
    model = load_model("smollm2-135m")
    model.weights(mode)
    load_s = time.perf_counter() - t0
    ids = prompt_ids(model, PROMPT)
    big = np.random.default_rng(0).integers(100, 40000, PREFILL)

    def decode() -> float:
        logits, cache = model.forward(ids, None, mode)
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

    decode(), prefill()  # warm-up
    dec = [decode() for _ in range(repeats)]
    pre = [prefill() for _ in range(repeats)]
    return {
        "impl": f"normfuse {mode}",
        "load_s": load_s,
        "decode_s": _summary(dec),
        "prefill_s": _summary(pre),
        "peak_rss_mb": _rss_mb(),
        "threads": "OpenBLAS default (decode-sized steps: 1)",
    }


def worker_hf(repeats: int, threads: int | None) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    import transformers

    if threads is not None:
        torch.set_num_threads(threads)

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

    decode(), prefill()  # warm-up
    dec = [decode() for _ in range(repeats)]
    pre = [prefill() for _ in range(repeats)]
    return {
        "impl": "HF transformers eager" + ("" if threads is None else f" ({threads} thread)"),
        "load_s": load_s,
        "decode_s": _summary(dec),
        "prefill_s": _summary(pre),
        "peak_rss_mb": _rss_mb(),
        "threads": f"torch {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def machine_info(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> dict[str, Any]:
    """The machine a benchmark ran on, and how busy it was (1-minute, 5-minute, 15-minute load averages)."""
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }


def run_worker(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"worker {' '.join(args)} failed:\n{tail}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (best is reported)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    ap.add_argument("--json", action="store_true", help="print one JSON record")
    ap.add_argument(
        "--hf-one-thread", action="store_true", help="also run HF with torch.set_num_threads(1) (a contention check)"
    )
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "hf":
            rec = worker_hf(args.repeats, int(rest[0]) if rest else None)
        else:
            rec = worker_normfuse(rest[0], args.repeats)
        print(json.dumps(rec))
        return 0

    from normfuse_ref.models.llama.fetch import find_model

    try:
        find_model("smollm2-135m")
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    load_before = os.getloadavg()
    rows = [run_worker(["normfuse", m, "--repeats", str(args.repeats)]) for m in ("baseline", "fused")]
    hf = None
    if not args.no_hf:
        hf = run_worker(["hf", "--repeats", str(args.repeats)])
        rows.append(hf)
        if args.hf_one_thread:
            rows.append(run_worker(["hf", "1", "--repeats", str(args.repeats)]))
    load_after = os.getloadavg()
    for r in rows:
        r["decode_tok_s"] = NEW_TOKENS / r["decode_s"]["best"]
    for r in rows:
        r["decode_vs_hf"] = r["decode_tok_s"] / hf["decode_tok_s"] if hf else None
        r["prefill_vs_hf"] = hf["prefill_s"]["best"] / r["prefill_s"]["best"] if hf else None
    machine = machine_info(load_before, load_after)
    if args.json:
        print(json.dumps({"machine": machine, "prompt": PROMPT, "new_tokens": NEW_TOKENS, "prefill_tokens": PREFILL,
                          "repeats": args.repeats, "results": rows}, indent=2))  # fmt: skip
        return 0
    print(f"SmolLM2-135M-Instruct float32, {machine['cpus']} cores, Python {machine['python']}, "
          f"load average {machine['load_average_before'][0]} -> {machine['load_average_after'][0]}, "
          f"best of {args.repeats}")  # fmt: skip
    head = (
        f"{'implementation':32} {'decode tok/s':>13} {'x HF':>6} {'prefill 512 s':>14} {'x HF':>6} {'peak RSS MB':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        dx = f"{r['decode_vs_hf']:.2f}" if r.get("decode_vs_hf") is not None else "-"
        px = f"{r['prefill_vs_hf']:.2f}" if r.get("prefill_vs_hf") is not None else "-"
        print(
            f"{r['impl']:32} {r['decode_tok_s']:13.1f} {dx:>6} {r['prefill_s']['best']:14.2f} {px:>6} "
            f"{r['peak_rss_mb']:12.0f}"
        )
    print(
        "x HF: normfuse speed / HF speed (decode tokens/s ratio; prefill HF time / normfuse time); >= 1 is as fast "
        "or faster."
    )
    print("medians (decode tok/s, prefill s): " + "; ".join(
        f"{r['impl']} {NEW_TOKENS / r['decode_s']['median']:.1f}, {r['prefill_s']['median']:.2f}" for r in rows
    ))  # fmt: skip
    print("threads: " + "; ".join(f"{r['impl']}: {r['threads']}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
