"""Interleaved rounds: measuring many things so that a slow episode cannot bias one of them
(DESIGN §5.10).

Measuring N networks one after the other gives a network that happened to run during a
seconds-long slow episode of a shared machine a slow number with a small noise estimate: the
protocol cannot see an episode longer than its own sampling window. Here every item is measured
once per *round* for a short window (``window_s``), several rounds, and an item's figure is the
median of its per-round window medians; an episode spoils a few windows of many items instead
of all windows of one.

An item's figure (``statistic``): ``"median"`` is the median over rounds of each window's
median sample; ``"fastest-half"`` (the default) is the mean of the fastest half of the rounds'
window *minima*. Interference on a shared machine only ever adds time, so the low end of the
distribution is what repeats: on this project's 2-core VM, halves of a 20-round measurement agreed
to a median 1.3 % with ``fastest-half`` against 3.2 % with ``median`` (DESIGN §5.10).

A *reference* item (e.g. a fixed network) is measured every ``reference_every`` items. Once its
typical level (:class:`Baseline`: the median of its window minima so far) is established, a
reference window more than ``drift_tolerance`` slower than that level is confirmed with a second
window; a confirmed drift is
reported (``on_event``), recorded, and the items measured since the last good reference are
measured again at the end of the round (at most ``max_retimes`` times each); their drifted
windows are kept in the record but superseded.

Everything is driven through *prepared* objects (``time(calls) -> seconds``, see
:mod:`latbench.timing.registry`), so it works for every timing backend. Each finished window is
handed to ``on_window`` (a journal writer, for resume); windows already done (``done``) are not
measured again.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from latbench.timing.config import TimingConfig
from latbench.timing.loop import calls_for, describe_error
from latbench.timing.stats import median_noise

Clock = Callable[[], float]
STATISTICS = ("fastest-half", "median")


@dataclass(frozen=True)
class RoundsConfig:
    """How interleaved rounds are run (see the module docstring)."""

    rounds: int = 15
    window_s: float = 0.1
    min_window_samples: int = 3
    reference_every: int = 4
    drift_tolerance: float = 0.05
    max_retimes: int = 2
    statistic: str = "fastest-half"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if not self.window_s > 0:
            raise ValueError("window_s must be > 0")
        if self.min_window_samples < 1 or self.reference_every < 1 or self.max_retimes < 0:
            raise ValueError("min_window_samples and reference_every must be >= 1, max_retimes >= 0")
        if not self.drift_tolerance > 0:
            raise ValueError("drift_tolerance must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RoundsConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Window:
    """One item measured once in one round."""

    item: str
    round: int
    median_us: float
    min_us: float
    samples: int
    calls_per_sample: int
    t: float
    superseded: bool = False
    error: str | None = None
    throttled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.median_us)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("median_us", "min_us"):
            if not math.isfinite(d[k]):
                d[k] = None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Window":
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("median_us", "min_us"):
            if kw.get(k) is None:
                kw[k] = math.nan
        return cls(**kw)


@dataclass
class ItemResult:
    median_us: float
    noise: float  # relative standard error of the median over rounds
    rounds: int
    windows: list[Window] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rounds > 0 and math.isfinite(self.median_us)


@dataclass
class DriftEvent:
    round: int
    t: float
    ratio: float
    retimed: list[str]
    confirmed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InterleavedResult:
    items: dict[str, ItemResult]
    reference: str | None
    reference_baseline_us: float | None
    drift: list[DriftEvent]
    elapsed_s: float

    def summary(self) -> dict[str, Any]:
        """JSON-able facts for provenance: drift events and the reference's stability."""
        ref = self.items.get(self.reference) if self.reference else None
        vals = [w.min_us for w in (ref.windows if ref else []) if w.ok]
        spread = None
        if len(vals) >= 2 and self.reference_baseline_us:
            p10, p90 = np.percentile(vals, [10, 90])
            spread = float((p90 - p10) / self.reference_baseline_us)
        return {"reference": self.reference, "reference_baseline_us": self.reference_baseline_us,
                "reference_windows": len(vals), "reference_p10_p90_spread": spread,
                "drift_events": [e.to_dict() for e in self.drift], "elapsed_s": round(self.elapsed_s, 3)}


