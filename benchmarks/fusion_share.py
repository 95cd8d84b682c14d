"""Does the latency term reach the fusion cell (issue 19 item 1)? The fusion cell's share of LAT in
the networks derived by searches at β = 0 and β > 0, in the default scope (``searched``: the cells'
and the fusion cell's searchable edges) and, for contrast, in the ``cells`` scope (eq. 9 without the
fusion cell).

    python benchmarks/fusion_share.py --lut LUT [--beta 0,0.5] [--seeds 0,1] [--scope searched,cells]
                                      [--epochs 6] [--length 48] [--work benchmarks/work/fusion_share]

Nothing is timed here: each derived network's rows are priced from the LUT (raw Σ of the LUT's
medians), so the figures are what the search saw, not a measurement of the network.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", required=True)
    ap.add_argument("--beta", default="0,0.5")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--scope", default="searched,cells")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--length", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr-a", type=float, default=0.05)
    ap.add_argument("--work", default="benchmarks/work/fusion_share")
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)

    from latbench.lut.table import read_lut
    from latbench.model.networks import resolve_setup
    from latbench.model.predictor import Predictor

    lut = read_lut(args.lut)
    setup = resolve_setup(lut)
    pred = Predictor.for_lut(lut, setup.height, setup.width, setup.batch, latency_model="none")
    nas = str(Path(sys.executable).parent / "nas")
    runs = []
    for scope in args.scope.split(","):
        for beta in (float(b) for b in args.beta.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                out = Path(args.work) / f"{scope}-b{beta:g}-s{seed}"
                cmd = [nas, "search", "--lut", args.lut, "--dataset", "synthetic", "--epochs", str(args.epochs),
                       "--length", str(args.length), "--batch-size", str(args.batch_size), "--lr-a", str(args.lr_a),
                       "--beta", str(beta), "--latency-scope", scope, "--seed", str(seed), "--out", str(out),
                       "--no-progress", "--no-plots", "--workers", "0"]
                if not (out / "genotype.json").exists():
                    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                g = json.loads((out / "genotype.json").read_text())
                rows = setup.space.architecture_rows({k: g[k] for k in ("cells", "fusion")})
                fusion = [r for r in rows if r[0].startswith("fusion.")]
                cells = [r for r in rows if r[0].startswith("cell")]
                f_us, c_us = pred.raw_sum(fusion), pred.raw_sum(cells)
                runs.append({"scope": scope, "beta": beta, "seed": seed, "fusion_us": f_us, "cells_us": c_us,
                             "fusion_share": f_us / (f_us + c_us), "fusion_ops": [op for _, op in fusion],
                             "command": shlex.join(cmd)})
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    stem = Path(args.out_dir) / f"fusion_share-{setup.backend}-{setup.resolution}-{date}"
    d = {"date": date, "lut": args.lut, "resolution": setup.resolution, "priced_by": "raw Σ LUT medians",
         "benchmark": "python benchmarks/fusion_share.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
         "runs": runs}
    stem.with_suffix(".json").write_text(json.dumps(d, indent=2) + "\n")
    lines = [f"# The fusion cell's share of LAT, β = 0 vs β > 0 ({setup.backend} {setup.resolution}, {date})", "",
             f"- LUT `{args.lut}`; synthetic data, {args.epochs} epochs of {args.length} images, α lr {args.lr_a}; "
             "each derived network's searched rows priced by raw Σ LUT (nothing timed)",
             f"- command: `{d['benchmark']}`", "",
             "| LAT scope | β | seed | fusion cell ms | cells ms | fusion share of LAT |", "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['scope']} | {r['beta']:g} | {r['seed']} | {r['fusion_us'] / 1e3:.2f} | "
                     f"{r['cells_us'] / 1e3:.2f} | {r['fusion_share'] * 100:.1f} % |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
