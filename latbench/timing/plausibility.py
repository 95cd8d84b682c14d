"""Timings a LUT must not trust: taken while other processes held the timing threads' cores, or
physically implausible for the op (DESIGN §5.11).

A contended CPU build can time an op hundreds of times too slow *and precisely* (OpenMP threads
waiting on a preempted sibling: six distinct separable convolutions at 39.9-40.0 ms, each with a
noise estimate of 0.05 %, against 94 µs minutes later with one thread; issue 17). The noise
estimate cannot see that; this module looks at what can:

- **load** (:mod:`latbench.timing.load`): around each entry's timing, the 1-minute load average,
  the run-queue length, the CPU steal over the timing, the other runnable tasks on the cores this
  process may use, and how long the timing threads waited for a CPU. Recorded per LUT row.
- **throughput** (:func:`measure_throughput`): once per build, with the build's own backend,
  precision and thread count, a dense matmul (FLOP/s), a large element-wise add (bytes/s) and a
  trivial op (the per-call floor). Stored in the LUT metadata (``plausibility``).
- **cost** (:func:`op_cost`): an op's FLOPs (``torch.utils.flop_counter.FlopCounterMode``), bytes
  (inputs, outputs, parameters, buffers) and kernel count, on the ``meta`` device (no compute).
- **judging** (:class:`EntryChecker`, :func:`judge`, :func:`collapsed`): a timing is suspicious
  when the timing threads waited for a CPU or the CPU was stolen, when it is far slower than the
  machine's bound for its work (``too_slow`` × (roofline + kernels × call floor)), faster than the
  machine's peak allows (``too_fast``), or when many distinct ops of different work collapse on
  one value. It is re-timed (``retime`` times, bounded); a doubt that persists is written to the
  row's ``flag`` column, with the reason.
- **refusal** (:mod:`latbench.lut.flags`, re-exported here): ``fit``, ``validate-lut`` and ``nas
  search`` refuse a LUT whose rows they need are flagged, in one line saying why and what to do.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

from latbench.lut.flags import flagged_rows, refuse_flagged, retime_command
from latbench.timing.load import (FLAG_COLUMN, LOAD_COLUMNS, ROW_FIELDS, LoadRecord, LoadSnapshot, LoadWatch,
                                  default_cpu_threads, sample_load, usable_cores)

META_KEY = "plausibility"
__all__ = ["FLAG_COLUMN", "LOAD_COLUMNS", "META_KEY", "ROW_FIELDS", "EntryChecker", "LoadRecord", "LoadSnapshot",
           "LoadWatch", "OpCost", "PlausibilityConfig", "Throughput", "collapsed", "default_cpu_threads",
           "flagged_rows", "judge", "measure_throughput", "op_cost", "refuse_flagged", "retime_command",
           "sample_load", "spec_cost", "timing_threads", "usable_cores"]


# ---- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlausibilityConfig:
    """When a timing is not trusted.

    - ``retime``: re-time a suspicious entry at most this many times (at the end of the queue, so
      that a passing load has time to clear), then flag it if it is still suspicious.
    - ``max_wait``: the timing threads spent more than this fraction of the timing waiting for a
      CPU (run-queue wait from schedstat) -> contended.
    - ``max_steal``: more than this fraction of all CPU time was stolen by the hypervisor -> contended.
    - ``too_slow``: the median exceeds this many times the machine's bound for the op's work
      (roofline time from measured FLOP/s and bytes/s, plus one call floor per kernel).
    - ``too_fast``: the op's FLOPs at the measured peak would take this many times longer than the
      median (10 leaves room for Winograd convolutions and a matmul probe below the true peak).
    - ``collapse_min`` / ``collapse_tol`` / ``collapse_spread`` / ``collapse_floor``: at least
      ``collapse_min`` distinct ops whose medians lie within ``collapse_tol`` (relative) of each
      other, whose work (roofline time; bytes without a probe) differs by at least
      ``collapse_spread`` ×, and each at least ``collapse_floor`` × the machine's bound for its work
      (roofline plus one call floor per kernel; ``collapse_min_us`` without a probe) -> collapsed.
      The floor is far above the bound because small ops on a CPU are dispatch-bound: a 3-kernel
      separable convolution on 8 channels at 9×17 takes ~9× its bound (a convolution's dispatch costs
      more than the trivial op that sets the call floor), and its variants of other dilations and
      strides take the same time to 0.5 %, rightly; the collapse this check exists for put six
      separable convolutions at ~400× their bound (a contended 2-thread build).
    - ``probe_s``: time budget of each of the three throughput probes.
    - ``accept_load``: record the load but never flag contention (``build-lut --accept-load``: demos
      and functional tests on a busy machine); the physical checks still apply.
    """

    retime: int = 1
    max_wait: float = 0.05
    max_steal: float = 0.05
    too_slow: float = 200.0
    too_fast: float = 10.0
    collapse_min: int = 5
    collapse_tol: float = 0.005
    collapse_spread: float = 1.5
    collapse_floor: float = 30.0
    collapse_min_us: float = 100.0
    probe_s: float = 0.15
    accept_load: bool = False

    def __post_init__(self) -> None:
        if self.retime < 0:
            raise ValueError("retime must be >= 0")
        if not (self.too_slow > 1 and self.too_fast > 1):
            raise ValueError("too_slow and too_fast must be > 1")
        if self.collapse_min < 2:
            raise ValueError("collapse_min must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- machine throughput (one probe per build) ----------------------------------------------------
@dataclass(frozen=True)
class Throughput:
    """What the build's backend reaches on this machine: dense-matmul FLOP/s, element-wise
    bytes/s and the time of one trivial op (the per-call floor). ``error`` when the probe failed
    (then the physical checks are skipped)."""

    flops_per_s: float | None = None
    bytes_per_s: float | None = None
    call_us: float | None = None
    threads: int | None = None
    error: str | None = None

    @property
    def usable(self) -> bool:
        return bool(self.flops_per_s and self.bytes_per_s and self.call_us is not None and self.call_us > 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Throughput | None":
        if not isinstance(d, Mapping):
            return None
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def _probe_modules(on_gpu: bool):
    import torch
    from torch import nn

    n = 4096 if on_gpu else 512
    elems = (64 if on_gpu else 8) * 2 ** 20

    class AddOne(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1.0

    return [
        ("matmul", nn.Linear(n, n, bias=False), (n, n), 2.0 * n ** 3),
        ("add", AddOne(), (elems,), None),
        ("call", nn.ReLU(), (1, 8), None),
    ]


def measure_throughput(backend: Any, config: Any, precision: str = "fp32", budget_s: float = 0.15,
                       threads: int | None = None) -> Throughput:
    """Time three probe modules with ``backend`` (:class:`latbench.timing.TimingConfig` ``config``
    for threads and cache, a short budget each). Never raises: a backend that cannot run the probe
    gives a :class:`Throughput` with ``error`` set."""
    import torch

    from latbench.timing.config import TimingConfig
    from latbench.timing.loop import describe_error, measure_prepared

    on_gpu = str(getattr(backend, "device", "cpu")).startswith("cuda")
    probe_cfg = TimingConfig(warmup_s=min(0.05, budget_s), warmup_rounds=2, min_samples=3,
                             min_time_s=min(0.05, budget_s), max_time_s=max(budget_s, 1e-3), max_noise=0.02,
                             cold_cache=False, target_sample_s=getattr(config, "target_sample_s", 1e-3),
                             threads=getattr(config, "threads", None))
    results: dict[str, float] = {}
    probes = _probe_modules(on_gpu)
    for name, module, shape, _ in probes:
        prepared = None
        try:
            module.eval()
            g = torch.Generator().manual_seed(0)
            prepared = backend.prepare(module, [torch.randn(shape, generator=g)], probe_cfg)
            m = measure_prepared(prepared, probe_cfg)
        except Exception as exc:  # a backend that cannot run the probe: no physical checks
            return Throughput(threads=threads, error=f"{name} probe: {describe_error(exc)}"[:200])
        finally:
            if prepared is not None:
                try:
                    prepared.close()
                except Exception:
                    pass
        if m.status != "ok" or not (m.median_us > 0 and math.isfinite(m.median_us)):
            return Throughput(threads=threads, error=f"{name} probe: {m.error or 'no usable timing'}"[:200])
        # the fastest decile: the machine's capability, not its average
        results[name] = float(m.p10_us if (m.p10_us and m.p10_us > 0) else m.median_us)
    (_, _, _, flops), (_, _, (elems,), _) = probes[0], probes[1]
    return Throughput(flops_per_s=flops / (results["matmul"] * 1e-6),
                      bytes_per_s=2 * elems * _element_size(precision) / (results["add"] * 1e-6),
                      call_us=results["call"], threads=threads)


# ---- the work of one op --------------------------------------------------------------------------
@dataclass(frozen=True)
class OpCost:
    """An op's FLOPs (matmuls and convolutions, as ``FlopCounterMode`` counts them), bytes
    (inputs, outputs, parameters and buffers at the build's precision) and kernels (aten calls
    that are not views)."""

    flops: float
    bytes: float
    kernels: int

    def roofline_us(self, tp: Throughput) -> float | None:
        """The time this work takes at the measured FLOP/s or bytes/s, whichever binds."""
        if not tp.usable:
            return None
        return max(self.flops / tp.flops_per_s, self.bytes / tp.bytes_per_s) * 1e6

    def bound_us(self, tp: Throughput) -> float | None:
        """The machine's bound for this work: roofline time plus one call floor per kernel."""
        roof = self.roofline_us(tp)
        return None if roof is None else roof + max(1, self.kernels) * float(tp.call_us)

    def peak_us(self, tp: Throughput) -> float | None:
        """The fastest the FLOPs can go at the measured peak (None without FLOPs or a probe)."""
        if not tp.usable or self.flops <= 0:
            return None
        return self.flops / tp.flops_per_s * 1e6


