"""The load around a timing (DESIGN §5.11): what ``/proc`` says about the other work on this
machine's cores, sampled before and after each LUT entry's timing (a few ms: it reads the stat
file of every task), and the thread count a CPU build defaults to.

:class:`LoadRecord` is what a LUT row stores (:data:`LOAD_COLUMNS`); :meth:`LoadRecord.contention`
says whether the timing shared its cores with other work. :mod:`latbench.timing.plausibility`
judges the timings; :mod:`latbench.lut.flags` refuses flagged rows.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

#: LUT columns written per timed row (all optional: older LUTs lack them).
LOAD_COLUMNS = ("load_1m", "run_queue", "steal", "competing", "runq_wait")
#: The LUT column that says why a timing is not trusted (empty: trusted).
FLAG_COLUMN = "flag"
ROW_FIELDS = LOAD_COLUMNS + (FLAG_COLUMN,)


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


def _own_running(proc: Path, pid: int) -> int:
    """This process's runnable threads (the one reading included)."""
    try:
        tids = os.listdir(proc / str(pid) / "task")
    except OSError:
        return 1
    n = 0
    for tid in tids:
        text = _read(proc / str(pid) / "task" / tid / "stat")
        if text and text[text.rfind(")") + 2:text.rfind(")") + 3] == "R":
            n += 1
    return max(1, n)


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
    """A :class:`LoadSnapshot` from ``/proc`` (about a millisecond; when this process may use only
    some of the cores, it reads the stat file of every task to count those on its cores). On a
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
    competing = None
    if (proc / str(pid)).exists():
        if running is not None and (cores is None or len(cores) >= (os.cpu_count() or 0)):
            competing = max(0, running - _own_running(proc, pid))  # every core is ours: all runnable tasks compete
        else:
            competing = _other_runnable(proc, pid, cores)
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

    def contention(self, threads: int, cores: int, config: Any) -> str | None:
        """Why this timing shared its cores with other work, or None. ``config`` holds the
        thresholds ``max_wait`` and ``max_steal`` (a :class:`~latbench.timing.plausibility.PlausibilityConfig`)."""
        if getattr(config, "accept_load", False):
            return None
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
