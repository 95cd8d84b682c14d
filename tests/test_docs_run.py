"""The documentation runs as written: every shell block of ``docs/reproduce.md`` (in order) and of the
README's worked session, executed by bash in a tiny mode; a flag, a path or an order that is wrong
in the docs fails here.

How: bash runs the blocks unchanged (their functions, loops, variables and globs included) with
``nas`` and ``latbench`` defined as shell functions that hand each command line to this test
process, which runs it through the real click commands (in-process, so the ~3 s import of torch is
paid once) and hands back the exit status; ``set -e`` stops the script at the first failure, and
every exit status is asserted besides.

The tiny mode is explicit and small (:data:`TINY`, :data:`VALUES`, :data:`SCRIPT_EDITS`): data trees
in the official Cityscapes / CamVid / ImageNet layouts, 33x65 for the paper's 769x1537 and 49x65 for
CamVid's 720x960, one epoch of two images, timing cut to milliseconds (build-lut's ``--accept-load``:
rows timed on a busy machine are kept), the CPU; ``GPU=cpu`` in the
environment (the docs read ``${GPU:-titanxp}``); one run where a table repeats five or three, but
two for Table VI a) and d) (so the run names and their grouping by ``nas report`` are exercised), two
architectures where Table VII samples ten. Every edit must apply: a doc that drifts from them fails
too. The README's session takes about a minute here; docs/reproduce.md (35 searches, each followed
by pre-training, fine-tuning, evaluation and FPS) a few minutes, so it is marked ``slow``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

#: the paper's resolutions -> tiny ones (every token equal to a key, wherever it appears)
VALUES = {"769x1537": "33x65", "720x960": "49x65"}
#: per-dataset tiny sizes (the data trees are written at these sizes)
SIZES = {"cityscapes": "33x65", "camvid": "49x65"}
_FAST_TIMING = ["--warmup", "0", "--min-time", "0", "--max-time", "0.02", "--threads", "1"]
#: options appended to each command (click keeps the last value of a repeated option)
TINY: dict[tuple[str, str], list[str]] = {
    ("latbench", "build-lut"): ["--device", "cpu", *_FAST_TIMING, "--no-progress",
                                "--force",          # the docs name GPUs (h100, a100); this CPU stands in for them
                                "--accept-load"],   # a functional test: rows timed on a busy machine are kept
    ("latbench", "validate-lut"): ["--device", "cpu", "--samples", "3", "--rounds", "2", "--window", "0.005",
                                   "--no-progress"],
    ("latbench", "fit"): ["--device", "cpu", "--fit-networks", "8", "--test-networks", "3", "--search-networks", "3",
                          "--rounds", "2", "--window", "0.005", "--no-progress"],
    ("nas", "search"): ["--epochs", "1", "--batch-size", "2", "--device", "cpu", "--workers", "0", "--no-progress",
                        "--no-plots"],
    ("nas", "pretrain"): ["--epochs", "1", "--batch-size", "2", "--crop", "32", "--device", "cpu", "--workers", "0",
                          "--quiet"],
    ("nas", "train"): ["--epochs", "1", "--batch-size", "2", "--device", "cpu", "--workers", "0", "--quiet"],
    ("nas", "eval"): ["--device", "cpu", "--workers", "0"],
    ("nas", "predict"): ["--device", "cpu"],
    ("nas", "fps"): ["--device", "cpu", "--warmup", "0", "--min-time", "0", "--max-time", "0.02", "--threads", "1"],
}
#: option values replaced in tiny mode: option -> its tiny value (whatever the docs give)
OPTION_VALUES = {
    "--backend": "cpu",      # eager, cudagraph, compile, trt: the GPU backends; the CPU times with cpu
    "-n": "2",               # nas sample: two architectures instead of ten
    "--min-fps": "1",        # Table VII (b)'s 100 FPS is a Titan Xp figure at 769x1537
}
#: edits of the docs' text before bash runs it: (pattern, replacement, how many times it must match)
SCRIPT_EDITS = [(re.compile(r"\brepeat 5 (t6[ad]) "), r"repeat 2 \1 "),   # Table VI a) and d): two runs each
                (re.compile(r"\brepeat [35] "), "repeat 1 ")]


@dataclass
class Call:
    argv: list[str]          # as the docs' bash expanded it
    tiny: list[str]          # as run
    exit_code: int
    output: str
    seconds: float = 0.0


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M)


def readme_worked_session() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## A worked session\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert m, "README.md has no '## A worked session' section"
    return shell_blocks(m.group(1))


def tiny_argv(argv: list[str]) -> list[str]:
    prog, sub, args = argv[0], argv[1], list(argv[2:])
    args = [VALUES.get(a, a) for a in args]
    for i, a in enumerate(args[:-1]):
        if a in OPTION_VALUES:
            args[i + 1] = OPTION_VALUES[a]
    extra = list(TINY.get((prog, sub), []))
    dataset = args[args.index("--dataset") + 1] if "--dataset" in args[:-1] else None
    if sub in ("train",) and dataset in SIZES:
        extra += ["--crop", SIZES[dataset], "--val-resolution", SIZES[dataset], "--base-size", SIZES[dataset]]
    if sub in ("eval",) and dataset in SIZES:
        extra += ["--resolution", SIZES[dataset]]
    if sub == "predict":
        extra += ["--resolution", SIZES["cityscapes"]]
    if sub in ("fps", "build-lut") and "--resolution" not in args:  # their default is the paper's 769x1537
        extra += ["--resolution", VALUES["769x1537"]]
    return [sub, *args, *extra]


class Dispatcher:
    """Runs the command lines bash hands over, in this process, through the real click groups."""

    def __init__(self):
        from latbench.cli import cli as latbench_cli
        from nas.cli import cli as nas_cli

        self.clis = {"nas": nas_cli, "latbench": latbench_cli}
        self.calls: list[Call] = []

    def __call__(self, argv: list[str]) -> int:
        from click.testing import CliRunner

        import time

        tiny = tiny_argv(argv)
        t0 = time.perf_counter()
        r = CliRunner().invoke(self.clis[argv[0]], tiny)
        seconds = time.perf_counter() - t0
        out = r.output
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            import traceback

            out += "".join(traceback.format_exception(type(r.exception), r.exception, r.exception.__traceback__))
        self.calls.append(Call(argv=argv, tiny=tiny, exit_code=r.exit_code, output=out, seconds=seconds))
        print(f"{seconds:7.2f} s  exit {r.exit_code}  {' '.join(argv)}", flush=True)
        return r.exit_code


def run_docs_script(script: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, list[Call]]:
    """Run ``script`` with bash in ``cwd``; ``nas`` / ``latbench`` come back here through two pipes."""
    req_r, req_w = os.pipe()     # bash -> here: argv, fields ended by \x1f, the line by \x1e
    rc_r, rc_w = os.pipe()       # here -> bash: the exit status
    prelude = (
        "set -euo pipefail\n"
        f"_docs_call() {{ printf '%s\\037' \"$@\" >&{req_w}; printf '\\036' >&{req_w}; local rc; "
        f"read -r rc <&{rc_r}; return \"$rc\"; }}\n"
        "nas() { _docs_call nas \"$@\"; }\n"
        "latbench() { _docs_call latbench \"$@\"; }\n")
    log = cwd / "bash.log"
    dispatch = Dispatcher()
    with open(log, "wb") as logf:
        proc = subprocess.Popen(["bash", "-c", prelude + script], cwd=cwd, env=env, pass_fds=(req_w, rc_r),
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    os.close(req_w)
    os.close(rc_r)
    buf = b""
    try:
        with os.fdopen(req_r, "rb", buffering=0) as req, os.fdopen(rc_w, "wb", buffering=0) as back:
            while True:
                chunk = req.read(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\x1e" in buf:
                    msg, _, buf = buf.partition(b"\x1e")
                    argv = msg.decode().split("\x1f")[:-1]
                    back.write(f"{dispatch(argv)}\n".encode())
    finally:
        rc = proc.wait(timeout=60)
    return rc, log.read_text(errors="replace"), dispatch.calls


def _failure(rc: int, log: str, calls: list[Call]) -> str:
    bad = [c for c in calls if c.exit_code != 0]
    if bad:
        c = bad[0]
        return (f"docs command failed (exit {c.exit_code}): {' '.join(c.argv)}\n"
                f"run as: {' '.join(c.tiny)}\n{c.output[-3000:]}")
    return f"bash exited {rc}:\n{log[-3000:]}"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with the data sets the docs read, in their official layouts, at tiny sizes."""
    from data_trees import make_camvid_tree, make_cityscapes_coarse, make_cityscapes_tree
    from imagenet_tree import make_imagenet_tree

    cs = make_cityscapes_tree(tmp_path / "data" / "cityscapes", n_train=2, n_val=2, n_test=2, size=(33, 65))
    make_cityscapes_coarse(cs, n=2, size=(33, 65))
    make_camvid_tree(tmp_path / "data" / "camvid", n_train=2, n_val=2, n_test=2, size=(49, 65))
    make_imagenet_tree(tmp_path / "data" / "imagenet", classes=2, n_train=4, n_val=2)
    (tmp_path / "luts").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU", "LUT"))}
    env["GPU"] = "cpu"
    return env


