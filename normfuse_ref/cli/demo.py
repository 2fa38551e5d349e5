"""`normfuse demo`: the three fused rules beside their reference order, in every dtype, against a float64 oracle.

Rules are named as everywhere else in normfuse (the functions in `normfuse_ref.fusion`, the fuzz campaigns, the
proofs): rms_norm_linear, layer_norm_linear, softmax_linear. The size is capped (n * m <= MAX_ELEMENTS) because the
demo is a picture, not a benchmark: at the cap one run takes a few seconds and ~0.3 GB.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from ..fusion import layer_norm_linear, rms_norm_linear, softmax_linear
from ..layers import layer_norm, linear, rms_norm, softmax
from ..precision import DTYPES, resolve_dtype
from .args import integer
from .console import Col, Console, UsageError, json_record

Rule = tuple[
    str,
    Callable[..., np.ndarray],
    Callable[..., np.ndarray],
    Callable[[np.random.Generator, int, int], dict[str, np.ndarray]],
]


def _rms_inputs(rng: np.random.Generator, n: int, m: int) -> dict[str, np.ndarray]:
    return {
        "x": rng.standard_normal((4, n)),
        "g": 1 + 0.1 * rng.standard_normal(n),
        "F": rng.standard_normal((n, m)) / np.sqrt(n),
    }


def _ln_inputs(rng: np.random.Generator, n: int, m: int) -> dict[str, np.ndarray]:
    return {
        "x": rng.standard_normal((4, n)) + 0.5,
        "gamma": 1 + 0.1 * rng.standard_normal(n),
        "beta": 0.1 * rng.standard_normal(n),
        "F": rng.standard_normal((n, m)) / np.sqrt(n),
    }


def _sm_inputs(rng: np.random.Generator, n: int, m: int) -> dict[str, np.ndarray]:
    return {"z": 3 * rng.standard_normal((4, n)), "V": rng.standard_normal((n, m))}


RULES: list[Rule] = [
    (
        "rms_norm_linear",
        lambda x, g, F: linear(rms_norm(x, g), F),
        lambda x, g, F: rms_norm_linear(x, g, F),
        _rms_inputs,
    ),
    (
        "layer_norm_linear",
        lambda x, gamma, beta, F: linear(layer_norm(x, gamma, beta), F),
        lambda x, gamma, beta, F: layer_norm_linear(x, gamma, beta, F),
        _ln_inputs,
    ),
    (
        "softmax_linear",
        lambda z, V: linear(softmax(z), V),
        lambda z, V: softmax_linear(z, V, tile_size=16),
        _sm_inputs,
    ),
]


#: Largest n * m: the weight F (n, m) is copied per dtype and as its float64 oracle (~2 s and ~0.2 GB at the cap,
#: measured at n = 4096, m = 1024).
MAX_ELEMENTS = 1 << 22
#: Largest n or m alone (with the other at 1, the arrays are small, but a vector of 2^20 is already no demo).
MAX_SIDE = 1 << 20

UNITS = {
    "n": "elements",
    "m": "elements",
    "max_err_reference": "absolute error (max over the output, in the output's scale)",
    "max_err_fused": "absolute error (max over the output, in the output's scale)",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="the three fused rules vs their reference order, per dtype")
    p.add_argument("--n", type=integer(minimum=1, maximum=MAX_SIDE), default=256, help="row length n (default 256)")
    p.add_argument("--m", type=integer(minimum=1, maximum=MAX_SIDE), default=64, help="output width m (default 64)")
    p.add_argument("--seed", type=integer(minimum=0), default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--dtype", action="append", help="restrict to these dtypes (repeatable); default all")
    p.add_argument("--json", action="store_true", help="print the results as JSON (docs/cli.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.n * args.m > MAX_ELEMENTS:
        raise UsageError(f"--n * --m must be at most {MAX_ELEMENTS} (a demo, not a benchmark); got {args.n} * {args.m}")
    try:
        dtypes = list(dict.fromkeys(resolve_dtype(d) for d in (args.dtype or DTYPES)))
    except ValueError as exc:
        raise UsageError(f"--dtype: {exc}") from None
    rows: list[dict[str, Any]] = []
    for name, reference, fused, inputs in RULES:
        rng = np.random.default_rng(args.seed)
        p64 = inputs(rng, args.n, args.m)
        for dt in dtypes:
            p = {k: v.astype(dt) for k, v in p64.items()}  # the stored inputs ...
            exact = reference(**{k: v.astype(np.float64) for k, v in p.items()})  # ... and the oracle on them
            err_ref = float(np.max(np.abs(reference(**p).astype(np.float64) - exact)))
            err_fused = float(np.max(np.abs(fused(**p).astype(np.float64) - exact)))
            rows.append({"rule": name, "dtype": dt.name, "max_err_reference": err_ref, "max_err_fused": err_fused})
    if args.json:
        console.json(json_record("demo", UNITS, n=args.n, m=args.m, seed=args.seed, results=rows))
        return 0
    console.table(
        f"Fused vs reference order: max |error| against the float64 oracle (n={args.n}, m={args.m}, seed={args.seed})",
        ["rule", Col("dtype", "left"), "reference", "fused"],
        [(r["rule"], r["dtype"], f"{r['max_err_reference']:.2e}", f"{r['max_err_fused']:.2e}") for r in rows],
    )
    return 0
