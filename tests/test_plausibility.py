"""Timings a LUT must not trust (DESIGN §5.11): the load around each timing is recorded; a timing
far outside what the machine can do for the op's work, distinct ops collapsing on one value, or a
timing whose thread waited for its core is re-timed and, if that persists, flagged; fit / search /
validate-lut refuse flagged rows with one line; old LUTs without the new columns still read and
price as before.

The physical checks run on fake backends with known costs (a fake probe: 100 GFLOP/s, 10 GB/s,
2 µs per call), with the contention thresholds out of the way so that the shared test machine's
load cannot change the outcome; contention itself is tested for real, with a busy process pinned
to this process's core."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from torch import nn

from latbench.build.builder import build_lut, journal_path
from latbench.cli import cli
from latbench.errors import UserError
from latbench.lut.table import COLUMNS, LUT, read_lut, to_table, write_lut
from latbench.timing import TimingConfig
from latbench.timing.plausibility import (FLAG_COLUMN, LOAD_COLUMNS, LoadRecord, LoadSnapshot, LoadWatch, OpCost,
                                          PlausibilityConfig, Throughput, collapsed, default_cpu_threads,
                                          flagged_rows, judge, op_cost, refuse_flagged, sample_load)

from lut_factory import make_lut
from toy_space import ToySpace
from fakes import FakePrepared

REPO = Path(__file__).resolve().parents[1]
PROTO = TimingConfig(warmup_s=0.0, min_samples=3, min_time_s=0.0, max_time_s=0.01, threads=1)
RES = [(16, 32)]
# the fake machine the fake backend's probe sees
PEAK_FLOPS, PEAK_BYTES, CALL_US = 1e11, 1e10, 2.0
FAKE_TP = Throughput(flops_per_s=PEAK_FLOPS, bytes_per_s=PEAK_BYTES, call_us=CALL_US, threads=1)
# physical checks only: the shared machine's load must not decide these tests
NO_LOAD = dict(max_wait=1e9, max_steal=1e9)


# ---- a fake backend: the probe modules run at FAKE_TP, ops at a cost the test chooses ---------
class FakeBackend:
    """``cost(key_op, module, n_prepared) -> µs``: ``key_op`` the toy op name (from the module),
    ``n_prepared`` how many times that op and shape were prepared before (0 on the first timing)."""

    name = "fake-plaus"
    device = "cpu"
    precision = "fp32"
    threads = 1

    def __init__(self, cost) -> None:
        self.cost = cost
        self.prepared: dict[tuple, int] = {}

    def prepare(self, module, inputs, config):
        shape = tuple(inputs[0].shape)
        if isinstance(module, nn.Linear):  # the FLOP/s probe: 2 n^3 FLOPs at PEAK_FLOPS
            return FakePrepared(2 * module.in_features ** 3 / PEAK_FLOPS * 1e6)
        if type(module).__name__ == "AddOne":  # the bytes/s probe: read + write
            return FakePrepared(2 * inputs[0].numel() * 4 / PEAK_BYTES * 1e6)
        if isinstance(module, nn.ReLU):  # the per-call floor
            return FakePrepared(CALL_US)
        ident = (_op(module), shape)
        n = self.prepared.get(ident, 0)
        self.prepared[ident] = n + 1
        return FakePrepared(self.cost(_op(module), module, shape, n))

    def describe(self):
        return {"backend": self.name}


def _op(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return "stem" if m.stride == (2, 2) else ("conv_3x3" if m.kernel_size == (3, 3) else "head")
    if isinstance(m, nn.MaxPool2d):
        return "max_pool_3x3"
    return type(m).__name__.lower()


def bound_us(space, op: str, shape) -> float:
    """The fake machine's bound for the toy op ``op`` on an input of ``shape``."""
    spec = next(e.spec for e in space.enumerate(*_res_of(shape)) if e.op == op)
    return op_cost(space.build_op(spec), spec.inputs).bound_us(FAKE_TP)


def _res_of(shape) -> tuple[int, int]:
    h, w = shape[-2:]
    return (h, w) if len(shape) == 4 and shape[1] == 3 else (2 * h, 2 * w)


