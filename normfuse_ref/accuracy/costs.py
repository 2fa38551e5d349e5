"""What the mitigations of the fused rules cost on the emulated machine (normfuse_ref.hw), and in weight memory.

Each mitigation is an option of the rule (`normfuse_ref.fusion`, "Mitigations"), so it is priced where it acts:
one LayerNorm -> linear site (`models.sites.layer_norm_linear`, the site BERT's forward calls, with LN(x) for the
residual branch as a post-LN block needs it) run cost-only through `hw.EmulatingExecutor` in both orders, with and
without each mitigation, at a small model's shapes (all-minilm-l6-v2) and a large one's (OPT-66B):

- `centring="compensate"`: one more multiply-add per output element inside the scale-and-shift the fused order
  does anyway (`{op}.compensate_scale_shift`: (y - mu r) s + b, hw/costs.py), on the SIMD units after the matmul;
  mu comes from the collective the variance needs anyway, so no collective enters the matmul's path. Memory: r,
  one float32 per output column (`memory.word_bytes`).
- `centring="subtract"`: a subtraction (`{op}.subtract_mean`) that waits for the mean collective *before* the
  matmul: the matmul waits for one collective again (the variance stays beside it). Memory: none.
- the wide fold (`fold_dtype=`, "wide-fold"): the same operations on a folded matrix stored twice as wide. The
  machine streams weights at `memory.sram_bytes_per_cycle` per slice and sizes its tiles by `memory.weight_bits`,
  so the site runs on the same machine with `weight_bits` doubled (8 -> 16: fp8 weights folded in bfloat16; 16 ->
  32: bfloat16 weights folded in float32). Memory: the folded matrix again at the extra width.

`site_costs` gives every (site, tokens, weight format, variant); `wide_fold_bytes` counts what a wider format adds
to all the folded matrices of a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..fusion import Centring
from ..hw import EmulatingExecutor, HardwareConfig, dummy, get_hardware, with_overrides
from ..models import sites
from ..models.bert.config import BertConfig
from ..models.llama.weights import Mode
from ..precision import resolve_dtype

__all__ = [
    "HARDWARE",
    "LARGE_SITES",
    "TIMED_TOKENS",
    "VARIANTS",
    "WEIGHT_BITS",
    "SiteCost",
    "SiteShape",
    "bert_sites",
    "site_cost",
    "site_costs",
    "study_costs",
    "wide_fold_bytes",
]

#: The machine the costs are given on (docs/hardware.md): the Corsair-like preset, nothing fitted.
HARDWARE = "corsair-like"

#: Rows through the site: 1 (one token: a decode step, where streaming the weights dominates) and 128 (a
#: sentence or a prefill chunk, where the multiply-accumulates dominate).
TIMED_TOKENS = (1, 128)

#: Weight formats priced, in bits: 8 (the machine's own MXINT8, and the study's fp8 rows) and 16 (bfloat16 or
#: float16 weights).
WEIGHT_BITS = (8, 16)


@dataclass(frozen=True)
class SiteShape:
    """One LayerNorm -> linear site: x (tokens, n) @ F (n, m)."""

    model: str  # whose shapes these are
    op: str  # the linear layer after the LayerNorm: attn_qkv (Q|K|V together) or ffn_up
    n: int  # input width d, elements
    m: int  # output width, elements
    source: str  # where the shapes come from


def bert_sites(cfg: BertConfig) -> tuple[SiteShape, ...]:
    """A BERT model's two LayerNorm -> linear sites per block."""
    return (
        SiteShape(cfg.name, "attn_qkv", cfg.dim, 3 * cfg.dim, "its config: hidden_size, 3 hidden_size"),
        SiteShape(cfg.name, "ffn_up", cfg.dim, cfg.ffn_dim, "its config: hidden_size, intermediate_size"),
    )


#: A large LayerNorm model: OPT-66B (pre-LN decoder; Zhang et al. 2022, "OPT", Table 1: d_model 9216, and
#: d_ff = 4 d_model). Chosen as the largest LayerNorm model whose widest site still fits one card of the
#: corsair-like preset with its fold in float32 (GPT-3 175B's 12288 x 49152 does not: the site would need a mapping
#: over cards, which a single-site costing leaves out).
LARGE_SITES = (
    SiteShape("opt-66b", "attn_qkv", 9216, 3 * 9216, "OPT paper, Table 1 (d_model 9216)"),
    SiteShape("opt-66b", "ffn_up", 9216, 4 * 9216, "OPT paper, Table 1 (d_model 9216, d_ff = 4 d_model)"),
)

