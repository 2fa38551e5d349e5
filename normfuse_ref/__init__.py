"""normfuse: executable, checked specifications of deferred-normalisation fusion (arXiv 2502.17728).

The reference layers live in `normfuse_ref.layers`, the fused rules in `normfuse_ref.fusion`, dtypes and the
accumulation policy in `normfuse_ref.precision`. `load_model` loads a real model of either family (Llama:
"smollm2-135m"; BERT: "all-minilm-l6-v2"), by name or path (`normfuse_ref.models`).
"""

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
