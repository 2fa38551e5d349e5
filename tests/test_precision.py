"""Dtype facts and the accumulation policy, checked against the formats' definitions (not against our code)."""

from __future__ import annotations

import math
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from normfuse_ref.precision import (
    DTYPES,
    accumulation_dtype,
    dtype_info,
    float16_values,
    in_acc,
    matmul_acc,
    mean_acc,
    resolve_dtype,
    sum_acc,
    to_storage,
    tree_sum,
)

# (name, significand bits p including the hidden bit, largest finite value): u = 2^-p. Sources: IEEE 754-2019
# for binary64/32/16; bfloat16 = float32's exponent with 8 significant bits; OCP 8-bit FP spec (2023) for E4M3
# (max 448, no infinities) and E5M2 (max 57344).
FORMATS = [
    ("float64", 53, 1.7976931348623157e308),
    ("float32", 24, 3.4028234663852886e38),
    ("float16", 11, 65504.0),
    ("bfloat16", 8, 3.3895313892515355e38),
    ("float8_e4m3fn", 4, 448.0),
    ("float8_e5m2", 3, 57344.0),
]


@pytest.mark.parametrize(("name", "p", "vmax"), FORMATS)
def test_unit_roundoff_and_range(name: str, p: int, vmax: float) -> None:
    info = dtype_info(name)
    assert info.unit_roundoff == 2.0**-p
    assert info.max == vmax
    assert info.storage_only == name.startswith("float8")
    # u really is the worst relative error of rounding to nearest: 1 + u rounds to 1 (ties to even) ...
    one = np.array(1.0, dtype=DTYPES[name])
    assert np.array(1 + info.unit_roundoff).astype(DTYPES[name]) == one
    # ... and 1 + 2u (the next representable number) is kept.
    assert np.array(1 + 2 * info.unit_roundoff).astype(DTYPES[name]) != one


