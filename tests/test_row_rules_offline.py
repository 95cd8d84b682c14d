"""benchmarks/row_rules_offline.py: three ways to count a network's rows, judged on a result's
measurements. Here the 'measurements' are made from one rule's sums (a known affine of the
weightless-folded sum), so that rule must fit exactly and the others must not."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LUT = REPO / "luts" / "cpu-epyc-1t-compile-65x129.parquet"


def _script():
    from search_support import benchmark_script

    return benchmark_script("row_rules_offline")


@pytest.fixture(scope="module")
def setup():
    from latbench.lut.table import read_lut
    from latbench.model.networks import resolve_setup

    lut = read_lut(LUT)
    return lut, resolve_setup(lut)


def test_the_rule_that_made_the_measurements_fits_them_exactly(tmp_path, setup):
    lut, s = setup
    mod = _script()
    r = random.Random(3)
    nets = []
    for i in range(24):
        arch = s.space.sample_architecture(r)
        if i % 3 == 0:  # cells collapsed to zero, as searches derive them: the rules differ there
            arch["cells"] = [["zero"] * len(c) if k in (2, 9) else c for k, c in enumerate(arch["cells"])]
        sums = mod._sums(s.space, lut, arch, s.height, s.width, s.batch)
        nets.append({"set": "fit" if i < 16 else "test", "measured_us": 0.6 * sums["weightless folded"] + 500.0,
                     "fingerprint": f"n{i}", "arch": arch})
    res = tmp_path / "result.json"
    res.write_text(json.dumps({"networks": nets, "measurement": {"reference_p10_p90_spread": 0.1}}))
    out = tmp_path / "out"
    assert mod.main([str(LUT), str(res), "--out-dir", str(out), "--name", "t"]) == 0
    rules = json.loads((out / "t.json").read_text())["results"]["result.json"]["rules"]
    exact = rules["weightless folded"]
    assert exact["a"] == pytest.approx(0.6) and exact["b"] == pytest.approx(500.0, abs=1e-3)
    assert exact["fit_loo_mape"] < 1e-6 and exact["test"]["mape"] < 1e-6
    assert rules["every row"]["test"]["mape"] > 0.1 and rules["all folded"]["fit_loo_mape"] > 0.1
    d, lo, hi = exact["test"]["vs_every_row_pp"]
    assert d < 0 and lo <= d <= hi
    assert "| weightless folded |" in (out / "t.md").read_text()


def test_a_missing_file_is_one_error_line(tmp_path, capsys):
    assert _script().main([str(LUT), str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.strip() == f"Error: no such file: {tmp_path / 'none.json'}"
