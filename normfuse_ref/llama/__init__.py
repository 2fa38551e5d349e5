"""A Llama-architecture model in NumPy: config presets, weights, and one forward pass in textbook or fused order."""

from .config import PRESETS, LlamaConfig, get_preset
from .forward import KVCache, empty_cache, forward
from .weights import Mode, param_shapes, prepare, prepared_shapes, random_params

__all__ = [
    "PRESETS",
    "KVCache",
    "LlamaConfig",
    "Mode",
    "empty_cache",
    "forward",
    "get_preset",
    "param_shapes",
    "prepare",
    "prepared_shapes",
    "random_params",
]
