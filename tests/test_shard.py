"""``latbench build-lut --shard``: one LUT built by several ranks (torchrun), tested with CPU ranks
over gloo as the search's DDP is; the rank checks and the CLI's refusals without a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from latbench.build.builder import build_lut, journal_path
from latbench.errors import UserError
from latbench.files import lock_path, read_journal
from latbench.lut.table import read_lut
from latbench.build.shard import check_rank_devices, deal, existing_shards, shard_path
from latbench.timing import TimingConfig

REPO = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
RES = [(16, 32), (32, 32)]
# the protocol the CLI flags below give (the in-process builds must match it to be resumed)
PROTOCOL = dict(warmup_s=0.0, min_time_s=0.0, max_time_s=0.02, max_noise=0.5, threads=1, const_inputs=True)  # build-lut's CPU defaults
CLI = ["build-lut", "--shard", "--gpu", "cpu", "--device", "cpu", "--space", "toy_space:ToySpace",
       "--resolution", "16x32", "--resolution", "32x32", "--no-progress", "--json", "--warmup", "0",
       "--min-time", "0", "--max-time", "0.02", "--max-noise", "0.5", "--threads", "1"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO), os.environ.get("PYTHONPATH", "")]))


def _torchrun(out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "latbench.cli", *CLI, "--output", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def _all_keys(space) -> set[str]:
    return {e.spec.key for h, w in RES for e in space.enumerate(h, w) if not e.analytic}


def test_two_cpu_ranks_build_one_complete_lut(tmp_path, toy_space):
    out = tmp_path / "s.parquet"
    r = _torchrun(out)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # rank 0 alone reports
    assert summary["world_size"] == 2 and summary["failed"] == 0
    lut = read_lut(out)
    assert lut.meta["complete"] is True
    assert len(lut) == sum(len(toy_space.enumerate(h, w)) for h, w in RES)
    for h, w in RES:
        assert lut.coverage(toy_space, h, w).complete
    shard = lut.meta["shard"]
    assert shard["world_size"] == 2 and [f["device"] for f in shard["ranks"]] == ["cpu", "cpu"]
    per_rank = lut.meta["build"]["per_rank"]
    assert [p["rank"] for p in per_rank] == [0, 1] and all(p["timed"] > 0 for p in per_rank)
    # every timed op key says which device timed it; the pass-through skip was not timed
    timed_keys = set(lut.df[lut.df.status == "ok"].key)
    assert timed_keys == set(shard["timed_on"]) and set(shard["timed_on"].values()) == {"cpu"}
    assert sum(p["timed"] for p in per_rank) == len(timed_keys) == len(_all_keys(toy_space) - {
        k for k in _all_keys(toy_space) if k.startswith("skip|")})
    assert (lut.df[lut.df.op == "skip"].status == "analytic").all()
    # nothing left behind
    assert existing_shards(out) == [] and not lock_path(out).exists() and not journal_path(out).exists()
    assert "CPU ranks share" in r.stderr  # said once, by rank 0


KILL = textwrap.dedent("""
    import os, signal, sys
    from latbench.build.builder import build_lut
    from latbench.timing import TimingConfig
    from toy_space import ToySpace
    n = []
    def on_timed(key, m):
        n.append(key)
        if len(n) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    build_lut(ToySpace(), {res}, "cpu", TimingConfig(**{protocol}), sys.argv[1], "cpu", progress=False,
              checkpoint_s=1e9, on_timed=on_timed, only_keys=set(sys.argv[2].split(",")))
