"""Pass-throughs: modules whose forward returns its input (an identity skip connection).

Nothing runs for them on any device: a deployed network hands the tensor on. Timing one measures
only the timer (eager: a Python call; ``cudagraph``: the replay of an empty graph, which torch warns
about; ``ort`` / ``trt``: a session run or an enqueue of a copy). LUT builds therefore store them
as ``analytic`` 0 µs rows on every backend, like ``zero``: a space may mark them analytic itself
(LGCNet marks an identity ``skip_connect``), and :func:`is_passthrough` catches those it does not.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def is_passthrough(module: Any, input_shapes: Sequence[Sequence[int]]) -> bool:
    """True if ``module`` called on tensors of ``input_shapes`` returns one of them unchanged: the
    very object, not written to (an in-place op such as ``ReLU(inplace=True)`` also returns its
    input, but bumps its version counter). Checked on ``meta`` tensors: no memory, no arithmetic.
    A module that computes something, or cannot run on meta tensors, is not a pass-through."""
    if not callable(module):
        return False
    try:
        inputs = [torch.empty(tuple(int(d) for d in s), device="meta") for s in input_shapes]
        versions = [t._version for t in inputs]
        with torch.no_grad():
            out = module(*inputs)
    except Exception:
        return False
    return isinstance(out, torch.Tensor) and any(out is t and t._version == v for t, v in zip(inputs, versions))
