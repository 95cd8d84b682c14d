"""Every command against a table of bad inputs (issue 13): each must end with exit status 2,
exactly one ``Error:`` line, no traceback, and no input file changed (hashed before and after).

The tables are generated where they can be: mutations of a valid LUT (values, column types,
metadata), of a valid genotype (every field × values of the wrong type or range), of valid
training and search checkpoints, of valid FPS / mIoU records; every device-taking command × bad
device names; every size-taking command × bad or impossible sizes; every output option × wrong
kinds of path — and, where the machine allows mounting a tmpfs, × a read-only and a full disk.
Each base input is first shown to be accepted, so every refusal is the mutation's doing.

Everything runs in-process through click's CliRunner on tiny inputs (a 4-cell LGCNet at 33x65),
and every bad input is refused before the work it would spoil, which keeps the module fast.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from latbench.cli import cli as latbench_cli
from latbench.lut.table import META_KEY, read_lut
from nas.cli import cli as nas_cli

TESTS_DIR = Path(__file__).resolve().parent
RES = (33, 65)
RES_S = "33x65"
TINY = dict(num_cells=4, init_channels=4, reduction_cells=[1, 2], fusion_inputs=[0, 1, 3], num_classes=5)
TOY = "toy_space:ToySpace"
FAST = ["--warmup", "0", "--min-time", "0", "--max-time", "0.02"]
CLIS = {"latbench": latbench_cli, "nas": nas_cli}

# Values of every JSON kind, the raw material of the generated type mutations.
UNIVERSE: list[Any] = [None, True, False, 0, -1, 3, 2.5, math.nan, math.inf, "x", "", [], ["a", "b"], [[1]], {},
                       {"a": 1}]


def is_int(v: Any, lo: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---- running one case ----------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    prog: str
    args: list[Any]
    expect: str | None = None   # regex the Error line must match: the intended check fired


def _files_under(p: Path) -> list[Path]:
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(x for x in p.rglob("*") if x.is_file())[:200]
    return []


def _snapshot(args: list[Any]) -> dict[str, str]:
    snap = {}
    for a in args:
        s = str(a)
        if s.startswith("-") or len(s) > 4096:
            continue
        for f in _files_under(Path(s)):
            snap[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return snap


def run_case(case: Case) -> str | None:
    """None if the case behaved (exit 2, one Error line, no traceback, inputs unchanged), else what went wrong."""
    args = [str(a) for a in case.args]
    before = _snapshot(case.args)
    r = CliRunner().invoke(CLIS[case.prog], args)
    text = r.output
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    problems = []
    if r.exit_code != 2:
        problems.append(f"exit {r.exit_code}")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        problems.append(f"raised {type(r.exception).__name__}: {str(r.exception)[:200]}")
    if "Traceback" in text:
        problems.append("a traceback")
    if len(errors) != 1:
        problems.append(f"{len(errors)} Error: lines")
    elif case.expect and not re.search(case.expect, errors[0]):
        problems.append(f"the refusal is not the intended one (want /{case.expect}/)")
    if "weights_only=False" in text:
        problems.append("passes on torch's weights_only=False advice")
    if os.environ.get("BAD_INPUTS_LOG"):  # to read every refusal: BAD_INPUTS_LOG=refusals.tsv pytest ...
        with open(os.environ["BAD_INPUTS_LOG"], "a", encoding="utf-8") as fh:
            fh.write(f"{case.name}\t{r.exit_code}\t{errors[0] if errors else text[-200:]!r}\n")
    after = _snapshot(case.args)
    changed = [k for k in before if after.get(k) != before[k]]
    if changed:
        problems.append(f"changed input(s) {changed[:3]}")
    if problems:
        return f"{case.name}: {'; '.join(problems)} | {case.prog} {' '.join(args)[:300]} | output: {text[-400:]!r}"
    return None


def run_table(cases: list[Case]) -> None:
    assert cases
    failures = [f for f in (run_case(c) for c in cases) if f]
    assert not failures, f"{len(failures)} of {len(cases)} bad inputs misbehaved:\n" + "\n".join(failures[:25])


def ok(prog: str, args: list[Any]) -> None:
    """A base input must be accepted (so that refusing its mutations means something)."""
    r = CliRunner().invoke(CLIS[prog], [str(a) for a in args])
    assert r.exit_code == 0, f"base input refused: {prog} {args}: {r.output} {r.exception!r}"


# ---- the valid inputs every table mutates ------------------------------------------------------
@dataclass
class World:
    root: Path
    lut: Path
    lut2: Path
    genotype: Path
    genotype_dict: dict
    ckpt: Path
    ckpt_dict: dict
    search_ckpt: Path
    search_ckpt_dict: dict
    image: Path
    reports: Path
    fps_report: dict
    miou: dict
    plain: Path            # a regular file (where a folder is wanted, or under which one is named)
    adir: Path             # an existing folder (where a file is wanted)


def _tiny_lut(path: Path) -> Path:
    import pandas as pd

    from latbench.device import describe_device
    from latbench.lut.table import LUT
    from lut_factory import make_meta, make_row, write
    from nas.config import SpaceConfig
    from nas.space import LGCNetSpace

    space = LGCNetSpace(SpaceConfig(**TINY))
    rows = [make_row(e.position, e.op, 5.0 + (i % 37), height=RES[0], width=RES[1], key=e.spec.key, stage=e.stage,
                     kind=e.kind)
            for i, e in enumerate(space.enumerate(*RES))]
    meta = make_meta("cpu", device_name=describe_device("cpu")["name"], space=space.identity())
    return write(LUT(pd.DataFrame(rows), meta), path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from PIL import Image

    from nas.config import SpaceConfig
    from nas.genotype import Architecture, Genotype
    from nas.network import LGCNet
    from nas.search.arch_params import ArchParams
    from nas.search.config import DataConfig, LUTConfig, SearchConfig
    from nas.search.derive import CHECKPOINT_FORMAT
    from nas.search.ggm import GGM
    from nas.search.latency import load_latency_table
    from nas.space import LGCNetSpace

    import random

    root = tmp_path_factory.mktemp("world")
    lut = _tiny_lut(root / "tiny.parquet")
    lut2 = root / "tiny2.parquet"
    shutil.copy(lut, lut2)
    cfg = SpaceConfig(**TINY)
    arch = Architecture.from_dict(LGCNetSpace(cfg).sample_architecture(random.Random(0)))
    geno = Genotype(arch, cfg, {"name": "tiny"})
    gpath = geno.save(root / "genotype.json")

    labels = {"dataset": "synthetic", "class_names": [f"c{i}" for i in range(5)],
              "palette": [[40 * i, 40 * i, 40 * i] for i in range(5)], "ignore_index": 255}
    ck = {"format": "lgcnet-checkpoint", "version": 1, "genotype": geno.to_dict(), "labels": labels,
          "model": LGCNet(cfg, arch).state_dict(), "train_config": {"synthetic_size": [64, 128], "synthetic_length": 2},
          "progress": {"epoch": 1, "step_in_epoch": 0, "global_step": 1, "loss_sum": 0.0, "loss_count": 0}}
    ckpt = root / "train.pt"
    torch.save(ck, ckpt)

    scfg = SearchConfig(space=cfg, lut=LUTConfig(path=str(lut), resolution=RES),
                        data=DataConfig(dataset="synthetic", length=8), epochs=1, batch_size=4)
    table, ident = load_latency_table(scfg.lut, scfg.space)
    sck = {"format": CHECKPOINT_FORMAT, "version": 2, "config": scfg.to_dict(), "lut": ident,
           "latency": table.state_dict(), "arch": ArchParams(cfg, scfg.arch).state_dict(),
           "ggm": GGM(cfg.num_cells, cfg.num_edges(), 8, scfg.ggm).state_dict(), "epoch": 1, "global_step": 2}
    search_ckpt = root / "search" / "checkpoints" / "last.pt"
    search_ckpt.parent.mkdir(parents=True)
    torch.save(sck, search_ckpt)

    image = root / "img.png"
    Image.fromarray(np.full((24, 40, 3), 90, dtype=np.uint8)).save(image)

    rec = {"date": "2026-01-01T00:00:00+00:00", "report": "cpu",
           "genotype": {"path": str(gpath), "sha": "0123456789abcdef", "name": "tiny"},
           "network": {"width_mult": 1.0, "params": 1000, "macs": 10, "flops": 20, "config": {}},
           "resolution": RES_S, "height": RES[0], "width": RES[1], "batch": 1, "backend": "cpu",
           "precision": "fp32", "status": "ok", "error": None, "latency_ms": 1.5, "p10_ms": 1.4, "p90_ms": 1.6,
           "fps": 666.7, "host_bound": False, "enqueue_us": None, "lut": {"sum_us": 1400.0, "calibrated_us": None},
           "device": {"type": "cpu", "name": "Test CPU"}}
    fps_report = {"format": "nas-fps-report", "version": 1, "name": "cpu", "records": [rec]}
    miou = {"format": "nas-miou", "version": 1, "genotype": {"path": str(gpath), "sha": "0123456789abcdef"},
            "dataset": "synthetic", "split": "val", "resolution": RES_S, "miou": 0.5,
            "per_class": {"c0": 0.5, "c1": None}, "date": "2026-01-01T00:00:00+00:00"}
    reports = root / "reports"
    _write_reports(reports, fps_report, miou)

    plain = root / "plain.txt"
    plain.write_text("not a folder\n")
    adir = root / "adir"
    adir.mkdir()
    w = World(root, lut, lut2, gpath, geno.to_dict(), ckpt, ck, search_ckpt, sck, image, reports, fps_report, miou,
              plain, adir)

    # every base input is accepted
    ok("latbench", ["show", lut])
    ok("nas", ["derive", search_ckpt, "--out", root / "derived.json"])
    ok("nas", ["report", "--reports", reports])
    ok("nas", ["eval", "--checkpoint", ckpt, "--dataset", "synthetic", "--no-write", "--device", "cpu",
               "--workers", "0", "--json"])
    return w


def _write_reports(folder: Path, fps_report: Any, miou: Any, fps_text: str | None = None) -> Path:
    (folder / "fps").mkdir(parents=True, exist_ok=True)
    (folder / "miou").mkdir(parents=True, exist_ok=True)
    (folder / "fps" / "cpu.json").write_text(fps_text if fps_text is not None else json.dumps(fps_report))
    (folder / "miou" / "run.json").write_text(json.dumps(miou))
    return folder


def base(cmd: str, w: World, t: Path) -> tuple[str, list[Any]]:
    """A valid invocation of ``cmd`` whose outputs go under ``t``."""
    table: dict[str, tuple[str, list[Any]]] = {
        "build-lut": ("latbench", ["build-lut", "--gpu", "cpu", "--device", "cpu", "--space", TOY, "--resolution",
                                   "16x32", "--output", t / "b.parquet", "--no-progress", *FAST]),
        "show": ("latbench", ["show", w.lut]),
        "compare-lut": ("latbench", ["compare-lut", w.lut, w.lut2, "--json"]),
        "merge-lut": ("latbench", ["merge-lut", t / "m.parquet", w.lut, w.lut2]),
        "validate-lut": ("latbench", ["validate-lut", w.lut, "--samples", "3", "--no-progress"]),
        "fit": ("latbench", ["fit", w.lut, "--fit-networks", "8", "--test-networks", "0", "--rounds", "1",
                             "--window", "0.002", "--no-progress", "--plot", t / "fit.png"]),
        "search": ("nas", ["search", "--lut", w.lut, "--dataset", "synthetic", "--epochs", "1", "--batch-size", "4",
                           "--length", "8", "--out", t / "s", "--device", "cpu", "--no-progress", "--no-plots",
                           "--workers", "0"]),
        "derive": ("nas", ["derive", w.search_ckpt, "--out", t / "g.json"]),
        "sample": ("nas", ["sample", "--lut", w.lut, "-n", "1", "--out", t / "r"]),
        "fps": ("nas", ["fps", "--arch", w.genotype, "--device", "cpu", "--resolution", RES_S, "--no-save", *FAST]),
        "train": ("nas", ["train", "--arch", w.genotype, "--dataset", "synthetic", "--epochs", "1", "--batch-size", "2",
                          "--out", t / "t", "--device", "cpu", "--quiet", "--workers", "0"]),
        "eval": ("nas", ["eval", "--checkpoint", w.ckpt, "--dataset", "synthetic", "--no-write", "--device", "cpu",
                         "--workers", "0"]),
        "predict": ("nas", ["predict", "--checkpoint", w.ckpt, w.image, "--out", t / "p", "--device", "cpu"]),
        "report": ("nas", ["report", "--reports", w.reports]),
        "demo": ("nas", ["demo", "--out", t / "demo"]),
    }
    prog, args = table[cmd]
    return prog, list(args)


def with_opt(args: list[Any], opt: str, value: Any = None, drop: tuple[str, ...] = ()) -> list[Any]:
    """``args`` with ``opt`` set to ``value`` (replaced if present, appended if not; a flag when
    ``value`` is None), and the flags in ``drop`` removed."""
    out = [a for a in args if a not in drop]
    if opt in out:
        i = out.index(opt)
        if value is None:
            return out
        out[i + 1] = value
        return out
    return out + ([opt] if value is None else [opt, value])


def lut_case(cmd: str, w: World, t: Path, lut: Path, name: str, expect: str | None) -> Case:
    prog, args = base(cmd, w, t)
    if cmd in ("show", "validate-lut", "fit"):
        args[1] = lut
    elif cmd == "compare-lut":
        args[1] = lut
    elif cmd == "merge-lut":
        args[2] = lut
    else:
        args = with_opt(args, "--lut", lut)
    return Case(f"{cmd} <- {name}", prog, args, expect)


LUT_READERS = ["show", "compare-lut", "merge-lut", "validate-lut", "fit", "search", "sample", "fps"]


# ---- 1. LUTs: values, types, metadata, files -----------------------------------------------------
ROW_VALUE_MUTATIONS: dict[str, list[Any]] = {   # column -> bad values in the first ok row
    "median_us": [-1.0, math.inf, -math.inf, math.nan, None],
    "p10_us": [-2.0, math.inf],
    "p90_us": [-math.inf],
    "mean_us": [-0.5],
    "height": [0, -33, None],
    "batch": [0],
    "position": [None],
    "op": [None],
    "status": [None, "great"],
}
COLUMN_TYPE_MUTATIONS: dict[str, Callable[[Any], Any]] = {   # column -> how to store it with the wrong type
    "median_us": str, "p90_us": str, "height": str, "batch": lambda v: float(v) + 0.5, "throttled": str,
    "samples": str, "status": lambda v: 7,
}
META_MUTATIONS: list[tuple[str, Any]] = [
    ("calibration", {"a": math.nan, "b": 0.0}), ("calibration", {"a": "1.1", "b": 0.0}), ("calibration", [1.0, 0.0]),
    ("calibration", {"a": math.inf, "b": 0.0}), ("device", "cpu"), ("space", 5), ("space", {"name": 5}),
    ("batch", "1"), ("batch", 0), ("protocol", ["fast"]), ("schema_version", 2), ("schema_version", None),
]


def _write_raw(path: Path, df, meta: dict | None) -> Path:
    table = pa.Table.from_pandas(df, preserve_index=False)
    md = {META_KEY: json.dumps(meta).encode()} if meta is not None else {}
    pq.write_table(table.replace_schema_metadata(md), path)
    return path


def bad_luts(w: World, folder: Path) -> list[tuple[Path, str, str | None]]:
    """(file, what is wrong, expected refusal) — generated from the tables above."""
    folder.mkdir(parents=True, exist_ok=True)
    good = read_lut(w.lut)
    df0, meta0 = good.df, dict(good.meta)
    first_ok = int(df0.index[df0["status"] == "ok"][0])
    out = []
    n = 0

    def name() -> Path:
        nonlocal n
        n += 1
        return folder / f"bad{n:03d}.parquet"

    for col, values in ROW_VALUE_MUTATIONS.items():
        for v in values:
            df = df0.copy()
            df[col] = df[col].astype(object)
            df.at[first_ok, col] = v
            expect = f"{col}|empty|status" if col != "status" or v is None else "unknown status"
            out.append((_write_raw(name(), df, meta0), f"row {first_ok} {col}={v!r}", expect))
    for col, conv in COLUMN_TYPE_MUTATIONS.items():
        df = df0.copy()
        df[col] = [conv(v) for v in df[col]]
        out.append((_write_raw(name(), df, meta0), f"column {col} of the wrong type", f"wrong type: {col}"))
    for key, v in META_MUTATIONS:
        out.append((_write_raw(name(), df0, {**meta0, key: v}), f"metadata {key}={v!r}", key.split("_")[0]))
    out.append((_write_raw(name(), df0, None), "no latbench metadata", "not a latbench LUT"))
    raw = w.lut.read_bytes()
    for what, data in (("truncated", raw[: len(raw) // 2]), ("empty", b""), ("text", b"position,op\n")):
        p = name()
        p.write_bytes(data)
        out.append((p, f"{what} file", "not a readable Parquet"))
    out.append((folder / "absent.parquet", "missing file", "does not exist"))
    return out


def test_bad_luts_are_refused_by_every_command_that_reads_one(world, tmp_path):
    cases = []
    for path, what, expect in bad_luts(world, tmp_path / "luts"):
        for cmd in LUT_READERS:
            cases.append(lut_case(cmd, world, tmp_path / "out", path, what, expect))
    run_table(cases)


# ---- 2. genotypes: every field × values of the wrong type or range --------------------------------
CONFIG_VALID: dict[str, Callable[[Any], bool]] = {
    "num_cells": lambda v: is_int(v, 1), "steps": lambda v: is_int(v, 1), "init_channels": lambda v: is_int(v, 1),
    "fusion_channels": lambda v: is_int(v, 1), "head_channels": lambda v: is_int(v, 1),
    "num_classes": lambda v: is_int(v, 2), "width_mult": lambda v: is_num(v) and v > 0,
    "reduction_cells": lambda v: False,   # no UNIVERSE value is a valid cell list for this network
    "fusion_inputs": lambda v: False, "fusion": lambda v: False,
}
TOP_VALID: dict[str, Callable[[Any], bool]] = {
    "format": lambda v: False, "space_version": lambda v: False, "config": lambda v: False,
    "cells": lambda v: False, "fusion": lambda v: False, "meta": lambda v: v is None or isinstance(v, dict),
}


def genotype_mutations(base_dict: dict) -> list[tuple[str, dict]]:
    out = []
    for key, valid in TOP_VALID.items():
        for v in UNIVERSE:
            if not valid(v):
                d = copy.deepcopy(base_dict)
                d[key] = v
                out.append((f"{key}={v!r}", d))
    for key, valid in CONFIG_VALID.items():
        for v in UNIVERSE:
            if not valid(v):
                d = copy.deepcopy(base_dict)
                d["config"][key] = v
                out.append((f"config.{key}={v!r}", d))
    for where in ("cells[0]", "cells[0][0]", "fusion[0]"):
        for v in UNIVERSE:
            d = copy.deepcopy(base_dict)
            if where == "cells[0]":
                d["cells"][0] = v
            elif where == "cells[0][0]":
                d["cells"][0][0] = v
            else:
                d["fusion"][0] = v
            out.append((f"{where}={v!r}", d))
    for key in ("cells", "config", "format"):  # missing entirely
        d = copy.deepcopy(base_dict)
        del d[key]
        out.append((f"no {key}", d))
    d = copy.deepcopy(base_dict)
    d["config"]["unknown_option"] = 1
    out.append(("an unknown config option", d))
    return out


def _genotype_files(w: World, folder: Path) -> list[tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (what, d) in enumerate(genotype_mutations(w.genotype_dict)):
        p = folder / f"g{i:03d}.json"
        p.write_text(json.dumps(d))
        files.append((p, what))
    for what, text in (("not JSON", "{cells: 3"), ("empty", ""), ("a JSON list", "[1, 2]"), ("binary", "\x00\xff")):
        p = folder / f"raw-{len(files)}.json"
        p.write_text(text, encoding="latin-1")
        files.append((p, what))
    files.append((folder, "a directory"))
    files.append((folder / "absent.json", "a missing file"))
    return files


def test_bad_genotypes_are_refused_wherever_a_genotype_is_read(world, tmp_path):
    files = _genotype_files(world, tmp_path / "g")
    assert len(files) > 150
    t = tmp_path / "out"
    cases = []
    for i, (g, what) in enumerate(files):
        named = re.escape(g.name)  # the refusal names the genotype file
        for cmd in ("fps", "train"):
            prog, args = base(cmd, world, t)
            cases.append(Case(f"{cmd} --arch <- {what}", prog, with_opt(args, "--arch", g), named))
        if i % 6 == 0:  # a spread of them through the other readers
            prog, args = base("eval", world, t)
            cases.append(Case(f"eval --arch <- {what}", prog, with_opt(args, "--arch", g), named))
            prog, args = base("validate-lut", world, t)
            cases.append(Case(f"validate-lut --from-search <- {what}", prog, with_opt(args, "--from-search", g), named))
            prog, args = base("fit", world, t)
            cases.append(Case(f"fit --from-search <- {what}", prog, with_opt(args, "--from-search", g), named))
    run_table(cases)


# ---- 3. checkpoints --------------------------------------------------------------------------
class NeedsCode:
    """Pickled inside a checkpoint, this needs code to load: it must be refused, never run."""


def _checkpoint_files(w: World, folder: Path) -> list[tuple[Path, str, bool]]:
    """(file, what, also a bad --init): training checkpoints that nas eval / predict must refuse."""
    folder.mkdir(parents=True, exist_ok=True)
    base_ck = w.ckpt_dict
    muts: list[tuple[str, Callable[[dict], None]]] = [
        ("format", lambda d: d.update(format="x")), ("version", lambda d: d.update(version=2)),
        ("no genotype", lambda d: d.pop("genotype")), ("genotype 5", lambda d: d.update(genotype=5)),
        ("genotype cells: 3", lambda d: d["genotype"].update(cells=3)),
        ("genotype config a list", lambda d: d["genotype"].update(config=[1, 2])),
        ("genotype config a string", lambda d: d["genotype"].update(config="x")),
        ("genotype num_classes 2.5", lambda d: d["genotype"]["config"].update(num_classes=2.5)),
        ("genotype init_channels 100000", lambda d: d["genotype"]["config"].update(init_channels=100000)),
        ("no labels", lambda d: d.pop("labels")), ("labels 5", lambda d: d.update(labels=5)),
        ("palette of pairs", lambda d: d["labels"].update(palette=[[1, 2]] * 5)),
        ("class names 5", lambda d: d["labels"].update(class_names=5)),
        ("3 classes for a 5-class network", lambda d: d["labels"].update(class_names=["a", "b", "c"],
                                                                          palette=[[0, 0, 0]] * 3)),
        ("no model", lambda d: d.pop("model")), ("model 5", lambda d: d.update(model=5)),
        ("model of numbers", lambda d: d.update(model={"stem.0.weight": 3})),
        ("a tensor of the wrong shape", lambda d: d["model"].update({next(iter(d["model"])): torch.zeros(2)})),
        ("progress 5", lambda d: d.update(progress=5)),
    ]
    files = []
    for i, (what, mutate) in enumerate(muts):
        d = copy.deepcopy(base_ck)
        mutate(d)
        p = folder / f"ck{i:02d}.pt"
        torch.save(d, p)
        files.append((p, what, False))
    raw = w.ckpt.read_bytes()
    for what, data in (("truncated", raw[: len(raw) // 2]), ("empty", b""), ("text", b"101\n")):
        p = folder / f"{what}.pt"
        p.write_bytes(data)
        files.append((p, f"a {what} file", True))
    p = folder / "code.pt"
    torch.save({"format": "lgcnet-checkpoint", "x": NeedsCode()}, p)
    files.append((p, "a pickle that needs code", True))
    p = folder / "tensor.pt"
    torch.save(torch.zeros(3), p)
    files.append((p, "a bare tensor", True))
    p = folder / "nothing-matches.pt"
    torch.save({"a.weight": torch.zeros(1)}, p)
    files.append((p, "weights that match nothing", True))
    files.append((folder, "a directory", True))
    files.append((folder / "absent.pt", "a missing file", True))
    return files


def test_bad_training_checkpoints_are_refused(world, tmp_path):
    t = tmp_path / "out"
    cases = []
    for ck, what, as_init in _checkpoint_files(world, tmp_path / "ck"):
        expect = "could run code" if what == "a pickle that needs code" else None
        for cmd in ("eval", "predict"):
            prog, args = base(cmd, world, t)
            cases.append(Case(f"{cmd} --checkpoint <- {what}", prog, with_opt(args, "--checkpoint", ck), expect))
        if as_init:
            prog, args = base("train", world, t)
            cases.append(Case(f"train --init <- {what}", prog, with_opt(args, "--init", ck), expect))
    run_table(cases)


def _search_checkpoint_files(w: World, folder: Path) -> list[tuple[Path, str]]:
    base_ck = w.search_ckpt_dict
    muts: list[tuple[str, Callable[[dict], None]]] = [
        ("format", lambda d: d.update(format="x")), ("no config", lambda d: d.pop("config")),
        ("config 5", lambda d: d.update(config=5)),
        ("space.init_channels 'x'", lambda d: d["config"]["space"].update(init_channels="x")),
        ("space.cells wrong", lambda d: d["config"]["space"].update(reduction_cells=["a", "b"])),
        ("data.crop 'ab'", lambda d: d["config"]["data"].update(crop="ab")),
        ("lut 'x'", lambda d: d["config"].update(lut="x")), ("unknown config key", lambda d: d["config"].update(x=1)),
        ("no arch", lambda d: d.pop("arch")), ("arch of numbers", lambda d: d.update(arch={"a": 1})),
        ("arch of the wrong shape", lambda d: d["arch"].update({k: torch.zeros(1) for k in d["arch"]})),
        ("ggm 5", lambda d: d.update(ggm=5)), ("no latency", lambda d: d.pop("latency")),
        ("latency cell 'x'", lambda d: d["latency"].update(cell="x")),
        ("latency fixed NaN", lambda d: d["latency"].update(fixed=math.nan)),
        ("latency calibration 3 numbers", lambda d: d["latency"].update(calibration=[1.0, 2.0, 3.0])),
    ]
    files = []
    for i, (what, mutate) in enumerate(muts):
        d = copy.deepcopy(base_ck)
        mutate(d)
        p = folder / f"run{i:02d}" / "checkpoints" / "last.pt"
        p.parent.mkdir(parents=True)
        torch.save(d, p)
        files.append((p, what))
    for what, data in (("truncated", w.search_ckpt.read_bytes()[:500]), ("empty", b"")):
        p = folder / f"run-{what}" / "checkpoints" / "last.pt"
        p.parent.mkdir(parents=True)
        p.write_bytes(data)
        files.append((p, f"a {what} file"))
    return files


def test_bad_search_checkpoints_are_refused_by_derive_and_resume(world, tmp_path):
    t = tmp_path / "out"
    cases = []
    for ck, what in _search_checkpoint_files(world, tmp_path / "sck"):
        prog, args = base("derive", world, t)
        args[1] = ck
        cases.append(Case(f"derive <- {what}", prog, args))
        prog, args = base("search", world, t)
        run_dir = ck.parent.parent
        cases.append(Case(f"search --resume <- {what}", prog,
                          ["search", "--resume", "--out", run_dir, "--device", "cpu", "--no-progress", "--workers", "0"]))
    # a valid search checkpoint has no training state to resume from
    cases.append(Case("search --resume <- a checkpoint without training state", "nas",
                      ["search", "--resume", "--out", world.search_ckpt.parent.parent, "--device", "cpu", "--workers", "0"],
                      "cannot be resumed"))
    run_table(cases)


# ---- 4. reports ------------------------------------------------------------------------------
FPS_FIELD_VALID: dict[str, Callable[[Any], bool]] = {
    "genotype": lambda v: False, "backend": lambda v: isinstance(v, str), "precision": lambda v: isinstance(v, str),
    "batch": lambda v: is_int(v, 1), "resolution": lambda v: False,
    "date": lambda v: v is None or isinstance(v, str), "report": lambda v: v is None or isinstance(v, str),
    "latency_ms": lambda v: v is None or (is_num(v) and v >= 0), "fps": lambda v: v is None or (is_num(v) and v >= 0),
    "p10_ms": lambda v: v is None or (is_num(v) and v >= 0),
    "host_bound": lambda v: v is None or isinstance(v, bool),
    "device": lambda v: v is None or (isinstance(v, dict) and (v.get("name") is None or isinstance(v["name"], str))),
    "network": lambda v: v is None or (isinstance(v, dict) and all(v.get(k) is None or is_int(v[k])
                                                                  for k in ("params", "flops"))),
    "lut": lambda v: v is None or (isinstance(v, dict) and all(v.get(k) is None or is_num(v[k])
                                                              for k in ("sum_us", "calibrated_us"))),
}
MIOU_MUTATIONS: list[tuple[str, Any]] = [
    ("miou", 1.5), ("miou", -0.1), ("miou", "x"), ("miou", None), ("miou", True), ("miou", math.nan),
    ("genotype", None), ("genotype", 5), ("genotype", {"sha": 5}), ("per_class", 5), ("per_class", {"a": 2}),
    ("per_class", {"a": "x"}), ("resolution", "abc"), ("resolution", 5), ("dataset", 5), ("format", "x"),
    ("version", 2), ("date", 5),
]


def test_bad_report_records_are_refused_naming_the_record(world, tmp_path):
    cases = []
    n = 0

    def reports(fps_report: Any, miou: Any, fps_text: str | None = None) -> Path:
        nonlocal n
        n += 1
        return _write_reports(tmp_path / f"rep{n:03d}", fps_report, miou, fps_text)

    rec0 = world.fps_report["records"][0]
    for key, valid in FPS_FIELD_VALID.items():
        for v in UNIVERSE:
            if not valid(v):
                rep = copy.deepcopy(world.fps_report)
                rep["records"][0][key] = v
                cases.append(Case(f"report <- record {key}={v!r}", "nas", ["report", "--reports", reports(rep, world.miou)],
                                  "record 0"))
    for key in ("genotype", "batch", "backend"):
        rep = copy.deepcopy(world.fps_report)
        del rep["records"][0][key]
        cases.append(Case(f"report <- a record without {key}", "nas", ["report", "--reports", reports(rep, world.miou)],
                          "record 0"))
    for v in (5, "x", None, [rec0]):
        rep = copy.deepcopy(world.fps_report)
        rep["records"] = [rec0, v]
        cases.append(Case(f"report <- record {v!r}", "nas", ["report", "--reports", reports(rep, world.miou)]))
    for what, text in (("not JSON", "{"), ("another format", json.dumps({"format": "x", "records": []})),
                       ("version 2", json.dumps({**world.fps_report, "version": 2})),
                       ("records 5", json.dumps({**world.fps_report, "records": 5}))):
        cases.append(Case(f"report <- fps file {what}", "nas",
                          ["report", "--reports", reports(world.fps_report, world.miou, text)]))
    for key, v in MIOU_MUTATIONS:
        m = copy.deepcopy(world.miou)
        m[key] = v
        cases.append(Case(f"report <- mIoU {key}={v!r}", "nas", ["report", "--reports", reports(world.fps_report, m)]))
    run_table(cases)


# ---- 5. devices, sizes, options ----------------------------------------------------------------
BAD_DEVICES = ["tpu", "cuda:abc", "meta", "gpu0", "cuda:7", "cpu:x"]
DEVICE_COMMANDS = ["build-lut", "validate-lut", "fit", "fps", "search", "train", "eval", "predict", "demo"]


def test_unknown_devices_are_refused_everywhere(world, tmp_path):
    devices = BAD_DEVICES + ([] if torch.cuda.is_available() else ["cuda"])
    cases = []
    for cmd in DEVICE_COMMANDS:
        for dev in devices:
            prog, args = base(cmd, world, tmp_path / "out")
            cases.append(Case(f"{cmd} --device {dev}", prog, with_opt(args, "--device", dev),
                              "device|CUDA"))
    run_table(cases)
    assert not (tmp_path / "out" / "demo").exists()  # refused before the demo made anything


HUGE = "100000x100000"
# (command, option, the sizes it must refuse, what a refusal of HUGE must say)
SIZE_OPTIONS = [
    ("build-lut", "--resolution", ["12x", "0x0", "axb", "4x4", "-5x10", HUGE]),
    ("search", "--crop", ["12x", "4x4", "axb", HUGE]),
    ("search", "--resolution", ["12x", "4x4", "axb", "65x129"]),   # 65x129: not in the LUT
    ("fps", "--resolution", ["12x", "0x0", "axb", "4x4", HUGE]),
    ("train", "--crop", ["12x", "0x0", "axb", HUGE]),
    ("eval", "--resolution", ["12x", "0x0", HUGE]),
    ("predict", "--resolution", ["12x", "0x0", HUGE]),
    ("demo", "--resolution", ["12x", "0x0", "axb", HUGE]),
    ("validate-lut", "--resolution", ["12x", "axb", "65x129"]),
    ("fit", "--resolution", ["12x", "axb", "65x129"]),
    ("sample", "--resolution", ["12x", "65x129"]),
]


def test_sizes_that_are_malformed_or_cannot_fit_are_refused_before_any_work(world, tmp_path):
    cases = []
    for cmd, opt, sizes in SIZE_OPTIONS:
        for size in sizes:
            prog, args = base(cmd, world, tmp_path / "out")
            expect = "needs at least .* of memory" if size == HUGE else None
            cases.append(Case(f"{cmd} {opt} {size}", prog, with_opt(args, opt, size), expect))
    big = copy.deepcopy(world.genotype_dict)
    big["config"]["init_channels"] = 100000
    gbig = tmp_path / "big.json"
    gbig.write_text(json.dumps(big))
    for cmd in ("fps", "train"):
        prog, args = base(cmd, world, tmp_path / "out")
        cases.append(Case(f"{cmd} --arch <- init_channels 100000", prog, with_opt(args, "--arch", gbig),
                          "needs at least .* of memory"))
    run_table(cases)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.pt"))


def test_smaller_option_mistakes(world, tmp_path):
    t = tmp_path / "out"

    def case(cmd: str, name: str, mutate: Callable[[list[Any]], list[Any]], expect: str | None = None) -> Case:
        prog, args = base(cmd, world, t)
        return Case(f"{cmd}: {name}", prog, mutate(args), expect)

    cases = [
        case("search", "--batch-size 1 (BatchNorm)", lambda a: with_opt(a, "--batch-size", 1), "at least 2"),
        case("search", "--batch-size 0", lambda a: with_opt(a, "--batch-size", 0)),
        case("search", "--resume without a run", lambda a: with_opt(a, "--resume"), "checkpoint"),
        case("train", "--resume without a run", lambda a: with_opt(a, "--resume"), "no checkpoint at"),
        case("derive", "--out the LUT (not a genotype)", lambda a: with_opt(a, "--out", world.lut),
             "not a genotype file"),
        case("derive", "--out the checkpoint itself", lambda a: with_opt(a, "--out", world.search_ckpt),
             "not a genotype file"),
        case("demo", "--epochs 0", lambda a: with_opt(a, "--epochs", 0)),
        case("demo", "--max-time 0", lambda a: with_opt(a, "--max-time", 0)),
        case("demo", "--resolution 12x", lambda a: with_opt(a, "--resolution", "12x"), "malformed resolution"),
        case("predict", "a missing image", lambda a: [x if x != world.image else t / "none.png" for x in a],
             "does not exist"),
        case("compare-lut", "--report and --plot the same file",
             lambda a: a + ["--report", t / "x.md", "--plot", t / "x.md"], "same file"),
        case("sample", "--min-fps out of reach", lambda a: a + ["--min-fps", "1e9", "--max-draws", "50"], "FPS"),
        case("fps", "--backend ''", lambda a: with_opt(a, "--backend", ""), "empty"),
        case("fps", "--backend warp", lambda a: with_opt(a, "--backend", "warp")),
        case("build-lut", "--backend warp", lambda a: with_opt(a, "--backend", "warp"), "unknown timing backend"),
        case("report", "no FPS records", lambda a: with_opt(a, "--reports", world.adir), "no FPS records"),
    ]
    run_table(cases)


def test_a_build_where_most_entries_fail_exits_non_zero(tmp_path):
    out = tmp_path / "f.parquet"
    args = ["build-lut", "--gpu", "cpu", "--device", "cpu", "--space", "failing_space:MostlyFailingSpace",
            "--resolution", "16x32", "--output", out, "--no-progress", *FAST]
    run_table([Case("build-lut on a space whose ops mostly fail", "latbench", args, "distinct timings failed")])
    lut = read_lut(out)  # what was measured is kept, failures recorded
    assert lut.counts()["failed"] > lut.counts()["ok"] > 0


# ---- 6. outputs: wrong kinds of path, read-only and full disks ---------------------------------
# (command, option, "file" | "folder"); None: the first positional argument after the command
OUTPUTS: list[tuple[str, str | None, str]] = [
    ("build-lut", "--output", "file"), ("compare-lut", "--report", "file"), ("compare-lut", "--plot", "file"),
    ("merge-lut", None, "file"), ("validate-lut", "--plot", "file"), ("fit", "--plot", "file"),
    ("search", "--out", "folder"),
    ("derive", "--out", "file"), ("derive", "--plots", "folder"), ("sample", "--out", "folder"),
    ("fps", "--reports", "folder"), ("train", "--out", "folder"), ("eval", "--reports", "folder"),
    ("predict", "--out", "folder"), ("report", "--out", "file"), ("report", "--plot", "file"),
    ("demo", "--out", "folder"),
]


def output_case(w: World, t: Path, cmd: str, opt: str | None, path: Any, label: str, expect: str | None) -> Case:
    prog, args = base(cmd, w, t)
    if opt is None:
        args[1] = path
    else:
        args = with_opt(args, opt, path, drop=("--no-save", "--no-write"))
    return Case(f"{cmd} {opt or 'OUT'} <- {label}", prog, args, expect)


def test_outputs_of_the_wrong_kind_are_refused_up_front(world, tmp_path):
    cases = []
    for cmd, opt, kind in OUTPUTS:
        wrong = world.adir if kind == "file" else world.plain
        under = world.plain / "sub" / ("x.out" if kind == "file" else "run")
        cases.append(output_case(world, tmp_path, cmd, opt, wrong, f"an existing {'folder' if kind == 'file' else 'file'}",
                                 "director|file"))
        cases.append(output_case(world, tmp_path, cmd, opt, under, "a path under a regular file", "file"))
    run_table(cases)


def _mount(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _fill(folder: Path) -> None:
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
def disks(tmp_path, world):
    """A read-only and a full disk (real tmpfs mounts), each holding a copy of the LUT."""
    ro, full = tmp_path / "ro", tmp_path / "full"
    if not (_mount(ro, "1m") and _mount(full, "1m")):
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
        pytest.skip("needs root and mountable tmpfs for a real read-only and full disk")
    try:
        for d in (ro, full):
            shutil.copy(world.lut, d / "lut.parquet")
            (d / "adir").mkdir()
        assert subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True).returncode == 0
        _fill(full)
        yield ro, full
    finally:
        for d in (ro, full):
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_read_only_and_full_disks_are_refused_up_front(world, tmp_path, disks):
    ro, full = disks
    cases = []
    for disk, label, expect in ((ro, "a read-only disk", "not writable|read-only"), (full, "a full disk", "no space left")):
        for cmd, opt, kind in OUTPUTS:
            target = disk / ("x.out" if kind == "file" else "run")
            cases.append(output_case(world, tmp_path, cmd, opt, target, label, expect))
            if kind == "folder":  # an existing folder on that disk
                cases.append(output_case(world, tmp_path, cmd, opt, disk / "adir", f"a folder on {label}", expect))
        prog, args = base("validate-lut", world, tmp_path)
        args[1] = disk / "lut.parquet"
        cases.append(Case(f"validate-lut --save-calibration <- a LUT on {label}", prog, args + ["--save-calibration"],
                          expect))
        prog, args = base("fit", world, tmp_path)
        args[1] = disk / "lut.parquet"
        cases.append(Case(f"fit (saves into) a LUT on {label}", prog, args, expect))
    run_table(cases)


def test_a_disk_that_fills_during_a_search_is_one_line_and_keeps_the_inputs(world, tmp_path):
    """The output check passes (space is left), the first checkpoint does not fit: one line, exit 2."""
    mnt = tmp_path / "small"
    if not _mount(mnt, "768k"):
        pytest.skip("needs root and a mountable tmpfs")
    try:
        prog, args = base("search", world, tmp_path)
        run_table([Case("search whose checkpoint does not fit", prog, with_opt(args, "--out", mnt / "run"),
                        "No space left")])
        left = [p.name for p in (mnt / "run").rglob("*") if p.name.endswith(".tmp")]
        assert left == [] and not (mnt / "run" / ".search.lock").exists()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---- 7. the real console scripts -------------------------------------------------------------------
def test_real_processes_end_with_exit_2_and_one_line(world, tmp_path):
    bad = tmp_path / "inf.parquet"
    good = read_lut(world.lut)
    df = good.df.copy()
    df.loc[df.index[df["status"] == "ok"][0], "median_us"] = math.inf
    _write_raw(bad, df, dict(good.meta))
    g = tmp_path / "g.json"
    d = copy.deepcopy(world.genotype_dict)
    d["config"]["width_mult"] = math.nan
    g.write_text(json.dumps(d))
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR), OMP_NUM_THREADS="1")
    for module, args, fragment in (
            ("latbench.cli", ["show", str(bad)], "median_us must be a finite number"),
            ("nas.cli", ["sample", "--lut", str(bad), "--out", str(tmp_path / "r")], "median_us must be a finite number"),
            ("nas.cli", ["fps", "--arch", str(g), "--device", "cpu", "--no-save"], "width_mult must be a finite number")):
        p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("Error: ") and fragment in p.stderr, p.stderr
        assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "r").exists()
