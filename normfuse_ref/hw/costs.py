"""Pure cost plans: from shapes, where things live (`layout`) and the machine, the steps a primitive takes.

Nothing here schedules or computes numbers. Each function returns plain `Step` records (engine, sub-step, kind,
cycles, work); the executor places them in time (`schedule`) on the resources of the stage that runs them. The
plans are pure functions of hashable arguments, so the most used are memoised (the mapper asks for the same spans
hundreds of times).

Notation (lengths in elements, times in cycles unless a name ends in _ns):
    L    simd.lanes          tk, tn  dimc.tile_rows, dimc.tile_cols        w  memory.word_bytes
    load elements of a value held by one slice (rows x its chunk of the last axis)

SIMD, on every slice at once:  lat_simd + ceil(load / L) * sum(element ops) + ceil(rows / L) * sum(row ops)
Local partial of a reduction:  lat_simd + ceil(load / L) * (sum(element ops) + ceil(log2 min(L, chunk)) * combine)
DIMC on one slice:             lat_dimc + max(tiles * tile bytes / SRAM rate, LPDDR bytes / LPDDR rate,
                                              rows * tiles * ceil(tk tn / MACs)) + ceil(log2 k_tiles) * adder
Network (`network.py`):        collectives by algorithm (tree, ring, gather) over the span of the group; moving
                               an activation to the slices of the next op is a broadcast over the union of the two
                               places; crossing from one stage to the next is one hop of the level that joins them
                               plus the whole activation at that level's link rate.
A combine on a receiving SIMD unit costs ceil(words / L) instructions (words: the payload of the message).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import network
from .config import HardwareConfig
from .layout import Grid, cdiv
from .network import Span

__all__ = [
    "ONE_PASS_RESCALE",
    "REDUCE_OPS",
    "SIMD_PROGRAMS",
    "Step",
    "clog2",
    "dimc_cycles",
    "elementwise_step",
    "local_reduce_cycles",
    "matmul_steps",
    "merge_combine_cycles",
    "merge_steps",
    "move_step",
    "pair_combine_cycles",
    "psum_steps",
    "reduce_finish_cycles",
    "reduce_steps",
    "simd_cycles",
    "simd_program",
    "softmax_local_steps",
    "stage_transfer_step",
]


def clog2(n: int) -> int:
    """ceil(log2 n) for n >= 1 (0 for n = 1)."""
    return max(0, (n - 1).bit_length())


@dataclass(frozen=True, slots=True)
class Step:
    """One sub-event of a primitive before it is placed in time."""

    engine: str  # DIMC, SIMD or NET
    step: str  # the sub-step: "tiles", "deliver", "psum", "partials", "all-reduce", "finish", "merge", ...
    kind: str  # matmul, vector, collective (a normalisation statistic), psum (partial sums), move (activations)
    cycles: int
    flops: int = 0
    nbytes: int = 0
    levels: tuple[str, ...] = ()  # network levels it crosses (NET)
    norm: bool = False  # a normalisation-statistic event: made free in the counterfactual pass
    slices: int = 0  # slices working side by side


# ---------------------------------------------------------------------------------------------------------------
# SIMD
# ---------------------------------------------------------------------------------------------------------------

#: The SIMD program of each elementwise op, by op name: (instructions per element vector, per row vector).
#: Matched exactly, then by the suffix after the last dot; an op with no program is an error (add it here).
SIMD_PROGRAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "residual": (("add",), ()),  # x + a
    "norm": (("mul", "mul"), ()),  # x * s * g                 (attn_qkv.norm, ffn_gate_up.norm, output.norm)
    "scale": (("mul",), ()),  # y * s                           (attn_qkv.scale, ffn_gate_up.scale, output.scale)
    "centre": (("add",), ()),  # x - mu                         (LayerNorm: <op>.centre, kept in registers)
    "norm_shift": (("mul", "mul", "add"), ()),  # d * s * gamma + beta    (LayerNorm's LN(x): <op>.norm_shift)
    "scale_shift": (("mul", "add"), ()),  # y * s + beta @ F             (fused LayerNorm: <op>.scale_shift)
    "rope_q": (("mul", "mul", "add"), ()),  # (u, v) -> (u cos - v sin, v cos + u sin), tables precomputed
    "rope_k": (("mul", "mul", "add"), ()),
    "attn_mask": (("mul", "max"), ()),  # z * 1/sqrt(hd), select -inf where masked
    "softmax.exp": (("add", "exp", "max"), ()),  # z - m, exp, select (fully masked rows)
    "softmax.div": (("mul", "max"), ("recip",)),  # e * (1/l), select l == 0; one reciprocal per row
    "softmax.scale": (("mul", "max"), ("recip",)),  # o * (1/l) after the merge
    "swiglu": (("exp", "add", "recip", "mul", "mul"), ()),  # g / (1 + e^-g) * u
    # the LayerNorm families (normfuse_ref.models.bert, normfuse_ref.models.gpt)
    "embed_sum": (("add", "add"), ()),  # E_word[ids] + E_type[types] + E_pos (BERT)
    "embed_add": (("add",), ()),  # E_word[ids] + E_pos (GPT-2, OPT)
    "bias": (("add",), ()),  # y + b, a linear layer's own bias        (attn_output.bias, ffn_down.bias, ...)
    # exact GELU t/2 (1 + erf(t / sqrt 2)): erf costed as one table + polynomial evaluation, like exp (assumed)
    "gelu": (("mul", "exp", "add", "mul", "mul"), ()),
    # GPT-2's tanh GELU = t / (1 + e^{-2u}), u = sqrt(2/pi) (t + 0.044715 t^3)
    "gelu_tanh": (("mul", "mul", "add", "mul", "exp", "add", "recip", "mul"), ()),
    "relu": (("max",), ()),  # max(t, 0) (OPT)
    # the LayerNorm rule's mitigations (fusion.py; priced in accuracy/costs.py)
    "subtract_mean": (("add",), ()),  # x - mu, stored as the DIMC operand    (centring="subtract")
    "compensate_scale_shift": (("mul", "add", "mul", "add"), ()),  # (y - mu r) s + b   (centring="compensate")
}


#: The one-pass softmax baseline keeps each slice's e^(z - m_j) from its local pass; the op that consumes the
#: merged max then only rescales them by e^(m_j - m): one multiply (and the select for masked rows) an element,
#: one exp a row, instead of subtract, exp and select (costed in place of that op's own program).
ONE_PASS_RESCALE: tuple[tuple[str, ...], tuple[str, ...]] = (("mul", "max"), ("exp",))


def simd_program(op: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The SIMD program of an elementwise op, by its exact name or the suffix after its last dot."""
    if op in SIMD_PROGRAMS:
        return SIMD_PROGRAMS[op]
    suffix = op.rsplit(".", 1)[-1]
    if suffix in SIMD_PROGRAMS:
        return SIMD_PROGRAMS[suffix]
    raise ValueError(f"no SIMD program for elementwise op {op!r}; add one to normfuse_ref.hw.costs.SIMD_PROGRAMS")


