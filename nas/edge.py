"""One edge of a cell or of the fusion cell: a set of candidate ops from the registry.

A supernet edge holds every candidate and mixes them with weights ``z`` (Σ z_m·op_m(x)); a
derived edge holds exactly one. Both keep ops in a ``ModuleDict`` keyed by op name, so a derived
network's state dict is a subset of the supernet's (``edges.2.ops.sep_conv_3x3.*``) and weights
carry over unchanged. The ``zero`` op never runs: it contributes nothing to a sum, and a derived
edge that chose it returns ``None`` (the edge is removed from the computation).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nas.ops import ZERO, build_op


class Edge(nn.Module):
    def __init__(self, candidates: Sequence[str], cin: int, cout: int, stride: int = 1, up: bool = False):
        super().__init__()
        self.candidates = tuple(candidates)
        if not self.candidates:
            raise ValueError("an edge needs at least one candidate op")
        self.up = up
        self.ops = nn.ModuleDict({name: build_op(name, cin, cout, stride)
                                  for name in self.candidates if name != ZERO})

    @property
    def is_mixed(self) -> bool:
        return len(self.candidates) > 1

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor | None:
        """``weights`` (one per candidate, in ``candidates`` order) is required on a mixed edge."""
        if not self.is_mixed:
            name = self.candidates[0]
            if name == ZERO:
                return None
            return self._run(name, x, size)
        if weights is None or weights.shape[-1] != len(self.candidates):
            raise ValueError(f"mixed edge over {len(self.candidates)} ops needs that many weights")
        out: torch.Tensor | None = None
        for m, name in enumerate(self.candidates):
            if name == ZERO:
                continue
            y = weights[m] * self._run(name, x, size)
            out = y if out is None else out + y
        return out

    def _run(self, name: str, x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
        op = self.ops[name]
        return op(x, size) if self.up else op(x)


def node_sum(inputs: Sequence[torch.Tensor | None], like_shape: Sequence[int], ref: torch.Tensor) -> torch.Tensor:
    """Sum of a node's incoming edge outputs; zeros of ``like_shape`` when every edge was removed."""
    present = [t for t in inputs if t is not None]
    if not present:
        return ref.new_zeros(tuple(like_shape))
    out = present[0]
    for t in present[1:]:
        out = out + t
    return out