def _element_size(precision: str) -> int:
    return 2 if precision in ("fp16", "bf16") else 4


def _nbytes(tensors: Iterable[Any], size: int) -> float:
    import torch

    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            total += t.numel() * (size if t.is_floating_point() else t.element_size())
    return float(total)


def _flatten_out(out: Any) -> list[Any]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten_out(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten_out(o)]
    return []


def op_cost(module: Any, shapes: Iterable[Iterable[int]], precision: str = "fp32") -> OpCost | None:
    """:class:`OpCost` of ``module`` on inputs of ``shapes``, from one forward pass on the ``meta``
    device (no data, no compute). None when the module cannot run there."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Kernels(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not getattr(func, "is_view", False):
                self.n += 1
            return func(*args, **(kwargs or {}))

    size = _element_size(precision)
    try:
        m = copy.deepcopy(module).to("meta") if isinstance(module, torch.nn.Module) else module
        xs = [torch.empty(tuple(s), device="meta") for s in shapes]
        counter = Kernels()
        with torch.no_grad(), FlopCounterMode(display=False) as fc, counter:
            out = m(*xs)
        params = list(m.parameters()) + list(m.buffers()) if isinstance(m, torch.nn.Module) else []
        nbytes = _nbytes(xs, size) + _nbytes(_flatten_out(out), size) + _nbytes(params, size)
        return OpCost(float(fc.get_total_flops()), nbytes, counter.n)
    except Exception:
        return None


def spec_cost(space: Any, spec: Any, precision: str = "fp32") -> OpCost | None:
    """:func:`op_cost` of a space's op (``space.build_op(spec)``); None if it cannot be counted."""
    try:
        module = space.build_op(spec)
    except Exception:
        return None
    return op_cost(module, spec.inputs, precision)