def simd_cycles(
    hw: HardwareConfig, *, load: int, rows: int, elem_ops: Sequence[str], row_ops: Sequence[str] = ()
) -> int:
    """An elementwise SIMD operation on every slice at once (the busiest slice holds `load` elements)."""
    s = hw.simd
    per_vec = sum(s.op_cycles(o) for o in elem_ops)
    per_row = sum(s.op_cycles(o) for o in row_ops)
    return s.pipeline_latency_cycles + cdiv(load, s.lanes) * per_vec + cdiv(rows, s.lanes) * per_row


#: Per element instructions of a local partial, and the combine instruction, for each reduction kind.
REDUCE_OPS: dict[str, tuple[tuple[str, ...], str]] = {
    "rms_scale": (("mul", "add"), "add"),  # sum of squares
    "sum": (("add",), "add"),
    "mean": (("add",), "add"),  # a sum, finished by one multiply by 1/n
    "max": (("max",), "max"),
}


def local_reduce_cycles(hw: HardwareConfig, *, kind: str, chunk: int, load: int) -> int:
    """Each slice reduces its chunk of each row to one partial: the element ops on `load` elements, L lanes at a
    time, then a tree across the lanes of each vector (segmented by row)."""
    s = hw.simd
    elems, combine = REDUCE_OPS[kind]
    per_vec = sum(s.op_cycles(o) for o in elems) + clog2(min(s.lanes, max(1, chunk))) * s.op_cycles(combine)
    return s.pipeline_latency_cycles + cdiv(load, s.lanes) * per_vec


