"""The one place the CLI talks to the terminal: methods named by meaning, and user text always printed as text.

    console.heading(f"normfuse timeline: {name}")     # bold line(s), wrapped at the terminal width
    console.text(line) / console.note(line)          # plain / dim paragraph, wrapped at word boundaries
    console.verbatim(line)                           # a line to copy and paste, never wrapped
    console.table(title, ["rule", Col("n", justify="right")], rows, caption=...)
    console.fields([("path", str(path)), ("sha256", digest)])   # aligned label/value lines, never wrapped
    console.success(msg) / console.warning(msg) / console.error(msg)
    console.json(json_record("demo", {"n": "elements"}, n=256, ...))
    with console.progress(total=..., description=...) as bar: bar.advance()
    with console.status("loading model") as s: s.update("...")

**Text, never markup.** Every method above takes plain `str` and prints it as a `rich.text.Text`: a model name
`a[/]b`, a path `out/[x]/t.json` or a hardware name `[red]foo` comes out exactly as typed (rich would otherwise
read `[...]` as markup: a MarkupError traceback, or silently dropped text). Styling is the method's job (`heading`
is bold, `note` is dim, `error` says "error:" in red), never the caller's. `print(*renderables)` is for rich
renderables built elsewhere (a Gantt `Text`, a `Table`); a `str` given to it is text too, so no command can print
markup by accident. `verbatim(line)` prints a line to copy (code, a command) exactly, never wrapped.

**80 columns.** Output is laid out for the terminal's width (`COLUMNS`, 80 when piped or when COLUMNS is not a
width of at least 20). `table` never cuts an
identifier or a number: every cell is printed whole; headers wrap at spaces; when even that does not fit, the
table turns into one block per row ("first cell", then "header: value" lines). Titles and captions are
paragraphs that wrap at word boundaries.

**Streams.** Results go to stdout; errors, warnings and progress to stderr, so `--json` output stays clean.
Progress and status displays only appear when stderr is a terminal (nothing is left in a log or a pipe).
"""

from __future__ import annotations

import json as _json
import math
import re
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from rich.cells import cell_len
from rich.console import Console as RichConsole
from rich.console import RenderableType
from rich.text import Text

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.status import Status

__all__ = ["SCHEMA_VERSION", "Col", "Console", "UsageError", "json_record"]

#: Version of the --json layout (docs/cli.md). Bump it when a key changes meaning or goes away.
SCHEMA_VERSION = 1


class UsageError(Exception):
    """A user's mistake: the CLI prints the message as one line on stderr and exits with status 2."""


def json_record(command: str, units: Mapping[str, str], /, **fields: Any) -> dict[str, Any]:
    """The shape of every command's --json output: `{"schema_version", "command", **fields, "units"}`.

    `units` maps a key to its unit wherever that key appears in the record (also inside lists of records): e.g.
    `{"prefill_seconds": "s"}`. Every numeric key should have one; use "1" for a plain count or ratio that has
    no unit and a phrase where a unit needs words ("fraction of baseline latency"). docs/cli.md lists them all.
    """
    return {"schema_version": SCHEMA_VERSION, "command": command, **fields, "units": dict(units)}


@dataclass(frozen=True)
class Col:
    """A table column: its header and how its cells line up. Cells are never cut or wrapped; headers wrap."""

    header: str
    justify: Literal["left", "right"] = "right"


def _one_line(msg: str) -> str:
    """A message as a single line: any run of whitespace holding a line break becomes one space."""
    return re.sub(r"\s*[\r\n]+\s*", " ", msg).strip()


