"""Read a Llama-architecture GGUF file: hyper-parameters, dequantised weights, and the tokenizer metadata.

Reading: `read_gguf_file` parses the GGUF container (v2/v3: header, key-value metadata, tensor directory) with
`struct` over a memory map, and `gguf.quants.dequantize` (the `gguf` package, llama.cpp's own Python reader)
turns Q4_1, Q8_0, F16, ... blocks into float32. The container is parsed here rather than with `gguf.GGUFReader`
because the reader builds a numpy view per array element and takes 3-6 s on SmolLM2's 98k tokenizer strings;
this parser takes ~0.1 s, and tests/test_model_smollm2.py checks that both read the same metadata and tensors.

What comes out:
- a `LlamaConfig` from the `llama.*` metadata, with `rope_layout="interleaved"`: llama.cpp's converter permutes the
  rows of Q and K so that RoPE pairs are adjacent (x[2i], x[2i+1]); the weights are used as stored.
- the parameters under their GGUF names in normfuse's row-vector orientation (n_in, n_out), the transpose of the
  file's (out, in) rows. The Q|K|V and gate|up weights of a block are column views of one contiguous buffer, so
  `weights.prepare` can hand them to the baseline forward pass without another copy.
- the metadata (`tokenizer.*` feeds `normfuse_ref.models.llama.tokenizer`).

A missing file, a file that is not GGUF or is cut short, and a GGUF of another architecture each raise one
error with a message a user can act on (FileNotFoundError or ValueError).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ... import fields
from ...precision import resolve_dtype
from .config import LlamaConfig
from .weights import pack_blocks_inplace, param_shapes

__all__ = ["GGUFFile", "GGUFModel", "GGUFTensor", "check_gguf_magic", "read_gguf", "read_gguf_file"]

Array = NDArray[Any]

GGUF_MAGIC = b"GGUF"

#: Dequantise big tensors this many rows at a time, so the float temporaries of `gguf.quants` stay small.
_ROW_CHUNK = 4096


class DamagedFile(ValueError):
    """The bytes do not form a complete GGUF file."""


# ---------------------------------------------------------------------------------------------------------------
# The GGUF container
# ---------------------------------------------------------------------------------------------------------------

#: GGUF metadata value types (gguf.GGUFValueType): struct format of the scalar ones, numpy dtype for arrays.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Reads little-endian GGUF values from a buffer, checking every length against what is left."""

    def __init__(self, buf: Any) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise DamagedFile(f"the file ends inside its header (at byte {self.pos})")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise DamagedFile(f"the file ends inside a string (at byte {self.pos})")
        s = str(self.buf[self.pos : self.pos + n], "utf-8")
        self.pos += n
        return s

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.take("<I"), self.take("<Q")
            if etype in (_STRING, _ARRAY):
                return [self.value(etype) for _ in range(n)]
            if etype not in _SCALAR:
                raise DamagedFile(f"unknown GGUF array element type {etype}")
            dt = np.dtype(_SCALAR[etype])
            if self.pos + n * dt.itemsize > len(self.buf):
                raise DamagedFile(f"the file ends inside an array (at byte {self.pos})")
            a = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos)
            self.pos += n * dt.itemsize
            return a.tolist()
        if vtype not in _SCALAR:
            raise DamagedFile(f"unknown GGUF value type {vtype}")
        return self.take(_SCALAR[vtype])


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the directory: ggml dims (fastest first), ggml type, and its raw bytes (a memory-map view)."""

    name: str
    dims: tuple[int, ...]
    qtype: int
    raw: NDArray[np.uint8]  # (rows, bytes per row), rows = prod(dims[1:])

    def dequantize(self) -> NDArray[np.float32]:
        """float32 in numpy order (dims reversed: (out, in) for a matrix), dequantised in row chunks."""
        from gguf import GGMLQuantizationType, quants

        qt = GGMLQuantizationType(self.qtype)
        parts = [quants.dequantize(self.raw[i : i + _ROW_CHUNK], qt) for i in range(0, self.raw.shape[0], _ROW_CHUNK)]
        out = np.concatenate(parts, axis=0) if len(parts) > 1 else np.array(parts[0], dtype=np.float32)
        return out.astype(np.float32, copy=False).reshape(tuple(reversed(self.dims)))


@dataclass(frozen=True)
class GGUFFile:
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]


def check_gguf_magic(path: Path) -> None:
    """ValueError unless the file at `path` starts as a GGUF file does (OSError if it cannot be read)."""
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")


def read_gguf_file(path: Path) -> GGUFFile:
    """Parse a GGUF file (memory-mapped; tensor bytes are not read until dequantised). FileNotFoundError for a
    missing file, ValueError for anything that is not a complete GGUF v2/v3 file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    check_gguf_magic(path)
    if path.stat().st_size < 24:
        raise ValueError(f"{path} is a damaged or truncated GGUF file (only {path.stat().st_size} bytes)")
    mm = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)  # a plain view: memmap slicing is slow
    try:
        cur = _Cursor(mm)
        cur.take("<I")  # magic
        version = cur.take("<I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            meta[key] = cur.value(cur.take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = tuple(cur.take("<Q") for _ in range(cur.take("<I")))
            infos.append((name, dims, cur.take("<I"), cur.take("<Q")))
        align = fields.integer(meta, "general.alignment", str(path), minimum=1, default=32)
        start = -(-cur.pos // align) * align  # tensor data begins at the next multiple of the alignment
        tensors: dict[str, GGUFTensor] = {}
        for name, dims, qtype, offset in infos:
            try:
                block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            except (ValueError, KeyError):
                raise ValueError(f"{path}: tensor {name!r} has unknown ggml type {qtype}") from None
            if not dims or dims[0] % block:
                raise DamagedFile(f"tensor {name!r} has dims {dims}, not whole blocks of {block}")
            row_bytes, rows = dims[0] // block * size, int(np.prod(dims[1:], dtype=np.int64))
            begin = start + offset
            if begin + rows * row_bytes > mm.size:
                raise DamagedFile(f"the file ends inside tensor {name!r}")
            tensors[name] = GGUFTensor(name, dims, qtype, mm[begin : begin + rows * row_bytes].reshape(rows, row_bytes))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is a damaged or truncated GGUF file (bad text: {exc})") from None
    except DamagedFile as exc:
        raise ValueError(f"{path} is a damaged or truncated GGUF file ({exc})") from None
    return GGUFFile(version=version, metadata=meta, tensors=tensors)


# ---------------------------------------------------------------------------------------------------------------
# A Llama model from the file
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFModel:
    """What one GGUF file holds, in normfuse's terms."""

    cfg: LlamaConfig
    params: dict[str, Array]  # GGUF names, row-vector orientation (n_in, n_out)
    metadata: dict[str, Any]  # every key-value field of the file
    path: Path


def _config(meta: dict[str, Any], path: Path, tensor_names: set[str], name: str | None) -> LlamaConfig:
    """The LlamaConfig from the `llama.*` metadata; one FieldError (naming the file and the key) for a bad value."""
    src = str(path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(
            f"{path}: the GGUF architecture is {arch!r}, but normfuse runs Llama-architecture models only ('llama')"
        )
    if fields.integer(meta, "llama.expert_count", src, minimum=0, default=0):
        raise ValueError(f"{path}: mixture-of-experts Llama models are not supported")
    scaling = fields.string(meta, "llama.rope.scaling.type", src, default="none")
    if scaling not in ("none", ""):
        raise ValueError(f"{path}: RoPE scaling {scaling!r} is not supported")
    dim = fields.integer(meta, "llama.embedding_length", src, minimum=1)
    n_heads = fields.integer(meta, "llama.attention.head_count", src, minimum=1)
    rot = fields.integer(meta, "llama.rope.dimension_count", src, minimum=1, default=None)
    if rot is not None and rot != dim // n_heads:
        raise ValueError(f"{path}: partial RoPE ({rot} of {dim // n_heads} head dims) is not supported")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = fields.integer(
        meta, "llama.vocab_size", src, minimum=1, default=len(tokens) if isinstance(tokens, list) else None
    )
    if vocab is None:
        raise ValueError(f"{path}: the GGUF metadata gives no vocabulary size")
    return fields.construct(
        LlamaConfig,
        src,
        name=name or path.stem,
        dim=dim,
        n_layers=fields.integer(meta, "llama.block_count", src, minimum=1),
        n_heads=n_heads,
        n_kv_heads=fields.integer(meta, "llama.attention.head_count_kv", src, minimum=1, default=n_heads),
        ffn_dim=fields.integer(meta, "llama.feed_forward_length", src, minimum=1),
        vocab_size=vocab,
        context_length=fields.integer(meta, "llama.context_length", src, minimum=1),
        rope_base=fields.number(meta, "llama.rope.freq_base", src, positive=True, default=10000.0),
        norm_eps=fields.number(meta, "llama.attention.layer_norm_rms_epsilon", src, positive=True),
        tied_embeddings="output.weight" not in tensor_names,
        rope_layout="interleaved",
        source=f"GGUF metadata of {path.name}",
    )


def read_gguf(
    path: str | Path,
    *,
    dtype: DTypeLike = np.float32,
    name: str | None = None,
    on_tensor: Callable[[int, int], None] | None = None,
) -> GGUFModel:
    """Config, weights (in `dtype`) and metadata of a Llama GGUF file; one clear error for a bad file.
    `on_tensor(done, total)` is called after each tensor is dequantised (for a progress display)."""
    path = Path(path).expanduser()
    dt = resolve_dtype(dtype)
    f = read_gguf_file(path)
    cfg = _config(f.metadata, path, set(f.tensors), name)
    shapes = param_shapes(cfg)
    missing = [k for k in shapes if k not in f.tensors]
    if missing:
        raise ValueError(f"{path}: the GGUF file has no tensor {missing[0]!r} ({len(missing)} missing)")

    def load(key: str) -> Array:
        a = f.tensors[key].dequantize()  # (out, in), or (V, d) for the embedding, or (d,) for a gain
        if key != "token_embd.weight" and a.ndim == 2:
            a = a.T  # (in, out): row-vector orientation
        if a.shape != shapes[key]:
            raise ValueError(f"{path}: tensor {key!r} has shape {a.shape}, expected {shapes[key]} for this config")
        return np.asarray(a, dtype=dt)

    tick = on_tensor or (lambda _done, _total: None)
    loaded: dict[str, Array] = {}
    for key in shapes:
        loaded[key] = load(key)
        tick(len(loaded), len(shapes))
    params = pack_blocks_inplace(loaded, cfg)
    return GGUFModel(cfg=cfg, params=params, metadata=f.metadata, path=path)
