"""A step-by-step simulation of one collective, message by message, on explicit slices: the oracle that the closed
forms of `network.py` are tested against.

It shares only the machine's geometry with `network.py` (slice numbering and `mesh_coords`) and the micro-model
written there (message = hops x hop_ns + bytes / link_gbps; combine one input at a time in arrival order;
store-and-forward for reductions, cut-through for broadcasts; a switch serialises the messages into one unit).
Everything else is done the long way: every participant is a node with coordinates, distances are Manhattan
distances between real coordinates (not lattice steps), trees and rings are built from those nodes, and each
message is timed from the moment its sender has what it sends. Slow (Python loops over nodes); for tests and for
an architect who wants to see one collective unfolded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import LEVELS, HardwareConfig, LevelConfig
from .network import level_sizes, mesh_coords, positions

__all__ = ["Node", "simulate"]


@dataclass
class Node:
    """One participant at one level: its position in that level's unit, and when it holds what it must send."""

    x: int
    y: int
    ready: float  # ns: when this node has finished everything below this level
    size: float = 0.0  # bytes it carries up (gather)


def _units(hw: HardwareConfig, pos: np.ndarray) -> list[tuple[LevelConfig, str, np.ndarray, np.ndarray]]:
    """For each level: (config, name, the unit each slice belongs to, its sub-unit index inside that unit)."""
    out = []
    below = 1
    for name, (lv, size) in zip(LEVELS, zip(hw.network.levels(), level_sizes(hw), strict=True), strict=True):
        out.append((lv, name, pos // size, (pos // below) % lv.fanout))
        below = size
    return out


def _coords(lv: LevelConfig, subs: list[int]) -> list[tuple[int, int]]:
    if lv.topology == "mesh2d":
        x, y = mesh_coords(np.array(subs), lv.fanout)
        return list(zip(x.tolist(), y.tolist(), strict=True))
    return [(s, 0) for s in subs]


def _dist(lv: LevelConfig, a: Node, b: Node) -> int:
    return abs(a.x - b.x) + abs(a.y - b.y) if lv.topology == "mesh2d" else 1


def _root_of(lv: LevelConfig, nodes: list[Node]) -> Node:
    """The lattice centre on a mesh ((n - 1) // 2 along x and y of the distinct coordinates); else the first."""
    if lv.topology != "mesh2d":
        return nodes[0]
    xs, ys = sorted({n.x for n in nodes}), sorted({n.y for n in nodes})
    cx, cy = xs[(len(xs) - 1) // 2], ys[(len(ys) - 1) // 2]
    return next(n for n in nodes if (n.x, n.y) == (cx, cy))


def _tree_children(lv: LevelConfig, nodes: list[Node], root: Node) -> dict[int, list[Node]]:
    """Parent -> children of the reduction tree: on a mesh, each node's neighbour toward the root along x, and in
    the root's column along y; otherwise every node straight to the root."""
    kids: dict[int, list[Node]] = {id(n): [] for n in nodes}
    if lv.topology != "mesh2d":
        kids[id(root)] = [n for n in nodes if n is not root]
        return kids
    xs, ys = sorted({n.x for n in nodes}), sorted({n.y for n in nodes})
    at = {(n.x, n.y): n for n in nodes}
    for n in nodes:
        if n is root:
            continue
        if n.x != root.x:  # along x toward the root's column
            i = xs.index(n.x)
            nx = xs[i + 1] if n.x < root.x else xs[i - 1]
            kids[id(at[(nx, n.y)])].append(n)
        else:  # in the root's column, along y
            j = ys.index(n.y)
            ny = ys[j + 1] if n.y < root.y else ys[j - 1]
            kids[id(at[(n.x, ny)])].append(n)
    return kids


def _ring_cycle(lv: LevelConfig, nodes: list[Node]) -> list[Node]:
    """A Hamiltonian cycle of a mesh lattice (row 0 left to right, the other rows snaking over columns 1..a-1,
    back up column 0), transposed when the lattice has an odd number of rows; any order off a mesh."""
    if lv.topology != "mesh2d" or len(nodes) <= 2:
        return list(nodes)
    xs, ys = sorted({n.x for n in nodes}), sorted({n.y for n in nodes})
    if len(xs) * len(ys) != len(nodes):
        raise ValueError(f"a ring needs a full lattice of participants; got {len(nodes)} on {len(xs)} x {len(ys)}")
    at = {(n.x, n.y): n for n in nodes}
    transpose = len(ys) % 2 == 1
    if transpose:
        xs, ys = ys, xs
        at = {(y, x): n for (x, y), n in at.items()}
    order = [at[(x, ys[0])] for x in xs]
    for j, y in enumerate(ys[1:], start=1):
        cols = xs[1:] if j % 2 == 0 else xs[:0:-1]
        order += [at[(x, y)] for x in cols]
    order += [at[(xs[0], y)] for y in ys[:0:-1]]
    return order


def _ring(lv: LevelConfig, nodes: list[Node], piece_bytes: float, combine: float) -> float:
    """Reduce-scatter then all-gather around the cycle, each message timed from its sender's readiness and its
    link's availability. Returns when every node holds the whole result."""
    cyc = _ring_cycle(lv, nodes)
    p = len(cyc)
    ser = piece_bytes / lv.link_gbps
    have = [n.ready for n in cyc]  # when node i has the piece it forwards next
    link = [0.0] * p  # link i -> i + 1 free from
    simd = [n.ready for n in cyc]  # node i's SIMD unit free from
    for phase in ("reduce-scatter", "all-gather"):
        for _ in range(p - 1):
            arrive = []
            for i in range(p):
                start = max(have[i], link[i])
                link[i] = start + ser
                arrive.append(start + _dist(lv, cyc[i], cyc[(i + 1) % p]) * lv.hop_ns + ser)
            for i in range(p):
                j = (i + 1) % p
                if phase == "reduce-scatter":
                    simd[j] = max(simd[j], arrive[i]) + combine
                    have[j] = simd[j]
                else:
                    have[j] = arrive[i]
    return max(have)


@dataclass
class _Edge:
    """A child's link to its parent in the tree (used upward by the reduction, downward by the broadcast)."""

    child: int  # slice position
    parent: int
    level: LevelConfig
    dist: int  # hops
    shared: bool  # a switch: packets up into the parent share its one link


def _tree(hw: HardwareConfig, pos: np.ndarray) -> tuple[int, list[_Edge]]:
    """The hierarchical reduction tree over the slices: (root, edges in bottom-up order)."""
    edges: list[_Edge] = []
    reps = [int(p) for p in pos]
    for lv, _name, unit, sub in _units(hw, pos):
        index = {int(p): i for i, p in enumerate(pos)}
        groups: dict[int, list[int]] = {}
        for p in reps:
            groups.setdefault(int(unit[index[p]]), []).append(p)
        new = []
        for members in groups.values():
            members.sort(key=lambda p: int(sub[index[p]]))
            xy = _coords(lv, [int(sub[index[p]]) for p in members])
            nodes = [Node(x, y, 0.0) for x, y in xy]
            if len(nodes) == 1:
                new.append(members[0])
                continue
            top = _root_of(lv, nodes)
            kids = _tree_children(lv, nodes, top)
            by_id = {id(n): p for p, n in zip(members, nodes, strict=True)}
            for n in nodes:
                for k in kids[id(n)]:
                    edges.append(_Edge(by_id[id(k)], by_id[id(n)], lv, _dist(lv, k, n), lv.topology == "switch"))
            new.append(by_id[id(top)])
        reps = new
    (root,) = reps
    return root, edges


def _tree_times(
    hw: HardwareConfig,
    pos: np.ndarray,
    n_packets: int,
    pkt_bytes: float,
    combine: float,
    broadcast: bool,
    up: bool = True,
) -> dict[str, float]:
    """Packets through the tree one index at a time: a node combines packet i of all of its children (one after
    another, c each) after all have arrived and after it finished packet i - 1; a link carries one packet at a
    time; a switch's packets into one node share its link. Then, packet by packet, the broadcast back down."""
    root, edges = _tree(hw, pos)
    children: dict[int, list[_Edge]] = {}
    for e in edges:
        children.setdefault(e.parent, []).append(e)
    order: list[int] = []  # every node after its children (post-order from the root)
    stack = [(root, False)]
    while stack:
        p, expanded = stack.pop()
        if expanded:
            order.append(p)
            continue
        stack.append((p, True))
        stack += [(e.child, False) for e in children.get(p, ())]
    down_edges = [e for p in reversed(order) for e in children.get(p, ())]  # every parent before its children
    ready = dict.fromkeys(order, 0.0)  # when a node finished its previous packet
    link_free: dict[tuple[int, int], float] = {}  # (child, parent), or (parent, -1 - level) for a switch's link
    down_free: dict[tuple[int, int], float] = {}
    done_up = 0.0
    done_all = 0.0
    for _i in range(n_packets):
        finish: dict[int, float] = {}
        for p in order if up else ():
            arrivals = []
            for e in children.get(p, ()):
                sigma = pkt_bytes / e.level.link_gbps
                if e.shared:  # the parent's one link from this level's switch, in child order
                    key = (p, -1 - id(e.level))
                    start = max(finish[e.child] + e.level.hop_ns, link_free.get(key, 0.0))
                    link_free[key] = start + sigma
                    arrivals.append(start + sigma)
                else:
                    key = (e.child, p)
                    start = max(finish[e.child], link_free.get(key, 0.0))
                    link_free[key] = start + sigma
                    arrivals.append(start + sigma + e.dist * e.level.hop_ns)
            t = max([ready[p], *arrivals])
            finish[p] = t + len(arrivals) * combine
            ready[p] = finish[p]
        done_up = finish.get(root, 0.0)
        if broadcast:  # the same packet down from the root, forwarded as it arrives
            have = {root: done_up}
            for e in down_edges:
                sigma = pkt_bytes / e.level.link_gbps
                key = (e.parent, e.child)
                start = max(have[e.parent], down_free.get(key, 0.0))
                down_free[key] = start + sigma
                have[e.child] = start + sigma + (e.dist if not e.shared else 1) * e.level.hop_ns
            done_all = max(done_all, *have.values())
    return {"reduce": done_up, "total": done_all if broadcast else done_up}


def _gather_level(lv: LevelConfig, nodes: list[Node], root: Node) -> float:
    """Raw data up one level's tree, store-and-forward: a node sends its own and its children's data once all of
    them arrived. Node.size grows with what it carries; returns when the root holds everything."""
    kids = _tree_children(lv, nodes, root)
    done: dict[int, float] = {}

    def finish(n: Node) -> float:
        if id(n) in done:
            return done[id(n)]
        link_free = 0.0
        t = n.ready
        for c in sorted(kids[id(n)], key=finish):
            ser = c.size / lv.link_gbps
            if lv.topology == "switch":
                start = max(finish(c) + lv.hop_ns, link_free)
                link_free = start + ser
                t = max(t, link_free)
            else:
                t = max(t, finish(c) + _dist(lv, c, n) * lv.hop_ns + ser)
            n.size += c.size
        done[id(n)] = t
        return t

    return finish(root)


def simulate(
    hw: HardwareConfig,
    count: int,
    stride: int = 1,
    *,
    algorithm: str = "tree",
    words: int = 1,
    combine_ns_of: Callable[[int], float] = lambda w: 0.0,
    raw_bytes_each: float = 0.0,
    broadcast: bool = True,
) -> dict[str, float]:
    """One collective over `count` slices `stride` apart: {"reduce": ns until the root holds the reduction (for a
    gather: all raw data), "total": ns until every slice holds the result (= reduce without `broadcast`)}. A
    message of `words` words travels in packets of one SIMD vector (tree) or as one piece a step (ring)."""
    word_bytes = hw.memory.word_bytes
    if (count - 1) * stride >= level_sizes(hw)[-1]:
        raise ValueError(f"{count} slices {stride} apart need more than the {level_sizes(hw)[-1]} slices of {hw.name}")
    pos = positions(count, stride)
    if algorithm == "tree":
        size = hw.simd.lanes * word_bytes
        n = max(1, -(-(words * word_bytes) // size))
        return _tree_times(hw, pos, n, words * word_bytes / n, combine_ns_of(-(-words // n)), broadcast)
    if algorithm == "broadcast":  # a move: the tree's broadcast alone, from the root at t = 0
        size = hw.simd.lanes * word_bytes
        nbytes = raw_bytes_each
        n = max(1, int(np.ceil(nbytes / size - 1e-9)))
        out = _tree_times(hw, pos, n, nbytes / n, 0.0, True, up=False)
        return {"reduce": 0.0, "total": out["total"]}
    reps: dict[int, Node] = {int(p): Node(0, 0, 0.0, raw_bytes_each) for p in pos}
    trees: list[tuple[LevelConfig, list[tuple[int, list[tuple[int, Node]]]]]] = []
    for lv, _name, unit, sub in _units(hw, pos):
        index = {int(p): i for i, p in enumerate(pos)}
        groups: dict[int, list[tuple[int, int]]] = {}
        for p in reps:
            groups.setdefault(int(unit[index[p]]), []).append((int(sub[index[p]]), p))
        new: dict[int, Node] = {}
        level_trees = []
        for members in groups.values():
            members.sort()
            nodes = []
            for (_s, p), (x, y) in zip(members, _coords(lv, [s for s, _ in members]), strict=True):
                node = reps[p]
                node.x, node.y = x, y
                nodes.append(node)
            if len(nodes) == 1:
                new[members[0][1]] = nodes[0]
                level_trees.append((members[0][1], [(members[0][1], nodes[0])]))
                continue
            root = _root_of(lv, nodes)
            root_pos = members[nodes.index(root)][1]
            if algorithm == "ring":
                piece = -(-words // len(nodes))
                t = _ring(lv, nodes, piece * word_bytes, combine_ns_of(piece))
            else:
                t = _gather_level(lv, nodes, root)
            new[root_pos] = Node(0, 0, t, root.size)
            level_trees.append((root_pos, [(p, nd) for (_s, p), nd in zip(members, nodes, strict=True)]))
        if any(len(members) > 1 for _root, members in level_trees):
            trees.append((lv, level_trees))
        reps = new
    ((_, top),) = reps.items()
    if algorithm == "gather" or not broadcast:
        return {"reduce": top.ready, "total": top.ready}
    # the ring's result: the top level's ring left it on all of its participants; a broadcast takes it down the
    # levels below (cut into packets, pipelined), from each of them at once
    if len(trees) < 2:
        return {"reduce": top.ready, "total": top.ready}
    unit_size = level_sizes(hw)[LEVELS.index(_level_name(hw, trees[-2][0]))]
    inner = pos[pos < unit_size]  # the slices of one unit below the top level
    size = hw.simd.lanes * word_bytes
    n = max(1, -(-(words * word_bytes) // size))
    down = _tree_times(hw, inner, n, words * word_bytes / n, 0.0, True, up=False)["total"]
    return {"reduce": top.ready, "total": top.ready + down}


def _level_name(hw: HardwareConfig, lv: LevelConfig) -> str:
    for name, level in zip(LEVELS, hw.network.levels(), strict=True):
        if level is lv:
            return name
    raise ValueError("unknown level")
