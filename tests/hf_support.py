"""Shared by the cross-checks against HF transformers: import what they need, skipping on a developer's machine
without the `hf` extra but FAILING when the environment variable CI is set (CI installs the extra and must run
the cross-checks)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub


def require(name: str) -> ModuleType:
    """The module `name`; pytest.skip without it (pytest.fail when CI is set)."""
    if os.environ.get("CI"):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            pytest.fail(f"CI is set but {name} is not installed ({exc}); install the `hf` extra", pytrace=False)
    return pytest.importorskip(name)
