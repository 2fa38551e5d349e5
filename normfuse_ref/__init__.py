"""normfuse: executable, checked specifications of deferred-normalisation fusion (arXiv 2502.17728).

The reference layers live in `normfuse_ref.layers`, the fused rules in `normfuse_ref.fusion`, dtypes and the
accumulation policy in `normfuse_ref.precision`. `load_model` loads a real model of either family (Llama:
"smollm2-135m"; BERT: "all-minilm-l6-v2"), by name or path (`normfuse_ref.models`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and readers; at run time `__getattr__` imports each name when first used
    from .fusion import (
        SoftmaxState,
        fold_layer_norm,
        fold_rms_norm,
        layer_norm_linear,
        layer_norm_linear_folded,
        online_softmax_merge,
        rms_norm_linear,
        rms_norm_linear_folded,
        softmax_finalize,
        softmax_linear,
        softmax_tile_state,
    )
    from .layers import attention, layer_norm, linear, rms_norm, rope, silu, softmax, swiglu
    from .models import load_model
    from .precision import DTYPES, accumulation_dtype, dtype_info

__version__ = "0.1.0"

#: The modules that hold the public names. Importing the package imports none of them (nor NumPy): the `normfuse`
#: command starts in its own small modules, so that it handles Ctrl-C from its first tenth of a second.
_HOMES = ("fusion", "layers", "models", "precision")


def __getattr__(name: str) -> Any:
    """`normfuse_ref.<name>` for a public name: taken from the module that defines it on first use, then kept."""
    if name in __all__:
        for home in _HOMES:
            module = importlib.import_module(f".{home}", __name__)
            if hasattr(module, name):
                value = getattr(module, name)
                globals()[name] = value
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DTYPES",
    "SoftmaxState",
    "__version__",
    "accumulation_dtype",
    "attention",
    "dtype_info",
    "fold_layer_norm",
    "fold_rms_norm",
    "layer_norm",
    "layer_norm_linear",
    "layer_norm_linear_folded",
    "linear",
    "load_model",
    "online_softmax_merge",
    "rms_norm",
    "rms_norm_linear",
    "rms_norm_linear_folded",
    "rope",
    "silu",
    "softmax",
    "softmax_finalize",
    "softmax_linear",
    "softmax_tile_state",
    "swiglu",
]
