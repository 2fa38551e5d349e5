"""Every user mistake is one clear line: a battery of bad command lines, each run as a user would meet it.

For every `Mistake`: a working directory holding the user's files (`files`) and an empty model cache, then
`normfuse ARGV` (in-process, COLUMNS=80). It must exit with status 2, print exactly one line on stderr (starting
"error: " and containing `needle`, which names the flag, field or file at fault), print nothing on stdout, show no
traceback, and leave every file in the working directory byte-identical (nothing created, changed or deleted:
no output file, no cache record, no `.hypothesis/`).

To add a command's mistakes, append `Mistake`s to MISTAKES (ids must be unique). `files` maps a path relative
to the working directory to its bytes (None: an empty directory); `env` values may use "{work}" for that
directory; `patch` can monkeypatch what the case needs (a package that is missing, ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from normfuse_ref.cli.main import main
from normfuse_ref.models.bert import get_preset
from normfuse_ref.models.llama import random_params
from normfuse_ref.models.llama.fetch import SOURCES
from tests.bert_support import hf_config as bert_hf_config

from .test_llama_loaders import CFG, hf_config, write_gguf

SMOL = SOURCES["smollm2-135m"].files[0]
BERT_CFG = get_preset("tiny-bert")


@dataclass(frozen=True)
class Mistake:
    id: str
    argv: tuple[str, ...]
    needle: str  # a fragment the one error line must contain
    files: Mapping[str, bytes | None] = field(default_factory=dict)  # the user's files (None: a directory)
    env: Mapping[str, str] = field(default_factory=dict)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


@cache
def gguf_bytes(**meta: Any) -> bytes:
    """A tiny Llama GGUF file whose metadata fields `meta` replace the right ones."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = write_gguf(Path(d) / "m.gguf", random_params(CFG, seed=3), CFG, meta=dict(meta))
        return path.read_bytes()


def hf_dir(config: Any) -> dict[str, bytes | None]:
    return {"hf": None, "hf/config.json": json.dumps(config).encode()}


def missing_module(name: str) -> Callable[[pytest.MonkeyPatch], None]:
    """Make `name` look uninstalled to normfuse_ref.extras."""
    import importlib.util

    real = importlib.util.find_spec

    def patch(mp: pytest.MonkeyPatch) -> None:
        mp.setattr("normfuse_ref.extras.importlib.util.find_spec", lambda n, *a: None if n == name else real(n, *a))

    return patch


SMOL_CACHE = f"cache/{SMOL.dest}"
HELLO = ("--prompt", "hello")

