"""benchmarks/lut_swap_offline.py: a result's measurements re-priced with other LUTs. Here the
'measurements' are an exact affine of one LUT's sums, so that LUT must explain them (held-out error
≈ 0) and a LUT with some rows changed must not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LUT = REPO / "luts" / "cpu-epyc-1t-compile-65x129.parquet"


def _script():
    from search_support import benchmark_script

    return benchmark_script("lut_swap_offline")


@pytest.fixture(scope="module")
def luts(tmp_path_factory):
    from latbench.lut.table import read_lut, write_lut

    out = tmp_path_factory.mktemp("luts")
    lut = read_lut(LUT)
    changed = read_lut(LUT)
    for op in ("conv_3x3", "sep_conv_3x3"):  # two candidate ops timed 3× slower in the other LUT
        m = changed.df["op"] == op
        changed.df.loc[m, ["median_us", "p10_us"]] *= 3.0
    write_lut(changed, out / "changed.parquet")
    return lut, LUT, out / "changed.parquet"


def test_the_lut_that_made_the_measurements_explains_them_and_a_changed_one_does_not(tmp_path, luts):
    from search_support import affine_result

    lut, own, changed = luts
    res = affine_result(tmp_path / "result.json", own, 30, lambda i: "fit" if i < 20 else "test")
    out = tmp_path / "out"
    mod = _script()
    assert mod.main([str(res), "--luts", str(own), str(changed), "--out-dir", str(out), "--name", "t"]) == 0
    by = json.loads((out / "t.json").read_text())["results"]["result.json"]["by_lut"]
    assert by[str(own)]["test"]["mape"] < 0.05
    assert by[str(changed)]["test"]["mape"] > 10 * by[str(own)]["test"]["mape"] + 0.3
    assert "*" in (out / "t.md").read_text()  # the result's own LUT is marked


def test_a_missing_file_is_one_error_line(tmp_path, capsys):
    assert _script().main([str(tmp_path / "none.json"), "--luts", str(LUT)]) == 2
    assert capsys.readouterr().err.strip() == f"Error: no such file: {tmp_path / 'none.json'}"
