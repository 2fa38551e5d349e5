"""The one place the CLI talks to the terminal: methods named by meaning, not by rich's API."""

from __future__ import annotations

import json as _json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console as RichConsole
from rich.console import RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class UsageError(Exception):
    """A user's mistake: the CLI prints the message as one line on stderr and exits with status 2."""


class Console:
    """Output for the CLI. `out` is stdout (results), `err` is stderr (errors and progress)."""

    def __init__(self, *, width: int | None = None, no_color: bool = False) -> None:
        self.out = RichConsole(width=width, no_color=no_color, soft_wrap=False, highlight=False)
        self.err = RichConsole(stderr=True, width=width, no_color=no_color, highlight=False)

    def print(self, *renderables: RenderableType, **kwargs: Any) -> None:
        self.out.print(*renderables, **kwargs)

    def table(
        self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None
    ) -> None:
        t = Table(title=title, caption=caption, title_justify="left")
        for i, c in enumerate(columns):
            t.add_column(c, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*(str(v) for v in r))
        self.out.print(t)

    def success(self, msg: str) -> None:
        self.out.print(f"[bold green]✓[/] {msg}")

    def warning(self, msg: str) -> None:
        self.err.print(f"[bold yellow]warning:[/] {msg}")

    def error(self, msg: str) -> None:
        """One line on stderr, no traceback."""
        self.err.print(f"[bold red]error:[/] {msg}", soft_wrap=True)

    def json(self, obj: Any) -> None:
        """Machine-readable output: plain JSON on stdout, nothing else."""
        sys.stdout.write(_json.dumps(obj, indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()

    def progress(self) -> Progress:
        """A progress bar on stderr (so `--json` output on stdout stays clean)."""
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.err
        )
