"""Baseline vs fused on a whole model: the comparison, the accounting, validation, the paper table, sweeps.

Everything here runs a model's forward pass cost-only on an `EmulatingExecutor` over a mapping the mapper chose
for the scenario (`mapping.search`), with weight-free dummy weights and a dummy KV cache:

    phase "decode"   one new token per sequence after `context` cached positions
    phase "prefill"  a prompt of `context` tokens per sequence, issued in chunks of `chunk` tokens that pipeline
                     through the stages (each chunk is one forward call after the previous chunks' cache); an
                     encoder (BERT) has no decode phase and takes its prompt in one call (`workload.is_encoder`)

A comparison is five passes of the same forward on the same mapping:

    baseline       the textbook order (two-pass softmax: a max all-reduce, then a sum all-reduce)
    one_pass       the textbook order costed with one (m, l) all-reduce for the softmax (what a competent
                   compiler does without the paper's rewrite)
    fused          the paper's order
    baseline_free  each of them with every normalisation-statistic step made free (every `reduce`: partials,
    fused_free     collective, finish; the local max and sum partials of the one-pass softmax; the normalisation
    one_pass_free  part of the softmax merge; moving a statistic)

The normalisation cost of an order is its latency minus its latency with normalisation made free. The hidden fraction
is 1 - cost(fused) / cost(baseline): how much of what normalisation costs the baseline the fused order hides.
"Exposed on the critical path" (`timeline.py`) is kept as a second view.

A context longer than the model's trained context is still timed (only shapes are needed); callers warn about it
(`Scenario.beyond_context`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..models.shapes import shape_config
from . import costs
from .config import HardwareConfig, field_value, nested, with_overrides
from .emulator import EmulatingExecutor
from .mapping import DoesNotFit, Mapping, MappingPolicy, Stage, search
from .timeline import ENGINES, Timeline
from .workload import ModelShape, Workload, is_encoder, run_pass, with_context, with_layers, workload_of

__all__ = [
    "CALIBRATION_POINTS",
    "LAYERNORM_MODELS",
    "PAPER",
    "PAPER_MODELS",
    "PUBLISHED",
    "SWEEP_SHORTCUTS",
    "Comparison",
    "Scenario",
    "calibrate",
    "compare",
    "emulate",
    "map_scenario",
    "paper_check",
    "roofline",
    "sweep",
    "validate",
]

Phase = Literal["decode", "prefill"]

#: What the paper reports (arXiv 2502.17728, abstract and conclusion), for printing beside the predictions.
PAPER = {
    "collective_share": "~20%",  # "collective operations slow down inference on Transformers by approximately 20%"
    "reduction": "15-20%",  # "reduces the total latency ... by approximately 15-20%" (Llama2, Llama3 on Corsair)
}
PAPER_MODELS: tuple[str, ...] = ("llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b")
#: The LayerNorm models of `normfuse timeline --paper --models layernorm`: the real encoder, a larger encoder, a
#: GPT-2-family decoder and a large LayerNorm decoder (configs and their sources in normfuse_ref.models).
LAYERNORM_MODELS: tuple[str, ...] = ("all-minilm-l6-v2", "bert-large", "gpt2-xl", "opt-66b")


@dataclass(frozen=True)
class Scenario:
    """What is timed: a model (a config of any family registered in `workload.FAMILIES`), a phase, the context
    (cached positions or prompt length), the batch, the prefill chunk (tokens per sequence a forward call issues;
    an encoder's prompt is one call whatever the chunk), and how the mapping is chosen."""

    model: ModelShape
    phase: Phase = "decode"
    context: int = 2048
    batch: int = 1
    # tokens per prefill chunk; assumed 256: long enough that a chunk's matmuls keep the DIMC arrays busy
    # (8 rows per weight byte make a slice compute-bound), short enough that chunks pipeline through the stages
    chunk: int = 256
    mapping: MappingPolicy = field(default_factory=MappingPolicy)

    def __post_init__(self) -> None:
        if self.phase not in ("decode", "prefill"):
            raise ValueError(f"phase must be 'decode' or 'prefill'; got {self.phase!r}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1; got {self.batch}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1; got {self.chunk}")
        if self.context < (0 if self.phase == "decode" else 1):
            raise ValueError(
                f"context must be >= {0 if self.phase == 'decode' else 1} for {self.phase}; got {self.context}"
            )
        if self.phase == "decode" and is_encoder(self.model):
            raise ValueError(
                f"{self.model.name} is an encoder (bidirectional attention, no KV cache): it has no decode phase; "
                "time its prefill (--phase prefill)"
            )

    @property
    def chunks(self) -> tuple[int, ...]:
        """Tokens per sequence of each forward call."""
        if self.phase == "decode":
            return (1,)
        if is_encoder(self.model):
            return (self.context,)
        full, rest = divmod(self.context, self.chunk)
        return (self.chunk,) * full + ((rest,) if rest else ())

    @property
    def rows(self) -> int:
        """Rows of the largest forward call (batch x tokens): the mapping's design point."""
        return self.batch * max(self.chunks)

    @property
    def positions(self) -> int:
        """S: key/value positions after the last call."""
        return self.context + 1 if self.phase == "decode" else self.context

    @property
    def beyond_context(self) -> bool:
        return self.positions > self.model.context_length

    def timed_model(self) -> Any:
        """The model with its context stretched to the scenario's, if it is beyond."""
        return with_context(self.model, self.positions) if self.beyond_context else self.model

    def describe(self) -> str:
        what = f"context {self.context}" if self.phase == "decode" else f"prompt {self.context}"
        chunks = f" in chunks of {self.chunk}" if self.phase == "prefill" and len(self.chunks) > 1 else ""
        chunks += " in one pass (an encoder)" if self.phase == "prefill" and is_encoder(self.model) else ""
        return f"{self.model.name}, {self.phase}, {what}{chunks}, batch {self.batch}, {self.model.n_layers} layers"


# ---------------------------------------------------------------------------------------------------------------
# Emulation and the mapping
# ---------------------------------------------------------------------------------------------------------------


def emulate(
    sc: Scenario,
    hw: HardwareConfig,
    mode: str,
    *,
    mapping: Mapping | None = None,
    free: bool = False,
    one_pass: bool = False,
    detail_layer: int | None = None,
) -> Timeline:
    """One cost-only pass of the scenario in one mode ("baseline" or "fused"), on the scenario's mapping."""
    mp = mapping if mapping is not None else map_scenario(sc, hw)
    ex = EmulatingExecutor(
        hw, mp, numeric=False, free_normalisation=free, one_pass_softmax=one_pass, detail_layer=detail_layer
    )
    model = sc.timed_model()
    past = sc.context if sc.phase == "decode" else 0
    cache = None
    for i, tokens in enumerate(sc.chunks):
        if i:
            ex.new_pass()
        cache = run_pass(model, ex, mode, batch=sc.batch, tokens=tokens, past=past, cache=cache)
        past += tokens
    label = mode + (" (normalisation free)" if free else "") + (" (one-pass softmax)" if one_pass else "")
    return ex.timeline(label)


def _single_stage(mp: Mapping, wl: Workload, stage: Stage) -> Mapping:
    """One stage of the candidate's width with `stage`'s KV placement, holding the blocks of `wl` and the head."""
    st = Stage(0, 0, stage.cards, (0, wl.n_layers), True, 0, 0, 0, stage.kv_offchip, 0)  # bytes do not time
    return dataclasses.replace(mp, stages=(st,), workload=wl)


def compose(
    sc: Scenario, hw: HardwareConfig, mp: Mapping, mode: str = "baseline", *, free: bool = False, one_pass: bool = False
) -> int:
    """A pass's latency (cycles) composed from timed pieces: two blocks and the head timed by the emulator on one
    stage of the mapping's width with each stage's KV placement (the largest chunk at the final context); the
    second block stands for every block but the first (the first reads the embedding, placed differently). Stages
    and chunks then compose as a pipeline: the sum over stages of (its blocks + the head + the crossing into it)
    for the first chunk, plus the slowest stage for each further chunk. For a decode step (one chunk) this is the
    full pass, exactly (tests/test_hw_mapping.py, tests/test_hw_study.py); for a chunked prefill, an estimate."""
    two = workload_of(with_layers(sc.timed_model(), min(2, sc.model.n_layers)))
    wl = workload_of(sc.timed_model())
    xfer = wl.width * sc.rows * hw.memory.act_bits / 8
    per_stage = []
    timed: dict[tuple[int, float], tuple[int, int, int]] = {}  # stages of one width and KV placement time alike
    crossings: dict[str, int] = {}  # and crossings of one level
    for s in mp.stages:
        if (s.cards, s.kv_offchip) not in timed:
            timed[s.cards, s.kv_offchip] = _timed_blocks(sc, hw, _single_stage(mp, two, s), mode, free, one_pass)
        first, block, head = timed[s.cards, s.kv_offchip]
        n = s.layers[1] - s.layers[0]
        t = n * block + (head if s.head else 0) + ((first - block) if s.layers[0] == 0 and n else 0)
        if s.index:
            level = mp.crossing(s.index - 1, s.index)
            if level not in crossings:
                crossings[level] = costs.stage_transfer_step(hw, level, xfer).cycles
            t += crossings[level]
        per_stage.append(t)
    return sum(per_stage) + (len(sc.chunks) - 1) * max(per_stage)


def estimate_mapping(sc: Scenario, hw: HardwareConfig, mp: Mapping) -> int:
    """The mapper's estimate of a candidate's latency (cycles): the baseline order's `compose`."""
    return compose(sc, hw, mp)


@functools.lru_cache(maxsize=1024)
def _timed_blocks(
    sc: Scenario, hw: HardwareConfig, two: Mapping, mode: str, free: bool, one_pass: bool
) -> tuple[int, int, int]:
    """(first block, a later block, the head) in cycles: two blocks and the head on one stage, the largest chunk
    at the final context. The first block's time counts from the pass's start, so it includes the work issued
    before it (the embeddings' sum of the LayerNorm families; Llama's lookup is free). Candidates of one width and
    KV placement share it."""
    model2 = with_layers(sc.timed_model(), min(2, sc.model.n_layers))
    ex = EmulatingExecutor(hw, two, numeric=False, free_normalisation=free, one_pass_softmax=one_pass)
    tokens = max(sc.chunks)
    run_pass(model2, ex, mode, batch=sc.batch, tokens=tokens, past=sc.positions - tokens)
    tl = ex.timeline()
    last = two.stages[0].layers[1] - 1
    _, e0 = tl.layer_window(0)
    start, end = tl.layer_window(last)
    return e0, end - start, tl.makespan - end


@functools.lru_cache(maxsize=256)
def map_scenario(sc: Scenario, hw: HardwareConfig) -> Mapping:
    """The mapping the mapper picks for the scenario (latency-optimal under capacity, by `estimate_mapping`)."""
    wl = workload_of(sc.timed_model())
    return search(
        wl,
        hw,
        sc.mapping,
        rows=sc.rows,
        positions=sc.positions,
        batch=sc.batch,
        estimate=lambda mp: estimate_mapping(sc, hw, mp),
    )


# ---------------------------------------------------------------------------------------------------------------
# Roofline and published figures
# ---------------------------------------------------------------------------------------------------------------


def roofline(sc: Scenario, hw: HardwareConfig, mp: Mapping) -> dict[str, float]:
    """Lower bounds (us) on the cards the mapping uses. Per stage and chunk: the longer of streaming its weights
    and KV cache (SRAM at the cards' rate, the off-chip share at the LPDDR rate) and computing its flops at the
    cards' peak. Stages and chunks compose as a pipeline: the bound is the largest, over stages, of that stage's
    total plus the first chunk on the stages before it and the last chunk on the stages after it (for a decode
    step: the sum over stages)."""
    wl = workload_of(sc.timed_model())
    mem, ghz = hw.memory, hw.clock.ghz
    block_w = sum(m.n * m.m for m in wl.block)
    head_w = sum(m.n * m.m for m in wl.head)
    slices = mp.slices_per_stage
    sram_rate = slices * mem.sram_bytes_per_cycle * ghz  # bytes per ns
    lpddr_rate = mp.tp_cards * mem.lpddr_gbps_per_card
    peak = 2 * slices * hw.dimc.macs_per_cycle * ghz  # flops per ns
    kv_pos = wl.kv_bytes_per_position(mem.kv_bits) * sc.batch
    grouped = wl.q_heads * wl.head_dim  # attention: 2 matmuls of S x hd per query head

    def stage_ns(s: Stage, tokens: int, positions: int) -> tuple[float, float, float]:
        layers = s.layers[1] - s.layers[0]
        rows = sc.batch * tokens
        weights = (layers * block_w + (head_w if s.head else 0)) * mem.weight_bits / 8
        kv = layers * positions * kv_pos
        flops = 2 * rows * (layers * block_w + (head_w if s.head else 0)) + 4 * rows * layers * positions * grouped
        bw = weights / sram_rate + (1 - s.kv_offchip) * kv / sram_rate
        off = s.kv_offchip * kv / lpddr_rate
        return max(bw, off, flops / peak), max(bw, off), flops / peak

    chunks = sc.chunks
    ends = [sum(chunks[: i + 1]) + (sc.context if sc.phase == "decode" else 0) for i in range(len(chunks))]
    t = [[stage_ns(s, c, e)[0] for c, e in zip(chunks, ends, strict=True)] for s in mp.stages]
    bound = max(
        sum(t[j][0] for j in range(i)) + sum(t[i]) + sum(t[j][-1] for j in range(i + 1, len(t))) for i in range(len(t))
    )
    memory = sum(stage_ns(s, chunks[0], ends[0])[1] for s in mp.stages)
    compute = sum(stage_ns(s, c, e)[2] for s in mp.stages for c, e in zip(chunks, ends, strict=True))
    return {"roofline": bound / 1e3, "memory_first_chunk": memory / 1e3, "compute_total": compute / 1e3}


#: Published d-Matrix figures (press, not confirmed specifications), for side-by-side ratios. Never tuned to.
PUBLISHED: tuple[dict[str, Any], ...] = (
    {
        "name": "llama3-8b decode, batch 64, one 8-card server",
        "model": "llama3-8b",
        "batch": 64,
        "context": 2048,  # not stated in the press; assumed
        "max_cards": 8,
        "latency_us": 1000.0,
        "source": "d-Matrix press (Corsair launch, 2024): Llama3-8B ~1 ms/token at batch 48-64 on one server",
    },
    {
        "name": "llama3-70b decode, batch 1, one rack",
        "model": "llama3-70b",
        "batch": 1,  # not stated in the press; assumed
        "context": 2048,  # not stated in the press; assumed
        "max_cards": None,  # the whole system: a rack of 8 servers
        "latency_us": 2000.0,
        "source": "d-Matrix press (Corsair launch, 2024): Llama3-70B ~2 ms/token on a rack",
    },
)


# ---------------------------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------------------------


#: The six passes of a comparison: (mode, normalisation free, one-pass softmax).
PASSES: dict[str, tuple[str, bool, bool]] = {
    "baseline": ("baseline", False, False),
    "fused": ("fused", False, False),
    "one_pass": ("baseline", False, True),
    "baseline_free": ("baseline", True, False),
    "fused_free": ("fused", True, False),
    "one_pass_free": ("baseline", True, True),
}


class Comparison:
    """The scenario's six passes on one mapping (see the module docstring), each run on first use."""

    def __init__(
        self, scenario: Scenario, hw: HardwareConfig, mapping: Mapping, detail_layer: int | None = None
    ) -> None:
        self.scenario, self.hw, self.mapping, self.detail_layer = scenario, hw, mapping, detail_layer
        self._runs: dict[str, Timeline] = {}

    def _pass(self, name: str) -> Timeline:
        tl = self._runs.get(name)
        if tl is None:
            mode, free, one_pass = PASSES[name]
            tl = self._runs[name] = emulate(
                self.scenario,
                self.hw,
                mode,
                mapping=self.mapping,
                free=free,
                one_pass=one_pass,
                detail_layer=self.detail_layer,
            )
        return tl

    @property
    def baseline(self) -> Timeline:
        return self._pass("baseline")

    @property
    def fused(self) -> Timeline:
        return self._pass("fused")

    @property
    def one_pass(self) -> Timeline:
        return self._pass("one_pass")

    @property
    def baseline_free(self) -> Timeline:
        return self._pass("baseline_free")

    @property
    def fused_free(self) -> Timeline:
        return self._pass("fused_free")

    @property
    def one_pass_free(self) -> Timeline:
        return self._pass("one_pass_free")

    @property
    def reduction(self) -> float:
        """(baseline - fused) / baseline latency."""
        b = self.baseline.makespan
        return (b - self.fused.makespan) / b if b else 0.0

    @property
    def reduction_vs_one_pass(self) -> float:
        o = self.one_pass.makespan
        return (o - self.fused.makespan) / o if o else 0.0

    def cost(self, which: str) -> int:
        """Normalisation cost (cycles) of "baseline", "one_pass" or "fused": latency - latency with it free."""
        free: Timeline = getattr(self, f"{which}_free")
        return int(getattr(self, which).makespan - free.makespan)

    @property
    def normalisation_share(self) -> float:
        """Normalisation cost of the baseline / its latency."""
        b = self.baseline.makespan
        return self.cost("baseline") / b if b else 0.0

    @property
    def hidden_fraction(self) -> float:
        """1 - cost(fused) / cost(baseline): the share of the baseline's normalisation cost the fused order hides."""
        c = self.cost("baseline")
        return 1 - self.cost("fused") / c if c else 0.0

    @property
    def hidden_fraction_vs_one_pass(self) -> float:
        c = self.cost("one_pass")
        return 1 - self.cost("fused") / c if c else 0.0

    @property
    def collective_share(self) -> float:
        """The second view: exposed normalisation-statistic time / latency, in the baseline order."""
        b = self.baseline.makespan
        return self.baseline.collective_exposed / b if b else 0.0

    def __repr__(self) -> str:
        """One line for a notebook: the scenario, both latencies and what fusion saves (runs the two passes)."""
        b, f = self.baseline, self.fused
        return (
            f"<Comparison {self.scenario.describe()} on {self.hw.name}: baseline {b.us(b.makespan):.4g} µs, fused "
            f"{f.us(f.makespan):.4g} µs ({100 * self.reduction:.1f}% saved, {100 * self.hidden_fraction:.0f}% of the "
            f"normalisation cost hidden); calibrated: {'FITTED' if self.hw.fitted else 'false'}>"
        )

    def to_records(self) -> list[dict[str, Any]]:
        """One plain record per order (two-pass baseline, one-pass baseline, fused), for a table or a DataFrame
        (`pandas.DataFrame(c.to_records())`): latencies in µs, shares as fractions (keys say which)."""
        out = []
        for order, name in (("baseline", "two-pass baseline"), ("one_pass", "one-pass baseline"), ("fused", "fused")):
            tl: Timeline = getattr(self, order)
            free: Timeline = getattr(self, f"{order}_free")
            cost = self.cost(order)
            out.append(
                {
                    "order": name,
                    "latency_us": tl.us(tl.makespan),
                    "latency_without_normalisation_us": free.us(free.makespan),
                    "normalisation_cost_us": tl.us(cost),
                    "normalisation_share": cost / tl.makespan if tl.makespan else 0.0,
                    "normalisation_exposed_us": tl.us(tl.collective_exposed),
                    "saved_by_fused": (tl.makespan - self.fused.makespan) / tl.makespan if tl.makespan else 0.0,
                }
            )
        return out

    def plot(self, layer: int = 0) -> Any:
        """The Gantt chart of decoder block `layer`, baseline above fused, as a matplotlib Figure (the [plot]
        extra; normfuse_ref.plot.gantt_figure). A notebook shows it; `normfuse_ref.plot.save_figure` writes it."""
        from ..plot import gantt_figure

        return gantt_figure(self, layer)

    def summary(self) -> dict[str, Any]:
        """The numbers `normfuse timeline --json` prints; units in the "units" entry."""
        b, f, o = self.baseline, self.fused, self.one_pass
        sc, hw, mp = self.scenario, self.hw, self.mapping
        us = b.us
        roof = roofline(sc, hw, mp)
        weight_slices = mp.cards * hw.slices_per_card
        # tokens a forward call issues: an encoder's whole prompt, whatever the chunk asked for
        chunk = None if sc.phase == "decode" else sc.context if is_encoder(sc.model) else sc.chunk
        out: dict[str, Any] = {
            "model": sc.model.name,
            "hardware": hw.name,
            "phase": sc.phase,
            "context": sc.context,
            "batch": sc.batch,
            "chunk": chunk,
            "layers": sc.model.n_layers,
            "algorithm": hw.network.algorithm,
            "calibrated": calibrated(hw),
            "baseline_latency": us(b.makespan),
            "fused_latency": us(f.makespan),
            "one_pass_baseline_latency": us(o.makespan),
            "reduction": self.reduction,
            "reduction_vs_one_pass": self.reduction_vs_one_pass,
            "latency_without_normalisation_baseline": us(self.baseline_free.makespan),
            "latency_without_normalisation_fused": us(self.fused_free.makespan),
            "latency_without_normalisation_one_pass": us(self.one_pass_free.makespan),
            "normalisation_cost_baseline": us(self.cost("baseline")),
            "normalisation_cost_one_pass": us(self.cost("one_pass")),
            "normalisation_cost_fused": us(self.cost("fused")),
            "normalisation_share_baseline": self.normalisation_share,
            "hidden_fraction": self.hidden_fraction,
            "hidden_fraction_vs_one_pass": self.hidden_fraction_vs_one_pass,
            "merge_psum": us(
                f.op_total("softmax.merge", "merge psum") + f.op_total("softmax.merge", "merge psum root")
            ),
            "merge_normalisation": us(
                f.op_total("softmax.merge", "merge norm") + f.op_total("softmax.merge", "merge norm root")
            ),
            "pv_psum_baseline": us(sum(e.duration for e in b.events if e.op == "attn_pv" and e.kind == "psum")),
            "roofline_latency": roof["roofline"],
            "roofline_memory_first_chunk": roof["memory_first_chunk"],
            "roofline_compute": roof["compute_total"],
            "roofline_ratio_free_baseline": self.baseline_free.us(self.baseline_free.makespan) / roof["roofline"],
            "collective_share_baseline": self.collective_share,
            "collective_exposed_baseline": us(b.collective_exposed),
            "collective_exposed_one_pass": us(o.collective_exposed),
            "collective_exposed_fused": us(f.collective_exposed),
            "collective_hidden_baseline": us(b.collective_hidden),
            "collective_hidden_fused": us(f.collective_hidden),
            "collective_total_baseline": us(b.collective_total),
            "collective_total_fused": us(f.collective_total),
            "psum_exposed_baseline": us(b.exposed("psum")),
            "psum_exposed_fused": us(f.exposed("psum")),
            "move_exposed_baseline": us(b.exposed("move")),
            "move_exposed_fused": us(f.exposed("move")),
            "utilisation_baseline": {e: b.utilisation(e) for e in ENGINES},
            "utilisation_fused": {e: f.utilisation(e) for e in ENGINES},
            "baseline_cycles": b.makespan,
            "fused_cycles": f.makespan,
            "clock_ghz": hw.clock.ghz,
            "weight_slices": weight_slices,
            "cards_needed": mp.cards,
            "mapping": mp.to_dict(),
        }
        out["units"] = units_of(out)
        return out


#: Units of the keys of a summary, a paper row and a published row that are not in microseconds (docs/cli.md).
UNITS: dict[str, str] = {
    "context": "tokens",
    "batch": "sequences",
    "chunk": "tokens",
    "layers": "blocks",
    "reduction": "fraction of baseline latency",
    "reduction_vs_one_pass": "fraction of one-pass baseline latency",
    "normalisation_share_baseline": "fraction of baseline latency",
    "normalisation_share_one_pass": "fraction of one-pass baseline latency",
    "hidden_fraction": "fraction of the baseline's normalisation cost",
    "hidden_fraction_vs_one_pass": "fraction of the one-pass baseline's normalisation cost",
    "collective_share_baseline": "fraction of baseline latency",
    "roofline_ratio_free_baseline": "1",
    "utilisation_baseline": "fraction of latency each engine's resources are busy",
    "utilisation_fused": "fraction of latency each engine's resources are busy",
    "baseline_cycles": "cycles",
    "fused_cycles": "cycles",
    "clock_ghz": "GHz",
    "weight_slices": "slices",
    "cards_needed": "cards",
    "cards": "cards",
    "tp_cards": "cards",
    "latency_us": "us",
    "ratio_baseline": "1",
    "ratio_fused": "1",
}


def units_of(*records: dict[str, Any]) -> dict[str, str]:
    """Every numeric key of the records, its unit: those in UNITS, microseconds for the other floats."""
    out: dict[str, str] = {}
    for record in records:
        for key, v in record.items():
            if key in UNITS:
                out[key] = UNITS[key]
            elif isinstance(v, float):
                out[key] = "us"
    return out


def compare(sc: Scenario, hw: HardwareConfig, *, detail_layer: int | None = None) -> Comparison:
    """The comparison of the scenario on the mapping the mapper picks (ValueError if nothing fits); its passes
    run when first asked for."""
    return Comparison(sc, hw, map_scenario(sc, hw), detail_layer)


def calibrated(hw: HardwareConfig) -> bool | list[str]:
    """False for a physical machine; else what was fitted (printed by every output)."""
    return list(hw.fitted) if hw.fitted else False


# ---------------------------------------------------------------------------------------------------------------
# The paper check and validation
# ---------------------------------------------------------------------------------------------------------------


def paper_row(c: Comparison, *, one_pass_share: bool = True) -> dict[str, Any]:
    sc, b = c.scenario, c.baseline
    return {
        "model": sc.model.name,
        "phase": sc.phase,
        "context": sc.context,
        "batch": sc.batch,
        "cards": c.mapping.cards,
        "tp_cards": c.mapping.tp_cards,
        "baseline_latency": b.us(b.makespan),
        "one_pass_baseline_latency": b.us(c.one_pass.makespan),
        "fused_latency": b.us(c.fused.makespan),
        "normalisation_share_baseline": c.normalisation_share,
        "normalisation_share_one_pass": (c.cost("one_pass") / c.one_pass.makespan if c.one_pass.makespan else 0.0)
        if one_pass_share
        else None,
        "hidden_fraction": c.hidden_fraction,
        "hidden_fraction_vs_one_pass": c.hidden_fraction_vs_one_pass,
        "reduction": c.reduction,
        "reduction_vs_one_pass": c.reduction_vs_one_pass,
        "collective_share_baseline": c.collective_share,
        "roofline_latency": roofline(sc, c.hw, c.mapping)["roofline"],
        "beyond_context": sc.beyond_context,
    }


def paper_check(
    hw: HardwareConfig,
    *,
    context: int = 2048,
    batch: int = 1,
    prefill_tokens: int | None = None,
    models: Sequence[str] = PAPER_MODELS,
    policy: MappingPolicy | None = None,
    executor: concurrent.futures.Executor | None = None,
    on_step: Callable[[], None] | None = None,
    fit_context: bool = False,
) -> list[dict[str, Any]]:
    """For each model (a preset name or a config.json), decode (after `context` cached positions) and prefill (a
    prompt of `prefill_tokens`, default `context`): both baselines, the normalisation share, the hidden fraction
    and the reduction. An encoder has a prefill row only. With `fit_context`, a model trained on fewer positions is
    timed at its own: decode after (its positions - 1), a prefill of its positions (the row's `context` says so)."""
    scs = []
    for name in models:
        cfg = shape_config(name)
        phases: tuple[Phase, ...] = ("prefill",) if is_encoder(cfg) else ("decode", "prefill")
        for phase in phases:
            ctx = context if phase == "decode" or prefill_tokens is None else prefill_tokens
            if fit_context:
                ctx = min(ctx, cfg.context_length - (phase == "decode"))
            scs.append(Scenario(cfg, phase, ctx, batch, mapping=policy or MappingPolicy()))
    return list(_map(_paper_task, [(sc, hw) for sc in scs], executor, on_step))


def _paper_task(task: tuple[Scenario, HardwareConfig]) -> dict[str, Any]:
    return paper_row(compare(*task))


def validate(hw: HardwareConfig, *, policy: MappingPolicy | None = None) -> list[dict[str, Any]]:
    """Each published figure beside the emulated latency of the same scenario (baseline and fused orders), and
    their ratios. The press figures are printed, never fitted to."""
    out = []
    for pub in PUBLISHED:
        pol = dataclasses.replace(policy or MappingPolicy(), max_cards=pub["max_cards"])
        sc = Scenario(shape_config(pub["model"]), "decode", pub["context"], pub["batch"], mapping=pol)
        c = compare(sc, hw)
        b, f = c.baseline.us(c.baseline.makespan), c.fused.us(c.fused.makespan)
        out.append(
            {
                **{k: pub[k] for k in ("name", "model", "batch", "context", "latency_us", "source")},
                "cards": c.mapping.cards,
                "baseline_latency": b,
                "fused_latency": f,
                "ratio_baseline": b / pub["latency_us"],
                "ratio_fused": f / pub["latency_us"],
                "roofline_latency": roofline(sc, hw, c.mapping)["roofline"],
            }
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Calibration (only on request)
# ---------------------------------------------------------------------------------------------------------------

#: Published points one parameter may be fitted to, on request (`normfuse timeline --calibrate PARAM[=POINT]`).
CALIBRATION_POINTS: dict[str, dict[str, Any]] = {
    "paper-share": {
        "scenario": ("llama2-7b", "decode", 2048, 1),
        "measure": "normalisation_share_baseline",
        "target": 0.20,
        "source": "arXiv 2502.17728, abstract: collective operations slow down inference by approximately 20%",
    },
    "press-8b": {
        "scenario": ("llama3-8b", "decode", 2048, 64),
        "measure": "baseline_latency",
        "target": 1000.0,
        "max_cards": 8,
        "source": "d-Matrix press: Llama3-8B ~1 ms/token at batch 48-64 on one 8-card server",
    },
}


def _measure(hw: HardwareConfig, point: dict[str, Any], policy: MappingPolicy) -> float:
    name, phase, ctx, batch = point["scenario"]
    pol = dataclasses.replace(policy, max_cards=point.get("max_cards"))
    c = compare(Scenario(shape_config(name), phase, ctx, batch, mapping=pol), hw)
    if point["measure"] == "normalisation_share_baseline":
        return c.normalisation_share
    return c.baseline.us(c.baseline.makespan)


def calibrate(
    hw: HardwareConfig, parameter: str, point: str = "paper-share", *, policy: MappingPolicy | None = None
) -> HardwareConfig:
    """The machine with one numeric `parameter` (a dotted field) fitted so that the named published point is met:
    from its current value, steps of x4 (or /4) until the measure crosses the target, then bisection to 0.1% of
    the value; recorded in `fitted`. ValueError if no value within 4^12 of it reaches the target."""
    if point not in CALIBRATION_POINTS:
        raise ValueError(f"unknown calibration point {point!r}; known: {', '.join(CALIBRATION_POINTS)}")
    spec = CALIBRATION_POINTS[point]
    value = field_value(hw, parameter)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"--calibrate needs a numeric hardware field; {parameter} is {value!r}")
    pol = policy or MappingPolicy()
    is_int = isinstance(value, int)

    def at(v: float) -> tuple[HardwareConfig, float]:
        h = with_overrides(hw, nested(parameter, round(v) if is_int else v))
        return h, _measure(h, spec, pol)

    target = spec["target"]
    # bracket the target by stepping from the current value by factors of 4 (the measure need not be monotone
    # over the whole range: a huge hop makes activation moves dominate), then bisect inside the bracket
    v0 = max(float(value), 1.0 if is_int else 1e-3)
    _, m0 = at(v0)
    step = 4.0 if m0 < target else 0.25
    lo, m_lo = v0, m0
    for _ in range(12):
        hi = lo * step
        _, m_hi = at(hi)
        if (m_hi >= target) == (m0 < target):
            break
        lo, m_lo = hi, m_hi
    else:
        raise ValueError(
            f"no value of {parameter} within 4^12 of {value:g} reaches {spec['measure']} = {target:g} "
            f"(it reached {m_lo:.4g})"
        )
    lo, hi = min(lo, hi), max(lo, hi)
    rising = at(hi)[1] > at(lo)[1]
    for _ in range(40):
        if (is_int and hi - lo <= 1) or (not is_int and hi - lo <= 1e-3 * hi):
            break
        mid = float((int(lo) + int(hi)) // 2) if is_int else (lo + hi) / 2
        _, m = at(mid)
        if (m < target) == rising:
            lo = mid
        else:
            hi = mid
    fitted_hw, achieved = at(hi)
    v = field_value(fitted_hw, parameter)
    note = (
        f"{parameter} = {v:g}: fitted so that {spec['measure']} = {target:g} on "
        f"{' '.join(map(str, spec['scenario']))} ({spec['source']}); achieved {achieved:.4g}"
    )
    return dataclasses.replace(fitted_hw, fitted=(*hw.fitted, note))


# ---------------------------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------------------------

#: Short names for `normfuse sweep --param` (any dotted hardware field works too).
SWEEP_SHORTCUTS: dict[str, str] = {
    "noc-hop": "network.noc.hop_ns",
    "d2d-hop": "network.d2d.hop_ns",
    "bridge-hop": "network.bridge.hop_ns",
    "pcie-hop": "network.pcie.hop_ns",
    "nic-hop": "network.nic.hop_ns",
    "noc-bw": "network.noc.link_gbps",
    "algorithm": "network.algorithm",
}
#: Parameters of the scenario rather than the machine.
SCENARIO_PARAMS: tuple[str, ...] = ("context", "batch", "chunk", "tp-cards", "mapping")


def apply(sc: Scenario, hw: HardwareConfig, name: str, value: Any) -> tuple[Scenario, HardwareConfig]:
    """The scenario and machine with one sweep parameter set. ValueError naming a bad one."""
    if name == "context":
        return dataclasses.replace(sc, context=int(value)), hw
    if name == "batch":
        return dataclasses.replace(sc, batch=int(value)), hw
    if name == "chunk":
        return dataclasses.replace(sc, chunk=int(value)), hw
    if name == "tp-cards":
        return dataclasses.replace(sc, mapping=dataclasses.replace(sc.mapping, tp_cards=int(value))), hw
    if name == "mapping":
        return dataclasses.replace(sc, mapping=dataclasses.replace(sc.mapping, kind=value)), hw
    dotted = SWEEP_SHORTCUTS.get(name, name)
    current = field_value(hw, dotted)
    if isinstance(current, bool) or isinstance(current, str):
        return sc, with_overrides(hw, nested(dotted, str(value)))
    if isinstance(current, int) and float(value) != int(float(value)):
        raise ValueError(f"{dotted} takes whole numbers; got {value!r}")
    v = int(float(value)) if isinstance(current, int) else float(value)
    return sc, with_overrides(hw, nested(dotted, v))


def _point(task: tuple[Scenario, HardwareConfig, tuple[tuple[str, Any], ...]]) -> dict[str, Any]:
    sc, hw, assignment = task
    for name, value in assignment:
        sc, hw = apply(sc, hw, name, value)
    try:
        c = compare(sc, hw)
    except DoesNotFit as exc:  # this point does not fit: a result, not a crash (any other error is one)
        return {"params": dict(assignment), "error": str(exc)}
    row = composed_row(c) if sc.phase == "decode" else paper_row(c, one_pass_share=False)
    row["params"] = dict(assignment)
    return row


def composed_row(c: Comparison) -> dict[str, Any]:
    """A decode point's row from `compose` (two timed blocks a pass instead of every block): the same latencies
    as the full passes, exactly for a decode step; without the exposed view, which needs a whole timeline."""
    sc, hw, mp = c.scenario, c.hw, c.mapping
    t = {name: compose(sc, hw, mp, mode, free=free, one_pass=op) for name, (mode, free, op) in PASSES.items()}
    us = 1 / (hw.clock.ghz * 1e3)
    b, o, f = t["baseline"], t["one_pass"], t["fused"]
    cost_b, cost_o, cost_f = b - t["baseline_free"], o - t["one_pass_free"], f - t["fused_free"]
    return {
        "model": sc.model.name,
        "phase": sc.phase,
        "context": sc.context,
        "batch": sc.batch,
        "cards": mp.cards,
        "tp_cards": mp.tp_cards,
        "baseline_latency": b * us,
        "one_pass_baseline_latency": o * us,
        "fused_latency": f * us,
        "normalisation_share_baseline": cost_b / b,
        "normalisation_share_one_pass": cost_o / o,
        "hidden_fraction": 1 - cost_f / cost_b if cost_b else 0.0,
        "hidden_fraction_vs_one_pass": 1 - cost_f / cost_o if cost_o else 0.0,
        "reduction": (b - f) / b,
        "reduction_vs_one_pass": (o - f) / o,
        "collective_share_baseline": None,
        "roofline_latency": roofline(sc, hw, mp)["roofline"],
        "beyond_context": sc.beyond_context,
    }


def _map(
    fn: Callable[[Any], dict[str, Any]],
    tasks: Sequence[Any],
    executor: concurrent.futures.Executor | None,
    on_step: Callable[[], None] | None,
) -> Iterable[dict[str, Any]]:
    """fn over tasks, in order, on `executor` (None: in this process); `on_step` after each result."""
    if executor is None:
        for t in tasks:
            r = fn(t)
            if on_step:
                on_step()
            yield r
        return
    for r in executor.map(fn, tasks):
        if on_step:
            on_step()
        yield r


def sweep(
    sc: Scenario,
    hw: HardwareConfig,
    params: Sequence[tuple[str, Sequence[Any]]],
    *,
    executor: concurrent.futures.Executor | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Baseline vs fused at every combination of one or two parameters (the first varies slowest). Each point is
    independent, so `executor` may be any concurrent.futures.Executor: a local process pool (`local_pool`), or a
    Dask or Ray cluster's executor for a design-space search too large for one machine. None runs them here."""
    if not 1 <= len(params) <= 2:
        raise ValueError(f"a sweep takes one or two parameters; got {len(params)}")
    for name, _values in params:
        if name not in SCENARIO_PARAMS:
            field_value(hw, SWEEP_SHORTCUTS.get(name, name))  # ValueError names an unknown parameter
    grid: list[tuple[tuple[str, Any], ...]] = [()]
    for name, values in params:
        grid = [(*g, (name, v)) for g in grid for v in values]
    return list(_map(_point, [(sc, hw, g) for g in grid], executor, on_step))


def local_pool(workers: int | None = None) -> concurrent.futures.Executor:
    """A process pool on this machine's cores (the default runner of `normfuse sweep`)."""
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1)
