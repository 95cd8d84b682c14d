"""Input rotation benchmark: how much does timing an op on the same inputs every call understate it?

    python benchmarks/input_rotation.py LUT [--backends cpu,ort] [--sets 8] [--repeats 3]
                                        [--max-time 0.3] [--ops max_pool_3x3,...] [--out-dir benchmarks/results]
                                        [--sweep 1,2,4,8,32] [--space MODULE:CLASS]

A CPU timer that calls an op back to back on one tensor lets the core's branch predictor memorise
the op's data-dependent branches. Found on 2026-12-04: PyTorch's eager max-pool ran 270–285 µs per
call at 72×9×17 inside fit networks (``torch.profiler``) against the LUT's 112 µs, and 112 µs again
in a network whose pool read a constant tensor — so ``latbench fit`` learned a max-pool slope of
1.5 that then over-predicted that network by 10.7 %.

For every distinct op of the LUT's space at the LUT's resolution (or those named by ``--ops``) and
every backend in ``--backends``, this times the op with the timer's input rotation off (1 set) and
on (``--sets``), alternately, ``--repeats`` times each (the LUT's protocol, ``--max-time`` per
timing, one thread), and reports per op the ratio rotated / same (median over repeats, with the
range of the per-repeat ratios: the run-to-run spread). Writes
``OUT_DIR/input_rotation-<device>-<HxW>-<date>.json`` and ``.md``, with the load before and after.

``--sweep 1,2,4,8,32`` times instead each selected op with each of those numbers of rotating random
sets and once on zeros (the constant an op downstream of all-``zero`` cells reads), alternately:
``OUT_DIR/input_rotation-sweep-<device>-<HxW>-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

SHIFT = 1.10  # a median ratio at least this far from 1 counts as changed by the rotation


def _ops(setup, only: set[str] | None) -> list:
    """One entry per distinct timed op key, in enumeration order."""
    seen, out = set(), []
    for e in setup.space.enumerate(setup.height, setup.width, setup.batch):
        if e.analytic or e.spec.key in seen or (only and e.op not in only):
            continue
        seen.add(e.spec.key)
        out.append(e)
    return out


def _time(backend, space, entry, config, zeros: bool = False):
    import torch

    from latbench.build.builder import make_inputs
    from latbench.timing import measure_prepared

    module = space.build_op(entry.spec)
    if isinstance(module, torch.nn.Module):
        module.eval()
    inputs = make_inputs(entry.spec)
    if zeros:  # a constant input, as an op downstream of all-zero cells reads (one set: it never changes)
        inputs = [torch.zeros_like(t) for t in inputs]
    prepared = backend.prepare(module, inputs, config)
    try:
        return measure_prepared(prepared, config).median_us
    finally:
        prepared.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lut", type=Path, help="the LUT whose space, resolution, batch and protocol to use")
    ap.add_argument("--backends", default="cpu,ort", help="comma-separated CPU backends (default cpu,ort)")
    ap.add_argument("--sets", type=int, default=8, help="input sets when rotating (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="alternations per op and backend (default 3)")
    ap.add_argument("--max-time", type=float, default=0.3, help="sampling cap per timing, seconds (default 0.3)")
    ap.add_argument("--ops", default="", help="comma-separated op names to time (default: every op)")
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--sweep", default="", metavar="N,N,...",
                    help="instead: time each op with each of these numbers of rotating random sets and on "
                         "zeros, alternately (e.g. 1,2,4,8,32 with --ops max_pool_3x3)")
    ap.add_argument("--space", default=None, metavar="MODULE:CLASS",
                    help="load the LUT's space from here instead of its registered entry point")
    a = ap.parse_args(argv)
    if not a.lut.is_file():
        print(f"Error: no LUT at {a.lut}", file=sys.stderr)
        return 2
    if a.sets < 2 or a.repeats < 1 or not a.max_time > 0:
        print("Error: give --sets >= 2, --repeats >= 1 and --max-time > 0", file=sys.stderr)
        return 2
    from latbench.lut.table import read_lut
    from latbench.model.networks import resolve_setup
    from latbench.timing import get_backend

    lut = read_lut(a.lut)
    setup = resolve_setup(lut, None, "cpu", space_name=a.space)
    base = replace(setup.protocol, threads=1, max_time_s=a.max_time, min_time_s=min(0.1, a.max_time))
    only = {o.strip() for o in a.ops.split(",") if o.strip()} or None
    entries = _ops(setup, only)
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    if a.sweep:
        try:
            counts = [int(x) for x in a.sweep.split(",") if x.strip()]
        except ValueError:
            counts = []
        if not counts or min(counts) < 1:
            print("Error: --sweep takes positive integers, e.g. 1,2,4,8,32", file=sys.stderr)
            return 2
        return _sweep(a, setup, base, entries, backends, counts)
    rows, load_before, t0 = [], os.getloadavg(), time.time()
    for name in backends:
        backend = get_backend(name, device="cpu", precision=setup.precision, threads=1)
        for i, e in enumerate(entries):
            same, rot = [], []
            for _ in range(a.repeats):
                same.append(_time(backend, setup.space, e, replace(base, input_sets=1)))
                rot.append(_time(backend, setup.space, e, replace(base, input_sets=a.sets)))
            ratios = np.array(rot) / np.array(same)
            rows.append({"backend": name, "op": e.op, "position": e.position, "key": e.spec.key,
                         "same_us": float(np.median(same)), "rotated_us": float(np.median(rot)),
                         "ratio": float(np.median(ratios)), "ratio_min": float(ratios.min()),
                         "ratio_max": float(ratios.max())})
            print(f"[{name} {i + 1}/{len(entries)}] {e.op:24s} {e.position:14s} same {np.median(same):9.1f} µs  "
                  f"rotated {np.median(rot):9.1f} µs  ×{np.median(ratios):.3f}", flush=True)
    load_after = os.getloadavg()
    date = datetime.now(timezone.utc)
    res = f"{setup.height}x{setup.width}"
    summary = {}
    for name in backends:
        r = [x for x in rows if x["backend"] == name]
        shifted = [x for x in r if abs(np.log(x["ratio"])) >= np.log(SHIFT)]
        rest = [x["ratio"] for x in r if x not in shifted]
        summary[name] = {"ops": len(r), "shifted": [f"{x['op']}@{x['position']} ×{x['ratio']:.2f}" for x in shifted],
                         "geomean_ratio_others": float(np.exp(np.mean(np.log(rest)))) if rest else None}
    out = {"lut": str(a.lut), "date": date.isoformat(timespec="seconds"), "host": platform.node(),
           "cpu": platform.processor() or platform.machine(), "command": " ".join(["python", *sys.argv]),
           "sets": a.sets, "repeats": a.repeats, "max_time_s": a.max_time, "threads": 1,
           "loadavg_before": load_before, "loadavg_after": load_after, "elapsed_s": round(time.time() - t0, 1),
           "summary": summary, "rows": rows}
    a.out_dir.mkdir(parents=True, exist_ok=True)
    stem = a.out_dir / f"input_rotation-cpu-{res}-{date:%Y-%m-%d}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"# Input rotation on the CPU timers ({res}, {date:%Y-%m-%d %H:%M} UTC)", "",
             f"`{out['command']}` — LUT `{a.lut}`; one thread; {a.sets} rotating sets vs the same inputs, "
             f"{a.repeats} alternations per op; load {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
             f"{out['elapsed_s']:.0f} s.", "",
             "| backend | op | position | same µs | rotated µs | ratio | range |", "|---|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['backend']} | {x['op']} | {x['position']} | {x['same_us']:.1f} | {x['rotated_us']:.1f} | "
                     f"{x['ratio']:.3f} | {x['ratio_min']:.3f}–{x['ratio_max']:.3f} |")
    lines += ["", "## Summary", ""]
    for name, s in summary.items():
        g = s["geomean_ratio_others"]
        lines.append(f"- **{name}**: {len(s['shifted'])} of {s['ops']} ops moved by ≥ {SHIFT - 1:.0%}: "
                     f"{', '.join(s['shifted']) or 'none'}; the others' geometric-mean ratio "
                     f"{'n/a' if g is None else f'{g:.3f}'}.")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


def _sweep(a, setup, base, entries, backends, counts) -> int:
    """Median µs per (op, backend) for each count of rotating random sets and for zeros."""
    from latbench.timing import get_backend

    conds = [(f"random×{n}", n, False) for n in counts] + [("zeros", 1, True)]
    rows, load_before, t0 = [], os.getloadavg(), time.time()
    for name in backends:
        backend = get_backend(name, device="cpu", precision=setup.precision, threads=1)
        for e in entries:
            got: dict[str, list[float]] = {c[0]: [] for c in conds}
            for _ in range(a.repeats):
                for label, n, zeros in conds:
                    got[label].append(_time(backend, setup.space, e, replace(base, input_sets=n), zeros))
            med = {k: float(np.median(v)) for k, v in got.items()}
            rows.append({"backend": name, "op": e.op, "position": e.position, "key": e.spec.key, "median_us": med,
                         "range_us": {k: [float(min(v)), float(max(v))] for k, v in got.items()}})
            print(f"{name} {e.op} {e.position}: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
    load_after = os.getloadavg()
    date = datetime.now(timezone.utc)
    res = f"{setup.height}x{setup.width}"
    out = {"lut": str(a.lut), "date": date.isoformat(timespec="seconds"), "command": " ".join(["python", *sys.argv]),
           "repeats": a.repeats, "max_time_s": a.max_time, "threads": 1, "loadavg_before": load_before,
           "loadavg_after": load_after, "elapsed_s": round(time.time() - t0, 1), "rows": rows}
    a.out_dir.mkdir(parents=True, exist_ok=True)
    stem = a.out_dir / f"input_rotation-sweep-cpu-{res}-{date:%Y-%m-%d}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    labels = [c[0] for c in conds]
    lines = [f"# Rotating input sets and constant inputs ({res}, {date:%Y-%m-%d %H:%M} UTC)", "",
             f"`{out['command']}` — one thread; median µs of {a.repeats} alternations (min–max in the JSON); "
             f"load {load_before[0]:.2f} before, {load_after[0]:.2f} after; {out['elapsed_s']:.0f} s.", "",
             "| backend | op | position | " + " | ".join(labels) + " |", "|---|---|---|" + "---|" * len(labels)]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['op']} | {r['position']} | "
                     + " | ".join(f"{r['median_us'][k]:.1f}" for k in labels) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
