"""nas pretrain's --workers default follows the machine: never more data-loading processes than the
cores this process may use (shared among torchrun's processes), at most 8."""

from __future__ import annotations

import os

from nas.pretrain.config import MAX_DEFAULT_WORKERS, default_workers


def test_default_workers_follow_the_cores():
    assert default_workers(cpus=2, local_processes=1) == 2          # the 2-core machine: not 8
    assert default_workers(cpus=64, local_processes=1) == MAX_DEFAULT_WORKERS == 8
    assert default_workers(cpus=16, local_processes=8) == 2         # 8 GPUs share 16 cores
    assert default_workers(cpus=1, local_processes=2) == 0          # fewer cores than processes: load in-process


def test_default_workers_read_this_process(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == min(8, cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_workers() == min(8, cores // 2)


def test_help_names_the_default():
    from click.testing import CliRunner

    from nas.cli import cli

    r = CliRunner().invoke(cli, ["pretrain", "--help"])
    assert r.exit_code == 0 and "the CPU cores this process may use" in " ".join(r.output.split())
