"""β sweep (issue 12, item 5): does a larger β give a faster derived network, in both LAT scopes?

    python benchmarks/beta_sweep.py --lut LUT [--beta 0,0.0005,0.005,0.05,0.5] [--scope cells,network]
                                    [--epochs 10] [--lr-a 0.05] [--seeds 0] [--work benchmarks/work/beta]
                                    [--out-dir benchmarks/results]

For each scope and β, a real ``nas search`` on the synthetic data set priced by LUT (its latency
model where it has one, ``--latency-model auto``), then every derived network measured end to end
with the LUT's own backend and protocol, all of them in interleaved rounds
(:func:`latbench.model.fit.measure_networks`). Reports, per scope, the measured latency against β, the
predicted latency (the model's or Σ LUT), and whether measured latency falls monotonically as β
grows (Spearman ρ of β vs latency, and every adjacent pair). The default α learning rate here is
raised (``--lr-a 0.05``, as the demo does) so that a CPU search of a few minutes moves α at all; the
paper's 1e-3 over 50 epochs of Cityscapes is the GPU setting.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", required=True)
    ap.add_argument("--beta", default="0,0.0005,0.005,0.05,0.5")
    ap.add_argument("--scope", default="cells,network")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr-a", type=float, default=0.05)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--work", default="benchmarks/work/beta")
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    betas = [float(b) for b in args.beta.split(",")]
    scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    nas = str(Path(sys.executable).parent / "nas")
    commands: list[str] = []
    runs = []
    for scope in scopes:
        for beta in betas:
            for seed in seeds:
                out = work / f"{scope}-b{beta:g}-s{seed}"
                cmd = [nas, "search", "--lut", args.lut, "--dataset", "synthetic", "--epochs", str(args.epochs),
                       "--length", str(args.length), "--batch-size", str(args.batch_size), "--lr-a", str(args.lr_a),
                       "--beta", str(beta), "--latency-scope", scope, "--seed", str(seed), "--out", str(out),
                       "--no-progress", "--no-plots", "--workers", "0"]
                if not (out / "genotype.json").exists():
                    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                commands.append(shlex.join(cmd))
                g = json.loads((out / "genotype.json").read_text())
                runs.append({"scope": scope, "beta": beta, "seed": seed, "genotype": str(out / "genotype.json"),
                             "arch": {"cells": g["cells"], "fusion": g["fusion"]}, "meta": g.get("meta", {})})

    # measure every derived network, interleaved, with the LUT's own backend and protocol
    import numpy as np

    from latbench.model.fit import measure_networks
    from latbench.timing.interleave import RoundsConfig
    from latbench.lut.table import read_lut
    from latbench.model.predictor import Predictor
    from latbench.timing import get_backend
    from latbench.model.networks import resolve_setup

    lut = read_lut(args.lut)
    setup = resolve_setup(lut)
    predictor = Predictor.for_lut(lut, setup.height, setup.width, setup.batch,
                                  family={"fusion": setup.space.config.fusion})
    model = predictor.model
    backend = get_backend(setup.backend, device=setup.device, precision=setup.precision, threads=setup.protocol.threads)
    archs = {f"r{i:02d}": r["arch"] for i, r in enumerate(runs)}
    load_before = [round(v, 2) for v in os.getloadavg()]
    t0 = time.monotonic()
    res = measure_networks(setup, backend, {"reference": runs[0]["arch"], **archs}, RoundsConfig(rounds=args.rounds),
                           reference="reference")
    for (key, arch), r in zip(archs.items(), runs):
        rows = setup.space.architecture_rows(arch)
        r["measured_us"] = res.items[key].median_us
        r["lut_sum_us"] = predictor.raw_sum(rows)
        r["model_us"] = predictor.model_us(rows)
    summary = {}
    for scope in scopes:
        rs = [r for r in runs if r["scope"] == scope]
        by_beta = {b: float(np.mean([r["measured_us"] for r in rs if r["beta"] == b])) for b in betas}
        lat = [by_beta[b] for b in betas]
        from latbench.model.metrics import spearman_rho

        summary[scope] = {"measured_us_by_beta": by_beta, "spearman_beta_vs_latency": spearman_rho(betas, lat),
                          "monotone_non_increasing": all(a >= b for a, b in zip(lat, lat[1:]))}
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    d = {"date": date, "lut": args.lut, "lut_name": lut.meta.get("name"), "device": setup.device,
         "backend": setup.backend, "resolution": setup.resolution, "latency_model": model.summary() if model else None,
         "commands": commands, "benchmark": "python benchmarks/beta_sweep.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
         "loadavg_before": load_before, "loadavg_after": [round(v, 2) for v in os.getloadavg()],
         "measure_s": round(time.monotonic() - t0, 1), "measurement": res.summary(), "runs": runs, "summary": summary}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"beta_sweep-{setup.device}-{setup.backend}-{setup.resolution}-{date}"
    stem.with_suffix(".json").write_text(json.dumps(d, indent=2, default=str) + "\n")
    lines = [f"# β sweep — {setup.backend} at {setup.resolution} on {setup.device}, {date}", "",
             f"- LUT `{args.lut}`; LAT priced by {'latency model ' + model.model_id if model else 'Σ LUT'}",
             f"- searches: synthetic data, {args.epochs} epochs of {args.length} images, batch {args.batch_size}, "
             f"α lr {args.lr_a}, seeds {seeds}; derived networks measured in {args.rounds} interleaved rounds; "
             f"load average before {load_before}, after {d['loadavg_after']}",
             f"- command: `{d['benchmark']}`", "",
             "| scope | β | seed | measured ms | predicted ms | Σ LUT ms |", "|---|---|---|---|---|---|"]
    for r in runs:
        pred = r["model_us"] if r["model_us"] is not None else r["lut_sum_us"]
        lines.append(f"| {r['scope']} | {r['beta']:g} | {r['seed']} | {r['measured_us'] / 1e3:.3f} | {pred / 1e3:.3f} | "
                     f"{r['lut_sum_us'] / 1e3:.3f} |")
    lines.append("")
    for scope, s in summary.items():
        lines.append(f"- **{scope}**: Spearman ρ(β, measured latency) = {s['spearman_beta_vs_latency']:.3f}; "
                     f"measured latency {'falls monotonically' if s['monotone_non_increasing'] else 'does NOT fall monotonically'} "
                     "as β grows")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
