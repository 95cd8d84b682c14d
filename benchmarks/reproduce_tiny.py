"""docs/reproduce.md end to end in the tests' tiny mode, with N runs per table row, and the
``nas report`` it ends with, kept under benchmarks/results/.

A functional demonstration on synthetic data: every command of the page runs (tests/test_docs_run.py's
tiny mode: data trees in the official layouts at 33x65 / 49x65, one epoch of two images, timing cut
to milliseconds, the CPU) and ``nas report`` gathers the repeated runs into mean ± std. The mIoU of
a network trained one step on two synthetic images and the latencies of a LUT timed for
milliseconds per op on a shared machine are not results about LGCNet; the file says so.

    python benchmarks/reproduce_tiny.py --runs 2 --out benchmarks/results/reproduce-tiny-synthetic-DATE
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2, help="runs per repeated table row (the paper: 5 or 3)")
    ap.add_argument("--out", required=True, help="output prefix: writes PREFIX.md, PREFIX.json, PREFIX-groups.png")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()

    import test_docs_run as docs  # the tiny mode and the bash <-> click dispatcher of the docs test
    from data_trees import make_camvid_tree, make_cityscapes_coarse, make_cityscapes_tree
    from imagenet_tree import make_imagenet_tree

    out = Path(args.out).resolve()  # before the chdir into the work folder
    work = Path(args.work or tempfile.mkdtemp(prefix="reproduce-tiny-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cs = make_cityscapes_tree(work / "data" / "cityscapes", n_train=2, n_val=2, n_test=2, size=(33, 65))
    make_cityscapes_coarse(cs, n=2, size=(33, 65))
    make_camvid_tree(work / "data" / "camvid", n_train=2, n_val=2, n_test=2, size=(49, 65))
    make_imagenet_tree(work / "data" / "imagenet", classes=2, n_train=4, n_val=2)
    (work / "luts").mkdir(exist_ok=True)
    os.chdir(work)
    script = "\n".join(docs.shell_blocks((REPO / "docs" / "reproduce.md").read_text(encoding="utf-8")))
    script, n = re.subn(r"\brepeat [35] ", f"repeat {args.runs} ", script)
    assert n > 0
    load0 = os.getloadavg()
    t0 = time.time()
    rc, log, calls = docs.run_docs_script(script, work, docs._env())
    elapsed = time.time() - t0
    load1 = os.getloadavg()
    if rc != 0 or any(c.exit_code for c in calls):
        print(docs._failure(rc, log, calls), file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tables = (work / "tables.md").read_text()
    evals = [json.loads(f.read_text()) for f in sorted((work / "reports" / "miou").glob("*.json"))]
    distinct = len({e["genotype"]["sha"] for e in evals})
    shutil.copyfile(work / "groups.png", f"{out}-groups.png")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = f"""# docs/reproduce.md in tiny mode — SYNTHETIC data, a functional demonstration

**Not results about LGCNet.** Every command of docs/reproduce.md ran, in order ({len(calls)} commands,
{elapsed / 60:.1f} min, {date}), in tests/test_docs_run.py's tiny mode: data trees in the official
Cityscapes / CamVid / ImageNet layouts with 2 synthetic images per split at 33×65 (CamVid 49×65) for
the paper's 769×1537 (720×960), one epoch, batch 2, {args.runs} runs (seeds 0..{args.runs - 1}) where the paper
repeats 5 or 3, two random architectures where Table VII samples ten, on the CPU with timing cut to
milliseconds per op (build-lut --accept-load: rows timed under load are kept). The mIoU
is that of networks trained one step on two synthetic images; the latencies and FPS were measured on
a shared 2-core VM **under load from other jobs** (load average {load0[0]:.1f} at the start,
{load1[0]:.1f} at the end) and are no timing claim. What the file shows: the page runs as written, and
`nas report` turns its runs into per-network rows and per-configuration mean ± std (n runs).

One search epoch of one step barely moves α from its seeded initialisation, so the {len(evals)} evaluated
runs are only {distinct} distinct networks: most configurations derive the same network per seed, and
their rows repeat the same figures (a network has one latency; runs of it keep their own names).

Command: `python benchmarks/reproduce_tiny.py --runs {args.runs} --out {args.out}`; then `nas report --out
tables.md --plot fps_miou.png --group-plot groups.png` (the page's last block) wrote what follows.

"""
    Path(f"{out}.md").write_text(head + tables)
    from nas.report import build_rows, load_fps_records, load_miou_records
    from nas.report_groups import build_groups

    miou = load_miou_records(work / "reports")
    groups = build_groups(build_rows(load_fps_records(work / "reports"), miou), miou)
    head_json = json.dumps({
        "what": "docs/reproduce.md in tiny mode on synthetic data (functional demonstration, not a result)",
        "date": date, "runs": args.runs, "elapsed_s": round(elapsed, 1), "loadavg_start": load0, "loadavg_end": load1,
        "evaluated_runs": len(evals), "distinct_networks": distinct,
        "groups": [g.to_dict() for g in groups]}, indent=1)
    commands = ",\n".join("  " + json.dumps({"argv": c.argv, "ran_as": c.tiny, "exit_code": c.exit_code,
                                              "seconds": round(c.seconds, 2)}) for c in calls)
    Path(f"{out}.json").write_text(head_json[:-2] + ',\n "commands": [\n' + commands + "\n ]\n}\n")
    print(f"wrote {out}.md, {out}.json, {out}-groups.png")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
