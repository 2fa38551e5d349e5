"""What the mitigations of the fused rules cost on the emulated machine (normfuse_ref.hw), and in weight memory.

Each mitigation is an option of the rule (`normfuse_ref.fusion`, "Mitigations"), so its cost comes out of the same
forward pass the emulator times, cost-only, in the order it issues:

- `centring="compensate"`: one more multiply-add per output element inside the scale-and-shift the fused order
  does anyway (`{op}.compensate_scale_shift`: (y - mu r) s + b), on the SIMD units, after the matmul; mu comes from
  the collective the variance needs anyway. No collective on the matmul's path.
- `centring="subtract"`: the mean collective and a subtraction (`{op}.subtract_mean`) *before* the matmul: the
  matmul waits for one collective again (the variance stays beside it).
- the wide fold (`fold_dtype=`): the same operations; the folded matrices are stored in a wider format. The
  emulator prices a DIMC product by its multiply-accumulates and does not model the weight format, so this cost is
  given as the extra weight memory (what a tile holds), not as latency; modelling it needs a per-format MAC rate
  and tile capacity in `hw.config` (a DIMC that multiplies wider weights more slowly, or holds fewer of them).

`bert_latencies` times all-MiniLM-L6-v2's forward pass (one sequence of `tokens` tokens) per variant on a preset
machine; `wide_fold_bytes` counts the folded matrices of a model and what a wider format adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..fusion import Centring
from ..hw import EmulatingExecutor, dummy, get_hardware
from ..models.bert.config import BertConfig
from ..models.bert.forward import forward as bert_forward
from ..models.bert.weights import prepared_shapes as bert_shapes
from ..precision import resolve_dtype

__all__ = ["HARDWARE", "Latency", "bert_latencies", "wide_fold_bytes"]

#: The machine the costs are given on (docs/hardware.md): the Corsair-like preset, nothing fitted.
HARDWARE = "corsair-like"

#: (order, centring) of each timed variant, by the study's name.
VARIANTS: dict[str, tuple[str, Centring]] = {
    "baseline": ("baseline", "fold"),
    "fused": ("fused", "fold"),
    "compensate": ("fused", "compensate"),
    "subtract": ("fused", "subtract"),
}


@dataclass(frozen=True)
class Latency:
    """One variant's emulated forward pass."""

    variant: str
    tokens: int
    latency_us: float
    collective_exposed_us: float  # collective time on the critical path


def bert_latencies(cfg: BertConfig, tokens: int, hardware: str = HARDWARE) -> list[Latency]:
    """Each variant of VARIANTS timed cost-only: one sequence of `tokens` tokens through the whole encoder."""
    hw = get_hardware(hardware)
    out = []
    for name, (mode, centring) in VARIANTS.items():
        w: dict[str, Any] = {k: dummy(s) for k, s in bert_shapes(cfg).items()}
        if centring == "compensate":  # the stored column sums, as prepare(..., centring="compensate") adds them
            for i in range(cfg.n_layers):
                w[f"layer.{i}.qkv_colsum"] = dummy((3 * cfg.dim,))
                w[f"layer.{i}.ffn_up_colsum"] = dummy((cfg.ffn_dim,))
        ex = EmulatingExecutor(hw, numeric=False)
        ids = np.zeros((1, tokens), dtype=np.int64)  # (1, T)
        bert_forward(w, cfg, ids, np.ones_like(ids), mode=mode, ex=ex, centring=centring)  # type: ignore[arg-type]
        tl = ex.timeline(mode)
        out.append(Latency(name, tokens, tl.us(tl.makespan), tl.us(tl.collective_exposed)))
    return out


def wide_fold_bytes(folded_shapes: Mapping[str, tuple[int, ...]], weights: str, wide: str) -> tuple[int, int]:
    """(bytes of the folded matrices in the weights' format, extra bytes when they are stored in `wide`)."""
    n = sum(int(np.prod(s)) for s in folded_shapes.values())
    narrow, wider = resolve_dtype(weights).itemsize, resolve_dtype(wide).itemsize
    return n * narrow, n * (wider - narrow)


#: Tokens of the timed BERT passes: one (a decode-sized step) and 128 (a typical sentence batch row).
TIMED_TOKENS = (1, 128)


def study_costs(
    folded_shapes: Mapping[str, tuple[int, ...]], wide: Mapping[str, str], bert: BertConfig | None
) -> dict[str, Any]:
    """The costs a study reports (plain data, for its JSON): the wide fold's extra weight bytes per storage dtype
    (`wide`: dtype -> the fold's wider format) and, for a BERT model, the emulated latency of each variant."""
    out: dict[str, Any] = {
        "hardware": HARDWARE,
        "wide_fold": {
            d: dict(zip(("weights_bytes", "extra_bytes"), wide_fold_bytes(folded_shapes, d, w), strict=True), format=w)
            for d, w in wide.items()
        },
    }
    if bert is not None:
        tokens = dict.fromkeys(min(t, bert.max_positions) for t in TIMED_TOKENS)  # a small model takes fewer
        out["latency"] = [vars(lat) for t in tokens for lat in bert_latencies(bert, t)]
    return out
