"""The ``trt`` backend: TensorRT 10/11 engines, timed like ``trtexec`` with latbench's protocol.

Written against the documented TensorRT 10/11 Python API; **never run in this project so far**
(no TensorRT was installable on the machines used, see docs/backends.md).

``prepare``:

1. exports the module to ONNX (:mod:`latbench.backends.onnx_export`; FP16 engines come from an FP16 ONNX
   file, because TensorRT 11 networks are strongly typed and 10.x's ``BuilderFlag.FP16`` is gone);
2. builds a strongly typed network from it (``OnnxParser``; the ``STRONGLY_TYPED`` creation flag
   on 10.x, accepted and implied on 11.x), ``builder.build_serialized_network`` with the recorded
   :class:`BuilderSettings`, and caches the serialized engine on disk under a key made of the ONNX
   file's sha256, the TensorRT version, the GPU (name + compute capability), the precision and the
   builder settings. Tactic timings go through a **shared timing cache** (one file per TensorRT
   version, GPU, precision and builder settings: the engine key without the network), loaded
   before every build and merged back after it, so a LUT build times each layer configuration's
   tactics once instead of once per engine (3–20 s per op without it). fp32 math: TensorRT enables
   TF32 tactics by default; ``precision`` ``fp32`` clears ``BuilderFlag.TF32`` (strict), ``tf32``
   sets it;
3. deserializes it, allocates every I/O tensor as a torch CUDA tensor and binds it once with
   ``context.set_tensor_address``;
4. times ``context.execute_async_v3(stream)`` on a non-default torch stream — by default as CUDA
   graph replays of several enqueues captured in one graph (``trtexec --useCudaGraph``), else as
   launched, both with CUDA events. No pycuda: torch provides buffers, streams, events and graphs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from latbench.backends import INSTALL_HINTS
from latbench.errors import UserError
from latbench.files import atomic_write
from latbench.backends.onnx_export import DEFAULT_OPSET, ExportedModel, ExportSettings, export_onnx, resolve_cache_dir
from latbench.timing.config import TimingConfig
from latbench.timing.precision import DTYPES, check_precision, precision_mode, tensor_precision


def import_tensorrt():
    """The ``tensorrt`` module, or a one-line :class:`UserError` saying how to install it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise UserError(f"--backend trt needs TensorRT's Python bindings, which are not installed: "
                        f"{INSTALL_HINTS['tensorrt']}") from None