def reduce_finish_cycles(hw: HardwareConfig, *, kind: str, rows: int) -> int:
    """After the all-reduce: rms_scale turns the sum of squares into 1/sqrt(sum/n + eps), mean multiplies the sum
    by 1/n; max and sum are done."""
    s = hw.simd
    if kind == "mean":
        return s.pipeline_latency_cycles + cdiv(rows, s.lanes) * s.mul_cycles
    if kind != "rms_scale":
        return 0
    return s.pipeline_latency_cycles + cdiv(rows, s.lanes) * (s.mul_cycles + s.add_cycles + s.rsqrt_cycles)


def softmax_local_steps(hw: HardwareConfig, *, chunk: int, load: int, slices: int) -> tuple[Step, ...]:
    """The local part of a one-pass softmax on each slice, before any communication: the max over its chunk, the
    exponentials e^(z - m) (the program of the two-pass order's `softmax.exp`), and their sum. The max and the
    sum are partials of normalisation statistics (norm steps, like the two-pass order's reduce partials); the
    exponentials are not."""
    size = load * slices
    exp_elem, _ = simd_program("softmax.exp")
    return (
        Step(
            "SIMD",
            "local max",
            "collective",
            local_reduce_cycles(hw, kind="max", chunk=chunk, load=load),
            size,
            0,
            (),
            True,
            slices,
        ),
        Step(
            "SIMD",
            "local exp",
            "vector",
            simd_cycles(hw, load=load, rows=0, elem_ops=exp_elem),
            len(exp_elem) * size,
            0,
            (),
            False,
            slices,
        ),
        Step(
            "SIMD",
            "local sum",
            "collective",
            local_reduce_cycles(hw, kind="sum", chunk=chunk, load=load),
            size,
            0,
            (),
            True,
            slices,
        ),
    )


def pair_combine_cycles(hw: HardwareConfig, *, rows: int) -> int:
    """Merge two (m, l) pairs for `rows` rows. One of the two rescale factors is e^0 = 1, so: d = ma - mb,
    m = max(ma, mb), l = l_hi + l_lo e^(-|d|) with the select of which side is lower: three max/selects, two
    adds (d, and the final add), one exp, one multiply a row."""
    s = hw.simd
    return cdiv(rows, s.lanes) * (3 * s.max_cycles + 2 * s.add_cycles + s.exp_cycles + s.mul_cycles)


def merge_combine_cycles(hw: HardwareConfig, *, rows: int, width: int) -> int:
    """Merge two online-softmax states for `rows` rows of `width` outputs: the (m, l) pair as above, plus
    o = o_hi + o_lo e^(-|d|) over `width` values a row (a select, a multiply, an add)."""
    s = hw.simd
    return pair_combine_cycles(hw, rows=rows) + cdiv(rows * width, s.lanes) * (
        s.max_cycles + s.mul_cycles + s.add_cycles
    )


def _ns_of_cycles(hw: HardwareConfig, cycles: int) -> float:
    return cycles * hw.clock.ns_per_cycle


def _combine(hw: HardwareConfig, op_cycles: int) -> Callable[[int], float]:
    """words -> ns of one combine of that many words on the receiving SIMD unit."""
    lanes, per_ns = hw.simd.lanes, hw.clock.ns_per_cycle
    return lambda words: cdiv(words, lanes) * op_cycles * per_ns


