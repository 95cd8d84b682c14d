"""latbench.files: output checks on real read-only / full disks, atomic writes that fail cleanly,
stale temporaries, journals cut back to whole lines, and the stale-lock takeover race."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from latbench.errors import OutputError, UserError
from latbench.files import (FileLock, Journal, atomic_write_text, check_output_dir, check_writable,
                             clean_stale_temporaries, read_journal)


# ---- real small / read-only disks (root and mount(8) needed; skipped otherwise) ------------------
def _mount_tmpfs(where: Path, size: str, ro: bool = False) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path) -> None:
    """Write zeros into ``folder`` until its disk is full (unbuffered, down to single bytes)."""
    for name, chunk in (("ballast", 1 << 16), ("ballast2", 4096), ("ballast3", 1)):
        try:
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        except OSError:
            continue
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError:
            pass
        finally:
            os.close(fd)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs holding ``keep.txt``, then filled to the last byte."""
    mnt = tmp_path / "full"
    if not _mount_tmpfs(mnt, "256k"):
        pytest.skip("needs root and a mountable tmpfs to make a real full disk")
    try:
        (mnt / "keep.txt").write_text("before\n")
        fill(mnt)
        yield mnt
    finally:
        _umount(mnt)


@pytest.fixture
def read_only_disk(tmp_path):
    """A tmpfs holding ``keep.txt``, remounted read-only (root ignores permission bits, not this)."""
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "256k"):
        pytest.skip("needs root and a mountable tmpfs to make a real read-only disk")
    try:
        (mnt / "keep.txt").write_text("before\n")
        (mnt / "sub").mkdir()
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        if r.returncode:
            pytest.skip("cannot remount the tmpfs read-only")
        yield mnt
    finally:
        _umount(mnt)


def test_output_checks_refuse_a_full_disk_up_front(full_disk):
    with pytest.raises(OutputError, match="no space left"):
        check_writable(full_disk / "out.parquet", "--output")
    with pytest.raises(OutputError, match="no space left"):
        check_output_dir(full_disk / "run", "--out")
    assert not (full_disk / "run").exists()


def test_output_checks_refuse_a_read_only_disk(read_only_disk):
    for check, target in ((check_writable, read_only_disk / "x.json"), (check_output_dir, read_only_disk / "new"),
                          (check_output_dir, read_only_disk / "sub"), (check_writable, read_only_disk / "keep.txt")):
        with pytest.raises(OutputError, match="not writable|read-only"):
            check(target, "--out")


def test_output_checks_refuse_wrong_kinds_of_path(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path, "--out")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(f / "sub" / "x.json", "--out")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(f, "--out")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(f / "deeper", "--out")
    assert check_output_dir(tmp_path / "new" / "run", "--out") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    assert f.read_text() == "x"


def test_a_write_the_disk_refuses_is_one_line_and_leaves_nothing(full_disk):
    target = full_disk / "keep.txt"
    with pytest.raises(OutputError, match=r"cannot write .*keep.txt.*No space left"):
        atomic_write_text(target, "after\n" * 100_000)
    assert target.read_text() == "before\n"  # the old file stays whole
    assert not [p for p in full_disk.iterdir() if p.name.endswith(".tmp")]


def test_a_journal_append_the_disk_refuses_is_cut_back_to_whole_lines(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "64k"):
        pytest.skip("needs root and a mountable tmpfs")
    try:
        j = Journal(mnt / "log.jsonl")
        j.append({"step": 1})
        fill(mnt)
        with pytest.raises(OutputError, match="No space left"):
            j.append({"step": 2, "pad": "x" * 20_000})
        j.close()
        raw = (mnt / "log.jsonl").read_bytes()
        assert raw.endswith(b"\n") and [r["step"] for r in read_journal(mnt / "log.jsonl")] == [1]
    finally:
        _umount(mnt)


def test_a_lock_the_disk_refuses_is_not_left_behind(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "64k"):
        pytest.skip("needs root and a mountable tmpfs")
    try:
        fill(mnt)
        # tmpfs hands out inodes but no blocks: the lock file is created, its content cannot be written
        with pytest.raises(OutputError, match="lock file"):
            FileLock(mnt / "a.parquet.lock").acquire()
        assert not (mnt / "a.parquet.lock").exists()
    finally:
        _umount(mnt)


# ---- temporaries ---------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    from latbench.files.storage import host_tag as _host_tag

    target = tmp_path / "lut.parquet"
    dead = tmp_path / f".lut.parquet.{_dead_pid()}@{_host_tag()}-abcd1234.tmp"
    live = tmp_path / f".lut.parquet.{os.getppid()}@{_host_tag()}-abcd1234.tmp"
    foreign = tmp_path / f".lut.parquet.{_dead_pid()}@zzzzzz-abcd1234.tmp"  # another host: too recent
    legacy_old = tmp_path / ".lut.parquet.k2j4h5g6.tmp"
    other_file = tmp_path / f".other.parquet.{_dead_pid()}@{_host_tag()}-abcd1234.tmp"
    for p in (dead, live, foreign, legacy_old, other_file):
        p.write_text("half a file")
    day_ago = time.time() - 2 * 86400
    os.utime(legacy_old, (day_ago, day_ago))
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert not dead.exists() and not legacy_old.exists()
    assert live.exists() and foreign.exists() and other_file.exists()
    assert clean_stale_temporaries(target) == []