@dataclass(frozen=True)
class BuilderSettings:
    """Builder configuration recorded in the LUT metadata and in the engine cache key."""

    optimization_level: int = 3  # TensorRT's default; 0..5
    workspace_mib: int | None = None  # None: TensorRT's default (all device memory)
    strongly_typed: bool = True
    timing_cache: bool = True  # a shared timing cache (see timing_cache_key)
    tf32: bool = False  # BuilderFlag.TF32 (precision tf32); False = strict fp32 tactics

    def __post_init__(self) -> None:
        if not 0 <= int(self.optimization_level) <= 5:
            raise UserError(f"TensorRT builder optimisation level must be 0..5, not {self.optimization_level}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise UserError("TensorRT workspace must be at least 1 MiB")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for name, tdt in (("int64", torch.int64), ("bfloat16", torch.bfloat16)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = tdt
    if dt not in table:
        raise RuntimeError(f"TensorRT tensor type {dt} has no torch equivalent here")
    return table[dt]


def _gpu_identity(dev: torch.device) -> dict[str, str]:
    p = torch.cuda.get_device_properties(dev)
    return {"gpu": p.name, "compute_capability": f"{p.major}.{p.minor}"}


def engine_key(exported: ExportedModel, trt_version: str, gpu: dict[str, str], precision: str,
               builder: BuilderSettings) -> str:
    blob = json.dumps({"onnx_sha256": exported.sha256, "tensorrt": trt_version, **gpu,
                       "precision": precision, "builder": builder.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def timing_cache_key(trt_version: str, gpu: dict[str, str], precision: str, builder: BuilderSettings) -> str:
    """The shared timing cache's key: :func:`engine_key` without the network (tactic timings of a
    layer configuration are valid for any network on the same GPU, TensorRT and settings)."""
    blob = json.dumps({"tensorrt": trt_version, **gpu, "precision": precision, "builder": builder.to_dict()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    data = b""
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
    cache = config.create_timing_cache(data)
    if cache is None and data:  # an unreadable file (another TensorRT wrote it): start afresh
        cache = config.create_timing_cache(b"")
    if cache is not None:
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(config: Any, path: Path) -> int:
    """Merge this build's timing cache into the file at ``path`` (re-read just before, so that
    parallel builds, e.g. the ranks of a sharded LUT build, add up) and replace it atomically.
    Returns the bytes written."""
    cache = config.get_timing_cache()
    if cache is None:
        return 0
    if path.is_file():
        try:
            other = config.create_timing_cache(path.read_bytes())
            if other is not None:
                cache.combine(other, True)
        except Exception:  # a concurrent writer or another TensorRT: keep ours
            pass
    data = bytes(cache.serialize())

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)
    return len(data)


def build_engine(trt: Any, onnx_path: Path, builder_settings: BuilderSettings, logger: Any,
                 timing_cache: Path | None = None) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized engine, with the
    timing cache at ``timing_cache`` (loaded before, merged back after) when given."""
    builder = trt.Builder(logger)
    flags = 0
    if builder_settings.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.builder_optimization_level = int(builder_settings.optimization_level)
    if builder_settings.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(builder_settings.workspace_mib) << 20)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:  # TF32 is on by default: strict fp32 clears it
        if builder_settings.tf32:
            config.set_flag(tf32)
        else:
            config.clear_flag(tf32)
    if builder_settings.timing_cache and timing_cache is not None:
        _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build an engine (build_serialized_network returned None)")
    if builder_settings.timing_cache and timing_cache is not None:
        _save_timing_cache(config, timing_cache)
    return bytes(serialized)


class TrtPrepared:
    """A deserialized engine with torch CUDA buffers bound, timed by latbench's CUDA timers."""

    def __init__(self, trt: Any, engine_bytes: bytes, inputs: Sequence[torch.Tensor], dev: torch.device,
                 config: TimingConfig, cuda_graph: bool, logger: Any) -> None:
        from latbench.timing.cuda import CudaGraphPrepared, EagerPrepared

        self._runtime = trt.Runtime(logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self._buffers: dict[str, torch.Tensor] = {}
        self.output_names: list[str] = []
        feed = list(inputs)
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                src = feed.pop(0)
                buf = src.detach().to(dev, dtype=dtype).reshape(shape).contiguous()
            else:
                buf = torch.empty(shape, dtype=dtype, device=dev)
                self.output_names.append(name)
            self._buffers[name] = buf
            if not self.context.set_tensor_address(name, buf.data_ptr()):
                raise RuntimeError(f"TensorRT refused the address of tensor {name!r}")
        context = self.context

        def enqueue() -> None:
            # latbench's timers run this on their own non-default stream (also during capture).
            if not context.execute_async_v3(torch.cuda.current_stream(dev).cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")

        cls = CudaGraphPrepared if cuda_graph else EagerPrepared
        # CudaGraphPrepared enqueues a few times before capture (TensorRT wants one enqueue
        # before a capture to finish its lazy setup), then captures several enqueues per graph.
        self._timer = cls(enqueue, (), dev, config)
        self.granularity = getattr(self._timer, "granularity", 1)
        self.clock = self._timer.clock
        self.info: dict[str, Any] = dict(self._timer.info)

    def time(self, calls: int) -> float:
        return self._timer.time(calls)

    def enqueue_time(self, calls: int) -> float:
        return self._timer.enqueue_time(calls)

    def outputs(self) -> list[torch.Tensor]:
        torch.cuda.synchronize()
        return [self._buffers[n].clone() for n in self.output_names]

    def close(self) -> None:
        self._timer.close()
        self.context = None
        self.engine = None
        self._buffers = {}


class TrtBackend:
    """``get_backend("trt", device="cuda:N", precision="fp32"|"fp16", cache_dir=..., ...)``."""

    name = "trt"

    def __init__(self, device: str = "cuda:0", precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, optimization_level: int = 3,
                 workspace_mib: int | None = None, cuda_graph: bool = True, opset: int = DEFAULT_OPSET,
                 exporter: str = "dynamo", timing_cache: bool = True) -> None:
        self.trt = import_tensorrt()  # first: without TensorRT nothing else matters
        dev = str(device or "").lower()
        if not dev.startswith("cuda"):
            raise UserError(f"timing backend 'trt' runs on a CUDA GPU (--device cuda:N), not {device!r}")
        from latbench.device import resolve_device

        self.device = resolve_device(dev)
        self.dev = torch.device(self.device)
        self.precision = check_precision(precision, self.device, self.name)
        self.builder = BuilderSettings(optimization_level=optimization_level, workspace_mib=workspace_mib,
                                       timing_cache=bool(timing_cache), tf32=precision == "tf32")
        self.cuda_graph = bool(cuda_graph)
        self.export = ExportSettings(opset=opset, exporter=exporter, precision=tensor_precision(precision))
        self.onnx_dir = resolve_cache_dir(cache_dir, "onnx")
        self.engine_dir = resolve_cache_dir(cache_dir, "trt")
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        torch.backends.cudnn.benchmark = True

    def timing_cache_path(self) -> Path | None:
        """The shared timing cache file of this backend's TensorRT, GPU, precision and settings."""
        if not self.builder.timing_cache:
            return None
        key = timing_cache_key(str(self.trt.__version__), _gpu_identity(self.dev), self.precision, self.builder)
        return self.engine_dir / f"timing-{key}.cache"

    def engine_for(self, exported: ExportedModel) -> tuple[bytes, dict[str, Any]]:
        """The serialized engine for ``exported`` from the cache, or built (and cached) now."""
        gpu = _gpu_identity(self.dev)
        key = engine_key(exported, self.trt.__version__, gpu, self.precision, self.builder)
        path = self.engine_dir / f"{key}.engine"
        facts: dict[str, Any] = {"engine_key": key}
        if path.is_file():
            facts.update({"engine_cached": True, "engine_build_s": None})
            return path.read_bytes(), facts
        tc = self.timing_cache_path()
        tc_before = tc.stat().st_size if tc is not None and tc.is_file() else 0
        t0 = time.perf_counter()
        with torch.cuda.device(self.dev):
            data = build_engine(self.trt, exported.path, self.builder, self.logger, timing_cache=tc)
        facts.update({"engine_cached": False, "engine_build_s": round(time.perf_counter() - t0, 3),
                      "timing_cache_bytes_before": tc_before if tc is not None else None})

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)

        atomic_write(path, write)
        return data, facts

    def prepare(self, module: Any, inputs: Sequence[torch.Tensor], config: TimingConfig) -> TrtPrepared:
        exported = export_onnx(module, inputs, self.export, self.onnx_dir, match="structure")
        data, facts = self.engine_for(exported)
        dtype = DTYPES[self.precision]
        feed = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
        with torch.cuda.device(self.dev):
            prepared = TrtPrepared(self.trt, data, feed, self.dev, config, self.cuda_graph, self.logger)
        prepared.info.update(exported.info())
        prepared.info.update(facts)
        prepared.info["graph_timing"] = "cuda graph of enqueues" if self.cuda_graph else "enqueue, cuda events"
        return prepared

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name, "device": self.device, "precision": self.precision,
            "tensorrt": str(self.trt.__version__), "builder": self.builder.to_dict(),
            "network": "strongly typed (precision from the ONNX file)",
            "cuda_graph": self.cuda_graph, "export": self.export.to_dict(),
            "engine_cache": str(self.engine_dir), "gpu": _gpu_identity(self.dev),
            "timing_cache": str(self.timing_cache_path()) if self.builder.timing_cache else None,
            "clock": "cuda events on a non-default stream",
            "precision_mode": {**precision_mode(self.precision, self.device, torch_flags=False),
                               "trt_builder_tf32": self.builder.tf32},
        }
