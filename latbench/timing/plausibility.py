"""Timings a LUT must not trust: taken while other processes held the timing threads' cores, or
physically implausible for the op (DESIGN §5.11).

A contended CPU build can time an op hundreds of times too slow *and precisely* (OpenMP threads
waiting on a preempted sibling: six distinct separable convolutions at 39.9-40.0 ms, each with a
noise estimate of 0.05 %, against 94 µs minutes later with one thread). The noise estimate cannot
see that; this module looks at what can:

- **load** (:func:`sample_load`, :class:`LoadWatch`): around each entry's timing, the 1-minute
  load average, the run-queue length (``procs_running``), the CPU steal over the timing, the other
  runnable tasks on the cores this process may use, and how long the timing threads waited for a
  CPU (``/proc/<pid>/task/*/schedstat``). Recorded per LUT row (columns :data:`LOAD_COLUMNS`).
- **throughput** (:func:`measure_throughput`): once per build, with the build's own backend,
  precision and thread count, a dense matmul (FLOP/s), a large element-wise add (bytes/s) and a
  trivial op (the per-call floor). Stored in the LUT metadata (``plausibility``).
- **cost** (:func:`op_cost`): an op's FLOPs (``torch.utils.flop_counter.FlopCounterMode``), bytes
  (inputs, outputs, parameters, buffers) and kernel count, on the ``meta`` device (no compute).
- **judging** (:class:`EntryChecker`, :func:`judge`, :func:`collapsed`): a timing is flagged when
  the timing threads waited for a CPU or the CPU was stolen, when it is far slower than the
  machine's bound for its work (``too_slow`` × (roofline + kernels × call floor)), faster than the
  machine's peak allows (``too_fast``), or when many distinct ops of different work collapse on
  one value. A flagged entry is re-timed (``retime`` times, bounded); a flag that persists is
  written to the row's ``flag`` column, with the reason.
- **refusal** (:func:`refuse_flagged`): what ``fit``, ``validate-lut`` and ``nas search`` call on
  the LUT they open: one line saying which rows are flagged, why, and what to do.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from latbench.errors import UserError

#: LUT columns written per timed row (all optional: older LUTs lack them).
LOAD_COLUMNS = ("load_1m", "run_queue", "steal", "competing", "runq_wait")
FLAG_COLUMN = "flag"
ROW_FIELDS = LOAD_COLUMNS + (FLAG_COLUMN,)
META_KEY = "plausibility"


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
      ``collapse_spread`` ×, and each at least ``collapse_floor`` × its kernels' call floors (work,
      not launch overhead, should then set its time; ``collapse_min_us`` without a probe) -> collapsed.
    - ``probe_s``: time budget of each of the three throughput probes.
    """

    retime: int = 1
    max_wait: float = 0.05
    max_steal: float = 0.05
    too_slow: float = 200.0
    too_fast: float = 10.0
    collapse_min: int = 5
    collapse_tol: float = 0.005
    collapse_spread: float = 1.5
    collapse_floor: float = 10.0
    collapse_min_us: float = 100.0
    probe_s: float = 0.15

    def __post_init__(self) -> None:
        if self.retime < 0:
            raise ValueError("retime must be >= 0")
        if not (self.too_slow > 1 and self.too_fast > 1):
            raise ValueError("too_slow and too_fast must be > 1")
        if self.collapse_min < 2:
            raise ValueError("collapse_min must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_cpu_threads(cores: int | None = None) -> int:
    """The thread count a CPU LUT build uses unless told otherwise: one core left for everything
    else (the OS, the progress bar, another process), and 1 on a machine of 2 cores or fewer —
    a timing thread that shares its core is preempted, and an OpenMP region then waits for it."""
    if cores is None:
        cores = usable_cores()
    return 1 if cores <= 2 else cores - 1


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---- load ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadSnapshot:
    """What ``/proc`` says at one instant (None where this system does not say)."""

    at: float
    load_1m: float | None = None
    procs_running: int | None = None
    jiffies_total: int | None = None
    jiffies_steal: int | None = None
    competing: int | None = None
    wait_ns: int | None = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _other_runnable(proc: Path, own_pid: int, cores: set[int] | None) -> int | None:
    """Runnable tasks (threads) of other processes whose CPU is one this process may use."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    n = 0
    for pid in pids:
        if int(pid) == own_pid:
            continue
        try:
            tids = os.listdir(proc / pid / "task")
        except OSError:
            continue
        for tid in tids:
            text = _read(proc / pid / "task" / tid / "stat")
            if not text:
                continue
            rest = text[text.rfind(")") + 2:].split()
            if not rest or rest[0] != "R":
                continue
            if cores is not None and len(rest) > 36:
                try:
                    if int(rest[36]) not in cores:  # field 39: the CPU it last ran on
                        continue
                except ValueError:
                    pass
            n += 1
    return n


def _own_wait_ns(proc: Path, pid: int) -> int | None:
    """Run-queue wait (ns) summed over this process's threads (schedstat field 2)."""
    try:
        tids = os.listdir(proc / str(pid) / "task")
    except OSError:
        return None
    total, seen = 0, False
    for tid in tids:
        text = _read(proc / str(pid) / "task" / tid / "schedstat")
        parts = text.split() if text else []
        if len(parts) >= 2 and parts[1].isdigit():
            total += int(parts[1])
            seen = True
    return total if seen else None


def sample_load(proc: str | os.PathLike = "/proc") -> LoadSnapshot:
    """A :class:`LoadSnapshot` from ``/proc`` (a few ms: reads the stat file of every task). On a
    system without ``/proc`` every field but ``at`` is None."""
    proc = Path(proc)
    load = None
    text = _read(proc / "loadavg")
    if text:
        try:
            load = float(text.split()[0])
        except (ValueError, IndexError):
            load = None
    running = total = steal = None
    text = _read(proc / "stat")
    if text:
        for line in text.splitlines():
            if line.startswith("cpu "):
                vals = [int(v) for v in line.split()[1:] if v.isdigit()]
                if len(vals) >= 8:
                    total = sum(vals[:8])  # user..steal (guest time is already counted in user)
                    steal = vals[7]
            elif line.startswith("procs_running "):
                try:
                    running = int(line.split()[1])
                except (ValueError, IndexError):
                    running = None
    try:
        cores: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = None
    pid = os.getpid()
    competing = _other_runnable(proc, pid, cores) if (proc / str(pid)).exists() else None
    wait = _own_wait_ns(proc, pid)
    return LoadSnapshot(time.monotonic(), load, running, total, steal, competing, wait)  # at: when wait was read


@dataclass(frozen=True)
class LoadRecord:
    """The load around one timing, as stored in the LUT row (:data:`LOAD_COLUMNS`).

    ``run_queue``: the larger ``procs_running`` of the two ends (this process included);
    ``competing``: the smaller count, of the two ends, of other processes' runnable tasks on the
    cores this process may use; ``steal``: the fraction of all CPU time stolen during the timing;
    ``runq_wait``: the fraction of the timing the timing threads spent runnable but not running.
    """

    load_1m: float | None = None
    run_queue: int | None = None
    steal: float | None = None
    competing: int | None = None
    runq_wait: float | None = None

    @classmethod
    def between(cls, before: LoadSnapshot, after: LoadSnapshot, threads: int) -> "LoadRecord":
        def pair(a, b, f):
            return f(a, b) if a is not None and b is not None else (a if a is not None else b)

        steal = None
        if None not in (before.jiffies_total, after.jiffies_total, before.jiffies_steal, after.jiffies_steal):
            dt = after.jiffies_total - before.jiffies_total
            steal = (after.jiffies_steal - before.jiffies_steal) / dt if dt > 0 else 0.0
        wait = None
        wall = after.at - before.at
        if before.wait_ns is not None and after.wait_ns is not None and wall > 0:
            wait = max(0.0, (after.wait_ns - before.wait_ns) * 1e-9 / (wall * max(1, threads)))
        return cls(load_1m=after.load_1m if after.load_1m is not None else before.load_1m,
                   run_queue=pair(before.procs_running, after.procs_running, max),
                   steal=None if steal is None else round(steal, 4),
                   competing=pair(before.competing, after.competing, min),
                   runq_wait=None if wait is None else round(wait, 4))

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, d: Mapping[str, Any]) -> "LoadRecord":
        def val(k):
            v = d.get(k)
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

        return cls(**{k: val(k) for k in LOAD_COLUMNS})

    def contention(self, threads: int, cores: int, config: PlausibilityConfig) -> str | None:
        """Why this timing shared its cores with other work, or None."""
        if self.runq_wait is not None and self.runq_wait > config.max_wait:
            return (f"contended: the {threads} timing thread(s) waited for a CPU {self.runq_wait:.0%} of the timing "
                    f"({self.competing if self.competing is not None else '?'} other runnable task(s) on "
                    f"{cores} core(s), load {self.load_1m if self.load_1m is not None else '?'})")
        if self.steal is not None and self.steal > config.max_steal:
            return f"contended: the hypervisor stole {self.steal:.0%} of the CPU time during the timing"
        headroom = cores - threads
        if self.runq_wait is None and self.competing is not None and self.competing > headroom:
            return (f"contended: {self.competing} other runnable task(s) on {cores} core(s) with {threads} timing "
                    "thread(s)")
        return None