def test_accumulation_policy() -> None:
    assert accumulation_dtype(np.float64) == np.float64
    assert accumulation_dtype(np.float32) == np.float32
    for narrow in (np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        assert accumulation_dtype(narrow) == np.float32
    assert accumulation_dtype(np.float32, np.float64) == np.float64
    assert accumulation_dtype(np.float16, "float16") == np.float16


def test_narrow_accumulators_really_accumulate_narrow() -> None:
    """float16 sums must overflow and lose bits where float16 hardware would (numpy's defaults would not)."""
    x = np.full((1, 4), 200.0, np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(mean_acc(x * x))[0, 0]  # 4 * 40000 > 65504
        assert np.isinf(matmul_acc(x, np.full((4, 1), 200.0, np.float16), np.dtype(np.float16)))[0, 0]
    assert np.isfinite(matmul_acc(x, np.full((4, 1), 200.0, np.float16), np.dtype(np.float32)))[0, 0]
    # 2049 is not representable in float16, so a running float16 sum of ones stalls at 2048; the pairwise adder
    # tree adds equal halves and counts 4096 ones exactly (that is why hardware uses trees).
    ones = np.ones((1, 4096), np.float16)
    assert matmul_acc(ones, ones.T, np.dtype(np.float16))[0, 0] == 4096
    # But every product is rounded to the accumulator: 1 * (1 + 2^-10) * (1 + 2^-10) loses its 2^-20 term.
    a = np.full((1, 2), 1 + 2**-10, np.float16)
    assert matmul_acc(a, a.T, np.dtype(np.float16))[0, 0] == 2 * (1 + 2**-9)
    # And every partial sum is rounded: 2048 + 1 rounds to 2048 (spacing 2, ties to even), twice; a float32
    # accumulator rounded once at the end would keep 2050 (representable in float16).
    b = np.array([[2048.0, 1.0, 1.0]], np.float16)
    assert matmul_acc(b, np.ones((3, 1), np.float16), np.dtype(np.float16))[0, 0] == 2048
    assert sum_acc(b)[0, 0] == 2048
    assert matmul_acc(a, a.T, np.dtype(np.float64))[0, 0] == 2 * (1 + 2**-10) ** 2


def test_narrow_accumulation_does_not_depend_on_layout() -> None:
    """Reproduction from the fuzz suite: numpy's float16 reductions use float32 partial sums along contiguous axes
    and sequential float16 otherwise, so the answer depended on how many columns F had. An adder tree that rounds
    every partial sum to float16 overflows at the first level here (60000 + 60000), for any number of columns."""
    f16 = np.dtype(np.float16)
    x = np.array([[60000, 60000, -60000, -60000]], np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        one = matmul_acc(x, np.ones((4, 1), np.float16), f16)
        two = matmul_acc(x, np.ones((4, 2), np.float16), f16)
        assert not np.isfinite(one).any() and not np.isfinite(two).any()
        assert not np.isfinite(mean_acc(x)).any()
    # The same column gives the same sum whatever F's width: [2048, 1 x 100] in float16.
    a = np.array([[2048.0] + [1.0] * 100], np.float16)
    col = np.ones((101, 1), np.float16)
    assert matmul_acc(a, col, f16)[0, 0] == matmul_acc(a, np.ones((101, 2), np.float16), f16)[0, 0]


def pairwise_sum(values: list[float], dtype: np.dtype) -> float:
    """An adder tree written out by hand: neighbours added level by level, every sum rounded to `dtype`, an odd
    last partial passed up to the next level unchanged. The second implementation of precision.tree_sum."""
    level = [dtype.type(v) for v in values]
    while len(level) > 1:
        pairs = [dtype.type(level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + level[-1:] if len(level) % 2 else pairs
    return float(level[0])


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@given(data=st.data())
def test_the_adder_tree_is_a_pairwise_sum(name: str, data: st.DataObject) -> None:
    """tree_sum (and the 16-bit sum_acc and matmul_acc built on it) against the hand-written tree, bit for bit, for
    every length: odd lengths and odd levels are where a dropped partial would hide."""
    dt = DTYPES[name]
    n = data.draw(st.integers(1, 130), label="n")
    x = np.asarray(data.draw(hnp.arrays(np.float64, (2, n), elements=st.floats(-400, 400, width=16)))).astype(dt)
    want = [pairwise_sum(list(row.astype(np.float64)), dt) for row in x]
    assert tree_sum(x)[:, 0].astype(np.float64).tolist() == want
    assert sum_acc(x)[:, 0].astype(np.float64).tolist() == want
    ones = np.ones((n, 1), dtype=dt)
    products = [pairwise_sum(list(row.astype(np.float64)), dt) for row in x]  # x_i * 1 is exact
    assert matmul_acc(x, ones, dt)[:, 0].astype(np.float64).tolist() == products


def test_an_odd_length_keeps_its_last_partial() -> None:
    """The smallest case of the bug above: three ones sum to three."""
    assert tree_sum(np.ones((1, 3), np.float16))[0, 0] == 3


@pytest.mark.parametrize("acc", ["float32", "float64"])
def test_a_stack_of_rows_against_one_matrix_is_every_row_times_the_matrix(acc: str) -> None:
    """matmul_acc's one GEMM over a stack of rows (B, T, n) @ (n, m) (and into `out=`, and a non-contiguous stack,
    which takes np.matmul's path): each row's product, checked against a float64 product per sequence. The entries
    are small integers, so every product and partial sum is exact in float32 and any summation order gives the same
    bits: a row paired with the wrong matrix row or written to the wrong place shows."""
    rng = np.random.default_rng(4)
    x = rng.integers(-8, 9, (5, 7, 33)).astype(np.float32)  # (B, T, n)
    F = rng.integers(-8, 9, (33, 6)).astype(np.float32)  # (n, m)
    want = np.stack([x[b].astype(np.float64) @ F.astype(np.float64) for b in range(5)])  # (B, T, m)
    a = np.dtype(acc)
    out = np.empty((5, 7, 6), a)
    matmul_acc(x, F, a, out=out)
    for got in (matmul_acc(x, F, a), out, matmul_acc(np.swapaxes(np.swapaxes(x, 0, 1).copy(), 0, 1), F, a)):
        assert got.dtype == a and got.shape == (5, 7, 6)
        np.testing.assert_array_equal(got, want.astype(a))


@pytest.mark.parametrize(("name", "p"), [("bfloat16", 8), ("float8_e4m3fn", 4), ("float8_e5m2", 3)])
def test_a_float64_value_is_rounded_to_a_narrow_dtype_once(name: str, p: int) -> None:
    """1 + 2^-p + 2^-30 lies just above the midpoint of two neighbours of a p-bit significand: rounded once it goes
    up, but through float32 (which drops the 2^-30) it becomes the midpoint and rounds to even, down. The folds
    are float64 stored in these dtypes: ml_dtypes before 0.7 rounded twice."""
    x = np.array([1 + 2.0**-p + 2.0**-30, -(1 + 2.0**-p + 2.0**-30)])
    got = x.astype(DTYPES[name]).astype(np.float64)
    np.testing.assert_array_equal(got, [1 + 2.0 ** (1 - p), -(1 + 2.0 ** (1 - p))])


def _float16_boundaries() -> np.ndarray:
    """float32 values at every rounding decision of float16: each finite float16 value and each halfway point
    between neighbours (exact in float32: 12 significant bits), with their float32 neighbours on either side,
    both signs; then the overflow edge, specials and 10^5 random float32 bit patterns (NaN payloads included;
    ~44% of them below float16's smallest normal)."""
    h = np.arange(0, 0x7C01, dtype=np.uint16).view(np.float16).astype(np.float64)  # 0 ... 65504, inf
    points = np.concatenate([h[:-1], (h[:-2] + h[1:-1]) / 2]).astype(np.float32)  # exact
    up, down = np.nextafter(points, np.float32(np.inf)), np.nextafter(points, np.float32(0))
    specials = np.array([65519.99, 65520, 3.4e38, np.inf, np.nan, 2.0**-25, 2.0**-26, 1e-45], np.float32)
    rand = np.random.default_rng(0).integers(0, 2**32, 10**5, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([points, up, down, specials, rand])
    return np.concatenate([x, -x])


def test_storage_rounding_gives_numpy_casts_bits_at_every_float16_boundary() -> None:
    """`to_storage`'s fast float32 -> float16 path (its subnormal range pre-rounded in float32) against NumPy's
    cast, bit for bit, as an array and written into one."""
    x = _float16_boundaries()  # ~30% of them rounded into float16's subnormal range: pre-rounded
    rare = np.concatenate([np.linspace(-3, 3, 10**5, dtype=np.float32), x[:: 10**3]])  # a few there: cast alone
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float16's (or fp8's) range: inf or NaN
        for y in (x, rare, x.reshape(2, -1)[:, 1::3]):  # the last not contiguous
            want = y.astype(np.float16).view(np.uint16)
            assert (to_storage(y, np.dtype(np.float16)).view(np.uint16) == want).all()
            out = np.empty(y.shape, np.float16)
            assert to_storage(y, np.dtype(np.float16), out) is out and (out.view(np.uint16) == want).all()
        for name in ("float32", "bfloat16", "float8_e4m3fn"):  # every other dtype: the cast itself
            dt = resolve_dtype(name)
            np.testing.assert_array_equal(to_storage(x, dt).view(np.uint8), x.astype(dt).view(np.uint8))


def test_float16_patterns_decode_as_ieee_754_says() -> None:
    """The table operands are read through, against the binary16 layout worked by hand: sign, 5 exponent bits
    (bias 15; 0: subnormal m 2^-24; 31: inf or NaN), 10 fraction bits."""
    table = float16_values()
    assert table.shape == (65536,) and table.dtype == np.float32
    for p in range(65536):
        s, e, m = p >> 15, (p >> 10) & 31, p & 1023
        got = float(table[p])
        if e == 31 and m:
            assert np.isnan(got) and np.signbit(table[p]) == bool(s)
            continue
        v = math.inf if e == 31 else m * 2.0**-24 if e == 0 else (1 + m / 1024) * 2.0 ** (e - 15)
        assert got == (-v if s else v) and np.signbit(table[p]) == bool(s), p


def test_a_float16_operand_reads_as_its_cast() -> None:
    with np.errstate(over="ignore"):  # the boundaries beyond float16's range: inf
        x = _float16_boundaries()[::7].astype(np.float16).reshape(-1, 16)[:, ::3]  # not contiguous; NaN, inf, -0
    want = x.astype(np.float32)
    got = in_acc(x, np.dtype(np.float32))
    assert got.dtype == np.float32 and got.shape == x.shape
    assert (got.view(np.uint32) == want.view(np.uint32)).all()


def test_the_dtype_table_names_every_dtype_and_resolves_each_to_itself() -> None:
    assert list(DTYPES) == [name for name, _, _ in FORMATS] and len(DTYPES) == len(FORMATS)
    assert [dt.name for dt in DTYPES.values()] == list(DTYPES)
    assert DTYPES["bfloat16"] == np.dtype(ml_dtypes.bfloat16)
    for name, dt in DTYPES.items():
        assert resolve_dtype(name) == resolve_dtype(dt) == dt and dtype_info(dt).name == name
    for bad in ("int8", ">f4", "float8_e4m3", "complex64"):  # (a big-endian float32 is not float32)
        with pytest.raises(ValueError, match="unsupported dtype"):
            resolve_dtype(bad)
    with pytest.raises(KeyError):
        DTYPES["float128"]


def test_the_main_job_does_not_import_ml_dtypes() -> None:
    """ml_dtypes' import takes ~1 s (normfuse_ref.precision's docstring): `normfuse timeline`, the float32
    model and every dtype NumPy has must not pay for it; bfloat16 must still be there when asked for."""
    code = (
        "import sys, contextlib, io\n"
        "from normfuse_ref.cli.main import main\n"
        "from normfuse_ref.precision import accumulation_dtype, dtype_info, resolve_dtype\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['timeline', '--model', 'tiny']) == 0\n"
        "import numpy as np\n"
        "for d in ('float64', 'float32', 'float16', np.float64, np.float32, np.float16, np.dtype('f2')):\n"
        "    resolve_dtype(d); dtype_info(d); accumulation_dtype(d)\n"
        "assert 'ml_dtypes' not in sys.modules, 'imported'\n"
        "assert dtype_info('bfloat16').unit_roundoff == 2**-8 and 'ml_dtypes' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
