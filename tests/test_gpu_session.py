"""benchmarks/gpu_session.sh: the plan of the two device calls, and every step run for real with
the CPU standing in (STANDIN=cpu: the same commands on the cpu backend at 33x65, the space at
width 1.0, a fast protocol, a few networks), so a wrong flag, a missing file or a width mismatch
between the LUT and the timed network fails here instead of on the GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")
CALL_LIMITS = {"1": 360, "2": 300}


def _run(out: Path, work: Path, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("CALL", "STEPS", "LUT", "STANDIN", "DRY_RUN", "PLAN_ONLY", "TEST_SEARCH", "BUDGET_S")}
    e.update(OUT=str(out), WORK=str(work), PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)


def _steps(out: Path) -> list[list[str]]:
    lines = (out / "steps.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["step", "rc", "seconds"]
    return [ln.split("\t") for ln in lines[1:]]


def _rows_ok(out: Path, steps: list[str], call: str, log: str) -> None:
    rows = [r for r in _steps(out) if r[6] == call]
    assert [r[0] for r in rows] == steps, log
    failed = [r[0] for r in rows if r[1] != "0"]
    assert not failed, f"steps {failed} failed:\n{log}"


def _returned(out: Path) -> list[str]:
    files = sorted(p.name for p in out.iterdir())
    assert all(NAME_OK.match(f) for f in files) and len(files) <= 8  # what the device tool hands back
    return files


# ---- the plan --------------------------------------------------------------------------------------
def test_each_call_fits_its_device_limit_with_a_minute_to_spare(tmp_path):
    r = _run(tmp_path / "out", tmp_path / "work", PLAN_ONLY="1")
    assert r.returncode == 0, r.stderr
    fits = re.findall(r"^  fits: (\d+) s estimated \+ (\d+) s spare <= the call limit of (\d+) s$", r.stdout, re.M)
    assert len(fits) == 2 and "DOES NOT FIT" not in r.stdout, r.stdout
    for (est, spare, limit), call in zip(fits, "12"):
        assert int(spare) >= 60 and int(est) + int(spare) <= int(limit) == CALL_LIMITS[call]
    # the totals are the sums of the printed estimates
    blocks = re.split(r"^call \d: ", r.stdout, flags=re.M)[1:]
    for block in blocks:
        ests = [int(x) for x in re.findall(r"^  (?!total)\S+\s+(\d+)s\s+\d+s$", block, re.M)]
        total = int(re.search(r"^  total\s+(\d+)s", block, re.M).group(1))
        assert ests and sum(ests) == total
    assert re.search(r"^call 1: lut fps fps_compile tests ", r.stdout, re.M)
    assert re.search(r"^call 2: lut fit fidelity timer ", r.stdout, re.M)
    m = re.search(r"^session: machine start ~(\d+) s \+ call 1 <= 360 s \+ call 2 <= 300 s = (\d+) s of the 900 s",
                  r.stdout, re.M)
    assert m and int(m.group(2)) <= 900, r.stdout
    assert _returned(tmp_path / "out") == ["plan.txt"]


def test_a_call_prints_its_own_plan_and_budget(tmp_path):
    for call, budget in (("1", 340), ("2", 280)):
        r = _run(tmp_path / f"out{call}", tmp_path / "work", PLAN_ONLY="1", CALL=call)
        assert r.returncode == 0, r.stderr
        assert re.search(rf"^call {call}: .*\(budget {budget} s, device timeout {CALL_LIMITS[call]} s", r.stdout, re.M)
        assert r.stdout.count("fits:") == 1


@pytest.mark.parametrize("env, message", [
    ({"CALL": "1", "STEPS": "tests lutt"}, "Error: unknown step 'lutt'; steps: "
                                           "lut fps fps_compile tests fit fidelity timer searches lut2 throughput backends"),
    ({"CALL": "3"}, "Error: CALL must be 1 or 2, not '3'"),
    ({}, "Error: set CALL=1 or CALL=2 (or STEPS=...); PLAN_ONLY=1 prints the plan"),
    ({"CALL": "1", "STANDIN": "gpu"}, "Error: STANDIN must be cpu or unset, not 'gpu'"),
])
def test_bad_settings_are_one_error_line(tmp_path, env, message):
    r = _run(tmp_path / "out", tmp_path / "work", **env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [message]


def test_a_step_that_no_longer_fits_the_budget_is_skipped_and_said_so(tmp_path):
    r = _run(tmp_path / "out", tmp_path / "work", STEPS="tests lut", DRY_RUN="1", BUDGET_S="90")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _steps(tmp_path / "out")
    assert [(row[0], row[1]) for row in rows] == [("tests", "0"), ("lut", "skipped")]
    assert "skip lut" in r.stdout and "next call" in r.stdout


# ---- every step, for real, with the CPU standing in --------------------------------------------------
def test_both_calls_run_every_step_with_the_cpu_standing_in(tmp_path):
    work, out1, out2 = tmp_path / "work", tmp_path / "out1", tmp_path / "out2"
    r1 = _run(out1, work, CALL="1", STANDIN="cpu")
    log1 = r1.stdout + r1.stderr
    assert r1.returncode == 0, log1
    _rows_ok(out1, ["lut", "fps", "fps_compile", "tests"], "1", log1)
    lut_name = "cpu-cpu-33x65.parquet"
    assert _returned(out1) == sorted(["plan.txt", "session.log", "steps.tsv", "gpu-results.tgz", lut_name])
    assert "unavailable: TensorRT" in (out1 / "session.log").read_text()  # said, not failed
    # nothing was installed into the Python that ran it; the entry points come from pyproject.toml
    assert "pip install" not in (out1 / "session.log").read_text()
    ep = next((work / "site").glob("latbench_lgcnet-*.dist-info")) / "entry_points.txt"
    assert "[latbench.spaces]\nlgcnet = nas.space:LGCNetSpace" in ep.read_text()

    from latbench.lut import read_lut

    lut = read_lut(out1 / lut_name)
    width = lut.meta["space"]["config"]["width_mult"]
    assert width == 1.0 and lut.meta["backend"] == "cpu" and lut.resolutions() == [(33, 65)]
    res = work / "results"
    for tag, backend in (("eager-cudagraph", "cpu"), ("compile", "cpu")):
        records = json.loads((res / f"fps-cpu-{tag}.json").read_text())["records"]
        assert [r["backend"] for r in records] == [backend]
        rec = records[0]
        # the paper's genotype (width 4.5) timed at the LUT's width, with the LUT's prediction
        assert rec["status"] == "ok" and rec["fps"] > 0 and rec["resolution"] == "33x65"
        assert rec["genotype"]["path"].endswith("lgcnet_paper.json")
        assert rec["network"]["width_mult"] == width and rec["lut"]["sum_us"] > 0
    with tarfile.open(out1 / "gpu-results.tgz") as tar:
        names = set(tar.getnames())
    assert {"results/build-cpu.json", "results/fps-cpu-eager-cudagraph.json", "results/gpu-tests-cpu.xml",
            "logs/lut.log", "session.log"} <= names

    # call 2 on a fresh machine: only call 1's returned LUT is carried
    carried = tmp_path / "carry" / lut_name
    carried.parent.mkdir()
    carried.write_bytes((out1 / lut_name).read_bytes())
    # other searches' genotypes (searched at width 4.5: at the stand-in's width 1.0 the fit takes
    # their derived architectures and says it cannot draw from their α)
    others = sorted(str(p) for p in (REPO / "benchmarks" / "inputs" / "other_searches-cpu-2026-12-04").glob("*.json"))
    assert len(others) == 6
    r2 = _run(out2, tmp_path / "work2", CALL="2", STANDIN="cpu", LUT=str(carried), TEST_SEARCH=" ".join(others))
    log2 = r2.stdout + r2.stderr
    assert r2.returncode == 0, log2
    _rows_ok(out2, ["lut", "fit", "fidelity", "timer"], "2", log2)
    assert re.search(r"step lut \(estimate 15 s", log2)  # a resume of a complete LUT
    res2 = tmp_path / "work2" / "results"
    fit = json.loads((res2 / "fit-cpu.json").read_text())
    assert fit["figures"]["test"]["raw"]["n"] == 3 and (res2 / "fit-cpu.png").stat().st_size > 0
    assert fit["figures"]["other_searches"]["raw"]["n"] == 6
    assert sorted(fit["request"]["test_search"]) == others
    fid = json.loads(next(res2.glob("lut_fidelity-cpu-*.json")).read_text())
    assert fid["complete"] is True and fid["measured"] == 6 and fid["chunk_seeds"] == [1000, 1001]
    assert fid["latency_model"] is not None  # the fit step stored its model in the LUT; fidelity judged it
    timer = json.loads(next(res2.glob("timer_agreement-cpu-*.json")).read_text())
    assert timer["ops_measured"] == 2 and timer["complete"] is True
    assert read_lut(out2 / lut_name).meta.get("latency_models")  # the model travels back with the LUT

    # searches on this device, priced by that LUT (raw, then by its model), judged by a second fit
    out3 = tmp_path / "out3"
    r3 = _run(out3, tmp_path / "work2", STEPS="searches fit", STANDIN="cpu", LUT=str(out2 / lut_name),
              BUDGET_S="2000")
    log3 = r3.stdout + r3.stderr
    assert r3.returncode == 0, log3
    _rows_ok(out3, ["searches", "fit"], "-", log3)
    made = sorted(p.parent.name for p in (res2 / "searches").glob("*/genotype.json"))
    assert made == ["model-b5-s0", "raw-b0.5-s0"], log3
    fit3 = json.loads((res2 / "fit-cpu.json").read_text())
    judged = fit3["request"]["test_search"]
    assert sorted(Path(f).parent.name for f in judged) == made
    # each search's derived architecture and two draws from its α
    assert fit3["figures"]["other_searches"]["raw"]["n"] == 2 * 3


@pytest.mark.slow  # ~25 s on 2 cores: the steps in no call (lut2, throughput, backends)
def test_the_extra_steps_run_with_the_cpu_standing_in(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    r = _run(out, work, STEPS="lut lut2 throughput backends", STANDIN="cpu", BUDGET_S="2000")
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    _rows_ok(out, ["lut", "lut2", "throughput", "backends"], "-", log)
    res = work / "results"
    assert json.loads((res / "repeat-cpu.json").read_text())
    assert next(res.glob("search_throughput-cpu-*.json")) and next(res.glob("backends-cpu-*.json"))
