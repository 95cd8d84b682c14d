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
"""

from __future__ import annotations

from nas.cell import cell_edges
from nas.config import SpaceConfig
from nas.fusion import EDGES, FINAL_NODES, NODES
from nas.genotype import Architecture
from nas.ops import ZERO


def _cell(config: SpaceConfig, k: int, ops: list[str], d0: bool, d1: bool, const: set[str]) -> bool:
    """Add cell ``k``'s constant positions to ``const``; is its output input-dependent?"""
    if not d0:
        const.add(f"cell{k}.pre0")
    if not d1:
        const.add(f"cell{k}.pre1")
    states = [d0, d1]
    topo = cell_edges(config.steps)
    for node in range(config.steps):
        dep = False
        for e, (src, dst) in enumerate(topo):
            if dst != node or ops[e] == ZERO:
                continue
            if not states[src]:
                const.add(f"cell{k}.e{e}")
            dep = dep or states[src]
        states.append(dep)
    out = any(states[2:])
    if not out:
        const.add(f"cell{k}.merge")
    return out


def _fusion_cell(inputs: list[bool], const: set[str]) -> bool:
    """The dense-connected fusion cell (no ``zero`` candidates): constant positions; is its
    output input-dependent?"""
    for i, dep in enumerate(inputs):
        if not dep:
            const.add(f"fusion.reduce{i}")
    nodes = list(inputs) + [False] * (len(NODES) - len(inputs))
    for node in range(len(inputs), len(NODES)):
        for e, (src, dst, _) in enumerate(EDGES):
            if dst == node:
                if not nodes[src]:
                    const.add(f"fusion.e{e}")
                nodes[node] = nodes[node] or nodes[src]
    out = any(nodes[n] for n in FINAL_NODES)
    if not out:
        const.add("fusion.merge")
    return out


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


def folded_positions(config: SpaceConfig, arch: Architecture, positions: list[str]) -> set[str]:
    """The positions (of ``positions``, the space's) a constant-folding backend never runs: their
    input is a constant, or their result reaches the output by no path."""
    const: set[str] = set()
    out: dict[int, bool] = {}
    for k, ops in enumerate(arch.cells):
        out[k] = _cell(config, k, list(ops), out.get(k - 2, True), out.get(k - 1, True), const)
    last = len(arch.cells) - 1
    dead: set[str] = set()
    if config.fusion == "dcfc":
        feats = _fusion_cell([out[c] for c in config.fusion_inputs], const)
        nodes, edges = _fusion_needed(feats)
        dead |= {f"fusion.e{e}" for e, ok in enumerate(edges) if not ok}
        dead |= {f"fusion.reduce{i}" for i in range(len(config.fusion_inputs)) if not nodes[i]}
        read = {c: nodes[i] and out[c] for i, c in enumerate(config.fusion_inputs)}
    else:  # MSCell / ASPP / PPM / none: constant only when every input of it is
        ins = list(config.fusion_inputs[1:]) if config.fusion == "mscell" else [last]
        feats = any(out[c] for c in ins)
        if not feats:
            const.update(p for p in positions if p.startswith(("mscell.", f"fixed.{config.fusion}")))
        read = {c: feats and out[c] for c in ins}
    if not feats:
        const.update(p for p in positions if p.startswith("fixed.") and p != "fixed.stem")
    need = _needed_cells(config, arch, read)
    topo = cell_edges(config.steps)
    for k, ops in enumerate(arch.cells):
        if not need[k]["out"]:
            dead |= {f"cell{k}.pre0", f"cell{k}.pre1", f"cell{k}.merge"}
            dead |= {f"cell{k}.e{e}" for e in range(len(topo))}
            continue
        dead |= {f"cell{k}.pre{j}" for j in range(2) if not need[k][f"s{j}"]}
    if not any(need[k]["out"] for k in need) and not feats:
        dead.add("fixed.stem")  # nothing reads the input: the network is a constant
    return (const | dead) & set(positions)
