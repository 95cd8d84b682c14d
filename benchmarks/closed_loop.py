"""The closed loop (issue 17 item 4): does pricing the search with the latency model give faster
networks than pricing it with the raw LUT sum or the affine fit, at the same loss?

    python benchmarks/closed_loop.py --lut LUT --fit-json FIT.json [--beta 0.5,2,5] [--seeds 0,1]
                                     [--epochs 6] [--length 48] [--rounds 15]
                                     [--work benchmarks/work/closed_loop] [--out-dir benchmarks/results]

LUT holds the latency model ``latbench fit`` stored; FIT.json is that fit's ``--json`` output
(its fit networks, measured). Three pricings of the same search, LAT over the whole network
(``--latency-scope network``, where the three differ):

- ``raw``    — Σ LUT medians (``--latency-model none --no-calibration``);
- ``affine`` — a·Σ LUT + b fitted on the same fit networks (a copy of the LUT whose model for this
  scope is that affine fit, ``--latency-model require``);
- ``model``  — the LUT's latency model (``--latency-model require``).

Each pricing runs ``nas search`` on the synthetic data set at every β and seed (same data, same
seed across pricings); every derived network is then measured end to end with the LUT's own backend
and protocol, all of them in interleaved rounds (:func:`latbench.model.networks.measure_networks`).
Reported per pricing: each network's measured latency beside its final search CE, the mean over
seeds per β, and every derived network's prediction error under each pricing (networks the fit
never saw). A pricing gives a better trade-off when, at equal final CE, its networks measure
faster; with few searches this is read from the pairs (same β, same seed) and their spread, not
claimed beyond it. Searches are not timed (they only produce architectures); the measurement is,
so run this on a quiet machine: the load is recorded before and after.
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

PRICINGS = ("raw", "affine", "model")


def affine_lut(lut_path: str, fit_json: str, out: Path) -> tuple[Path, dict]:
    """A copy of the LUT whose model for the fitted scope is ``c + a·Σ`` fitted on the fit
    networks of ``fit_json`` (the same networks, statistic and column as the stored model)."""
    from latbench.lut.table import read_lut, write_lut
    from latbench.model.latency_model import LatencyModel, with_model
    from latbench.model.lsq import fit_affine_model
    from latbench.model.networks import resolve_setup
    from latbench.model.predictor import Predictor

    lut = read_lut(lut_path)
    setup = resolve_setup(lut)
    predictor = Predictor.for_lut(lut, setup.height, setup.width, setup.batch, latency_model="require",
                                  family={"fusion": setup.space.config.fusion})
    model = predictor.model
    report = json.loads(Path(fit_json).read_text())
    nets = [n for n in report["networks"] if n.get("set") == "fit" and n.get("measured_us")]
    if len(nets) < 8:
        raise SystemExit(f"{fit_json}: {len(nets)} measured fit networks; need at least 8")
    rows = [predictor.rows(predictor.network_rows(setup.space, n["arch"]), model.column) for n in nets]
    aff = fit_affine_model(rows, [float(n["measured_us"]) for n in nets], model.scope, model.column)
    aff = LatencyModel(**{**aff.__dict__, "provenance": {**model.provenance, "affine": True,
                                                         "by": "benchmarks/closed_loop.py (affine on the fit networks)"}})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_lut(type(lut)(lut.df.copy(), with_model(lut.meta, aff)), out)
    return out, {"slope": aff.default_slope, "constant_us": aff.constant_us, "fit_networks": len(nets)}


def also_figures(runs: list[dict], key: str) -> dict[str, float]:
    """MAPE / mean signed / worst error (%) of predictor ``key`` against this run's measurement
    (not relative to the anchors: they belong to the fit that priced the searches, not to it)."""
    e = [r["error"][key] for r in runs]
    return {"mape": 100 * sum(map(abs, e)) / len(e), "signed": 100 * sum(e) / len(e),
            "worst": 100 * max(map(abs, e))}


def final_ce(run_dir: Path) -> float:
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return float(recs[-1]["ce"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", required=True, help="LUT with a latency model (latbench fit)")
    ap.add_argument("--fit-json", required=True, help="that fit's --json output")
    ap.add_argument("--beta", default="0.5,2,5")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--length", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr-a", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--work", default="benchmarks/work/closed_loop")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--anchors", type=int, default=6, help="fit networks measured beside the derived ones")
    ap.add_argument("--searches-only", action="store_true",
                    help="run the searches, measure nothing (to run seeds in parallel, one process per seed with "
                         "OMP_NUM_THREADS=1 each: two searches of PyTorch's default threads on two cores took 7x "
                         "longer here, 36 min against 5 min for 18 searches, 2026-12-05)")
    ap.add_argument("--also-model", metavar="LUT", action="append", default=[],
                    help="another LUT holding a latency model for the same rows (e.g. an earlier fit's): its "
                         "predictions of the derived networks are reported beside the others (it prices no search)")
    ap.add_argument("--tag", default="", help="suffix of the results' file names (several runs on one day)")
    args = ap.parse_args(argv)
    betas = [float(b) for b in args.beta.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    aff_path, aff_info = affine_lut(args.lut, args.fit_json, work / "affine.parquet")
    luts = {"raw": (args.lut, ["--latency-model", "none", "--no-calibration"]),
            "affine": (str(aff_path), ["--latency-model", "require"]),
            "model": (args.lut, ["--latency-model", "require"])}
    nas = str(Path(sys.executable).parent / "nas")
    runs, commands = [], []
    t_search = time.monotonic()
    for beta in betas:
        for seed in seeds:
            for pricing in PRICINGS:
                lut, extra = luts[pricing]
                out = work / f"{pricing}-b{beta:g}-s{seed}"
                cmd = [nas, "search", "--lut", lut, "--dataset", "synthetic", "--epochs", str(args.epochs),
                       "--length", str(args.length), "--batch-size", str(args.batch_size), "--lr-a", str(args.lr_a),
                       "--beta", str(beta), "--latency-scope", "network", "--seed", str(seed), "--out", str(out),
                       "--no-progress", "--no-plots", "--workers", "0", *extra]
                if not (out / "genotype.json").exists():
                    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                commands.append(shlex.join(cmd))
                g = json.loads((out / "genotype.json").read_text())
                runs.append({"pricing": pricing, "beta": beta, "seed": seed, "genotype": str(out / "genotype.json"),
                             "final_ce": final_ce(out), "arch": {k: g[k] for k in ("cells", "fusion") if k in g},
                             "genotype_data": g})
    search_s = time.monotonic() - t_search
    if args.searches_only:
        print(f"{len(runs)} searches in {search_s:.0f} s", file=sys.stderr)
        return 0

    import numpy as np

    from latbench.lut.table import read_lut
    from latbench.model.networks import measure_networks, resolve_setup
    from latbench.model.predictor import Predictor
    from latbench.timing import get_backend
    from latbench.timing.interleave import RoundsConfig

    lut = read_lut(args.lut)
    setup = resolve_setup(lut)
    fam = {"fusion": setup.space.config.fusion}
    pred_model = Predictor.for_lut(lut, setup.height, setup.width, setup.batch, latency_model="require", family=fam)
    pred_aff = Predictor.for_lut(read_lut(aff_path), setup.height, setup.width, setup.batch,
                                 latency_model="require", family=fam)
    also = {f"also{i}": Predictor.for_lut(read_lut(p), setup.height, setup.width, setup.batch,
                                          latency_model="require", family=fam)
            for i, p in enumerate(args.also_model)}
    backend = get_backend(setup.backend, device=setup.device, precision=setup.precision,
                          threads=setup.protocol.threads)
    archs = {}
    for i, r in enumerate(runs):
        archs[f"n{i:02d}"] = setup.space.architecture_from_genotype(r["genotype_data"]) \
            if hasattr(setup.space, "architecture_from_genotype") else r["arch"]
    # anchors: fit networks spread over the fit's latency range, measured in the same rounds, so a
    # drift of the machine between the fit and now is seen (and divided out) rather than blamed on a model
    fit_nets = sorted((n for n in json.loads(Path(args.fit_json).read_text())["networks"]
                       if n.get("set") == "fit" and n.get("measured_us")), key=lambda n: n["measured_us"])
    anchors = {f"a{i}": fit_nets[j] for i, j in enumerate(np.linspace(0, len(fit_nets) - 1, args.anchors).round().astype(int))}
    load_before = [round(v, 2) for v in os.getloadavg()]
    t0 = time.monotonic()
    res = measure_networks(setup, backend, {"reference": next(iter(archs.values())), **archs,
                                            **{k: n["arch"] for k, n in anchors.items()}},
                           RoundsConfig(rounds=args.rounds), reference="reference")
    anchor_ratios = {k: res.items[k].median_us / float(n["measured_us"]) for k, n in anchors.items()}
    drift = float(np.median(list(anchor_ratios.values())))
    for (key, arch), r in zip(archs.items(), runs):
        rows = pred_model.network_rows(setup.space, arch)
        m = res.items[key].median_us
        r.pop("genotype_data")
        r["measured_us"] = m
        r["pred_us"] = {"raw": pred_model.raw_sum(rows), "affine": pred_aff.model_us(rows),
                        "model": pred_model.model_us(rows), **{k: q.model_us(rows) for k, q in also.items()}}
        r["error"] = {k: v / m - 1.0 for k, v in r["pred_us"].items()}
        # relative to the anchors: the prediction against the measurement rescaled to the fit's day
        r["error_vs_anchors"] = {k: v * drift / m - 1.0 for k, v in r["pred_us"].items()}
    # per pricing: measured latency and CE; paired with the raw pricing at the same (β, seed)
    summary = {}
    for p in PRICINGS:
        rs = [r for r in runs if r["pricing"] == p]
        summary[p] = {
            "mean_measured_ms": float(np.mean([r["measured_us"] for r in rs]) / 1e3),
            "mean_final_ce": float(np.mean([r["final_ce"] for r in rs])),
            "by_beta": {f"{b:g}": {"measured_ms": float(np.mean([r["measured_us"] for r in rs if r["beta"] == b]) / 1e3),
                                   "final_ce": float(np.mean([r["final_ce"] for r in rs if r["beta"] == b]))}
                        for b in betas},
            "mape_of_own_pricing": float(np.mean([abs(r["error"][p]) for r in rs]) * 100),
            "mape_by_predictor": {q: float(np.mean([abs(r["error"][q]) for r in rs]) * 100) for q in PRICINGS},
            "mape_vs_anchors": {q: float(np.mean([abs(r["error_vs_anchors"][q]) for r in rs]) * 100) for q in PRICINGS},
            "signed_vs_anchors": {q: float(np.mean([r["error_vs_anchors"][q] for r in rs]) * 100) for q in PRICINGS},
            "worst_by_predictor": {q: float(max(abs(r["error"][q]) for r in rs) * 100) for q in PRICINGS},
        }
    pairs = {}
    for p in ("affine", "model"):
        d_lat, d_ce = [], []
        for r in (r for r in runs if r["pricing"] == p):
            base = next(b for b in runs if b["pricing"] == "raw" and b["beta"] == r["beta"] and b["seed"] == r["seed"])
            d_lat.append(r["measured_us"] / base["measured_us"] - 1.0)
            d_ce.append(r["final_ce"] - base["final_ce"])
        rng = np.random.default_rng(0)
        boots = [float(np.mean(rng.choice(d_lat, len(d_lat)))) for _ in range(2000)]
        pairs[p] = {"mean_latency_change_vs_raw": float(np.mean(d_lat)),
                    "latency_change_90ci": [float(np.percentile(boots, 5)), float(np.percentile(boots, 95))],
                    "mean_ce_change_vs_raw": float(np.mean(d_ce)), "pairs": len(d_lat)}
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    d = {"date": date, "lut": args.lut, "fit_json": args.fit_json, "device": setup.device, "backend": setup.backend,
         "resolution": setup.resolution, "latency_model": pred_model.summary(), "affine": aff_info,
         "settings": vars(args), "commands": commands, "search_s": round(search_s, 1),
         "benchmark": "python benchmarks/closed_loop.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
         "loadavg_before": load_before, "loadavg_after": [round(v, 2) for v in os.getloadavg()],
         "measure_s": round(time.monotonic() - t0, 1), "measurement": res.summary(), "runs": runs,
         "summary": summary, "paired_vs_raw": pairs,
         "also_models": {k: {"lut": p, "model": also[k].summary(), **also_figures(runs, k)}
                         for k, p in zip(also, args.also_model)},
         "anchors": {"drift": drift, "ratios": anchor_ratios,
                     "fit_measured_us": {k: n["measured_us"] for k, n in anchors.items()}}}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    stem = out_dir / f"closed_loop-{setup.device}-{setup.backend}-{setup.resolution}-{date}{tag}"
    stem.with_suffix(".json").write_text(json.dumps(d, indent=2, default=str) + "\n")
    lines = [f"# Closed loop — search priced by raw Σ LUT, affine fit, latency model ({setup.backend} "
             f"{setup.resolution} on {setup.device}, {date})", "",
             f"- LUT `{args.lut}`, model {pred_model.model.model_id}; affine a = {aff_info['slope']:.4f}, "
             f"b = {aff_info['constant_us']:.0f} µs on the same {aff_info['fit_networks']} fit networks",
             f"- searches: synthetic data, LAT scope network, {args.epochs} epochs of {args.length} images, batch "
             f"{args.batch_size}, α lr {args.lr_a}, β {betas}, seeds {seeds}; derived networks measured in "
             f"{args.rounds} interleaved rounds; load average before {load_before}, after {d['loadavg_after']}",
             f"- command: `{d['benchmark']}`", "",
             "| pricing | β | seed | final CE | measured ms | raw Σ err | affine err | model err |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        e = r["error"]
        lines.append(f"| {r['pricing']} | {r['beta']:g} | {r['seed']} | {r['final_ce']:.3f} | "
                     f"{r['measured_us'] / 1e3:.2f} | {e['raw'] * 100:+.1f} % | {e['affine'] * 100:+.1f} % | "
                     f"{e['model'] * 100:+.1f} % |")
    lines += ["", "| pricing | mean measured ms | mean final CE | MAPE raw / affine / model on its networks | worst |",
              "|---|---|---|---|---|"]
    for p, s in summary.items():
        m = s["mape_by_predictor"]
        w = s["worst_by_predictor"]
        lines.append(f"| {p} | {s['mean_measured_ms']:.2f} | {s['mean_final_ce']:.3f} | "
                     f"{m['raw']:.1f} / {m['affine']:.1f} / {m['model']:.1f} % | "
                     f"{w['raw']:.1f} / {w['affine']:.1f} / {w['model']:.1f} % |")
    lines += ["", f"- anchors: {len(anchors)} fit networks measured in the same rounds ran at "
              f"{drift:.3f}× (median; {min(anchor_ratios.values()):.3f}–{max(anchor_ratios.values()):.3f}) their "
              "latency during the fit; relative to them (the machine's drift divided out), MAPE / mean signed error "
              "of raw Σ / affine / model over all derived networks: "
              + " / ".join(f"{np.mean([abs(r['error_vs_anchors'][q]) for r in runs]) * 100:.1f} %" for q in PRICINGS)
              + " ; " + " / ".join(f"{np.mean([r['error_vs_anchors'][q] for r in runs]) * 100:+.1f} %" for q in PRICINGS)]
    for k, a in d["also_models"].items():
        lines.append(f"- also predicted by the model of `{a['lut']}` ({a['model']['id']}, prices no search): against "
                     f"this run's measurement MAPE {a['mape']:.1f} %, mean signed {a['signed']:+.1f} %, "
                     f"worst {a['worst']:.1f} %")
    lines.append("")
    for p, s in pairs.items():
        lo, hi = s["latency_change_90ci"]
        lines.append(f"- **{p} vs raw pricing** (same β and seed, {s['pairs']} pairs): measured latency "
                     f"{s['mean_latency_change_vs_raw'] * 100:+.1f} % (90 % bootstrap interval {lo * 100:+.1f} to "
                     f"{hi * 100:+.1f} %), final CE {s['mean_ce_change_vs_raw']:+.3f}")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
