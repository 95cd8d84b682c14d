"""Which rows of an LGCNet architecture a constant-folding backend never runs.

A ``zero`` edge removes its op from the deployed network; a node whose every incoming edge is
``zero`` is a tensor of zeros, a constant. Everything computed from constants alone — the edges
leaving a constant node, a cell whose every node is constant, the next cells' preprocessing of it,
the fusion edges and head downstream of it — is a constant too. A backend that folds constants
when it loads a network (ONNX Runtime's and TensorRT's graph optimisers; weights are constants
there) computes those ops once, at load, and never at run time; an eager backend runs them on every
call. Searches at β > 0 produce exactly such networks (whole cells of ``zero``), so their LUT sum on
a folding backend counts ops the deployed network never runs (measured with ``ort``: networks
derived at β ≥ 2 ran at 0.4–0.7 × their LUT sum; docs/latency_model.md).

The same optimisers remove dead code: an op whose result reaches the output by no path (every
path ends in ``zero`` edges, or in a cell nothing reads) is not run either — down to a whole network
whose output is a constant (then only the copy of it remains; one such fit network measured 52 µs
on ``ort`` against a LUT sum of 9.1 ms).

:func:`folded_positions` follows the data flow of :class:`nas.network.LGCNet` (stem → cells, each
fed by the two cells before it → fusion → head) forward — a state is input-dependent when any
non-``zero`` edge reaches it from an input-dependent state — and backward — a state is needed when
the output reads it through non-``zero`` edges; a row runs only when its input is input-dependent
and its result is needed.

Where weights are not constants — Inductor without freezing passes them to the compiled graph as
inputs — an op with weights on a constant input still runs, and its output is no constant: only
ops without weights (pooling, identity, interpolation, the cells' sums and concatenations) fold,
and the constant stops at the first op with weights (``weighted``; checked on Inductor itself in
tests/test_constant_rows.py). Dead code is removed either way — the stem too, when cells 0 and 1 (its
only readers) read it through ``zero`` edges alone: then every later op computes from constants, and
Inductor runs no stem convolution even though later convolutions still run on those constants.
"""

from __future__ import annotations

from collections.abc import Callable

from nas.cell import cell_edges
from nas.config import SpaceConfig
from nas.fusion import EDGES, FINAL_NODES, NODES
from nas.genotype import Architecture
from nas.ops import ZERO


def _cell(config: SpaceConfig, k: int, ops: list[str], d0: bool, d1: bool, const: set[str],
          weighted: Callable[[str], bool]) -> bool:
    """Add cell ``k``'s constant positions to ``const``; is its output input-dependent?"""
    states = [_through(f"cell{k}.pre0", d0, const, weighted), _through(f"cell{k}.pre1", d1, const, weighted)]
    topo = cell_edges(config.steps)
    for node in range(config.steps):
        dep = False
        for e, (src, dst) in enumerate(topo):
            if dst != node or ops[e] == ZERO:
                continue
            dep = _through(f"cell{k}.e{e}", states[src], const, weighted) or dep
        states.append(dep)
    return _through(f"cell{k}.merge", any(states[2:]), const, weighted)


def _through(pos: str, dep: bool, const: set[str], weighted: Callable[[str], bool]) -> bool:
    """The op at ``pos`` on an input that is input-dependent (``dep``) or a constant: a constant
    input with no weights to apply folds (``pos`` into ``const``); is the op's output input-dependent?"""
    if dep:
        return True
    if weighted(pos):
        return True  # runs on the constant: its weights are inputs of the compiled graph
    const.add(pos)
    return False


def _fusion_cell(inputs: list[bool], const: set[str], weighted: Callable[[str], bool]) -> bool:
    """The dense-connected fusion cell (no ``zero`` candidates): constant positions; is its
    output input-dependent?"""
    nodes = [_through(f"fusion.reduce{i}", dep, const, weighted) for i, dep in enumerate(inputs)]
    nodes += [False] * (len(NODES) - len(inputs))
    for node in range(len(inputs), len(NODES)):
        for e, (src, dst, _) in enumerate(EDGES):
            if dst == node:
                nodes[node] = _through(f"fusion.e{e}", nodes[src], const, weighted) or nodes[node]
    return _through("fusion.merge", any(nodes[n] for n in FINAL_NODES), const, weighted)


def _needed_cells(config: SpaceConfig, arch: Architecture, feats_needed: dict[int, bool]) -> dict[int, dict[str, bool]]:
    """Backward: per cell, which of its inputs (``s0`` / ``s1``) and whether its output is read
    on a path to the network's output. ``feats_needed``: cells read by the fusion (or the head)."""
    topo = cell_edges(config.steps)
    n = len(arch.cells)
    out_needed = {k: bool(feats_needed.get(k)) for k in range(n)}
    need: dict[int, dict[str, bool]] = {}
    for k in range(n - 1, -1, -1):
        ops = list(arch.cells[k])
        if not out_needed[k]:
            need[k] = {"out": False, "s0": False, "s1": False}
            continue
        # every node is concatenated into the output: every non-zero edge is read
        src_read = [any(ops[e] != ZERO and src == j for e, (src, _) in enumerate(topo)) for j in range(2)]
        need[k] = {"out": True, "s0": src_read[0], "s1": src_read[1]}
        if k - 1 >= 0 and src_read[1]:
            out_needed[k - 1] = True
        if k - 2 >= 0 and src_read[0]:
            out_needed[k - 2] = True
    return need


