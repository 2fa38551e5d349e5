"""The optional parts of normfuse and the packages each needs (pyproject.toml's optional dependencies).

The core install (numpy, rich, sympy, ml_dtypes, threadpoolctl) runs the timeline, the sweeps, the proofs and the
demo. The rest:

| extra | packages (import names) | what needs them |
|---|---|---|
| `model` | gguf, tokenizers, safetensors, jinja2, scipy | reading real models: `generate`, `embed`, `load_model`, the BERT loader |
| `fuzz` | hypothesis | `normfuse fuzz` and `normfuse_ref.fuzz` |
| `plot` | matplotlib | figures (`--figure`) |

`require("model", "normfuse generate")` raises `MissingExtra` (an ImportError) naming the missing packages and
the command that installs them; the CLI prints it as its one-line error. tests/test_packaging.py checks that this
table and pyproject.toml agree.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "MissingExtra", "extra_of", "missing", "require"]

#: extra -> the import names of the packages it adds (pyproject: [project.optional-dependencies]).
EXTRAS: dict[str, tuple[str, ...]] = {
    "model": ("gguf", "tokenizers", "safetensors", "jinja2", "scipy"),
    "fuzz": ("hypothesis",),
    "plot": ("matplotlib",),
}


class MissingExtra(ImportError):
    """An optional part of normfuse is not installed; the message says which extra installs it."""


def missing(extra: str) -> list[str]:
    """The packages of `extra` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, purpose: str) -> None:
    """Raise MissingExtra unless every package of `extra` is installed; `purpose` says what needs them."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(f"{purpose} needs {', '.join(absent)} (not installed): pip install 'normfuse[{extra}]'")


def extra_of(module: str) -> str | None:
    """The extra that provides top-level package `module`, if any."""
    return next((extra for extra, names in EXTRAS.items() if module.split(".")[0] in names), None)
