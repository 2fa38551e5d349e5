"""The emulated machine's parameters: one frozen dataclass per part, every field with its unit and its source.

A SIMD/DIMC machine in the d-Matrix Corsair style is a grid of *slices*. Each slice has one DIMC unit (digital
in-memory-compute array: weight tiles, multiply-accumulate, an adder tree for partial sums), one SIMD unit
(elementwise work, local reductions, the combine step of a collective) and a router on the network-on-chip.
Slices sit on chiplets, chiplets on cards.

Sources (public, none of them a confirmed specification; docs/hardware.md has the full list):
  [HC25]   d-Matrix at Hot Chips 2025 (as reported by ServeTheHome): a Corsair card is two packages of four
           chiplets (8 chiplets), TSMC 6 nm, 2 GB of SRAM on the card; slices on each chiplet; 8 cards a server.
  [SC24]   d-Matrix Corsair launch, SC24 (chipsandcheese.com, "d-Matrix Corsair: 256GB of LPDDR for inference"):
           2.4 PFLOPS MXINT8 (9.6 PFLOPS MXINT4) per card; the card's SRAM delivers ~150 TB/s.
  [DMPAGE] d-Matrix product page (2023), as quoted by vengineer.hatenablog.com: 256 DIMC cores per chiplet,
           2048 per card.
  [PRESS]  d-Matrix press material and patent descriptions (not confirmed specifications): a slice's DIMC unit
           does 512 MACs per clock; a SIMD unit post-processes DIMC output and computes softmax; slices talk
           over a multicast network-on-chip.
Everything else is *assumed* (said so at the field). One parameter, `network.hop_latency_cycles` of the
corsair-like preset, is *calibrated* on one published point (see `CALIBRATION` and `normfuse_ref.hw.study`).

A machine is loaded from a preset name or a TOML file (`load_hardware`): the file overrides a base preset
(`base = "toy"`, default "corsair-like") section by section; listing every field gives a full specification.
Unknown keys, wrong types, and zero or negative sizes raise ValueError naming the dotted field.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CALIBRATION",
    "PRESETS",
    "ChipConfig",
    "ClockConfig",
    "DIMCConfig",
    "HardwareConfig",
    "LayoutConfig",
    "MemoryConfig",
    "NetworkConfig",
    "SIMDConfig",
    "Topology",
    "get_hardware",
    "hardware_from_dict",
    "load_hardware",
    "with_overrides",
]

Topology = Literal["mesh2d", "ring", "tree"]
TOPOLOGIES: tuple[str, ...] = ("mesh2d", "ring", "tree")


def _check(obj: Any, section: str, *, zero_ok: tuple[str, ...] = ()) -> None:
    """Every numeric field > 0 (or >= 0 for the names in zero_ok), ints really ints: ValueError naming the field."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        name = f"{section}.{f.name}"
        if f.type in ("int", int):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"hardware field {name} must be an integer; got {v!r}")
        elif f.type in ("float", float):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"hardware field {name} must be a finite number; got {v!r}")
        else:
            continue
        if f.name in zero_ok:
            if v < 0:
                raise ValueError(f"hardware field {name} must be >= 0; got {v!r}")
        elif v <= 0:
            raise ValueError(f"hardware field {name} must be > 0; got {v!r}")


@dataclass(frozen=True)
class ClockConfig:
    """One clock for the whole machine."""

    # GHz. Derived from [SC24] + [DMPAGE] + [PRESS]: 2.4e15 FLOP/s / (2 FLOP/MAC x 2048 slices x 512 MAC/cycle)
    # = 1.144 GHz, assuming one DIMC core = one slice and the MXINT8 peak counts 2 FLOP per MAC.
    ghz: float = 1.144

    def __post_init__(self) -> None:
        _check(self, "clock")

    @property
    def ns_per_cycle(self) -> float:
        return 1.0 / self.ghz


