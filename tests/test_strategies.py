"""The strategies produce what their names say (STYLE 7): checked on the stored values, in every dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from normfuse_ref.fuzz import strategies as s
from normfuse_ref.fuzz.rules import LITERAL_MAX, RULES, Case, array_literal, block_weight_shapes
from normfuse_ref.models.llama.config import LlamaConfig
from normfuse_ref.precision import DTYPES, dtype_info

ALL = list(DTYPES)
WITH_INF = [d for d in ALL if d != "float8_e4m3fn"]
FIND = settings(
    max_examples=1000, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)


def stored_in(a: np.ndarray, dtype: str) -> bool:
    """The array has the storage dtype and its float64 image round-trips (so the oracle sees the same numbers)."""
    return a.dtype == DTYPES[dtype] and bool(
        np.all((a.astype(np.float64).astype(a.dtype) == a) | np.isnan(a.astype(np.float64)))
    )


@pytest.mark.parametrize("dtype", ALL)
@given(data=st.data())
def test_finite_rows_are_finite_stored_and_shaped(dtype: str, data: st.DataObject) -> None:
    n = data.draw(s.row_lengths(max_n=300))
    x = data.draw(s.finite_rows(n=n, rows=2, dtype=dtype))
    assert x.shape == (2, n)
    assert stored_in(x, dtype)
    assert np.all(np.isfinite(x.astype(np.float64)))
    assert np.max(np.abs(x.astype(np.float64))) <= dtype_info(dtype).max / 2


@pytest.mark.parametrize("dtype", ALL)
@given(data=st.data())
def test_outlier_rows_have_outliers(dtype: str, data: st.DataObject) -> None:
    x = data.draw(s.outlier_rows(n=data.draw(st.integers(2, 200)), rows=2, dtype=dtype)).astype(np.float64)
    for row in x:
        k = max(1, row.size // 16)
        top = np.sort(np.abs(row))[::-1]
        # some entry is >= 100x every entry that is not among the (at most k) outliers
        assert top[0] > 0
        assert any(top[j] >= 100 * top[j + 1] for j in range(min(k, row.size - 1)))


@pytest.mark.parametrize("dtype", ALL)
@given(data=st.data())
def test_offset_rows_have_large_mean_over_std(dtype: str, data: st.DataObject) -> None:
    cap = 1 / (4 * dtype_info(dtype).unit_roundoff)
    x = data.draw(s.offset_rows(n=data.draw(st.integers(2, 200)), rows=2, dtype=dtype))
    assert stored_in(x, dtype)
    assert np.all(s.offset_ratio(x) >= min(10.0, cap))


def test_offset_rows_refuse_an_offset_the_dtype_cannot_hold() -> None:
    with pytest.raises(ValueError, match="more offset than float8_e5m2"):
        find(s.offset_rows(n=4, dtype="float8_e5m2", min_ratio=100), lambda x: True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float8_e4m3fn"])
@given(data=st.data())
def test_centred_rows_have_tiny_mean(dtype: str, data: st.DataObject) -> None:
    x = data.draw(s.centred_rows(n=data.draw(st.integers(2, 100)), rows=2, dtype=dtype)).astype(np.float64)
    u = dtype_info(dtype).unit_roundoff
    tiny = dtype_info(dtype).tiny
    assert np.all(np.abs(x.mean(axis=-1)) <= u * np.abs(x).mean(axis=-1) + tiny)


@pytest.mark.parametrize("dtype", ALL)
@given(data=st.data())
def test_eps_dominated_rows_are_below_eps(dtype: str, data: st.DataObject) -> None:
    """mean(x^2) <= eps / 100, and every stored row is nonzero (its largest entry survives the cast)."""
    eps = data.draw(s.epsilons(dominating=dtype))
    x = data.draw(s.eps_dominated_rows(n=data.draw(st.integers(1, 200)), rows=2, dtype=dtype, eps=eps))
    assert np.all(np.mean(x.astype(np.float64) ** 2, axis=-1) <= eps / 100)
    assert np.all(np.any(x.astype(np.float64) != 0, axis=-1))


@pytest.mark.parametrize("dtype", ALL)
@given(data=st.data())
def test_no_drawn_row_is_all_zero(dtype: str, data: st.DataObject) -> None:
    """Finite rows and weights always have a full-size entry per row: an all-zero row checks no scale."""
    n = data.draw(st.integers(1, 64))
    for x in (data.draw(s.finite_rows(n=n, rows=3, dtype=dtype)), data.draw(s.weights(n=3, m=n, dtype=dtype))):
        assert np.all(np.any(x.astype(np.float64) != 0, axis=-1))


@pytest.mark.parametrize("dtype", ALL)
def test_score_rows_sometimes_span_a_wide_range(dtype: str) -> None:
    wide = min(100.0, dtype_info(dtype).max / 20)
    z = find(
        s.score_rows(n=st.integers(2, 32), dtype=dtype), lambda z: np.ptp(z.astype(np.float64)) > wide, settings=FIND
    )
    assert np.all(np.isfinite(z.astype(np.float64)))


@pytest.mark.parametrize("dtype", WITH_INF)
def test_masked_score_rows_include_fully_masked_rows(dtype: str) -> None:
    z = find(
        s.masked_score_rows(n=st.integers(1, 16), rows=3, dtype=dtype),
        lambda z: bool(np.any(np.all(np.isneginf(z.astype(np.float64)), axis=-1))),
        settings=FIND,
    )
    assert z.dtype == DTYPES[dtype]


@pytest.mark.parametrize("dtype", WITH_INF)
@given(data=st.data())
def test_masked_score_rows_are_finite_or_masked(dtype: str, data: st.DataObject) -> None:
    z = data.draw(s.masked_score_rows(n=data.draw(st.integers(1, 64)), rows=3, dtype=dtype)).astype(np.float64)
    assert np.all(np.isfinite(z) | np.isneginf(z))


def test_masked_score_rows_refuse_a_dtype_without_inf() -> None:
    with pytest.raises(ValueError, match="no -inf"):
        find(s.masked_score_rows(n=4, dtype="float8_e4m3fn"), lambda z: True)


@pytest.mark.parametrize("dtype", ALL)
@given(data=st.data())
def test_weights_have_a_realistic_scale(dtype: str, data: st.DataObject) -> None:
    n, m = data.draw(st.integers(1, 300)), data.draw(st.integers(1, 8))
    F = data.draw(s.weights(n=n, m=m, dtype=dtype))
    assert F.shape == (n, m) and stored_in(F, dtype)
    # |F| <= 3 k / sqrt(n) with k <= 2, plus one rounding
    assert np.max(np.abs(F.astype(np.float64))) <= 6 / math.sqrt(n) * (1 + dtype_info(dtype).unit_roundoff) + 1e-300


@pytest.mark.parametrize("dtype", ALL)
@given(data=st.data())
def test_gains_are_bounded_and_nonnegative(dtype: str, data: st.DataObject) -> None:
    g = data.draw(s.gains(n=data.draw(st.integers(1, 100)), dtype=dtype)).astype(np.float64)
    assert np.all(g >= 0) and np.all(g <= 4 * 2 * (1 + dtype_info(dtype).unit_roundoff))


@given(s.row_lengths())
def test_row_lengths_stay_in_range(n: int) -> None:
    assert 1 <= n <= 4096


def test_row_lengths_reach_a_few_thousand_but_rarely() -> None:
    assert find(s.row_lengths(), lambda n: n > 1000, settings=FIND) > 1000


@given(data=st.data())
def test_tilings_partition_the_row(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 200))
    tiles = data.draw(s.tilings(n=n))
    assert sum(tiles) == n and all(t >= 1 for t in tiles)


@given(data=st.data())
def test_merge_orders_build_one_tree(data: st.DataObject) -> None:
    k = data.draw(st.integers(1, 12))
    steps = data.draw(s.merge_orders(tiles=k))
    left = k
    for step in steps:
        assert 0 <= step.i < left and 0 <= step.j < left and step.i != step.j
        left -= 1
    assert left == 1


@given(s.block_configs())
def test_block_configs_are_valid_gqa(cfg: LlamaConfig) -> None:
    assert cfg.head_dim % 2 == 0 and cfg.n_heads % cfg.n_kv_heads == 0 and cfg.n_layers == 1
    assert block_weight_shapes(cfg)["attn_q"] == (cfg.dim, cfg.n_heads * cfg.head_dim)


@pytest.mark.parametrize("rule", list(RULES))
@given(data=st.data())
def test_case_shapes_are_coupled(rule: str, data: st.DataObject) -> None:
    """st.shared couples x's row length with F's rows (and V's rows with z's length)."""
    case: Case = data.draw(RULES[rule].cases(dtype="float32"))
    a = case.arrays
    if rule in ("rms_norm_linear", "layer_norm_linear"):
        n = a["x"].shape[-1]
        assert a["F"].shape[0] == n and a[next(k for k in ("g", "gamma") if k in a)].shape == (n,)
    elif rule in ("softmax_linear", "online_softmax_merge"):
        assert a["V"].shape[0] == a["z"].shape[-1]
    else:
        assert a["x"].shape == (a["positions"].shape[0], case.params["cfg"].dim)


@given(data=st.data())
def test_case_repr_rebuilds_the_case(data: st.DataObject) -> None:
    """A printed Case is a Python expression that rebuilds the same stored inputs (copy-pasteable)."""
    dtype = data.draw(st.sampled_from(ALL))
    case: Case = data.draw(RULES["softmax_linear"].cases(dtype=dtype))
    from normfuse_ref.fuzz.strategies import MergeStep  # noqa: F401  (names a pasted repr may use)

    if any(v.size > LITERAL_MAX for v in case.arrays.values()):
        assert "too large to print; use the @reproduce_failure blob" in repr(case)
        return
    rebuilt = eval(repr(case), {"np": np, "DTYPES": DTYPES, "Case": Case})
    for k, v in case.arrays.items():
        assert rebuilt.arrays[k].dtype == v.dtype
        np.testing.assert_array_equal(rebuilt.arrays[k].astype(np.float64), v.astype(np.float64))


def test_array_literal_keeps_infinities_and_dtype() -> None:
    a = np.array([[-np.inf, 1.5]]).astype(DTYPES["bfloat16"])
    assert array_literal(a) == "np.array([[-np.inf, 1.5]]).astype(DTYPES['bfloat16'])"
