"""Test-suite configuration: the fuzz suite's settings profile (NORMFUSE_FUZZ_PROFILE = ci | dev | thorough)."""

from __future__ import annotations

import pytest

from normfuse_ref.fuzz.profiles import ENV_VAR, load_profile

PROFILE = load_profile()


def pytest_report_header(config: pytest.Config) -> str:
    return f"normfuse fuzz profile: {PROFILE} (set {ENV_VAR} to ci, dev or thorough)"
