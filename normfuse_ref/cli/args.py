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
from collections.abc import Callable

__all__ = ["integer", "number"]


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
