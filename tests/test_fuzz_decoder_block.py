"""A whole Llama decoder block, reference order vs the model's own block in fused order, in every dtype.

x -> rms_norm -> Q, K, V (GQA) -> rope -> causal attention -> output projection -> residual -> rms_norm ->
gate/up -> swiglu -> down -> residual. The reference order composes the reference layers; the fused order is
`normfuse_ref.models.llama.forward.decoder_block` in fused mode (the code the model runs: gains folded by
`weights.prepare_block`, the three sites through `normfuse_ref.fusion`). The allowance is the block's running
error bound with the larger of the two orders' bounds carried on at each site (accuracy/equivalence.py); the
criterion is the same as for the single rules.

In 16- and 8-bit storage the worst-case bound through attention and the gated FFN is wide: many rows are
unchecked (their limit is at least their size). There the cell's statistical check carries the block
(`equivalence.CellStatistics`): a fused block returning its input, NaN, or (in 16-bit storage) a 1% scale bias
fails it (tests/test_mutants.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normfuse_ref.fuzz.campaign import check_cell
from normfuse_ref.fuzz.rules import RULES, run
from normfuse_ref.precision import DTYPES

BLOCK = RULES["decoder_block"]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_decoder_block_no_worse_than_reference(dtype: str) -> None:
    res = check_cell(BLOCK, dtype)
    if dtype in ("float64", "float32"):
        assert res.stats.unchecked == 0  # the bound is informative where it should be


@given(data=st.data())
def test_reference_block_matches_the_independent_oracle(data: st.DataObject) -> None:
    """Two implementations must agree: the block composed from the reference layers, and the oracle's loops over
    heads and queries (its own RoPE, softmax and fsum dot products, no shared helper), in float64. They sum in
    different orders; the block's float64 allowance covers both (it bounds the reference's error and adds the
    oracle's own)."""
    case = data.draw(BLOCK.cases(dtype="float64"), label="case")
    out = run(BLOCK, case)
    bounds = BLOCK.bounds(**case.arrays, **case.params, **case.order, acc=None)
    np.testing.assert_array_less(np.abs(out.reference - out.exact), bounds.allowance + 1e-300)