MISTAKES: list[Mistake] = [
    # -- the dispatcher ------------------------------------------------------------------------------------------
    Mistake("no-command", (), "no command given; choose one of: timeline, demo"),
    Mistake("unknown-command", ("frobnicate",), "invalid choice: 'frobnicate'"),
    Mistake("unknown-option", ("demo", "--frob"), "unrecognized arguments: --frob"),
    Mistake("markup-command", ("[red]x",), "invalid choice: '[red]x'"),
    # -- demo ----------------------------------------------------------------------------------------------------
    Mistake("demo-seed-negative", ("demo", "--seed", "-1"), "argument --seed: must be an integer >= 0; got '-1'"),
    Mistake("demo-seed-float", ("demo", "--seed", "1.5"), "argument --seed: must be an integer >= 0; got '1.5'"),
    Mistake("demo-n-zero", ("demo", "--n", "0"), "argument --n: must be an integer from 1 to 1048576; got '0'"),
    Mistake("demo-n-word", ("demo", "--n", "many"), "argument --n: must be an integer"),
    Mistake("demo-m-negative", ("demo", "--m", "-4"), "argument --m: must be an integer from 1 to 1048576"),
    Mistake("demo-n-huge", ("demo", "--n", "10000000000"), "argument --n: must be an integer from 1 to 1048576"),
    Mistake("demo-too-big", ("demo", "--n", "65536", "--m", "65536"), "--n * --m must be at most 4194304"),
    Mistake("demo-dtype", ("demo", "--dtype", "int8"), "--dtype: unsupported dtype 'int8'"),
    Mistake("demo-dtype-markup", ("demo", "--dtype", "[red]x"), "--dtype: unsupported dtype '[red]x'"),
    Mistake("demo-json-bad-n", ("demo", "--json", "--n", "0"), "argument --n"),
    # -- generate: flags -------------------------------------------------------------------------------------------
    Mistake("gen-no-prompt", ("generate", "--model", "tiny"), "the following arguments are required: --prompt"),
    Mistake("gen-seed-negative", ("generate", *HELLO, "--seed", "-1"), "argument --seed: must be an integer >= 0"),
    Mistake("gen-tokens-zero", ("generate", *HELLO, "--max-new-tokens", "0"), "argument --max-new-tokens: must be an integer >= 1"),
    Mistake("gen-tokens-word", ("generate", *HELLO, "--max-new-tokens", "lots"), "argument --max-new-tokens"),
    Mistake("gen-temperature-negative", ("generate", *HELLO, "--temperature", "-1"), "argument --temperature: must be a finite number >= 0"),
    Mistake("gen-temperature-nan", ("generate", *HELLO, "--temperature", "nan"), "argument --temperature"),
    Mistake("gen-temperature-inf", ("generate", *HELLO, "--temperature", "inf"), "argument --temperature"),
    Mistake("gen-top-k-zero", ("generate", *HELLO, "--temperature", "1", "--top-k", "0"), "argument --top-k: must be an integer >= 1"),
    Mistake("gen-top-k-greedy", ("generate", "--model", "tiny", *HELLO, "--top-k", "5"), "--top-k only applies when sampling"),
    Mistake("gen-mode", ("generate", *HELLO, "--mode", "sideways"), "argument --mode: invalid choice: 'sideways'"),
    Mistake("gen-dtype", ("generate", *HELLO, "--dtype", "float8_e4m3fn"), "argument --dtype: invalid choice"),
    Mistake("gen-empty-prompt", ("generate", "--model", "tiny", "--prompt", ""), "the prompt is empty"),
    Mistake("gen-long-prompt", ("generate", "--model", "tiny", "--prompt", "x" * 300), "300 tokens but the model's context is 256"),
    # -- generate: which model -------------------------------------------------------------------------------------
    Mistake("gen-model-markup", ("generate", "--model", "a[/]b", *HELLO), "model not found: 'a[/]b' is neither"),
    Mistake("gen-model-shape-only", ("generate", "--model", "llama2-7b", *HELLO), "preset 'llama2-7b' is shape-only"),
    Mistake("gen-model-gpt", ("generate", "--model", "gpt2-xl", *HELLO), "gpt2-xl is a preset of another family (GPT: GPT-2 and OPT)"),
    Mistake("gen-model-bert-large", ("generate", "--model", "bert-large", *HELLO), "bert-large is a preset of another family (BERT)"),
    Mistake("embed-model-gpt", ("embed", "--model", "tiny-gpt", "hi"), "tiny-gpt is a preset of the GPT family (GPT-2, OPT)"),
    Mistake("gen-model-bert", ("generate", "--model", "all-minilm-l6-v2", *HELLO), "all-minilm-l6-v2 is a BERT model"),
    Mistake("gen-not-fetched", ("generate", *HELLO), "run: normfuse fetch smollm2-135m"),
    Mistake("gen-cached-truncated", ("generate", *HELLO), "has 13 bytes, expected 98362432 (incomplete or changed); run: normfuse fetch smollm2-135m --force",
            files={"cache": None, SMOL_CACHE: b"not the model"}),
    Mistake("gen-cached-corrupt", ("generate", *HELLO), "(damaged or changed); run: normfuse fetch smollm2-135m --force",
            files={"cache": None, SMOL_CACHE: bytes(SMOL.size)}),
    Mistake("gen-cached-is-dir", ("generate", *HELLO), "is a directory, not the model file",
            files={"cache": None, SMOL_CACHE: None}),
    Mistake("gen-model-readers-missing", ("generate", *HELLO), "needs gguf (not installed): pip install 'normfuse[model]'",
            patch=missing_module("gguf")),
    # -- generate: a model file of the user's ----------------------------------------------------------------------
    Mistake("gguf-text", ("generate", "--model", "notes.gguf", *HELLO), "notes.gguf is not a GGUF file",
            files={"notes.gguf": b"hello, not a model"}),
    Mistake("gguf-truncated", ("generate", "--model", "cut.gguf", *HELLO), "cut.gguf is a damaged or truncated GGUF file",
            files={"cut.gguf": b"GGUF\x03\x00\x00\x00" + b"\x01" * 40}),
    Mistake("gguf-head-count-0", ("generate", "--model", "m.gguf", *HELLO),
            "m.gguf: field 'llama.attention.head_count' must be an integer >= 1; got 0",
            files={"m.gguf": gguf_bytes(**{"llama.attention.head_count": 0})}),
    Mistake("gguf-alignment-0", ("generate", "--model", "m.gguf", *HELLO), "m.gguf: field 'general.alignment'",
            files={"m.gguf": gguf_bytes(**{"general.alignment": 0})}),
    Mistake("gguf-eps-string", ("generate", "--model", "m.gguf", *HELLO),
            "m.gguf: field 'llama.attention.layer_norm_rms_epsilon' must be a finite number > 0; got 'small'",
            files={"m.gguf": gguf_bytes(**{"llama.attention.layer_norm_rms_epsilon": "small"})}),
    Mistake("hf-no-config", ("generate", "--model", "hf", *HELLO), "hf has no config.json", files={"hf": None}),
    Mistake("hf-config-list", ("generate", "--model", "hf", *HELLO), "hf/config.json must hold a JSON object {...}; it holds a list",
            files=hf_dir([1, 2])),
    Mistake("hf-heads-0", ("generate", "--model", "hf", *HELLO), "hf/config.json: field 'num_attention_heads' must be an integer >= 1; got 0",
            files=hf_dir(hf_config(num_attention_heads=0))),
    Mistake("hf-hidden-big", ("generate", "--model", "hf", *HELLO), "hf/config.json: field 'hidden_size' must be an integer >= 1; got 'big'",
            files=hf_dir(hf_config(hidden_size="big"))),
    Mistake("hf-config-binary", ("generate", "--model", "hf", *HELLO), "hf/config.json is not a UTF-8 text file",
            files={"hf": None, "hf/config.json": b"\xff\xfe\x00\x01"}),
    Mistake("hf-only-pickles", ("generate", "--model", "hf", *HELLO), "normfuse never loads pickles",
            files={**hf_dir(hf_config()), "hf/pytorch_model.bin": b"\x80\x04K\x01."}),
    Mistake("hf-bad-safetensors", ("generate", "--model", "hf", *HELLO), "model.safetensors is a damaged or truncated safetensors file",
            files={**hf_dir(hf_config()), "hf/model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{}"}),
    # -- fetch -----------------------------------------------------------------------------------------------------
    Mistake("fetch-nothing", ("fetch",), "name a model to fetch: smollm2-135m, all-minilm-l6-v2 (or --list)"),
    Mistake("fetch-unknown", ("fetch", "gpt-5"), "unknown model 'gpt-5'; fetchable: smollm2-135m, all-minilm-l6-v2"),
    Mistake("fetch-markup", ("fetch", "[red]x"), "unknown model '[red]x'"),
    Mistake("fetch-list-and-name", ("fetch", "--list", "smollm2-135m"), "--list takes no MODEL and no --force"),
    Mistake("fetch-cache-is-file", ("fetch", "smollm2-135m"), "NORMFUSE_CACHE={work}/cachefile cannot be used: the cache is a file",
            files={"cachefile": b"mine"}, env={"NORMFUSE_CACHE": "{work}/cachefile"}),
    Mistake("fetch-wrong-file", ("fetch", "smollm2-135m"), "has 13 bytes, expected 98362432 (incomplete or changed); run: normfuse fetch smollm2-135m --force",
            files={"cache": None, SMOL_CACHE: b"not the model"}),
    Mistake("fetch-dir-in-the-way", ("fetch", "smollm2-135m", "--force"), "is a directory, not the model file; move it away",
            files={"cache": None, SMOL_CACHE: None}),
    # -- embed -----------------------------------------------------------------------------------------------------
    Mistake("embed-no-text", ("embed",), "the following arguments are required: TEXT"),
    Mistake("embed-batch-zero", ("embed", "hi", "--batch-size", "0"), "argument --batch-size: must be an integer >= 1; got '0'"),
    Mistake("embed-mode", ("embed", "hi", "--mode", "sideways"), "argument --mode: invalid choice: 'sideways'"),
    Mistake("embed-not-fetched", ("embed", "hi"), "run: normfuse fetch all-minilm-l6-v2"),
    Mistake("embed-llama", ("embed", "--model", "tiny", "hi"), "tiny is a Llama decoder model; normfuse embed needs a BERT-family encoder"),
    Mistake("embed-llama-dir", ("embed", "--model", "hf", "hi"), "hf is a Llama decoder model", files=hf_dir(hf_config())),
    Mistake("embed-shape-only", ("embed", "--model", "llama2-7b", "hi"), "llama2-7b is a Llama decoder model"),
    Mistake("embed-model-markup", ("embed", "--model", "a[/]b", "hi"), "model not found: 'a[/]b' is neither"),
    Mistake("embed-too-long", ("embed", "--model", "tiny-bert", "ok", "x" * 100),
            "text 2 has 102 tokens but the model takes at most 64 ([CLS] and [SEP] included); shorten it, or truncate (--truncate)"),
    Mistake("embed-unsupported", ("embed", "--model", "hf", "hi"), "model_type 'gpt2' is not supported; supported: llama, bert",
            files=hf_dir({"model_type": "gpt2"})),
    Mistake("embed-relative-positions", ("embed", "--model", "hf", "hi"), "position_embedding_type 'relative_key' is not supported",
            files=hf_dir(bert_hf_config(BERT_CFG, position_embedding_type="relative_key"))),
    Mistake("embed-heads-markup", ("embed", "--model", "hf", "hi"), "hf/config.json: field 'num_attention_heads' must be an integer >= 1; got '[red]x'",
            files=hf_dir(bert_hf_config(BERT_CFG, num_attention_heads="[red]x"))),
    Mistake("embed-bad-safetensors", ("embed", "--model", "hf", "hi"), "model.safetensors is a damaged or truncated safetensors file",
            files={**hf_dir(bert_hf_config(BERT_CFG)), "hf/model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{}"}),
    Mistake("embed-readers-missing", ("embed", "hi"), "needs scipy (not installed): pip install 'normfuse[model]'",
            patch=missing_module("scipy")),
    # -- timeline and sweep: which model (presets, config.json) ---------------------------------------------------
    Mistake("timeline-unsupported-type", ("timeline", "--model", "m.json"),
            "m.json: model_type 't5' is not supported; supported: llama, mistral, qwen2, bert, gpt2, opt",
            files={"m.json": json.dumps({"model_type": "t5", "d_model": 512}).encode()}),
    Mistake("timeline-encoder-decode", ("timeline", "--model", "all-minilm-l6-v2", "--phase", "decode"),
            "all-minilm-l6-v2 is an encoder (bidirectional attention, no KV cache): it has no decode phase"),
    Mistake("timeline-config-missing-field", ("timeline", "--model", "m.json"), "m.json: field 'n_layer' is missing",
            files={"m.json": json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "vocab_size": 50,
                                         "n_positions": 32}).encode()}),
    Mistake("timeline-config-not-json", ("timeline", "--model", "m.json"), "m.json is not valid JSON",
            files={"m.json": b'{"model_type": "bert", '}),
    Mistake("timeline-config-list", ("timeline", "--model", "m.json"), "m.json must hold a JSON object {...}; it holds a list",
            files={"m.json": b"[1, 2]"}),
    Mistake("timeline-config-binary", ("timeline", "--model", "m.json"), "m.json is not a UTF-8 text file",
            files={"m.json": b"\xff\xfe\x00\x01"}),
    Mistake("timeline-dir-without-config", ("timeline", "--model", "hf"), "hf has no config.json", files={"hf": None}),
    Mistake("timeline-config-markup", ("timeline", "--model", "hf"), "hf/config.json: field 'hidden_size' must be an integer >= 1; got '[red]x'",
            files=hf_dir(bert_hf_config(BERT_CFG, hidden_size="[red]x"))),
    Mistake("timeline-post-ln-opt", ("timeline", "--model", "hf"), "post-LayerNorm OPT (do_layer_norm_before false) is not supported",
            files=hf_dir({"model_type": "opt", "do_layer_norm_before": False})),
    Mistake("timeline-models-without-paper", ("timeline", "--models", "layernorm"), "--models chooses the models of --paper"),
    Mistake("timeline-models-unknown", ("timeline", "--paper", "--models", "gpt2-xl,gpt5"), "unknown model preset 'gpt5'"),
    Mistake("sweep-encoder-decode", ("sweep", "--param", "batch", "1,2", "--model", "bert-large", "--phase", "decode"),
            "bert-large is an encoder"),
    Mistake("sweep-unsupported-type", ("sweep", "--param", "batch", "1,2", "--model", "hf"), "model_type 'llava' is not supported",
            files=hf_dir({"model_type": "llava"})),
]  # fmt: skip


