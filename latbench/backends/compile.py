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

Dynamo caches compiled code per Python frame and, past its recompile limit, silently runs the
frame eagerly. A LUT build compiles hundreds of modules of a few classes, so ``prepare`` resets
Dynamo first and checks afterwards that a graph really was compiled; a module that did not compile
is a failed measurement, never an eager number under the ``compile`` name. Consequence: keep one
prepared object of this backend alive at a time (preparing another resets Dynamo's caches).
"""

from __future__ import annotations

import time
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


def compile_module(module: torch.nn.Module, inputs: Sequence[torch.Tensor], settings: CompileSettings,
                   grad_mode: Any = torch.inference_mode) -> tuple[Any, dict[str, Any]]:
    """``torch.compile`` ``module`` and run it until compiled, under ``grad_mode`` (a context
    manager class: the one the timer will call it in). Returns the compiled callable and facts
    about it (``compile_s``: the first call, i.e. the compilation; ``compiled_graphs``;
    ``recompiles_after_warmup``, which must stay 0); raises RuntimeError if Dynamo compiled nothing
    (it would otherwise run eagerly)."""
    import torch._dynamo

    torch._dynamo.reset()
    before = _graph_count()
    compiled = torch.compile(module, mode=settings.mode, fullgraph=settings.fullgraph,
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
        if dev.startswith("cuda"):
            torch.backends.cudnn.benchmark = True

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
            prepared = CpuPrepared(fn, inputs, threads)
        else:
            from latbench.timing.cuda import GRAD_MODE, CudaGraphPrepared, EagerPrepared

            dev = torch.device(self.device)
            # compiled in the grad mode and fp32 math mode the CUDA timer warms up, captures and times in
            with torch.cuda.device(dev), fp32_math(self.precision):
                fn, facts = compile_module(module, inputs, self.settings, GRAD_MODE)
            cls = EagerPrepared if self.settings.mode in INDUCTOR_CUDAGRAPH_MODES else CudaGraphPrepared
            prepared = cls(fn, inputs, dev, config, self.precision)
        prepared.info.update(facts)
        prepared.info.update({"compile_mode": self.settings.mode, "graph_timing": self.graph_timing})
        return prepared

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
