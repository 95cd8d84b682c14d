"""The per-call overhead probe: the smallest real op, timed with a LUT's own backend and protocol.

Every LUT row is an op called on its own, so every row pays the backend's fixed per-call cost
(Python and dispatcher overhead in eager PyTorch, a session run in ONNX Runtime, a graph launch
for CUDA graphs, guard checks for ``torch.compile``) once; a whole network pays it once in total.
Timing an op that does almost nothing measures that cost: :mod:`latbench.model.latency_model` subtracts it from
every timed row. The probe adds a constant to a 4×4 tensor: one element-wise kernel, so no
backend can optimise it away into an empty graph (an empty graph would measure less than a call).
"""

from __future__ import annotations

import torch
from torch import nn


class CallProbe(nn.Module):
    """``x + 1`` — one tiny element-wise op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


def probe_module() -> nn.Module:
    return CallProbe().eval()


def probe_inputs(batch: int = 1) -> list[torch.Tensor]:
    return [torch.zeros(int(batch), 1, 4, 4)]
