"""The emulated machine's parameters: one frozen dataclass per part, every field with its unit and its source.

A SIMD/DIMC machine in the d-Matrix Corsair style is a hierarchy of *slices*. Each slice has one DIMC unit
(digital in-memory compute: weight tiles, multiply-accumulate, an adder tree), one SIMD unit (elementwise work,
local reductions, the combine step of a collective) and its share of SRAM. Slices sit on chiplets, chiplets on
cards, cards in bridged pairs, pairs in servers, servers in a rack; each of those five groupings is one *level* of
the network, with its own topology, hop latency and link bandwidth (`NetworkConfig`).

Sources (public, none of them a confirmed specification; docs/hardware.md has the full list):
  [HC25]   d-Matrix at Hot Chips 2025 (as reported by ServeTheHome): a Corsair card is two packages of four
           chiplets (8 chiplets), 2 GB of SRAM on the card; slices on each chiplet; 8 cards a server.
  [SC24]   d-Matrix Corsair launch, SC24 (chipsandcheese.com, "d-Matrix Corsair: 256GB of LPDDR for inference"):
           2.4 PFLOPS MXINT8 per card; the card's SRAM delivers ~150 TB/s; 256 GB of LPDDR5X at ~400 GB/s;
           PCIe 5.0 x16 host interface.
  [DMPAGE] d-Matrix product page (2023), as quoted by vengineer.hatenablog.com: 256 DIMC cores per chiplet,
           2048 per card.
  [PRESS]  d-Matrix press material and patent descriptions (not confirmed specifications): a slice's DIMC unit
           does 512 MACs per clock; a SIMD unit post-processes DIMC output and computes softmax; two cards are
           bridged (DMX Bridge) into a 16-chiplet all-to-all group; a server NIC of the ~2 us class.
  [PCIE5]  PCI Express 5.0: 32 GT/s per lane, 128b/130b coding, so an x16 link carries ~63 GB/s each way.
Everything else is *assumed* (said so at the field, with the reason for the value). Nothing is fitted by default:
`HardwareConfig.fitted` lists the parameters that were fitted to a published number (empty for the physical
presets); `normfuse_ref.hw.study.calibrate` fits one, on request, and records it there.

A machine is loaded from a preset name or a TOML file (`load_hardware`): the file overrides a base preset
(`base = "toy"`, default "corsair-like") section by section (`[network.noc]` for one level); listing every field
gives a full specification. Unknown keys, wrong types, and out-of-range values raise ValueError naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..fields import text_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ALGORITHMS",
    "FIELD_MAX",
    "FIELD_MIN",
    "LEVELS",
    "MAX_SLICES",
    "PRESETS",
    "TOPOLOGIES",
    "Algorithm",
    "ClockConfig",
    "DIMCConfig",
    "HardwareConfig",
    "LevelConfig",
    "MemoryConfig",
    "NetworkConfig",
    "SIMDConfig",
    "Topology",
    "field_value",
    "get_hardware",
    "hardware_from_dict",
    "load_hardware",
    "with_overrides",
]

Topology = Literal["mesh2d", "all-to-all", "switch"]
TOPOLOGIES: tuple[str, ...] = ("mesh2d", "all-to-all", "switch")
Algorithm = Literal["tree", "ring", "gather"]
ALGORITHMS: tuple[str, ...] = ("tree", "ring", "gather")
#: The network levels, innermost first: slices on a chiplet, chiplets on a card, cards in a bridged pair, pairs in
#: a server, servers in the system.
LEVELS: tuple[str, ...] = ("noc", "d2d", "bridge", "pcie", "nic")


#: The range every numeric hardware field must lie in (besides > 0, or >= 0 where zero is allowed): far beyond any
#: machine's in each direction, and narrow enough that no cost the emulator computes from them overflows (a clock
#: of 1e308 GHz or a link of 1e-320 GB/s made cycle counts infinite; a fanout of 1e9 made the mapper list a
#: billion stage counts). MAX_SLICES bounds the whole network's slices, the product of the five fanouts.
FIELD_MIN, FIELD_MAX = 1e-6, 1e12
MAX_SLICES = 1 << 40


def _check(obj: Any, section: str, *, zero_ok: tuple[str, ...] = ()) -> None:
    """Every numeric field > 0 (or >= 0 for the names in zero_ok) and within [FIELD_MIN, FIELD_MAX], ints really
    ints: ValueError naming the field."""
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
        if v > FIELD_MAX or 0 < v < FIELD_MIN:
            raise ValueError(f"hardware field {name} must lie between {FIELD_MIN:g} and {FIELD_MAX:g}; got {v!r}")


def _choice(value: object, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"hardware field {name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class ClockConfig:
    """One clock for the whole machine; every on-chip cost is in its cycles."""

    # GHz. Derived from [SC24] + [DMPAGE] + [PRESS]: 2.4e15 FLOP/s / (2 FLOP/MAC x 2048 slices x 512 MAC/cycle)
    # = 1.144 GHz, assuming one DIMC core = one slice and the MXINT8 peak counts 2 FLOP per MAC.
    ghz: float = 1.144

    def __post_init__(self) -> None:
        _check(self, "clock")

    @property
    def ns_per_cycle(self) -> float:
        return 1.0 / self.ghz


@dataclass(frozen=True)
class DIMCConfig:
    """One slice's in-memory-compute unit: holds weight tiles and multiplies input rows by them."""

    tile_rows: int = 64  # K rows of one tile (the input chunk one tile consumes); assumed
    tile_cols: int = 64  # N columns of one tile (outputs one tile produces); assumed
    macs_per_cycle: int = 512  # multiply-accumulates per cycle per slice; [PRESS]
    # cycles from the first input element to the first output (fill of the multiply and adder pipeline); assumed
    pipeline_latency_cycles: int = 16
    # cycles per level of the adder tree that sums the partial products of a slice's K tiles; assumed (one
    # pipelined adder stage per level)
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

    lanes: int = 64  # elements per vector instruction; assumed (= dimc.tile_cols: one instruction per tile output)
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
class MemoryConfig:
    """Each slice's SRAM (capacity, and the rate it feeds the DIMC array), each card's LPDDR, and data widths."""

    # bytes per slice; [HC25] 2 GB per card / [DMPAGE] 2048 slices per card = 1 MiB
    sram_bytes_per_slice: int = 1 << 20
    # bytes per cycle per slice from SRAM into the DIMC array; derived: [SC24] 150 TB/s / 2048 slices / 1.144 GHz
    # = 64 B/cycle. With 512 MAC/cycle a slice needs 8 input rows per weight byte to be compute-bound, so batch-1
    # decode is weight-bandwidth bound, as d-Matrix says of token generation [HC25]
    sram_bytes_per_cycle: int = 64
    # bytes of LPDDR per card, the off-chip tier for KV cache that does not fit in SRAM; [SC24] 256 GB
    lpddr_bytes_per_card: int = 256 * 10**9
    # GB/s (bytes per ns) of LPDDR per card, shared by the card's slices; [SC24] ~400 GB/s
    lpddr_gbps_per_card: float = 400.0
    weight_bits: int = 8  # bits per weight: MXINT8, the format of the 2.4 PFLOPS figure [SC24]
    kv_bits: int = 8  # bits per cached key/value element; assumed (the weights' format)
    act_bits: int = 16  # bits per activation element moved between slices or held in SRAM; assumed
    # bytes of one partial statistic or partial sum on the wire; assumed fp32 (sums accumulate wider than storage)
    word_bytes: int = 4

    def __post_init__(self) -> None:
        _check(self, "memory")


