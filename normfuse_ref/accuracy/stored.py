"""A model's weights as the study's runs start from them: per summation order, stored in each storage dtype."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from numpy.typing import NDArray

__all__ = ["StoredWeights"]

Array = NDArray[Any]


class StoredWeights:
    """A model's weights per summation order (`params`: the file's, or `permute` of them) and stored in each
    storage dtype (`stored`: `store(params, dtype)`), each made once. Every order, mitigation and ablation arm of a
    dtype starts from the same stored weights, so they are kept for the dtype at hand (each stage of `run_plan` runs
    a dtype's runs one after another, in a process or a worker) and dropped when another dtype is asked for.
    Read-only."""

    def __init__(
        self,
        params: Mapping[str, Array],
        permute: Callable[[Mapping[str, Array]], Mapping[str, Array]],
        store: Callable[[Mapping[str, Array], str], dict[str, Array]],
    ) -> None:
        self._params: dict[str, Mapping[str, Array]] = {"plain": params}
        self._permute, self._store = permute, store
        self._stored: dict[tuple[str, str], dict[str, Array]] = {}

    def params(self, summation: str) -> Mapping[str, Array]:
        if summation not in self._params:
            self._params[summation] = self._permute(self._params["plain"])
        return self._params[summation]

    def stored(self, dtype: str, summation: str) -> dict[str, Array]:
        key = (dtype, summation)
        if key not in self._stored:
            self._stored = {k: v for k, v in self._stored.items() if k[0] == dtype}
            self._stored[key] = self._store(self.params(summation), dtype)
        return self._stored[key]
