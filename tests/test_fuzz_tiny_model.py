"""Whole-model property: a random tiny Llama in fused order is no less accurate than in textbook order.

Drawn: the weights' seed, the prompt (length 1-24, ids anywhere in the vocabulary), the storage dtype, the slice
size of the online softmax, and whether the prompt is decoded in one call or as prefill + single-token steps.
The oracle is the baseline forward in float64 on the *same stored weights* (the textbook order, exact to
~1e-15 relative).

Criterion (docs/numerics.md), max norm over all logits:

    |fused - exact| <= c |baseline - exact| + atol,   c = 2,   atol = 2 u_s max|exact|

Why these values: both orders run the same ~24 primitive operations per block with the same roundings, except
at the three fusion sites, where each order rounds one factor of the same product once (the reference its
normalised activations or probabilities, the fused order its folded weights, or nothing for the softmax, whose
unnormalised accumulator stays in float32). Their error fields therefore have the same size, and over T x 256
logits the max norms concentrate; c = 2 allows one order's error to be twice the other's. atol covers the final
rounding of the logits to storage (u_s per logit, for each order) when the baseline happens to be nearly exact.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

from normfuse_ref.models.llama import Mode, forward, get_preset, prepare, random_params
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref.precision import dtype_info

CFG = get_preset("tiny")
DTYPES = ["float32", "float16", "bfloat16"]


def run(w: dict, ids: np.ndarray, mode: Mode, ex: NumpyExecutor, split: int | None) -> np.ndarray:
    if split is None:
        return np.asarray(forward(w, CFG, ids, mode=mode, ex=ex)[0])
    logits, cache = forward(w, CFG, ids[:split], mode=mode, ex=ex)
    rows = [np.asarray(logits)]
    for t in range(split, ids.size):
        step, cache = forward(w, CFG, ids[t : t + 1], cache, mode=mode, ex=ex)
        rows.append(np.asarray(step))
    return np.concatenate(rows)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, np.ndarray, str, int | None, int | None]:
    seed = draw(st.integers(0, 2**16))
    ids = np.array(draw(st.lists(st.integers(0, CFG.vocab_size - 1), min_size=1, max_size=24)))
    dtype = draw(st.sampled_from(DTYPES))
    tile = draw(st.one_of(st.none(), st.integers(1, 16)))
    split = draw(st.one_of(st.none(), st.integers(1, ids.size)))
    return seed, ids, dtype, tile, split


@given(scenarios())
def test_fused_model_is_no_less_accurate_than_baseline(
    case: tuple[int, np.ndarray, str, int | None, int | None],
) -> None:
    seed, ids, dtype, tile, split = case
    params = random_params(CFG, seed=seed, dtype=dtype)
    exact = run(prepare({k: v.astype(np.float64) for k, v in params.items()}, CFG, "baseline"), ids, "baseline",
                NumpyExecutor(np.float64), None)  # fmt: skip
    ex = NumpyExecutor(dtype, tile_size=tile)
    base = run(prepare(params, CFG, "baseline"), ids, "baseline", ex, split).astype(np.float64)
    fused = run(prepare(params, CFG, "fused"), ids, "fused", ex, split).astype(np.float64)
    e_base, e_fused = np.abs(base - exact).max(), np.abs(fused - exact).max()
    atol = 2 * dtype_info(dtype).unit_roundoff * np.abs(exact).max()
    note(f"seed={seed} dtype={dtype} tile={tile} split={split} ids={ids.tolist()}")
    note(f"E_baseline={e_base:.3e} E_fused={e_fused:.3e} allowance={2 * e_base + atol:.3e}")
    assert e_fused <= 2 * e_base + atol


def test_the_criterion_rejects_a_wrong_fused_model() -> None:
    """A fused model whose gain was folded twice (a plausible loader bug) must fail the same criterion."""
    params = random_params(CFG, seed=1, dtype="float32")
    ids = np.arange(8)
    exact = run(prepare({k: v.astype(np.float64) for k, v in params.items()}, CFG, "baseline"), ids, "baseline",
                NumpyExecutor(np.float64), None)  # fmt: skip
    ex = NumpyExecutor("float32")
    base = run(prepare(params, CFG, "baseline"), ids, "baseline", ex, None)
    twice = dict(params)
    for i in range(CFG.n_layers):
        for norm in ("attn_norm", "ffn_norm"):
            twice[f"blk.{i}.{norm}.weight"] = params[f"blk.{i}.{norm}.weight"] ** 2  # folded g, then g again
    wrong = run(prepare(twice, CFG, "fused"), ids, "fused", ex, None)
    e_base, e_wrong = np.abs(base - exact).max(), np.abs(wrong - exact).max()
    assert e_wrong > 2 * e_base + 2 * 2.0**-24 * np.abs(exact).max()