def snapshot(root: Path) -> dict[str, Any]:
    """Every path under root: a directory's mode, a file's mode and bytes."""
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, None if p.is_dir() else p.read_bytes())
    return out


def test_mistake_ids_are_unique() -> None:
    ids = [m.id for m in MISTAKES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_a_mistake_is_one_line_and_touches_nothing(
    mistake: Mistake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for rel, data in mistake.files.items():
        if data is None:
            (work / rel).mkdir(parents=True, exist_ok=True)
        else:
            (work / rel).write_bytes(data)
    before = snapshot(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("NORMFUSE_CACHE", str(work / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing may be downloaded
    monkeypatch.setattr("normfuse_ref.models.llama.fetch._have_pip", lambda: False)
    for key, value in mistake.env.items():
        monkeypatch.setenv(key, value.replace("{work}", str(work)))
    if mistake.patch is not None:
        mistake.patch(monkeypatch)
    code = main(list(mistake.argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert mistake.needle.replace("{work}", str(work)) in lines[0], lines[0]
    assert out == ""
    assert snapshot(work) == before


@pytest.mark.parametrize("mistake_id", ["demo-seed-negative", "gen-model-markup", "hf-heads-0"])
def test_the_installed_command_agrees(mistake_id: str, tmp_path: Path) -> None:
    """The same mistakes through `python -m normfuse_ref` in a fresh process: the entry point users run."""
    mistake = next(m for m in MISTAKES if m.id == mistake_id)
    work = tmp_path / "work"
    work.mkdir()
    for rel, data in mistake.files.items():
        if data is None:
            (work / rel).mkdir()
        else:
            (work / rel).write_bytes(data)
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "NORMFUSE_CACHE": str(work / "cache")}
    r = subprocess.run(
        [sys.executable, "-m", "normfuse_ref", *mistake.argv], cwd=work, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and mistake.needle in r.stderr


def test_a_huge_max_new_tokens_costs_only_the_context(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a mistake: --max-new-tokens is an upper bound, and the context (256 for tiny) ends the generation
    without anything sized by the request."""
    code = main(["generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "100000000000", "--json",
                 "--temperature", "0.5"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    run = json.loads(out)["runs"][0]
    assert run["finish_reason"] == "context" and len(run["tokens"]) == 256 - 2 + 1
    assert np.all(np.asarray(run["tokens"]) < 256)
