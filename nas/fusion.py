"""The dense-connected fusion cell (paper III-C, Fig. 5; M = 9 nodes, E = 13 edges).

The paper fixes its inputs (cells 0 / 7 / 13 at strides 4 / 8 / 16, each reduced to 48 channels
by a 1×1 conv), M = 9, E = 13, the Up×2 edges (deconvolution or interpolation), the dense
cross-branch concatenation of middle feature maps and the output as the sum of the three
branches' final maps. Fig. 5's exact wiring is not in the text, so this is our documented choice
(levels: 0 = stride 4, 1 = stride 8, 2 = stride 16)::

    inputs      n0 (s4)          n1 (s8)               n2 (s16)
    middle      n5 = cat(op n0,  n4 = cat(op n1,        n3 = op n2
                    up n4)           up n3)
    final       n8 = op n5 + op n0 + up n7   n7 = op n4 + op n1 + up n6   n6 = op n3 + op n2
    output      n8 + bilinear(n7) + bilinear(n6)          (at stride 4, 48 channels)

Middle nodes concatenate (the dense cross-branch connection: n5 carries all three scales), final
nodes sum their inputs so that every final map has 48 channels and the three can be summed.
That is 9 nodes and 13 edges: 9 ordinary edges choosing among the 10 ops of Table III and 4
Up×2 edges choosing deconvolution or interpolation.

**MSCell** (``fusion="mscell"``, Table X row d) is the multi-scale cell of CAS (Zhang et al.,
"Customizable Architecture Search for Semantic Segmentation", CVPR 2019), which the paper
describes as aggregating only the short-range features of strides 8 and 16 and which CAS
searches like its other cells. CAS's own wiring and op set are not available to us, so this
is our reading (``docs/search.md`` §10 lists each choice)::

    s0 = 1×1 reduce(cell fusion_inputs[1])             (s8, 48 ch)
    s1 = Up×2(1×1 reduce(cell fusion_inputs[2]))       (s16 → s8, edge e0: deconv | interp)
    node i = Σ_j op_ij(s_j) over every earlier state    (MSCELL_STEPS = 3 nodes, 9 edges, Table III ops)
    output = cat(node 0, node 1, node 2)               (s8, 3 × 48 ch) → head

so 10 searchable edges (``mscell.e0`` the Up×2 edge, ``mscell.e1…e9`` the DARTS-style node
edges in :func:`nas.cell.cell_edges` order), every op from the one registry.
:func:`fusion_edges` gives the searchable edges of either cell for a configuration; every
consumer (α, derivation, LUT rows, genotype validation) goes through it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.cell import cell_edges
from nas.edge import Edge, node_sum
from nas.ops import ConvBN, FUSION_PRIMITIVES, UP_PRIMITIVES

#: (aggregation, level) for each node; nodes 0–2 are the reduced inputs.
NODES: tuple[tuple[str, int], ...] = (
    ("input", 0), ("input", 1), ("input", 2),
    ("cat", 2), ("cat", 1), ("cat", 0),
    ("sum", 2), ("sum", 1), ("sum", 0),
)
#: (source node, destination node, kind) — kind "op" (Table III) or "up" (Up×2).
EDGES: tuple[tuple[int, int, str], ...] = (
    (2, 3, "op"),
    (1, 4, "op"), (3, 4, "up"),
    (0, 5, "op"), (4, 5, "up"),
    (3, 6, "op"), (2, 6, "op"),
    (4, 7, "op"), (1, 7, "op"), (6, 7, "up"),
    (5, 8, "op"), (0, 8, "op"), (7, 8, "up"),
)
FINAL_NODES: tuple[int, ...] = (8, 7, 6)


def edge_candidates() -> list[tuple[str, ...]]:
    """The candidate set of every fusion edge, in edge order."""
    return [UP_PRIMITIVES if kind == "up" else FUSION_PRIMITIVES for _, _, kind in EDGES]


def node_channels(f: int) -> list[int]:
    """Channels of every node when each input is reduced to ``f`` channels."""
    ch: list[int] = []
    for node, (agg, _) in enumerate(NODES):
        if agg == "input":
            ch.append(f)
            continue
        incoming = [(s, kind) for s, d, kind in EDGES if d == node]
        outs = [ch[s] if kind == "up" else f for s, kind in incoming]
        ch.append(sum(outs) if agg == "cat" else f)
    return ch


def aggregate(agg: str, outputs: Sequence[torch.Tensor | None]) -> torch.Tensor:
    present = [t for t in outputs if t is not None]
    if agg == "cat":
        return torch.cat(present, dim=1) if len(present) > 1 else present[0]
    out = present[0]
    for t in present[1:]:
        out = out + t
    return out


def final_merge(nodes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of the three branches' final maps, upsampled (bilinear) to stride 4."""
    base = nodes[FINAL_NODES[0]]
    out = base
    for n in FINAL_NODES[1:]:
        out = out + F.interpolate(nodes[n], size=base.shape[-2:], mode="bilinear", align_corners=False)
    return out