def honest(op, module, shape, n):
    """A plausible timing: twice the bound."""
    return 2 * bound_us(ToySpace(), op, shape) if op in ("stem", "conv_3x3", "head", "max_pool_3x3") else 3.0


def _build(tmp_path, backend, checks, name="p.parquet", **kw):
    return build_lut(ToySpace(), kw.pop("resolutions", RES), backend, PROTO, tmp_path / name, "cpu-fake",
                     progress=False, checks=checks, warn=kw.pop("warn", lambda m: None), **kw)


def _flags(lut) -> dict[str, str]:
    rows = lut.df.drop_duplicates(subset=["key"])
    return {str(o): str(f) for o, f in zip(rows["op"], rows[FLAG_COLUMN]) if isinstance(f, str) and f}


# ---- the physical checks ---------------------------------------------------------------------
def test_op_cost_counts_flops_bytes_and_kernels_without_computing():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    c = op_cost(conv, [(1, 8, 10, 20)])
    assert c.flops == pytest.approx(2 * 8 * 16 * 9 * 10 * 20)
    assert c.bytes == pytest.approx(4 * (8 * 200 + 16 * 200 + 16 * 8 * 9 + 16))
    assert c.kernels >= 1
    assert op_cost(nn.Identity(), [(1, 4, 8, 8)]).flops == 0
    assert op_cost(nn.Conv2d(8, 8, 3), [(1, 8, 10, 20)], precision="fp16").bytes < c.bytes


def test_a_timing_far_above_the_machines_bound_is_retimed_then_flagged(tmp_path):
    slow = lambda op, m, shape, n: 400 * bound_us(ToySpace(), op, shape) if op == "conv_3x3" else \
        honest(op, m, shape, n)  # noqa: E731
    backend = FakeBackend(slow)
    warnings: list[str] = []
    lut = _build(tmp_path, backend, PlausibilityConfig(**NO_LOAD), warn=warnings.append)
    flags = _flags(lut)
    assert set(flags) == {"conv_3x3"} and flags["conv_3x3"].startswith("too slow: ")
    assert "400x this machine's bound" in flags["conv_3x3"]
    assert backend.prepared[("conv_3x3", (1, 4, 8, 16))] == 2  # timed, re-timed once, then flagged
    assert all(n == 1 for (op, _), n in backend.prepared.items() if op != "conv_3x3")
    assert any("conv_3x3" in w and "flagged" in w for w in warnings)
    on_disk = read_lut(tmp_path / "p.parquet")
    assert len(flagged_rows(on_disk)) == 3  # the three cell positions share the timing
    meta = on_disk.meta["plausibility"]
    assert meta["throughput"]["flops_per_s"] == pytest.approx(PEAK_FLOPS, rel=1e-6)
    assert meta["throughput"]["call_us"] == pytest.approx(CALL_US) and meta["flagged"] == 1
    # the load was recorded for every timed row, nothing for analytic ones
    timed = on_disk.df[on_disk.df.status == "ok"]
    assert timed["run_queue"].notna().all() and (timed["run_queue"] >= 1).all()
    assert on_disk.df[on_disk.df.status == "analytic"]["load_1m"].isna().all()


def test_a_timing_faster_than_the_machines_peak_is_flagged(tmp_path):
    fast = lambda op, m, shape, n: 0.001 if op == "head" else honest(op, m, shape, n)  # noqa: E731
    backend = FakeBackend(fast)
    flags = _flags(_build(tmp_path, backend, PlausibilityConfig(**NO_LOAD)))
    assert set(flags) == {"head"} and flags["head"].startswith("too fast: ")
    assert backend.prepared[("head", (1, 4, 8, 16))] == 2