def test_sigkill_during_the_final_write_leaves_a_temporary_the_rerun_removes(tmp_path):
    """A writer killed inside atomic_write (the child blocks in its writer) leaves its temporary;
    the next write of the same file removes it."""
    target = tmp_path / "out.json"
    code = ("import sys, time\nfrom latbench.files import atomic_write\n"
            "def w(tmp):\n    open(tmp, 'w').write('partial')\n    print('writing', flush=True)\n    time.sleep(60)\n"
            f"atomic_write({str(target)!r}, w)\n")
    p = subprocess.Popen([sys_executable(), "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.kill()
    p.wait()
    left = [x for x in tmp_path.iterdir() if x.name.endswith(".tmp")]
    assert len(left) == 1 and not target.exists()
    atomic_write_text(target, "whole\n")
    assert [x.name for x in tmp_path.iterdir()] == ["out.json"]


def sys_executable() -> str:
    import sys

    return sys.executable


# ---- locks ---------------------------------------------------------------------------------------
def test_an_empty_lock_file_of_a_writer_that_died_is_taken_over_after_a_while(tmp_path):
    lp = tmp_path / "x.lock"
    lp.write_text("")
    with pytest.raises(UserError, match="already writing"):  # may be being written right now
        FileLock(lp).acquire()
    old = time.time() - 60
    os.utime(lp, (old, old))
    msgs = []
    lock = FileLock(lp, on_stale=msgs.append).acquire()
    assert json.loads(lp.read_text())["pid"] == os.getpid() and "empty or unreadable" in msgs[0]
    lock.release()
    assert not lp.exists()


def test_release_never_removes_a_lock_another_process_holds(tmp_path):
    lp = tmp_path / "y.lock"
    lock = FileLock(lp).acquire()
    lp.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "since": 1.0}))
    lock.release()
    assert lp.exists()


def _contender(path: str, barrier, results, release, pause: float) -> None:
    """One of two processes racing for the same stale lock (run in a forked child)."""
    from latbench.errors import UserError as UE
    from latbench.files import FileLock as FL

    FL.takeover_pause_s = pause
    lock = FL(path, purpose="a race test")
    barrier.wait()
    try:
        lock.acquire()
    except UE as exc:
        results.put(("refused", os.getpid(), str(exc)))
        return
    results.put(("held", os.getpid(), ""))
    release.wait(30)  # hold the lock until the other contender has tried
    lock.release()


def test_two_processes_released_together_on_a_stale_lock_never_both_take_it(tmp_path):
    """100 rounds: a lock left by a dead process, two processes released at the same moment by a
    barrier; exactly one takes it over, the other is refused while it is held. Every other round
    widens the window between "the owner is dead" and the takeover (the hook that made the old
    unlink-then-create takeover let both win)."""
    ctx = multiprocessing.get_context("fork")
    dead = _dead_pid()
    host = socket.gethostname()
    for i in range(100):
        path = tmp_path / f"race{i}.lock"
        path.write_text(json.dumps({"pid": dead, "host": host, "since": 0.0}))
        barrier, release, results = ctx.Barrier(3), ctx.Event(), ctx.Queue()
        pause = 0.02 if i % 2 else 0.0
        procs = [ctx.Process(target=_contender, args=(str(path), barrier, results, release, pause)) for _ in range(2)]
        for p in procs:
            p.start()
        barrier.wait(timeout=30)
        outcomes = sorted(results.get(timeout=30) for _ in range(2))
        release.set()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        kinds = [o[0] for o in outcomes]
        assert kinds == ["held", "refused"], f"round {i}: {outcomes}"
        winner = next(o[1] for o in outcomes if o[0] == "held")
        assert f"process {winner}" in outcomes[1][2], f"round {i}: the loser must name the winner: {outcomes}"
        assert not path.exists(), f"round {i}: the winner's release left its lock"


def test_a_build_whose_disk_fills_releases_its_lock_and_keeps_whole_journal_lines(tmp_path, fast_config):
    """The disk fills after the first timing: the build ends with one OutputError, no stale lock,
    no torn journal line; once space is freed, the rerun keeps the first timing and finishes."""
    from latbench.build.builder import build_lut, journal_path
    from latbench.files import lock_path
    from toy_space import ToySpace

    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "1m"):
        pytest.skip("needs root and a mountable tmpfs")
    try:
        out = mnt / "toy.parquet"
        timed: list[str] = []

        def on_timed(key, m):
            timed.append(key)
            if len(timed) == 1:
                fill(mnt)

        with pytest.raises(OutputError, match="No space left"):
            build_lut(ToySpace(), [(16, 32)], "cpu", fast_config, out, "cpu", progress=False, on_timed=on_timed,
                      warn=lambda m: None)
        assert not lock_path(out).exists()
        raw = journal_path(out).read_bytes()
        assert raw.endswith(b"\n")
        recs = list(read_journal(journal_path(out)))
        journaled = [r["key"] for r in recs if r.get("type") == "timing"]
        # whole lines only (the last page of the journal may still take a few after the disk filled)
        assert len(raw.splitlines()) == len(recs) and journaled and journaled == timed[:len(journaled)]
        for p in mnt.glob("ballast*"):
            p.unlink()
        again: list[str] = []
        lut = build_lut(ToySpace(), [(16, 32)], "cpu", fast_config, out, "cpu", progress=False,
                        on_timed=lambda k, m: again.append(k), warn=lambda m: None)
        assert not set(journaled) & set(again) and lut.meta["complete"] and not journal_path(out).exists()
        assert not [p for p in mnt.iterdir() if p.name.endswith(".tmp")]
    finally:
        _umount(mnt)
