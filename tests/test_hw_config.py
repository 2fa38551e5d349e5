"""Hardware configuration: presets, TOML loading (partial and full), and one clear error per mistake."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from normfuse_ref.hw.config import (
    CALIBRATION,
    PRESETS,
    HardwareConfig,
    get_hardware,
    load_hardware,
    with_overrides,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hardware.md"


def write(tmp_path: Path, text: str, name: str = "hw.toml") -> str:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def all_fields(hw: HardwareConfig) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(hw):
        part = getattr(hw, f.name)
        if dataclasses.is_dataclass(part):
            for g in dataclasses.fields(part):
                out[f"{f.name}.{g.name}"] = getattr(part, g.name)
    return out


def test_presets_are_valid_and_named() -> None:
    assert set(PRESETS) == {"corsair-like", "toy"}
    for name, hw in PRESETS.items():
        assert hw.name == name
        assert hw.weight_tiles_per_slice >= 1
    assert get_hardware("toy") is PRESETS["toy"]
    with pytest.raises(ValueError, match="unknown hardware preset 'nope'; known: corsair-like, toy"):
        get_hardware("nope")


def test_corsair_like_derived_figures_match_the_public_numbers() -> None:
    hw = PRESETS["corsair-like"]
    slices = hw.chip.slices_per_card
    assert slices == 2048  # [DMPAGE] 256 DIMC cores per chiplet x 8 chiplets
    # 2.4 PFLOPS MXINT8 per card = 2 FLOP/MAC x slices x MACs/cycle x clock, within the rounding of the clock
    assert 2 * slices * hw.dimc.macs_per_cycle * hw.clock.ghz * 1e9 == pytest.approx(2.4e15, rel=1e-3)
    # 2 GB of SRAM per card, ~150 TB/s
    assert slices * hw.memory.sram_bytes_per_slice == 2 * 2**30
    assert slices * hw.memory.sram_bytes_per_cycle * hw.clock.ghz * 1e9 == pytest.approx(150e12, rel=0.01)


def test_every_field_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name in all_fields(PRESETS["corsair-like"]):
        assert f"`{name}`" in text, f"docs/hardware.md does not describe {name}"
    assert CALIBRATION["parameter"] in text


def test_toml_partial_override_of_the_default_preset(tmp_path: Path) -> None:
    hw = load_hardware(write(tmp_path, '[network]\ntopology = "ring"\nhop_latency_cycles = 8\n[clock]\nghz = 2\n'))
    base = PRESETS["corsair-like"]
    assert hw.name == "hw"  # the file name, unless `name` says otherwise
    assert (hw.network.topology, hw.network.hop_latency_cycles, hw.clock.ghz) == ("ring", 8, 2.0)
    assert hw.dimc == base.dimc and hw.network.link_bytes_per_cycle == base.network.link_bytes_per_cycle


def test_toml_base_and_name(tmp_path: Path) -> None:
    hw = load_hardware(write(tmp_path, 'base = "toy"\nname = "mine"\n[simd]\nexp_cycles = 9\n'))
    assert hw.name == "mine" and hw.simd.exp_cycles == 9
    assert hw.dimc == PRESETS["toy"].dimc


def test_toml_full_spec_round_trips(tmp_path: Path) -> None:
    """A file listing every field is a full specification, whatever the base."""
    toy = PRESETS["toy"]
    lines = ['base = "corsair-like"', 'name = "toy"']
    for section, fields in dataclasses.asdict(toy).items():
        if section == "name":
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in fields.items()]
    assert load_hardware(write(tmp_path, "\n".join(lines) + "\n")) == toy


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[network]\nhop_latncy_cycles = 3\n", "unknown hardware field 'network.hop_latncy_cycles'"),
        ("[netwrk]\nhop_latency_cycles = 3\n", "unknown hardware field 'netwrk'"),
        ("[dimc]\nmacs_per_cycle = 0\n", "hardware field dimc.macs_per_cycle must be > 0; got 0"),
        ("[dimc]\ntile_rows = -64\n", "hardware field dimc.tile_rows must be > 0; got -64"),
        ("[network]\nhop_latency_cycles = -1\n", "hardware field network.hop_latency_cycles must be >= 0; got -1"),
        ("[simd]\nlanes = 8.5\n", "hardware field simd.lanes must be an integer; got 8.5"),
        ("[simd]\nlanes = true\n", "hardware field simd.lanes must be an integer; got True"),
        ('[clock]\nghz = "fast"\n', "hardware field clock.ghz must be a finite number; got 'fast'"),
        ("[memory]\nweight_fraction = 1.5\n", "hardware field memory.weight_fraction must be <= 1; got 1.5"),
        ('[network]\ntopology = "torus"\n', "hardware field network.topology must be one of mesh2d, ring, tree"),
        ("network = 3\n", "hardware field network must be a table of fields"),
        ('base = "nope"\n', "unknown hardware preset 'nope'"),
        ("[clock\nghz = 1\n", "is not valid TOML"),
    ],
)
def test_toml_mistakes_name_the_field(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        load_hardware(write(tmp_path, text))


def test_unknown_preset_or_missing_file() -> None:
    with pytest.raises(ValueError, match="unknown hardware 'warp-drive'; give a preset"):
        load_hardware("warp-drive")
    with pytest.raises(ValueError, match="cannot read hardware file"):
        load_hardware("/no/such/dir/hw.toml")


def test_with_overrides_validates() -> None:
    hw = with_overrides(PRESETS["toy"], {"network": {"hop_latency_cycles": 0}})
    assert hw.network.hop_latency_cycles == 0 and hw.dimc == PRESETS["toy"].dimc
    with pytest.raises(ValueError, match=re.escape("hardware field layout.elems_per_slice must be > 0")):
        with_overrides(PRESETS["toy"], {"layout": {"elems_per_slice": 0}})
