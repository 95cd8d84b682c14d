"""The build's canary (latbench.timing.canary): a slow episode during a LUT build is detected, the
entries timed during it are timed again, and the drift is recorded in the LUT's provenance."""

from __future__ import annotations

import pytest
from torch import nn

from latbench.build.builder import build_lut
from latbench.timing.canary import CanaryConfig
from latbench.lut.table import read_lut
from latbench.timing import TimingConfig

COST_US = {"stem": 100.0, "conv_3x3": 60.0, "max_pool_3x3": 15.0, "add": 5.0, "head": 30.0}


def op_name(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return "stem" if m.stride == (2, 2) else ("conv_3x3" if m.kernel_size == (3, 3) else "head")
    if isinstance(m, nn.MaxPool2d):
        return "max_pool_3x3"
    return "add"


class Machine:
    factor = 1.0


class Prepared:
    granularity = 1
    clock = None
    info: dict = {}

    def __init__(self, machine, cost_us):
        self.m, self.cost = machine, cost_us * 1e-6

    def time(self, calls):
        return calls * self.cost * self.m.factor

    def close(self):
        pass


class SlowsDownOnce:
    """A backend on a machine that turns 1.5x slow when the max-pool entry is prepared."""

    name = "fake-episode"
    device = "cpu"
    precision = "fp32"

    def __init__(self, machine):
        self.m = machine
        self.started = False

    def prepare(self, module, inputs, config):
        name = op_name(module)
        if name == "max_pool_3x3" and not self.started:
            self.started = True
            self.m.factor = 1.5
        return Prepared(self.m, COST_US[name])

    def describe(self):
        return {"backend": self.name}


PROTO = TimingConfig(warmup_s=0.0, min_samples=3, min_time_s=0.0, max_time_s=0.005, threads=1)


def test_a_slow_episode_during_a_build_is_timed_again(tmp_path, toy_space):
    machine = Machine()
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        if "canary" in msg:
            machine.factor = 1.0  # the episode ends

    path = tmp_path / "lut.parquet"
    lut = build_lut(toy_space, [(16, 24)], SlowsDownOnce(machine), PROTO, path, "cpu-episode", progress=False,
                    warn=warn, canary=CanaryConfig(every_s=1e-9, tolerance=0.05, window_s=0.002))
    rec = lut.meta["build"]["canary"]
    assert rec["key"].startswith("stem") and rec["baseline_us"] == pytest.approx(COST_US["stem"])
    assert len(rec["drift_events"]) == 1 and rec["drift_events"][0]["ratio"] == pytest.approx(1.5)
    assert rec["retimed"] == 1 and any("timing the 1 entries" in w for w in warnings)
    # every row holds the undisturbed cost, the max-pool timed during the episode included
    df = read_lut(path).df
    for op, cost in COST_US.items():
        got = df[(df.op == op) & (df.status == "ok")]["median_us"]
        assert len(got) and got.to_numpy() == pytest.approx(cost), op


def test_no_canary_no_record_and_a_quiet_build_has_no_drift(tmp_path, toy_space):
    machine = Machine()
    backend = SlowsDownOnce(machine)
    backend.started = True  # never slows down
    lut = build_lut(toy_space, [(16, 24)], backend, PROTO, tmp_path / "a.parquet", "a", progress=False,
                    canary=CanaryConfig(every_s=1e-9, window_s=0.002))
    assert lut.meta["build"]["canary"]["drift_events"] == [] and lut.meta["build"]["canary"]["checks"] >= 4
    lut = build_lut(toy_space, [(16, 24)], backend, PROTO, tmp_path / "b.parquet", "b", progress=False)
    assert "canary" not in lut.meta["build"]


def test_canary_config_rejects_nonsense():
    for kw in ({"every_s": 0}, {"tolerance": 0}, {"window_s": -1}, {"max_retimes": -1}):
        with pytest.raises(ValueError):
            CanaryConfig(**kw)