# ---- judging -------------------------------------------------------------------------------------
def judge(median_us: float, cost: OpCost | None, tp: Throughput | None, load: LoadRecord | None,
          threads: int, cores: int, config: PlausibilityConfig) -> list[str]:
    """The reasons not to trust one timing (empty: none)."""
    reasons: list[str] = []
    if load is not None:
        why = load.contention(threads, cores, config)
        if why:
            reasons.append(why)
    if cost is None or tp is None or not tp.usable or not (median_us > 0 and math.isfinite(median_us)):
        return reasons
    bound = cost.bound_us(tp)
    if bound and median_us > config.too_slow * bound:
        reasons.append(f"too slow: {median_us:.1f} µs is {median_us / bound:.0f}x this machine's bound for its work "
                       f"({cost.flops / 1e6:.3g} MFLOP, {cost.bytes / 1e6:.3g} MB, {cost.kernels} kernel(s): "
                       f"{bound:.1f} µs)")
    peak = cost.peak_us(tp)
    if peak and peak > config.too_fast * median_us:
        reasons.append(f"too fast: {median_us:.3g} µs implies {cost.flops / median_us / 1e6:.3g} GFLOP/s, "
                       f"{peak / median_us:.0f}x the measured peak {tp.flops_per_s / 1e9:.3g} GFLOP/s")
    return reasons