# ---------------------------------------------------------------------------------------------------------------
# DIMC
# ---------------------------------------------------------------------------------------------------------------


def dimc_cycles(
    hw: HardwareConfig, *, k_tiles: int, n_tiles: int, rows: int, tile_bytes: int, offchip_cycles: int = 0
) -> int:
    """The busiest slice: stream its tiles from SRAM (and its share of LPDDR), or compute `rows` rows against them,
    whichever is longer; then the adder tree over the K tiles of a column held on the slice."""
    d = hw.dimc
    tiles = k_tiles * n_tiles
    stream = cdiv(tiles * tile_bytes, hw.memory.sram_bytes_per_cycle)
    compute = rows * tiles * d.tile_cycles
    return d.pipeline_latency_cycles + max(stream, offchip_cycles, compute) + clog2(k_tiles) * d.adder_level_cycles


def lpddr_cycles(hw: HardwareConfig, *, nbytes: float, cards: int) -> int:
    """Streaming `nbytes` from the LPDDR of `cards` cards (each card's share at its own rate)."""
    if nbytes <= 0:
        return 0
    return network.ns_to_cycles(hw, nbytes / (hw.memory.lpddr_gbps_per_card * cards))


# ---------------------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 14)
def move_step(
    hw: HardwareConfig, span: Span, bytes_per_dest: float, *, step: str = "deliver", norm: bool = False
) -> Step | None:
    """Moving an activation within a stage: a cut-through broadcast over `span` (None when it stays on one slice)."""
    if not span.levels:
        return None
    ns = network.broadcast_ns(hw, span, bytes_per_dest)
    return Step(
        "NET",
        step,
        "collective" if norm else "move",
        network.ns_to_cycles(hw, ns),
        0,
        int(bytes_per_dest) * span.participants,
        span.names,
        norm,
        span.participants,
    )


@functools.lru_cache(maxsize=1 << 14)
def stage_transfer_step(hw: HardwareConfig, level: str, total_bytes: float, *, norm: bool = False) -> Step:
    """Moving an activation from one stage's cards to the next stage's: one hop of the level that joins them plus
    the whole activation at that level's link rate (the destination's own broadcast is a separate move)."""
    lv = getattr(hw.network, level)
    ns = lv.hop_ns + total_bytes / lv.link_gbps
    return Step(
        "NET",
        "stage transfer",
        "collective" if norm else "move",
        network.ns_to_cycles(hw, ns),
        0,
        int(total_bytes),
        (level,),
        norm,
    )


def _net_step(hw: HardwareConfig, step: str, kind: str, ns: float, span: Span, nbytes: int, norm: bool) -> Step:
    return Step("NET", step, kind, network.ns_to_cycles(hw, ns), 0, nbytes, span.names, norm, span.participants)