@dataclass(frozen=True)
class LevelConfig:
    """One level of the network hierarchy (after ASTRA-sim's multi-dimensional network description).

    fanout: units of the level below in one unit of this level (slices per chiplet for `noc`, chiplets per card
        for `d2d`, cards per bridged pair for `bridge`, pairs per server for `pcie`, servers for `nic`).
    topology: how those units are wired: "mesh2d" (a near-square grid, neighbour links, dimension-ordered routes),
        "all-to-all" (a direct link between every pair) or "switch" (one link from each unit to a switch that
        forwards and multicasts; messages to one unit share its one link).
    hop_ns: latency of one message between neighbouring units (mesh) or any two units (all-to-all, switch):
        link, router or switch, and endpoint; a message crossing k mesh hops pays k x hop_ns.
    link_gbps: GB/s (bytes per ns) of one link, each way; a message of b bytes occupies its link b / link_gbps ns.
    """

    fanout: int
    topology: Topology
    hop_ns: float
    link_gbps: float

    def check(self, section: str) -> None:
        _check(self, section, zero_ok=("hop_ns",))
        _choice(self.topology, f"{section}.topology", TOPOLOGIES)


@dataclass(frozen=True)
class NetworkConfig:
    """The five levels of the network and the collective algorithm every cross-slice reduction uses.

    A collective over a group of slices crosses the levels its slices span (a group inside one chiplet uses the
    NoC only; a group over a whole card also the die-to-die links). Algorithms (costs in `network.py`):
      tree    a tree of partials: each level reduces toward one root per unit, then the result is broadcast back
      ring    at each level a ring: reduce-scatter then all-gather (2 (p - 1) steps of 1/p of the payload)
      gather  gather-to-one: raw elements travel to one root, which reduces them all and broadcasts the result
              (the paper's "all vector elements must be aggregated into a single location"; its cost grows with
              the vector length)
    """

    # slice network-on-chip: [DMPAGE] 256 slices a chiplet, assumed a 16 x 16 mesh; a hop of 3 cycles
    # (2.6 ns: router + link, what an on-chip router pipeline costs, assumed); 256-bit links at the core clock
    # (32 B/cycle = 36.6 GB/s, assumed)
    noc: LevelConfig = field(default_factory=lambda: LevelConfig(256, "mesh2d", 2.6, 36.6))
    # die to die inside a card: [HC25] 8 chiplets; all-to-all assumed (a bridged pair is a 16-chiplet all-to-all
    # group [PRESS], so the card's 8 are too); tens of ns a hop (20 ns: PHY, adapter and NoC bridging, assumed);
    # 128 GB/s a link (assumed, die-to-die links of this era carry ~100-500 GB/s)
    d2d: LevelConfig = field(default_factory=lambda: LevelConfig(8, "all-to-all", 20.0, 128.0))
    # card to card over the bridge: [PRESS] two cards a bridged group, all-to-all; 500 ns a hop (assumed: an
    # off-package serial link with its protocol, "hundreds of ns"); 64 GB/s a link (assumed, PCIe 5.0 x16 class)
    bridge: LevelConfig = field(default_factory=lambda: LevelConfig(2, "all-to-all", 500.0, 64.0))
    # bridged pairs in a server over PCIe: [HC25] 8 cards a server = 4 pairs; a PCIe switch; 1 us a hop (assumed:
    # peer-to-peer through a PCIe switch with DMA set-up); [PCIE5] 63 GB/s each way for x16
    pcie: LevelConfig = field(default_factory=lambda: LevelConfig(4, "switch", 1000.0, 63.0))
    # servers in a rack over Ethernet: 8 servers (assumed: one rack); [PRESS] a ~2 us NIC; 50 GB/s (assumed:
    # 400 Gb/s Ethernet)
    nic: LevelConfig = field(default_factory=lambda: LevelConfig(8, "switch", 2000.0, 50.0))
    # the collective algorithm; assumed "tree" (the lowest-latency choice for the short vectors of normalisation
    # statistics); a parameter so that sweeps can compare
    algorithm: Algorithm = "tree"

    def __post_init__(self) -> None:
        for name in LEVELS:
            level = getattr(self, name)
            if not isinstance(level, LevelConfig):
                raise ValueError(f"hardware field network.{name} must be a table of fields; got {level!r}")
            level.check(f"network.{name}")
        _choice(self.algorithm, "network.algorithm", ALGORITHMS)
        slices = math.prod(level.fanout for level in self.levels())
        if slices > MAX_SLICES:
            raise ValueError(
                f"the network has {slices:.3g} slices in all (the product of its five fanouts); the emulator takes "
                "at most 2**40"
            )

    def levels(self) -> tuple[LevelConfig, ...]:
        return tuple(getattr(self, name) for name in LEVELS)