def fastest_half(values: Sequence[float]) -> float:
    """The mean of the fastest half of ``values`` (at least one): the level that repeats when
    interference only ever adds time."""
    v = sorted(values)
    return float(np.mean(v[:max(1, len(v) // 2)]))


class Baseline:
    """A reference's typical level: the median of its readings so far (window minima). A reading
    counts as *slow* when it exceeds that level by more than the tolerance. Only slowdowns count
    (interference adds time), and the level follows the readings, so a baseline set during a slow
    episode corrects itself instead of flagging the recovery. The median, not the fastest
    readings, is the yardstick: a shared machine's ordinary jitter is not an episode."""

    def __init__(self, tolerance: float, warm: int = 3) -> None:
        self.tolerance = tolerance
        self.warm = warm
        self.values: list[float] = []

    @property
    def ready(self) -> bool:
        return len(self.values) >= self.warm

    @property
    def level(self) -> float | None:
        return float(np.median(self.values)) if self.values else None

    def ratio(self, value: float) -> float:
        lv = self.level
        return value / lv if lv else 1.0

    def slow(self, value: float) -> bool:
        return self.ready and self.ratio(value) > 1.0 + self.tolerance

    def add(self, value: float) -> None:
        self.values.append(float(value))


def aggregate(windows: Sequence[Window], statistic: str = "fastest-half") -> ItemResult:
    """An item's figure from its windows (see the module docstring); superseded and failed
    windows are ignored, and a round measured again after drift counts once (its latest window)."""
    per_round: dict[int, Window] = {}
    for w in windows:
        if w.ok and not w.superseded:
            per_round[w.round] = w
    if not per_round:
        return ItemResult(math.nan, math.nan, 0, list(windows))
    if statistic == "median":
        vals = [w.median_us for w in per_round.values()]
        value = float(np.median(vals))
    else:
        vals = [w.min_us for w in per_round.values()]
        value = fastest_half(vals)
    noise = float(median_noise(vals)) if len(vals) > 1 else math.inf
    return ItemResult(value, noise, len(vals), list(windows))


class _Sampler:
    """Measures one window of one prepared object; remembers its per-call time and warm state."""

    def __init__(self, prepared: Any, protocol: TimingConfig, config: RoundsConfig, clock: Clock) -> None:
        self.prepared = prepared
        self.protocol = protocol
        self.config = config
        self.clock = clock
        self.g = max(1, int(getattr(prepared, "granularity", 1) or 1))
        self.per_call: float | None = None

    def _calls(self) -> int:
        if self.protocol.cold_cache or self.per_call is None:
            return self.g
        return calls_for(self.per_call, self.protocol.target_sample_s, self.g)

    def warm_up(self) -> None:
        """The protocol's warm-up by time, at the first visit (a few calls at least)."""
        t0 = self.clock()
        n = 0
        while True:
            calls = self._calls()
            dt = self.prepared.time(calls)
            self.per_call = dt / calls
            n += 1
            if n >= 3 and self.clock() - t0 >= self.protocol.warmup_s:
                break

    def window(self, item: str, rnd: int, t0: float) -> Window:
        if self.per_call is None:
            self.warm_up()
        else:
            self.prepared.time(self._calls())  # one batch back in cache after the other items ran
        monitor = getattr(self.prepared, "clock", None)
        if monitor is not None:
            monitor.reset()
            monitor.poll(force=True)
        calls = self._calls()
        samples: list[float] = []
        start = self.clock()
        while True:
            dt = self.prepared.time(calls)
            samples.append(dt / calls)
            if monitor is not None:
                monitor.poll()
            if len(samples) >= self.config.min_window_samples and self.clock() - start >= self.config.window_s:
                break
        self.per_call = float(np.median(samples))
        throttled = bool(getattr(monitor, "throttled", False)) if monitor is not None else False
        return Window(item, rnd, float(np.median(samples)) * 1e6, float(np.min(samples)) * 1e6, len(samples),
                      calls, round(start - t0, 4), throttled=throttled)


class _Rounds:
    """The state of one interleaved measurement: every item's windows, the reference's level, the
    drift found, the progress count. :func:`measure_interleaved` drives it round by round."""

    def __init__(self, prepared: Mapping[str, Any], protocol: TimingConfig, config: RoundsConfig,
                 reference: str | None, done: Sequence[Window], on_window: Callable[[Window], None] | None,
                 on_event: Callable[[str], None] | None, on_progress: Callable[[int, int, str], None] | None,
                 clock: Clock) -> None:
        self.keys = list(prepared)
        self.config, self.reference, self.clock = config, reference, clock
        self.on_window, self.on_event, self.on_progress = on_window, on_event, on_progress
        self.others = [k for k in self.keys if k != reference]
        self.samplers = {k: _Sampler(prepared[k], protocol, config, clock) for k in self.keys}
        self.windows: dict[str, list[Window]] = {k: [] for k in self.keys}
        self.have: dict[tuple[str, int], Window] = {}
        self.base = Baseline(config.drift_tolerance)
        self.drift: list[DriftEvent] = []
        self._resume(done)
        self.total = config.rounds * len(self.keys)
        self.finished = sum(1 for k in self.keys for r in range(config.rounds) if (k, r) in self.have)
        self.t0 = clock()

    def _resume(self, done: Sequence[Window]) -> None:
        """Take the windows of an earlier run: not measured again; the reference's level from them."""
        for w in done:
            if w.item in self.windows:
                self.windows[w.item].append(w)
                if not w.superseded:
                    self.have[(w.item, w.round)] = w
        self.failed = {w.item for w in done if w.item in self.windows and w.error is not None}
        for w in (self.windows.get(self.reference, []) if self.reference else []):
            if w.ok and not w.superseded:
                self.base.add(w.min_us)

    def _record(self, w: Window) -> None:
        self.windows[w.item].append(w)
        if self.on_window is not None:
            self.on_window(w)

    def visit(self, k: str, rnd: int) -> Window:
        try:
            w = self.samplers[k].window(k, rnd, self.t0)
        except Exception as exc:  # a failing item is data, not a crash
            w = Window(k, rnd, math.nan, math.nan, 0, 0, round(self.clock() - self.t0, 4), error=describe_error(exc))
            self.failed.add(k)
        self._record(w)
        return w

    def _count(self, k: str) -> None:
        if self.on_progress is not None:
            self.finished = min(self.total, self.finished + 1)
            self.on_progress(self.finished, self.total, k)

    def run_round(self, rnd: int) -> None:
        """Every item not yet measured in round ``rnd`` (in rotated order), the reference every
        ``reference_every`` items, and again what a confirmed drift asks for."""
        shift = rnd % max(1, len(self.others))
        order = self.others[shift:] + self.others[:shift]
        rs = _Round(rnd, [k for k in order if (k, rnd) not in self.have and k not in self.failed])
        ref_due = self.reference is not None and (self.reference, rnd) not in self.have
        if not rs.queue and not ref_due:
            return
        if self.reference is not None:
            self.check_reference(rs)
        i = 0
        while i < len(rs.queue):
            k = rs.queue[i]
            i += 1
            if k in self.failed:
                continue
            self.visit(k, rnd)
            rs.since_ref.append(k)
            self._count(k)
            if self.reference is not None and (len(rs.since_ref) >= self.config.reference_every or i == len(rs.queue)):
                self.check_reference(rs)
        if self.reference is not None:
            self._count(self.reference)

    def check_reference(self, rs: "_Round") -> None:
        """Measure the reference; a slow window confirmed by a second one is a drift: the items
        measured since the last good reference are measured again (at most ``max_retimes``)."""
        assert self.reference is not None
        w = self.visit(self.reference, rs.rnd)
        if not w.ok:
            return
        if self.base.slow(w.min_us):
            w2 = self.visit(self.reference, rs.rnd)  # confirm: one slow window is not an episode
            if w2.ok and self.base.slow(w2.min_us):
                w.superseded = True
                self._drift(rs, self.base.ratio(w2.min_us))
                return
            w.superseded = True  # a lone slow window: keep the confirming one
            w = w2 if w2.ok else w
        self.base.add(w.min_us)
        rs.since_ref = []

    def _drift(self, rs: "_Round", ratio: float) -> None:
        redo = [k for k in rs.since_ref if rs.retimes.get(k, 0) < self.config.max_retimes]
        for k in redo:
            rs.retimes[k] = rs.retimes.get(k, 0) + 1
            for old in self.windows[k]:
                if old.round == rs.rnd and not old.superseded:
                    old.superseded = True
                    if self.on_window is not None:
                        self.on_window(old)
            rs.queue.append(k)
        self.drift.append(DriftEvent(rs.rnd, round(self.clock() - self.t0, 3), round(ratio, 4), redo))
        if self.on_event is not None:
            self.on_event(f"round {rs.rnd + 1}: the reference ran at {ratio:.3f}x its typical level "
                          f"(tolerance +{self.config.drift_tolerance:.0%}); measuring {len(redo)} item(s) again")
        rs.since_ref = []

    def result(self, started: float) -> InterleavedResult:
        items = {k: aggregate(self.windows[k], self.config.statistic) for k in self.keys}
        return InterleavedResult(items, self.reference, self.base.level, self.drift, self.clock() - started)


@dataclass
class _Round:
    """One round's queue (grows when a drift asks for items again), re-timings and the items
    measured since the reference was last checked."""

    rnd: int
    queue: list[str]
    retimes: dict[str, int] = field(default_factory=dict)
    since_ref: list[str] = field(default_factory=list)


def measure_interleaved(prepared: Mapping[str, Any], protocol: TimingConfig, config: RoundsConfig, *,
                        reference: str | None = None, done: Sequence[Window] = (),
                        on_window: Callable[[Window], None] | None = None,
                        on_event: Callable[[str], None] | None = None,
                        on_progress: Callable[[int, int, str], None] | None = None,
                        clock: Clock = time.perf_counter) -> InterleavedResult:
    """Measure every prepared item in interleaved rounds; see the module docstring.

    ``prepared`` maps item keys to prepared objects (order = the order within a round, rotated
    each round); ``reference`` is one of the keys (or None: no drift detection). A window that
    raises is recorded with its error and the item is not visited again.
    """
    if reference is not None and reference not in prepared:
        raise ValueError(f"reference {reference!r} is not among the items")
    run = _Rounds(prepared, protocol, config, reference, done, on_window, on_event, on_progress, clock)
    started = run.t0
    for rnd in range(config.rounds):
        run.run_round(rnd)
    return run.result(started)
