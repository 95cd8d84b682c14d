"""CUDA backends: ``eager`` (CUDA events around back-to-back calls on a stream) and ``cudagraph``
(several calls captured in one CUDA graph, replays timed with CUDA events, divided by the calls).

Both set ``torch.backends.cudnn.benchmark = True`` (DESIGN §5.1) and never change GPU settings.
With ``TimingConfig.cold_cache`` a buffer twice the L2 size is allocated once and zeroed on the
timing stream before each sample, i.e. before the start event: outside the timed region.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch

from latbench.errors import UserError
from latbench.timing.clock import ClockMonitor
from latbench.timing.config import TimingConfig
from latbench.timing.precision import DTYPES, convert

# A graph holds at most this many calls; fewer if capture runs out of memory.
MAX_CALLS_PER_GRAPH = 128


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


class _CudaPrepared:
    granularity = 1

    def __init__(self, fn, inputs: Sequence[torch.Tensor], dev: torch.device, config: TimingConfig) -> None:
        self._fn = fn
        self._inputs = tuple(inputs)
        self._dev = dev
        self._stream = torch.cuda.Stream(dev)
        self._flush = _l2_flush_buffer(dev) if config.cold_cache else None
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self.clock = ClockMonitor.for_device(dev.index)
        self.info: dict[str, Any] = {"cold_cache": config.cold_cache}

    def _launch(self, calls: int) -> None:
        raise NotImplementedError

    def time(self, calls: int) -> float:
        with torch.cuda.device(self._dev), torch.cuda.stream(self._stream), torch.inference_mode():
            if self._flush is not None:
                self._flush.zero_()
            self._start.record(self._stream)
            self._launch(calls)
            self._end.record(self._stream)
        self._end.synchronize()
        return self._start.elapsed_time(self._end) * 1e-3

    def enqueue_time(self, calls: int) -> float:
        """Host seconds to enqueue ``calls`` calls (the GPU work is waited for outside the clock)."""
        self._stream.synchronize()
        with torch.cuda.device(self._dev), torch.cuda.stream(self._stream), torch.inference_mode():
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

    def __init__(self, fn, inputs, dev, config: TimingConfig) -> None:
        super().__init__(fn, inputs, dev, config)
        # Eager warm-up on the side stream before capture (cuDNN picks its algorithms here).
        with torch.cuda.device(dev), torch.cuda.stream(self._stream), torch.inference_mode():
            for _ in range(3):
                fn(*self._inputs)
        self._stream.synchronize()
        with torch.cuda.device(dev), torch.cuda.stream(self._stream), torch.inference_mode():
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

    def _capture(self, n: int) -> torch.cuda.CUDAGraph:
        g = torch.cuda.CUDAGraph()
        fn, inputs = self._fn, self._inputs
        with torch.cuda.device(self._dev), torch.no_grad():
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
        if precision not in DTYPES:
            raise UserError(f"unknown precision {precision!r}; expected one of {', '.join(DTYPES)}")
        self.dev = _check_cuda_device(self.name, str(device))
        self.device = str(self.dev)
        self.precision = precision
        torch.backends.cudnn.benchmark = True

    def prepare(self, module: Any, inputs: Sequence[torch.Tensor], config: TimingConfig):
        module, inputs = convert(module, inputs, self.device, self.precision)
        return self.prepared_cls(module, inputs, self.dev, config)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "clock": "cuda events", "cudnn_benchmark": True}


class EagerBackend(_CudaBackend):
    name = "eager"
    prepared_cls = EagerPrepared


class CudaGraphBackend(_CudaBackend):
    name = "cudagraph"
    prepared_cls = CudaGraphPrepared
