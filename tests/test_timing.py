"""The timing protocol's logic, with controlled fake clocks (no wall-clock assertions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latbench.errors import UserError
from latbench.timing import (Measurement, TimingConfig, available_backends, calls_for, get_backend, measure,
                             median_noise, register_backend, summarize)
from latbench.timing.registry import _REGISTRY


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakePrepared:
    """A prepared object whose per-call time follows ``per_call(i)`` (i = index of the time()
    call); each time() advances the fake clock by the time it reports."""

    def __init__(self, clock: FakeClock, per_call, granularity: int = 1, fail_at: int | None = None,
                 monitor=None) -> None:
        self.clock_fn = clock
        self.per_call = per_call
        self.granularity = granularity
        self.calls_seen: list[int] = []
        self.fail_at = fail_at
        self.clock = monitor
        self.info = {"fake": True}

    def time(self, calls: int) -> float:
        i = len(self.calls_seen)
        if self.fail_at is not None and i >= self.fail_at:
            raise RuntimeError("boom in op")
        self.calls_seen.append(calls)
        dt = self.per_call(i) * calls
        self.clock_fn.t += dt
        return dt

    def close(self) -> None:
        pass


def cfg(**kw) -> TimingConfig:
    base = dict(warmup_s=0.2, min_samples=10, min_time_s=0.5, max_time_s=2.0, max_noise=0.005, target_sample_s=1e-3)
    base.update(kw)
    return TimingConfig(**base)


def test_constant_op_stops_at_min_samples_and_min_time():
    clock = FakeClock()
    p = FakePrepared(clock, lambda i: 1e-4)  # 100 µs per call, no noise
    m = measure(p, config=cfg(min_time_s=0.0), clock=clock)
    assert m.status == "ok"
    assert m.samples == 10  # noise is 0 -> stops at min_samples
    assert m.median_us == pytest.approx(100.0)
    assert m.noise == 0.0
    assert m.calls_per_sample == 10  # 1 ms target / 100 µs
    assert m.extra["stop"] == "converged"


def test_min_time_is_respected_even_when_quiet():
    clock = FakeClock()
    p = FakePrepared(clock, lambda i: 1e-4)
    m = measure(p, config=cfg(min_time_s=0.5), clock=clock)
    # each sample lasts 10 calls * 100 µs = 1 ms -> 0.5 s needs 500 samples
    assert m.samples == 500
    assert m.extra["stop"] == "converged"


def test_min_time_is_clipped_to_max_time():
    c = cfg(min_time_s=10.0, max_time_s=0.05)
    assert c.effective_min_time_s == 0.05
    clock = FakeClock()
    m = measure(FakePrepared(clock, lambda i: 1e-4), config=c, clock=clock)
    assert m.samples == 50


def test_noisy_op_samples_until_the_cap():
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.5, 1.5, size=100000)
    clock = FakeClock()
    p = FakePrepared(clock, lambda i: 1e-4 * noise[i % noise.size])
    m = measure(p, config=cfg(min_time_s=0.0, max_time_s=0.2, max_noise=1e-6), clock=clock)
    assert m.extra["stop"] == "max_time"
    assert m.extra["sampling_s"] >= 0.2
    assert m.noise > 1e-6
    assert not m.extra["noise_reached"]


def test_moderately_noisy_op_stops_once_noise_is_low_enough():
    rng = np.random.default_rng(1)
    noise = rng.normal(1.0, 0.02, size=100000)
    clock = FakeClock()
    p = FakePrepared(clock, lambda i: 1e-4 * noise[i % noise.size])
    m = measure(p, config=cfg(min_time_s=0.0, max_time_s=100.0, max_noise=0.002), clock=clock)
    assert m.extra["stop"] == "converged"
    assert m.noise <= 0.002
    assert m.samples > 10  # 2 % spread needs more than the minimum to reach 0.2 % noise


def test_warmup_is_by_time_not_count():
    # A slow op (50 ms/call) gets few warm-up calls, a fast one many: both warm up >= 0.2 s.
    for per_call, expect_many in ((0.05, False), (1e-5, True)):
        clock = FakeClock()
        p = FakePrepared(clock, lambda i, pc=per_call: pc)
        m = measure(p, config=cfg(min_time_s=0.0), clock=clock)
        assert m.extra["warmup_s"] >= 0.2
        assert (m.extra["warmup_calls"] > 100) == expect_many


def test_a_first_call_longer_than_the_warmup_does_not_end_it_nor_size_the_samples():
    # The first call takes 1 s (cuDNN autotuning a whole network, ONNX Runtime's exhaustive
    # search): longer than the whole 0.2 s warm-up. Later calls take 100 µs.
    clock = FakeClock()
    p = FakePrepared(clock, lambda i: 1.0 if i == 0 else 1e-4)
    m = measure(p, config=cfg(min_time_s=0.0), clock=clock)
    assert m.extra["warmup_rounds"] >= 3  # several warm-up batches, not the slow one alone
    assert m.extra["warmup_last_call_us"] == pytest.approx(100.0)
    assert m.calls_per_sample == 10  # sized from the last batch (1 ms / 100 µs), not from the 1 s call
    assert m.median_us == pytest.approx(100.0)
    # with one warm-up round allowed, the old behaviour: one call per sample, sized from the slow call
    clock = FakeClock()
    p = FakePrepared(clock, lambda i: 1.0 if i == 0 else 1e-4)
    m1 = measure(p, config=cfg(min_time_s=0.0, warmup_rounds=1), clock=clock)
    assert m1.extra["warmup_rounds"] == 1 and m1.calls_per_sample == 1


def test_warmup_excludes_slow_first_calls_from_samples():
    # The first 0.25 s of calls are 10x slower (algorithm selection, clocks ramping).
    clock = FakeClock()
    p = FakePrepared(clock, lambda i: 1e-3 if clock.t < 0.25 else 1e-4)
    m = measure(p, config=cfg(warmup_s=0.3, min_time_s=0.0), clock=clock)
    assert m.median_us == pytest.approx(100.0)


def test_calls_per_sample_respects_granularity():
    clock = FakeClock()
    p = FakePrepared(clock, lambda i: 1e-6, granularity=64)
    m = measure(p, config=cfg(min_time_s=0.0), clock=clock)
    assert m.calls_per_sample % 64 == 0
    assert all(c % 64 == 0 for c in p.calls_seen)
    assert calls_for(1e-6, 1e-3, 64) == 1024
    assert calls_for(1.0, 1e-3, 1) == 1
    assert calls_for(0.0, 1e-3, 7) % 7 == 0


def test_cold_cache_takes_one_call_per_sample():
    clock = FakeClock()
    p = FakePrepared(clock, lambda i: 1e-6)
    m = measure(p, config=cfg(min_time_s=0.0, cold_cache=True), clock=clock)
    assert m.calls_per_sample == 1 and set(p.calls_seen) == {1}


def test_slow_op_gets_at_least_one_sample_under_a_tiny_cap():
    clock = FakeClock()
    m = measure(FakePrepared(clock, lambda i: 1.0), config=cfg(warmup_s=0.0, max_time_s=0.01), clock=clock)
    assert m.samples == 1 and m.median_us == pytest.approx(1e6)


def test_failure_is_returned_not_raised():
    clock = FakeClock()
    m = measure(FakePrepared(clock, lambda i: 1e-4, fail_at=5), config=cfg(), clock=clock)
    assert m.status == "failed"
    assert "boom in op" in m.error
    assert math.isnan(m.median_us)
    d = m.to_dict()
    assert d["median_us"] is None and d["status"] == "failed"


class FakeMonitor:
    """Reports throttling for the first ``throttled_passes`` measurement passes."""

    def __init__(self, throttled_passes: int, reasons: tuple[str, ...] = ("SwThermalSlowdown",)) -> None:
        self.passes = 0
        self.left = throttled_passes
        self._throttled = False
        self._reasons = reasons  # pass k reports reasons[k % len(reasons)]

    def reset(self):
        self.passes += 1
        self._throttled = self.left > 0
        self.left -= 1

    def poll(self, force=False):
        pass

    mean_mhz = 1755.0

    @property
    def throttled(self):
        return self._throttled

    @property
    def reasons(self):
        return [self._reasons[(self.passes - 1) % len(self._reasons)]] if self._throttled else []


# a GPU that keeps reporting the same throttle (e.g. its power cap) costs two passes, not three;
# a different reason in the re-measurement is another episode and gets the next retry
@pytest.mark.parametrize("throttled_passes,reasons,retries,flagged", [
    (0, ("SwThermalSlowdown",), 0, False), (1, ("SwThermalSlowdown",), 1, False),
    (5, ("SwPowerCap",), 1, True), (5, ("SwPowerCap", "HwSlowdown"), 2, True)])
def test_throttled_entries_are_remeasured_then_flagged(throttled_passes, reasons, retries, flagged):
    clock = FakeClock()
    mon = FakeMonitor(throttled_passes, reasons)
    m = measure(FakePrepared(clock, lambda i: 1e-4, monitor=mon), config=cfg(min_time_s=0.0), clock=clock)
    assert m.extra["throttle_retries"] == retries
    assert mon.passes == retries + 1
    assert m.throttled is flagged
    assert m.extra.get("throttle_persistent", False) is (flagged and len(reasons) == 1)
    assert m.sm_clock_mhz == 1755.0


def test_host_bound_flag_from_enqueue_time():
    class Enq(FakePrepared):
        def __init__(self, *a, enq_per_call, **k):
            super().__init__(*a, **k)
            self.enq = enq_per_call

        def enqueue_time(self, calls):
            return self.enq * calls

    for enq, expect in ((9e-5, True), (1e-5, False)):
        clock = FakeClock()
        m = measure(Enq(clock, lambda i: 1e-4, enq_per_call=enq), config=cfg(min_time_s=0.0), clock=clock)
        assert m.host_bound is expect
        assert m.enqueue_us == pytest.approx(enq * 1e6)


def test_summary_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.lognormal(3.0, 0.3, size=257)
    s = summarize(x)
    assert s.median == pytest.approx(np.median(x))
    assert s.p10 == pytest.approx(np.percentile(x, 10))
    assert s.p90 == pytest.approx(np.percentile(x, 90))
    assert s.iqr == pytest.approx(np.percentile(x, 75) - np.percentile(x, 25))
    assert s.mean == pytest.approx(x.mean())
    mad = np.median(np.abs(x - np.median(x)))
    assert s.noise == pytest.approx(1.2533141 * 1.4826022 * mad / np.sqrt(x.size) / np.median(x), rel=1e-6)
    assert median_noise([5.0]) == math.inf


def test_measurement_stats_reported_in_microseconds_per_call():
    clock = FakeClock()
    seq = [1e-4, 2e-4, 3e-4]
    p = FakePrepared(clock, lambda i: seq[i % 3])
    m = measure(p, config=cfg(warmup_s=0.0, min_time_s=0.0, max_time_s=1e9, min_samples=30, max_noise=10.0),
                clock=clock)
    # per-call times of the counted samples (those after the warm-up batches), from what the fake reported
    w = m.extra["warmup_rounds"]
    per_call = np.array([seq[i % 3] for i in range(w, w + m.samples)]) * 1e6
    assert m.median_us == pytest.approx(np.median(per_call))
    assert m.mean_us == pytest.approx(per_call.mean())
    assert m.p10_us == pytest.approx(np.percentile(per_call, 10))


def test_config_validation_and_dict_roundtrip():
    c = TimingConfig(max_time_s=1.5, threads=2, cold_cache=True)
    assert TimingConfig.from_dict(c.to_dict()) == c
    assert c.cache == "cold"
    with pytest.raises(ValueError):
        TimingConfig(min_samples=0)
    with pytest.raises(ValueError):
        TimingConfig(max_noise=0)
    with pytest.raises(ValueError):
        TimingConfig(warmup_rounds=0)
    # a protocol recorded before warmup_rounds existed reads with the default
    old = {k: v for k, v in TimingConfig().to_dict().items() if k != "warmup_rounds"}
    assert TimingConfig.from_dict(old).warmup_rounds == 3
    m = Measurement(median_us=3.0, samples=4)
    assert Measurement.from_dict(m.to_dict()).median_us == 3.0


def test_cpu_backend_times_a_real_conv():
    backend = get_backend("cpu", threads=1)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    c = TimingConfig(warmup_s=0.0, min_samples=3, min_time_s=0.0, max_time_s=0.05, max_noise=0.5, threads=1)
    m = measure(conv, [torch.randn(1, 4, 16, 16)], c, backend=backend)
    assert m.status == "ok" and m.samples >= 3 and m.median_us > 0
    assert m.p10_us <= m.median_us <= m.p90_us
    assert m.sm_clock_mhz is None and m.host_bound is None


def test_cpu_backend_reports_a_failing_module_as_failed():
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise ValueError("shape mismatch somewhere")

    m = measure(Bad(), [torch.randn(1)], TimingConfig(warmup_s=0.0, max_time_s=0.01), backend="cpu")
    assert m.status == "failed" and "ValueError" in m.error


def test_backend_registry():
    assert {"cpu", "eager", "cudagraph"} <= set(available_backends())
    with pytest.raises(UserError, match="unknown timing backend"):
        get_backend("nope")
    with pytest.raises(UserError, match="cpu"):
        get_backend("cpu", device="cuda:0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            get_backend("cudagraph", device="cpu")

    class Mine:
        name = "mine"

        def __init__(self, **options):
            self.options = options

    try:
        register_backend("mine-test", Mine)
        assert "mine-test" in available_backends()
        assert get_backend("mine-test", device="cpu").options == {"device": "cpu"}
        with pytest.raises(ValueError):
            register_backend("mine-test", lambda **k: None)
    finally:
        _REGISTRY.pop("mine-test", None)


def test_single_sample_measurement_serialises_to_strict_json():
    """One sample has infinite noise; the journal writes strict JSON, so it must become null."""
    import json

    m = Measurement.from_dict({"median_us": 5.0, "p10_us": 5.0, "p90_us": 5.0, "iqr_us": 0.0, "mean_us": 5.0,
                               "samples": 1, "noise": math.inf, "status": "ok"})
    d = m.to_dict()
    assert d["noise"] is None and d["median_us"] == 5.0
    json.dumps(d, allow_nan=False)
