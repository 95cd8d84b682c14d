"""benchmarks/steadiness.py: the fit's reference network under two backends (here the cpu backend
twice, the machine against itself), interleaved, on a toy-space LUT; its figures and refusals."""

from __future__ import annotations

import json
from pathlib import Path

from latbench.build.builder import build_lut

REPO = Path(__file__).resolve().parents[1]
TOY = "toy_space:ToySpace"


def _script():
    from search_support import benchmark_script

    return benchmark_script("steadiness")


def test_the_reference_is_measured_under_both_backends_round_by_round(tmp_path, toy_space, fast_config):
    lut = tmp_path / "cpu.parquet"
    build_lut(toy_space, [(16, 24)], "cpu", fast_config, lut, "cpu", progress=False)
    out = tmp_path / "res"
    rc = _script().main([str(lut), "--space", TOY, "--backends", "cpu,cpu", "--others", "1", "--rounds", "5",
                         "--window", "0.01", "--out-dir", str(out), "--tag", "t"])
    assert rc == 0
    (js,) = out.glob("steadiness-*-cpu-cpu-16x24-*-t.json")
    d = json.loads(js.read_text())
    assert set(d["items"]) == {"reference/cpu", "reference/cpu#2", "other0/cpu"}
    for name, item in d["items"].items():
        # the fit's reference (the first backend's) is measured every few items, the others once a round
        assert (item["windows"] > 5 if name == "reference/cpu" else item["windows"] == 5) and item["median_us"] > 0
        assert 0 <= item["p10_p90_spread"] <= item["max_over_median"] and 0 <= item["slow_share"] <= 1
    pair = d["reference_pair"]
    assert pair["items"] == ["reference/cpu", "reference/cpu#2"] and pair["rounds"] == 5
    assert sorted(pair["per_round"]) == ["0", "1", "2", "3", "4"]
    slow_first = sum(1 for u, _ in pair["per_round"].values() if u >= d["slow_threshold"])
    assert pair["slow_both"] + pair["slow_first_only"] == slow_first
    assert d["threads"] == 1 and len(d["loadavg_before"]) == 3
    md = js.with_suffix(".md").read_text()
    assert "| reference/cpu#2 | 5 |" in md and "correlation" in md


def test_bad_inputs_are_one_error_line(tmp_path, capsys):
    mod = _script()
    assert mod.main([str(tmp_path / "none.parquet")]) == 2
    assert capsys.readouterr().err.strip() == f"Error: no LUT at {tmp_path / 'none.parquet'}"
    (tmp_path / "x.parquet").write_bytes(b"")
    assert mod.main([str(tmp_path / "x.parquet"), "--backends", "cpu"]) == 2
    assert capsys.readouterr().err.strip().startswith("Error: give at least two --backends")