@dataclass(frozen=True)
class ChipConfig:
    """How slices are packaged. Used for reporting capacity (how many cards a model needs), not for timing."""

    slices_per_chiplet: int = 256  # slices; [DMPAGE]: 256 DIMC cores per chiplet
    chiplets_per_card: int = 8  # chiplets; [HC25]: two packages x four chiplets

    def __post_init__(self) -> None:
        _check(self, "chip")

    @property
    def slices_per_card(self) -> int:
        return self.slices_per_chiplet * self.chiplets_per_card


@dataclass(frozen=True)
class DIMCConfig:
    """One slice's in-memory-compute unit: holds weight tiles and multiplies a row vector by them."""

    tile_rows: int = 64  # K rows of one weight tile (the input chunk one tile consumes); assumed
    tile_cols: int = 64  # N columns of one weight tile (outputs one tile produces); assumed
    macs_per_cycle: int = 512  # multiply-accumulates per cycle per slice; [PRESS] (patents/press)
    # cycles from the first input element to the first output, incl. delivering the input row to the tiles
    # over the multicast network; assumed
    pipeline_latency_cycles: int = 16
    # cycles per level of the adder tree that sums the partial products of the K tiles of one output column;
    # assumed (one pipelined adder stage)
    adder_level_cycles: int = 1

    def __post_init__(self) -> None:
        _check(self, "dimc", zero_ok=("pipeline_latency_cycles", "adder_level_cycles"))

    @property
    def tile_cycles(self) -> int:
        """Cycles for one input row against one tile: tile_rows x tile_cols MACs at macs_per_cycle."""
        return -(-self.tile_rows * self.tile_cols // self.macs_per_cycle)


@dataclass(frozen=True)
class SIMDConfig:
    """One slice's vector unit. Costs are issue cycles per `lanes`-wide vector instruction."""

    lanes: int = 64  # elements per vector instruction; assumed (= layout.elems_per_slice: one instruction per chunk)
    pipeline_latency_cycles: int = 8  # fill/drain of the vector pipeline per operation; assumed
    add_cycles: int = 1  # add / subtract; assumed
    mul_cycles: int = 1  # multiply; assumed
    max_cycles: int = 1  # compare / max / select; assumed
    exp_cycles: int = 4  # exp (table + polynomial); assumed
    rsqrt_cycles: int = 8  # 1/sqrt (table + Newton steps); assumed
    reciprocal_cycles: int = 4  # 1/x (table + Newton step); assumed

    def __post_init__(self) -> None:
        _check(self, "simd", zero_ok=("pipeline_latency_cycles",))

    def op_cycles(self, op: str) -> int:
        """Issue cycles of one vector instruction: op in add, mul, max, exp, rsqrt, recip."""
        return {
            "add": self.add_cycles,
            "mul": self.mul_cycles,
            "max": self.max_cycles,
            "exp": self.exp_cycles,
            "rsqrt": self.rsqrt_cycles,
            "recip": self.reciprocal_cycles,
        }[op]


@dataclass(frozen=True)
class LayoutConfig:
    """How a vector is spread over slices: the last axis in chunks of `elems_per_slice`, one chunk per slice."""

    # elements of one row vector held by one slice; assumed = dimc.tile_rows, so a slice holds exactly the
    # chunk of x that one row of weight tiles consumes (a d = 4096 vector spans 64 slices)
    elems_per_slice: int = 64

    def __post_init__(self) -> None:
        _check(self, "layout")


@dataclass(frozen=True)
class NetworkConfig:
    """The network-on-chip that carries collectives (reduce, broadcast, all-reduce) and partial sums.

    A collective over P slices takes `steps(P)` hops each way; steps depend on the topology:
      ring    bidirectional ring, root in the middle: ceil((P - 1) / 2)
      mesh2d  P slices as a near-square a x b block, dimension-ordered toward the centre: ceil((a-1)/2) + ceil((b-1)/2)
      tree    a reduction tree (fat tree / H-tree): ceil(log2 P)
    """

    topology: Topology = "mesh2d"  # assumed: slices tile a chiplet as a 2-D grid
    # cycles per reduction step: router + link + arrival synchronisation, averaged over on- and off-chiplet
    # links. CALIBRATED (the only calibrated parameter): see CALIBRATION
    hop_latency_cycles: int = 219
    link_bytes_per_cycle: int = 32  # bytes a link carries per cycle (256-bit links); assumed
    word_bytes: int = 4  # bytes of one partial statistic / partial sum on the wire (fp32); assumed

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(
                f"hardware field network.topology must be one of {', '.join(TOPOLOGIES)}; got {self.topology!r}"
            )
        _check(self, "network", zero_ok=("hop_latency_cycles",))


@dataclass(frozen=True)
class MemoryConfig:
    """Each slice's SRAM: capacity, the rate it feeds weights to the DIMC array, and the data widths."""

    # bytes per slice; [HC25] 2 GB per card / [DMPAGE] 2048 slices per card = 1 MiB
    sram_bytes_per_slice: int = 1 << 20
    # bytes per cycle per slice from SRAM into the DIMC array; derived: [SC24] 150 TB/s / 2048 slices / 1.144 GHz
    # = 64 B/cycle. With 512 MAC/cycle this makes batch-1 decode weight-bandwidth bound (8 MACs per weight byte
    # to saturate), as d-Matrix says of token generation [HC25]
    sram_bytes_per_cycle: int = 64
    # share of SRAM that holds weights; assumed (the rest: KV cache and activations). Weights are packed densely:
    # each slice holds floor(share x SRAM / tile bytes) tiles, so a model fills the fewest slices (weight-stationary)
    weight_fraction: float = 0.75
    weight_bits: int = 8  # bits per weight (MXINT8, the format of the 2.4 PFLOPS figure [SC24])
    kv_bits: int = 8  # bits per cached key/value element; assumed
    act_bits: int = 16  # bits per activation element, for the bytes accounting; assumed

    def __post_init__(self) -> None:
        _check(self, "memory")
        if self.weight_fraction > 1:
            raise ValueError(f"hardware field memory.weight_fraction must be <= 1; got {self.weight_fraction!r}")


@dataclass(frozen=True)
class HardwareConfig:
    """The whole machine. Derived quantities are properties; see costs.py for the timing formulas."""

    name: str = "corsair-like"
    clock: ClockConfig = field(default_factory=ClockConfig)
    chip: ChipConfig = field(default_factory=ChipConfig)
    dimc: DIMCConfig = field(default_factory=DIMCConfig)
    simd: SIMDConfig = field(default_factory=SIMDConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    @property
    def tile_bytes(self) -> int:
        """Bytes of one weight tile."""
        return -(-self.dimc.tile_rows * self.dimc.tile_cols * self.memory.weight_bits // 8)

    @property
    def kv_tile_bytes(self) -> int:
        """Bytes of one tile of cached keys/values."""
        return -(-self.dimc.tile_rows * self.dimc.tile_cols * self.memory.kv_bits // 8)

    @property
    def weight_tiles_per_slice(self) -> int:
        """Weight tiles one slice holds (dense packing); at least 1."""
        return max(1, int(self.memory.weight_fraction * self.memory.sram_bytes_per_slice) // self.tile_bytes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {
    "clock": ClockConfig,
    "chip": ChipConfig,
    "dimc": DIMCConfig,
    "simd": SIMDConfig,
    "layout": LayoutConfig,
    "network": NetworkConfig,
    "memory": MemoryConfig,
}

#: The one calibrated parameter, the one published point, and how it was fitted (normfuse_ref.hw.study.calibrate).
CALIBRATION: dict[str, Any] = {
    "parameter": "network.hop_latency_cycles",
    "point": "llama2-7b, decode, batch 1, context 2048",
    "target": "baseline collective share of latency = 20%",
    "source": "Salmani & Soloveychik, arXiv 2502.17728, abstract: collective operations slow down inference "
    "on Transformers by approximately 20%",
    "method": "smallest integer hop latency whose emulated share reaches the target (bisection)",
}

PRESETS: dict[str, HardwareConfig] = {
    # One Corsair-style machine with as many cards as the model needs (weights resident, packed densely).
    "corsair-like": HardwareConfig(),
    # A small machine for teaching and tests: tiles, vectors and collectives small enough to see one by one.
    "toy": HardwareConfig(
        name="toy",
        clock=ClockConfig(ghz=1.0),
        chip=ChipConfig(slices_per_chiplet=16, chiplets_per_card=1),
        dimc=DIMCConfig(tile_rows=8, tile_cols=8, macs_per_cycle=16, pipeline_latency_cycles=2, adder_level_cycles=1),
        simd=SIMDConfig(lanes=8, pipeline_latency_cycles=2, exp_cycles=4, rsqrt_cycles=6, reciprocal_cycles=4),
        layout=LayoutConfig(elems_per_slice=8),
        network=NetworkConfig(topology="ring", hop_latency_cycles=4, link_bytes_per_cycle=8, word_bytes=4),
        memory=MemoryConfig(sram_bytes_per_slice=4096, sram_bytes_per_cycle=8, weight_fraction=0.75),
    ),
}


def get_hardware(name: str) -> HardwareConfig:
    """A preset by name; ValueError listing the presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown hardware preset {name!r}; known: {', '.join(PRESETS)}") from None


def with_overrides(base: HardwareConfig, overrides: Mapping[str, Any]) -> HardwareConfig:
    """`base` with some fields replaced: {"network": {"hop_latency_cycles": 8}, "name": "mine"}.

    ValueError names the dotted field for unknown keys, wrong types and out-of-range values.
    """
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "name":
            if not isinstance(value, str) or not value:
                raise ValueError(f"hardware field name must be a non-empty string; got {value!r}")
            changes["name"] = value
            continue
        if key not in _SECTIONS:
            raise ValueError(f"unknown hardware field {key!r}; known sections: {', '.join(_SECTIONS)}")
        if not isinstance(value, Mapping):
            raise ValueError(f"hardware field {key} must be a table of fields; got {value!r}")
        cls = _SECTIONS[key]
        known = {f.name for f in dataclasses.fields(cls)}
        for k in value:
            if k not in known:
                raise ValueError(f"unknown hardware field '{key}.{k}'; known: {', '.join(sorted(known))}")
        changes[key] = dataclasses.replace(getattr(base, key), **dict(value))
    return dataclasses.replace(base, **changes)


def hardware_from_dict(spec: Mapping[str, Any], *, default_name: str = "custom") -> HardwareConfig:
    """A machine from a parsed TOML document: `base` (preset name, default corsair-like) plus overrides."""
    spec = dict(spec)
    base_name = spec.pop("base", "corsair-like")
    if not isinstance(base_name, str):
        raise ValueError(f"hardware field base must be a preset name; got {base_name!r}")
    base = get_hardware(base_name)
    spec.setdefault("name", default_name)
    return with_overrides(base, spec)


def load_hardware(spec: str) -> HardwareConfig:
    """A preset name, or the path of a TOML file. ValueError (one line) for anything wrong with it."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if not path.suffix == ".toml" and not path.exists():
        raise ValueError(f"unknown hardware {spec!r}; give a preset ({', '.join(PRESETS)}) or a .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read hardware file {spec}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"hardware file {spec} is not valid TOML: {exc}") from None
    try:
        return hardware_from_dict(doc, default_name=path.stem)
    except TypeError as exc:  # dataclasses.replace with a bad keyword slips through only if a check is missing
        raise ValueError(f"hardware file {spec}: {exc}") from None
