"""Hypothesis settings profiles for the fuzz suite and `normfuse fuzz`, chosen by NORMFUSE_FUZZ_PROFILE.

| profile   | examples per property | for                                                          |
|-----------|-----------------------|--------------------------------------------------------------|
| ci        | 25                    | every push: derandomised (same examples every run), no database |
| dev       | 200                   | local work: random, remembers failures in .hypothesis/        |
| thorough  | 2500 (100 x ci)       | before a release / after touching a rule: random, database    |

All profiles: no deadline (big rows and the float64 oracle vary in time), print_blob=True (a failure prints
`@reproduce_failure(...)`), and the slow-data health check off (large n is drawn on purpose, rarely).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["ENV_VAR", "PROFILES", "load_profile", "register_profiles"]

#: The environment variable that picks the profile (default "ci").
ENV_VAR = "NORMFUSE_FUZZ_PROFILE"

_COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Examples per property, by profile.
PROFILES: dict[str, int] = {"ci": 25, "dev": 200, "thorough": 2500}


def register_profiles() -> None:
    """Register the three profiles with Hypothesis (idempotent)."""
    settings.register_profile("ci", max_examples=PROFILES["ci"], derandomize=True, database=None, **_COMMON)  # type: ignore[arg-type]
    settings.register_profile("dev", max_examples=PROFILES["dev"], **_COMMON)  # type: ignore[arg-type]
    settings.register_profile("thorough", max_examples=PROFILES["thorough"], **_COMMON)  # type: ignore[arg-type]


def load_profile(name: str | None = None) -> str:
    """Register the profiles and load `name` (default: $NORMFUSE_FUZZ_PROFILE, else "ci"); returns the name."""
    register_profiles()
    chosen = name or os.environ.get(ENV_VAR) or "ci"
    if chosen not in PROFILES:
        raise ValueError(f"unknown fuzz profile {chosen!r} (from {ENV_VAR}); known: {', '.join(PROFILES)}")
    settings.load_profile(chosen)
    return chosen