#: Each priced variant: (order, centring, factor on the weights' width).
VARIANTS: dict[str, tuple[Mode, Centring, int]] = {
    "baseline": ("baseline", "fold", 1),
    "fused": ("fused", "fold", 1),
    "compensate": ("fused", "compensate", 1),
    "subtract": ("fused", "subtract", 1),
    "wide-fold": ("fused", "fold", 2),
}


@dataclass(frozen=True)
class SiteCost:
    """One variant of one site on the emulated machine."""

    model: str
    op: str
    n: int  # elements
    m: int  # elements
    tokens: int  # rows through the site
    weight_bits: int  # bits per weight of the (unfolded) weights; the wide fold stores twice as many
    variant: str  # a key of VARIANTS
    latency_us: float  # us, the site's makespan
    collective_exposed_us: float  # us of collective time on the critical path
    extra_weight_bytes: int  # bytes stored beyond the fused order's F' (r for compensate, the wider F' for wide-fold)


def site_cost(site: SiteShape, variant: str, tokens: int, weight_bits: int, hw: HardwareConfig) -> SiteCost:
    """Run one site cost-only on `hw` (weights of `weight_bits` bits) in `variant`."""
    mode, centring, widen = VARIANTS[variant]
    bits = weight_bits * widen
    ex = EmulatingExecutor(with_overrides(hw, {"memory": {"weight_bits": bits}}), numeric=False)
    n, m = site.n, site.m
    r = dummy((m,)) if centring == "compensate" else None  # (m,)   stored offline beside the bias
    sites.layer_norm_linear(
        ex, dummy((tokens, n)), dummy((n,)), dummy((n,)), dummy((n, m)), dummy((m,)), 1e-12, mode, site.op,
        norm=True, centring=centring, r=r,
    )  # fmt: skip
    tl = ex.timeline(mode)
    extra = m * hw.memory.word_bytes if centring == "compensate" else n * m * (bits - weight_bits) // 8
    return SiteCost(
        site.model, site.op, n, m, tokens, weight_bits, variant, tl.us(tl.makespan), tl.us(tl.collective_exposed), extra
    )


def site_costs(
    shapes: Sequence[SiteShape],
    hardware: str = HARDWARE,
    tokens: Sequence[int] = TIMED_TOKENS,
    weight_bits: Sequence[int] = WEIGHT_BITS,
) -> list[SiteCost]:
    """Every variant of every site, for each row count and weight format."""
    hw = get_hardware(hardware)
    return [
        site_cost(s, v, t, b, hw) for s in shapes for t in tokens for b in weight_bits for v in VARIANTS
    ]  # fmt: skip


def wide_fold_bytes(folded_shapes: Mapping[str, tuple[int, ...]], weights: str, wide: str) -> tuple[int, int]:
    """(bytes of the folded matrices in the weights' format, extra bytes when they are stored in `wide`)."""
    n = sum(int(np.prod(s)) for s in folded_shapes.values())
    narrow, wider = resolve_dtype(weights).itemsize, resolve_dtype(wide).itemsize
    return n * narrow, n * (wider - narrow)


def study_costs(
    folded_shapes: Mapping[str, tuple[int, ...]], wide: Mapping[str, str], bert: BertConfig | None
) -> dict[str, object]:
    """The costs a study reports (plain data, for its JSON): the wide fold's extra weight bytes of the whole model
    per storage dtype (`wide`: dtype -> the fold's wider format) and, for a BERT (LayerNorm) model, `sites`: the
    site costs at its shapes and at LARGE_SITES'."""
    out: dict[str, object] = {
        "hardware": HARDWARE,
        "wide_fold": {
            d: dict(zip(("weights_bytes", "extra_bytes"), wide_fold_bytes(folded_shapes, d, w), strict=True), format=w)
            for d, w in wide.items()
        },
    }
    if bert is not None:
        out["sites"] = [asdict(c) for c in site_costs((*bert_sites(bert), *LARGE_SITES))]
    return out
