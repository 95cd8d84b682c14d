"""Latency-model benchmark (issue 10's goal): how well does a LUT predict whole deployed networks,
raw sum vs affine calibration vs the fitted latency model, on networks the model never saw?

    python benchmarks/latency_model.py [--backend cpu,ort,compile] [--resolution 65x129 --resolution 129x257]
                                       [--fit 40 --test 30 --search 30] [--rounds 15] [--device cpu]
                                       [--work benchmarks/work] [--out-dir benchmarks/results]

For each (backend, resolution), with real user commands (printed and recorded):

1. ``latbench build-lut`` (one thread on a CPU) into WORK/luts/, unless that LUT exists;
2. once per resolution, a short ``nas search`` priced by the cpu LUT (a high α learning rate and
   β = 0.5, so that the α distribution is far from uniform) whose genotype.json supplies the
   held-out *from-search* networks;
3. ``latbench fit LUT --fit-networks F --test-networks T --from-search genotype.json
   --search-networks S --json``: measured in interleaved rounds with a reference network watching
   for slow episodes, fitted on F uniform networks, judged on T held-out uniform and S held-out
   from-search networks.

Writes ``OUT_DIR/latency_model-<device>-<backend>-<HxW>-<date>.json`` (the fit's whole JSON plus
the commands, the machine and its load), one ``.png`` per run, and a summary table
``OUT_DIR/latency_model-<device>-<date>.md`` with every mechanism of the ablation ladder per
backend and resolution. Goal on a CPU, one thread: MAPE <= 2 %, worst <= 6 %, Kendall τ >= 0.85
on both held-out sets with <= 40 fitted networks. Never run two timing jobs at once: the numbers
measure the machine's load otherwise (the load average is recorded with every run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

GOAL = {"mape": 2.0, "worst": 6.0, "kendall_tau": 0.85}
LADDER = ("raw", "affine", "overhead", "overhead+global", "+p10 column", "model", "model (uniform fit networks)",
          "model (uniform part of the fit set only)", "measurement (split-half)")
LABELS = {"raw": "Σ LUT", "affine": "affine a·Σ+b", "overhead": "− overhead (measured)",
          "overhead+global": "+ global fit", "+p10 column": "+ p10 column",
          "model (uniform fit networks)": "latency model fitted on uniform networks instead",
          "model (uniform part of the fit set only)": "latency model fitted on the uniform part of the fit set only",
          "model": "**latency model**",
          "measurement (split-half)": "ceiling: even vs odd rounds of the measurement"}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def run(cmd: list[str], log: list[str], capture: bool = False) -> str:
    line = shlex.join(cmd)
    print(f"$ {line}", file=sys.stderr, flush=True)
    log.append(line)
    t0 = time.monotonic()
    out = subprocess.run(cmd, check=False, text=True, stdout=subprocess.PIPE if capture else None)
    if out.returncode != 0:
        raise SystemExit(f"command failed ({out.returncode}): {line}")
    print(f"  ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    return out.stdout if capture else ""


def bin_of(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _f(v, spec=".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def render_md(runs: list[dict], date: str, device: str) -> str:
    lines = [f"# Latency model — {device}, {date}", "",
             "Held-out networks only (the model never saw them). Per backend and resolution: MAPE / worst "
             "error (%) / Kendall τ of each mechanism of `latbench fit`'s ablation ladder. Goal on this CPU "
             f"(one thread): MAPE ≤ {GOAL['mape']} %, worst ≤ {GOAL['worst']} %, τ ≥ {GOAL['kendall_tau']}.", ""]
    for r in runs:
        d = r["fit"]
        m = d["measurement"]
        prov = d["model"]["provenance"]
        lines += [f"## {d['scope']['backend']} at {d['scope']['height']}x{d['scope']['width']} (fit of {d['date']})", "",
                  f"- commands: " + "; ".join(f"`{c}`" for c in r["commands"]),
                  f"- fit on {prov.get('fit_networks')} networks ({prov.get('fit_networks_from_search') or 0} of them drawn from the search's α, the rest {prov.get('fit_design', 'uniform')}); model: {d['model']['group_by']} groups, "
                  f"column {d['model']['column']}, λ {prov.get('lambda')}, per-call overhead {d['overhead_us']:.2f} µs, "
                  f"constant {d['model']['constant_us']:.1f} µs; fitted: {prov.get('fitted')}",
                  f"- measurement: {m['rounds']['rounds']} interleaved rounds of {m['rounds']['window_s']} s, "
                  f"statistic {m['statistic']}, {m['elapsed_s']:.0f} s; median network noise "
                  f"{100 * (m.get('median_network_noise') or 0):.2f} %; reference p10–p90 spread "
                  f"{100 * (m.get('reference_p10_p90_spread') or 0):.1f} %; {len(m['drift_events'])} drift events; "
                  f"load average before {m['loadavg_before']}, after {m['loadavg_after']}",
                  f"- LUT build: {r.get('lut_build_s')}",
                  "", "| mechanism | " + " | ".join(
                      f"{s} MAPE | {s} worst | {s} τ" for s in ("uniform", "search")) + " |",
                  "|---|" + "---|" * 6]
        for mech in LADDER:
            cells = []
            for s in ("test", "search"):
                f = (d["figures"].get(s) or {}).get(mech)
                cells += [_f(f and f["mape"]), _f(f and f["worst"]), _f(f and f["kendall_tau"], ".3f")] if f else ["–"] * 3
            lines.append(f"| {LABELS[mech]} | " + " | ".join(cells) + " |")
        ok = all((d["figures"].get(s) or {}).get("model") and d["figures"][s]["model"]["mape"] <= GOAL["mape"]
                 and d["figures"][s]["model"]["worst"] <= GOAL["worst"]
                 and (d["figures"][s]["model"]["kendall_tau"] or 0) >= GOAL["kendall_tau"] for s in ("test", "search"))
        lines += ["", f"Goal {'met' if ok else 'not met'} on both held-out sets. The last row is the measurement "
                  "against itself (each network's even rounds vs its odd rounds, each half with half the rounds): "
                  "no prediction can rank the networks better than their own measurement does.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cpu,ort,compile")
    ap.add_argument("--resolution", action="append", default=None)
    ap.add_argument("--fit", type=int, default=40)
    ap.add_argument("--design", default="uniform", choices=("uniform", "d-optimal"))
    ap.add_argument("--uniform-fit", type=int, default=0,
                    help="With --design d-optimal: also measure this many uniform fit networks (the design's "
                         "ablation); 0: skip.")
    ap.add_argument("--search-fit", type=int, default=0,
                    help="Of the --fit networks, this many drawn from the search's α (latbench fit "
                         "--search-fit-networks); the result files get a searchfitN tag.")
    ap.add_argument("--test", type=int, default=30)
    ap.add_argument("--search", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--window", type=float, default=0.1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="benchmarks/work")
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    resolutions = args.resolution or ["65x129", "129x257"]
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    work, out_dir = Path(args.work), Path(args.out_dir)
    (work / "luts").mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    from latbench.device import describe_device

    dev = describe_device("cpu" if args.device == "cpu" else args.device)
    dev_slug = _slug(f"{dev.get('type')}-{dev.get('name')}")
    latbench, nas = bin_of("latbench"), bin_of("nas")
    runs = []
    for res in resolutions:
        genotype = work / f"search-{res}" / "genotype.json"
        for backend in backends:
            log: list[str] = []
            name = f"{'cpu' if args.device == 'cpu' else 'gpu'}-{backend}-{res}"
            lut = work / "luts" / f"{name}.parquet"
            build_s = "reused"
            if not lut.exists() or (Path(str(lut) + ".partial.jsonl")).exists():
                t0 = time.monotonic()
                cmd = [latbench, "build-lut", "--gpu", name, "--device", args.device, "--backend", backend,
                       "--resolution", res, "--output", str(lut), "--no-progress"]
                if args.device == "cpu":
                    cmd += ["--threads", str(args.threads)]
                run(cmd, log)
                build_s = f"{time.monotonic() - t0:.0f} s"
            if not genotype.exists():
                run([nas, "search", "--lut", str(lut), "--latency-model", "none", "--dataset", "synthetic",
                     "--epochs", "10", "--length", "64", "--batch-size", "8", "--lr-a", "0.05", "--beta", "0.5",
                     "--latency-scope", "network", "--out", str(genotype.parent), "--no-progress", "--no-plots",
                     "--workers", "0", "--seed", str(args.seed)], log)
            t0 = time.monotonic()
            tag = f"{backend}-{res}" + (f"-searchfit{args.search_fit}" if args.search_fit else "")
            fit_json = run([latbench, "fit", str(lut), "--fit-networks", str(args.fit), "--design", args.design,
                            "--uniform-fit-networks", str(args.uniform_fit),
                            "--search-fit-networks", str(args.search_fit), "--test-networks", str(args.test),
                            "--from-search", str(genotype), "--search-networks", str(args.search), "--rounds",
                            str(args.rounds), "--window", str(args.window), "--seed", str(args.seed), "--json",
                            "--no-progress", "--plot", str(out_dir / f"latency_model-{dev_slug}-{tag}-{date}.png")],
                           log, capture=True)
            d = {"fit": json.loads(fit_json), "commands": log, "lut_build_s": build_s,
                 "fit_wall_s": round(time.monotonic() - t0, 1), "date": date, "machine": dev,
                 "benchmark": "python benchmarks/latency_model.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))}
            path = out_dir / f"latency_model-{dev_slug}-{tag}-{date}.json"
            path.write_text(json.dumps(d, indent=2, default=str) + "\n")
            runs.append(d)
            print(render_md([d], date, str(dev.get("name"))), flush=True)
    # the summary holds every run of this device and day (backends may be run in separate calls)
    every = [json.loads(p.read_text()) for p in sorted(out_dir.glob(f"latency_model-{dev_slug}-*-{date}.json"))]
    md = out_dir / f"latency_model-{dev_slug}-{date}.md"
    md.write_text(render_md(every, date, str(dev.get("name"))) + "\n")
    print(f"wrote {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
