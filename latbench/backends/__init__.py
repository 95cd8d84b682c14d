"""Deployment timing backends: ``ort`` (ONNX Runtime), ``compile`` (torch.compile / Inductor) and
``trt`` (TensorRT 10/11). Each follows :mod:`latbench.timing.registry`'s protocol (a backend with
``prepare(module, inputs, config)`` and ``describe()``; a prepared object with ``time(calls)``,
``info`` and ``close()``) and is timed by the one protocol, :func:`latbench.timing.measure_prepared`.

Modules are imported lazily: importing this package imports neither onnxruntime, TensorRT nor
Inductor. The registry (:data:`latbench.timing.registry.BUILTIN_BACKENDS`) owns the table of
names and factories; :data:`BACKENDS` names the backends of this package.

Every backend raises :class:`latbench.errors.UserError` (one line, exit status 2) when what it
needs is missing — TensorRT, onnxruntime-gpu's CUDA execution provider, a CUDA GPU — and never
falls back to another backend.
"""

from __future__ import annotations

#: The backends of this package (their factories are in latbench.timing.registry's table).
BACKENDS: tuple[str, ...] = ("ort", "compile", "trt")

#: What to install for each optional piece (the one line a UserError shows).
INSTALL_HINTS: dict[str, str] = {
    "tensorrt": "pip install 'latbench-lgcnet[trt]' (TensorRT 10/11 Python bindings; or follow NVIDIA's "
                "TensorRT pip instructions: pip install tensorrt --extra-index-url https://pypi.nvidia.com)",
    "onnxruntime-gpu": "pip uninstall -y onnxruntime && pip install 'latbench-lgcnet[ort-gpu]' "
                       "(onnxruntime-gpu, which provides the CUDA execution provider)",
}


__all__ = ["BACKENDS", "INSTALL_HINTS"]
