#!/usr/bin/env python
"""Whole-network latency of sampled LGCNet architectures on several deployment backends.

Every network is timed with latbench's one protocol (:func:`latbench.timing.measure`) on each
backend, so the numbers are comparable with each other and with LUT entries:

- GPU (default when one is present): ``eager`` vs ``cudagraph`` vs ``compile`` (Inductor, then CUDA
  graph replays) at 769x1537 — plus ``ort`` / ``trt`` if asked with ``--backends`` and installed;
- CPU: ``cpu`` (eager PyTorch) vs ``ort`` (ONNX Runtime, CPU provider) vs ``compile`` (Inductor)
  at a small resolution (65x129 by default; compiling a 14-cell network on 2 cores takes minutes).

The backend order is rotated from one architecture to the next so that slow drifts of a shared
machine do not favour one backend. Compile / export / engine-build time is reported apart from
latency. Writes ``benchmarks/results/backends-<device>-<date>.{json,md}``.

    python benchmarks/backends_whole_network.py                          # GPU, 769x1537
    python benchmarks/backends_whole_network.py --device cpu --threads 1 # CPU subset, 65x129
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from latbench.device import describe_device, resolve_device, software_versions
from latbench.space import format_resolution, load_space, parse_resolution
from latbench.timing import TimingConfig, get_backend, measure

ROOT = Path(__file__).resolve().parents[1]
GPU_BACKENDS = ("eager", "cudagraph", "compile")
CPU_BACKENDS = ("cpu", "ort", "compile")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _backend(name: str, device: str, precision: str, threads: int | None, args) -> object:
    opts: dict = {"device": device, "precision": precision, "threads": threads}
    if name == "compile":
        opts["mode"] = args.compile_mode
    if name in ("ort", "trt") and args.cache_dir:
        opts["cache_dir"] = args.cache_dir
    return get_backend(name, **opts)


def _row(m) -> dict:
    d = m.to_dict()
    keep = ("median_us", "p10_us", "p90_us", "iqr_us", "samples", "noise", "calls_per_sample", "host_bound",
            "enqueue_us", "status", "error")
    row = {k: d.get(k) for k in keep}
    extra = d.get("extra") or {}
    for k in ("compile_s", "compiled_graphs", "onnx_export_s", "onnx_cached", "engine_build_s", "calls_per_graph",
              "graph_timing", "stop", "noise_reached"):
        if k in extra:
            row[k] = extra[k]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda:N or cpu [default: cuda:0 if available]")
    ap.add_argument("--resolution", default=None, help="HxW [default: 769x1537 on a GPU, 65x129 on the CPU]")
    ap.add_argument("--backends", default=None, help="comma-separated [default: eager,cudagraph,compile on a GPU; "
                                                      "cpu,ort,compile on the CPU]")
    ap.add_argument("--archs", type=int, default=3, help="sampled architectures [3]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16"])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (cpu, ort, compile on the CPU)")
    ap.add_argument("--max-time", type=float, default=2.0, help="sampling cap per measurement, s [2]")
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--cache-dir", default=None, help="latbench cache root for ONNX files / engines")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    device = resolve_device(args.device)
    on_gpu = device.startswith("cuda")
    h, w = parse_resolution(args.resolution or ("769x1537" if on_gpu else "65x129"))
    names = [b.strip() for b in (args.backends or ",".join(GPU_BACKENDS if on_gpu else CPU_BACKENDS)).split(",")]
    config = TimingConfig(max_time_s=args.max_time, min_time_s=min(0.5, args.max_time), threads=args.threads)
    backends = {n: _backend(n, device, args.precision, args.threads, args) for n in names}

    space = load_space("lgcnet")
    rng = random.Random(args.seed)
    archs = [space.sample_architecture(rng) for _ in range(args.archs)]
    info = describe_device(device)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = _loadavg()
    results = []
    for i, arch in enumerate(archs):
        torch.manual_seed(args.seed + i)
        net = space.build_architecture(arch).eval()
        x = torch.randn(1, 3, h, w)
        order = names[i % len(names):] + names[:i % len(names)]
        per = {}
        for n in order:
            t0 = time.perf_counter()
            m = measure(net, [x], config, backend=backends[n])
            per[n] = {**_row(m), "wall_s": round(time.perf_counter() - t0, 2)}
            status = f"{m.median_us / 1e3:9.3f} ms" if m.ok else f"FAILED {m.error}"
            print(f"arch {i} {n:>10}: {status}  ({per[n]['wall_s']} s)", flush=True)
        results.append({"arch": arch, "order": order, "backends": per})

    ref = names[0]
    summary = {}
    for n in names:
        ratios = [r["backends"][n]["median_us"] / r["backends"][ref]["median_us"] for r in results
                  if r["backends"][n].get("median_us") and r["backends"][ref].get("median_us")]
        summary[n] = {"median_ratio_vs_" + ref: sorted(ratios)[len(ratios) // 2] if ratios else None,
                      "describe": backends[n].describe() if hasattr(backends[n], "describe") else {}}
    record = {
        "benchmark": "backends_whole_network", "date": started.isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "device": info, "versions": software_versions(), "resolution": format_resolution((h, w)),
        "precision": args.precision, "protocol": config.to_dict(), "backends": names,
        "load_average_before_after": [load_before, _loadavg()], "summary": summary, "results": results,
    }
    label = "cpu" if not on_gpu else _slug(info.get("name", "gpu"))
    stem = Path(args.out_dir) / f"backends-{label}-{started.date().isoformat()}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(_markdown(record), encoding="utf-8")
    print(f"wrote {stem}.json and {stem}.md")


def _markdown(rec: dict) -> str:
    names = rec["backends"]
    ref = names[0]
    dev = rec["device"]
    lines = [
        f"# Whole-network latency per backend ({rec['resolution']}, {rec['precision']})", "",
        f"- date: {rec['date']}",
        f"- device: {dev.get('name')} ({dev.get('type')}), host {dev.get('host')}",
        f"- torch {rec['versions'].get('torch')}, onnxruntime {rec['versions'].get('onnxruntime')}, "
        f"TensorRT {rec['versions'].get('tensorrt') or 'not installed'}",
        f"- protocol: max {rec['protocol']['max_time_s']} s sampling, noise target {rec['protocol']['max_noise']}, "
        f"threads {rec['protocol']['threads']}",
        f"- load average before / after: {rec['load_average_before_after'][0]} / {rec['load_average_before_after'][1]}",
        f"- command: `{rec['command']}`", "",
        "Median latency in ms (p10–p90), one row per sampled architecture; compile / export time is not "
        "in the latency.", "",
        "| arch | " + " | ".join(names) + " | " + " | ".join(f"{n}/{ref}" for n in names[1:]) + " |",
        "|---|" + "---:|" * (2 * len(names) - 1),
    ]
    for i, r in enumerate(rec["results"]):
        cells, ratios = [], []
        for n in names:
            b = r["backends"][n]
            if b.get("median_us"):
                cells.append(f"{b['median_us'] / 1e3:.3f} ({b['p10_us'] / 1e3:.3f}–{b['p90_us'] / 1e3:.3f})")
            else:
                cells.append(f"failed: {b.get('error')}")
        for n in names[1:]:
            a, b = r["backends"][n].get("median_us"), r["backends"][ref].get("median_us")
            ratios.append(f"{a / b:.2f}" if a and b else "–")
        lines.append(f"| {i} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    lines += ["", "One-off costs per architecture (s): " + "; ".join(
        f"arch {i}: " + ", ".join(f"{n} {k.replace('_s', '')} {r['backends'][n][k]}" for n in names
                                  for k in ("compile_s", "onnx_export_s", "engine_build_s") if r["backends"][n].get(k))
        for i, r in enumerate(rec["results"])), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
