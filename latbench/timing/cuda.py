"""CUDA backends: ``eager`` (CUDA events around back-to-back calls on a stream) and ``cudagraph``
(several calls captured in one CUDA graph, replays timed with CUDA events, divided by the calls).

Both run every call with ``torch.backends.cudnn.benchmark = True`` (DESIGN §5.1) -- set around
warm-up, capture and each timed batch, like the fp32 math mode, and the caller's setting restored
in between -- and never change GPU settings.

- **No host launch inside a sample.** Events recorded on an idle stream start the clock the moment
  the host enqueues the start event; the first kernel (or graph replay) behind it reaches the GPU
  only after the host has launched it, so every sample would also count that one host launch --
  for a whole network timed as one replay per sample, every sample (+0.2-0.5 % on its FPS). Each
  sample therefore enqueues a short spin kernel (``torch.cuda._sleep``) before the start event
  (:class:`StartLead`): the host enqueues the start event and the first launches while the GPU
  spins, and the GPU reaches the start event with work already queued behind it. The spin lasts
  twice the host time of one launch seen in the previous sample (between 50 µs and 1 ms; its
  clock rate is calibrated once per prepared object); it lies outside the timed region.

- **One grad mode.** Warm-up, capture, timing and enqueue timing all run under
  :data:`GRAD_MODE` (``torch.no_grad``), so a compiled callable (``compile`` backend) is compiled
  for, captured with and timed in the same mode: Dynamo guards on the grad mode, and a different
  mode would mean a second compilation and a different graph.
- **One fp32 math mode.** ``precision`` ``fp32`` is strict IEEE fp32 (TF32 off for cuDNN
  convolutions and cuBLAS matmuls), ``tf32`` allows TF32 (:func:`latbench.timing.precision.fp32_math`);
  set around preparation (cuDNN's algorithm choice depends on it), capture and every timed batch,
  and the caller's settings are restored in between.
- **Cold cache** (``TimingConfig.cold_cache``): a buffer twice the L2 size is allocated once and
  zeroed on the timing stream before each sample, i.e. before the start event, outside the timed
  region. Each cold sample is then one call: ``eager`` launches it; ``cudagraph`` replays a graph
  that holds one call. The flush runs for tens of µs on the GPU, long enough for the host to
  enqueue the start event and the call behind it, so host launch cost stays hidden; the device-side
  start of the graph (or of the first kernel) is inside the sample. For µs-scale ops that start is
  a visible share of a cold number; warm numbers capture several calls per graph and do not carry it.
- **Pass-throughs** (a callable that returns its input, e.g. an identity skip): nothing runs on the
  GPU, a graph would be empty (torch warns) and a "time" would be the replay of nothing. The
  ``cudagraph`` backend refuses them (a failed measurement saying so); LUT builds never time them
  (:func:`latbench.timing.passthrough.is_passthrough`, status ``analytic``, 0 µs).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Sequence

import torch

from latbench.errors import UserError
from latbench.timing.clock import ClockMonitor
from latbench.timing.config import TimingConfig
from latbench.timing.precision import check_precision, convert, fp32_math, precision_mode

# A graph holds at most this many calls; fewer if capture runs out of memory.
MAX_CALLS_PER_GRAPH = 128

#: The grad mode of every CUDA warm-up, capture and timed call (see the module docstring).
GRAD_MODE = torch.no_grad


def _check_cuda_device(backend: str, device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type != "cuda":
        raise UserError(f"timing backend {backend!r} needs a CUDA device, not {device!r}; "
                        "use --backend cpu for the CPU")
    if not torch.cuda.is_available():
        raise UserError(f"timing backend {backend!r} needs a CUDA GPU and none is available")
    index = 0 if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise UserError(f"no CUDA device {device!r}: this machine has {torch.cuda.device_count()}")
    return torch.device("cuda", index)


def _l2_flush_buffer(dev: torch.device) -> torch.Tensor:
    props = torch.cuda.get_device_properties(dev)
    l2 = int(getattr(props, "L2_cache_size", 0) or 0) or 64 * 1024 * 1024
    return torch.empty(2 * l2 // 4, dtype=torch.int32, device=dev)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool = True):
    """``torch.backends.cudnn.benchmark = enabled`` inside, the caller's setting restored after."""
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = prev


