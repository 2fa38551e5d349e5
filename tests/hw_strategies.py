"""Hypothesis strategies for machine parameters, shared by the network and the emulator property tests."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from normfuse_ref.hw.config import FIELD_MIN, LevelConfig


def levels(fanouts: Sequence[int], topologies: Sequence[str], *, hop_max: float) -> st.SearchStrategy[LevelConfig]:
    """One network level: a fan-out and a topology from the lists, a hop of 0 or FIELD_MIN..hop_max ns (a machine's
    fields lie in [FIELD_MIN, FIELD_MAX]), links of 1..64 GB/s."""
    return st.builds(
        LevelConfig,
        st.sampled_from(list(fanouts)),
        st.sampled_from(list(topologies)),
        st.one_of(st.just(0.0), st.floats(FIELD_MIN, hop_max, allow_nan=False)),
        st.floats(1, 64, allow_nan=False),
    )
