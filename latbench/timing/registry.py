"""Timing backends by name.

A *backend* turns ``(module, inputs)`` into a *prepared* object that can be timed:

.. code-block:: python

    class Backend(Protocol):
        name: str          # "cpu", "eager", "cudagraph", ...
        device: str        # "cpu", "cuda:0"
        precision: str     # "fp32" | "fp16"
        def prepare(self, module, inputs, config: TimingConfig) -> Prepared: ...
        def describe(self) -> dict: ...            # JSON-able facts for LUT metadata

    class Prepared(Protocol):
        info: dict                     # e.g. calls per CUDA graph, compile time
        granularity: int               # optional: calls per sample must be a multiple of this
        clock: ClockMonitor | None     # optional: NVML SM clock / throttle sampling
        def time(self, calls: int) -> float: ...           # seconds for `calls` back-to-back calls
        def enqueue_time(self, calls: int) -> float: ...   # optional: host seconds to enqueue them
        def close(self) -> None: ...

``prepare`` may do anything (export ONNX, build an engine, capture a graph); what is timed need not
be the module's ``forward``. Backends register with :func:`register_backend` (a factory or a
``"module:attr"`` string, imported on first use), or from another package through the entry-point
group ``latbench.backends``. A factory is called with keyword options (``device``, ``precision``,
``threads``) and raises :class:`latbench.errors.UserError` for a device it cannot run on.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping, Union

from latbench.errors import UserError

ENTRY_POINT_GROUP = "latbench.backends"

Factory = Union[Callable[..., Any], str]

#: Every backend latbench ships, by name: the core's (``cpu``, ``eager``, ``cudagraph``) and the
#: deployment backends of :mod:`latbench.backends` (``ort``, ``compile``, ``trt``), each a
#: ``"module:attr"`` factory imported on first use (so importing the registry imports neither
#: onnxruntime, TensorRT nor Inductor).
BUILTIN_BACKENDS: dict[str, str] = {
    "cpu": "latbench.timing.cpu:CpuBackend",
    "eager": "latbench.timing.cuda:EagerBackend",
    "cudagraph": "latbench.timing.cuda:CudaGraphBackend",
    "ort": "latbench.backends.ort:OrtBackend",
    "compile": "latbench.backends.compile:CompileBackend",
    "trt": "latbench.backends.trt:TrtBackend",
}

_REGISTRY: dict[str, Factory] = dict(BUILTIN_BACKENDS)

#: backends whose graph optimiser folds constants and removes dead code when it loads a network,
#: and whether their weights count as constants there. ONNX Runtime and TensorRT: yes — ops that
#: compute only on constants, or whose result reaches no output, are never run. Inductor (compile)
#: keeps weights as graph inputs (no freezing): it folds only ops without weights on constants
#: (pooling, identity, interpolation, sums) and removes dead code (:mod:`nas.constant_rows`).
#: Eager backends run every op.
FOLDS_CONSTANTS: dict[str, bool] = {"ort": True, "trt": True, "compile": False}


def folds_constants(backend: str) -> bool:
    """Does ``backend`` skip ops on constants and dead code at run time (:data:`FOLDS_CONSTANTS`)?"""
    return str(backend) in FOLDS_CONSTANTS


def weights_are_constants(backend: str) -> bool:
    """Does ``backend``'s constant folding treat weights as constants (:data:`FOLDS_CONSTANTS`)?"""
    return bool(FOLDS_CONSTANTS.get(str(backend), False))


def network_rows_rule(backend: str) -> str:
    """How a whole network's price on ``backend`` counts its rows, in words: recorded with every
    fitted latency model, so that a model fitted under another rule is not fed other rows."""
    if not folds_constants(backend):
        return "every row"
    if weights_are_constants(backend):
        return "the rows that run (constants folded, weights constant)"
    # "stem dead when no cell reads it" (2026-12-04, evening): models fitted under the earlier wording
    # counted the stem of networks whose first cells read it through zero edges only
    return "the rows that run (ops without weights on constants folded, a stem no cell reads dead)"


def register_backend(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``factory`` available as ``name`` (``"module:attr"`` strings are imported lazily)."""
    if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
        raise ValueError(f"timing backend {name!r} is already registered")
    _REGISTRY[name] = factory


def _entry_point_backends() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    return sorted(set(_REGISTRY) | set(_entry_point_backends()))


def _resolve(name: str) -> Callable[..., Any]:
    if name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        eps = _entry_point_backends()
        if name not in eps:
            raise UserError(f"unknown timing backend {name!r}; available: {', '.join(available_backends())}")
        factory = eps[name].load()
        _REGISTRY[name] = factory
    if isinstance(factory, str):
        module_name, attr = factory.split(":")
        factory = getattr(importlib.import_module(module_name), attr)
        _REGISTRY[name] = factory
    return factory


def get_backend(name: str, **options: Any) -> Any:
    """An instance of backend ``name`` built with ``options`` (device, precision, threads...)."""
    return _resolve(name)(**options)


def close_prepared(prepared: Mapping[str, Any]) -> None:
    """Close every prepared item (engines, sessions, graphs); one that fails to close is skipped."""
    for p in prepared.values():
        try:
            p.close()
        except Exception:
            pass
