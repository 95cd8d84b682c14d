"""``latbench build-lut`` / ``latbench show`` end to end, and every bad input -> exit 2, one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from latbench.cli import cli
from latbench.commands.build import parse_space_opts
from latbench.errors import UserError

TOY = "toy_space:ToySpace"
FAST = ["--warmup", "0", "--min-time", "0", "--max-time", "0.02", "--max-noise", "0.5", "--threads", "1"]
TESTS_DIR = Path(__file__).resolve().parent


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def build_args(out, *extra):
    return ["build-lut", "--gpu", "cpu", "--device", "cpu", "--space", TOY, "--resolution", "16x32",
            "--output", str(out), "--no-progress", *FAST, *extra]


def test_build_then_show(tmp_path):
    out = tmp_path / "toy.parquet"
    r = run(build_args(out, "--resolution", "32x32", "--json"))
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["rows"] == 30 and summary["distinct_timings"] < summary["rows"] - summary["analytic"]
    assert summary["resolutions"] == ["16x32", "32x32"]
    r = run(["show", str(out), "--json", "--top", "3", "--space", TOY])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["name"] == "cpu" and rep["backend"] == "cpu" and rep["complete"] is True
    assert len(rep["slowest"]) == 3
    assert rep["slowest"][0]["median_us"] >= rep["slowest"][-1]["median_us"]
    assert rep["missing"]["16x32"]["missing"] == [] and rep["missing"]["16x32"]["present"] == 15
    assert {(c["kind"], c["stage"]) for c in rep["coverage"]} == {("candidate", "s2"), ("fixed", "fixed")}
    r = run(["show", str(out)])
    assert r.exit_code == 0 and "slowest" in r.output and "coverage" in r.output


def test_gpu_name_mismatch_is_refused_unless_forced(tmp_path):
    args = build_args(tmp_path / "x.parquet")[:2] + ["h100"] + build_args(tmp_path / "x.parquet")[3:]
    r = run(args)  # like nas fps: a name that contradicts the device is a user mistake
    assert r.exit_code == 2 and "--gpu 'h100' does not describe the device" in r.output and "--force" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x.parquet").exists()
    r = run(args + ["--force"])
    assert r.exit_code == 0, r.output
    assert "warning: --gpu 'h100' does not match" in r.stderr and (tmp_path / "x.parquet").exists()


def test_space_opts_are_parsed_as_json(tmp_path):
    assert parse_space_opts(("init_channels=16", "fusion_inputs=[0,7,13]", "mode=fast", "x=")) == \
        {"init_channels": 16, "fusion_inputs": [0, 7, 13], "mode": "fast", "x": ""}
    with pytest.raises(UserError):
        parse_space_opts(("novalue",))
    out = tmp_path / "c8.parquet"
    assert run(build_args(out, "--space-opt", "channels=2")).exit_code == 0
    from latbench.lut.table import read_lut

    assert read_lut(out).meta["space"]["config"]["channels"] == 2


def _bad_inputs(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    good = tmp_path / "good.parquet"
    assert run(build_args(good)).exit_code == 0
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    cases = {
        "malformed resolution": build_args(tmp_path / "a.parquet", "--resolution", "769by1537"),
        "unknown backend": build_args(tmp_path / "a.parquet", "--backend", "warp-drive"),
        "backend/device mismatch": build_args(tmp_path / "a.parquet", "--backend", "cudagraph"),
        "unwritable output": build_args(ro / "sub" / "a.parquet"),
        "output is a directory": build_args(tmp_path),
        "output under a regular file": build_args(good / "sub" / "a.parquet"),
        "different space configuration": build_args(good, "--space-opt", "channels=8"),
        "different protocol": build_args(good, "--max-time", "0.05"),
        "corrupt existing LUT": build_args(corrupt),
        "unknown space": build_args(tmp_path / "a.parquet")[:6] + ["nosuch"] + build_args(tmp_path / "a.parquet")[7:],
        "bad space option": build_args(tmp_path / "a.parquet", "--space-opt", "colour=3"),
        "malformed space option": build_args(tmp_path / "a.parquet", "--space-opt", "novalue"),
        "show corrupt LUT": ["show", str(corrupt)],
        "show missing LUT": ["show", str(tmp_path / "none.parquet")],
    }
    if not torch.cuda.is_available():
        cases["cuda without a GPU"] = ["build-lut", "--gpu", "h100", "--device", "cuda", "--space", TOY,
                                       "--output", str(tmp_path / "a.parquet")]
    return cases


@pytest.fixture
def bad_cases(tmp_path):
    cases = _bad_inputs(tmp_path)
    yield cases
    (tmp_path / "ro").chmod(0o700)


def test_each_bad_input_exits_2_with_one_line_and_no_traceback(bad_cases):
    for what, args in bad_cases.items():
        if what == "unwritable output" and os.geteuid() == 0:
            continue  # root ignores permissions
        r = CliRunner().invoke(cli, args)
        out = (r.stdout or "") + (r.stderr or "")
        lines = [l for l in r.stderr.splitlines() if not l.startswith("warning:")]
        assert r.exit_code == 2, f"{what}: exit {r.exit_code}: {out} {r.exception!r}"
        assert "Traceback" not in out, what
        assert len(lines) == 1 and lines[0].startswith("Error: "), f"{what}: {out!r}"


def test_real_process_bad_input_has_no_traceback(tmp_path):
    """The installed console script itself: exit status 2 and one line on stderr."""
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "latbench.cli", "build-lut", "--gpu", "cpu", "--device", "cpu",
                        "--space", TOY, "--resolution", "12x", "--output", str(tmp_path / "a.parquet")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "malformed resolution" in p.stderr
    assert "Traceback" not in p.stderr


def test_gpu_label_matching_accepts_variants_but_not_other_devices():
    from latbench.device import name_matches

    h100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    cpu = {"type": "cpu", "name": "AMD EPYC 7B13"}
    assert name_matches("h100", h100) and name_matches("h100-fp16", h100)
    assert not name_matches("a100", h100) and not name_matches("titan-xp", h100)
    assert name_matches("cpu", cpu) and name_matches("cpu-ort", cpu) and name_matches("epyc", cpu)
    assert not name_matches("h100", cpu) and not name_matches("h100-cpu", cpu)
