"""Moving a module and its inputs to a device and a precision (fp32 | fp16)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def convert(module: Any, inputs: Sequence[torch.Tensor], device: str, precision: str):
    dtype = DTYPES[precision]
    if isinstance(module, torch.nn.Module):
        module = module.to(device=device, dtype=dtype).eval()
    inputs = tuple(t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in inputs)
    return module, inputs
