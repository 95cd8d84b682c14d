"""Deployment timing backends: ``ort`` (ONNX Runtime), ``compile`` (torch.compile / Inductor) and
``trt`` (TensorRT 10/11). Each follows :mod:`latbench.timing.registry`'s protocol (a backend with
``prepare(module, inputs, config)`` and ``describe()``; a prepared object with ``time(calls)``,
``info`` and ``close()``) and is timed by the one protocol, :func:`latbench.timing.measure_prepared`.

Modules are imported lazily: importing this package imports neither onnxruntime, TensorRT nor
Inductor. :data:`BACKENDS` maps each name to its ``"module:Class"`` factory; :func:`register`
puts them into latbench's backend registry (the registry also finds them without this call when
the names are listed in its built-in table or under the ``latbench.backends`` entry-point group).

Every backend raises :class:`latbench.errors.UserError` (one line, exit status 2) when what it
needs is missing — TensorRT, onnxruntime-gpu's CUDA execution provider, a CUDA GPU — and never
falls back to another backend.
"""

from __future__ import annotations

from typing import Any, Callable

#: name -> lazily imported factory, in the form latbench.timing.registry accepts.
BACKENDS: dict[str, str] = {
    "ort": "latbench.backends.ort:OrtBackend",
    "compile": "latbench.backends.compile:CompileBackend",
    "trt": "latbench.backends.trt:TrtBackend",
}

#: What to install for each optional piece (the one line a UserError shows).
INSTALL_HINTS: dict[str, str] = {
    "tensorrt": "pip install 'latbench-lgcnet[trt]' (TensorRT 10/11 Python bindings; or follow NVIDIA's "
                "TensorRT pip instructions: pip install tensorrt --extra-index-url https://pypi.nvidia.com)",
    "onnxruntime-gpu": "pip uninstall -y onnxruntime && pip install 'latbench-lgcnet[ort-gpu]' "
                       "(onnxruntime-gpu, which provides the CUDA execution provider)",
}


def register(register_backend: Callable[..., Any] | None = None) -> list[str]:
    """Register :data:`BACKENDS` with ``register_backend`` (default: latbench's registry).

    Idempotent: a name already registered with the same factory is left alone. Returns the names.
    """
    if register_backend is None:
        from latbench.timing.registry import register_backend
    for name, factory in BACKENDS.items():
        try:
            register_backend(name, factory)
        except ValueError:
            pass  # already registered (by the core's table or an earlier call)
    return list(BACKENDS)


__all__ = ["BACKENDS", "INSTALL_HINTS", "register"]
