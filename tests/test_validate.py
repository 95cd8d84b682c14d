"""latbench validate-lut: figures equal independent computations on the recorded samples, the
calibration lands in the LUT's metadata, bad input is one line and exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from latbench.build.builder import build_lut
from latbench.cli import cli
from latbench.errors import UserError
from latbench.timing.interleave import RoundsConfig
from latbench.lut.table import read_lut, write_lut
from latbench.model.predictor import Predictor
from latbench.model.validate import sample_architectures, save_calibration, validate_lut

TOY = "toy_space:ToySpace"
FAST = RoundsConfig(rounds=3, window_s=0.01)  # interleaved rounds, short: for behaviour, not accuracy
FAST_CLI = ["--rounds", "3", "--window", "0.01"]


@pytest.fixture
def toy_lut(tmp_path, toy_space, fast_config):
    path = tmp_path / "toy.parquet"
    build_lut(toy_space, [(16, 24)], "cpu", fast_config, path, "cpu", progress=False)
    return path


def _lgcnet_lut(tmp_path, fast_config, hw=(33, 65)):
    from nas.config import SpaceConfig
    from nas.space import LGCNetSpace

    path = tmp_path / "lgc.parquet"
    build_lut(LGCNetSpace(SpaceConfig(num_classes=4)), [hw], "cpu", fast_config, path, "cpu", progress=False)
    return path


def test_figures_equal_independent_computation(toy_lut, toy_space):
    result = validate_lut(toy_lut, samples=8, seed=3, space_name=TOY, rounds=FAST)
    d = result.to_dict()
    assert d["measured"] == 8 and d["backend"] == "cpu" and d["resolution"] == "16x24"
    # predictions: Σ of the LUT's rows, computed here straight from the table
    lut = read_lut(toy_lut)
    df = lut.df
    for s in d["samples"]:
        rows = toy_space.architecture_rows(s["arch"])
        want = sum(float(df[(df.position == p) & (df.op == o)]["median_us"].iloc[0]) for p, o in rows)
        assert s["predicted_us"] == pytest.approx(want, rel=1e-12)
    p = np.array([s["predicted_us"] for s in d["samples"]])
    m = np.array([s["measured_us"] for s in d["samples"]])
    f = d["fidelity"]
    rel = np.abs(p - m) / m
    assert f["mape"] == pytest.approx(100 * rel.mean(), rel=1e-9)
    assert f["within_5"] == pytest.approx(np.mean(rel <= 0.05))
    assert f["within_10"] == pytest.approx(np.mean(rel <= 0.10))
    tau = stats.kendalltau(p, m).statistic
    rho = stats.spearmanr(p, m).statistic
    assert f["kendall_tau"] == pytest.approx(tau, abs=1e-9) if np.isfinite(tau) else f["kendall_tau"] is None
    assert f["spearman_rho"] == pytest.approx(rho, abs=1e-9) if np.isfinite(rho) else f["spearman_rho"] is None
    a, b = np.polyfit(p, m, 1)
    assert f["calibration"]["a"] == pytest.approx(a, rel=1e-6)
    assert f["calibration"]["b"] == pytest.approx(b, rel=1e-6, abs=1e-6)
    assert f["calibration"]["mape"] == pytest.approx(100 * np.mean(np.abs(a * p + b - m) / m), rel=1e-6)
    json.dumps(d)  # JSON-able as printed by --json


def test_sampling_is_seeded_and_distinct(toy_space):
    a = sample_architectures(toy_space, 10, seed=1)
    assert a == sample_architectures(toy_space, 10, seed=1)
    assert a != sample_architectures(toy_space, 10, seed=2)
    assert len({json.dumps(x, sort_keys=True) for x in a}) == 10


def test_save_calibration_writes_metadata_and_keeps_rows(toy_lut):
    before = read_lut(toy_lut)
    result = validate_lut(toy_lut, samples=5, seed=0, space_name=TOY, rounds=FAST)
    stored = save_calibration(toy_lut, result)
    after = read_lut(toy_lut)
    cal = after.meta["calibration"]
    assert cal == stored
    assert cal["a"] == pytest.approx(result.fidelity.calibration.a)
    assert cal["b"] == pytest.approx(result.fidelity.calibration.b)
    assert cal["n"] == 5 and cal["resolution"] == "16x24" and cal["backend"] == "cpu"
    assert after.df[["position", "op", "median_us"]].equals(before.df[["position", "op", "median_us"]])


def test_missing_rows_and_foreign_devices_are_refused(toy_lut):
    lut = read_lut(toy_lut)
    with pytest.raises(UserError, match="lacks"):
        Predictor.for_lut(lut, 16, 24).raw_sum([("cell0.e0", "no_such_op")])
    lut.meta["device"] = {**lut.meta["device"], "name": "Some Other CPU"}
    other = toy_lut.parent / "other.parquet"
    write_lut(lut, other)
    with pytest.raises(UserError, match="its own device"):
        validate_lut(other, samples=3, space_name=TOY, rounds=FAST)


def test_cli_json_on_the_lgcnet_space(tmp_path, fast_config):
    path = _lgcnet_lut(tmp_path, fast_config)
    png = tmp_path / "v.png"
    r = CliRunner().invoke(cli, ["validate-lut", str(path), "--samples", "4", "--json", "--no-progress", *FAST_CLI,
                                 "--plot", str(png), "--save-calibration"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    f = d["fidelity"]
    for k in ("mape", "within_5", "within_10", "kendall_tau", "spearman_rho"):
        assert k in f
    assert {"a", "b", "loo_mape", "mape"} <= set(f["calibration"])
    assert d["space"]["name"] == "lgcnet" and d["measured"] == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_lut(path).meta["calibration"]["n"] == 4


@pytest.mark.parametrize("args, message", [
    (["--resolution", "64x64"], "no rows at 64x64"),
    (["--device", "cuda"], "cuda"),
    (["--samples", "2"], "samples"),
])
def test_cli_bad_input_is_one_line_exit_2(toy_lut, args, message):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = CliRunner().invoke(cli, ["validate-lut", str(toy_lut), "--space", TOY, "--no-progress", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("Error")]) == 1


def test_cli_missing_lut_is_exit_2(tmp_path):
    r = CliRunner().invoke(cli, ["validate-lut", str(tmp_path / "nope.parquet"), "--no-progress"])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_sampling_from_a_search_follows_its_probabilities(tmp_path):
    """--from-search draws each edge from the genotype's recorded α probabilities."""
    import random as _random

    from latbench.errors import UserError as _UserError
    from latbench.model.validate import sample_architectures
    from nas.config import SpaceConfig
    from nas.fusion import edge_candidates
    from nas.genotype import Architecture, Genotype
    from nas.ops import CELL_PRIMITIVES
    from nas.space import LGCNetSpace

    cfg = SpaceConfig()
    space = LGCNetSpace(cfg)
    arch = Architecture.from_dict(space.sample_architecture(_random.Random(0)))
    # cell edges: certain of conv_3x3, except cell 2 edge 1 which is 50/50 skip_connect / zero
    cells = [[[1.0 if op == "conv_3x3" else 0.0 for op in CELL_PRIMITIVES] for _ in range(5)] for _ in range(14)]
    cells[2][1] = [0.5 if op in ("skip_connect", "zero") else 0.0 for op in CELL_PRIMITIVES]
    fusion = [[1.0 if i == len(c) - 1 else 0.0 for i in range(len(c))] for c in edge_candidates()]
    path = Genotype(arch, cfg, {"probabilities": {"cells": cells, "fusion": fusion}}).save(tmp_path / "g.json")
    archs = sample_architectures(space, 40, seed=1, from_search=path)
    assert all(a["cells"][0] == ["conv_3x3"] * 5 for a in archs)
    assert all(a["fusion"] == [c[-1] for c in edge_candidates()] for a in archs)
    assert {a["cells"][2][1] for a in archs} == {"skip_connect", "zero"}
    # a genotype without probabilities is refused with one clear line
    bare = Genotype(arch, cfg, {}).save(tmp_path / "bare.json")
    with pytest.raises(_UserError, match="no usable"):
        sample_architectures(space, 3, seed=0, from_search=bare)
