"""Baseline vs fused on a whole model: one comparison, the paper check, the calibration, and sweeps.

Everything here runs the real forward pass (`normfuse_ref.llama.forward`) cost-only on an `EmulatingExecutor`,
once per mode, with weight-free dummy weights (`prepared_shapes`) and a dummy KV cache:

    phase "decode"   one new token per sequence after `context` cached positions
    phase "prefill"  a prompt of `context` tokens per sequence, empty cache

A context longer than the model's trained context is still timed (the emulator only needs shapes); callers
warn about it (`Scenario.beyond_context`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..llama.config import LlamaConfig, get_preset
from ..llama.forward import KVCache, forward
from ..llama.weights import prepared_shapes
from . import costs
from .config import HardwareConfig, with_overrides
from .emulator import EmulatingExecutor, dummy
from .timeline import ENGINES, Timeline

__all__ = [
    "PAPER",
    "PAPER_MODELS",
    "Comparison",
    "Scenario",
    "calibrate",
    "capacity",
    "compare",
    "emulate",
    "paper_check",
    "sweep",
]

Phase = Literal["decode", "prefill"]

#: What the paper reports (arXiv 2502.17728, abstract and conclusion), for printing beside the predictions.
PAPER = {
    "collective_share": "~20%",  # "collective operations slow down inference on Transformers by approximately 20%"
    "reduction": "15-20%",  # "reduces the total latency ... by approximately 15-20%" (Llama2, Llama3 on Corsair)
}
PAPER_MODELS: tuple[str, ...] = ("llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b")


@dataclass(frozen=True)
class Scenario:
    """What is timed: a model, a phase, the context (cached positions or prompt length) and the batch."""

    model: LlamaConfig
    phase: Phase = "decode"
    context: int = 2048
    batch: int = 1

    def __post_init__(self) -> None:
        if self.phase not in ("decode", "prefill"):
            raise ValueError(f"phase must be 'decode' or 'prefill'; got {self.phase!r}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1; got {self.batch}")
        if self.context < (0 if self.phase == "decode" else 1):
            raise ValueError(
                f"context must be >= {0 if self.phase == 'decode' else 1} for {self.phase}; got {self.context}"
            )

    @property
    def tokens(self) -> int:
        """T: new tokens per sequence."""
        return 1 if self.phase == "decode" else self.context

    @property
    def positions(self) -> int:
        """S: key/value positions after this call."""
        return self.context + 1 if self.phase == "decode" else self.context

    @property
    def beyond_context(self) -> bool:
        return self.positions > self.model.context_length

    def describe(self) -> str:
        what = f"context {self.context}" if self.phase == "decode" else f"prompt {self.context}"
        return f"{self.model.name}, {self.phase}, {what}, batch {self.batch}, {self.model.n_layers} layers"


def emulate(sc: Scenario, hw: HardwareConfig, mode: str, *, detail_layer: int | None = None) -> Timeline:
    """One cost-only forward pass of the scenario in one mode ("baseline" or "fused")."""
    cfg = sc.model if not sc.beyond_context else sc.model.replace(context_length=sc.positions)
    w = {k: dummy(s) for k, s in prepared_shapes(cfg).items()}
    lead = () if sc.batch == 1 else (sc.batch,)
    past = sc.context if sc.phase == "decode" else 0
    kv = dummy((cfg.n_layers, *lead, past + sc.tokens, cfg.n_kv_heads, cfg.head_dim))  # (L, [B,] S, Hkv, hd)
    cache = KVCache(k=kv, v=kv, length=past)
    ids = np.zeros((*lead, sc.tokens), dtype=np.int64)  # ([B,] T)
    ex = EmulatingExecutor(hw, numeric=False, detail_layer=detail_layer)
    forward(w, cfg, ids, cache, mode=mode, ex=ex)  # type: ignore[arg-type]
    return ex.timeline(mode)


@dataclass(frozen=True)
class Comparison:
    """The same scenario in both orders."""

    scenario: Scenario
    hw: HardwareConfig
    baseline: Timeline
    fused: Timeline

    @property
    def reduction(self) -> float:
        """(baseline - fused) / baseline latency."""
        b = self.baseline.makespan
        return (b - self.fused.makespan) / b if b else 0.0

    @property
    def collective_share(self) -> float:
        """Exposed collective time / latency, in the baseline order."""
        b = self.baseline.makespan
        return self.baseline.collective_exposed / b if b else 0.0

    def summary(self) -> dict[str, Any]:
        """The numbers `normfuse timeline --json` prints; units in the "units" entry."""
        b, f = self.baseline, self.fused
        sc = self.scenario
        cap = capacity(sc, self.hw)
        return {
            "model": sc.model.name,
            "hardware": self.hw.name,
            "phase": sc.phase,
            "context": sc.context,
            "batch": sc.batch,
            "layers": sc.model.n_layers,
            "baseline_latency": b.us(b.makespan),
            "fused_latency": f.us(f.makespan),
            "reduction": self.reduction,
            "collective_share_baseline": self.collective_share,
            "collective_exposed_baseline": b.us(b.collective_exposed),
            "collective_exposed_fused": f.us(f.collective_exposed),
            "collective_hidden_baseline": b.us(b.collective_hidden),
            "collective_hidden_fused": f.us(f.collective_hidden),
            "collective_total_baseline": b.us(b.collective_total),
            "collective_total_fused": f.us(f.collective_total),
            "utilisation_baseline": {e: b.utilisation(e) for e in ENGINES},
            "utilisation_fused": {e: f.utilisation(e) for e in ENGINES},
            "baseline_cycles": b.makespan,
            "fused_cycles": f.makespan,
            "clock_ghz": self.hw.clock.ghz,
            "weight_slices": cap["weight_slices"],
            "cards_needed": cap["cards"],
            "units": {
                "baseline_latency": "us",
                "fused_latency": "us",
                "reduction": "fraction of baseline latency",
                "collective_share_baseline": "fraction of baseline latency",
                "collective_exposed_baseline": "us",
                "collective_exposed_fused": "us",
                "collective_hidden_baseline": "us",
                "collective_hidden_fused": "us",
                "collective_total_baseline": "us",
                "collective_total_fused": "us",
                "utilisation_baseline": "fraction of latency each engine is busy",
                "utilisation_fused": "fraction of latency each engine is busy",
                "baseline_cycles": "cycles",
                "fused_cycles": "cycles",
                "clock_ghz": "GHz",
                "weight_slices": "slices",
                "cards_needed": "cards",
            },
        }


def compare(sc: Scenario, hw: HardwareConfig, *, detail_layer: int | None = None) -> Comparison:
    return Comparison(
        sc,
        hw,
        emulate(sc, hw, "baseline", detail_layer=detail_layer),
        emulate(sc, hw, "fused", detail_layer=detail_layer),
    )


def capacity(sc: Scenario, hw: HardwareConfig) -> dict[str, int]:
    """Slices the densely packed weights occupy, bytes of KV cache, and the cards that hold both."""
    slices = 0
    for name, shape in prepared_shapes(sc.model).items():
        if len(shape) == 2 and name != "token_embd":
            slices += costs.weight_mapping(hw, shape[0], shape[1]).slices
    cfg = sc.model
    kv_bytes = 2 * cfg.n_layers * sc.batch * sc.positions * cfg.n_kv_heads * cfg.head_dim * hw.memory.kv_bits // 8
    kv_room = int((1 - hw.memory.weight_fraction) * hw.memory.sram_bytes_per_slice) or 1
    kv_slices = math.ceil(kv_bytes / kv_room)
    cards = math.ceil(max(slices, kv_slices) / hw.chip.slices_per_card)
    return {"weight_slices": slices, "kv_bytes": kv_bytes, "cards": cards}


# ---------------------------------------------------------------------------------------------------------------
# The paper check and the calibration
# ---------------------------------------------------------------------------------------------------------------


def calibration_scenario() -> Scenario:
    """The one published point the corsair-like preset is calibrated on (CALIBRATION)."""
    return Scenario(get_preset("llama2-7b"), "decode", 2048, 1)


def calibrate(base: HardwareConfig, *, target: float = 0.20, hi: int = 1 << 16) -> int:
    """The smallest integer network.hop_latency_cycles at which the calibration point's baseline collective share
    reaches `target`. The share only grows with the hop latency (every collective step pays it; nothing else
    does, apart from matmuls whose K spans slices), so bisection finds it."""
    sc = calibration_scenario()

    def share(h: int) -> float:
        hw = with_overrides(base, {"network": {"hop_latency_cycles": h}})
        b = emulate(sc, hw, "baseline")
        return b.collective_exposed / b.makespan

    lo = 0
    if share(lo) >= target:
        return lo
    if share(hi) < target:
        raise ValueError(f"no hop latency up to {hi} cycles reaches a collective share of {target:.0%}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if share(mid) >= target else (mid, hi)
    return hi


def paper_check(
    hw: HardwareConfig,
    *,
    context: int = 2048,
    batch: int = 1,
    prefill_tokens: int | None = None,
    models: Sequence[str] = PAPER_MODELS,
    on_step: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """For each model, decode (after `context` cached positions) and prefill (a prompt of `prefill_tokens`,
    default `context`): the baseline collective share and the fused reduction, as the emulator predicts them."""
    rows = []
    cal = calibration_scenario()
    calibrated = hw == _preset("corsair-like")
    for name in models:
        phases: tuple[Phase, ...] = ("decode", "prefill")
        for phase in phases:
            ctx = context if phase == "decode" or prefill_tokens is None else prefill_tokens
            sc = Scenario(get_preset(name), phase, ctx, batch)
            c = compare(sc, hw)
            rows.append(
                {
                    "model": name,
                    "phase": phase,
                    "context": ctx,
                    "batch": batch,
                    "baseline_latency": c.baseline.us(c.baseline.makespan),
                    "fused_latency": c.fused.us(c.fused.makespan),
                    "collective_share_baseline": c.collective_share,
                    "reduction": c.reduction,
                    "calibration_point": calibrated
                    and (name, phase, ctx, batch) == (cal.model.name, cal.phase, cal.context, cal.batch),
                    "beyond_context": sc.beyond_context,
                }
            )
            if on_step:
                on_step()
    return rows


def _preset(name: str) -> HardwareConfig:
    from .config import PRESETS

    return PRESETS[name]


def calibrated_preset_value() -> int:
    return _preset("corsair-like").network.hop_latency_cycles


# ---------------------------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------------------------

SWEEP_PARAMS: tuple[str, ...] = ("context", "batch", "net-latency")


def sweep(sc: Scenario, hw: HardwareConfig, param: str, values: Sequence[int]) -> list[dict[str, Any]]:
    """Baseline vs fused at each value of one parameter: context (tokens), batch (sequences) or net-latency
    (network.hop_latency_cycles, cycles)."""
    if param not in SWEEP_PARAMS:
        raise ValueError(f"unknown sweep parameter {param!r}; known: {', '.join(SWEEP_PARAMS)}")
    out = []
    for v in values:
        s, h = sc, hw
        if param == "context":
            s = Scenario(sc.model, sc.phase, v, sc.batch)
        elif param == "batch":
            s = Scenario(sc.model, sc.phase, sc.context, v)
        else:
            h = with_overrides(hw, {"network": {"hop_latency_cycles": v}})
        c = compare(s, h)
        out.append(
            {
                "value": v,
                "baseline_latency": c.baseline.us(c.baseline.makespan),
                "fused_latency": c.fused.us(c.fused.makespan),
                "reduction": c.reduction,
                "collective_share_baseline": c.collective_share,
                "collective_exposed_fused": c.fused.us(c.fused.collective_exposed),
                "beyond_context": s.beyond_context,
            }
        )
    return out