class LoadWatch:
    """Samples the load on entering and leaving (around one timing); ``record`` afterwards."""

    def __init__(self, threads: int, sampler: Callable[[], LoadSnapshot] = sample_load) -> None:
        self.threads = threads
        self.sampler = sampler
        self._before: LoadSnapshot | None = None
        self.record: LoadRecord | None = None

    def __enter__(self) -> "LoadWatch":
        self._before = self.sampler()
        return self

    def __exit__(self, *exc: Any) -> None:
        after = self.sampler()
        assert self._before is not None
        self.record = LoadRecord.between(self._before, after, self.threads)


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
    ``collapse_tol`` of each other, of work differing by ``collapse_spread`` × or more, well above
    the per-call floor. ``{key: reason}``."""
    usable = tp is not None and tp.usable

    def work(key: str) -> float | None:
        c = costs.get(key)
        if c is None:
            return None
        return (c.roofline_us(tp) if usable else c.bytes) or None

    def floor(key: str) -> float:
        c = costs[key]
        return config.collapse_floor * max(1, c.kernels) * float(tp.call_us) if usable else config.collapse_min_us

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


# ---- refusal -------------------------------------------------------------------------------------
def flagged_rows(lut: Any, height: int | None = None, width: int | None = None, batch: int | None = None,
                 backend: str | None = None, precision: str | None = None):
    """The rows of ``lut`` (a :class:`latbench.lut.table.LUT`) whose ``flag`` is set, restricted to
    a resolution / batch / backend / precision where given. Empty for LUTs without the column."""
    df = lut.df
    if FLAG_COLUMN not in df.columns or df.empty:
        return df.iloc[0:0]
    flag = df[FLAG_COLUMN]
    mask = flag.notna() & (flag.astype(str).str.strip() != "") & (df["status"] == "ok")
    for col, val in (("height", height), ("width", width), ("batch", batch), ("backend", backend),
                     ("precision", precision)):
        if val is not None:
            mask &= df[col] == val
    return df[mask]


def refuse_flagged(lut: Any, where: str, *, height: int | None = None, width: int | None = None,
                   batch: int | None = None, backend: str | None = None, precision: str | None = None,
                   use: str = "this command") -> None:
    """:class:`UserError` (one line) when rows ``use`` needs are flagged; nothing otherwise. Call
    it where a command opens the LUT it prices with (``fit``, ``validate-lut``, ``nas search``)."""
    bad = flagged_rows(lut, height, width, batch, backend, precision)
    if bad.empty:
        return
    keys = bad.drop_duplicates(subset=["key"])
    first = keys.iloc[0]
    reason = str(first[FLAG_COLUMN]).split(";")[0].strip()
    threads = ((getattr(lut, "meta", {}) or {}).get("device") or {}).get("threads")
    hint = "" if threads == 1 else (" (several timing threads stall whenever one is preempted: a LUT built with "
                                    "--threads 1 and a new --output avoids that)")
    raise UserError(
        f"LUT {where!r} has {len(keys)} flagged timing(s) that {use} needs (e.g. {first['key']}: {reason}); "
        f"re-time them on a quieter machine with: {retime_command(lut, where, bad)}{hint}; "
        f"latbench show {where} lists them")


def retime_command(lut: Any, where: str, rows: Any) -> str:
    """The ``build-lut`` command that re-times the flagged rows of the LUT at ``where`` (resuming
    into the same file), spelled from the LUT's own metadata where :mod:`latbench.lut.coverage`
    can; a generic one otherwise."""
    resolutions = sorted({(int(h), int(w)) for h, w in zip(rows["height"], rows["width"])})
    try:
        from latbench.lut.coverage import rebuild_command

        cmd = rebuild_command(lut, where, resolutions)
    except Exception:  # a LUT whose metadata cannot spell its build: the generic form
        return f"latbench build-lut <this LUT's options> --output {where} --retry-flagged"
    cut = min([i for i in (cmd.find(" (this LUT"), cmd.find(" — but")) if i >= 0] or [len(cmd)])
    return cmd[:cut] + " --retry-flagged" + cmd[cut:]