def test_a_suspicious_timing_that_retimes_clean_is_kept_unflagged(tmp_path):
    # slow on the first timing only (a passing disturbance): the re-time replaces it
    once = lambda op, m, shape, n: 500 * bound_us(ToySpace(), op, shape) if (op == "stem" and n == 0) else \
        honest(op, m, shape, n)  # noqa: E731
    backend = FakeBackend(once)
    lut = _build(tmp_path, backend, PlausibilityConfig(**NO_LOAD))
    assert _flags(lut) == {}
    stem = lut.df[lut.df.op == "stem"]
    assert stem.median_us.iloc[0] == pytest.approx(2 * bound_us(ToySpace(), "stem", (1, 3, 16, 32)), rel=1e-6)
    assert backend.prepared[("stem", (1, 3, 16, 32))] == 2
    # no checks: nothing re-timed, nothing flagged, no load recorded (the library's default)
    backend2 = FakeBackend(once)
    lut2 = _build(tmp_path, backend2, None, name="q.parquet")
    assert _flags(lut2) == {} and backend2.prepared[("stem", (1, 3, 16, 32))] == 1
    assert lut2.df["load_1m"].isna().all() and "plausibility" not in lut2.meta


def test_distinct_ops_collapsing_on_one_value_are_retimed_then_flagged(tmp_path):
    same = lambda op, m, shape, n: 40_000.0 if op != "add" else 3.0  # noqa: E731
    backend = FakeBackend(same)
    res = [(16, 32), (64, 128), (128, 256)]
    cfg = PlausibilityConfig(too_slow=1e9, **NO_LOAD)  # the collapse alone
    lut = _build(tmp_path, backend, cfg, resolutions=res)
    flags = _flags(lut)
    assert set(flags) == {"stem", "conv_3x3", "max_pool_3x3", "head"}
    assert all(f.startswith("collapsed: 12 distinct ops") for f in flags.values())
    assert all(n == 2 for (op, _), n in backend.prepared.items() if op != "add")
    # the same ops timed in proportion to their work: nothing collapses
    lut = _build(tmp_path, FakeBackend(honest), cfg, name="honest.parquet", resolutions=res)
    assert _flags(lut) == {}


def test_collapse_needs_many_ops_of_different_work_far_above_their_bound():
    costs = {f"sep_conv_3x3|k{i}": OpCost(flops=1e6 * (i + 1), bytes=1e5 * (i + 1), kernels=8) for i in range(6)}
    cfg = PlausibilityConfig()
    values = {k: 39_900.0 + 20 * i for i, k in enumerate(costs)}  # 39.9-40.0 ms, as seen under contention
    assert set(collapsed(values, costs, FAKE_TP, cfg)) == set(costs)
    assert collapsed(dict(list(values.items())[:4]), costs, FAKE_TP, cfg) == {}  # too few
    same_work = {k: OpCost(1e6, 1e5, 8) for k in costs}
    assert collapsed(values, same_work, FAKE_TP, cfg) == {}  # the same work may well take the same time
    floor = {k: CALL_US * 1.001 ** i for i, k in enumerate(costs)}  # tiny ops all at the per-call floor
    assert collapsed(floor, costs, FAKE_TP, cfg) == {}
    spread = {k: 100.0 * 1.5 ** i for i, k in enumerate(costs)}
    assert collapsed(spread, costs, FAKE_TP, cfg) == {}
    # dispatch-bound small convolutions (CI's 33x65 stand-in LUT, 2026-12-04: sep/dil_sep convs on 8-16
    # channels, 3 kernels, 2.3-3.2 µs of roofline, all at 78.6-79.3 µs): ~8x their bound, rightly equal
    small = {f"dil_sep_conv_3x3|c{i}": OpCost(flops=2e5 * (1 + i / 5), bytes=1e3, kernels=3) for i in range(6)}
    dispatch = {k: 78.6 + 0.05 * i for i, k in enumerate(small)}
    assert collapsed(dispatch, small, FAKE_TP, cfg) == {}
    assert set(collapsed({k: 100 * v for k, v in dispatch.items()}, small, FAKE_TP, cfg)) == set(small)


def test_judge_leaves_plausible_timings_alone_and_skips_what_it_cannot_know():
    cfg = PlausibilityConfig()
    c = OpCost(flops=1.7e6, bytes=8e4, kernels=10)  # a 48-channel separable conv at 9x17
    assert judge(94.0, c, FAKE_TP, None, 1, 2, cfg) == []
    assert judge(39_900.0, c, FAKE_TP, None, 1, 2, cfg)[0].startswith("too slow")
    assert judge(39_900.0, None, FAKE_TP, None, 1, 2, cfg) == []  # no cost: no physical check
    assert judge(39_900.0, c, Throughput(error="probe failed"), None, 1, 2, cfg) == []
    assert judge(1.0, OpCost(0.0, 100.0, 1), FAKE_TP, None, 1, 2, cfg) == []  # a copy has no FLOPs to beat


