"""The tiled numeric kernels: each primitive computed the way the machine splits it, to compare with NumpyExecutor.

    matmul          K cut into DIMC tiles of `tile_rows` rows; the tiles' partial products summed by a balanced
                    binary tree (a slice's adder tree, then the network's partial-sum tree; both binary, so one
                    tree over the tiles in order)
    reduce          each slice's partial over its chunk of the row, combined by a binary tree (the network's order)
    softmax_tiles   one online-softmax state per slice of the key axis (`fusion.softmax_tile_state`)
    softmax_merge   a binary tree of `fusion.online_softmax_merge` over the slice axis

Only summation orders differ from the plain executor, so results agree to rounding (tests/test_emulator_numeric.py).
Every function works in the arrays' own (accumulation) dtype and never writes to its inputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..fusion import SoftmaxState, merge_states, tile_state
from ..ops import NumpyExecutor
from ..parallel import MATMUL_COLUMNS, MATMUL_MIN_ROWS, column_ranges, matmul_blocks, run_blocks
from ..precision import matmul_acc

__all__ = ["TiledKernels", "tree_reduce"]

Array = NDArray[Any]


def tree_reduce(p: Array, combine: np.ufunc) -> Array:
    """Combine p[0], p[1], ... along axis 0 by a balanced binary tree: pairs, then pairs of pairs; an odd last one
    waits a level. Works in place in p (which the caller owns)."""
    k = p.shape[0]
    while k > 1:
        h = k // 2
        combine(p[0 : 2 * h : 2], p[1 : 2 * h : 2], out=p[:h])  # numpy buffers the overlapping operands
        if k % 2:
            p[h] = p[k - 1]
        k = h + k % 2
    return p[0]


def _pad(a: Array, to: int, value: float, axis: int) -> Array:
    """`a` extended along `axis` to length `to` with `value` (a new array; `a` itself when it has that length).
    Written out rather than np.pad, which costs ~50 us a call in its argument handling (and zeros by np.zeros,
    ~2x faster than np.full)."""
    n = a.shape[axis]
    if n == to:
        return a
    shape = list(a.shape)
    shape[axis] = to
    out = np.zeros(shape, dtype=a.dtype) if value == 0 else np.full(shape, value, dtype=a.dtype)
    out[(slice(None),) * (axis % a.ndim) + (slice(0, n),)] = a
    return out


def _last_first(a: Array) -> Array:
    """Move the last axis to the front (a view)."""
    return a.transpose((a.ndim - 1, *range(a.ndim - 1)))


class TiledKernels:
    """The kernels for one accumulation dtype and one DIMC tile height."""

    def __init__(self, acc: np.dtype, tile_rows: int) -> None:
        self.acc = acc
        self.tile_rows = tile_rows
        # one tile's product, summed in `acc` and kept in `acc` (NumpyExecutor's matmul)
        self._tile = NumpyExecutor(storage=acc, acc=acc)

    def matmul(self, xa: Array, Fa: Array) -> Array:
        """x @ F with K cut into tiles, their partial products summed by a binary adder tree."""
        tk = self.tile_rows
        n = Fa.shape[-2]
        if n <= tk:  # one tile: the plain product
            return self._tile.matmul(xa, Fa, op="tile")
        k = -(-n // tk)  # tiles along K; the last one's unused rows hold zeros, as a DIMC tile's would
        xr = _pad(xa, k * tk, 0.0, -1).reshape(*xa.shape[:-1], k, tk)  # (..., k, tk)
        xt = xr.transpose(xr.ndim - 2, *range(xr.ndim - 2), xr.ndim - 1)  # (k, ..., tk)   (np.moveaxis: ~10 us)
        Fr = _pad(Fa, k * tk, 0.0, -2).reshape(*Fa.shape[:-2], k, tk, Fa.shape[-1])  # (.., k, tk, m)
        Ft = Fr.transpose(Fr.ndim - 3, *range(Fr.ndim - 3), Fr.ndim - 2, Fr.ndim - 1)  # (k, .., tk, m)
        Ft = Ft.reshape(k, *(1,) * (xt.ndim - Ft.ndim), *Ft.shape[1:])  # a matrix F broadcasts over x's rows
        columns = self._columns(xa.shape, Fa.shape)
        if columns is None:
            parts = self._tile.matmul(xt, Ft, op="tile")  # (k, ..., m)   every tile's partial product, one call
            return tree_reduce(parts, np.add)  # (..., m)
        out = np.empty((*xa.shape[:-1], Fa.shape[-1]), self.acc)  # (..., m)

        def work(c: slice) -> None:
            out[..., c] = tree_reduce(matmul_acc(xt, Ft[..., c], self.acc), np.add)  # (k, ..., w) -> (..., w)

        run_blocks(work, columns, self._tile.thread_count)
        return out

    @staticmethod
    def _columns(x_shape: tuple[int, ...], F_shape: tuple[int, ...]) -> list[slice] | None:
        """The blocks of F's columns a product's partials and their tree are computed in, one at a time on the
        executor's workers, or None for one call. A weight matrix and many rows: blocks of MATMUL_COLUMNS, so that
        a block's k partials stay in cache (the logits' are 9 x 6 MB for 32 rows). A decode step: the plain
        executor's cut (`matmul_blocks`: only the head's F is large enough to cut), so that both cores stream it."""
        if len(F_shape) > 2:
            return None
        if math.prod(x_shape[:-1]) < MATMUL_MIN_ROWS:
            blocks = matmul_blocks(x_shape, F_shape)
            return None if blocks is None else [F_block[-1] for _, F_block, _ in blocks]
        return column_ranges(F_shape[-1]) if F_shape[-1] >= 2 * MATMUL_COLUMNS else None

    def reduce(self, xa: Array, kind: str, eps: float, chunk: int) -> Array:
        """Per-slice partials over chunks of `chunk` elements, combined by a binary tree; then the kind's finish.
        (np.add.reduce and np.maximum.reduce are what np.sum and np.max call for an ndarray, without their ~4 us of
        argument handling.)"""
        n = xa.shape[-1]
        P = -(-n // chunk)
        if P <= 1:
            if kind == "max":
                return np.maximum.reduce(xa, axis=-1, keepdims=True)
            tot = np.add.reduce(xa * xa if kind == "rms_scale" else xa, axis=-1, keepdims=True)  # (..., 1)
        else:
            ident = -np.inf if kind == "max" else 0.0
            xr = _pad(xa, P * chunk, ident, -1).reshape(*xa.shape[:-1], P, chunk)  # (..., P, chunk) one per slice
            if kind == "max":
                return tree_reduce(_last_first(np.maximum.reduce(xr, axis=-1)), np.maximum)[..., None]  # (..., 1)
            part = np.add.reduce(xr * xr if kind == "rms_scale" else xr, axis=-1)  # (..., P)  each slice's partial
            tot = tree_reduce(_last_first(part), np.add)[..., None]  # (..., 1)
        if kind == "sum":
            return tot
        if kind == "mean":
            return (tot / self.acc.type(n)).astype(self.acc)  # (..., 1)
        return (1 / np.sqrt(tot / self.acc.type(n) + self.acc.type(eps))).astype(self.acc)  # (..., 1)

    def softmax_tiles(self, za: Array, Va: Array, keys: int) -> tuple[Array, Array, Array]:
        """One online-softmax state per slice of `keys` keys: z (..., GT, S), V (..., S, hd) ->
        m, l (..., GT, k, 1) and o (..., GT, k, hd), k = ceil(S / keys)."""
        S, hd = za.shape[-1], Va.shape[-1]
        k = -(-S // keys)
        lead = za.shape[:-1]  # (..., GT)
        zk = np.swapaxes(_pad(za, k * keys, -np.inf, -1).reshape(*lead, k, keys), -2, -3)  # (..., k, GT, keys)
        Vr = _pad(Va, k * keys, 0.0, -2).reshape(*Va.shape[:-2], k, keys, hd)  # (..., k, keys, hd)
        gap = zk.ndim - Vr.ndim
        if gap > 0:
            Vr = Vr.reshape(*(1,) * gap, *Vr.shape)
        st = tile_state(zk, Vr)  # m, l (..., k, GT, 1), o (..., k, GT, hd): each slice on its own keys
        return tuple(np.swapaxes(a, -2, -3) for a in st)  # type: ignore[return-value]

    @staticmethod
    def softmax_merge(m: Array, l: Array, o: Array) -> tuple[Array, Array, Array]:
        """A binary tree of online-softmax merges over the slice axis (-2): pairs, then pairs of pairs."""
        while m.shape[-2] > 1:
            kk = m.shape[-2]
            a, b = slice(0, kk - 1, 2), slice(1, kk, 2)
            s = merge_states(
                SoftmaxState(m[..., a, :], l[..., a, :], o[..., a, :]),
                SoftmaxState(m[..., b, :], l[..., b, :], o[..., b, :]),
            )
            if kk % 2:
                m = np.concatenate((s.m, m[..., kk - 1 :, :]), axis=-2)
                l = np.concatenate((s.l, l[..., kk - 1 :, :]), axis=-2)
                o = np.concatenate((s.o, o[..., kk - 1 :, :]), axis=-2)
            else:
                m, l, o = s.m, s.l, s.o
        return m, l, o
