"""benchmarks/gpu_session.sh without a GPU: the printed plan, the STEPS selection, the call budget,
and the per-step results in $OUT (DRY_RUN=1 writes each step's command instead of running it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    e = dict(os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=e, capture_output=True, text=True, timeout=120)


def _steps(out: Path) -> list[list[str]]:
    lines = (out / "steps.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["step", "rc", "seconds"]
    return [ln.split("\t") for ln in lines[1:]]


def test_plan_only_prints_every_selected_step_with_its_estimate(tmp_path):
    r = _run(tmp_path, PLAN_ONLY="1")
    assert r.returncode == 0, r.stderr
    for step in ("tests", "timer", "lut", "fidelity", "fit", "fps", "throughput"):
        assert re.search(rf"^\s+{step}\s+\d+s\s+\d+s$", r.stdout, re.M), r.stdout
    assert re.search(r"^\s+total\s+\d+s\s+\d+s\s+\(\d+ min estimated\)", r.stdout, re.M)
    assert "split STEPS over calls" in r.stdout  # the default plan does not fit one 9-minute call
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["plan.txt"]
    # every step's cap stays within 5 minutes
    caps = [int(m) for m in re.findall(r"^\s+\w+\s+\d+s\s+(\d+)s$", r.stdout, re.M)]
    assert caps and max(caps) <= 300


def test_unknown_step_is_one_error_line(tmp_path):
    r = _run(tmp_path, STEPS="tests lutt", PLAN_ONLY="1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["Error: unknown step 'lutt'; steps: "
                                             "tests timer lut lut2 fidelity fit fps throughput backends"]


def test_dry_run_writes_each_step_into_out(tmp_path):
    r = _run(tmp_path, STEPS="tests lut fidelity fit fps", DRY_RUN="1", BUDGET_S="2000")
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu-results.tgz", "plan.txt", "session.log", "steps.tsv"]
    assert all(NAME_OK.match(f) for f in files) and len(files) <= 8  # what the device tool returns
    rows = _steps(out)
    assert [row[0] for row in rows] == ["tests", "lut", "fidelity", "fit", "fps"] and all(row[1] == "0" for row in rows)
    with tarfile.open(out / "gpu-results.tgz") as tar:
        names = tar.getnames()
        cmds = {n.split("/")[-1].split(".")[0]: tar.extractfile(n).read().decode()
                for n in names if n.endswith(".dry-run.txt")}
    assert set(cmds) == {"tests", "lut", "fidelity", "fit", "fps"} and "session.log" in names
    assert "-m 'gpu or trt'" in cmds["tests"] and "tests/test_gpu_timing.py" in cmds["tests"]
    assert "-m latbench.cli build-lut" in cmds["lut"] and "--backend cudagraph --resolution 769x1537" in cmds["lut"]
    assert "lut_fidelity.py" in cmds["fidelity"] and "--samples 50" in cmds["fidelity"]
    assert "-m latbench.cli fit" in cmds["fit"] and "--fit-networks 40" in cmds["fit"]
    assert "-m nas.cli fps" in cmds["fps"] and "eager,cudagraph,compile" in cmds["fps"]
    assert "pip install" not in (out / "session.log").read_text()  # nothing installed into the machine's Python
    # the entry points of pyproject.toml, registered without installing the package
    ep = next((tmp_path / "work" / "site").glob("latbench_lgcnet-*.dist-info")) / "entry_points.txt"
    assert "[latbench.spaces]\nlgcnet = nas.space:LGCNetSpace" in ep.read_text()
    assert "step lut: rc=0 in" in r.stdout  # per-step times printed


def test_a_step_that_no_longer_fits_the_budget_is_skipped_and_said_so(tmp_path):
    r = _run(tmp_path, STEPS="tests lut", DRY_RUN="1", BUDGET_S="120")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _steps(tmp_path / "out")
    assert [(row[0], row[1]) for row in rows] == [("tests", "0"), ("lut", "skipped")]
    assert "skip lut" in r.stdout and "next call" in r.stdout