# ---- load --------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
def test_the_load_sampler_returns_sane_values_on_this_machine():
    s = sample_load()
    assert s.load_1m is not None and s.load_1m >= 0
    assert s.procs_running is not None and s.procs_running >= 1  # this process is running
    assert s.jiffies_total > 0 and 0 <= s.jiffies_steal <= s.jiffies_total
    assert s.competing is not None and s.competing >= 0
    assert s.wait_ns is not None and s.wait_ns >= 0
    w = LoadWatch(threads=1)
    with w:
        sum(i * i for i in range(200_000))
    r = w.record
    assert r.run_queue >= 1 and 0 <= r.steal <= 1 and r.runq_wait >= 0 and r.competing >= 0
    assert set(r.fields()) == set(LOAD_COLUMNS)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not Path("/proc/self/schedstat").exists(),
                    reason="needs Linux affinity and schedstat")
def test_a_busy_process_on_the_timing_core_is_seen_as_contention():
    cpu = min(os.sched_getaffinity(0))
    old = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        os.sched_setaffinity(0, {cpu})
        import time

        time.sleep(0.2)  # the hog is running on our only core
        w = LoadWatch(threads=1)
        with w:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.3:
                pass
        r = w.record
    finally:
        os.sched_setaffinity(0, old)
        hog.kill()
        hog.wait()
    assert r.runq_wait > 0.2  # the core is shared with a busy loop: about half the time waiting
    why = r.contention(threads=1, cores=1, config=PlausibilityConfig())
    assert why and why.startswith("contended: the 1 timing thread(s) waited for a CPU")
    # what is stored reads back
    assert LoadRecord.from_fields(r.fields()) == r


def test_contention_rules():
    cfg = PlausibilityConfig()
    assert LoadRecord(runq_wait=0.01, steal=0.0, competing=1).contention(1, 2, cfg) is None
    assert "waited for a CPU 30%" in LoadRecord(runq_wait=0.3, competing=3).contention(1, 2, cfg)
    assert "stole 20%" in LoadRecord(runq_wait=0.0, steal=0.2).contention(1, 2, cfg)
    # without schedstat, other runnable tasks beyond the spare cores
    assert LoadRecord(competing=1).contention(1, 2, cfg) is None
    assert "2 other runnable" in LoadRecord(competing=2).contention(1, 2, cfg)
    # build-lut --accept-load: the load is recorded, contention never flagged
    accepting = PlausibilityConfig(accept_load=True)
    assert LoadRecord(runq_wait=0.3, steal=0.2, competing=3).contention(1, 2, accepting) is None
    # the steal and wait over a timing, from two snapshots
    a = LoadSnapshot(at=0.0, procs_running=2, jiffies_total=1000, jiffies_steal=10, competing=3, wait_ns=0)
    b = LoadSnapshot(at=1.0, procs_running=5, jiffies_total=1200, jiffies_steal=30, competing=1, wait_ns=250_000_000)
    r = LoadRecord.between(a, b, threads=1)
    assert r.steal == pytest.approx(0.1) and r.runq_wait == pytest.approx(0.25)
    assert r.run_queue == 5 and r.competing == 1


def test_default_cpu_threads_leave_headroom():
    assert [default_cpu_threads(n) for n in (1, 2, 3, 4, 16)] == [1, 1, 2, 3, 15]


# ---- refusal and the old format ----------------------------------------------------------------
def _flagged_lut(tmp_path):
    """A real toy LUT of this machine (the cpu backend, no checks) whose conv_3x3 rows are flagged."""
    fast = TimingConfig(warmup_s=0.0, min_samples=3, min_time_s=0.0, max_time_s=0.01, max_noise=0.5,
                        target_sample_s=1e-4, threads=1)
    path = tmp_path / "flagged.parquet"
    lut = build_lut(ToySpace(), RES, "cpu", fast, path, "cpu", progress=False)
    df = lut.df.copy()
    df[FLAG_COLUMN] = df[FLAG_COLUMN].astype(object)
    df.loc[df.op == "conv_3x3", FLAG_COLUMN] = "too slow: 40000.0 µs is 579x this machine's bound"
    write_lut(LUT(df, lut.meta), path)
    return path


