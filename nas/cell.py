"""An LGCNet cell (paper Fig. 4): two inputs, ``steps`` intermediate nodes, output = concatenation.

Node ``i`` sums one edge from every earlier state (the two preprocessed inputs and the nodes
before it), so ``steps = 2`` gives 2 + 3 = 5 edges, in the order
``(in0→n0, in1→n0, in0→n1, in1→n1, n0→n1)``. In a reduction cell every edge leaving an input
node has stride 2.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nas.blocks import make_preprocess
from nas.config import SpaceConfig
from nas.edge import Edge, node_sum
from nas.ops import out_size


def cell_edges(steps: int) -> list[tuple[int, int]]:
    """(source state, destination node) for every edge; states 0/1 are the inputs, 2+i node i."""
    return [(j, i) for i in range(steps) for j in range(2 + i)]


def cell_input_channels(config: SpaceConfig, k: int) -> tuple[int, int]:
    """Channels of cell ``k``'s two inputs (outputs of cells k−2 and k−1; the stem before cell 0)."""
    def out(j: int) -> int:
        return config.stem_channels[2] if j < 0 else config.cell_out_channels(j)
    return out(k - 2), out(k - 1)


def cell_input_strides(config: SpaceConfig, k: int) -> tuple[int, int]:
    def stride(j: int) -> int:
        return 4 if j < 0 else config.cell_stride(j)
    return stride(k - 2), stride(k - 1)


class Cell(nn.Module):
    def __init__(self, config: SpaceConfig, k: int, edge_candidates: Sequence[Sequence[str]]):
        super().__init__()
        self.steps = config.steps
        self.reduction = config.is_reduction(k)
        c = config.cell_node_channels(k)
        self.c = c
        c_pp, c_p = cell_input_channels(config, k)
        s_pp, s_p = cell_input_strides(config, k)
        self.pre0 = make_preprocess(c_pp, c, reduce=s_pp != s_p)
        self.pre1 = make_preprocess(c_p, c, reduce=False)
        topo = cell_edges(self.steps)
        if len(edge_candidates) != len(topo):
            raise ValueError(f"cell {k} needs {len(topo)} edges, got {len(edge_candidates)}")
        self.edges = nn.ModuleList([
            Edge(cands, c, c, stride=2 if self.reduction and src < 2 else 1)
            for (src, _), cands in zip(topo, edge_candidates)])

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        n, _, h, w = states[1].shape
        stride = 2 if self.reduction else 1
        node_shape = (n, self.c, out_size(h, stride), out_size(w, stride))
        e = 0
        for i in range(self.steps):
            outs = []
            for j in range(2 + i):
                outs.append(self.edges[e](states[j], None if weights is None else weights[e]))
                e += 1
            states.append(node_sum(outs, node_shape, states[1]))
        return torch.cat(states[2:], dim=1)


class CellMerge(nn.Module):
    """Timing proxy for a cell's node sums and output concatenation (LUT position ``cellK.merge``).

    Takes the outputs of all edges in edge order and performs exactly the additions and the
    concatenation the cell performs when no edge is removed.
    """

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def forward(self, *edge_outputs: torch.Tensor) -> torch.Tensor:
        nodes, e = [], 0
        for i in range(self.steps):
            k = 2 + i
            nodes.append(node_sum(edge_outputs[e:e + k], edge_outputs[e].shape, edge_outputs[e]))
            e += k
        return torch.cat(nodes, dim=1)