@functools.lru_cache(maxsize=1 << 14)
def reduce_steps(
    hw: HardwareConfig,
    *,
    kind: str,
    span: Span,
    n: int,
    chunk: int,
    load: int,
    rows: int,
    one_pass: bool = False,
) -> tuple[Step, ...]:
    """A normalisation statistic over the last axis (length n) of a value held `load` elements a slice (`chunk`
    of each of its `rows` rows), reduced over `span` by the machine's algorithm, the result on every slice.

    one_pass: the softmax max of a baseline costed as the one-pass (m, l) all-reduce: each slice finds its local
    max and sum of e^(z - m) in one pass, one collective carries (m, l) pairs (the later sum is then free)."""
    alg = hw.network.algorithm
    s = hw.simd
    w = hw.memory.word_bytes
    P = span.participants
    _, combine = REDUCE_OPS[kind]
    size = rows * n
    words = 2 * rows if one_pass else rows  # one statistic (two for an (m, l) pair) a row
    combine_cycles = s.op_cycles(combine)
    steps: list[Step] = []
    if alg == "gather":
        raw = load * hw.memory.act_bits / 8
        steps.append(_net_step(hw, "gather", "collective", network.gather_ns(hw, span, raw), span, int(raw * P), True))
        if one_pass:
            steps += softmax_local_steps(hw, chunk=n, load=size, slices=1)
        else:
            root = local_reduce_cycles(hw, kind=kind, chunk=n, load=size)
            steps.append(Step("SIMD", "root", "collective", root, 2 * size, 0, (), True, 1))
        steps.append(
            _net_step(hw, "broadcast", "collective", network.broadcast_ns(hw, span, words * w), span, words * w, True)
        )
    else:
        if one_pass:
            steps += softmax_local_steps(hw, chunk=chunk, load=load, slices=P)
        else:
            local = local_reduce_cycles(hw, kind=kind, chunk=chunk, load=load)
            steps.append(Step("SIMD", "partials", "collective", local, 2 * size, 0, (), True, P))
        ns = network.allreduce_ns(
            hw,
            span,
            algorithm=alg,
            words=words,
            word_bytes=w,
            combine_ns_of=_pair_combine(hw) if one_pass else _combine(hw, combine_cycles),
        )
        if span.levels:
            steps.append(_net_step(hw, "all-reduce", "collective", ns, span, 2 * words * w * P, True))
    if not one_pass:
        finish = reduce_finish_cycles(hw, kind=kind, rows=rows)
        if finish:
            steps.append(Step("SIMD", "finish", "collective", finish, 3 * rows, 0, (), True, P))
    return tuple(st for st in steps if st.cycles > 0)


