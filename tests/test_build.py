"""The LUT build engine on the toy space: dedup, analytic entries, failures, resume after SIGKILL,
locking and refusal to mix configurations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from latbench.build.builder import build_lut, journal_path, lock_path
from latbench.errors import UserError
from latbench.files import read_journal
from latbench.lut.table import ROW_ID, read_lut
from latbench.timing import TimingConfig

from toy_space import ToySpace

RES = [(16, 32), (32, 32)]
TESTS_DIR = Path(__file__).resolve().parent


def _build(space, out, config, **kw):
    kw.setdefault("progress", False)
    return build_lut(space, kw.pop("resolutions", RES), "cpu", config, out, "cpu", **kw)


def test_build_dedups_and_stores_analytic_entries(tmp_path, toy_space, fast_config):
    timed = []
    lut = _build(toy_space, tmp_path / "t.parquet", fast_config, on_timed=lambda k, m: timed.append(k))
    df = lut.df
    expected_rows = sum(len(toy_space.enumerate(h, w)) for h, w in RES)
    assert len(df) == expected_rows
    assert not df.duplicated(subset=list(ROW_ID)).any()
    timed_rows = df[df.status != "analytic"]
    # the three cell positions share one timing per op and resolution
    assert timed_rows.key.nunique() < len(timed_rows)
    assert len(timed) == len(set(timed)) == timed_rows.key.nunique()
    zero = df[df.op == "zero"]
    assert (zero.status == "analytic").all() and (zero.median_us == 0).all()
    assert not any(k.startswith("zero|") for k in timed)
    # rows sharing a key share the measurement
    conv = df[(df.op == "conv_3x3") & (df.height == 16)]
    assert conv.median_us.nunique() == 1 and conv.measured_at.nunique() == 1
    assert (df[df.status == "ok"].median_us > 0).all()
    assert lut.meta["complete"] is True and lut.meta["space"]["name"] == "toy"
    assert lut.meta["device"]["type"] == "cpu" and lut.meta["protocol"] == fast_config.to_dict()
    # finished build leaves neither journal nor lock
    assert not journal_path(tmp_path / "t.parquet").exists()
    assert not lock_path(tmp_path / "t.parquet").exists()
    assert len(read_lut(tmp_path / "t.parquet")) == expected_rows


def test_failed_entries_are_recorded_and_the_build_goes_on(tmp_path, fast_config):
    space = ToySpace(extra_ops=("fail_op",))
    warnings = []
    lut = _build(space, tmp_path / "f.parquet", fast_config, warn=warnings.append)
    failed = lut.df[lut.df.status == "failed"]
    assert set(failed.op) == {"fail_op"}
    assert failed.error.str.contains("this op always fails").all()
    assert (lut.df[lut.df.op == "conv_3x3"].status == "ok").all()
    assert any("fail_op" in w for w in warnings)
    # a rerun does not retry failures unless asked
    timed = []
    _build(space, tmp_path / "f.parquet", fast_config, on_timed=lambda k, m: timed.append(k))
    assert timed == []
    _build(space, tmp_path / "f.parquet", fast_config, retry_failed=True, on_timed=lambda k, m: timed.append(k))
    assert timed and all(k.startswith("fail_op|") for k in timed)


def test_rerun_of_complete_build_times_nothing_and_adds_resolutions(tmp_path, toy_space, fast_config):
    out = tmp_path / "r.parquet"
    first = _build(toy_space, out, fast_config, resolutions=[(16, 32)])
    timed = []
    lut = _build(toy_space, out, fast_config, resolutions=[(16, 32), (32, 32)], on_timed=lambda k, m: timed.append(k))
    assert timed and not set(timed) & set(first.df.key)
    assert lut.resolutions() == [(16, 32), (32, 32)]
    old = first.df.set_index(["position", "op"])["measured_at"]
    new = lut.df[lut.df.height == 16].set_index(["position", "op"])["measured_at"]
    assert old.equals(new.loc[old.index])
    # a later build of only the second resolution keeps the first one's rows
    lut3 = _build(toy_space, out, fast_config, resolutions=[(32, 32)])
    assert lut3.resolutions() == [(16, 32), (32, 32)] and len(lut3) == len(lut)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from latbench.build.builder import build_lut
    from latbench.timing import TimingConfig
    from toy_space import ToySpace
    cfg = TimingConfig(**{config})
    n = []
    def on_timed(key, m):
        n.append(key)
        if len(n) == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
    build_lut(ToySpace(), {res}, "cpu", cfg, sys.argv[1], "cpu", progress=False, checkpoint_s={ckpt}, on_timed=on_timed)
""")


