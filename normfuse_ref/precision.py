"""Dtypes, their rounding facts, and the storage-vs-accumulation policy.

Hardware stores activations and weights narrow (16 or 8 bits) and accumulates wider. normfuse mirrors that:
every layer and rule takes its inputs in the caller's *storage* dtype, computes in an explicit *accumulation*
dtype, and returns the storage dtype. The default accumulation (docs/numerics.md) is float32 for
16- and 8-bit storage and the input dtype otherwise.

Supported storage dtypes:

| name           | unit roundoff u | max        | note                                   |
|----------------|-----------------|------------|----------------------------------------|
| float64        | 2^-53           | 1.8e308    | the oracle                             |
| float32        | 2^-24           | 3.4e38     |                                        |
| float16        | 2^-11           | 65504      | overflows easily: see the fuzz hazards |
| bfloat16       | 2^-8            | 3.4e38     | float32 range, 8 significant bits      |
| float8_e4m3fn  | 2^-4            | 448        | storage only (no inf)                  |
| float8_e5m2    | 2^-3            | 57344      | storage only                           |

fp8 is *storage only*: it is never a sensible accumulation dtype, and `accumulation_dtype` refuses it.

bfloat16 and the fp8 dtypes come from `ml_dtypes`, imported when one of them is first asked for (`DTYPES[name]`,
its values, or `resolve_dtype` of anything but NumPy's own float64, float32 and float16), not when this module is:
its import (ml_dtypes 0.7) takes 1.0-1.3 s on the 2-core test machine, which was more than half the time of
`normfuse timeline`, a command that never meets them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

__all__ = [
    "DTYPES",
    "F64",
    "Array",
    "DtypeInfo",
    "accumulation_dtype",
    "as_float_array",
    "dtype_info",
    "in_acc",
    "matmul_acc",
    "mean_acc",
    "resolve_dtype",
    "sum_acc",
    "to_storage",
    "tree_sum",
    "write_back",
]

#: An array of any supported dtype: the one alias every module uses for activations, weights and results.
Array: TypeAlias = NDArray[Any]
#: A float64 array: oracle values and error bounds.
F64: TypeAlias = NDArray[np.float64]

#: NumPy's own floating dtypes among the supported ones: resolved without importing ml_dtypes.
_NUMPY_FLOATS = {dt.name: dt for dt in map(np.dtype, (np.float64, np.float32, np.float16))}
#: The supported dtypes that ml_dtypes defines (the attribute of the module that is each one's type).
_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2")
#: The storage-only ones, by name (a supported dtype's name is its key in DTYPES).
_FP8 = ("float8_e4m3fn", "float8_e5m2")


@functools.cache
def _ml_dtypes() -> ModuleType:
    """The ml_dtypes module, imported on first use (module docstring)."""
    import ml_dtypes

    return ml_dtypes


class _Dtypes(Mapping[str, np.dtype]):
    """The name -> dtype table: its names are known at once, ml_dtypes' dtypes made when first looked up."""

    _names = (*_NUMPY_FLOATS, *_ML_DTYPES)

    def __getitem__(self, name: str) -> np.dtype:
        if name in _NUMPY_FLOATS:
            return _NUMPY_FLOATS[name]
        if name in _ML_DTYPES:
            return np.dtype(getattr(_ml_dtypes(), name))
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"DTYPES({', '.join(self._names)})"


#: Every storage dtype the toolkit supports, by its short name (float64, float32, float16, bfloat16,
#: float8_e4m3fn, float8_e5m2, in that order; a read-only mapping).
DTYPES: Mapping[str, np.dtype] = _Dtypes()


@dataclass(frozen=True)
class DtypeInfo:
    """Rounding facts of one storage dtype."""

    name: str
    dtype: np.dtype
    bits: int  # storage width, bits
    unit_roundoff: float  # u = eps / 2: the relative error of one round-to-nearest (dimensionless)
    max: float  # largest finite value
    tiny: float  # smallest positive normal value
    storage_only: bool  # True for fp8: never used to accumulate


