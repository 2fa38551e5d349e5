"""A pre-LayerNorm decoder family in NumPy (GPT-2, OPT): config presets (shape-only gpt2-xl and opt-66b, random
tiny-gpt and tiny-opt), weights, and one forward pass with a KV cache in textbook or fused order."""

from .config import PRESETS, GptConfig, config_from_hf, get_preset
from .forward import decoder_block, forward
from .weights import param_shapes, prepare, prepared_shapes, random_params

__all__ = [
    "PRESETS",
    "GptConfig",
    "config_from_hf",
    "decoder_block",
    "forward",
    "get_preset",
    "param_shapes",
    "prepare",
    "prepared_shapes",
    "random_params",
]
