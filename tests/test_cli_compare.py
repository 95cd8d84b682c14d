"""``latbench compare-lut`` / ``merge-lut`` end to end: real processes, real files, real exit codes.

The main test builds two real CPU LUTs (LGCNet space, 1 thread vs 2 threads, tiny resolution and
a short protocol) and checks the command's JSON against figures computed here independently from
the Parquet files with pyarrow/pandas/numpy/scipy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

from lut_factory import make_lut, write

CELL = {"conv_3x3": 10.0, "skip": 1.0, "max_pool_3x3": 3.0, "zero": 0.0}


def latbench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "latbench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


# ---- two real CPU LUTs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_luts(tmp_path_factory):
    d = tmp_path_factory.mktemp("cpu_luts")
    paths = []
    for t in (1, 2):
        out = d / f"cpu-t{t}.parquet"
        r = latbench("build-lut", "--gpu", f"cpu-t{t}", "--device", "cpu", "--threads", t, "--resolution", "17x33",
                     "--space-opt", "init_channels=4", "--max-time", "0.2", "--min-time", "0.01", "--warmup",
                     "0.005", "--max-noise", "0.05", "--no-progress", "--output", out)
        assert r.returncode == 0, r.stderr[-2000:]
        paths.append(out)
    return paths


def _read(path: Path) -> tuple[pd.DataFrame, dict]:
    t = pq.read_table(path)
    return t.to_pandas(), json.loads(t.schema.metadata[b"latbench"])


def _independent(pa_path: Path, pb_path: Path, tie_rel: float) -> dict:
    a, meta_a = _read(pa_path)
    b, meta_b = _read(pb_path)
    on = ["position", "op", "key", "height", "width"]
    m = a.merge(b, on=on, suffixes=("_a", "_b"))
    ok = m[(m.status_a == "ok") & (m.status_b == "ok") & (m.median_us_a > 0) & (m.median_us_b > 0)].copy()
    ok["lr"] = np.log(ok.median_us_b / ok.median_us_a)
    out = {"matched": len(m), "compared": len(ok), "geomean": float(np.exp(ok.lr.mean())),
           "stage": {s: float(np.exp(g.lr.mean())) for s, g in ok.groupby("stage_a")},
           "op": {o: float(np.exp(g.lr.mean())) for o, g in ok.groupby("op")},
           "rho": stats.spearmanr(ok.median_us_a, ok.median_us_b).statistic,
           "tau": stats.kendalltau(ok.median_us_a, ok.median_us_b).statistic,
           "threads": (meta_a["device"]["threads"], meta_b["device"]["threads"])}
    # cheapest-op flips: near-cheapest timed ops share nothing
    flips = 0
    positions = 0
    taus = []
    cand = m[(m.kind_a == "candidate") & m.status_a.isin(["ok", "analytic"]) & m.status_b.isin(["ok", "analytic"])]
    for _, g in cand.groupby(["position", "height", "width"]):
        timed = g[(g.status_a == "ok") & (g.status_b == "ok")]
        if len(g) < 2 or timed.empty:
            continue
        positions += 1
        sets = []
        for s in ("a", "b"):
            v = timed[f"median_us_{s}"]
            sets.append(set(timed.op[(v - v.min()) <= tie_rel * v]))
        flips += not (sets[0] & sets[1])
        if len(timed) >= 2:
            t = stats.kendalltau(timed.median_us_a, timed.median_us_b).statistic
            if np.isfinite(t):
                taus.append(t)
    out.update(positions=positions, cheapest_flips=flips, median_tau=float(np.median(taus)))
    return out


def test_compare_two_real_cpu_luts_matches_independent_figures(cpu_luts, tmp_path):
    t1, t2 = cpu_luts
    md, png = tmp_path / "r.md", tmp_path / "r.png"
    r = latbench("compare-lut", t1, t2, "--json", "--report", md, "--plot", png)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    ref = _independent(t1, t2, tie_rel=0.02)
    p = got["pairs"][0]
    assert (got["baseline"], p["other"]) == ("cpu-t1", "cpu-t2")
    assert ref["matched"] > 500 and p["matching"]["matched"] == ref["matched"]
    assert p["matching"]["compared"] == ref["compared"]
    assert p["matching"]["only_baseline"] == p["matching"]["only_other"] == 0
    assert p["overall"]["geomean_ratio"] == pytest.approx(ref["geomean"], rel=1e-9)
    assert p["overall"]["speedup"] == pytest.approx(1 / ref["geomean"], rel=1e-9)
    assert {g["group"]: g["geomean_ratio"] for g in p["by_stage"]} == pytest.approx(ref["stage"], rel=1e-9)
    assert set(ref["stage"]) == {"s4", "s8", "s16", "fusion", "mscell", "fixed"}
    assert {g["group"]: g["geomean_ratio"] for g in p["by_op"]} == pytest.approx(ref["op"], rel=1e-9)
    assert p["rank"]["entries"]["spearman_rho"] == pytest.approx(ref["rho"], rel=1e-9)
    assert p["rank"]["entries"]["kendall_tau"] == pytest.approx(ref["tau"], rel=1e-9)
    assert p["rank"]["per_position_summary"]["median"] == pytest.approx(ref["median_tau"], rel=1e-9)
    assert p["decision_flips"]["positions"] == ref["positions"]
    assert p["decision_flips"]["cheapest_flips"] == ref["cheapest_flips"]
    prov = {row["field"]: row for row in got["provenance"]}
    assert prov["device.threads"]["values"] == list(ref["threads"]) == [1, 2]
    assert prov["device.threads"]["differs"] is True
    # The report says the same numbers; the PNG is a real image.
    text = md.read_text()
    assert f"{p['overall']['speedup']:.3g}×" in text and "Decision flips" in text and "✱ device.threads" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.name in text
    import matplotlib.image as mpimg

    h, w = mpimg.imread(png).shape[:2]
    assert h > 400 and w > 1000


def test_merge_two_real_luts_is_refused_for_different_threads(cpu_luts, tmp_path):
    r = latbench("merge-lut", tmp_path / "m.parquet", *cpu_luts)
    assert r.returncode == 2 and "protocol differs" in r.stderr and "Traceback" not in r.stderr
    r = latbench("merge-lut", tmp_path / "m.parquet", *cpu_luts, "--force", "--json")
    assert r.returncode == 0, r.stderr
    # The thread count is in the protocol, not in the row id: forcing keeps one row per entry.
    d = json.loads(r.stdout)
    n = pq.read_metadata(cpu_luts[0]).num_rows
    assert d["duplicates_dropped"] == n and d["rows_out"] == n and d["forced"] is True


# ---- bad input -------------------------------------------------------------------------------
@pytest.fixture
def ab(tmp_path):
    a = write(make_lut({"cell0.e0": CELL, "fixed.stem": {"stem": 40.0}}, name="a"), tmp_path / "a.parquet")
    b = write(make_lut({"cell0.e0": {**CELL, "conv_3x3": 0.5}, "fixed.stem": {"stem": 20.0}}, name="b",
                       threads=2), tmp_path / "b.parquet")
    return a, b


def _one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_inputs_one_line_exit_2(ab, tmp_path):
    a, b = ab
    _one_line_error(latbench("compare-lut", a), "at least two")
    _one_line_error(latbench("compare-lut", a, tmp_path / "missing.parquet"), "does not exist")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all" * 10)
    _one_line_error(latbench("compare-lut", a, junk), "not a readable Parquet")
    # unknown schema version: rewrite b's metadata with pyarrow
    t = pq.read_table(b)
    meta = json.loads(t.schema.metadata[b"latbench"])
    meta["schema_version"] = 99
    future = tmp_path / "future.parquet"
    pq.write_table(t.replace_schema_metadata({b"latbench": json.dumps(meta).encode()}), future)
    _one_line_error(latbench("compare-lut", a, future), "schema version 99")
    far = write(make_lut({"cell0.e0": CELL}, name="far", resolutions=((64, 128),)), tmp_path / "far.parquet")
    _one_line_error(latbench("compare-lut", a, far), "share no entry")
    _one_line_error(latbench("compare-lut", a, b, "--baseline", "nope"), "--baseline")
    _one_line_error(latbench("merge-lut", tmp_path / "m.parquet", a), "at least two")
    _one_line_error(latbench("merge-lut", tmp_path / "m.parquet", a, junk), "not a readable Parquet")


def test_compare_terminal_and_baseline(ab):
    a, b = ab
    r = latbench("compare-lut", a, b, "--baseline", "b")
    assert r.returncode == 0, r.stderr
    assert "a vs baseline b" in r.stdout and "Decision flips" in r.stdout
    assert "cell0.e0" in r.stdout  # the flipped position is listed
    r = latbench("compare-lut", a, b, "--json", "--tie-rel", "0")
    d = json.loads(r.stdout)
    f = d["pairs"][0]["decision_flips"]
    assert f["cheapest_flips"] == 1 and f["decisions"][0]["cheapest_other"] == "conv_3x3"
    assert d["options"]["tie_rel"] == 0.0


def test_merge_cli_pieces(tmp_path):
    a = write(make_lut({"cell0.e0": CELL}, resolutions=((32, 64),)), tmp_path / "a.parquet")
    b = write(make_lut({"cell0.e0": CELL}, resolutions=((32, 64), (64, 128))), tmp_path / "b.parquet")
    out = tmp_path / "m.parquet"
    r = latbench("merge-lut", out, a, b)
    assert r.returncode == 0, r.stderr
    assert "8 rows" in r.stdout and "4 duplicate row(s) dropped" in r.stdout
    meta = json.loads(pq.read_table(out).schema.metadata[b"latbench"])
    assert meta["resolutions"] == ["32x64", "64x128"] and len(meta["merged"]["sources"]) == 2


def test_merge_refuses_an_output_being_built(tmp_path):
    a = write(make_lut({"cell0.e0": CELL}, resolutions=((32, 64),)), tmp_path / "a.parquet")
    b = write(make_lut({"cell0.e0": CELL}, resolutions=((64, 128),)), tmp_path / "b.parquet")
    out = tmp_path / "m.parquet"
    lock = Path(str(out) + ".lock")
    lock.write_text(json.dumps({"pid": os.getppid(), "host": __import__("socket").gethostname(), "since": 0}))
    _one_line_error(latbench("merge-lut", out, a, b), "already writing")
    assert not out.exists()
