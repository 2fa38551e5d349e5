"""The settings profiles of the fuzz suite and `normfuse fuzz`, chosen by NORMFUSE_FUZZ_PROFILE.

| profile   | examples per property | examples per cell | for                                                          |
|-----------|-----------------------|-------------------|--------------------------------------------------------------|
| ci        | 25                    | 200               | every push: derandomised (same examples every run), no database |
| dev       | 200                   | 400               | local work: random, remembers failures in .hypothesis/        |
| thorough  | 2500 (100 x ci)       | 2500              | before a release / after touching a rule: random, database    |

A *property* is a plain Hypothesis test (`@given`); a *cell* is one rule x dtype campaign (`campaign.check_cell`),
which needs enough examples for its statistics: 200 resolve a scale bias of one unit roundoff in every cell
(accuracy/equivalence.py, `CellStatistics`). All profiles: no deadline (big rows and the oracle vary in time),
print_blob=True (a failure prints `@reproduce_failure(...)`), and the slow-data health check off (large n is drawn
on purpose, rarely).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings

__all__ = ["ENV_VAR", "PROFILES", "Profile", "active", "load_profile", "register_profiles"]

#: The environment variable that picks the profile (default "ci").
ENV_VAR = "NORMFUSE_FUZZ_PROFILE"


@dataclass(frozen=True)
class Profile:
    """How much one run of the fuzz suite draws."""

    name: str
    examples: int  # per @given property
    cell_examples: int  # per rule x dtype campaign (campaign.check_cell)
    derandomize: bool  # the same examples every run (CI), or fresh ones (a seed printed on failure)


#: The profiles, by name.
PROFILES: dict[str, Profile] = {
    "ci": Profile("ci", examples=25, cell_examples=200, derandomize=True),
    "dev": Profile("dev", examples=200, cell_examples=400, derandomize=False),
    "thorough": Profile("thorough", examples=2500, cell_examples=2500, derandomize=False),
}

_COMMON: dict[str, Any] = dict(
    deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def register_profiles() -> None:
    """Register the three profiles with Hypothesis (idempotent)."""
    for p in PROFILES.values():
        extra: dict[str, Any] = {"derandomize": True, "database": None} if p.derandomize else {}
        settings.register_profile(p.name, max_examples=p.examples, **extra, **_COMMON)


def active() -> Profile:
    """The profile named by $NORMFUSE_FUZZ_PROFILE (default ci); ValueError for an unknown name."""
    chosen = os.environ.get(ENV_VAR) or "ci"
    if chosen not in PROFILES:
        raise ValueError(f"unknown fuzz profile {chosen!r} (from {ENV_VAR}); known: {', '.join(PROFILES)}")
    return PROFILES[chosen]


def load_profile() -> str:
    """Register the profiles and load the active one into Hypothesis; returns its name."""
    register_profiles()
    name = active().name
    settings.load_profile(name)
    return name
