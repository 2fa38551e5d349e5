"""A Llama-architecture model in NumPy: config presets, weights, loaders (GGUF, HF safetensors), tokenizer, one
forward pass in textbook or fused order, and text generation (`load_model`, `generate`)."""

from .config import PRESETS, LlamaConfig, get_preset
from .forward import KVCache, empty_cache, forward
from .model import Generation, ModeComparison, Model, compare_modes, generate, load_model
from .weights import Mode, param_shapes, prepare, prepared_shapes, random_params

__all__ = [
    "PRESETS",
    "Generation",
    "KVCache",
    "LlamaConfig",
    "Mode",
    "ModeComparison",
    "Model",
    "compare_modes",
    "empty_cache",
    "forward",
    "generate",
    "get_preset",
    "load_model",
    "param_shapes",
    "prepare",
    "prepared_shapes",
    "random_params",
]