class StartLead:
    """A spin kernel enqueued before each sample's start event (see the module docstring).

    ``enqueue()`` launches ``torch.cuda._sleep`` on the current stream for :attr:`lead_s`;
    ``update(host_s, launches)`` sets the next lead to twice the host time of one launch of the
    last sample, clipped to [:data:`MIN_S`, :data:`MAX_S`]. The spin's cycles per second are
    measured once here (events around a 200k-cycle spin). Without ``torch.cuda._sleep`` (or if
    the calibration fails) nothing is enqueued and :meth:`describe` says so."""

    MIN_S = 50e-6
    MAX_S = 1e-3
    CALIBRATION_CYCLES = 200_000

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.lead_s = self.MIN_S
        self.cycles_per_s: float | None = None
        self._sleep = getattr(torch.cuda, "_sleep", None)
        if self._sleep is None:
            return
        try:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(stream):
                self._sleep(1000)  # loads the kernel
                start.record(stream)
                self._sleep(self.CALIBRATION_CYCLES)
                end.record(stream)
            end.synchronize()
            seconds = start.elapsed_time(end) * 1e-3
            if seconds > 0:
                self.cycles_per_s = self.CALIBRATION_CYCLES / seconds
        except Exception:  # a lead is an improvement, never a reason to fail a measurement
            self.cycles_per_s = None

    def enqueue(self) -> None:
        if self.cycles_per_s:
            self._sleep(max(1, int(self.lead_s * self.cycles_per_s)))

    def update(self, host_s: float, launches: int) -> None:
        per_launch = host_s / max(1, launches)
        self.lead_s = min(self.MAX_S, max(self.MIN_S, 2.0 * per_launch))

    def describe(self) -> dict[str, Any]:
        if not self.cycles_per_s:
            return {"start_lead": "none (torch.cuda._sleep unavailable)"}
        return {"start_lead": "torch.cuda._sleep before the start event", "start_lead_us": self.lead_s * 1e6,
                "sleep_cycles_per_us": self.cycles_per_s * 1e-6}


def _returns_an_input(out: Any, inputs: Sequence[Any]) -> bool:
    return isinstance(out, torch.Tensor) and any(out is t for t in inputs)


class _CudaPrepared:
    """Base of the CUDA timers. ``precision`` (``fp32`` | ``tf32`` | ``fp16``) sets the fp32 math
    mode around every call made here; ``None`` leaves torch's flags alone (e.g. a TensorRT engine,
    whose math was fixed when it was built)."""

    granularity = 1

    def __init__(self, fn, inputs: Sequence[torch.Tensor], dev: torch.device, config: TimingConfig,
                 precision: str | None = None) -> None:
        self._fn = fn
        self._inputs = tuple(inputs)
        self._dev = dev
        self._precision = precision
        self._stream = torch.cuda.Stream(dev)
        self._flush = _l2_flush_buffer(dev) if config.cold_cache else None
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._lead = StartLead(self._stream)
        self.clock = ClockMonitor.for_device(dev.index)
        self.info: dict[str, Any] = {"cold_cache": config.cold_cache, "grad_mode": GRAD_MODE.__name__,
                                     "cudnn_benchmark": True, **self._lead.describe()}
        if precision is not None:
            self.info["fp32_math"] = "tf32" if precision == "tf32" else "ieee"

    def _math(self):
        """cuDNN autotuning on and the fp32 math mode (unless ``precision`` is None), both restored after."""
        stack = contextlib.ExitStack()
        stack.enter_context(cudnn_benchmark(True))
        if self._precision is not None:
            stack.enter_context(fp32_math(self._precision))
        return stack

    def _launches(self, calls: int) -> int:
        """How many host launches ``_launch(calls)`` makes (calls, or graph replays)."""
        return calls

    def _ctx(self):
        """Device, timing stream, grad mode (entered in this order by the callers)."""
        return torch.cuda.device(self._dev), torch.cuda.stream(self._stream), GRAD_MODE()

    def _launch(self, calls: int) -> None:
        raise NotImplementedError

    def time(self, calls: int) -> float:
        dev_ctx, stream_ctx, grad_ctx = self._ctx()
        with self._math(), dev_ctx, stream_ctx, grad_ctx:
            if self._flush is not None:
                self._flush.zero_()
            self._lead.enqueue()  # the GPU spins while the host enqueues the start event and the launches
            self._start.record(self._stream)
            t0 = time.perf_counter()
            self._launch(calls)
            host_s = time.perf_counter() - t0
            self._end.record(self._stream)
        self._end.synchronize()
        self._lead.update(host_s, self._launches(calls))
        if self._lead.cycles_per_s:
            self.info["start_lead_us"] = self._lead.lead_s * 1e6  # the lead the next sample gets
        return self._start.elapsed_time(self._end) * 1e-3

    def enqueue_time(self, calls: int) -> float:
        """Host seconds to enqueue ``calls`` calls (the GPU work is waited for outside the clock)."""
        self._stream.synchronize()
        dev_ctx, stream_ctx, grad_ctx = self._ctx()
        with self._math(), dev_ctx, stream_ctx, grad_ctx:
            t0 = time.perf_counter()
            self._launch(calls)
            t1 = time.perf_counter()
        self._stream.synchronize()
        return t1 - t0

    def close(self) -> None:
        try:
            self._stream.synchronize()
        except Exception:
            pass
        self._fn = None
        self._inputs = ()
        self._flush = None


