"""A BERT-family encoder in NumPy: config, weights, the safetensors/config.json loader, the WordPiece tokenizer, one
forward pass in textbook or fused order (post-LayerNorm sites folded), and sentence embeddings (`load_model`,
`BertModel.embed`)."""

from .config import PRESETS, BertConfig, UnsupportedArchitecture, config_from_hf, get_preset
from .forward import forward
from .model import BertModel, ModeComparison, compare_modes, embedding_bound, hidden_bound, load_model, mean_pool
from .tokenizer import Batch, TextTooLong, WordPieceTokenizer
from .weights import param_shapes, prepare, prepared_shapes, random_params

__all__ = [
    "PRESETS",
    "Batch",
    "BertConfig",
    "BertModel",
    "ModeComparison",
    "TextTooLong",
    "UnsupportedArchitecture",
    "WordPieceTokenizer",
    "compare_modes",
    "config_from_hf",
    "embedding_bound",
    "forward",
    "get_preset",
    "hidden_bound",
    "load_model",
    "mean_pool",
    "param_shapes",
    "prepare",
    "prepared_shapes",
    "random_params",
]
