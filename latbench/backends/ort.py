"""The ``ort`` backend: ONNX Runtime, timed with latbench's protocol.

``prepare`` exports the module to ONNX (:mod:`latbench.backends.onnx_export`, cached), opens an
``InferenceSession`` with explicit session options and binds inputs and outputs once with I/O
binding, so that a timed call is ``session.run_with_iobinding`` and nothing else:

- ``device="cpu"``: CPU execution provider; inputs and outputs are ``OrtValue`` buffers allocated
  once; timed by wall clock (``perf_counter_ns``) around back-to-back runs.
- ``device="cuda:N"``: CUDA execution provider (needs ``onnxruntime-gpu``). Inputs and outputs
  are torch CUDA tensors bound by pointer (no host copy in the timed region); ONNX Runtime runs
  on a non-default torch stream passed as ``user_compute_stream``, timed with CUDA events on that
  stream. ``cuda_graph=True`` turns on ONNX Runtime's own CUDA-graph capture/replay.

  Device time, not synchronous latency: by default ``run_with_iobinding`` ends every run with a
  stream synchronisation, so back-to-back runs would serialise host and device and the events
  would measure ONNX Runtime's host cost per run as well (and flag nearly every entry host-bound).
  The timed runs pass ``RunOptions`` with ``disable_synchronize_execution_providers=1``: runs are
  enqueued back to back on the stream and the events see the GPU's work (plus whatever gaps the
  host leaves, which the host-bound flag reports). Set ``synchronize=True`` to time synchronous
  latency instead (recorded in ``describe()`` as ``timing``).

  fp32 math: ONNX Runtime's CUDA provider uses TF32 unless told otherwise; ``precision`` ``fp32``
  passes ``use_tf32=0`` (strict), ``tf32`` passes ``use_tf32=1``.

  Like latbench's CUDA timers: inputs, outputs and (``TimingConfig.cold_cache``) an L2 flush
  buffer are allocated on the timing stream and waited for before binding; a cold sample zeroes
  the flush buffer on that stream before the start event and is one run; and a short spin
  kernel precedes every start event (:class:`latbench.timing.cuda.StartLead`), so a sample does
  not count the host's first ``run_with_iobinding``.

The session is checked to really use the requested provider: ONNX Runtime silently assigns work
to the CPU provider when the CUDA one fails to load; here that is an error, not a fallback. And
``onnxruntime.get_available_providers()`` lists the CUDA provider whenever onnxruntime-gpu is
installed, even when its CUDA / cuDNN libraries cannot load (e.g. onnxruntime-gpu built for CUDA
12 next to a CUDA 13 torch): so the backend opens a tiny probe session when it is created and
refuses once, with ONNX Runtime's own reason, instead of failing every LUT entry one by one.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` are alternative wheels of one module: installed side
by side, whichever was installed last owns the shared files, so the CPU wheel can shadow the CUDA
provider (and uninstalling either breaks the other). The project's extras keep them apart
(``[ort]`` or ``[ort-gpu]``); when both are installed anyway, a refusal of the CUDA provider says
so and how to repair it (:func:`coinstall_note`), and ``describe()`` records the installed wheels.

The session side (session options, the CUDA provider's options, opening and probing sessions, the
installed wheels) lives in :mod:`latbench.backends.ort_session`; this module binds and times.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np
import torch

from latbench.backends import INSTALL_HINTS
from latbench.errors import UserError
from latbench.backends.onnx_export import DEFAULT_OPSET, ExportedModel, ExportSettings, export_onnx, resolve_cache_dir
from latbench.backends.ort_session import (OrtSessionSettings, _available_threads, _ort, coinstall_note,
                                           cuda_provider_options, installed_ort_distributions, open_session,
                                           probe_provider)
from latbench.timing.config import TimingConfig
from latbench.timing.inputs import input_sets as make_input_sets, rotation
from latbench.timing.precision import check_precision, precision_mode, tensor_precision

_NP_DTYPES = {"fp32": np.float32, "tf32": np.float32, "fp16": np.float16}
_TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16}
#: Run option that stops ONNX Runtime from synchronising the CUDA stream at the end of every run.
NO_SYNC = "disable_synchronize_execution_providers"


class OrtCpuPrepared:
    """Wall-clock timing of ``run_with_iobinding`` with inputs/outputs bound once on the host: one
    binding per input set (:mod:`latbench.timing.inputs`), all writing the same outputs, used in
    turn call by call."""

    granularity = 1
    clock = None

    def __init__(self, session, exported: ExportedModel, inputs: Sequence[torch.Tensor], precision: str,
                 input_sets: int = 1) -> None:
        ort = _ort()
        self._session = session
        dtype = _NP_DTYPES[precision]
        self._outputs = [ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cpu", 0)
                         for shape in exported.output_shapes]
        self._arrays: list[np.ndarray] = []
        self._bindings = []
        for one in make_input_sets(inputs, input_sets):
            binding = session.io_binding()
            for name, t in zip(exported.input_names, one):
                arr = np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype) if t.is_floating_point()
                                           else t.detach().cpu().numpy())
                self._arrays.append(arr)
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
            for name, out in zip(exported.output_names, self._outputs):
                binding.bind_ortvalue_output(name, out)
            self._bindings.append(binding)
        self._binding = self._bindings[0]
        self._run_options = ort.RunOptions()
        self.info: dict[str, Any] = {"input_sets": len(self._bindings)}

    def run(self) -> None:
        self._session.run_with_iobinding(self._binding, self._run_options)

    def time(self, calls: int) -> float:
        run, opts = self._session.run_with_iobinding, self._run_options
        bindings = rotation(self._bindings, calls)
        t0 = time.perf_counter_ns()
        for binding in bindings:
            run(binding, opts)
        t1 = time.perf_counter_ns()
        return (t1 - t0) * 1e-9

    def outputs(self) -> list[np.ndarray]:
        """The bound outputs after the last run (copies), e.g. to compare with PyTorch."""
        return [np.array(o.numpy()) for o in self._outputs]

    def close(self) -> None:
        self._binding = None
        self._bindings = []
        self._session = None
        self._outputs = []
        self._arrays = []


class OrtCudaPrepared:
    """CUDA-event timing of ``run_with_iobinding`` on a non-default torch stream; inputs and
    outputs are torch CUDA tensors bound by pointer."""

    granularity = 1

    def __init__(self, path, exported: ExportedModel, inputs: Sequence[torch.Tensor], device: str,
                 precision: str, settings: OrtSessionSettings, cold_cache: bool = False) -> None:
        from latbench.timing.clock import ClockMonitor
        from latbench.timing.cuda import StartLead, _l2_flush_buffer

        self._dev = torch.device(device)
        self._stream = torch.cuda.Stream(self._dev)
        self._session = open_session(path, device, settings, stream=self._stream)
        tdt, ndt = _TORCH_DTYPES[precision], _NP_DTYPES[precision]
        # Inputs, outputs and the L2 flush buffer are made on the timing stream (the stream ONNX
        # Runtime runs on), so the caching allocator ties their memory to it; the stream is waited
        # for before anything is bound or run.
        with torch.cuda.device(self._dev), torch.cuda.stream(self._stream):
            self._inputs = [t.detach().to(self._dev, dtype=tdt if t.is_floating_point() else t.dtype).contiguous()
                            for t in inputs]
            self._outputs = [torch.empty(s, device=self._dev, dtype=tdt) for s in exported.output_shapes]
            self._flush = _l2_flush_buffer(self._dev) if cold_cache else None
        self._stream.synchronize()
        b = self._session.io_binding()
        index = self._dev.index or 0
        for name, t in zip(exported.input_names, self._inputs):
            b.bind_input(name, "cuda", index, ndt if t.is_floating_point() else np.int64, list(t.shape), t.data_ptr())
        for name, t in zip(exported.output_names, self._outputs):
            b.bind_output(name, "cuda", index, ndt, list(t.shape), t.data_ptr())
        self._binding = b
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self.clock = ClockMonitor.for_device(index)
        self._lead = StartLead(self._stream)
        # No stream synchronisation at the end of each timed run (see the module docstring).
        self._run_options = _ort().RunOptions()
        if not settings.synchronize:
            self._run_options.add_run_config_entry(NO_SYNC, "1")
        self.info: dict[str, Any] = {"providers": self._session.get_providers(),
                                     "run_sync": bool(settings.synchronize), "cold_cache": bool(cold_cache),
                                     **self._lead.describe()}

    def run(self) -> None:
        self._session.run_with_iobinding(self._binding, self._run_options)

    def time(self, calls: int) -> float:
        """Device seconds of ``calls`` runs: (with a cold cache, the L2 flush first, then) the
        start lead, the start event, the runs, the end event -- all on the timing stream."""
        run, b, opts = self._session.run_with_iobinding, self._binding, self._run_options
        with torch.cuda.device(self._dev), torch.cuda.stream(self._stream):
            if self._flush is not None:
                self._flush.zero_()
            self._lead.enqueue()
        self._start.record(self._stream)
        t0 = time.perf_counter()
        for _ in range(calls):
            run(b, opts)
        host_s = time.perf_counter() - t0
        self._end.record(self._stream)
        self._end.synchronize()
        self._lead.update(host_s, calls)
        if self._lead.cycles_per_s:
            self.info["start_lead_us"] = self._lead.lead_s * 1e6
        return self._start.elapsed_time(self._end) * 1e-3

    def enqueue_time(self, calls: int) -> float:
        self._stream.synchronize()
        run, b, opts = self._session.run_with_iobinding, self._binding, self._run_options
        t0 = time.perf_counter()
        for _ in range(calls):
            run(b, opts)
        t1 = time.perf_counter()
        self._stream.synchronize()
        return t1 - t0

    def outputs(self) -> list[np.ndarray]:
        self._stream.synchronize()
        return [t.float().cpu().numpy() for t in self._outputs]

    def close(self) -> None:
        try:
            self._stream.synchronize()
        except Exception:
            pass
        self._binding = None
        self._session = None
        self._inputs, self._outputs, self._flush = [], [], None


class OrtBackend:
    """``get_backend("ort", device="cpu"|"cuda:N", precision="fp32"|"fp16", threads=N, ...)``.

    Options beyond the registry's common three: ``cache_dir`` (a cache root; ONNX files go to
    ``<cache_dir>/onnx``), ``graph_optimization`` (disable | basic | extended | all),
    ``inter_op_threads``, ``cuda_graph`` (ONNX Runtime's CUDA graphs, CUDA only), ``opset``,
    ``exporter`` (dynamo | torchscript).
    """

    name = "ort"

    def __init__(self, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, graph_optimization: str = "all",
                 inter_op_threads: int = 1, cuda_graph: bool = False, opset: int = DEFAULT_OPSET,
                 exporter: str = "dynamo", synchronize: bool = False) -> None:
        ort = _ort()
        dev = str(device or "cpu").lower()
        if dev.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(f"--backend ort --device {device} needs ONNX Runtime's CUDA execution provider, "
                                f"which onnxruntime {ort.__version__} here lacks; {INSTALL_HINTS['onnxruntime-gpu']}"
                                f"{coinstall_note()}")
            from latbench.device import resolve_device

            dev = resolve_device(dev)
        elif dev != "cpu":
            raise UserError(f"timing backend 'ort' runs on cpu or cuda:N, not {device!r}")
        if cuda_graph and dev == "cpu":
            raise UserError("ONNX Runtime CUDA graphs (cuda_graph) need --device cuda")
        self.device = dev
        self.precision = check_precision(precision, dev, self.name)
        self.export = ExportSettings(opset=opset, exporter=exporter, precision=tensor_precision(precision))
        self.threads = threads
        self.session = OrtSessionSettings(intra_op_threads=int(threads or _available_threads()),
                                          inter_op_threads=int(inter_op_threads),
                                          graph_optimization=graph_optimization, cuda_graph=bool(cuda_graph),
                                          use_tf32=precision == "tf32", synchronize=bool(synchronize))
        self.onnx_dir = resolve_cache_dir(cache_dir, "onnx")
        if dev.startswith("cuda"):  # fail once, here, if the CUDA provider cannot start
            self.probe_providers = probe_provider("CUDAExecutionProvider", cuda_provider_options(dev, self.session))

    def _settings_for(self, config: TimingConfig) -> OrtSessionSettings:
        if config.threads and config.threads != self.session.intra_op_threads:
            return OrtSessionSettings(**{**self.session.to_dict(), "intra_op_threads": int(config.threads)})
        return self.session

    def export_model(self, module: Any, inputs: Sequence[torch.Tensor]) -> ExportedModel:
        """The (cached) ONNX file this backend times for ``module``: structure-keyed."""
        return export_onnx(module, inputs, self.export, self.onnx_dir, match="structure")

    def prepare(self, module: Any, inputs: Sequence[torch.Tensor], config: TimingConfig):
        exported = self.export_model(module, inputs)
        settings = self._settings_for(config)
        t0 = time.perf_counter()
        if self.device == "cpu":
            session = open_session(exported.path, "cpu", settings)
            prepared: Any = OrtCpuPrepared(session, exported, inputs, self.precision, config.input_sets)
        else:
            prepared = OrtCudaPrepared(exported.path, exported, inputs, self.device, self.precision, settings,
                                       cold_cache=config.cold_cache)
        prepared.info.update(exported.info())
        prepared.info.update({"session_create_s": round(time.perf_counter() - t0, 3),
                              "intra_op_threads": settings.intra_op_threads})
        return prepared

    def describe(self) -> dict[str, Any]:
        ort = _ort()
        providers = ["CPUExecutionProvider"] if self.device == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return {
            "backend": self.name, "device": self.device, "precision": self.precision,
            "onnxruntime": ort.__version__, "onnxruntime_wheels": installed_ort_distributions(),
            "providers": providers,
            "available_providers": list(ort.get_available_providers()),
            "session_options": self.session.to_dict(), "io_binding": True,
            "export": self.export.to_dict(), "onnx_cache": str(self.onnx_dir),
            "clock": "perf_counter_ns" if self.device == "cpu" else "cuda events (user compute stream)",
            "timing": "wall clock per run" if self.device == "cpu" else (
                "synchronous latency (stream sync after every run)" if self.session.synchronize
                else f"device time (runs enqueued back to back, run option {NO_SYNC}=1)"),
            "precision_mode": {**precision_mode(self.precision, self.device, torch_flags=False),
                               **({"ort_cuda_use_tf32": self.session.use_tf32} if self.device != "cpu" else {})},
        }
