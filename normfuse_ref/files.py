"""Writing files so that nothing half-written is ever left: temporary files beside their destinations, renamed
into place together.

One implementation, used by the model cache (`normfuse_ref.models.llama.fetch`) and by the CLI's output files
(`normfuse_ref.cli.outputs`, which adds the user-facing checks: --force, the same path twice, directories).

    with Staging() as st:
        with st.open(dest_a) as fh:          # a temporary file beside dest_a
            fh.write(data)
        figure.savefig(st.path_for(dest_b))  # a writer that wants a path
        st.commit()                          # both renamed into place, or neither
    # leaving the block without commit() (an exception, Ctrl-C) deletes the temporary files

A rename within one directory is atomic, so a reader sees the old file or the new one, never a mix. `commit()`
renames in order; if a rename fails half-way, the destinations already renamed are put back (an overwritten file
is restored from a hard link taken just before; a new one is removed), so several files are all-or-nothing too.
Files get the permissions any tool gives a new file (0o666 minus the umask: 0644 under umask 022), not the 0600
of a temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["Staging", "file_mode"]


def file_mode() -> int:
    """0o666 minus the process umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class Staging:
    """Temporary files beside their destinations, renamed into place together by `commit()`; see the module."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []  # (temporary file, destination)

    def path_for(self, dest: Path) -> Path:
        """A new, empty temporary file in dest's directory, for a writer that opens files by name. It ends in
        dest's suffix, so a writer that picks a format by extension picks the same one. OSError if the directory
        cannot be written."""
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".part{dest.suffix}", dir=dest.parent)
        os.close(fd)
        self._pending.append((Path(name), dest))
        return Path(name)

    def open(self, dest: Path) -> IO[bytes]:
        """The temporary file for `dest`, open for binary writing (close it before commit: use `with`)."""
        return self.path_for(dest).open("wb")

    def commit(self) -> None:
        """Rename every temporary file onto its destination; all of them, or (on an OSError) none."""
        mode = file_mode()
        done: list[tuple[Path, Path | None]] = []  # (destination, hard-link backup of what it replaced)
        try:
            for tmp, dest in self._pending:
                os.chmod(tmp, mode)
                backup = self._backup(dest)
                try:
                    os.replace(tmp, dest)
                except OSError:
                    if backup is not None:
                        backup.unlink(missing_ok=True)
                    raise
                done.append((dest, backup))
        except OSError:
            for dest, backup in reversed(done):
                if backup is not None:
                    os.replace(backup, dest)
                else:
                    dest.unlink(missing_ok=True)
            raise
        finally:
            for _dest, backup in done:
                if backup is not None:
                    backup.unlink(missing_ok=True)
        self._pending.clear()

    @staticmethod
    def _backup(dest: Path) -> Path | None:
        """A hard link to the file `dest` is about to replace (None if there is none, or links are impossible)."""
        if not dest.is_file():
            return None
        backup = dest.with_name(f".{dest.name}.{os.getpid()}.{id(dest):x}.bak")
        try:
            os.link(dest, backup)
        except OSError:
            return None
        return backup

    def discard(self) -> None:
        """Delete every temporary file not yet committed."""
        for tmp, _dest in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.discard()