def _stem_read(need: dict[int, dict[str, bool]]) -> bool:
    """Is the stem's output read? :class:`nas.network.LGCNet` feeds it to cell 0 as both inputs and to
    cell 1 as ``s0``; nothing else reads it. Where cells 0 and 1 read it through ``zero`` edges only
    (or are dead), the network computes from constants and the stem is dead code, even when later cells
    run weighted ops on those constants (seen on Inductor: a network whose first cells are all ``zero``
    runs no stem convolution)."""
    return bool(need.get(0, {}).get("s0") or need.get(0, {}).get("s1") or need.get(1, {}).get("s0"))


def _fusion_needed(head_needed: bool) -> tuple[list[bool], list[bool]]:
    """Backward through the fusion cell: (node needed, edge needed) when its output is read."""
    nodes = [False] * len(NODES)
    for n in FINAL_NODES:
        nodes[n] = head_needed
    edges = [False] * len(EDGES)
    for node in range(len(NODES) - 1, -1, -1):
        for e, (src, dst, _) in enumerate(EDGES):
            if dst == node and nodes[node]:
                edges[e] = True
                nodes[src] = True
    return nodes, edges


def constant_input_positions(config: SpaceConfig, arch: Architecture, positions: list[str]) -> set[str]:
    """The positions (of ``positions``) whose input is a constant — computed from ``zero`` nodes
    alone, weights being constants — whether or not their result is read. An eager backend runs
    them on every call, and an op whose branches depend on the data runs faster on a constant than
    on data (PyTorch's eager max-pool: 112 µs against 250–330 µs at 72×9×17; docs/latency_model.md)."""
    const: set[str] = set()
    _forward(config, arch, positions, lambda _pos: False, const)
    return const & set(positions)


def _forward(config: SpaceConfig, arch: Architecture, positions: list[str], w: Callable[[str], bool],
             const: set[str]) -> tuple[bool, dict[int, bool]]:
    """The forward walk: fills ``const``; returns (whether the features the head reads are
    input-dependent, whether each cell's output is)."""
    out: dict[int, bool] = {}
    for k, ops in enumerate(arch.cells):
        out[k] = _cell(config, k, list(ops), out.get(k - 2, True), out.get(k - 1, True), const, w)
    last = len(arch.cells) - 1
    if config.fusion == "dcfc":
        feats = _fusion_cell([out[c] for c in config.fusion_inputs], const, w)
    else:  # MSCell / ASPP / PPM / none: constant only when every input of it is
        ins = list(config.fusion_inputs[1:]) if config.fusion == "mscell" else [last]
        feats = any(out[c] for c in ins)
        if not feats:
            group = [p for p in positions if p.startswith(("mscell.", f"fixed.{config.fusion}"))]
            const.update(p for p in group if not w(p))
            feats = any(w(p) for p in group)
    if not feats:
        tail = [p for p in positions if p.startswith("fixed.") and p != "fixed.stem"]
        if not any(w(p) for p in tail):  # the head has weights: where they are inputs, it runs
            const.update(tail)
    return feats, out


def folded_positions(config: SpaceConfig, arch: Architecture, positions: list[str],
                     weighted: Callable[[str], bool] | None = None) -> set[str]:
    """The positions (of ``positions``, the space's) a constant-folding backend never runs: their
    input is a constant, or their result reaches the output by no path. ``weighted``: where weights
    are not constants, whether the op at a position has weights (it runs on a constant input, and
    its output is input-dependent); None: weights are constants (ONNX Runtime, TensorRT)."""
    w: Callable[[str], bool] = weighted if weighted is not None else (lambda _pos: False)
    const: set[str] = set()
    feats, out = _forward(config, arch, positions, w, const)
    dead: set[str] = set()
    if config.fusion == "dcfc":
        nodes, edges = _fusion_needed(feats)
        dead |= {f"fusion.e{e}" for e, ok in enumerate(edges) if not ok}
        dead |= {f"fusion.reduce{i}" for i in range(len(config.fusion_inputs)) if not nodes[i]}
        read = {c: nodes[i] and out[c] for i, c in enumerate(config.fusion_inputs)}
    else:
        ins = list(config.fusion_inputs[1:]) if config.fusion == "mscell" else [len(arch.cells) - 1]
        read = {c: feats and out[c] for c in ins}
    need = _needed_cells(config, arch, read)
    topo = cell_edges(config.steps)
    for k, ops in enumerate(arch.cells):
        if not need[k]["out"]:
            dead |= {f"cell{k}.pre0", f"cell{k}.pre1", f"cell{k}.merge"}
            dead |= {f"cell{k}.e{e}" for e in range(len(topo))}
            continue
        dead |= {f"cell{k}.pre{j}" for j in range(2) if not need[k][f"s{j}"]}
    if not _stem_read(need):
        dead.add("fixed.stem")  # no cell reads it through a non-zero edge: its result is dead
    return (const | dead) & set(positions)
