"""benchmarks/input_rotation.py: every distinct op of a toy-space LUT timed with the CPU timer's input
rotation off and on, alternately; its table, summary and refusals (no time is asserted)."""

from __future__ import annotations

import json

from latbench.build.builder import build_lut

TOY = "toy_space:ToySpace"


def _script():
    from search_support import benchmark_script

    return benchmark_script("input_rotation")


def test_each_distinct_op_is_timed_both_ways(tmp_path, toy_space, fast_config):
    lut = tmp_path / "cpu.parquet"
    build_lut(toy_space, [(16, 24)], "cpu", fast_config, lut, "cpu", progress=False)
    out = tmp_path / "res"
    rc = _script().main([str(lut), "--space", TOY, "--backends", "cpu", "--repeats", "2", "--sets", "3",
                         "--max-time", "0.01", "--out-dir", str(out)])
    assert rc == 0
    (js,) = out.glob("input_rotation-cpu-16x24-*.json")
    d = json.loads(js.read_text())
    keys = {e.spec.key for e in toy_space.enumerate(16, 24, 1) if not e.analytic}
    assert sorted(r["key"] for r in d["rows"]) == sorted(keys)
    for r in d["rows"]:
        assert r["backend"] == "cpu" and r["same_us"] > 0 and r["rotated_us"] > 0
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
    s = d["summary"]["cpu"]
    assert s["ops"] == len(keys) and d["sets"] == 3 and d["threads"] == 1 and len(d["loadavg_before"]) == 3
    md = js.with_suffix(".md").read_text()
    assert md.count("\n| cpu |") == len(keys) and "## Summary" in md


def test_the_sweep_times_each_count_and_zeros(tmp_path, toy_space, fast_config):
    lut = tmp_path / "cpu.parquet"
    build_lut(toy_space, [(16, 24)], "cpu", fast_config, lut, "cpu", progress=False)
    out = tmp_path / "res"
    rc = _script().main([str(lut), "--space", TOY, "--backends", "cpu", "--repeats", "1", "--max-time", "0.01",
                         "--sweep", "1,3", "--out-dir", str(out)])
    assert rc == 0
    (js,) = out.glob("input_rotation-sweep-cpu-16x24-*.json")
    d = json.loads(js.read_text())
    assert d["rows"] and all(set(r["median_us"]) == {"random×1", "random×3", "zeros"} for r in d["rows"])
    assert all(v > 0 for r in d["rows"] for v in r["median_us"].values())
    assert "| random×1 | random×3 | zeros |" in js.with_suffix(".md").read_text()


def test_bad_inputs_are_one_error_line(tmp_path, capsys):
    mod = _script()
    assert mod.main([str(tmp_path / "none.parquet")]) == 2
    assert capsys.readouterr().err.strip() == f"Error: no LUT at {tmp_path / 'none.parquet'}"
    (tmp_path / "x.parquet").write_bytes(b"")
    assert mod.main([str(tmp_path / "x.parquet"), "--sets", "1"]) == 2
    assert "--sets >= 2" in capsys.readouterr().err
