"""Argument types shared by the subcommands: numbers checked where argparse parses them, so the error names the flag.

    p.add_argument("--seed", type=integer(minimum=0), default=0)
    p.add_argument("--temperature", type=number(minimum=0.0), default=0.0)

`normfuse generate --seed -1` then fails with one line,
`error: normfuse generate: argument --seed: must be an integer >= 0; got '-1'`, before anything runs. Numbers are
always finite (nan and inf are refused): a flag that takes a count, a size or a temperature has no use for them.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Sequence

from .console import UsageError

__all__ = ["given_options", "integer", "number", "refuse"]


def _allowed(kind: str, minimum: float | None, maximum: float | None) -> str:
    lo, hi = (v if isinstance(v, int) or v is None else f"{v:g}" for v in (minimum, maximum))
    if minimum is not None and maximum is not None:
        return f"{kind} from {lo} to {hi}"
    if minimum is not None:
        return f"{kind} >= {lo}"
    if maximum is not None:
        return f"{kind} <= {hi}"
    return kind


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse `type=` for a whole number in [minimum, maximum] (either bound optional)."""
    allowed = _allowed("an integer", minimum, maximum)

    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}; got {text!r}") from None
        if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            raise argparse.ArgumentTypeError(f"must be {allowed}; got {text!r}")
        return v

    return parse


def number(*, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse `type=` for a finite number in [minimum, maximum] (either bound optional)."""
    allowed = _allowed("a finite number", minimum, maximum)

    def parse(text: str) -> float:
        try:
            v = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}; got {text!r}") from None
        if not math.isfinite(v) or (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            raise argparse.ArgumentTypeError(f"must be {allowed}; got {text!r}")
        return v

    return parse


def given_options(argv: Sequence[str]) -> frozenset[str]:
    """The long options typed on a command line (`--context 5` and `--context=5` both give "--context"), up to a
    bare `--`. The parsers refuse abbreviations (allow_abbrev=False), so an option is always spelled in full here;
    main() stores the set as `args.given` so that a command can refuse a flag that does not apply to what it was
    asked to do, instead of silently ignoring it."""
    out: set[str] = set()
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--"):
            out.add(arg.split("=", 1)[0])
    return frozenset(out)


def refuse(given: Iterable[str], flags: Iterable[str], because: str) -> None:
    """UsageError naming the first of `flags` that was given, with `because` (what it does not apply to)."""
    typed = set(given)
    for flag in flags:
        if flag in typed:
            raise UsageError(f"{flag} does not apply {because}")
