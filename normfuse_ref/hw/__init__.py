"""The SIMD/DIMC machine: hardware configuration, cost formulas, the tile emulator and its timeline.

config     one frozen dataclass per part of the machine, presets, TOML loading
costs      the hardware formulas (cycles from shapes and parameters)
emulator   EmulatingExecutor: the forward pass run slice by slice, numeric or cost-only; the ordering rule
timeline   events, critical path, collective time exposed vs hidden, Chrome trace
study      baseline vs fused on a model: compare, the paper check, calibration, sweeps
"""

from .config import CALIBRATION, PRESETS, HardwareConfig, get_hardware, load_hardware, with_overrides
from .emulator import EmulatingExecutor, Value, dummy
from .timeline import ENGINES, KINDS, Event, Timeline, chrome_trace

__all__ = [
    "CALIBRATION",
    "ENGINES",
    "KINDS",
    "PRESETS",
    "EmulatingExecutor",
    "Event",
    "HardwareConfig",
    "Timeline",
    "Value",
    "chrome_trace",
    "dummy",
    "get_hardware",
    "load_hardware",
    "with_overrides",
]
