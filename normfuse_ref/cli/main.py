"""`normfuse` entry point: builds the parser from the subcommand modules and maps errors to exit status 2.

Each subcommand module exposes `add_parser(subparsers)` (registering its parser with `set_defaults(func=run)`)
and `run(args, console) -> int`. Add a module to SUBCOMMANDS to add a command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .console import Console, UsageError

#: Subcommand modules under normfuse_ref.cli, in the order `normfuse --help` lists them.
SUBCOMMANDS = ["timeline", "demo", "prove", "fetch", "generate", "sweep", "fuzz"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, status 2) instead of printing usage and exiting itself."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="normfuse", description="Executable checks of deferred-normalisation fusion (arXiv 2502.17728)."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"normfuse_ref.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"normfuse_ref.cli.{name}":
                continue  # a subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


def _version() -> str:
    from normfuse_ref import __version__

    return f"normfuse {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else None
    console = Console(width=width, no_color="NO_COLOR" in os.environ)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args, console))
    except UsageError as exc:
        console.error(str(exc))
        return 2
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
