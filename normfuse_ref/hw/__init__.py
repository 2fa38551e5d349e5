"""The SIMD/DIMC machine: its configuration, network, mapping, cost plans, scheduler, kernels and executor.

config     one frozen dataclass per part of the machine (five network levels), presets, TOML loading
network    where a group of slices sits in the hierarchy (Span) and the closed-form costs of collectives and moves
netsim     a message-by-message simulation of one collective: the oracle for network's closed forms
layout     plain records of where things live: Place (activations), Grid (a weight), KVLayout (a layer's cache)
workload   the one seam to a model family: what the mapper must know, and one forward call
mapping    the capacity model and the mapper's search for the latency-optimal mapping
costs      pure cost plans: the steps each primitive takes, from shapes, layouts and the machine
schedule   the scheduler over plain step records and its ordering rule
tiled      the numeric kernels, tile by tile, slice by slice
emulator   EmulatingExecutor: the thin executor joining the above, numeric or cost-only
timeline   events, critical path, exposure, Chrome trace
study      the comparison (six passes, the counterfactual accounting), roofline, published figures, the paper
           table, calibration on request, sweeps on any concurrent.futures.Executor
"""

from .config import PRESETS, HardwareConfig, get_hardware, load_hardware, with_overrides
from .emulator import EmulatingExecutor, Value, dummy
from .mapping import Mapping, MappingPolicy
from .timeline import ENGINES, KINDS, Event, Timeline, chrome_trace

__all__ = [
    "ENGINES",
    "KINDS",
    "PRESETS",
    "EmulatingExecutor",
    "Event",
    "HardwareConfig",
    "Mapping",
    "MappingPolicy",
    "Timeline",
    "Value",
    "chrome_trace",
    "dummy",
    "get_hardware",
    "load_hardware",
    "with_overrides",
]
