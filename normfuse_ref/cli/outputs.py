"""The files a command writes for the user (`--trace`, `--svg`, figures): checked before any work is done, and
written all-or-nothing, never over a user's file without `--force`.

    with OutputFiles(force=args.force) as outputs:
        trace = outputs.add("--trace", args.trace, suffixes=(".json",))   # None when the flag was not given
        svg = outputs.add("--svg", args.svg, suffixes=(".svg",))
        ...                                                             # the command's work
        if trace:
            outputs.write_text(trace, json.dumps(data))
        if svg:
            outputs.write_with(svg, lambda tmp: console.out.save_svg(str(tmp)))
        outputs.commit()                                                # every file, or none
    console.wrote(trace)                                                # on stderr: stdout is the result

`add` refuses, with one line that names the flag and the path (a UsageError: exit status 2), and before anything
runs:
- a path that is a directory, or anything but a regular file (`/dev/null`, a FIFO), also with --force;
- a path whose directory does not exist, is not a directory, or cannot be written in (a temporary file is
  created and deleted there to find out: that also catches read-only file systems), also with --force;
- the same file twice (`--trace x --svg x`, also through another spelling or a symlink);
- an existing file without --force;
- a file name that does not end in one of `suffixes` (when given), so that `--svg t.png` does not write SVG into
  a .png.

Writing goes through `normfuse_ref.files.Staging`: each file is staged in a temporary file beside it, and
`commit()` renames them all into place together. Leaving the `with` block without `commit()` (an error, Ctrl-C)
deletes the temporary files and leaves the user's files exactly as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from ..extras import require
from ..files import Staging
from ..plot import FIGURE_SUFFIXES
from .console import UsageError


def add_figure_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--figure FILE.png|svg|pdf` (and `--force`, unless the command has it already): `what` the figure shows."""
    parser.add_argument(
        "--figure",
        type=Path,
        metavar="FILE.png|svg|pdf",
        help=f"draw {what} with matplotlib (the [plot] extra), the format from the suffix",
    )
    if "--force" not in parser._option_string_actions:
        parser.add_argument("--force", action="store_true", help="overwrite an existing --figure file")


__all__ = ["OutputFiles", "add_figure_argument"]


class OutputFiles:
    """See the module docstring."""

    def __init__(self, *, force: bool) -> None:
        self.force = force
        self._flags: dict[Path, tuple[str, Path]] = {}  # real path -> (flag, path as given)
        self._staging = Staging()

    def add(self, flag: str, path: Path | str | None, *, suffixes: Sequence[str] = ()) -> Path | None:
        """Check `path` (given with `flag`) as an output; the path to write, or None if `path` is None."""
        if path is None:
            return None
        given = Path(path)
        p = given.expanduser()
        if suffixes and p.suffix.lower() not in suffixes:
            raise UsageError(f"{flag} {given}: the file name must end in {' or '.join(suffixes)}")
        if p.is_dir():
            raise UsageError(f"{flag} {given} is a directory; give a file name")
        if p.exists() and not p.is_file():
            raise UsageError(f"{flag} {given} is not a regular file; give a file name")
        real = Path(os.path.realpath(p))
        if real in self._flags:
            other, other_path = self._flags[real]
            raise UsageError(f"{flag} {given} is the same file as {other} {other_path}; give each output its own file")
        parent = p.parent
        if not parent.exists():
            raise UsageError(f"{flag} {given}: directory {parent} does not exist")
        if not parent.is_dir():
            raise UsageError(f"{flag} {given}: {parent} is not a directory")
        if not _can_write_in(parent):
            raise UsageError(f"{flag} {given}: cannot write in directory {parent} (permission denied or read-only)")
        if p.exists() and not self.force:
            raise UsageError(f"{flag} {given} exists; pass --force to overwrite it")
        self._flags[real] = (flag, given)
        return p

    def add_figure(self, path: Path | str | None) -> Path | None:
        """`--figure`: checked like any output (a suffix of FIGURE_SUFFIXES), and the plot extra required, both
        before any work."""
        p = self.add("--figure", path, suffixes=FIGURE_SUFFIXES)
        if p is not None:
            require("plot", "--figure")
        return p

    def write_figure(self, path: Path, fig: Figure) -> None:
        """Stage a matplotlib figure for `path`, in the format its suffix names."""
        from .. import plot

        self.write_with(path, lambda tmp: plot.save_figure(fig, tmp))

    def write_text(self, path: Path, text: str) -> None:
        """Stage `text` (UTF-8) for `path`."""
        self.write_bytes(path, text.encode("utf-8"))

    def write_bytes(self, path: Path, data: bytes) -> None:
        """Stage `data` for `path`."""
        with _naming(path), self._staging.open(path) as fh:
            fh.write(data)

    def write_with(self, path: Path, writer: Callable[[Path], object]) -> None:
        """Stage `path` by calling `writer(temporary_path)`: for writers that open files by name (matplotlib's
        `savefig`, rich's `save_svg`). The temporary file ends in path's suffix."""
        with _naming(path):
            writer(self._staging.path_for(path))

    def commit(self) -> None:
        """Rename every staged file into place: all, or none (an OSError leaves the user's files as they were)."""
        if not self.force:
            for real, (flag, given) in self._flags.items():
                if real.exists():  # created by someone else while the command ran
                    raise UsageError(f"{flag} {given} exists; pass --force to overwrite it")
        self._staging.commit()

    def __enter__(self) -> OutputFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._staging.discard()


def _can_write_in(directory: Path) -> bool:
    """Whether a file can be created in `directory` (tried, then removed: permission bits do not tell root, nor a
    read-only mount)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".normfuse-write-test.", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError that names no file (a full disk: "No space left on device") named after the output it was for."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
