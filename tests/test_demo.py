"""`nas demo` runs the main job end to end (LUT → search at β = 0 and β > 0 → FPS of both → report)
on the CPU, fits a quick latency model, and shows both networks' raw-sum, model and measured latency and how far α moved."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "demo", "--out", str(out), "--device", "cpu",
                           "--resolution", "33x65", "--epochs", "1", "--max-time", "0.02"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    genos = {}
    for run in ("search-beta0", "search-beta0.5"):
        g = json.loads((out / run / "genotype.json").read_text())
        assert len(g["cells"]) == 14 and len(g["fusion"]) == 13
        genos[run] = g
    assert genos["search-beta0"]["meta"]["search"]["beta"] == 0.0
    assert genos["search-beta0.5"]["meta"]["search"]["beta"] == 0.5
    # both searches saw the same data in the same order: only β differs
    s0, s1 = (dict(genos[r]["meta"]["search"]) for r in genos)
    s0.pop("beta"), s1.pop("beta")
    assert s0 == s1
    report = json.loads((out / "reports" / "fps" / "cpu.json").read_text())
    assert report["format"] == "nas-fps-report" and len(report["records"]) == 2
    assert all(r["resolution"] == "33x65" and r["status"] == "ok" for r in report["records"])
    assert "33 × 65" in (out / "report.md").read_text()
    summary = (out / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| β =")]
    assert len(rows) == 2
    for line, run in zip(rows, genos):
        cells = [c.strip() for c in line.strip("|").split("|")]
        start, end = (float(x) for x in cells[1].split("→"))
        assert start == pytest.approx(math.log(8), abs=1e-3) and end < start   # α moved, even in one epoch
        lut_sum, model, measured = float(cells[4]), float(cells[5]), float(cells[7])
        rec = next(r for r in report["records"] if r["genotype"]["path"] == str(out / run / "genotype.json"))
        # the raw sum and the quick model's prediction side by side, as nas fps recorded them
        assert lut_sum == pytest.approx(rec["lut"]["sum_us"] / 1e3, abs=0.006)
        assert model == pytest.approx(rec["lut"]["model_us"] / 1e3, abs=0.006) and model != lut_sum
        assert cells[6].endswith("%") and measured > 0
    assert (out / "fps_miou.png").stat().st_size > 1000
    assert (out / "fit.png").stat().st_size > 1000   # the demo's quick latency model
    assert "predicted" in proc.stdout and "measured" in proc.stdout
