"""The ``cpu`` backend: wall clock (``time.perf_counter_ns``) around back-to-back calls, all of them
(warm-up and samples) under :data:`GRAD_MODE` (``torch.inference_mode``), each call on the next of
``input_sets`` random input sets (:mod:`latbench.timing.inputs`)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from latbench.errors import UserError
from latbench.timing.config import TimingConfig
from latbench.timing.inputs import input_sets as make_input_sets, rotation
from latbench.timing.precision import check_precision, convert, precision_mode

#: The grad mode of every call the CPU timer makes (``compile`` on the CPU compiles under it too).
GRAD_MODE = torch.inference_mode


class CpuPrepared:
    granularity = 1
    clock = None

    def __init__(self, fn, inputs: Sequence[torch.Tensor], threads: int | None, input_sets: int = 1) -> None:
        self._fn = fn
        self._sets = make_input_sets(inputs, input_sets)
        # torch's thread count is process-wide: set it while this object is alive, restore on close.
        self._prev_threads = torch.get_num_threads()
        if threads and threads != self._prev_threads:
            torch.set_num_threads(threads)
        self.info: dict[str, Any] = {"threads": torch.get_num_threads(), "input_sets": len(self._sets)}

    def time(self, calls: int) -> float:
        fn = self._fn
        sets = rotation(self._sets, calls)
        with GRAD_MODE():
            t0 = time.perf_counter_ns()
            for args in sets:
                fn(*args)
            t1 = time.perf_counter_ns()
        return (t1 - t0) * 1e-9

    def close(self) -> None:
        self._fn = None
        self._sets = [()]
        if torch.get_num_threads() != self._prev_threads:
            torch.set_num_threads(self._prev_threads)


class CpuBackend:
    name = "cpu"

    def __init__(self, device: str = "cpu", precision: str = "fp32", threads: int | None = None) -> None:
        if str(device) != "cpu":
            raise UserError(f"timing backend 'cpu' runs on the CPU, not on {device!r}; use --device cpu "
                            "or a CUDA backend (eager, cudagraph)")
        self.device = "cpu"
        self.precision = check_precision(precision, "cpu", self.name)
        self.threads = threads

    def prepare(self, module: Any, inputs: Sequence[torch.Tensor], config: TimingConfig) -> CpuPrepared:
        module, inputs = convert(module, inputs, self.device, self.precision)
        return CpuPrepared(module, inputs, config.threads or self.threads, config.input_sets)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "threads": self.threads or torch.get_num_threads(), "clock": "perf_counter_ns",
                "grad_mode": GRAD_MODE.__name__, "precision_mode": precision_mode(self.precision, self.device)}
