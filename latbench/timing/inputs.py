"""Rotating input sets for the CPU timers (DESIGN §5; docs/latency_model.md, "Eager max-pool and the
branch predictor").

A CPU timer that calls an op back to back on *the same* tensor lets the core's branch predictor
memorise the op's data-dependent branches: PyTorch's eager max-pool (a compare-and-branch loop)
then runs 2.3–3.0× faster than it does inside a network, where every call sees data the
predictor has not learned (measured: ``benchmarks/input_rotation.py``; results under
``benchmarks/results/input_rotation-*``). Convolutions, interpolation and ONNX Runtime's or
Inductor's pooling have no such branches and time the same either way.

So the CPU timers rotate, call by call, through ``n`` input sets: the given one and ``n − 1``
further draws of the same shapes (standard normal, like :func:`latbench.build.builder.make_inputs`,
from fixed seeds so a build is reproducible). Non-floating inputs (indices, masks) are shared by all
sets. The sets' total size is bounded by ``budget_bytes``: a big input gets fewer sets (at least
one), and at the sizes where that happens the predictor cannot memorise the data anyway.
"""

from __future__ import annotations

from itertools import cycle, islice, repeat
from typing import Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")

#: Bound on the bytes of all input sets together.
BUDGET_BYTES = 256 * 2**20
#: Seed of the first extra set (set ``i`` uses ``SEED + i``).
SEED = 1_000_003


def _nbytes(inputs: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))


def sets_for(inputs: Sequence[torch.Tensor], n: int, budget_bytes: int = BUDGET_BYTES) -> int:
    """How many sets of ``inputs`` fit ``n`` and the byte budget (at least 1)."""
    size = _nbytes(inputs)
    if n <= 1 or size == 0:
        return 1
    return max(1, min(int(n), budget_bytes // size))


def _like(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return t
    x = torch.randn(tuple(t.shape), generator=g, dtype=torch.float32)
    return x.to(device=t.device, dtype=t.dtype).contiguous(memory_format=_format(t))


def _format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def input_sets(inputs: Sequence[torch.Tensor], n: int, budget_bytes: int = BUDGET_BYTES) -> list[tuple[torch.Tensor, ...]]:
    """``inputs`` first, then further random sets of the same shapes, dtypes, devices and memory
    formats: :func:`sets_for` of them in all."""
    base = tuple(inputs)
    out = [base]
    for i in range(1, sets_for(base, n, budget_bytes)):
        g = torch.Generator().manual_seed(SEED + i)
        out.append(tuple(_like(t, g) for t in base))
    return out


def rotation(sets: Sequence[T], calls: int) -> Iterator[T]:
    """The set each of ``calls`` back-to-back calls uses: the sets in turn (one set: that one)."""
    return islice(cycle(sets), calls) if len(sets) > 1 else repeat(sets[0], calls)
