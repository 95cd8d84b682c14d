"""Interleaved rounds (latbench.timing.interleave) on a simulated machine: items whose per-call time is
known, a clock the test controls, and slow episodes the test switches on."""

from __future__ import annotations

import math

import pytest

from latbench.timing.interleave import RoundsConfig, Window, aggregate, measure_interleaved
from latbench.timing import TimingConfig


class Machine:
    """A simulated clock plus a slowdown factor that follows a schedule of (start, end, factor)."""

    def __init__(self, episodes=()):
        self.now = 0.0
        self.episodes = list(episodes)

    def clock(self) -> float:
        return self.now

    def factor(self) -> float:
        for a, b, f in self.episodes:
            if a <= self.now < b:
                return f
        return 1.0


class FakePrepared:
    granularity = 1
    clock = None

    def __init__(self, machine: Machine, per_call_s: float, fail: bool = False):
        self.m = machine
        self.per_call = per_call_s
        self.fail = fail
        self.calls = 0

    def time(self, calls: int) -> float:
        if self.fail:
            raise RuntimeError("boom")
        dt = calls * self.per_call * self.m.factor()
        self.m.now += dt + 1e-4  # a little host time between samples
        self.calls += calls
        return dt

    def close(self) -> None:
        pass


PROTO = TimingConfig(warmup_s=0.01, target_sample_s=1e-3)


def items(machine, costs):
    return {k: FakePrepared(machine, c) for k, c in costs.items()}


@pytest.mark.parametrize("statistic", ["fastest-half", "median"])
def test_quiet_machine_measures_every_item_every_round(statistic):
    m = Machine()
    costs = {"ref": 2e-3, "a": 1e-3, "b": 3e-3, "c": 5e-4}
    cfg = RoundsConfig(rounds=5, window_s=0.02, statistic=statistic)
    res = measure_interleaved(items(m, costs), PROTO, cfg, reference="ref", clock=m.clock)
    for k, c in costs.items():
        assert res.items[k].rounds == 5
        assert res.items[k].median_us == pytest.approx(c * 1e6, rel=1e-9)
    assert res.drift == []


def test_a_slow_episode_is_detected_and_what_ran_in_it_is_measured_again():
    # A 1.5x episode starts with round 2 and ends when the fit notices it.
    m = Machine()
    costs = {"ref": 2e-3, **{f"n{i}": 1e-3 * (1 + i) for i in range(8)}}
    cfg = RoundsConfig(rounds=4, window_s=0.02, reference_every=4, drift_tolerance=0.05, max_retimes=1,
                       statistic="median")
    seen: list[Window] = []
    events: list[str] = []

    def on_window(w: Window) -> None:
        seen.append(w)
        if w.round == 2 and w.item == "ref" and not events and not m.episodes:
            m.episodes.append((m.now, math.inf, 1.5))

    def on_event(msg: str) -> None:
        events.append(msg)
        m.episodes.clear()

    res = measure_interleaved(items(m, costs), PROTO, cfg, reference="ref", on_window=on_window,
                              on_event=on_event, clock=m.clock)
    assert len(res.drift) == 1, "the episode was not detected"
    assert "again" in events[0]
    assert res.drift[0].ratio == pytest.approx(1.5, rel=0.02)
    assert len(res.drift[0].retimed) == 4  # the items measured between two reference checks
    for k, c in costs.items():
        assert res.items[k].rounds == 4
        assert res.items[k].median_us == pytest.approx(c * 1e6, rel=1e-6), k
    # the drifted windows are kept, marked superseded
    # (a superseded window is handed to on_window twice: measured, then marked for the journal)
    unique = {id(w): w for w in seen}.values()
    slow = [w for w in unique if w.item in res.drift[0].retimed and w.round == 2 and w.superseded]
    assert len(slow) == 4 and all(w.median_us == pytest.approx(1.5e6 * costs[w.item]) for w in slow)


def test_fastest_half_ignores_a_minority_of_slow_rounds_that_median_of_windows_would_not():
    ws = [Window("a", r, median_us=100.0 * f, min_us=95.0 * f, samples=5, calls_per_sample=1, t=r)
          for r, f in enumerate([1.0, 1.0, 1.0, 1.0, 1.6, 1.7, 1.8])]
    assert aggregate(ws, "fastest-half").median_us == pytest.approx(95.0)
    assert aggregate(ws, "median").median_us == pytest.approx(100.0)
    ws2 = ws[:4] + [Window("a", r, 200.0, 190.0, 5, 1, r) for r in range(4, 7)] + \
        [Window("a", 7, 300.0, 290.0, 5, 1, 7), Window("a", 8, 300.0, 290.0, 5, 1, 8)]
    assert aggregate(ws2, "median").median_us == pytest.approx(200.0)
    assert aggregate(ws2, "fastest-half").median_us == pytest.approx(95.0)


def test_resume_skips_finished_windows_and_superseded_windows_do_not_count():
    m = Machine()
    costs = {"ref": 2e-3, "a": 1e-3, "b": 2e-3}
    cfg = RoundsConfig(rounds=3, window_s=0.02)
    first = measure_interleaved(items(m, costs), PROTO, cfg, reference="ref", clock=m.clock)
    done = [w for r in first.items.values() for w in r.windows if w.round < 2]
    pre = items(m, costs)
    second = measure_interleaved(pre, PROTO, cfg, reference="ref", done=done, clock=m.clock)
    assert second.items["a"].rounds == 3
    assert pre["a"].calls > 0 and all(w.round == 2 for w in second.items["a"].windows if w not in done)
    # a superseded window of round 0 makes round 0 count only through its replacement
    w0 = Window("x", 0, 500.0, 500.0, 5, 1, 0.0, superseded=True)
    w1 = Window("x", 0, 100.0, 100.0, 5, 1, 1.0)
    assert aggregate([w0, w1], "median").median_us == 100.0


def test_a_failing_item_is_recorded_not_raised():
    m = Machine()
    pre = {"ref": FakePrepared(m, 1e-3), "bad": FakePrepared(m, 1e-3, fail=True), "ok": FakePrepared(m, 1e-3)}
    res = measure_interleaved(pre, PROTO, RoundsConfig(rounds=2, window_s=0.01), reference="ref", clock=m.clock)
    assert not res.items["bad"].ok and "boom" in res.items["bad"].windows[0].error
    assert len(res.items["bad"].windows) == 1  # not visited again
    assert res.items["ok"].ok


def test_rounds_config_rejects_nonsense():
    for kw in ({"rounds": 0}, {"window_s": 0}, {"statistic": "mean"}, {"drift_tolerance": 0}):
        with pytest.raises(ValueError):
            RoundsConfig(**kw)
    assert math.isinf(aggregate([Window("a", 0, 1.0, 1.0, 1, 1, 0.0)]).noise)