""")


def test_an_interrupted_sharded_build_resumes_without_retiming(tmp_path, toy_space):
    out = tmp_path / "r.parquet"
    keys = sorted(k for k in _all_keys(toy_space) if not k.startswith("skip|"))
    # rank 1 of an earlier run finished three keys into its shard file ...
    done1 = build_lut(toy_space, RES, "cpu", TimingConfig(**PROTOCOL), shard_path(out, 1), "cpu", progress=False,
                      only_keys=set(keys[:3]))
    assert done1.meta["complete"] is False and done1.meta["build"]["timed"] == 3
    # ... and rank 3 of a bigger run was killed after two entries: a journal and a stale lock only
    p3 = shard_path(out, 3)
    proc = subprocess.run([sys.executable, "-c", KILL.format(res=RES, protocol=PROTOCOL), str(p3), ",".join(keys[3:7])],
                          env=_env(), capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    journaled = {r["key"]: r["measured_at"] for r in read_journal(journal_path(p3)) if r.get("type") == "timing"}
    assert len(journaled) == 2 and not p3.exists() and lock_path(p3).exists()
    assert existing_shards(out) == [shard_path(out, 1), p3]

    r = _torchrun(out)
    assert r.returncode == 0, r.stderr[-3000:]
    lut = read_lut(out)
    assert lut.meta["complete"] is True
    b = lut.meta["build"]
    assert b["reused"] == 5 and b["timed"] == len(keys) - 5  # nothing finished earlier was timed again
    earlier = {k: set(done1.df[done1.df.key == k].measured_at) for k in keys[:3]}
    earlier.update({k: {when} for k, when in journaled.items()})
    for k, when in earlier.items():
        assert set(lut.df[lut.df.key == k].measured_at) == when
    assert existing_shards(out) == [] and not lock_path(p3).exists()

    # a later run with another protocol is refused once, by rank 0, and leaves the LUT alone
    before = out.read_bytes()
    r2 = _torchrun(out, "--max-noise", "0.4")
    assert r2.returncode != 0
    errors = [ln for ln in (r2.stdout + r2.stderr).splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "protocol" in errors[0], r2.stderr[-3000:]
    assert out.read_bytes() == before and not lock_path(out).exists()


def test_rank_checks():
    h100 = {"host": "n1", "type": "cuda", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    ok = [{**h100, "device": f"cuda:{i}", "uuid": f"GPU-{i}"} for i in range(4)]
    check_rank_devices(ok)
    with pytest.raises(UserError, match="different models"):
        check_rank_devices(ok[:3] + [{**ok[3], "name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}])
    with pytest.raises(UserError, match="same GPU"):
        check_rank_devices([ok[0], {**ok[1], "uuid": "GPU-0"}])
    with pytest.raises(UserError, match="one machine"):
        check_rank_devices([ok[0], {**ok[1], "host": "n2"}])
    said = []
    cpu = {"host": "n1", "type": "cpu", "name": "AMD EPYC", "device": "cpu"}
    check_rank_devices([cpu, cpu], said.append)
    assert said and "CPU ranks" in said[0]


def test_deal_is_round_robin():
    assert deal(list("abcde"), 2) == [["a", "c", "e"], ["b", "d"]]
    assert deal(["a"], 3) == [["a"], [], []]


def test_one_process_shard_run_and_the_cli_refusals(tmp_path, monkeypatch):
    from latbench.cli import cli

    monkeypatch.syspath_prepend(str(TESTS_DIR))
    out = tmp_path / "one.parquet"
    r = CliRunner().invoke(cli, [*CLI, "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert read_lut(out).meta["shard"]["world_size"] == 1 and read_lut(out).meta["complete"] is True

    # a torchrun rank without --shard would time everything into one output: refused
    args = [a for a in CLI if a != "--shard"] + ["--output", str(tmp_path / "x.parquet")]
    r = CliRunner(env={"WORLD_SIZE": "2", "RANK": "1"}).invoke(cli, args)
    assert r.exit_code == 2 and "--shard" in r.output and len(r.output.strip().splitlines()) == 1
    # each rank takes its own GPU: a fixed cuda:N is refused
    args = list(CLI)
    args[args.index("--device") + 1] = "cuda:1"
    r = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "y.parquet")])
    assert r.exit_code == 2 and "LOCAL_RANK" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "y.parquet").exists()


@pytest.mark.gpu
def test_one_gpu_rank_records_its_gpu(tmp_path):
    out = tmp_path / "g.parquet"
    args = list(CLI)
    args[args.index("--device") + 1] = "cuda"
    args[args.index("--gpu") + 1] = "gpu"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "latbench.cli", *args, "--backend", "cudagraph", "--output", str(out)]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lut = read_lut(out)
    shard = lut.meta["shard"]
    assert shard["ranks"][0]["device"] == "cuda:0" and shard["ranks"][0]["type"] == "cuda"
    assert set(shard["timed_on"].values()) == {"cuda:0"} and shard["devices"]["cuda:0"]["name"]
    assert lut.meta["complete"] is True and lut.meta["precision_mode"]["fp32_math"] == "ieee"