def test_a_lut_with_flagged_rows_is_refused_with_one_line(tmp_path):
    path = _flagged_lut(tmp_path)
    lut = read_lut(path)
    with pytest.raises(UserError) as e:
        refuse_flagged(lut, str(path), height=16, width=32, batch=1, use="a fit")
    msg = str(e.value.message)
    assert "\n" not in msg and "1 flagged timing(s) that a fit needs" in msg and "too slow" in msg
    assert "--retry-flagged" in msg and f"latbench show {path}" in msg
    refuse_flagged(lut, str(path), height=8, width=8)  # another resolution: nothing flagged there
    # latbench fit and validate-lut say it in one line, exit 2, no traceback, before any measurement
    for cmd in (["fit", str(path), "--space", "toy_space:ToySpace", "--no-progress"],
                ["validate-lut", str(path), "--space", "toy_space:ToySpace", "--no-progress"]):
        r = CliRunner().invoke(cli, cmd)
        assert r.exit_code == 2, r.output
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert lines[-1].startswith("Error: ") and "flagged timing(s)" in lines[-1], r.output
        assert "Traceback" not in r.output


def test_the_search_refuses_a_lut_with_flagged_rows(tmp_path):
    from nas.search.config import LUTConfig
    from nas.search.latency import load_latency_table
    from search_support import RESOLUTION, build_tiny_lut, tiny_space

    path = build_tiny_lut(tmp_path / "tiny.parquet")
    lut = read_lut(path)
    load_latency_table(LUTConfig(path=str(path), resolution=RESOLUTION), tiny_space())  # unflagged: fine
    df = lut.df.copy()
    df[FLAG_COLUMN] = df[FLAG_COLUMN].astype(object)
    i = df.index[df.status == "ok"][0]
    df.loc[i, FLAG_COLUMN] = "contended: the 2 timing thread(s) waited for a CPU 40% of the timing"
    write_lut(LUT(df, lut.meta), path)
    with pytest.raises(UserError, match=r"flagged timing\(s\) that the search needs .*contended.*--retry-flagged"):
        load_latency_table(LUTConfig(path=str(path), resolution=RESOLUTION), tiny_space())


def test_an_old_lut_without_the_new_columns_reads_and_prices_as_before(tmp_path):
    lut = make_lut({"cell0.e0": {"conv_3x3": 10.0, "skip": 1.0, "zero": 0.0}, "fixed.stem": {"stem": 5.0}})
    table = to_table(lut)
    old = table.drop_columns([c for c in (*LOAD_COLUMNS, FLAG_COLUMN) if c in table.column_names])
    pq.write_table(old, tmp_path / "old.parquet")
    assert not set(LOAD_COLUMNS) & set(pq.read_schema(tmp_path / "old.parquet").names)
    back = read_lut(tmp_path / "old.parquet")
    assert back.lookup("cell0.e0", "conv_3x3", 32, 64) == 10.0 and back.lookup("fixed.stem", "stem", 32, 64) == 5.0
    assert flagged_rows(back).empty
    refuse_flagged(back, "old.parquet", height=32, width=64)  # nothing to refuse
    write_lut(back, tmp_path / "again.parquet")  # written back with the optional columns, empty
    again = read_lut(tmp_path / "again.parquet")
    assert set(LOAD_COLUMNS) | {FLAG_COLUMN} <= set(again.df.columns) and again.df[FLAG_COLUMN].isna().all()
    assert again.lookup("cell0.e0", "conv_3x3", 32, 64) == 10.0
    assert all(c in COLUMNS for c in LOAD_COLUMNS)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "luts").glob("*.parquet")))
def test_the_committed_luts_read_and_have_nothing_flagged(name):
    lut = read_lut(REPO / "luts" / name)
    assert flagged_rows(lut).empty
    refuse_flagged(lut, name)


