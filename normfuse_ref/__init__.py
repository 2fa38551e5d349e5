"""normfuse: executable, checked specifications of deferred-normalisation fusion (arXiv 2502.17728).

The reference layers live in `normfuse_ref.layers`, the fused rules in `normfuse_ref.fusion`, dtypes and the
accumulation policy in `normfuse_ref.precision`.
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
