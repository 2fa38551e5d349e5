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


def read_only(directory: str) -> Callable[[pytest.MonkeyPatch], None]:
    """Make `directory` (relative to the working directory) behave as on a read-only mount: no file can be
    created in it (chmod alone does not stop root, who runs the project's CI)."""
    import tempfile

    real = tempfile.mkstemp

    def patch(mp: pytest.MonkeyPatch) -> None:
        def mkstemp(*args: Any, dir: Any = None, **kw: Any) -> Any:
            if dir is not None and Path(dir).resolve() == (Path.cwd() / directory).resolve():
                raise OSError(30, "Read-only file system")
            return real(*args, dir=dir, **kw)  # type: ignore[call-overload]

        mp.setattr("normfuse_ref.cli.outputs.tempfile.mkstemp", mkstemp)

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
    # a command line that is not UTF-8 reaches Python with the bad byte as a lone surrogate (PEP 383)
    Mistake("gen-prompt-not-utf8", ("generate", "--model", "tiny", "--prompt", "ab\udcffcd"), "the prompt is not valid UTF-8 text (byte 0xff at character 3)"),
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
    # -- accuracy --------------------------------------------------------------------------------------------------
    Mistake("acc-tokens-one", ("accuracy", "--tokens", "1"), "argument --tokens: must be an integer >= 2; got '1'"),
    Mistake("acc-tokens-word", ("accuracy", "--tokens", "many"), "argument --tokens: must be an integer >= 2"),
    Mistake("acc-dtype", ("accuracy", "--dtype", "float64"), "argument --dtype: invalid choice: 'float64'"),
    Mistake("acc-dtype-e5m2", ("accuracy", "--dtype", "float8_e5m2"), "argument --dtype: invalid choice: 'float8_e5m2'"),
    Mistake("acc-workers-zero", ("accuracy", "--workers", "0"), "argument --workers: must be an integer >= 1; got '0'"),
    Mistake("acc-threads-env", ("accuracy",), "NORMFUSE_THREADS must be a positive integer; got 'two'",
            env={"NORMFUSE_THREADS": "two"}),
    Mistake("acc-model", ("accuracy", "--model", "tiny"), "argument --model: invalid choice: 'tiny'"),
    Mistake("acc-model-markup", ("accuracy", "--model", "[red]x"), "invalid choice: '[red]x'"),
    Mistake("acc-not-fetched", ("accuracy", "--model", "smollm2-135m"), "run: normfuse fetch smollm2-135m"),
    Mistake("acc-markdown-suffix", ("accuracy", "--markdown", "out.txt"), "--markdown out.txt: the file name must end in .md"),
    Mistake("acc-markdown-exists", ("accuracy", "--markdown", "page.md"), "--markdown page.md exists; pass --force to overwrite it",
            files={"page.md": b"mine"}),
    Mistake("acc-markdown-dir", ("accuracy", "--markdown", "d.md"), "--markdown d.md is a directory", files={"d.md": None}),
    Mistake("acc-markdown-no-parent", ("accuracy", "--markdown", "nowhere/page.md"), "directory nowhere does not exist"),
    Mistake("acc-figure-suffix", ("accuracy", "--figure", "fig.gif"), "--figure fig.gif: the file name must end in .png or .svg or .pdf"),
    Mistake("acc-figure-markdown-suffix", ("accuracy", "--markdown", "a.md", "--figure", "a.md"), "--figure a.md: the file name must end in .png or .svg or .pdf"),
    # -- the environment's settings, whichever command reads them --------------------------------------------------
    *(Mistake(f"threads-env-{argv[0]}-{bad}", argv, f"NORMFUSE_THREADS must be a positive integer; got '{bad}'",
              env={"NORMFUSE_THREADS": bad})
      for argv in (("embed", "--model", "tiny-bert", "hi"), ("demo",), ("fuzz", "--examples", "5"),
                   ("sweep", "--param", "context", "1,2"), ("generate", "--model", "tiny", *HELLO))
      for bad in ("abc", "0")),
    # -- embed -----------------------------------------------------------------------------------------------------
    Mistake("embed-no-text", ("embed",), "the following arguments are required: TEXT"),
    Mistake("embed-batch-zero", ("embed", "hi", "--batch-size", "0"), "argument --batch-size: must be an integer >= 1; got '0'"),
    Mistake("embed-mode", ("embed", "hi", "--mode", "sideways"), "argument --mode: invalid choice: 'sideways'"),
    Mistake("embed-text-not-utf8", ("embed", "--model", "tiny-bert", "hi", "ab\udcffcd"), "text 2 is not valid UTF-8 text (byte 0xff at character 3)"),
    Mistake("embed-not-fetched", ("embed", "hi"), "run: normfuse fetch all-minilm-l6-v2"),
    Mistake("embed-llama", ("embed", "--model", "tiny", "hi"), "tiny is a Llama decoder model; normfuse embed needs a BERT-family encoder"),
    Mistake("embed-llama-dir", ("embed", "--model", "hf", "hi"), "hf is a Llama decoder model", files=hf_dir(hf_config())),
    Mistake("embed-shape-only", ("embed", "--model", "llama2-7b", "hi"), "llama2-7b is a Llama decoder model"),
    Mistake("embed-not-a-model-file", ("embed", "--model", "notes.txt", "hi"), "notes.txt is not a GGUF file",
            files={"notes.txt": b"hello, not a model"}),
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
    Mistake("timeline-encoder-chunk", ("timeline", "--model", "bert-large", "--chunk", "64"),
            "--chunk does not apply to bert-large, an encoder (a prompt is one call)"),
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
    Mistake("timeline-models-without-paper", ("timeline", "--models", "layernorm"), "--models does not apply without --paper (it chooses the models of the paper table)"),
    Mistake("timeline-models-unknown", ("timeline", "--paper", "--models", "gpt2-xl,gpt5"), "unknown model preset 'gpt5'"),
    Mistake("sweep-encoder-decode", ("sweep", "--param", "batch", "1,2", "--model", "bert-large", "--phase", "decode"),
            "bert-large is an encoder"),
    Mistake("sweep-unsupported-type", ("sweep", "--param", "batch", "1,2", "--model", "hf"), "model_type 'llava' is not supported",
            files=hf_dir({"model_type": "llava"})),
    # -- timeline: what cannot be timed ------------------------------------------------------------------------
    Mistake("tl-context-huge", ("timeline", "--context", "1000000000000000000000"),
            "--context must be at most 16777216 (2**24) positions; got 1000000000000000000000"),
    Mistake("tl-prefill-too-long", ("timeline", "--phase", "prefill", "--context", "100000"),
            "--context 100000 in chunks of 256 is 391 prefill chunks; normfuse times at most 128 (each is one forward call): give --chunk 782 or more"),
    Mistake("tl-prefill-chunk-1", ("timeline", "--phase", "prefill", "--chunk", "1"), "--context 2048 in chunks of 1 is 2048 prefill chunks"),
    Mistake("tl-context-negative", ("timeline", "--context", "-1"), "argument --context: must be an integer >= 0; got '-1'"),
    Mistake("tl-context-word", ("timeline", "--context", "long"), "argument --context: must be an integer >= 0; got 'long'"),
    Mistake("tl-prefill-empty", ("timeline", "--phase", "prefill", "--context", "0"), "--context must be >= 1 for prefill; got 0"),
    Mistake("tl-too-big", ("timeline", "--model", "llama2-70b", "--max-cards", "8"), "llama2-70b does not fit on corsair-like within 8 cards"),
    Mistake("tl-too-big-beyond-context", ("timeline", "--model", "llama2-70b", "--max-cards", "8", "--context", "5000"),
            "llama2-70b does not fit on corsair-like within 8 cards"),  # the warning about the context is not printed
    Mistake("tl-tp-cards-too-many", ("timeline", "--tp-cards", "128"), "a stage of 128 cards is more than the 64 cards available"),
    Mistake("tl-stages-too-many", ("timeline", "--tp-cards", "8", "--stages", "9"), "9 stages of 8 cards need 72 cards; corsair-like has 64"),
    # -- timeline: flags and names -----------------------------------------------------------------------------
    Mistake("tl-phase", ("timeline", "--phase", "sideways"), "argument --phase: invalid choice: 'sideways'"),
    Mistake("tl-model-unknown", ("timeline", "--model", "gpt5"), "unknown model preset 'gpt5'"),
    Mistake("tl-model-markup", ("timeline", "--model", "[red]x"), "unknown model preset '[red]x'"),
    Mistake("tl-layers-zero", ("timeline", "--layers", "0"), "--layers must be between 1 and 32 for llama2-7b; got 0"),
    Mistake("tl-layers-word", ("timeline", "--layers", "some"), "--layers must be a positive integer or 'all'; got 'some'"),
    Mistake("tl-block-out", ("timeline", "--block", "40"), "--block must be between 0 and 31; got 40"),
    Mistake("tl-detail-layer-out", ("timeline", "--detail-layer", "99", "--trace", "t.json"), "--detail-layer must be between 0 and 31; got 99"),
    Mistake("tl-detail-layer-no-trace", ("timeline", "--detail-layer", "1"), "--detail-layer does not apply without --trace"),
    Mistake("tl-chunk-decode", ("timeline", "--chunk", "64"), "--chunk does not apply to decode (one token a step"),
    Mistake("tl-batch-zero", ("timeline", "--batch", "0"), "argument --batch: must be an integer >= 1; got '0'"),
    Mistake("tl-chunk-zero", ("timeline", "--chunk", "0"), "argument --chunk: must be an integer >= 1; got '0'"),
    Mistake("tl-tp-cards-zero", ("timeline", "--tp-cards", "0"), "argument --tp-cards: must be an integer >= 1; got '0'"),
    Mistake("tl-max-cards-zero", ("timeline", "--max-cards", "0"), "argument --max-cards: must be an integer >= 1; got '0'"),
    Mistake("tl-algorithm", ("timeline", "--algorithm", "star"), "argument --algorithm: invalid choice: 'star'"),
    Mistake("tl-mapping", ("timeline", "--mapping", "random"), "argument --mapping: invalid choice: 'random'"),
    Mistake("tl-calibrate-unknown", ("timeline", "--calibrate", "network.noc.hops"), "--calibrate: unknown hardware field 'network.noc.hops'"),
    Mistake("tl-calibrate-not-numeric", ("timeline", "--calibrate", "network.algorithm"), "--calibrate needs a numeric hardware field"),
    Mistake("tl-abbreviated", ("timeline", "--pap"), "unrecognized arguments: --pap"),
    # -- timeline: the hardware file ---------------------------------------------------------------------------
    Mistake("tl-hw-unknown", ("timeline", "--hw", "warp-drive"), "--hw: unknown hardware 'warp-drive'; give a preset"),
    Mistake("tl-hw-markup", ("timeline", "--hw", "[red]foo"), "--hw: unknown hardware '[red]foo'"),
    Mistake("tl-hw-missing", ("timeline", "--hw", "nope.toml"), "--hw: cannot read nope.toml"),
    Mistake("tl-hw-binary", ("timeline", "--hw", "hw.toml"), "--hw: hw.toml is not a UTF-8 text file, so not a TOML hardware description",
            files={"hw.toml": b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00"}),
    Mistake("tl-hw-not-toml", ("timeline", "--hw", "hw.toml"), "--hw: hardware file hw.toml is not valid TOML",
            files={"hw.toml": b"[clock\nghz = "}),
    Mistake("tl-hw-negative", ("timeline", "--hw", "hw.toml"), "--hw: hardware field clock.ghz must be > 0; got -1",
            files={"hw.toml": b"[clock]\nghz = -1\n"}),
    Mistake("tl-hw-unknown-field", ("timeline", "--hw", "hw.toml"), "--hw: unknown hardware field 'clock.turbo'; known: ghz",
            files={"hw.toml": b"[clock]\nturbo = 1\n"}),
    # -- timeline: output files --------------------------------------------------------------------------------
    Mistake("tl-trace-suffix", ("timeline", "--trace", "t.txt"), "--trace t.txt: the file name must end in .json"),
    Mistake("tl-trace-dir-force", ("timeline", "--trace", "out", "--force"), "--trace out: the file name must end in .json",
            files={"out": None}),
    Mistake("tl-trace-json-dir-force", ("timeline", "--trace", "t.json", "--force"), "--trace t.json is a directory; give a file name",
            files={"t.json": None}),
    Mistake("tl-trace-exists", ("timeline", "--trace", "t.json"), "--trace t.json exists; pass --force to overwrite it",
            files={"t.json": b"mine"}),
    Mistake("tl-trace-markup-dir", ("timeline", "--trace", "out/[x]/t.json"), "--trace out/[x]/t.json: directory out/[x] does not exist",
            files={"out": None}),
    Mistake("tl-trace-parent-is-file", ("timeline", "--trace", "notes/t.json"), "--trace notes/t.json: notes is not a directory",
            files={"notes": b"a file"}),
    Mistake("tl-trace-read-only", ("timeline", "--trace", "ro/t.json"), "--trace ro/t.json: cannot write in directory ro",
            files={"ro": None}, patch=read_only("ro")),
    Mistake("tl-svg-png", ("timeline", "--svg", "t.png"), "--svg t.png: the file name must end in .svg"),
    Mistake("tl-svg-dir-force", ("timeline", "--svg", "p.svg", "--force"), "--svg p.svg is a directory; give a file name",
            files={"p.svg": None}),
    Mistake("tl-svg-read-only", ("timeline", "--svg", "ro/p.svg", "--force"), "--svg ro/p.svg: cannot write in directory ro",
            files={"ro": None}, patch=read_only("ro")),
    Mistake("tl-svg-json", ("timeline", "--svg", "x.svg", "--json"), "--svg does not apply to --json"),
    Mistake("tl-figure-suffix", ("timeline", "--figure", "f.jpg"), "--figure f.jpg: the file name must end in .png or .svg or .pdf"),
    Mistake("tl-figure-dir-force", ("timeline", "--figure", "f.png", "--force"), "--figure f.png is a directory; give a file name",
            files={"f.png": None}),
    Mistake("tl-figure-read-only", ("timeline", "--figure", "ro/f.pdf"), "--figure ro/f.pdf: cannot write in directory ro",
            files={"ro": None}, patch=read_only("ro")),
    Mistake("tl-figure-no-matplotlib", ("timeline", "--figure", "f.svg"), "--figure needs matplotlib (not installed): pip install 'normfuse[plot]'",
            patch=missing_module("matplotlib")),
    Mistake("tl-same-file-twice", ("timeline", "--svg", "a.svg", "--figure", "a.svg"), "--figure a.svg is the same file as --svg a.svg"),
    Mistake("tl-force-alone", ("timeline", "--force"), "--force does not apply without an output file (--trace, --svg or --figure)"),
    # -- timeline --paper: flags that choose one pass do not apply ---------------------------------------------
    *(Mistake(f"tl-paper{flag}", ("timeline", "--paper", flag, value), f"{flag} does not apply to --paper")
      for flag, value in (("--model", "llama2-7b"), ("--phase", "decode"), ("--chunk", "512"), ("--layers", "2"),
                          ("--block", "1"), ("--detail-layer", "1"), ("--trace", "t.json"), ("--figure", "f.png"))),
    Mistake("tl-paper-context-huge", ("timeline", "--paper", "--context", "99999999999"), "--context must be at most 16777216"),
    Mistake("tl-workers-without-paper", ("timeline", "--workers", "2"), "--workers does not apply without --paper"),
    Mistake("tl-workers-zero", ("timeline", "--paper", "--workers", "0"), "argument --workers: must be an integer >= 1; got '0'"),
    # -- sweep -----------------------------------------------------------------------------------------------------
    Mistake("sw-no-param", ("sweep",), "the following arguments are required: --param"),
    Mistake("sw-one-word", ("sweep", "--param", "context"), "argument --param: expected 2 arguments"),
    Mistake("sw-nan", ("sweep", "--param", "context", "nan"), "--param context: values must be finite numbers; got 'nan'"),
    Mistake("sw-range-to-inf", ("sweep", "--param", "context", "1..inf"), "--param context: values must be finite numbers; got 'inf'"),
    Mistake("sw-inf-hop", ("sweep", "--param", "noc-hop", "1,inf"), "--param noc-hop: values must be finite numbers; got 'inf'"),
    Mistake("sw-word", ("sweep", "--param", "context", "x"), "--param context: not a number: 'x'"),
    Mistake("sw-negative", ("sweep", "--param", "noc-hop", "-4"), "--param noc-hop: values must be non-negative numbers; got '-4'"),
    Mistake("sw-fraction", ("sweep", "--param", "batch", "1.5"), "--param batch: values must be non-negative integers; got '1.5'"),
    Mistake("sw-range-backwards", ("sweep", "--param", "context", "8..2"), "--param context: a range a..b needs 0 < a <= b; got '8..2'"),
    Mistake("sw-range-from-zero", ("sweep", "--param", "context", "0..8"), "--param context: a range a..b needs 0 < a <= b"),
    Mistake("sw-empty", ("sweep", "--param", "context", ","), "--param context: give at least one value"),
    Mistake("sw-batch-zero", ("sweep", "--param", "batch", "0,1"), "--param batch: values must be >= 1"),
    Mistake("sw-unknown-param", ("sweep", "--param", "heads", "1..4"), "unknown --param 'heads'"),
    Mistake("sw-markup-param", ("sweep", "--param", "[red]x", "1"), "unknown --param '[red]x'"),
    Mistake("sw-not-numeric-field", ("sweep", "--param", "network.noc.topology", "1"), "--param network.noc.topology is not a numeric hardware field"),
    Mistake("sw-bad-choice", ("sweep", "--param", "algorithm", "tree,star"), "--param algorithm: values must be among tree, ring, gather"),
    Mistake("sw-twice", ("sweep", "--param", "batch", "1", "--param", "batch", "2"), "--param batch is given twice"),
    Mistake("sw-alias-twice", ("sweep", "--param", "noc-hop", "1,2", "--param", "network.noc.hop_ns", "5,6"),
            "--param network.noc.hop_ns is given twice (as noc-hop)"),
    Mistake("sw-calibrate-swept", ("sweep", "--param", "network.noc.hop_ns", "1,200", "--calibrate", "network.noc.hop_ns"),
            "--calibrate network.noc.hop_ns fits the field that --param network.noc.hop_ns sweeps"),
    Mistake("sw-chunk-decode", ("sweep", "--param", "chunk", "1,2"), "--param chunk does not apply to decode"),
    Mistake("sw-chunk-encoder", ("sweep", "--param", "chunk", "1,2", "--model", "tiny-bert"),
            "--param chunk does not apply to tiny-bert, an encoder"),
    Mistake("sw-three", ("sweep", "--param", "batch", "1", "--param", "context", "2", "--param", "chunk", "3"), "--param may be given at most twice"),
    *(Mistake(f"sw-param-and{flag}", ("sweep", "--param", flag[2:], value, flag, value),
              f"{flag} does not apply when --param {flag[2:]} sweeps it")
      for flag, value in (("--batch", "4"), ("--context", "512"), ("--chunk", "128"), ("--tp-cards", "2"),
                          ("--algorithm", "ring"), ("--mapping", "dense"))),
    Mistake("sw-context-huge", ("sweep", "--param", "context", "1..100000000000000000000"),
            "--param context value must be at most 16777216 (2**24) positions; got 33554432"),
    Mistake("sw-prefill-too-long", ("sweep", "--param", "context", "100000", "--phase", "prefill"),
            "--param context value 100000 in chunks of 256 is 391 prefill chunks; normfuse times at most 128"),
    Mistake("sw-metric", ("sweep", "--param", "batch", "1", "--metric", "speed"), "argument --metric: invalid choice: 'speed'"),
    Mistake("sw-workers-zero", ("sweep", "--param", "batch", "1", "--workers", "0"), "argument --workers: must be an integer >= 1; got '0'"),
    Mistake("sw-hw-binary", ("sweep", "--param", "batch", "1", "--hw", "hw.toml"), "--hw: hw.toml is not a UTF-8 text file",
            files={"hw.toml": b"\xff\xfe\x00\x01"}),
    Mistake("sw-force-alone", ("sweep", "--param", "batch", "1", "--force"), "--force does not apply without --figure"),
    Mistake("sw-figure-suffix", ("sweep", "--param", "batch", "1", "--figure", "s.txt"), "--figure s.txt: the file name must end in .png or .svg or .pdf"),
    Mistake("sw-figure-exists", ("sweep", "--param", "batch", "1", "--figure", "s.png"), "--figure s.png exists; pass --force to overwrite it",
            files={"s.png": b"mine"}),
    Mistake("sw-figure-no-matplotlib", ("sweep", "--param", "batch", "1", "--figure", "s.png"), "--figure needs matplotlib (not installed)",
            patch=missing_module("matplotlib")),
    # -- prove -----------------------------------------------------------------------------------------------------
    Mistake("pr-unknown", ("prove", "rms_norm_linear", "no_such_proof"), "unknown proof 'no_such_proof'; choose from: rms_norm_linear"),
    Mistake("pr-markup", ("prove", "[red]x"), "unknown proof '[red]x'"),
    Mistake("pr-n-seven", ("prove", "--n", "7"), "--n must be 'symbolic', 'all' or one of 1, 2, 3, 4, 5, 6; got '7'"),
    Mistake("pr-n-word", ("prove", "--n", "many"), "--n must be 'symbolic', 'all' or one of"),
    Mistake("pr-unknown-flag", ("prove", "--frob"), "unrecognized arguments: --frob"),
    # -- fuzz ------------------------------------------------------------------------------------------------------
    Mistake("fz-unknown-rule", ("fuzz", "no_such_rule"), "unknown rule 'no_such_rule'; known: rms_norm_linear, layer_norm_linear"),
    Mistake("fz-markup-rule", ("fuzz", "[red]x"), "unknown rule '[red]x'"),
    Mistake("fz-old-rule-name", ("fuzz", "rms_norm -> linear"), "unknown rule 'rms_norm -> linear'"),
    Mistake("fz-dtype", ("fuzz", "--dtype", "float128"), "--dtype: unknown dtype 'float128'; known: float64, float32"),
    Mistake("fz-examples-zero", ("fuzz", "--examples", "0"), "argument --examples: must be an integer >= 1; got '0'"),
    Mistake("fz-examples-word", ("fuzz", "--examples", "many"), "argument --examples: must be an integer >= 1; got 'many'"),
    Mistake("fz-seed-negative", ("fuzz", "--seed", "-1"), "argument --seed: must be an integer >= 0; got '-1'"),
    Mistake("fz-rows", ("fuzz", "softmax_linear", "--rows", "offset"), "rule 'softmax_linear' has no row family 'offset'"),
    Mistake("fz-acc", ("fuzz", "--acc", "float8_e5m2"), "--acc must be one of float64, float32, float16, bfloat16"),
    Mistake("fz-force-alone", ("fuzz", "--force"), "--force does not apply without --figure"),
    Mistake("fz-figure-suffix", ("fuzz", "--figure", "f.gif"), "--figure f.gif: the file name must end in .png or .svg or .pdf"),
    Mistake("fz-figure-no-matplotlib", ("fuzz", "--figure", "f.png"), "--figure needs matplotlib (not installed)",
            patch=missing_module("matplotlib")),
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


@pytest.mark.parametrize(
    "mistake_id", ["demo-seed-negative", "gen-model-markup", "hf-heads-0", "tl-hw-binary", "sw-nan"]
)
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