# ---- resume and --retry-flagged ----------------------------------------------------------------
def test_flags_survive_a_resume_and_retry_flagged_retimes_only_them(tmp_path):
    state = {"slow": True}
    cost = lambda op, m, shape, n: 400 * bound_us(ToySpace(), op, shape) if (op == "max_pool_3x3" and state["slow"]) \
        else honest(op, m, shape, n)  # noqa: E731
    cfg = PlausibilityConfig(**NO_LOAD)
    lut = _build(tmp_path, FakeBackend(cost), cfg)
    assert set(_flags(lut)) == {"max_pool_3x3"}
    # a plain rerun keeps the flag (and times nothing)
    b = FakeBackend(cost)
    lut = _build(tmp_path, b, cfg, resolutions=[(16, 32)])
    assert set(_flags(lut)) == {"max_pool_3x3"} and b.prepared == {}
    # --retry-flagged on a machine where the op now times as it should: only it is timed again
    state["slow"] = False
    b = FakeBackend(cost)
    lut = _build(tmp_path, b, cfg, retry_flagged=True)
    assert _flags(lut) == {} and set(b.prepared) == {("max_pool_3x3", (1, 4, 8, 16))}
    assert not journal_path(tmp_path / "p.parquet").exists()
    assert lut.df[lut.df.op == "max_pool_3x3"]["run_queue"].notna().all()


def test_cli_build_defaults_to_a_thread_count_with_headroom_and_lists_flags_in_show(tmp_path):
    out = tmp_path / "cli.parquet"
    r = CliRunner().invoke(cli, ["build-lut", "--gpu", "cpu", "--device", "cpu", "--space", "toy_space:ToySpace",
                                 "--resolution", "8x8", "--warmup", "0", "--min-time", "0", "--max-time", "0.01",
                                 "--max-noise", "0.5", "--canary-every", "0", "--no-progress", "--output", str(out),
                                 "--json"])
    assert r.exit_code == 0, r.output
    lut = read_lut(out)
    assert lut.meta["protocol"]["threads"] == default_cpu_threads()
    assert lut.meta["plausibility"]["throughput"]["flops_per_s"] > 0  # probed with the build's backend
    assert lut.df[lut.df.status == "ok"]["run_queue"].notna().all()
    # show lists flagged entries (text and JSON)
    path = _flagged_lut(tmp_path)
    r = CliRunner().invoke(cli, ["show", str(path)])
    assert r.exit_code == 0 and "flagged" in r.output and "too slow" in r.output
    r = CliRunner().invoke(cli, ["show", str(path), "--json"])
    import json

    rep = json.loads(r.output)
    assert [f["key"] for f in rep["flagged"]] == [read_lut(path).df.query("op == 'conv_3x3'").key.iloc[0]]
    assert rep["flagged"][0]["flag"].startswith("too slow") and rep["flagged"][0]["load_1m"] is None


@pytest.mark.gpu
def test_a_gpu_build_probes_the_gpu_and_finds_honest_timings_plausible(tmp_path):
    """On a real GPU: the probe runs through the build's backend (CUDA-graph replays) and measures
    GPU-class throughput; real timings of real ops are neither too slow, too fast nor collapsed."""
    cfg = TimingConfig(warmup_s=0.05, min_time_s=0.05, max_time_s=0.3)
    lut = build_lut(ToySpace(channels=32), [(256, 512), (512, 1024)], "cudagraph", cfg, tmp_path / "g.parquet", "gpu",
                    device="cuda:0", progress=False, checks=PlausibilityConfig())
    tp = lut.meta["plausibility"]["throughput"]
    assert tp["error"] is None and tp["flops_per_s"] > 1e12 and tp["bytes_per_s"] > 1e11 and tp["call_us"] > 0
    assert lut.meta["plausibility"]["threads"] == 1  # the host thread
    physical = [f for f in lut.df[FLAG_COLUMN] if isinstance(f, str) and f and not f.startswith("contended")]
    assert physical == []
    assert lut.df[lut.df.status == "ok"]["runq_wait"].notna().all()
