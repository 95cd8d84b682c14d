"""Precisions, moving a module and its inputs to a device and a dtype, and the fp32 math mode.

Precisions (the LUT's ``precision`` column):

- ``fp32``: fp32 tensors, **strict IEEE fp32 math**. On NVIDIA GPUs since Ampere, PyTorch runs fp32
  convolutions in TF32 unless told otherwise (``torch.backends.cudnn.allow_tf32`` defaults to
  True; matmuls default to strict), TensorRT builds TF32 tactics by default and ONNX Runtime's CUDA
  provider uses TF32 by default. With ``fp32`` latbench switches TF32 off for cuDNN convolutions and
  cuBLAS matmuls (and asks TensorRT / ONNX Runtime for strict fp32) while it prepares and times, and
  restores the caller's settings afterwards.
- ``tf32``: fp32 tensors, TF32 math allowed (what a default PyTorch deployment on a GPU runs).
  A GPU math mode: refused on the CPU.
- ``fp16``: fp16 tensors (any fp32 leftovers strict).

:func:`precision_mode` says what was in effect; backends put it into ``describe()``, so every LUT
(``backend_info.precision_mode`` and ``precision_mode``) and FPS record carries it. LUTs written
before ``tf32`` existed say ``fp32`` and stay readable; on a GPU their fp32 meant cuDNN's default
(TF32 convolutions), which their missing ``precision_mode`` gives away.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from latbench.errors import UserError

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16}
PRECISIONS = tuple(DTYPES)


def tensor_precision(precision: str) -> str:
    """The tensor dtype's name of a precision: ``tf32`` tensors are fp32 (for ONNX export)."""
    return "fp32" if precision == "tf32" else precision


def check_precision(precision: str, device: str = "cpu", backend: str | None = None) -> str:
    """``precision`` if known and usable on ``device``, else a one-line :class:`UserError`."""
    if precision not in DTYPES:
        raise UserError(f"unknown precision {precision!r}; expected one of {', '.join(DTYPES)}")
    if precision == "tf32" and not str(device).startswith("cuda"):
        what = f"timing backend {backend!r} on " if backend else ""
        raise UserError(f"precision 'tf32' is an NVIDIA GPU math mode; {what}{device} computes fp32 strictly: "
                        "use --precision fp32")
    return precision


def allows_tf32(precision: str) -> bool:
    return precision == "tf32"


# ---- the fp32 math mode (cuDNN convolutions and cuBLAS matmuls) --------------------------------
# The legacy flags (torch.backends.cudnn.allow_tf32 / torch.backends.cuda.matmul.allow_tf32) are
# what torch.compile's Inductor reads, and setting them keeps the newer per-op ``fp32_precision``
# settings consistent; mixing the two APIs makes torch refuse to read the legacy flags. So latbench
# sets the legacy flags (silencing their deprecation warning) and restores both APIs' values.

_NEW_API = (("cudnn.conv", lambda: torch.backends.cudnn.conv), ("cudnn.rnn", lambda: torch.backends.cudnn.rnn),
            ("cuda.matmul", lambda: torch.backends.cuda.matmul))


def _read_legacy() -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, get in (("cudnn", lambda: torch.backends.cudnn.allow_tf32),
                          ("matmul", lambda: torch.backends.cuda.matmul.allow_tf32)):
            try:
                out[name] = bool(get())
            except (RuntimeError, AttributeError):  # mixed legacy/new settings: unreadable
                out[name] = None
    return out


def _read_new() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, get in _NEW_API:
        try:
            out[name] = str(get().fp32_precision)
        except (RuntimeError, AttributeError):  # torch < 2.9 has no fp32_precision
            pass
    return out


def _set_legacy(cudnn: bool | None, matmul: bool | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cudnn is not None:
            torch.backends.cudnn.allow_tf32 = bool(cudnn)
        if matmul is not None:
            torch.backends.cuda.matmul.allow_tf32 = bool(matmul)


def _set_new(values: dict[str, str]) -> None:
    for name, get in _NEW_API:
        if name in values:
            try:
                get().fp32_precision = values[name]
            except (RuntimeError, AttributeError, ValueError):
                pass


@contextmanager
def fp32_math(precision: str) -> Iterator[None]:
    """Within the block, TF32 is allowed for cuDNN convolutions and cuBLAS matmuls exactly when
    ``precision == "tf32"``; the previous settings (legacy flags and per-op precisions) come back
    afterwards, also after an exception."""
    legacy, new = _read_legacy(), _read_new()
    allow = allows_tf32(precision)
    try:
        _set_legacy(allow, allow)
        yield
    finally:
        _set_legacy(legacy["cudnn"], legacy["matmul"])
        _set_new(new)


def precision_mode(precision: str, device: str, torch_flags: bool = True) -> dict[str, Any]:
    """What ``precision`` means on ``device``, for provenance (LUT metadata, FPS records):
    ``fp32_math`` (``ieee`` or ``tf32``) and, for backends that run PyTorch kernels
    (``torch_flags``), the cuDNN / cuBLAS TF32 flags in effect while they prepare and time."""
    mode: dict[str, Any] = {"precision": precision, "tensor_dtype": str(DTYPES[precision]).replace("torch.", "")}
    if not str(device).startswith("cuda"):
        mode["fp32_math"] = "ieee (cpu)"
        return mode
    mode["fp32_math"] = "tf32" if allows_tf32(precision) else "ieee"
    if torch_flags:
        with fp32_math(precision):
            flags = _read_legacy()
        mode.update({"cudnn_conv_tf32": flags["cudnn"], "cublas_matmul_tf32": flags["matmul"]})
    return mode


# ---- moving a module and its inputs -------------------------------------------------------------
def _needs_change(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    if module.training:
        return True
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device != device or (t.is_floating_point() and t.dtype != dtype):
            return True
    return False


def convert(module: Any, inputs: Sequence[torch.Tensor], device: str, precision: str):
    """``(module, inputs)`` on ``device`` in ``precision``'s dtype, the module in eval mode.

    The caller's module is never changed: when it is not already on the device, in the dtype and
    in eval mode, a deep copy is moved (timing a module leaves it where it was, e.g. ``nas fps``
    measuring one network on several backends, or a caller who keeps training it)."""
    dtype = DTYPES[precision]
    if isinstance(module, torch.nn.Module):
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if _needs_change(module, dev, dtype):
            try:
                module = copy.deepcopy(module)
            except Exception:  # pragma: no cover - a module that cannot be copied is moved itself
                pass
            module = module.to(device=device, dtype=dtype).eval()
    inputs = tuple(t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in inputs)
    return module, inputs