@dataclass(frozen=True)
class HardwareConfig:
    """The whole machine. Derived quantities are properties; the cost formulas are in costs.py and network.py."""

    name: str = "corsair-like"
    clock: ClockConfig = field(default_factory=ClockConfig)
    dimc: DIMCConfig = field(default_factory=DIMCConfig)
    simd: SIMDConfig = field(default_factory=SIMDConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # the parameters fitted to a published number, each "dotted.field: what it was fitted to"; empty for a
    # physical machine. Every output prints it.
    fitted: tuple[str, ...] = ()

    @property
    def slices_per_chiplet(self) -> int:
        return self.network.noc.fanout

    @property
    def slices_per_card(self) -> int:
        return self.network.noc.fanout * self.network.d2d.fanout

    @property
    def cards_per_server(self) -> int:
        return self.network.bridge.fanout * self.network.pcie.fanout

    @property
    def max_cards(self) -> int:
        """Every card of the system: cards a server x servers."""
        return self.cards_per_server * self.network.nic.fanout

    @property
    def tile_bytes(self) -> int:
        """Bytes of one weight tile."""
        return -(-self.dimc.tile_rows * self.dimc.tile_cols * self.memory.weight_bits // 8)

    @property
    def kv_tile_bytes(self) -> int:
        """Bytes of one tile of cached keys/values."""
        return -(-self.dimc.tile_rows * self.dimc.tile_cols * self.memory.kv_bits // 8)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {
    "clock": ClockConfig,
    "dimc": DIMCConfig,
    "simd": SIMDConfig,
    "memory": MemoryConfig,
    "network": NetworkConfig,
}

#: The old regime of normfuse 0.1, kept reachable so that its table can be reproduced: one network step on the
#: card cost 191 ns (219 cycles), *fitted* so that collectives were 20% of llama2-7b decode. Use it with
#: `--mapping dense` (weights packed on the fewest slices). Labelled fitted wherever it shows.
_FITTED_HOP_NS = 191.4
_FITTED = (
    f"network.noc.hop_ns, network.d2d.hop_ns = {_FITTED_HOP_NS} ns: fitted in normfuse 0.1 so that collectives "
    "were 20% of llama2-7b decode (arXiv 2502.17728, abstract); not a physical value",
)

PRESETS: dict[str, HardwareConfig] = {
    # A Corsair-style system: every parameter public or assumed (sources above), nothing fitted.
    "corsair-like": HardwareConfig(),
    # A small machine for teaching and tests: 16 slices a chiplet, 2 chiplets a card, 2 cards; tiles, vectors and
    # collectives small enough to see one by one. Not a model of anything.
    "toy": HardwareConfig(
        name="toy",
        clock=ClockConfig(ghz=1.0),
        dimc=DIMCConfig(tile_rows=8, tile_cols=8, macs_per_cycle=16, pipeline_latency_cycles=2),
        simd=SIMDConfig(lanes=8, pipeline_latency_cycles=2, rsqrt_cycles=6),
        memory=MemoryConfig(sram_bytes_per_slice=4096, sram_bytes_per_cycle=8, lpddr_bytes_per_card=1 << 20),
        network=NetworkConfig(
            noc=LevelConfig(16, "mesh2d", 2.0, 8.0),
            d2d=LevelConfig(2, "all-to-all", 10.0, 16.0),
            bridge=LevelConfig(2, "all-to-all", 50.0, 8.0),
            pcie=LevelConfig(1, "switch", 100.0, 8.0),
            nic=LevelConfig(1, "switch", 200.0, 8.0),
        ),
    ),
    # normfuse 0.1's fitted regime (see _FITTED): corsair-like with the fitted on-card step cost, and two racks
    # (normfuse 0.1 assumed as many cards as dense packing needs: ~80 for a 70B model)
    "corsair-fitted": HardwareConfig(
        name="corsair-fitted",
        network=NetworkConfig(
            noc=LevelConfig(256, "mesh2d", _FITTED_HOP_NS, 36.6),
            d2d=LevelConfig(8, "all-to-all", _FITTED_HOP_NS, 128.0),
            nic=LevelConfig(16, "switch", 2000.0, 50.0),
        ),
        fitted=_FITTED,
    ),
}


def get_hardware(name: str) -> HardwareConfig:
    """A preset by name; ValueError listing the presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown hardware preset {name!r}; known: {', '.join(PRESETS)}") from None


def _replace(obj: Any, section: str, changes: Mapping[str, Any]) -> Any:
    """dataclasses.replace with every key checked: unknown fields and nested tables named by their dotted path."""
    known = {f.name: f for f in dataclasses.fields(obj)}
    out: dict[str, Any] = {}
    for k, v in changes.items():
        if k not in known:
            raise ValueError(f"unknown hardware field '{section}.{k}'; known: {', '.join(sorted(known))}")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, Mapping):
                raise ValueError(f"hardware field {section}.{k} must be a table of fields; got {v!r}")
            v = _replace(current, f"{section}.{k}", v)
        out[k] = v
    try:
        new = dataclasses.replace(obj, **out)
    except TypeError as exc:  # pragma: no cover - every key is checked above
        raise ValueError(f"hardware section {section}: {exc}") from None
    if isinstance(new, LevelConfig):
        new.check(section)
    return new


def with_overrides(base: HardwareConfig, overrides: Mapping[str, Any]) -> HardwareConfig:
    """`base` with some fields replaced: {"network": {"noc": {"hop_ns": 8}}, "name": "mine"}.

    ValueError names the dotted field for unknown keys, wrong types and out-of-range values.
    """
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "name":
            if not isinstance(value, str) or not value:
                raise ValueError(f"hardware field name must be a non-empty string; got {value!r}")
            changes["name"] = value
            continue
        if key == "fitted":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"hardware field fitted must be a list of strings; got {value!r}")
            changes["fitted"] = tuple(value)
            continue
        if key not in _SECTIONS:
            raise ValueError(f"unknown hardware field {key!r}; known sections: {', '.join(_SECTIONS)}")
        if not isinstance(value, Mapping):
            raise ValueError(f"hardware field {key} must be a table of fields; got {value!r}")
        changes[key] = _replace(getattr(base, key), key, value)
    return dataclasses.replace(base, **changes)


def field_value(hw: HardwareConfig, dotted: str) -> Any:
    """The value of a dotted field ("network.noc.hop_ns"); ValueError naming it if there is no such field."""
    obj: Any = hw
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise ValueError(f"unknown hardware field {dotted!r}")
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        raise ValueError(f"hardware field {dotted!r} is a section, not a value")
    return obj


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """{"network": {"noc": {"hop_ns": value}}} from "network.noc.hop_ns", for with_overrides."""
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


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
    if path.is_dir():
        raise ValueError(f"hardware file {spec} is a directory")
    text = text_file(path, "a TOML hardware description")  # a FieldError (a ValueError) naming the file
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"hardware file {spec} is not valid TOML: {exc}") from None
    return hardware_from_dict(doc, default_name=path.stem)