def _pair_combine(hw: HardwareConfig) -> Callable[[int], float]:
    """words (two a row) -> ns of merging (m, l) pairs for those rows."""
    per_ns = hw.clock.ns_per_cycle
    return lambda words: pair_combine_cycles(hw, rows=max(1, words // 2)) * per_ns


@functools.lru_cache(maxsize=1 << 14)
def psum_steps(
    hw: HardwareConfig, *, span: Span, words: int, step: str = "psum", norm: bool = False
) -> tuple[Step, ...]:
    """Partial sums (`words` per participant) reduced to the group's root by the machine's algorithm; a gather
    adds them all on the root's SIMD unit."""
    if not span.levels:
        return ()
    alg = hw.network.algorithm
    w = hw.memory.word_bytes
    kind = "collective" if norm else "psum"
    add = _combine(hw, hw.simd.add_cycles)
    ns = network.reduce_ns(
        hw, span, algorithm=alg, words=words, word_bytes=w, combine_ns_of=add, raw_bytes_each=words * w
    )
    P = span.participants
    steps = [_net_step(hw, step, kind, ns, span, words * w * (P - 1), norm)]
    if alg == "gather":
        root = (P - 1) * cdiv(words, hw.simd.lanes) * hw.simd.add_cycles
        steps.append(Step("SIMD", f"{step} root", kind, root, words * (P - 1), 0, (), norm, 1))
    return tuple(st for st in steps if st.cycles > 0)


@functools.lru_cache(maxsize=1 << 14)
def merge_steps(hw: HardwareConfig, *, span: Span, rows: int, width: int) -> tuple[Step, ...]:
    """The online-softmax merge of the slice states (m, l and `width` outputs a row) over `span`, split in two:
    its partial-sum part (the same reduction of the outputs alone, with adds: what the two-pass order pays for
    the partial sums of P @ V) and its normalisation overhead (the rest: carrying m and l, and rescaling)."""
    if not span.levels:
        return ()
    alg = hw.network.algorithm
    w = hw.memory.word_bytes
    P = span.participants
    psum_words, merge_words = rows * width, rows * (width + 2)
    per_ns = hw.clock.ns_per_cycle

    whole = merge_combine_cycles(hw, rows=rows, width=width) * per_ns

    def merge_ns_of(words: int) -> float:  # a packet's share of merging the whole message (pairs once a row)
        return whole * words / merge_words

    total = network.ns_to_cycles(
        hw,
        network.reduce_ns(
            hw,
            span,
            algorithm=alg,
            words=merge_words,
            word_bytes=w,
            combine_ns_of=merge_ns_of,
            raw_bytes_each=merge_words * w,
        ),
    )
    (psum,) = [st for st in psum_steps(hw, span=span, words=psum_words, step="merge psum") if st.engine == "NET"]
    steps = [
        psum,
        Step("NET", "merge norm", "collective", total - psum.cycles, 0, rows * 2 * w * (P - 1), span.names, True, P),
    ]
    if alg == "gather":
        add = (P - 1) * cdiv(psum_words, hw.simd.lanes) * hw.simd.add_cycles
        merge = (P - 1) * merge_combine_cycles(hw, rows=rows, width=width)
        steps.append(Step("SIMD", "merge psum root", "psum", add, psum_words * (P - 1), 0, (), False, 1))
        steps.append(Step("SIMD", "merge norm root", "collective", merge - add, 0, 0, (), True, 1))
    return tuple(st for st in steps if st.cycles > 0)


# ---------------------------------------------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 14)
def elementwise_step(
    hw: HardwareConfig, *, op: str, load: int, rows: int, size: int, slices: int, rescale: bool = False
) -> Step:
    """An elementwise op on the SIMD units of the slices holding its output (`rescale`: ONE_PASS_RESCALE)."""
    elem_ops, row_ops = ONE_PASS_RESCALE if rescale else simd_program(op)
    return Step(
        "SIMD",
        "vector",
        "vector",
        simd_cycles(hw, load=load, rows=rows, elem_ops=elem_ops, row_ops=row_ops),
        size * len(elem_ops),
        size * hw.memory.act_bits // 8,
        (),
        False,
        slices,
    )


def matmul_steps(hw: HardwareConfig, grid: Grid, *, rows: int, src: Span | None) -> tuple[Step, ...]:
    """x (rows, n) @ F (n, m) for a stationary F spread as `grid`: deliver each slice its chunk of x (a move over
    the union of x's footprint `src` and the grid), the DIMC tiles, and the partial sums of each column group;
    with copies of the grid, each copy does all three for its share of the rows, side by side."""
    d = hw.dimc
    steps: list[Step] = []
    chunk = min(grid.n, grid.k_tiles * d.tile_rows)
    total_rows, rows = rows, grid.copy_rows(rows)  # the busiest copy's rows set every step's time
    per_dest = rows * chunk * hw.memory.act_bits / 8
    dst = network.span_of(hw, grid.slices, 1)
    mv = move_step(hw, dst if src is None else network.union(src, dst), per_dest)
    if mv is not None:
        steps.append(mv)
    steps.append(
        Step(
            "DIMC",
            "tiles",
            "matmul",
            dimc_cycles(hw, k_tiles=grid.k_tiles, n_tiles=grid.n_tiles, rows=rows, tile_bytes=hw.tile_bytes),
            2 * total_rows * grid.n * grid.m,
            grid.tile_bytes_total(hw),
            (),
            False,
            grid.slices,
        )
    )
    steps += psum_steps(hw, span=network.span_of(hw, grid.gk, 1), words=rows * grid.n_tiles * d.tile_cols)
    return tuple(steps)


@functools.lru_cache(maxsize=1 << 14)
def grid_cycles(hw: HardwareConfig, grid: Grid, *, rows: int) -> int:
    """The whole matmul on its own (delivery from its own roots, tiles, partial sums): what the mapper minimises."""
    return sum(st.cycles for st in matmul_steps(hw, grid, rows=rows, src=None))


def tiles_of(hw: HardwareConfig, n: int, m: int) -> tuple[int, int]:
    """(K tiles, N tiles) of a matrix (n, m)."""
    return cdiv(n, hw.dimc.tile_rows), cdiv(m, hw.dimc.tile_cols)


def pow2_ceil(n: int) -> int:
    return 1 << clog2(max(1, n))


def is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def log2(n: int) -> int:
    return int(math.log2(n))
