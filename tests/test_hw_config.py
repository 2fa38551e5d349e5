"""Hardware configuration: presets, TOML loading (partial and full), and one clear error per mistake."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from normfuse_ref.hw.config import (
    LEVELS,
    PRESETS,
    HardwareConfig,
    field_value,
    get_hardware,
    load_hardware,
    with_overrides,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hardware.md"


def write(tmp_path: Path, text: str, name: str = "hw.toml") -> str:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def all_fields(obj: Any, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out |= all_fields(v, f"{prefix}{f.name}.")
        elif prefix:
            out[f"{prefix}{f.name}"] = v
    return out


def test_presets_are_valid_and_named() -> None:
    assert set(PRESETS) == {"corsair-like", "toy", "corsair-fitted"}
    for name, hw in PRESETS.items():
        assert hw.name == name
    assert get_hardware("toy") is PRESETS["toy"]
    with pytest.raises(ValueError, match="unknown hardware preset 'nope'; known: corsair-like, toy, corsair-fitted"):
        get_hardware("nope")


def test_nothing_is_fitted_in_the_physical_presets() -> None:
    assert PRESETS["corsair-like"].fitted == () and PRESETS["toy"].fitted == ()
    (note,) = PRESETS["corsair-fitted"].fitted
    assert "fitted" in note and "network.noc.hop_ns" in note


def test_corsair_like_derived_figures_match_the_public_numbers() -> None:
    hw = PRESETS["corsair-like"]
    assert hw.slices_per_card == 2048  # [DMPAGE] 256 DIMC cores per chiplet x 8 chiplets [HC25]
    assert hw.cards_per_server == 8 and hw.network.bridge.fanout == 2  # [HC25], [PRESS] bridged pairs
    ghz = hw.clock.ghz * 1e9
    # 2.4 PFLOPS MXINT8 per card = 2 FLOP/MAC x slices x MACs/cycle x clock, within the rounding of the clock
    assert 2 * hw.slices_per_card * hw.dimc.macs_per_cycle * ghz == pytest.approx(2.4e15, rel=1e-3)
    # 2 GB of SRAM per card at ~150 TB/s; 256 GB of LPDDR at ~400 GB/s [SC24]
    assert hw.slices_per_card * hw.memory.sram_bytes_per_slice == 2 * 2**30
    assert hw.slices_per_card * hw.memory.sram_bytes_per_cycle * ghz == pytest.approx(150e12, rel=0.01)
    assert hw.memory.lpddr_bytes_per_card == 256e9 and hw.memory.lpddr_gbps_per_card == 400
    assert hw.network.pcie.link_gbps == pytest.approx(63, abs=1)  # [PCIE5] x16 each way
    assert hw.network.nic.hop_ns == 2000  # [PRESS] a ~2 us NIC
    assert hw.network.noc.hop_ns * hw.clock.ghz == pytest.approx(3, abs=0.05)  # "a few cycles"


def test_every_field_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name in all_fields(PRESETS["corsair-like"]):
        leaf = name if not name.startswith("network.") or name.count(".") == 1 else name.split(".")[-1]
        assert f"`{name}`" in text or f"`{leaf}`" in text, f"docs/hardware.md does not describe {name}"
    for level in LEVELS:
        assert f"`network.{level}`" in text


def test_toml_partial_override_of_the_default_preset(tmp_path: Path) -> None:
    hw = load_hardware(write(tmp_path, '[network]\nalgorithm = "ring"\n[network.noc]\nhop_ns = 8\n[clock]\nghz = 2\n'))
    base = PRESETS["corsair-like"]
    assert hw.name == "hw"  # the file name, unless `name` says otherwise
    assert (hw.network.algorithm, hw.network.noc.hop_ns, hw.clock.ghz) == ("ring", 8, 2.0)
    assert hw.network.noc.fanout == base.network.noc.fanout and hw.network.d2d == base.network.d2d
    assert hw.dimc == base.dimc and hw.fitted == ()


def test_toml_base_and_name(tmp_path: Path) -> None:
    hw = load_hardware(write(tmp_path, 'base = "toy"\nname = "mine"\n[simd]\nexp_cycles = 9\n'))
    assert hw.name == "mine" and hw.simd.exp_cycles == 9
    assert hw.dimc == PRESETS["toy"].dimc


def toml_value(v: object) -> str:
    return f'"{v}"' if isinstance(v, str) else repr(v)


def test_toml_full_spec_round_trips(tmp_path: Path) -> None:
    """A file listing every field is a full specification, whatever the base."""
    toy = PRESETS["toy"]
    lines = ['base = "corsair-like"', 'name = "toy"']
    for section in ("clock", "dimc", "simd", "memory"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in dataclasses.asdict(getattr(toy, section)).items()]
    lines += ["[network]", f'algorithm = "{toy.network.algorithm}"']
    for level in LEVELS:
        lines.append(f"[network.{level}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in dataclasses.asdict(getattr(toy.network, level)).items()]
    assert load_hardware(write(tmp_path, "\n".join(lines) + "\n")) == toy


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[network.noc]\nhop_nss = 3\n", "unknown hardware field 'network.noc.hop_nss'"),
        ("[netwrk]\nhop = 3\n", "unknown hardware field 'netwrk'"),
        ("[network.lan]\nhop_ns = 3\n", "unknown hardware field 'network.lan'"),
        ("[dimc]\nmacs_per_cycle = 0\n", "hardware field dimc.macs_per_cycle must be > 0; got 0"),
        ("[dimc]\ntile_rows = -64\n", "hardware field dimc.tile_rows must be > 0; got -64"),
        ("[network.pcie]\nhop_ns = -1\n", "hardware field network.pcie.hop_ns must be >= 0; got -1"),
        ("[network.d2d]\nlink_gbps = 0\n", "hardware field network.d2d.link_gbps must be > 0; got 0"),
        ("[network.noc]\nfanout = 2.5\n", "hardware field network.noc.fanout must be an integer; got 2.5"),
        ("[simd]\nlanes = true\n", "hardware field simd.lanes must be an integer; got True"),
        ('[clock]\nghz = "fast"\n', "hardware field clock.ghz must be a finite number; got 'fast'"),
        ('[network.noc]\ntopology = "torus"\n', "hardware field network.noc.topology must be one of mesh2d"),
        ('[network]\nalgorithm = "magic"\n', "hardware field network.algorithm must be one of tree, ring, gather"),
        ("network = 3\n", "hardware field network must be a table of fields"),
        ("[network]\nnoc = 3\n", "hardware field network.noc must be a table of fields"),
        ("fitted = 3\n", "hardware field fitted must be a list of strings"),
        ('base = "nope"\n', "unknown hardware preset 'nope'"),
        ("[clock\nghz = 1\n", "is not valid TOML"),
        # beyond what any machine has, where the emulator's costs overflowed or the mapper ran out of memory
        ("[clock]\nghz = 1e308\n", "hardware field clock.ghz must lie between 1e-06 and 1e+12; got 1e+308"),
        ("[network.noc]\nlink_gbps = 1e-320\n", "hardware field network.noc.link_gbps must lie between 1e-06 and"),
        ("[network.nic]\nfanout = 10000000000000\n", "hardware field network.nic.fanout must lie between"),
        ("[network.nic]\nfanout = 1000000000\n", "the network has 1.64e+13 slices in all"),
    ],
)
def test_toml_mistakes_name_the_field(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        load_hardware(write(tmp_path, text))


def test_unknown_preset_missing_binary_or_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown hardware 'warp-drive'; give a preset"):
        load_hardware("warp-drive")
    with pytest.raises(ValueError, match=re.escape("cannot read /no/such/dir/hw.toml")):
        load_hardware("/no/such/dir/hw.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match="is not a UTF-8 text file, so not a TOML hardware description"):
        load_hardware(str(tmp_path / "bin.toml"))
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        load_hardware(str(tmp_path / "dir.toml"))


def test_with_overrides_and_field_value() -> None:
    hw = with_overrides(PRESETS["toy"], {"network": {"noc": {"hop_ns": 0}}})
    assert hw.network.noc.hop_ns == 0 and hw.dimc == PRESETS["toy"].dimc
    assert field_value(hw, "network.noc.hop_ns") == 0 and field_value(hw, "simd.lanes") == 8
    with pytest.raises(ValueError, match=re.escape("unknown hardware field 'network.noc.hops'")):
        field_value(hw, "network.noc.hops")
    with pytest.raises(ValueError, match="is a section"):
        field_value(hw, "network.noc")
    with pytest.raises(ValueError, match=re.escape("hardware field simd.lanes must be > 0")):
        with_overrides(PRESETS["toy"], {"simd": {"lanes": 0}})


def test_machines_are_hashable_and_compare_by_value() -> None:
    a = with_overrides(PRESETS["corsair-like"], {"network": {"noc": {"hop_ns": 3.0}}})
    b = with_overrides(PRESETS["corsair-like"], {"network": {"noc": {"hop_ns": 3.0}}})
    assert a == b and hash(a) == hash(b) and isinstance(a, HardwareConfig)


def test_a_hardware_file_that_is_no_regular_file_or_too_large_is_refused_unread(tmp_path: Path) -> None:
    """/dev/zero would be read until memory ran out, a FIFO waited on forever."""
    import os

    from normfuse_ref.fields import MAX_TEXT_FILE

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        with pytest.raises(ValueError, match="is not a regular file, so not a TOML hardware description"):
            load_hardware(path)
    big = tmp_path / "big.toml"
    with big.open("wb") as f:
        f.truncate(MAX_TEXT_FILE + 1)  # sparse: no disk used
    with pytest.raises(ValueError, match="MiB, too large for a TOML hardware description"):
        load_hardware(str(big))