@pytest.mark.parametrize("checkpoint_s", [0.0, 1e9])
def test_resume_after_sigkill_times_only_what_is_missing(tmp_path, fast_config, checkpoint_s):
    out = tmp_path / "k.parquet"
    script = KILL_SCRIPT.format(config=fast_config.to_dict(), kill_after=5, res=RES, ckpt=checkpoint_s)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # the kill left the journal (5 finished timings) and a stale lock of a dead pid
    jp = journal_path(out)
    journaled = {r["key"]: r["measured_at"] for r in read_journal(jp) if r.get("type") == "timing"}
    assert len(journaled) == 5
    assert lock_path(out).exists()
    if checkpoint_s == 0.0:  # checkpoints were written: the partial LUT is readable and marked incomplete
        partial = read_lut(out)
        assert partial.meta["complete"] is False and 0 < len(partial)
    else:
        assert not out.exists()

    timed, warnings = [], []
    lut = build_lut(ToySpace(), RES, "cpu", fast_config, out, "cpu", progress=False,
                    on_timed=lambda k, m: timed.append(k), warn=warnings.append)
    assert any("stale lock" in w for w in warnings)
    assert not set(timed) & set(journaled), "finished entries were re-timed"
    all_keys = set(lut.df[lut.df.status != "analytic"].key)
    assert set(timed) | set(journaled) == all_keys
    assert not lut.df.duplicated(subset=list(ROW_ID)).any()
    assert len(lut) == sum(len(ToySpace().enumerate(h, w)) for h, w in RES)
    for key, when in journaled.items():  # the first run's timings kept, with their timestamps
        assert set(lut.df[lut.df.key == key].measured_at) == {when}
    assert not jp.exists() and not lock_path(out).exists()


def test_torn_journal_line_is_ignored(tmp_path, toy_space, fast_config):
    out = tmp_path / "j.parquet"
    lut = _build(toy_space, out, fast_config)
    key = lut.df[lut.df.status == "ok"].key.iloc[0]
    out.unlink()
    jp = journal_path(out)
    from latbench.build.rows import compat

    header = {"type": "header", "compat": compat(lut.meta)}
    rec = {"type": "timing", "key": key, "fields": {"median_us": 1.5, "status": "ok", "samples": 3},
           "measured_at": "2000-01-01T00:00:00+00:00"}
    jp.write_text(json.dumps(header) + "\n" + json.dumps(rec) + "\n" + '{"type": "timing", "key": "sk')
    timed = []
    lut2 = _build(toy_space, out, fast_config, on_timed=lambda k, m: timed.append(k))
    assert key not in timed
    assert set(lut2.df[lut2.df.key == key].median_us) == {1.5}
    assert not lut2.df.duplicated(subset=list(ROW_ID)).any()


def test_second_concurrent_build_is_refused(tmp_path, toy_space, fast_config):
    out = tmp_path / "l.parquet"
    lp = lock_path(out)
    # a live process (this one's parent) holds the lock
    lp.write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "since": 0}))
    with pytest.raises(UserError, match="already writing"):
        _build(toy_space, out, fast_config)
    assert lp.exists() and not out.exists()


@pytest.mark.parametrize("change,what", [
    (dict(space=ToySpace(channels=8)), "space"),
    (dict(precision="fp16"), "precision"),
    (dict(batch=2), "batch"),
    (dict(config=TimingConfig(warmup_s=0.0, max_time_s=0.03, threads=1)), "protocol"),
])
def test_resume_into_a_different_configuration_is_refused(tmp_path, toy_space, fast_config, change, what):
    out = tmp_path / "c.parquet"
    _build(toy_space, out, fast_config, resolutions=[(16, 32)])
    space = change.pop("space", toy_space)
    config = change.pop("config", fast_config)
    with pytest.raises(UserError, match=f"different {what}.*new --output"):
        _build(space, out, config, resolutions=[(16, 32)], **change)
    assert not lock_path(out).exists()


def test_unfinished_journal_of_another_configuration_is_refused(tmp_path, fast_config):
    out = tmp_path / "u.parquet"
    journal_path(out).write_text(json.dumps({"type": "header", "compat": {"name": "cpu", "space": {"x": 1}}}) + "\n")
    with pytest.raises(UserError, match="unfinished build journal.*different"):
        _build(ToySpace(), out, fast_config)


def test_lgcnet_space_builds_a_complete_deduplicated_lut(tmp_path, fast_config):
    """Integration with the real LGCNet space (nas), through the registered entry point."""
    pytest.importorskip("nas.space")
    from latbench.space import load_space

    space = load_space("lgcnet")
    lut = build_lut(space, [(65, 129)], "cpu", fast_config, tmp_path / "lg.parquet", "cpu", progress=False)
    df = lut.df
    cells = df[df.position.str.match(r"^cell\d+\.e\d+$")][["position", "op"]].drop_duplicates()
    assert len(cells) == 14 * 5 * 8
    assert (df[df.position.str.startswith("fusion.e")].kind == "candidate").all()
    assert (df.kind == "fixed").sum() > 0
    cov = lut.coverage(space, 65, 129)
    assert cov.complete, (cov.missing[:5], cov.failed[:5])
    c = lut.counts()
    assert c["distinct_timings"] < c["rows"] - c["analytic"]
    assert c["failed"] == 0
