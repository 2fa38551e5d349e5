"""Packaging: a lean core with named extras, start-up that imports only what the command needs, no files left in
the user's directory by `fuzz`, and the licence."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from normfuse_ref.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
#: Top-level modules of every optional package (the import names: for these packages, the distribution name).
OPTIONAL = {name for names in EXTRAS.values() for name in names}


def names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings, lower case (without versions, markers and extras)."""
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("-", "_") for r in requirements}  # type: ignore[union-attr]


def test_extras_table_matches_pyproject() -> None:
    optional = PYPROJECT["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert names(optional[extra]) == set(modules), extra
    assert not names(PYPROJECT["dependencies"]) & OPTIONAL  # the core needs none of them
    assert names(PYPROJECT["dependencies"]) == {"numpy", "sympy", "rich", "ml_dtypes", "threadpoolctl", "tomli"}
    assert {"normfuse[model,fuzz,plot]"} <= set(optional["test"])  # the README's .[test,hf] pulls what the tests import
    assert "normfuse[model]" in optional["hf"]


def imported_by(*argv: str) -> set[str]:
    """Every module imported by running `normfuse ARGV` in a fresh interpreter."""
    code = (
        "import sys, io, contextlib\n"
        "from normfuse_ref.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main({list(argv)!r})\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (("--version",), set()),
        (("demo", "--n", "8", "--m", "2", "--dtype", "float32"), set()),
        (("fetch", "--list"), set()),
        (("generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "1"), set()),
    ],
)
def test_a_command_imports_only_what_it_needs(argv: tuple[str, ...], allowed: set[str]) -> None:
    loaded = imported_by(*argv)
    top = {m.split(".")[0] for m in loaded}
    assert top & OPTIONAL <= allowed, top & OPTIONAL
    commands = {m for m in loaded if m.startswith("normfuse_ref.cli.") and m.count(".") == 2}
    assert commands <= {f"normfuse_ref.cli.{m}" for m in ("main", "console", "args", "outputs", *argv[:1])}, commands
    if argv == ("--version",):
        assert not {"numpy", "sympy", "rich.table", "rich.progress", "normfuse_ref.hw"} & loaded


def test_ctrl_c_while_the_command_loads_is_one_line() -> None:
    """The installed command's entry point (read from pyproject.toml) turns Ctrl-C during its own imports into
    "error: interrupted", status 130, as later. Here the interrupt is raised when rich, which the console imports,
    is loaded (a real Ctrl-C in that tenth of a second printed the import's traceback)."""
    module, _, attr = PYPROJECT["scripts"]["normfuse"].partition(":")
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'rich.console':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        f"from {module} import {attr}\n"
        "sys.argv = ['normfuse', '--version']\n"
        f"sys.exit({attr}())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr, r.stdout) == (130, "error: interrupted\n", "")


def test_the_public_names_load_when_first_used() -> None:
    """`import normfuse_ref` imports none of its modules (so neither NumPy); each public name is then the object
    of the module that defines it, and `from normfuse_ref import *` gives them all."""
    code = (
        "import sys, importlib\n"
        "import normfuse_ref as nf\n"
        "assert 'numpy' not in sys.modules and 'normfuse_ref.fusion' not in sys.modules\n"
        "names = {}\n"
        "exec('from normfuse_ref import *', names)\n"
        "assert set(nf.__all__) <= set(names) and set(nf.__all__) <= set(dir(nf))\n"
        "for name in nf.__all__:\n"
        "    value = getattr(nf, name)\n"
        "    if callable(value):\n"
        "        assert value is getattr(importlib.import_module(value.__module__), name), name\n"
        "print(len(nf.__all__))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 24


def test_fuzz_leaves_no_hypothesis_folder(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run(
        [sys.executable, "-m", "normfuse_ref", "fuzz", "rms_norm_linear", "--dtype", "float32", "--examples", "3"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_licence() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert PYPROJECT["license"] == "MIT" and PYPROJECT["license-files"] == ["LICENSE"]
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in PYPROJECT["classifiers"])
    assert PYPROJECT["urls"]["Paper"] == "https://arxiv.org/abs/2502.17728"
