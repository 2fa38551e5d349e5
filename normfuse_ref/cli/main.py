"""`normfuse` entry point: builds the parser from the subcommand modules and maps errors to exit status 2.

Each subcommand module exposes `add_parser(subparsers)` (registering its parser with `set_defaults(func=run)`)
and `run(args, console) -> int`. Add a module to SUBCOMMANDS to add a command.

Start-up stays fast because only the chosen command's module is imported (`normfuse demo` never imports
Hypothesis or the model readers; `normfuse --version` imports no subcommand at all). The full parser, with every
module imported, is built only for `normfuse --help` and when no valid command is given.

Errors: a `UsageError` (a user's mistake), a `MissingExtra` (an optional part not installed) and an `OSError`
that escapes a command (a file that cannot be read or written) are each printed as one line on stderr, exit
status 2, no traceback. Ctrl-C is "error: interrupted", status 130; SIGTERM (what `kill` and `timeout` send) and
SIGHUP (a closed terminal) take the same way out, "error: terminated", status 128 + the signal, so that a command
stopped by one leaves no half-written file behind either (every writer cleans up when an exception passes).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from types import ModuleType
from typing import Any

from ..extras import MissingExtra, extra_of
from .args import given_options
from .console import Console, UsageError

#: Subcommand modules under normfuse_ref.cli, in the order `normfuse --help` lists them.
SUBCOMMANDS = ["timeline", "demo", "prove", "fetch", "generate", "embed", "sweep", "fuzz", "accuracy"]
#: Commands that run Hypothesis: its working files go to a temporary directory, not a `.hypothesis/` folder in
#: the user's current directory.
HYPOTHESIS_COMMANDS = {"fuzz"}


class Terminated(KeyboardInterrupt):
    """Raised in the CLI's process by SIGTERM or SIGHUP: an interruption, unwound like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate_like_ctrl_c() -> None:
    """SIGTERM and SIGHUP raise `Terminated` in this process (its processes forked later die of them as before)."""
    me = os.getpid()

    def handler(signum: int, _frame: Any) -> None:
        if os.getpid() != me:  # a forked worker: the default action, as if no handler were set
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, handler)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, status 2) instead of printing usage and exiting itself, and that
    takes options only spelled in full (`--pap` is not `--paper`: a script stays valid when an option is added)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, if it is a known one and no top-level --help comes first."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else None
    return None


def _import(name: str) -> ModuleType:
    """The subcommand's module; UsageError naming the extra to install if a package it needs is missing."""
    try:
        return importlib.import_module(f"normfuse_ref.cli.{name}")
    except ModuleNotFoundError as exc:
        extra = extra_of(exc.name or "")
        if extra is None:
            raise
        raise UsageError(f"normfuse {name} needs {exc.name} (not installed): pip install 'normfuse[{extra}]'") from None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `normfuse` parser. With `only`, just that subcommand's module is imported; the others are listed by
    name (enough to parse a command line that names `only`)."""
    parser = _Parser(
        prog="normfuse", description="Executable checks of deferred-normalisation fusion (arXiv 2502.17728)."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, add_help=False)
            continue
        try:
            module = _import(name)
        except UsageError as exc:
            if only is not None:
                raise
            sub.add_parser(name, help=str(exc).removeprefix(f"normfuse {name} "), add_help=False)
            continue
        module.add_parser(sub)
    return parser


def _version() -> str:
    from normfuse_ref import __version__

    return f"normfuse {__version__}"


@contextmanager
def _hypothesis_scratch() -> Iterator[None]:
    """Point Hypothesis's storage (its example database, its cache of constants) at a temporary directory."""
    import tempfile

    from hypothesis import configuration

    with tempfile.TemporaryDirectory(prefix="normfuse-hypothesis-") as scratch:
        configuration.set_hypothesis_home_dir(scratch)
        try:
            yield
        finally:
            configuration.set_hypothesis_home_dir(None)  # back to Hypothesis's own default


def _width() -> int | None:
    """COLUMNS if it is a usable width (>= 20); 80 if it is set to anything else (rich would read COLUMNS=0 as a
    width of 0 and print nothing at all, error lines included); None when it is not set (rich asks the terminal, or
    uses 80 when piped)."""
    text = os.environ.get("COLUMNS")
    if text is None:
        return None
    return int(text) if text.strip().isdigit() and int(text) >= 20 else 80


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    console = Console(width=_width(), no_color="NO_COLOR" in os.environ)
    if argv is None:  # the `normfuse` process itself (not a caller's, e.g. a test's, which keeps its own handlers)
        _terminate_like_ctrl_c()
    try:
        command = _chosen(args_in)
        if command is None and args_in[:1] == ["--version"]:
            console.text(_version())
            return 0
        with ExitStack() as stack:
            if command in HYPOTHESIS_COMMANDS and importlib.util.find_spec("hypothesis") is not None:
                stack.enter_context(_hypothesis_scratch())
            args = build_parser(command).parse_args(args_in)
            if not getattr(args, "func", None):
                raise UsageError(f"no command given; choose one of: {', '.join(SUBCOMMANDS)} (normfuse --help)")
            args.given = given_options(args_in)
            _check_settings()
            return int(args.func(args, console))
    except (UsageError, MissingExtra) as exc:
        console.error(str(exc))
        return 2
    except BrokenPipeError:  # `normfuse ... | head`: the reader left; say nothing more
        _silence_stdout()
        return 141
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        console.error(f"{exc.strerror or exc}{where}")
        return 2
    except Terminated as exc:
        console.error("terminated")
        return 128 + exc.signum
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130


def _check_settings() -> None:
    """The environment's settings, which code deep inside a command reads, checked before the command starts: a
    bad one is one error line, not a traceback (or a sweep's every point "does not fit") from where it is read."""
    from ..parallel import threads_setting

    try:
        threads_setting(None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's exit-time flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