def resolve_dtype(dtype: DTypeLike | str) -> np.dtype:
    """The numpy dtype for a name in DTYPES or any dtype-like; ValueError for anything unsupported."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"unsupported dtype {dtype!r}; supported: {', '.join(DTYPES)}") from exc
    if dt not in DTYPES.values():  # (NumPy's own are looked up first: no import of ml_dtypes for them)
        raise ValueError(f"unsupported dtype {dt.name!r}; supported: {', '.join(DTYPES)}")
    return dt


def dtype_info(dtype: DTypeLike | str) -> DtypeInfo:
    """Unit roundoff, range and width of a supported dtype."""
    dt = resolve_dtype(dtype)
    fi = np.finfo(dt) if dt.name in _NUMPY_FLOATS else _ml_dtypes().finfo(dt)
    return DtypeInfo(
        name=dt.name,  # (a supported dtype's name is its key in DTYPES)
        dtype=dt,
        bits=dt.itemsize * 8,
        unit_roundoff=float(fi.eps) / 2,
        max=float(fi.max),
        tiny=float(fi.tiny),
        storage_only=dt.name in _FP8,
    )


def accumulation_dtype(storage: DTypeLike | str, acc: DTypeLike | str | None = None) -> np.dtype:
    """The dtype a computation on `storage` inputs accumulates in.

    `acc=None` applies the policy: float32 for 16- and 8-bit storage, the storage dtype otherwise. An explicit
    `acc` may be any supported non-fp8 dtype, even one narrower than the storage: the fuzz suite accumulates in
    float16 on purpose to reproduce the hazards of a narrow accumulator.
    """
    st = resolve_dtype(storage)
    if acc is None:
        return np.dtype(np.float32) if st.itemsize <= 2 else st
    a = resolve_dtype(acc)
    if a.name in _FP8:
        raise ValueError(f"{a.name} is a storage-only dtype and cannot be an accumulation dtype")
    return a


def as_float_array(x: ArrayLike, name: str) -> Array:
    """`x` as an array of a supported floating dtype; TypeError for integer, bool, complex or object input.

    Python floats and lists of them become float64 (numpy's default), which is supported.
    """
    arr = np.asarray(x)
    if arr.dtype not in DTYPES.values():
        kind = {"i": "integer", "u": "unsigned integer", "b": "boolean", "c": "complex", "O": "object"}.get(
            arr.dtype.kind, arr.dtype.name
        )
        raise TypeError(
            f"{name} must be a floating array of one of {', '.join(DTYPES)}; got {kind} dtype {arr.dtype.name}"
        )
    return arr


def tree_sum(x: Array, axis: int = -1) -> Array:
    """Sum over `axis` (keepdims) as a balanced adder tree, every partial sum rounded to x's dtype.

    Used for 16-bit accumulators: numpy's own float16 reductions keep float32 partial sums along contiguous axes
    and run sequentially in float16 otherwise, so their result depends on memory layout. Here each level adds
    neighbouring pairs elementwise (one correctly rounded addition each) and stores the result in x's dtype, so a
    partial sum overflows or loses bits exactly where such an adder tree would, whatever the layout.
    """
    p = np.moveaxis(x, axis, -1)  # (..., n)
    dt = x.dtype
    while p.shape[-1] > 1:
        if p.shape[-1] % 2:  # pad an odd level with an exact zero
            p = np.concatenate([p, np.zeros((*p.shape[:-1], 1), dtype=dt)], axis=-1)
        p = (p[..., 0::2] + p[..., 1::2]).astype(dt)  # (..., n/2)
    return np.moveaxis(p, -1, axis)  # keepdims


#: float16's smallest normal number: below it float16's values are the multiples of 2^-24 (its subnormals).
_F16_TINY = np.float32(2.0**-14)
#: float32's values in [1/2, 1) are 2^-24 apart: fl(|y| + 1/2) - 1/2 rounds |y| to a multiple of 2^-24.
_HALF = np.float32(0.5)


def _many_float16_subnormals(y: Array) -> bool:
    """Whether more than 1 in 25 of a sample of y's values (every 29th along its rows) round into float16's
    subnormal range: where pre-rounding them (`to_storage`, ~3.5 ns a value) costs less than the cast's assists
    (~80 ns each) would. Only speed depends on the answer."""
    sample = np.abs(y[..., ::29] if y.ndim else y)
    return bool(np.count_nonzero((sample < _F16_TINY) & (sample > 0)) * 25 > sample.size)


def to_storage(y: Array, dtype: np.dtype, out: Array | None = None) -> Array:
    """y rounded to `dtype` (to nearest, ties to even: NumPy's cast), as an array (y itself if already so) or
    written into `out` (of that dtype): the rounding rule every executor writes a result back with.

    float32 -> float16 gives the cast's bits faster. x86 CPUs convert a float32 that must be *rounded* into
    float16's subnormal range (|y| < 2^-14) through a microcode assist, ~25x slower than any other value (1248 x
    1536 such values: 157 ms against 7 ms on the 2-core AMD EPYC test machine, 12-02; the Intel Xeon one showed
    the same), and attention probabilities land there often. So where many values do (`_many_float16_subnormals`:
    where few do, their assists cost less than finding them), those values are first rounded to float16's grid in
    float32 - fl(|y| + 1/2) rounds to a multiple of 2^-24 (float32's spacing in [1/2, 1)), to nearest with ties to
    the even multiple, as the cast does, and subtracting 1/2 is exact - and the cast finds nothing there left to
    round. Tests compare the bits with NumPy's cast at every float16 subnormal, halfway point and their float32
    neighbours."""
    if y.dtype == np.float32 and dtype == np.float16 and _many_float16_subnormals(y):
        a = np.abs(y)
        small = np.flatnonzero((a < _F16_TINY) & (a > 0))  # (k,)   0 and NaN need no rounding: left to the cast
        y = np.array(y, order="C")
        flat = y.reshape(-1)
        v = flat[small]  # (k,)
        flat[small] = np.copysign((np.abs(v) + _HALF) - _HALF, v)
    if out is None:
        return y.astype(dtype, copy=False)
    out[...] = y
    return out


def write_back(y: Array, storage: np.dtype, acc: np.dtype, keep_acc: bool) -> Array:
    """A primitive's result as every executor writes it back (docs/numerics.md, "Rounding rule"): rounded to
    `storage` (`to_storage`), or kept in `acc` when the caller marks it `keep_acc`."""
    return y.astype(acc, copy=False) if keep_acc else to_storage(y, storage)


@functools.cache
def float16_values() -> NDArray[np.float32]:
    """The float32 value of each of float16's 65,536 bit patterns, indexed by the pattern (NumPy's cast)."""
    return np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def in_acc(x: Array, acc: np.dtype) -> Array:
    """An executor's operand in its accumulation dtype `acc` (x itself when already so); a boolean mask stays
    boolean: it selects, it is not a value to round.

    float16 -> float32 is looked up in `float16_values` by bit pattern, not cast: the same values, and the cast of
    a subnormal goes through a microcode assist (1248 x 1536 values: 22 ms all subnormal, 12 ms a third, against 2.2
    ms for the lookup, which is also faster than the cast's 4.3 ms with none; 2-core AMD EPYC test machine, 12-02)."""
    if x.dtype == acc or x.dtype == np.bool_:
        return x
    if x.dtype == np.float16 and acc == np.float32:
        return np.take(float16_values(), x.view(np.uint16))
    return x.astype(acc)


def sum_acc(x: Array, axis: int = -1) -> Array:
    """Sum over `axis` (keepdims) accumulated in x's own dtype: `tree_sum` for 16-bit dtypes, numpy otherwise."""
    return tree_sum(x, axis) if x.dtype.itemsize <= 2 else np.sum(x, axis=axis, keepdims=True, dtype=x.dtype)


def mean_acc(x: Array, axis: int = -1) -> Array:
    """Mean over `axis` (keepdims) accumulated in x's own dtype.

    np.mean silently accumulates float16 in float32; a 16-bit accumulator must overflow where float16 would, so
    16-bit dtypes sum through `tree_sum`.
    """
    n = x.shape[axis]
    return (sum_acc(x, axis) / x.dtype.type(n)).astype(x.dtype)


def matmul_acc(x: Array, F: Array, acc: np.dtype, out: Array | None = None) -> Array:
    """x (..., n) @ F (n, m) or (..., n, m), with the products summed in `acc` (written into `out` if given, an
    `acc` array of the result's shape).

    32- and 64-bit accumulators use BLAS; a stack of rows (..., T, n) against one matrix F is one GEMM over all its
    rows (np.matmul would run one small GEMM per leading index, packing F again for each: MiniLM's products over a
    batch of 64 sentences of 24 tokens took 8.3 ms instead of 6.4; a batch of 8 decode steps' rows, (8, 1, n),
    against a block of F's columns, ~8 matrix-vector products instead of one GEMM), written through a copy when
    `out` is a block of columns (not contiguous). numpy's float16 (and ml_dtypes' bfloat16)
    matmul accumulates in float32 internally, so a 16-bit accumulator is emulated: every product is rounded to
    `acc` and the n products are summed by `tree_sum` (an adder tree rounding each partial sum to `acc`). This
    builds a (..., T, n, m) intermediate: meant for the fuzz suite's hazard studies, not for model-sized matmuls.
    """
    xa, Fa = in_acc(x, acc), in_acc(F, acc)
    if acc.itemsize >= 4:
        if Fa.ndim == 2 and xa.ndim > 2 and xa.flags.c_contiguous:
            x2 = xa.reshape(-1, xa.shape[-1])  # (rows, n)
            if out is not None and not out.flags.c_contiguous:  # a block of F's columns: written through a copy
                out[...] = np.matmul(x2, Fa).reshape(out.shape)
                return out
            rows = None if out is None else out.reshape(-1, Fa.shape[-1])  # (rows, m), a view of out
            return np.matmul(x2, Fa, out=rows).reshape(*xa.shape[:-1], Fa.shape[-1])  # (..., T, m)
        return np.matmul(xa, Fa, out=out)
    if out is not None:
        out[...] = matmul_acc(xa, Fa, acc)
        return out
    vec = xa.ndim == 1
    x2 = xa[None] if vec else xa  # (..., T, n)
    products = (x2[..., :, :, None] * Fa[..., None, :, :]).astype(acc)  # (..., T, n, m)
    out = tree_sum(products, axis=-2)[..., 0, :]  # (..., T, m)
    return out[0] if vec else out