def test_tiny_mode_rewrites_only_what_it_says():
    assert tiny_argv(["nas", "fps", "--arch", "g.json", "--resolution", "769x1537", "--backend", "eager,trt"])[:7] == \
        ["fps", "--arch", "g.json", "--resolution", "33x65", "--backend", "cpu"]
    t = tiny_argv(["nas", "train", "--dataset", "camvid", "--data-root", "data/camvid"])
    assert t[t.index("--crop") + 1] == "49x65" and t[-1] == "49x65"
    assert tiny_argv(["nas", "report", "--out", "x.md"]) == ["report", "--out", "x.md"]


def test_readme_worked_session_runs(workdir):
    blocks = readme_worked_session()
    assert blocks, "the worked session has no bash block"
    rc, log, calls = run_docs_script("\n".join(blocks), workdir, _env())
    assert rc == 0 and all(c.exit_code == 0 for c in calls), _failure(rc, log, calls)
    ran = [" ".join(c.argv[:2]) for c in calls]
    commands = [ln.split()[:2] for b in blocks for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]
    assert ran == [" ".join(c) for c in commands]  # every line ran, once, in order
    assert (workdir / "table.md").exists() and (workdir / "h100-vs-a100.md").exists()
    from latbench.lut.table import read_lut

    assert read_lut(workdir / "luts" / "h100.parquet").meta.get("latency_models")  # fit stored its model


