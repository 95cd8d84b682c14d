#!/usr/bin/env python
"""Does latbench's timer agree with an independent reference timer?

For a set of ops of a search space (one per distinct op name, from the space's enumeration at one
resolution), time each op with latbench's protocol and with a reference timer:

- CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (same thread count, inference mode);
- GPU: ``triton.testing.do_bench_cudagraph`` (median), falling back to ``do_bench``. It captures
  ``rep / estimate`` calls in one graph and replays that graph ten times, so one call lasts about
  ``10 x rep`` ms plus the capture: ``--ref-rep-ms`` (20 ms, triton's default) keeps an op's
  reference near 0.3 s. Both timers run in the same grad mode and fp32 math mode (``--precision``).

Prints a table of medians and ratios (latbench / reference) and writes
``benchmarks/results/timer_agreement-<device>-<date>.{json,md}`` with device, date and command,
rewritten after every op (``"complete": false`` until the last), so a run stopped by a time
limit keeps every finished op; ``--budget-s`` stops starting new ops once that much time has
passed. The two timers run alternately (A-B, then B-A for the next op) so that slow drifts of a
shared machine do not favour one of them.

    python benchmarks/timer_agreement.py                       # lgcnet space on the CPU
    python benchmarks/timer_agreement.py --space toy            # tests/toy_space.py
    python benchmarks/timer_agreement.py --device cuda:0        # needs triton
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

from latbench.build.builder import make_inputs
from latbench.device import describe_device, resolve_device, software_versions
from latbench.files import atomic_write_text
from latbench.space import OpSpec, load_space, parse_resolution
from latbench.timing import TimingConfig, default_backend, get_backend, measure
from latbench.timing.precision import convert

ROOT = Path(__file__).resolve().parents[1]


def _space(name: str):
    if name == "toy":
        sys.path.insert(0, str(ROOT / "tests"))
        return load_space("toy_space:ToySpace")
    if name == "torch":
        return None
    return load_space(name)


def _representative_ops(space, h: int, w: int, max_ops: int) -> list[tuple[str, OpSpec, object]]:
    """(label, spec, module): one entry per distinct op name, fixed parts included."""
    out = []
    if space is None:  # a few representative torch ops when no space is installed
        mods = {
            "conv3x3": (torch.nn.Conv2d(16, 16, 3, padding=1), (1, 16, 64, 128)),
            "sep_conv": (torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
                                             torch.nn.Conv2d(16, 16, 1)), (1, 16, 64, 128)),
            "maxpool": (torch.nn.MaxPool2d(3, 1, 1), (1, 16, 64, 128)),
            "relu": (torch.nn.ReLU(), (1, 16, 64, 128)),
        }
        return [(k, OpSpec(k, (shape,)), m.eval()) for k, (m, shape) in mods.items()][:max_ops]
    seen = set()
    for e in space.enumerate(h, w, 1):
        if e.analytic or e.op in seen:
            continue
        seen.add(e.op)
        out.append((e.key, e.spec, space.build_op(e.spec)))
    return out[:max_ops]


def _reference_cpu(module, inputs, threads: int, min_run_time: float, clock=None) -> float:
    from torch.utils.benchmark import Timer

    kw = {"timer": clock} if clock is not None else {}
    t = Timer(stmt="m(*x)", globals={"m": module, "x": inputs}, num_threads=threads, **kw)
    with torch.inference_mode():
        t.timeit(3)
        return t.blocked_autorange(min_run_time=min_run_time).median * 1e6


def _reference_gpu(module, inputs, precision: str, rep_ms: float) -> tuple[float, str]:
    import triton.testing as tt

    from latbench.timing.cuda import GRAD_MODE
    from latbench.timing.precision import fp32_math

    fn = lambda: module(*inputs)  # noqa: E731
    with fp32_math(precision), GRAD_MODE():  # what latbench's CUDA timers run in
        try:
            with torch.cuda.stream(torch.cuda.Stream()):
                return float(tt.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")) * 1e3, "do_bench_cudagraph"
        except Exception:
            return float(tt.do_bench(fn, warmup=25, rep=max(rep_ms, 50), return_mode="median")) * 1e3, "do_bench"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=None, help="lgcnet (default if installed), toy, torch, or module:Class")
    ap.add_argument("--resolution", default="65x129")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-ops", type=int, default=20)
    ap.add_argument("--max-time", type=float, default=1.0, help="latbench per-op cap (s)")
    ap.add_argument("--ref-time", type=float, default=0.5, help="reference min_run_time (s, CPU)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating latbench/reference rounds per op")
    ap.add_argument("--ref-rep-ms", type=float, default=20.0,
                    help="do_bench_cudagraph's rep (ms; it replays its graph 10 times, GPU)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16"])
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new op after this many seconds (finished ops are kept)")
    ap.add_argument("--output-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    name = args.space
    if name is None:
        try:
            import nas.space  # noqa: F401
            name = "lgcnet"
        except ImportError:
            name = "torch"
    space = _space(name)
    h, w = parse_resolution(args.resolution)
    device = resolve_device(args.device)
    on_gpu = device.startswith("cuda")
    backend_name = args.backend or default_backend(device)
    backend = get_backend(backend_name, device=device, threads=args.threads, precision=args.precision)
    config = TimingConfig(max_time_s=args.max_time, threads=args.threads if not on_gpu else None)
    if not on_gpu:
        torch.set_num_threads(args.threads)

    rows = []
    # With one thread, also run the reference timer on the thread's CPU time: on a shared machine
    # whose cores are oversubscribed, a long wall-clock block includes time the process spent
    # preempted, while latbench's short samples (median) mostly do not.
    cpu_clock = not on_gpu and args.threads == 1
    load_before = os.getloadavg()
    reference_name = "torch.utils.benchmark.Timer.blocked_autorange" if not on_gpu else None
    ops = _representative_ops(space, h, w, args.max_ops)
    print(f"{len(ops)} ops of space {name!r} at {h}x{w} on {device} ({backend_name})", file=sys.stderr)
    started = time.monotonic()
    ctx = {"name": name, "h": h, "w": w, "device": device, "on_gpu": on_gpu, "backend_name": backend_name,
           "config": config, "load_before": load_before, "args": args, "n_ops": len(ops)}
    stopped_early = False
    for i, (label, spec, module) in enumerate(ops):
        if args.budget_s is not None and time.monotonic() - started > args.budget_s:
            stopped_early = True
            print(f"budget of {args.budget_s:.0f} s spent: {len(ops) - i} op(s) not measured", file=sys.stderr)
            break
        inputs = make_inputs(spec)
        mod_ref, in_ref = convert(module, inputs, device, args.precision)

        def ours():
            return measure(module, inputs, config, backend=backend)

        def ref():
            if on_gpu:
                return _reference_gpu(mod_ref, in_ref, args.precision, args.ref_rep_ms)
            if cpu_clock:  # the same reference timer reading this thread's CPU time
                ref_cpu_us.append(_reference_cpu(mod_ref, in_ref, args.threads, args.ref_time, time.thread_time))
            return _reference_cpu(mod_ref, in_ref, args.threads, args.ref_time), reference_name

        # Several alternating rounds (A-B, B-A, ...): on a shared machine the load changes over
        # seconds, and a single pair can land one timer in a busy spell and the other in a quiet one.
        ours_us, ref_us, ref_cpu_us, m = [], [], [], None
        for k in range(args.rounds):
            if (i + k) % 2 == 0:
                m = ours()
                r, reference_name = ref()
            else:
                r, reference_name = ref()
                m = ours()
            if m.ok:
                ours_us.append(m.median_us)
            ref_us.append(r)
        lat = statistics.median(ours_us) if ours_us else float("nan")
        r = statistics.median(ref_us)
        ratio = lat / r if ours_us and r > 0 else float("nan")
        r_cpu = statistics.median(ref_cpu_us) if ref_cpu_us else None
        ratio_cpu = lat / r_cpu if ours_us and r_cpu else None
        rows.append({"op": label, "latbench_us": lat, "latbench_noise": m.noise, "samples": m.samples,
                     "calls_per_sample": m.calls_per_sample, "reference_us": r, "ratio": ratio,
                     "reference_cputime_us": r_cpu, "ratio_vs_cputime": ratio_cpu,
                     "rounds_latbench_us": ours_us, "rounds_reference_us": ref_us, "rounds_reference_cputime_us": ref_cpu_us,
                     "status": m.status, "error": m.error})
        print(f"{ratio:7.3f}  {lat:10.2f} µs  {r:10.2f} µs  {label}", file=sys.stderr)
        _write(rows, ctx, reference_name, cpu_clock, complete=False)  # every finished op is kept

    stem = _write(rows, ctx, reference_name, cpu_clock, complete=not stopped_early)
    print(Path(str(stem) + ".md").read_text())
    print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


def _write(rows: list, ctx: dict, reference_name, cpu_clock: bool, complete: bool) -> Path:
    """(Re)write the JSON and Markdown results of ``rows``; returns their common stem."""
    name, h, w, device, on_gpu = ctx["name"], ctx["h"], ctx["w"], ctx["device"], ctx["on_gpu"]
    backend_name, config, load_before, args = ctx["backend_name"], ctx["config"], ctx["load_before"], ctx["args"]
    ratios = [r["ratio"] for r in rows if r["ratio"] == r["ratio"]]
    med = statistics.median(ratios) if ratios else float("nan")
    ratios_cpu = [r["ratio_vs_cputime"] for r in rows if r.get("ratio_vs_cputime")]
    med_cpu = statistics.median(ratios_cpu) if ratios_cpu else None
    load_after = os.getloadavg()
    now = dt.datetime.now(dt.timezone.utc)
    dev = describe_device(device)
    result = {
        "benchmark": "timer_agreement",
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "device": dev, "versions": software_versions(), "host": socket.gethostname(),
        "space": name, "resolution": f"{h}x{w}", "backend": backend_name, "threads": args.threads,
        "protocol": config.to_dict(), "reference": reference_name, "precision": args.precision,
        "reference_rep_ms": args.ref_rep_ms if on_gpu else None,
        "complete": complete, "ops_planned": ctx["n_ops"], "ops_measured": len(rows),
        "within_2pct_ops": sum(1 for x in ratios if abs(x - 1) <= 0.02) if ratios else None,
        "median_ratio": med, "min_ratio": min(ratios, default=None), "max_ratio": max(ratios, default=None),
        "within_5pct": abs(med - 1) <= 0.05 if ratios else None,
        "median_ratio_vs_cputime_reference": med_cpu,
        "within_5pct_vs_cputime_reference": abs(med_cpu - 1) <= 0.05 if med_cpu else None,
        "cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
        "ops": rows,
    }
    tag = "cpu" if not on_gpu else "".join(c if c.isalnum() else "-" for c in dev.get("name", "gpu")).strip("-").lower()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"timer_agreement-{tag}-{now.date().isoformat()}"
    atomic_write_text(Path(str(stem) + ".json"), json.dumps(result, indent=2, default=str) + "\n")
    md = [f"# Timer agreement: latbench vs {reference_name}", "",
          f"- date: {result['date']}" + ("" if complete else f" (partial: {len(rows)} of {ctx['n_ops']} ops)"),
          f"- device: {dev.get('name')} ({dev.get('type')}), host {result['host']}",
          f"- torch {result['versions']['torch']}, python {platform.python_version()}",
          f"- space {name} at {h}x{w}, backend {backend_name}, threads {args.threads}, "
          f"{args.rounds} alternating rounds per op (medians of the rounds' medians)",
          f"- command: `{result['command']}`", "",
          f"- load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores",
          "",
          f"**median ratio latbench / reference: {med:.4f}** (min {_f3(result['min_ratio'])}, "
          f"max {_f3(result['max_ratio'])}; {len(ratios)} ops, {result['within_2pct_ops']} within 2 %)", ""]
    if med_cpu is not None:
        md += [f"**median ratio latbench / reference on thread CPU time: {med_cpu:.4f}** "
               "(same reference timer with `timer=time.thread_time`; immune to preemption by other "
               "processes, equal to wall time for a 1-thread op on an idle core)", ""]
    md += ["| op | latbench µs | noise | reference µs (wall) | ratio | reference µs (CPU time) | ratio |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rc = r.get("reference_cputime_us")
        md.append(f"| `{r['op']}` | {r['latbench_us']:.2f} | {100 * (r['latbench_noise'] or 0):.2f}% | "
                  f"{r['reference_us']:.2f} | {r['ratio']:.3f} | "
                  + (f"{rc:.2f} | {r['ratio_vs_cputime']:.3f} |" if rc else "- | - |"))
    atomic_write_text(Path(str(stem) + ".md"), "\n".join(md) + "\n")
    return stem


def _f3(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
