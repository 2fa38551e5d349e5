"""What a loaded model of every family is: a frozen record of its config, weights, tokenizer and storage dtype, whose
per-order prepared weights are computed on first use and kept (a model that only ever runs fused never pays for
baseline weights)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from ..ops import NumpyExecutor

if TYPE_CHECKING:
    from .llama.weights import Mode  # annotations only: llama.model imports this module

__all__ = ["LoadedModel"]

Array = NDArray[Any]
ConfigT = TypeVar("ConfigT")
TokenizerT = TypeVar("TokenizerT")


@dataclass(frozen=True)
class LoadedModel(Generic[ConfigT, TokenizerT]):
    """A model ready to run: config, weights (the source file's names, row-vector orientation), tokenizer (None:
    the model runs on token ids), storage dtype. A family subclasses it and says how it prepares its weights."""

    cfg: ConfigT
    params: Mapping[str, Array]
    tokenizer: TokenizerT | None
    dtype: np.dtype
    source: str  # where the weights came from, for display
    _prepared: dict[str, Mapping[str, Array]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def prepare_weights(self, mode: Mode) -> Mapping[str, Array]:
        """The weights the family's forward reads in `mode` (its `weights.prepare`)."""
        raise NotImplementedError

    def weights(self, mode: Mode) -> Mapping[str, Array]:
        """`prepare_weights(mode)`, computed on first use and kept."""
        if mode not in self._prepared:
            self._prepared[mode] = self.prepare_weights(mode)
        return self._prepared[mode]

    def executor(self) -> NumpyExecutor:
        return NumpyExecutor(storage=self.dtype)
