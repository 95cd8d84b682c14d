"""The ``compile`` backend: ``torch.compile`` (Inductor), timed with latbench's protocol.

``prepare`` compiles the module for the exact input shapes (``dynamic=False``), runs it until
compilation is over and reports the compilation time separately (``info["compile_s"]``, which
``latbench build-lut`` prints per entry), never inside a sample. Compilation, warm-up, capture and
timing all run in one grad mode, the timer's (``torch.no_grad`` on a GPU, ``torch.inference_mode``
on the CPU): Dynamo guards on the grad mode, so compiling in one mode and timing in another would
compile every entry twice and time a graph other than the one compiled. ``info`` records the
graphs compiled and any recompilation after the warm-up. Then:

- on a GPU, modes without Inductor's own CUDA graphs (``default``, ``max-autotune-no-cudagraphs``)
  are captured as CUDA-graph replays by latbench's ``cudagraph`` machinery (several calls per
  graph, CUDA events), exactly as eager ops are; modes that use Inductor's CUDA-graph trees
  (``reduce-overhead``, ``max-autotune``) are timed as launched, with CUDA events — capturing
  Inductor's graphs inside another graph is not supported by torch;
- on the CPU, timed by wall clock like the ``cpu`` backend.

Dynamo caches compiled code per Python code object and, past its recompile limit (8), silently
runs the frame eagerly. A LUT build compiles hundreds of modules of a few classes, and
``latbench fit`` / ``validate-lut`` keep dozens of compiled networks of one class alive and call
them in turn. So every prepared module is compiled through an entry function of its own (a fresh
code object: its own cache, one entry), nothing resets Dynamo, ``prepare`` checks that a graph
really was compiled, and timing checks that nothing compiled while it ran: a module that did not
compile, or recompiled inside a sample, is a failed measurement, never an eager number under the
``compile`` name. (Measured before this rule, 2026-11-29: when 50 networks were prepared first and
timed in interleaved rounds, each prepare reset Dynamo and every network after the eighth ran
eagerly, about 1.45x slower: benchmarks/results/compile_recompile_limit-cpu-amd-epyc-65x129-2026-11-29.json.)
"""

from __future__ import annotations

