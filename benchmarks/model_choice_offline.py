"""Re-analyse a committed ``latbench fit`` result offline: no timing, only the measurements the
results file holds (issue 17, items 1–3).

For one ``benchmarks/results/latency_model-*.json`` and the LUT it was fitted on, this script
rebuilds every network's LUT rows and asks, on the *same* measured networks:

- **the lottery**: which candidate a single 5-fold split picks, over ``--fold-seeds`` seeds (the
  model choice this project shipped until issue 17), and how often each wins;
- **the robust choice**: repeated grouped cross-validation with the one-standard-error rule and
  bootstrap-supported per-op corrections (:func:`latbench.model.selection.select_and_fit`);
  searched fit networks (key prefix ``fits``) form one group;
- **the ladder on the held-out sets**, each figure with its bootstrap 90 % interval and each rung's
  paired difference to the affine fit: raw Σ, affine, the shipped model (as stored in the results),
  the robust model, and the learned peers (ridge, boosted trees, GCN) trained on the same fit
  networks (:mod:`latbench.model.peers`);
- **what the search sees**: cheapest-op changes between raw and model, and how many a bootstrap
  supports.

Caveat printed with every run: the committed results all share the held-out seed 0 that earlier
decisions were made on; this is a re-analysis, not the fresh-seed check (that is
``benchmarks/latency_model.py`` on a quiet machine). Nothing here is a measurement; the output is
for reading, not for the docs' tables.

    .venv/bin/python benchmarks/model_choice_offline.py \\
        benchmarks/results/latency_model-cpu-amd-epyc-ort-65x129-searchfit20-2026-11-29.json \\
        luts/cpu-epyc-1t-ort-65x129.parquet [--json out.json] [--fold-seeds 20] [--no-peers]

The LUT must be the one the fit used: every network's Σ LUT medians must match the results
file's ``raw_sum_us`` (to 1e-6), else the script stops saying so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from latbench.lut import read_lut
from latbench.model import metrics
from latbench.model.fitting import fit_affine_model, raw_sum
from latbench.model.latency_model import COLUMNS, LatencyModel, ModelScope
from latbench.model.op_changes import cheapest_op_changes, lut_position_rows
from latbench.model.predictor import Predictor
from latbench.model.selection import candidates, grouped_folds, repeated_cv, select_and_fit

HELD_OUT = ("test", "search", "other_searches")


def load(results: Path, lut_path: Path, check: bool = True) -> dict[str, Any]:
    """The results file's measured networks with their rows from ``lut_path``; ``check``: stop
    unless it is the LUT the fit used (``benchmarks/lut_swap_offline.py`` prices with others)."""
    from latbench.model.networks import resolve_setup

    d = json.loads(results.read_text())
    fit = d.get("fit", d)
    scope = ModelScope.from_dict(fit["scope"])
    lut = read_lut(lut_path)
    setup = resolve_setup(lut, (scope.height, scope.width))
    prices = Predictor(lut, ModelScope.of_lut(lut.meta, setup.height, setup.width, setup.batch))
    nets = []
    for n in fit["networks"]:
        if n.get("measured_us") is None:
            continue
        pr = prices.network_rows(setup.space, n["arch"])
        rows = {c: prices.rows(pr, c) for c in COLUMNS}
        raw = raw_sum(rows["median_us"])
        full = prices.raw_sum(setup.space.architecture_rows(n["arch"]))  # results written before folding
        if check and n.get("raw_sum_us") is not None and min(abs(raw - n["raw_sum_us"]), abs(full - n["raw_sum_us"])) > \
                1e-6 * max(1.0, abs(raw)):
            sys.exit(f"Error: {lut_path} is not the LUT this fit used: network {n['key']} sums to {raw:.3f} µs, "
                     f"the results say {n['raw_sum_us']:.3f} µs")
        nets.append({"key": n["key"], "set": n["set"], "y": float(n["measured_us"]), "rows": rows,
                     "from_search": bool(n.get("from_search", str(n["key"]).startswith("fits"))),
                     "source": n.get("source"), "fingerprint": n.get("fingerprint")})
    return {"fit": fit, "scope": scope, "lut": lut, "setup": setup, "nets": nets,
            "overhead": float(fit["overhead_us"]), "shipped": LatencyModel.from_dict(fit["model"]) if fit.get("model") else None}


def span_kinds(D: dict[str, Any]) -> dict[str, str]:
    """Fingerprint → kind of span draw of the fit networks, recomputed as ``latbench fit`` draws
    them (for results written before fit networks recorded their kind as ``source``)."""
    from latbench.model.fit_design import reference_architecture
    from latbench.model.networks import arch_fingerprint, op_costs, span_design

    setup, lut, fit = D["setup"], D["lut"], D["fit"]
    req = fit.get("request") or {}
    if req.get("design") != "span":
        sys.exit("Error: --fit-subset needs a fit with --design span")
    prices = Predictor(lut, ModelScope.of_lut(lut.meta, setup.height, setup.width, setup.batch))
    seed = int(req.get("seed", 0))
    taken = {arch_fingerprint(setup.space, reference_architecture(setup.space, seed))}
    n_search = int(req.get("search_fit_networks") or 0) if req.get("from_search") else 0
    n_main = int(req["fit_networks"]) - n_search
    kinds: list[str] = []
    archs = span_design(setup.space, n_main, seed, taken, lambda a: raw_sum(prices.rows(prices.network_rows(setup.space, a))),
                        op_costs(lut, setup.height, setup.width, setup.batch), kinds=kinds)
    return {arch_fingerprint(setup.space, a): k for a, k in zip(archs, kinds)}


def lottery(rows: dict[str, list], y: np.ndarray, overhead: float, seeds: int) -> dict[str, int]:
    """How often each candidate has the lowest MAPE of one ungrouped 5-fold split."""
    cands = candidates(rows.keys())
    scores, _ = repeated_cv(rows, y, overhead, cands, None, 5, range(seeds))
    return {s.candidate.name: s.wins for s in scores if s.wins}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("lut", type=Path)
    ap.add_argument("--fold-seeds", type=int, default=20, help="seeds of the single-split lottery (default 20)")
    ap.add_argument("--no-peers", action="store_true", help="skip the learned peers (the GCN takes seconds)")
    ap.add_argument("--json", type=Path, help="write everything computed here as JSON")
    ap.add_argument("--fit-subset", metavar="TEXT",
                    help="fit on the fit networks whose kind of draw contains TEXT only (e.g. 'independent' or "
                         "'runs of one op' with --design span): which kind of fit network judges the held-out sets "
                         "better, on measurements of one run")
    a = ap.parse_args(argv)
    for p in (a.results, a.lut):
        if not p.is_file():
            print(f"Error: {p} does not exist", file=sys.stderr)
            return 2
    D = load(a.results, a.lut)
    nets, scope, overhead = D["nets"], D["scope"], D["overhead"]
    fitn = [n for n in nets if n["set"] == "fit"]
    if a.fit_subset:
        if any(n["source"] is None for n in fitn):
            kinds = span_kinds(D)
            for n in fitn:
                n["source"] = n["source"] or kinds.get(n["fingerprint"])
        fitn = [n for n in fitn if a.fit_subset in (n["source"] or "")]
        if len(fitn) < 8:
            print(f"Error: {len(fitn)} fit networks match --fit-subset {a.fit_subset!r}; need at least 8", file=sys.stderr)
            return 2
    y = np.array([n["y"] for n in fitn])
    rows = {c: [n["rows"][c] for n in fitn] for c in COLUMNS}
    groups = ["search" if n["from_search"] else n["key"] for n in fitn]
    out: dict[str, Any] = {"results": str(a.results), "lut": str(a.lut), "fit_networks": len(fitn),
                           "fit_subset": a.fit_subset,
                           "caveat": (f"held-out sets of the committed run (test seed {D['fit'].get('request', {}).get('test_seed', 0)}), "
                                      "read again: a re-analysis of one run's measurements, not a fresh-seed check")}
    out["lottery"] = lottery(rows, y, overhead, a.fold_seeds)
    model, sel = select_and_fit(rows, y, scope, overhead, groups=groups)
    out["selection"] = sel.to_dict()
    ladder: dict[str, Any] = {
        "raw": lambda n: raw_sum(n["rows"]["median_us"]),
        "affine (OLS)": (lambda f: lambda n: float(f.apply(raw_sum(n["rows"]["median_us"]))))(
            metrics.fit_affine([raw_sum(r) for r in rows["median_us"]], y)),
        "affine": (lambda m: lambda n: m.predict_rows(n["rows"][m.column]))(fit_affine_model(rows["median_us"], y, scope)),
        "shipped model": lambda n: D["shipped"].predict_rows(n["rows"][D["shipped"].column]),
        f"robust model ({sel.chosen.name})": lambda n: model.predict_rows(n["rows"][model.column]),
    }
    if not a.no_peers:
        from latbench.model.peers import peer_ladder

        for k, f in peer_ladder(rows["median_us"], y).items():
            ladder[k] = (lambda f: lambda n: f(n["rows"]))(f)
    out["sets"] = {}
    for s in HELD_OUT:
        held = [n for n in nets if n["set"] == s]
        if len(held) < 3:
            continue
        m = [n["y"] for n in held]
        preds = {k: [f(n) for n in held] for k, f in ladder.items()}
        diffs = metrics.paired_rung_differences(preds, m, against=("affine", "raw"))
        out["sets"][s] = {k: {"figures": metrics.bootstrap_set_metrics(p, m), **diffs[k]} for k, p in preds.items()}
    setup = D["setup"]
    raw_pos = lut_position_rows(D["lut"], setup.space, setup.height, setup.width, setup.batch)
    mod_pos = lut_position_rows(D["lut"], setup.space, setup.height, setup.width, setup.batch, model.column)
    ch = cheapest_op_changes(raw_pos, model, sel.bootstrap_models, model_rows_per_position=mod_pos)
    out["cheapest_op_changes"] = {k: v for k, v in ch.items() if k != "per_edge"}

    def f(v: Any, p: int = 2) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"

    print(f"{a.results.name}: {len(fitn)} fit networks; {out['caveat']}")
    print(f"single 5-fold split, {a.fold_seeds} seeds, winners: "
          + ", ".join(f"{k} {v}×" for k, v in sorted(out["lottery"].items(), key=lambda t: -t[1])))
    print(f"robust choice: {sel.chosen.name} (best {sel.best.name}, threshold {sel.threshold:.3f} %, {sel.grouping}); "
          f"tied groups: {', '.join(sel.tied) or 'none'}")
    for s, rungs in out["sets"].items():
        print(f"\n{s}: MAPE [90 %]    worst    τ [90 %]    ΔMAPE vs affine [90 %]")
        for k, r in rungs.items():
            fg, va = r["figures"], r.get("vs affine", {}).get("mape")
            vs = f"{f(va['value'])} [{f(va['lo'])}, {f(va['hi'])}]" if va else ""
            print(f"  {k:34s} {f(fg['mape']['value'])} [{f(fg['mape']['lo'])}, {f(fg['mape']['hi'])}]  "
                  f"{f(fg['worst']['value'])}  {f(fg['kendall_tau']['value'])} [{f(fg['kendall_tau']['lo'])}, "
                  f"{f(fg['kendall_tau']['hi'])}]  {vs}")
    c = out["cheapest_op_changes"]
    print(f"\ncheapest op: {c['changed']} of {c['edges']} edges change between raw and model, "
          f"{c['supported']} supported by the bootstrap; median per-edge τ {f(c['median_edge_tau'])}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
