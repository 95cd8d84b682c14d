"""`nas demo` runs the main job end to end (LUT → search → FPS → report) on the CPU."""

from __future__ import annotations

import json
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
    genotype = json.loads((out / "search" / "genotype.json").read_text())
    assert len(genotype["cells"]) == 14 and len(genotype["fusion"]) == 13
    report = json.loads((out / "reports" / "fps" / "cpu.json").read_text())
    assert report["format"] == "nas-fps-report" and len(report["records"]) == 1
    assert "33x65" in json.dumps(report["records"][0])
    summary = (out / "summary.md").read_text()
    assert "33 × 65" in summary
    assert (out / "fps_miou.png").stat().st_size > 1000