@pytest.mark.slow
def test_reproduce_md_runs_in_order(workdir):
    """docs/reproduce.md top to bottom: every table's commands, then nas report over all of them."""
    text = (REPO / "docs" / "reproduce.md").read_text(encoding="utf-8")
    blocks = shell_blocks(text)
    assert len(blocks) >= 10
    script = "\n".join(blocks)
    for pattern, repl in SCRIPT_EDITS:
        script, n = pattern.subn(repl, script)
        assert n > 0, f"tiny-mode edit {pattern.pattern!r} no longer matches docs/reproduce.md"
    rc, log, calls = run_docs_script(script, workdir, _env())
    assert rc == 0 and all(c.exit_code == 0 for c in calls), _failure(rc, log, calls)
    # run names: repeat's seeds are suffixes of the configuration's name, not of each other
    runs = sorted(p.name for p in (workdir / "runs").iterdir())
    assert "t6a-s0" in runs and "t6a-s1" in runs and not any("-s0-s1" in r for r in runs)
    # nas report gathers the repeated runs: Table VI a) as 2 runs with a mean ± std
    table = (workdir / "tables.md").read_text()
    rows = [ln for ln in table.split("## Repeated runs")[1].splitlines() if ln.startswith("| t6a |")]
    assert rows and rows[0].split("|")[2].strip() == "2" and " ± " in rows[0].split("|")[8]
    assert (workdir / "groups.png").read_bytes()[:4] == b"\x89PNG"
