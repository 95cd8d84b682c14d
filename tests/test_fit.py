"""latbench fit end to end: a fake backend with a known ground truth (per-call overhead paid once
per LUT row but once per network, fusion savings, context slopes) is recovered; a real small CPU
fit beats the raw sum on held-out networks; bad input is one line and leaves the LUT intact; a
killed fit resumes from its journal."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from torch import nn

from latbench.build.builder import build_lut
from latbench.cli import cli
from latbench.errors import UserError
from latbench.model.fit import FitRequest, journal_path, run_fit
from latbench.timing.interleave import RoundsConfig
from latbench.lut.table import LUT, read_lut, write_lut
from latbench.model.latency_model import stored_models
from latbench.timing.probe import CallProbe
from latbench.timing import TimingConfig, register_backend
from fakes import FakePrepared

TOY = "toy_space:ToySpace"
RES = (16, 24)
FAST = RoundsConfig(rounds=3, window_s=0.005)

# ---- a fake backend whose whole-network cost is known ------------------------------------------
OVERHEAD_US = 20.0
KERNEL_US = {"stem": 100.0, "conv_3x3": 60.0, "skip": 0.0, "max_pool_3x3": 15.0, "add": 5.0, "head": 30.0}
CONTEXT = {"conv_3x3": 1.3, "max_pool_3x3": 0.8, "skip": 1.0}
FUSION_SAVING_US = {"conv_3x3": 4.0, "max_pool_3x3": 2.0, "skip": 0.0}


def op_name(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        if m.stride == (2, 2):
            return "stem"
        return "conv_3x3" if m.kernel_size == (3, 3) else "head"
    if isinstance(m, nn.MaxPool2d):
        return "max_pool_3x3"
    if isinstance(m, nn.Identity):
        return "skip"
    if type(m).__name__ == "Add":
        return "add"
    if type(m).__name__ == "Zero":
        return "zero"
    raise KeyError(type(m).__name__)


def true_cost_us(module: nn.Module) -> float:
    if isinstance(module, CallProbe):
        return OVERHEAD_US
    ops = getattr(module, "ops", None)
    if ops is None:  # one op alone: its kernel and one call
        return OVERHEAD_US + KERNEL_US[op_name(module)]
    total = OVERHEAD_US + KERNEL_US["stem"] + KERNEL_US["add"] + KERNEL_US["head"]
    for m in ops:
        name = op_name(m)
        if name != "zero":
            total += CONTEXT[name] * KERNEL_US[name] - FUSION_SAVING_US[name]
    return total


class FakeBackend:
    name = "fake-toy"
    device = "cpu"
    precision = "fp32"

    def __init__(self, device="cpu", precision="fp32", threads=None) -> None:
        self.threads = threads

    def prepare(self, module, inputs, config):
        return FakePrepared(true_cost_us(module))

    def describe(self):
        return {"backend": self.name}


register_backend("fake-toy", FakeBackend, replace=True)
PROTO = TimingConfig(warmup_s=0.0, min_samples=3, min_time_s=0.0, max_time_s=0.01, threads=1)


@pytest.fixture
def fake_lut(tmp_path, toy_space):
    path = tmp_path / "fake.parquet"
    build_lut(toy_space, [RES], FakeBackend(), PROTO, path, "cpu-fake", progress=False)
    return path


def test_fit_recovers_a_fake_backend_and_stores_the_model(fake_lut, toy_space):
    res = run_fit(FitRequest(str(fake_lut), fit_networks=14, test_networks=8, seed=1, space_name=TOY, rounds=FAST))
    assert res.saved and res.overhead_us == pytest.approx(OVERHEAD_US)
    test = res.figures["test"]
    assert test["raw"]["mape"] > 10.0  # the raw sum pays the overhead once per row
    assert test["model"]["mape"] < 0.1 and test["model"]["worst"] < 0.3
    assert test["model"]["kendall_tau"] > 0.95  # ties in the truth of a 64-network space
    # every network's prediction equals the truth, the held-out ones included
    for n in res.networks:
        net = toy_space.build_architecture(n.arch)
        assert res.model.predict_rows(n.rows[res.model.column]) == pytest.approx(true_cost_us(net), rel=2e-3)
    # stored in the LUT, with its provenance, and found for its scope
    models = stored_models(read_lut(fake_lut).meta)
    assert len(models) == 1 and models[0].model_id == res.model.model_id
    prov = models[0].provenance
    assert prov["by"] == "latbench fit" and prov["fit_networks"] == 14 and prov["held_out"]["test"]["n"] == 8
    assert not journal_path(fake_lut).exists()
    # a second fit of the same scope replaces the model instead of adding one
    run_fit(FitRequest(str(fake_lut), fit_networks=10, test_networks=0, seed=2, space_name=TOY, rounds=FAST))
    assert len(stored_models(read_lut(fake_lut).meta)) == 1


def test_fit_sets_are_disjoint(fake_lut):
    res = run_fit(FitRequest(str(fake_lut), fit_networks=12, test_networks=8, seed=0, space_name=TOY,
                             rounds=RoundsConfig(rounds=1, window_s=0.002), save=False))
    fit = {json.dumps(n.arch, sort_keys=True) for n in res.networks if n.set == "fit"}
    test = {json.dumps(n.arch, sort_keys=True) for n in res.networks if n.set == "test"}
    assert len(fit) == 12 and len(test) == 8 and not fit & test
    assert not res.saved and stored_models(read_lut(fake_lut).meta) == []


def test_fit_networks_drawn_from_the_search(fake_lut, tmp_path):
    search = tmp_path / "search.json"
    search.write_text(json.dumps({"weights": {"conv_3x3": 3, "skip": 1, "max_pool_3x3": 1, "zero": 0.5}}))
    res = run_fit(FitRequest(str(fake_lut), fit_networks=12, search_fit_networks=4, test_networks=8,
                             from_search=str(search), search_networks=6, seed=0, space_name=TOY, rounds=FAST,
                             save=False))
    fit = [n for n in res.networks if n.set == "fit"]
    assert len(fit) == 12 and sum(n.key.startswith("fits") for n in fit) == 4
    keys = [json.dumps(n.arch, sort_keys=True) for n in res.networks]
    assert len(keys) == len(set(keys)) == 12 + 8 + 6  # fit, held-out uniform and held-out searched: disjoint
    assert res.model.provenance["fit_networks_from_search"] == 4
    assert res.model.provenance["network_rows"] == "every row"  # the fake LUT's backend folds nothing
    # the ablation at no extra measurement: the same fit on the 8 uniform fit networks alone
    assert "model (uniform part of the fit set only)" in res.figures["search"]
    assert res.to_dict()["request"]["search_fit_networks"] == 4


def test_cli_draws_half_the_fit_networks_from_the_search_by_default(fake_lut, tmp_path):
    search = tmp_path / "search.json"
    search.write_text(json.dumps({"weights": {"conv_3x3": 3, "skip": 1, "max_pool_3x3": 1, "zero": 0.5}}))
    r = CliRunner().invoke(cli, ["fit", str(fake_lut), "--space", TOY, "--no-progress", "--no-save", "--json", "--peers", "none",
                                 "--fit-networks", "10", "--test-networks", "0", "--from-search", str(search),
                                 "--search-networks", "4", "--rounds", "1", "--window", "0.002"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])
    assert d["request"]["search_fit_networks"] == 5
    assert sum(n["key"].startswith("fits") for n in d["networks"]) == 5


def test_real_cpu_fit_beats_the_raw_sum_on_held_out_networks(tmp_path):
    from nas.space import LGCNetSpace
    from search_support import RESOLUTION, tiny_space

    path = tmp_path / "tiny.parquet"
    build_lut(LGCNetSpace(tiny_space()), [RESOLUTION], "cpu",
              TimingConfig(warmup_s=0.01, min_samples=5, min_time_s=0.05, max_time_s=0.1, threads=1), path,
              "cpu-test", progress=False, warn=lambda m: None)
    res = run_fit(FitRequest(str(path), fit_networks=20, test_networks=10, seed=0,
                             rounds=RoundsConfig(rounds=5, window_s=0.03),
                             max_reference_spread=math.inf))  # a functional test: any machine state will do
    t = res.figures["test"]
    assert t["model"]["mape"] < t["raw"]["mape"]
    assert res.scope.resolution == f"{RESOLUTION[0]}x{RESOLUTION[1]}" and res.scope.backend == "cpu"
    # nas search prices with it now, and says so
    from nas.search.config import LUTConfig
    from nas.search.latency import load_latency_table
    from search_support import tiny_space

    table, ident = load_latency_table(LUTConfig(path=str(path), resolution=RESOLUTION), tiny_space())
    assert ident["latency_model"]["id"] == res.model.model_id


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, match", [
    (["--fit-networks", "3"], "at least 8"),
    (["--test-networks", "2"], "0 or at least 3"),
    (["--rounds", "0"], "rounds"),
    (["--window", "0"], "window"),
    (["--resolution", "8x8"], "no rows at 8x8"),
    (["--statistic", "mean"], "statistic"),
    (["--search-fit-networks", "4"], "give --from-search too"),
    (["--search-fit-networks", "-1"], "cannot be negative"),
])
def test_bad_options_are_one_line_and_leave_the_lut_intact(fake_lut, args, match):
    before = _sha(fake_lut)
    r = CliRunner().invoke(cli, ["fit", str(fake_lut), "--space", TOY, "--no-progress", *args])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and match in r.output and "Traceback" not in r.output
    assert _sha(fake_lut) == before


def test_corrupt_model_metadata_is_refused_and_left_alone(fake_lut):
    lut = read_lut(fake_lut)
    write_lut(LUT(lut.df, {**lut.meta, "latency_models": [{"version": 1, "scope": "garbage"}]}), fake_lut)
    before = _sha(fake_lut)
    r = CliRunner().invoke(cli, ["fit", str(fake_lut), "--space", TOY, "--no-progress", "--fit-networks", "8",
                                 "--rounds", "1", "--window", "0.002"])
    assert r.exit_code == 2 and "latency model is corrupt" in r.output, r.output
    assert _sha(fake_lut) == before


def test_cli_prints_the_ladder_and_writes_json_and_a_plot(fake_lut, tmp_path):
    png = tmp_path / "fit.png"
    r = CliRunner().invoke(cli, ["fit", str(fake_lut), "--space", TOY, "--no-progress", "--fit-networks", "10",
                                 "--test-networks", "5", "--rounds", "2", "--window", "0.003", "--plot", str(png),
                                 "--peers", "none"])
    assert r.exit_code == 0, r.output
    for label in ("Σ LUT (raw)", "affine", "latency model", "held-out uniform", "saved the latency model"):
        assert label in r.output
    assert png.stat().st_size > 1000
    r = CliRunner().invoke(cli, ["fit", str(fake_lut), "--space", TOY, "--no-progress", "--fit-networks", "10",
                                 "--test-networks", "5", "--rounds", "2", "--window", "0.003", "--json", "--no-save",
                                 "--peers", "none"])
    d = json.loads(r.stdout)
    assert d["saved"] is False and set(d["figures"]) == {"fit", "test"}
    assert d["figures"]["test"]["model"]["mape"] < d["figures"]["test"]["raw"]["mape"]


def test_a_killed_fit_resumes_from_its_journal(tmp_path, toy_space, fast_config):
    path = tmp_path / "cpu.parquet"
    build_lut(toy_space, [RES], "cpu", fast_config, path, "cpu", progress=False)
    tests_dir = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "latbench.cli", "fit", str(path), "--space", TOY, "--no-progress",
           "--fit-networks", "10", "--test-networks", "4", "--rounds", "6", "--window", "0.04", "--json",
           "--peers", "none"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = journal_path(path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count('"type": "window"') >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recs = [json.loads(ln) for ln in journal.read_text().splitlines() if ln.strip().endswith("}")]
    # a window marked superseded after a drift is journalled twice: count windows, not lines
    kept = len({(r["window"]["item"], r["window"]["round"], r["window"]["t"]) for r in recs if r.get("type") == "window"})
    assert kept >= 10
    assert stored_models(read_lut(path).meta) == []  # nothing saved by the killed run
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["measurement"]["resumed_windows"] >= kept - 1  # at most the window in flight is lost
    assert d["saved"] and len(stored_models(read_lut(path).meta)) == 1
    # a rerun with other settings does not mix its windows with an unfinished journal
    journal.write_text(json.dumps({"type": "header", "key": {"other": 1}}) + "\n")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "unfinished fit with other settings" in out.stderr


# ---- a space latbench has never seen: an MBConv chain, priced by a backend that fuses ----------
def _leaf_cost_us(m: nn.Module, in_network: bool) -> float:
    if isinstance(m, nn.Conv2d):
        return (2.0 + 1e-3 * m.weight.numel()) * (1.15 if in_network else 1.0)
    if isinstance(m, nn.BatchNorm2d):
        return 0.0 if in_network else 0.8  # folded into the conv when the whole network is compiled
    if isinstance(m, nn.ReLU6):
        return 0.25 if in_network else 0.5  # fused into the conv's epilogue, half the cost
    if isinstance(m, nn.Linear):
        return 1.0
    return 0.0


class FusingBackend(FakeBackend):
    """Any module: one call's overhead + the cost of its leaves; a whole network fuses BN and ReLU
    and pays the overhead once."""

    name = "fake-fusing"

    def prepare(self, module, inputs, config):
        if isinstance(module, CallProbe):
            return FakePrepared(OVERHEAD_US)
        whole = bool(getattr(module, "whole_network", False))
        return FakePrepared(OVERHEAD_US + sum(_leaf_cost_us(m, whole) for m in module.modules()))


register_backend("fake-fusing", FusingBackend, replace=True)


def test_fit_is_generic_over_search_spaces(tmp_path):
    from mbconv_space import MBConvSpace

    space = MBConvSpace()
    path = tmp_path / "mb.parquet"
    build_lut(space, [(32, 32)], FusingBackend(), PROTO, path, "cpu-fusing", progress=False)
    res = run_fit(FitRequest(str(path), fit_networks=16, test_networks=10, seed=0, space_name="mbconv_space:MBConvSpace",
                             rounds=FAST))
    t = res.figures["test"]
    assert t["raw"]["mape"] > 5.0
    # τ against the measurement: two of the 10 networks may lie within the timer's noise of each other
    # (one swapped pair of 45 reads 0.956; a fresh clone's suite read 0.989 at MAPE 0.009 %, 2026-12-05);
    # the exact check is per network, against the truth, below
    assert t["model"]["mape"] < 0.2 and t["model"]["kendall_tau"] > 0.95
    for n in res.networks:
        net = space.build_architecture(n.arch)
        truth = OVERHEAD_US + sum(_leaf_cost_us(m, True) for m in net.modules())
        assert res.model.predict_rows(n.rows[res.model.column]) == pytest.approx(truth, rel=3e-3)