class FusionCell(nn.Module):
    def __init__(self, in_channels: Sequence[int], f: int, candidates: Sequence[Sequence[str]]):
        super().__init__()
        if len(candidates) != len(EDGES):
            raise ValueError(f"the fusion cell has {len(EDGES)} edges, got {len(candidates)} choices")
        self.reduce = nn.ModuleList([ConvBN(c, f, 1) for c in in_channels])
        ch = node_channels(f)
        self.edges = nn.ModuleList([
            Edge(cands, ch[src], ch[src] if kind == "up" else f, up=kind == "up")
            for (src, _, kind), cands in zip(EDGES, candidates)])
        self.out_channels = f

    def forward(self, feats: Sequence[torch.Tensor], weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        nodes: list[torch.Tensor] = [r(x) for r, x in zip(self.reduce, feats)]
        sizes = [tuple(t.shape[-2:]) for t in nodes]
        for node in range(3, len(NODES)):
            agg, level = NODES[node]
            outs = [self.edges[e](nodes[s], None if weights is None else weights[e], size=sizes[level])
                    for e, (s, d, _) in enumerate(EDGES) if d == node]
            nodes.append(aggregate(agg, outs))
        return final_merge(nodes)


class FusionMerge(nn.Module):
    """Timing proxy for the fusion cell's concatenations, sums and final merge (``fusion.merge``).

    Takes the 13 edge outputs in edge order plus nothing else; the input nodes are not needed
    because every aggregation works on edge outputs.
    """

    def forward(self, *edge_outputs: torch.Tensor) -> torch.Tensor:
        nodes: list[torch.Tensor | None] = [None, None, None]
        for node in range(3, len(NODES)):
            agg, _ = NODES[node]
            nodes.append(aggregate(agg, [edge_outputs[e] for e, (_, d, _) in enumerate(EDGES) if d == node]))
        return final_merge(nodes)  # type: ignore[arg-type]


# --- MSCell (Table X row d) ---------------------------------------------------------------------
#: Intermediate nodes of the MSCell (ours: CAS's count is not available to us; 3 gives 9 node
#: edges, as many ordinary edges as the fusion cell has).
MSCELL_STEPS = 3
#: (source state, destination node) of the MSCell's node edges (states 0/1: the two inputs at s8).
MSCELL_NODE_EDGES: tuple[tuple[int, int], ...] = tuple(cell_edges(MSCELL_STEPS))


def mscell_edge_candidates() -> list[tuple[str, ...]]:
    """Candidates of the MSCell's searchable edges: e0 (Up×2), then the node edges."""
    return [UP_PRIMITIVES] + [FUSION_PRIMITIVES] * len(MSCELL_NODE_EDGES)


def mscell_edge_kinds() -> list[str]:
    return ["up"] + ["op"] * len(MSCELL_NODE_EDGES)


class MSCell(nn.Module):
    """CAS's multi-scale cell as we read it (module docstring): inputs at strides 8 and 16."""

    def __init__(self, in_channels: Sequence[int], f: int, candidates: Sequence[Sequence[str]]):
        super().__init__()
        if len(in_channels) != 2:
            raise ValueError(f"the MSCell reads two cells (strides 8, 16), got {len(in_channels)}")
        if len(candidates) != 1 + len(MSCELL_NODE_EDGES):
            raise ValueError(f"the MSCell has {1 + len(MSCELL_NODE_EDGES)} edges, got {len(candidates)} choices")
        self.reduce = nn.ModuleList([ConvBN(c, f, 1) for c in in_channels])
        self.edges = nn.ModuleList([Edge(candidates[0], f, f, up=True)] +
                                   [Edge(c, f, f) for c in candidates[1:]])
        self.steps = MSCELL_STEPS
        self.out_channels = MSCELL_STEPS * f

    def forward(self, feats: Sequence[torch.Tensor], weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        s8, s16 = (r(x) for r, x in zip(self.reduce, feats))
        w = (lambda e: None) if weights is None else (lambda e: weights[e])
        up = self.edges[0](s16, w(0), size=tuple(s8.shape[-2:]))
        states = [s8, up]
        e = 1
        for i in range(self.steps):
            outs = []
            for j in range(2 + i):
                outs.append(self.edges[e](states[j], w(e)))
                e += 1
            states.append(node_sum(outs, s8.shape, s8))
        return torch.cat(states[2:], dim=1)


# --- either cell, by configuration --------------------------------------------------------------
def fusion_prefix(mode: str) -> str:
    """LUT position prefix of a fusion mode's searchable cell (``fusion`` or ``mscell``)."""
    return "mscell" if mode == "mscell" else "fusion"


def fusion_edges(mode: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(position, kind, candidates)`` of every searchable edge of fusion mode ``mode`` (a
    :class:`~nas.config.SpaceConfig`'s ``fusion``), in α's order; ``[]`` for aspp / ppm / none.
    ``kind`` is ``"op"`` (Table III) or ``"up"`` (Up×2)."""
    if mode == "dcfc":
        kinds, cands = [k for _, _, k in EDGES], edge_candidates()
    elif mode == "mscell":
        kinds, cands = mscell_edge_kinds(), mscell_edge_candidates()
    else:
        return []
    pre = fusion_prefix(mode)
    return [(f"{pre}.e{j}", k, c) for j, (k, c) in enumerate(zip(kinds, cands))]


def fusion_edge_candidates(mode: str) -> list[tuple[str, ...]]:
    """Candidates of every searchable fusion edge of ``mode`` (``[]`` without a searched cell)."""
    return [c for _, _, c in fusion_edges(mode)]