def collapsed(timings: Mapping[str, float], costs: Mapping[str, OpCost | None], tp: Throughput | None,
              config: PlausibilityConfig) -> dict[str, str]:
    """Keys whose medians collapse on one value: at least ``collapse_min`` distinct ops within
    ``collapse_tol`` of each other, of work differing by ``collapse_spread`` × or more, each far
    above the machine's bound for its work. ``{key: reason}``."""
    usable = tp is not None and tp.usable

    def work(key: str) -> float | None:
        c = costs.get(key)
        if c is None:
            return None
        return (c.roofline_us(tp) if usable else c.bytes) or None

    def floor(key: str) -> float:
        bound = costs[key].bound_us(tp) if usable else None
        return config.collapse_floor * bound if bound else config.collapse_min_us

    items = sorted((v, k) for k, v in timings.items()
                   if v is not None and math.isfinite(v) and work(k) and v >= floor(k))
    out: dict[str, str] = {}
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1][0] <= items[i][0] * (1 + config.collapse_tol):
            j += 1
        group = items[i:j + 1]
        if len(group) >= config.collapse_min:
            works = [work(k) for _, k in group]
            if max(works) / min(works) >= config.collapse_spread:
                lo, hi = group[0][0], group[-1][0]
                ops = sorted({k.split("|")[0] for _, k in group})
                reason = (f"collapsed: {len(group)} distinct ops ({', '.join(ops[:4])}{', ...' if len(ops) > 4 else ''}) "
                          f"of {max(works) / min(works):.0f}x different work all at {lo:.1f}-{hi:.1f} µs")
                for _, k in group:
                    out[k] = reason
                i = j + 1
                continue
        i += 1
    return out


# ---- the build's checker -------------------------------------------------------------------------
def timing_threads(backend: Any, config: Any) -> int:
    """How many threads time an entry: the CPU thread count for a CPU backend, 1 (the host
    thread) for a GPU one."""
    if str(getattr(backend, "device", "cpu")).startswith("cuda"):
        return 1
    n = getattr(config, "threads", None) or getattr(backend, "threads", None)
    if not n:
        import torch

        n = torch.get_num_threads()
    return max(1, int(n))


@dataclass
class EntryChecker:
    """Per build: probes the machine once, watches the load around each timing, judges each timing
    and bounds the re-timing. The builder uses it as::

        checker = EntryChecker.start(space, backend, config, precision, PlausibilityConfig())
        with checker.watch() as w:
            m = measure(...)
        reasons = checker.review(key, spec, m.median_us, w.record)
        if reasons and checker.may_retime(key): ...       # time it again later
        fields.update(checker.row_fields(w.record, reasons))
    """

    space: Any
    precision: str
    config: PlausibilityConfig
    throughput: Throughput | None
    threads: int
    cores: int
    sampler: Callable[[], LoadSnapshot] = sample_load
    costs: dict[str, OpCost | None] = field(default_factory=dict)
    retimed: dict[str, int] = field(default_factory=dict)
    flagged_now: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, space: Any, backend: Any, timing: Any, precision: str, config: PlausibilityConfig, *,
              throughput: Throughput | None = None, sampler: Callable[[], LoadSnapshot] = sample_load,
              cores: int | None = None) -> "EntryChecker":
        threads = timing_threads(backend, timing)
        if throughput is None:
            throughput = measure_throughput(backend, timing, precision, config.probe_s, threads)
        return cls(space, precision, config, throughput, threads, cores or usable_cores(), sampler)

    def watch(self) -> LoadWatch:
        return LoadWatch(self.threads, self.sampler)

    def cost(self, key: str, spec: Any) -> OpCost | None:
        if key not in self.costs:
            self.costs[key] = spec_cost(self.space, spec, self.precision)
        return self.costs[key]

    def review(self, key: str, spec: Any, median_us: float | None, load: LoadRecord | None) -> list[str]:
        if median_us is None or not math.isfinite(median_us):
            return []
        return judge(float(median_us), self.cost(key, spec), self.throughput, load, self.threads, self.cores,
                     self.config)

    def may_retime(self, key: str) -> bool:
        """True (and counted) while ``key`` has re-timings left."""
        n = self.retimed.get(key, 0)
        if n >= self.config.retime:
            return False
        self.retimed[key] = n + 1
        return True

    def row_fields(self, load: LoadRecord | None, reasons: list[str]) -> dict[str, Any]:
        d = (load or LoadRecord()).fields()
        d[FLAG_COLUMN] = "; ".join(reasons) if reasons else None
        return d

    def collapse(self, timings: Mapping[str, float], specs: Mapping[str, Any]) -> dict[str, str]:
        for k in timings:
            if k in specs:
                self.cost(k, specs[k])
        return collapsed(timings, self.costs, self.throughput, self.config)

    def meta(self) -> dict[str, Any]:
        """What the LUT metadata records under :data:`META_KEY`."""
        return {"throughput": self.throughput.to_dict() if self.throughput else None,
                "threads": self.threads, "cores": self.cores, "config": self.config.to_dict(),
                "retimed": len(self.retimed), "flagged": len(self.flagged_now)}