import itertools
import time
import types
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from latbench.errors import UserError
from latbench.timing.config import TimingConfig
from latbench.timing.precision import check_precision, convert, fp32_math, precision_mode

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Modes in which Inductor captures CUDA graphs itself.
INDUCTOR_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class CompileSettings:
    mode: str = "default"
    fullgraph: bool = False
    dynamic: bool = False
    backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown torch.compile mode {self.mode!r}; choose one of {', '.join(MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


_ENTRY_IDS = itertools.count()


def private_entry(module: Any) -> Any:
    """A function that calls ``module``, with a code object of its own: Dynamo keeps its compiled
    code on the code object, so each module compiled through its own entry has a private cache
    (one entry) instead of sharing ``forward``'s with every other instance of its class."""
    def call(*args: Any) -> Any:
        return module(*args)

    code = call.__code__.replace(co_name=f"latbench_compiled_{next(_ENTRY_IDS)}")
    return types.FunctionType(code, call.__globals__, code.co_name, call.__defaults__, call.__closure__)


class RecompileCheck:
    """Wraps a prepared object: a timing call during which Dynamo compiled anything is an error
    (the sample would hold compilation, or a fallback to eager after a recompile limit)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def time(self, calls: int) -> float:
        before = _graph_count()
        dt = self._inner.time(calls)
        if _graph_count() != before:
            raise RuntimeError("torch.compile recompiled during timing (guards failed); the sample is not "
                               "of the compiled graph")
        return dt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def compile_module(module: torch.nn.Module, inputs: Sequence[torch.Tensor], settings: CompileSettings,
                   grad_mode: Any = torch.inference_mode) -> tuple[Any, dict[str, Any]]:
    """``torch.compile`` ``module`` and run it until compiled, under ``grad_mode`` (a context
    manager class: the one the timer will call it in). Returns the compiled callable and facts
    about it (``compile_s``: the first call, i.e. the compilation; ``compiled_graphs``;
    ``recompiles_after_warmup``, which must stay 0); raises RuntimeError if Dynamo compiled nothing
    (it would otherwise run eagerly)."""
    before = _graph_count()
    compiled = torch.compile(private_entry(module), mode=settings.mode, fullgraph=settings.fullgraph,
                             dynamic=settings.dynamic, backend=settings.backend)
    sync = torch.cuda.synchronize if any(t.is_cuda for t in inputs) else (lambda: None)
    t0 = time.perf_counter()
    with grad_mode():
        compiled(*inputs)
    sync()
    compile_s = time.perf_counter() - t0
    graphs = _graph_count() - before
    facts: dict[str, Any] = {"compile_s": round(compile_s, 3), "compiled_graphs": graphs,
                             "compile_grad_mode": grad_mode.__name__}
    if graphs < 1:
        # A pure pass-through (e.g. an identity skip) has nothing to compile: Dynamo makes no graph
        # and a compiled network drops it. Time the plain call and say so; anything else that
        # compiled to nothing is an error (Dynamo would silently run it eagerly).
        with grad_mode():
            out = module(*inputs)
        if isinstance(out, torch.Tensor) and any(out is t for t in inputs):
            return module, {**facts, "passthrough": True, "recompiles_after_warmup": 0}
        raise RuntimeError("torch.compile produced no graph for this module (Dynamo would run it eagerly)")
    # A second call: Inductor's cudagraph trees record on the first runs; nothing may compile now.
    with grad_mode():
        compiled(*inputs)
    sync()
    facts["recompiles_after_warmup"] = _graph_count() - before - graphs
    return compiled, facts


class CompileBackend:
    """``get_backend("compile", device="cpu"|"cuda:N", precision=..., threads=N, mode="default")``."""

    name = "compile"

    def __init__(self, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 mode: str = "default", fullgraph: bool = False) -> None:
        dev = str(device or "cpu").lower()
        if dev != "cpu":
            from latbench.device import resolve_device

            dev = resolve_device(dev)
            if not dev.startswith("cuda"):
                raise UserError(f"timing backend 'compile' runs on cpu or cuda:N, not {device!r}")
        self.device = dev
        self.precision = check_precision(precision, dev, self.name)
        self.threads = threads
        self.settings = CompileSettings(mode=mode, fullgraph=bool(fullgraph))

    @property
    def graph_timing(self) -> str:
        if self.device == "cpu":
            return "wall clock"
        if self.settings.mode in INDUCTOR_CUDAGRAPH_MODES:
            return "inductor cudagraph trees, cuda events"
        return "latbench cuda graph replays, cuda events"

    def prepare(self, module: Any, inputs: Sequence[torch.Tensor], config: TimingConfig):
        module, inputs = convert(module, inputs, self.device, self.precision)
        if self.device == "cpu":
            from latbench.timing.cpu import GRAD_MODE, CpuPrepared

            threads = config.threads or self.threads
            prev = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)  # compile with the thread count it will run with
            try:
                fn, facts = compile_module(module, inputs, self.settings, GRAD_MODE)
            finally:
                torch.set_num_threads(prev)
            prepared = CpuPrepared(fn, inputs, threads, config.input_sets)
        else:
            from latbench.timing.cuda import GRAD_MODE, CudaGraphPrepared, EagerPrepared, cudnn_benchmark

            dev = torch.device(self.device)
            # compiled in the grad mode, fp32 math mode and cuDNN autotuning the CUDA timer warms up,
            # captures and times in (each restored afterwards)
            with torch.cuda.device(dev), fp32_math(self.precision), cudnn_benchmark(True):
                fn, facts = compile_module(module, inputs, self.settings, GRAD_MODE)
            cls = EagerPrepared if self.settings.mode in INDUCTOR_CUDAGRAPH_MODES else CudaGraphPrepared
            prepared = cls(fn, inputs, dev, config, self.precision)
        prepared.info.update(facts)
        prepared.info.update({"compile_mode": self.settings.mode, "graph_timing": self.graph_timing})
        return prepared if facts.get("passthrough") else RecompileCheck(prepared)

    def describe(self) -> dict[str, Any]:
        import torch._inductor.config as inductor_config

        return {
            "backend": self.name, "device": self.device, "precision": self.precision,
            "torch": torch.__version__, "compile": self.settings.to_dict(),
            "timing": self.graph_timing,
            "threads": (self.threads or torch.get_num_threads()) if self.device == "cpu" else None,
            "inductor": {"max_autotune": bool(getattr(inductor_config, "max_autotune", False)),
                         "freezing": bool(getattr(inductor_config, "freezing", False))},
            "compile_time": "reported per entry in info['compile_s'], never inside a sample",
            "grad_mode": "no_grad" if self.device != "cpu" else "inference_mode",
            "precision_mode": precision_mode(self.precision, self.device),
        }