def _run_calls(fn, inputs, calls: int) -> None:
    for _ in range(calls):
        fn(*inputs)


class EagerPrepared(_CudaPrepared):
    def _launch(self, calls: int) -> None:
        _run_calls(self._fn, self._inputs, calls)


class CudaGraphPrepared(_CudaPrepared):
    """Captures ``calls_per_graph`` back-to-back calls in one graph so that one replay lasts about
    ``config.target_sample_s`` (at most :data:`MAX_CALLS_PER_GRAPH`; halved on out-of-memory);
    with a cold cache one call per graph. ``time(calls)`` needs a multiple of ``granularity``."""

    def __init__(self, fn, inputs, dev, config: TimingConfig, precision: str | None = None) -> None:
        super().__init__(fn, inputs, dev, config, precision)
        # Eager warm-up on the side stream before capture (cuDNN picks its algorithms here), in
        # the grad mode and fp32 math mode of the capture.
        dev_ctx, stream_ctx, grad_ctx = self._ctx()
        with self._math(), dev_ctx, stream_ctx, grad_ctx:
            out = None
            for _ in range(3):
                out = fn(*self._inputs)
            if _returns_an_input(out, self._inputs):
                raise ValueError("a pass-through (the callable returns its input): nothing runs on the GPU, so "
                                 "there is nothing to capture or time; latbench treats it as analytic (0 µs)")
            del out
        self._stream.synchronize()
        dev_ctx, stream_ctx, grad_ctx = self._ctx()
        with self._math(), dev_ctx, stream_ctx, grad_ctx:
            self._start.record(self._stream)
            _run_calls(fn, self._inputs, 3)
            self._end.record(self._stream)
        self._end.synchronize()
        t_call = max(self._start.elapsed_time(self._end) * 1e-3 / 3, 1e-7)
        n = 1 if config.cold_cache else int(min(MAX_CALLS_PER_GRAPH, max(1, math.ceil(config.target_sample_s / t_call))))
        self._graph = None
        while True:
            try:
                self._graph = self._capture(n)
                break
            except torch.cuda.OutOfMemoryError:
                self._graph = None
                torch.cuda.empty_cache()
                if n == 1:
                    raise
                n = max(1, n // 2)
        self.granularity = n
        self.info.update({"calls_per_graph": n, "eager_call_us": t_call * 1e6})

    def _launches(self, calls: int) -> int:
        return max(1, calls // self.granularity)

    def _capture(self, n: int) -> torch.cuda.CUDAGraph:
        g = torch.cuda.CUDAGraph()
        fn, inputs = self._fn, self._inputs
        with self._math(), torch.cuda.device(self._dev), GRAD_MODE():
            with torch.cuda.graph(g, stream=self._stream):
                for _ in range(n):
                    out = fn(*inputs)
                    del out
        self._stream.synchronize()
        return g

    def _launch(self, calls: int) -> None:
        if calls % self.granularity:
            raise ValueError(f"calls ({calls}) must be a multiple of calls_per_graph ({self.granularity})")
        g = self._graph
        for _ in range(calls // self.granularity):
            g.replay()

    def close(self) -> None:
        super().close()
        self._graph = None


class _CudaBackend:
    name = "eager"
    prepared_cls: type = EagerPrepared

    def __init__(self, device: str = "cuda:0", precision: str = "fp32", threads: int | None = None) -> None:
        self.dev = _check_cuda_device(self.name, str(device))
        self.device = str(self.dev)
        self.precision = check_precision(precision, self.device, self.name)

    def prepare(self, module: Any, inputs: Sequence[torch.Tensor], config: TimingConfig):
        module, inputs = convert(module, inputs, self.device, self.precision)
        return self.prepared_cls(module, inputs, self.dev, config, self.precision)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "clock": "cuda events", "cudnn_benchmark": True, "start_lead": "torch.cuda._sleep before the start event", "grad_mode": GRAD_MODE.__name__,
                "precision_mode": precision_mode(self.precision, self.device)}


class EagerBackend(_CudaBackend):
    name = "eager"
    prepared_cls = EagerPrepared


class CudaGraphBackend(_CudaBackend):
    name = "cudagraph"
    prepared_cls = CudaGraphPrepared
