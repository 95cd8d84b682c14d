"""A canary for long builds: one fixed op re-timed at intervals to catch slow episodes and clock
changes (DESIGN §5.10).

A LUT build times hundreds of entries one after the other; a shared machine's slow episode (or a
GPU clock change that NVML does not report) makes the entries timed during it slow, each with a
small noise estimate. :class:`Canary` times one op of the build (the first one that is not a
pass-through) in short windows: three at the start, then one every ``every_s`` seconds. Its
typical level is the median of its window minima so far (:class:`latbench.timing.interleave.Baseline`);
a reading more than ``tolerance`` slower than that level,
confirmed by a second one, is a *drift*: the build is told which entries were timed since the last good reading, re-times
them (each at most ``max_retimes`` times), and records the event in the LUT's provenance.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from latbench.timing.interleave import Baseline, RoundsConfig, _Sampler
from latbench.timing.config import TimingConfig

Clock = Callable[[], float]


@dataclass(frozen=True)
class CanaryConfig:
    every_s: float = 5.0
    tolerance: float = 0.05
    window_s: float = 0.1
    max_retimes: int = 2

    def __post_init__(self) -> None:
        if not self.every_s > 0 or not self.tolerance > 0 or not self.window_s > 0 or self.max_retimes < 0:
            raise ValueError("canary every_s, tolerance and window_s must be > 0, max_retimes >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CanaryRecord:
    """What the LUT's provenance says about the canary (``meta["build"]["canary"]``)."""

    key: str
    baseline_us: float
    readings: list[float] = field(default_factory=list)
    drift_events: list[dict[str, Any]] = field(default_factory=list)
    retimed: int = 0

    def to_dict(self) -> dict[str, Any]:
        vals = self.readings
        spread = float((np.percentile(vals, 90) - np.percentile(vals, 10)) / self.baseline_us) if len(vals) >= 2 else None
        return {"key": self.key, "baseline_us": self.baseline_us, "checks": len(vals),
                "p10_p90_spread": spread, "drift_events": self.drift_events, "retimed": self.retimed}


def start_canary(space: Any, specs: dict[str, Any], backend: Any, protocol: TimingConfig,
                 config: CanaryConfig) -> Canary | None:
    """A canary on the first of ``specs`` (key -> OpSpec) that builds into a real op (not a
    pass-through) and prepares with ``backend``; None if none does."""
    import torch

    from latbench.timing.passthrough import is_passthrough

    for key, spec in specs.items():
        try:
            module = space.build_op(spec)
            if isinstance(module, torch.nn.Module):
                module.eval()
            if is_passthrough(module, spec.inputs):
                continue
            g = torch.Generator().manual_seed(0)
            prepared = backend.prepare(module, [torch.randn(s, generator=g) for s in spec.inputs], protocol)
            return Canary(key, prepared, protocol, config)
        except Exception:
            continue
    return None


class Canary:
    def __init__(self, key: str, prepared: Any, protocol: TimingConfig, config: CanaryConfig,
                 clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._prepared = prepared
        self._sampler = _Sampler(prepared, protocol, RoundsConfig(window_s=config.window_s), time.perf_counter)
        self.baseline = Baseline(config.tolerance)
        for _ in range(3):
            self.baseline.add(self._read())
        self.record = CanaryRecord(key, float(self.baseline.level))
        self._t0 = self._last = clock()

    def _read(self) -> float:
        return self._sampler.window("canary", 0, 0.0).min_us

    def due(self) -> bool:
        return self.clock() - self._last >= self.config.every_s

    def check(self) -> float | None:
        """Re-time the canary; the confirmed drift ratio (reading / typical level) if it ran
        slow, else None."""
        self._last = self.clock()
        value = self._read()
        if self.baseline.slow(value):
            value = self._read()  # one slow window is not an episode
            if self.baseline.slow(value):
                self.record.readings.append(value)
                return self.baseline.ratio(value)
        self.baseline.add(value)
        self.record.readings.append(value)
        self.record.baseline_us = float(self.baseline.level)
        return None

    def close(self) -> None:
        try:
            self._prepared.close()
        except Exception:
            pass


class DriftWatch:
    """The build loop's side of the canary: which entries were timed since the last good reading,
    and which of them to time again after a drift (each at most ``max_retimes`` times)."""

    def __init__(self, canary: Canary, warn: Callable[[str], None]) -> None:
        self.canary = canary
        self.warn = warn
        self._since: list[str] = []
        self._retimes: dict[str, int] = {}

    def timed(self, key: str) -> list[str]:
        """Note that ``key`` was just timed; when the canary is due, check it and return the
        entries to time again (empty when nothing drifted). Entries timed after the last check of
        a build are not re-checked."""
        self._since.append(key)
        if not self.canary.due():
            return []
        ratio = self.canary.check()
        since, self._since = self._since, []
        if ratio is None:
            return []
        cfg = self.canary.config
        redo = [k for k in since if self._retimes.get(k, 0) < cfg.max_retimes]
        for k in redo:
            self._retimes[k] = self._retimes.get(k, 0) + 1
        rec = self.canary.record
        rec.retimed += len(redo)
        rec.drift_events.append({"at_s": round(self.canary.clock() - self.canary._t0, 3), "ratio": round(ratio, 4),
                                 "entries": len(since), "retimed": len(redo)})
        self.warn(f"the canary ({rec.key}) ran at {ratio:.3f}x its typical level (tolerance +{cfg.tolerance:.0%}): "
                  f"a slow episode or a clock change; timing the {len(redo)} entries measured during it again")
        return redo
