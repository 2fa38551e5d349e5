"""Output files (`normfuse_ref.cli.outputs`) and the staging under them (`normfuse_ref.files`): checked before any
work, all-or-nothing, never over a user's file without --force, nothing half-written left behind."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest

from normfuse_ref.cli.console import UsageError
from normfuse_ref.cli.outputs import OutputFiles
from normfuse_ref.files import Staging, file_mode


def listing(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_several_outputs_are_written_together(tmp_path: Path) -> None:
    old_mask = os.umask(0o022)
    try:
        with OutputFiles(force=False) as out:
            a = out.add("--trace", tmp_path / "t.json", suffixes=(".json",))
            b = out.add("--svg", tmp_path / "t.svg")
            assert out.add("--figure", None) is None
            assert a is not None and b is not None
            out.write_text(a, '{"x": 1}')
            out.write_with(b, lambda tmp: tmp.write_text("<svg/>"))
            assert not a.exists() and not b.exists()  # staged beside them as hidden dot-files until commit
            out.commit()
    finally:
        os.umask(old_mask)
    assert listing(tmp_path) == {"t.json": b'{"x": 1}', "t.svg": b"<svg/>"}
    assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o644


def test_an_error_before_commit_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.json").write_text("the user's")
    with pytest.raises(RuntimeError), OutputFiles(force=True) as out:
        a = out.add("--trace", tmp_path / "keep.json")
        b = out.add("--svg", tmp_path / "new.svg")
        assert a is not None and b is not None
        out.write_text(a, "overwritten")
        out.write_text(b, "new")
        raise RuntimeError("the figure failed")
    assert listing(tmp_path) == {"keep.json": b"the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_a_failed_rename_puts_everything_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second of two renames fails: the first file, which replaced a user's file, is restored."""
    (tmp_path / "a.txt").write_text("old a")
    real_replace = os.replace
    calls = []

    def flaky(src: str | Path, dst: str | Path) -> None:
        calls.append(Path(dst).name)
        if Path(dst).name == "b.txt":
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr("normfuse_ref.files.os.replace", flaky)
    st = Staging()
    with st.open(tmp_path / "a.txt") as fh:
        fh.write(b"new a")
    with st.open(tmp_path / "b.txt") as fh:
        fh.write(b"new b")
    with pytest.raises(OSError, match="No space"):
        st.commit()
    monkeypatch.setattr("normfuse_ref.files.os.replace", real_replace)
    st.discard()
    assert calls[:2] == ["a.txt", "b.txt"]
    assert listing(tmp_path) == {"a.txt": b"old a"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("force", [False, True])
def test_refusals(tmp_path: Path, force: bool) -> None:
    (tmp_path / "exists.json").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("y")
    out = OutputFiles(force=force)
    cases: list[tuple[str, Path, tuple[str, ...], str]] = [
        ("--trace", tmp_path / "adir", (), "is a directory"),
        ("--trace", tmp_path / "nodir" / "t.json", (), f"directory {tmp_path / 'nodir'} does not exist"),
        ("--trace", tmp_path / "afile" / "t.json", (), "is not a directory"),
        ("--trace", Path("/dev/null"), (), "is not a regular file"),
        ("--svg", tmp_path / "t.png", (".svg",), "the file name must end in .svg"),
    ]
    if not force:
        cases.append(("--trace", tmp_path / "exists.json", (), "exists; pass --force to overwrite it"))
    for flag, path, suffixes, needle in cases:
        with pytest.raises(UsageError) as info:
            out.add(flag, path, suffixes=suffixes)
        assert needle in str(info.value) and str(info.value).startswith(f"{flag} {path}")
    assert listing(tmp_path) == {"exists.json": b"x", "afile": b"y"}


def test_the_same_file_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "sub" / "x.json", tmp_path / "link.json")
    for first, second in [("x.json", "./x.json"), ("sub/x.json", "link.json"), ("sub/../x.json", "x.json")]:
        out = OutputFiles(force=True)
        out.add("--trace", Path(first))
        message = f"--svg {Path(second)} is the same file as --trace {Path(first)}"
        with pytest.raises(UsageError, match=re.escape(message)):
            out.add("--svg", Path(second))


def test_an_unwritable_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only: as an unprivileged user, a chmod 555 directory; as root (who may write there anyway), the probe
    file cannot be created as on a read-only mount."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:
            real = tempfile.mkstemp

            def read_only(*args: Any, dir: Any = None, **kw: Any) -> Any:
                if dir is not None and Path(dir) == ro:
                    raise OSError(30, "Read-only file system")
                return real(*args, dir=dir, **kw)  # type: ignore[call-overload]

            monkeypatch.setattr("normfuse_ref.cli.outputs.tempfile.mkstemp", read_only)
        for force in (False, True):
            with pytest.raises(UsageError, match=r"--trace .*ro/t.json: cannot write in directory .*ro"):
                OutputFiles(force=force).add("--trace", ro / "t.json")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_file_mode_follows_the_umask() -> None:
    old = os.umask(0o077)
    try:
        assert file_mode() == 0o600
        os.umask(0o022)
        assert file_mode() == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_command_terminated_while_writing_leaves_nothing(tmp_path: Path, signame: str) -> None:
    """`kill` (SIGTERM) or a closed terminal (SIGHUP) arriving as a command writes its files: it ends like Ctrl-C
    ("error: terminated", 128 + the signal) and leaves no staged file (SIGTERM used to kill it on the spot, leaving
    `.trace.json.*.part.json` behind). The signal is sent from inside the real `normfuse` process, at commit."""
    import signal
    import subprocess
    import sys

    trace = tmp_path / "trace.json"
    script = f"""
import os, signal, sys
from normfuse_ref.cli import outputs
def commit(self):
    os.kill(os.getpid(), signal.{signame})  # the files are staged, not yet renamed into place
outputs.OutputFiles.commit = commit
from normfuse_ref.cli.main import main
sys.argv = ["normfuse", "timeline", "--model", "tiny", "--hw", "toy", "--trace", {str(trace)!r}]
sys.exit(main())
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 128 + getattr(signal, signame), r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: terminated"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_names_the_file_it_was_writing(tmp_path: Path) -> None:
    """ENOSPC from a write names no file ("No space left on device"): the output it was for is named, and nothing
    is left behind. /dev/full stands for a full disk inside the writer (a temporary file there cannot be made)."""
    import errno

    out = tmp_path / "t.json"

    def full(_tmp: Path) -> None:
        with open("/dev/full", "wb") as fh:
            fh.write(b"x" * 65536)
            fh.flush()

    with pytest.raises(OSError) as err, OutputFiles(force=False) as outputs:
        outputs.add("--trace", str(out), suffixes=(".json",))
        outputs.write_with(out, full)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(out)
    assert list(tmp_path.iterdir()) == []