class Console:
    """Output for the CLI. `out` is stdout (results), `err` is stderr (errors, warnings and progress)."""

    def __init__(self, *, width: int | None = None, no_color: bool = False) -> None:
        self.out = RichConsole(width=width, no_color=no_color, soft_wrap=False, highlight=False)
        self.err = RichConsole(stderr=True, width=width, no_color=no_color, highlight=False)

    @property
    def width(self) -> int:
        """Columns of stdout (COLUMNS, the terminal's width, or 80 when piped)."""
        return self.out.width

    # -- text --------------------------------------------------------------------------------------------------

    def print(self, *renderables: RenderableType, **kwargs: Any) -> None:
        """Print rich renderables built elsewhere (a Gantt `Text`, a `Table`). A `str` is printed as plain text,
        never read as markup (rich's own `print` would read `[red]x` as a style)."""
        self.out.print(*(Text(r) if isinstance(r, str) else r for r in renderables), **kwargs)

    def verbatim(self, line: str) -> None:
        """Text exactly as given, never wrapped (a line to copy and paste: code, a command, a LaTeX equation)."""
        self.out.print(Text(line), soft_wrap=True)

    def text(self, line: str, *, style: str | None = None) -> None:
        """A paragraph of plain text, wrapped at word boundaries at the terminal's width."""
        self.out.print(Text(line, style=style or ""))

    def heading(self, line: str) -> None:
        """A bold paragraph (a command's first line, a section title)."""
        self.text(line, style="bold")

    def note(self, line: str) -> None:
        """A dim paragraph (captions, footnotes, what a number means)."""
        self.text(line, style="dim")

    def blank(self) -> None:
        self.out.print()

    def stream(self, piece: str, *, style: str | None = None) -> None:
        """Text as it arrives (generated tokens): printed exactly, no wrapping, no newline added."""
        self.out.print(Text(piece, style=style or ""), end="", soft_wrap=True)
        self.out.file.flush()

    def fields(self, pairs: Sequence[tuple[str, str]], *, indent: int = 2) -> None:
        """Aligned "label  value" lines. A value is never wrapped or cut (a path or a hash stays one line that
        can be copied), even when it is wider than the terminal."""
        pad = max((cell_len(label) for label, _ in pairs), default=0)
        for label, value in pairs:
            self.out.print(Text(f"{' ' * indent}{label:<{pad}}  {value}"), soft_wrap=True)

    def success(self, msg: str) -> None:
        self.out.print(Text.assemble(("✓ ", "bold green"), msg))

    def wrote(self, path: object) -> None:
        """Say on stderr that an output file was written (stdout stays the command's result, e.g. its JSON)."""
        self.err.print(Text(f"wrote {path}"), soft_wrap=True)

    def warning(self, msg: str) -> None:
        self.err.print(Text.assemble(("warning: ", "bold yellow"), _one_line(msg)), soft_wrap=True)

    def error(self, msg: str) -> None:
        """One line on stderr, "error: " and the message, never wrapped; no traceback."""
        self.err.print(Text.assemble(("error: ", "bold red"), _one_line(msg)), soft_wrap=True)

    # -- tables ------------------------------------------------------------------------------------------------

    def table(
        self,
        title: str | None,
        columns: Sequence[str | Col],
        rows: Sequence[Sequence[Any]],
        *,
        caption: str | None = None,
    ) -> None:
        """A table whose cells are never cut (see the module docstring). A plain `str` column is left-aligned if
        it is the first, right-aligned otherwise. The title is a bold paragraph above, the caption a dim one
        below; both wrap at the terminal's width."""
        cols = [c if isinstance(c, Col) else Col(c, "left" if i == 0 else "right") for i, c in enumerate(columns)]
        cells = [[str(v) for v in r] for r in rows]
        if title:
            self.heading(title)
        widths = _fit(cols, cells, self.width)
        if widths is None:
            self._records(cols, cells)
        else:
            self.out.print(_rich_table(cols, cells, widths))
        if caption:
            self.note(caption)

    def _records(self, cols: Sequence[Col], cells: Sequence[Sequence[str]]) -> None:
        """The table as one block per row, for when its cells cannot all fit side by side."""
        pad = max((cell_len(c.header) for c in cols[1:]), default=0)
        for row in cells:
            self.out.print(Text(row[0], style="bold"), soft_wrap=True)
            for c, v in zip(cols[1:], row[1:], strict=True):
                self.out.print(Text(f"  {c.header:<{pad}}  {v}"), soft_wrap=True)

    # -- machine-readable output -------------------------------------------------------------------------------

    def json(self, obj: Any) -> None:
        """Plain JSON on stdout and nothing else. Non-finite floats become the strings "inf", "-inf", "nan"
        (JSON has no such numbers); numpy scalars and arrays become numbers and lists."""
        sys.stdout.write(_json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n")
        sys.stdout.flush()

    # -- progress ----------------------------------------------------------------------------------------------

    def progress(self, *, unit: Literal["items", "bytes"] = "items") -> Progress:
        """A progress bar on stderr, shown only when stderr is a terminal. Use as a context manager and
        `add_task(description, total=...)` / `advance(task)` / `update(task, completed=...)`; `unit="bytes"`
        shows sizes and a transfer rate."""
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        count = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=None),  # the bar takes what the text and the numbers leave of the line
            *count,
            TimeElapsedColumn(),
            console=self.err,
            disable=not self.err.is_terminal,
            transient=True,
        )

    @contextmanager
    def status(self, message: str) -> Iterator[Status | None]:
        """A spinner with `message` on stderr while the block runs (only when stderr is a terminal). Yields
        the rich Status (call `.update(text)`; the text is plain, never markup) or None when nothing is shown."""
        if not self.err.is_terminal:
            yield None
            return
        with self.err.status(Text(message)) as s:
            yield s


def _plain(obj: Any) -> Any:
    """`obj` with numpy scalars and arrays as Python numbers and lists, non-finite floats as strings."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, str):  # numpy scalar or array
        return _plain(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Table layout: every cell whole, headers wrapped, or one block per row
# ---------------------------------------------------------------------------------------------------------------

_EDGE = 1  # a rich box border is 1 column on each side of the table and between columns
_PAD = 2  # and each cell has one space of padding on each side


def _fit(cols: Sequence[Col], cells: Sequence[Sequence[str]], width: int) -> list[int] | None:
    """Column widths that show every cell whole within `width`, wrapping headers at spaces if needed; None if
    the cells alone are too wide."""
    overhead = _EDGE + len(cols) * (_PAD + _EDGE)
    cell_w = [max((cell_len(r[i]) for r in cells), default=0) for i in range(len(cols))]
    natural = [max(w, cell_len(c.header)) for w, c in zip(cell_w, cols, strict=True)]
    if sum(natural) + overhead <= width:
        return natural
    word_w = [max((cell_len(w) for w in c.header.split()), default=0) for c in cols]
    least = [max(w, h) for w, h in zip(cell_w, word_w, strict=True)]
    spare = width - overhead - sum(least)
    if spare < 0:
        return None
    widths = list(least)
    for i in sorted(range(len(cols)), key=lambda i: natural[i] - least[i]):  # widen the cheapest headers first
        extra = min(natural[i] - least[i], spare)
        widths[i] += extra
        spare -= extra
    return widths


def _rich_table(cols: Sequence[Col], cells: Sequence[Sequence[str]], widths: Sequence[int]) -> Any:
    from rich.table import Table

    t = Table(header_style="bold")
    for c, w in zip(cols, widths, strict=True):
        header = "\n".join(textwrap.wrap(c.header, w)) if cell_len(c.header) > w else c.header
        t.add_column(Text(header), justify=c.justify, width=w, no_wrap=True)
    for row in cells:
        t.add_row(*(Text(v) for v in row))
    return t
