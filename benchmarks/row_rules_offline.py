"""Which rows does a fusing backend run? Three ways to count a network's LUT rows, judged offline on
the measurements of committed ``latbench fit`` results (no timing).

    python benchmarks/row_rules_offline.py LUT RESULT.json [RESULT.json ...] [--out-dir DIR --name NAME]

For every result (all measured on ``LUT``'s backend and resolution), each network's LUT sum is
taken three ways — ``every row`` (eager backends), ``weightless folded`` (dead rows and the rows
without weights on constants left out, the constant stopping at the first op with weights: the
`compile` rule since 2026-12-04; since that evening the stem counts as dead when cells 0 and 1 read it
through ``zero`` edges only) and ``all folded`` (every row on constants left out: the `ort` /
`trt` rule) — and an affine a·Σ + b is fitted by least squares on the result's fit networks. Reported
per rule and result: leave-one-out MAPE and worst error on the fit networks (what a decision may use),
then MAPE, worst and mean signed error on each held-out set (what judges it), with a bootstrap 90 %
interval of the MAPE difference to ``every row`` over networks (paired). Also the agreement of the
results' measurements of the networks they share (the same fit networks, in runs with the same fit
seed): median and p10–p90 of the ratios, to tell the machine from the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RULES = ("every row", "weightless folded", "all folded")


def _sums(space, lut, arch, h, w, batch):
    rows = list(space.architecture_rows(arch))
    folded = {"every row": set(),
              "weightless folded": space.folded_positions(arch, weights_are_constants=False),
              "all folded": space.folded_positions(arch, weights_are_constants=True)}
    out = {}
    for rule, skip in folded.items():
        total = 0.0
        for pos, op in rows:
            if pos in skip:
                continue
            v = lut.lookup(pos, op, h, w, batch)
            if v is None:
                raise SystemExit(f"Error: the LUT has no row {pos}:{op} at {h}x{w}")
            total += v
        out[rule] = total
    return out


def _boot_diff(e_rule, e_base, n_boot=2000, seed=0):
    """Paired bootstrap 90 % interval of MAPE(rule) − MAPE(every row), in percentage points."""
    a, b = 100 * np.abs(e_rule), 100 * np.abs(e_base)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    d = a[idx].mean(1) - b[idx].mean(1)
    return float(a.mean() - b.mean()), float(np.percentile(d, 5)), float(np.percentile(d, 95))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lut", type=Path)
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.json and NAME.md here")
    ap.add_argument("--name", default=None, help="output name (default row_rules-<backend>-<date>)")
    a = ap.parse_args(argv)
    for p in [a.lut, *a.results]:
        if not p.is_file():
            print(f"Error: no such file: {p}", file=sys.stderr)
            return 2

    from latbench.lut.table import read_lut
    from latbench.model.metrics import fit_affine
    from latbench.model.networks import resolve_setup

    lut = read_lut(a.lut)
    setup = resolve_setup(lut)
    h, w, batch = setup.height, setup.width, setup.batch
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "lut": str(a.lut),
              "backend": setup.backend, "resolution": f"{h}x{w}",
              "command": " ".join(["benchmarks/row_rules_offline.py", *(argv if argv is not None else sys.argv[1:])]),
              "results": {}}
    measured_by_run = {}
    for path in a.results:
        d = json.loads(path.read_text())
        nets = [n for n in d["networks"] if n.get("measured_us")]
        sets = sorted({n["set"] for n in nets}, key=lambda s: (s != "fit", s))
        y = np.array([n["measured_us"] for n in nets])
        s = np.array([n["set"] for n in nets])
        sums = [_sums(setup.space, lut, n["arch"], h, w, batch) for n in nets]
        measured_by_run[path.name] = {n["fingerprint"]: n["measured_us"] for n in nets if n["set"] == "fit"}
        fit = s == "fit"
        run = {"spread": d.get("measurement", {}).get("reference_p10_p90_spread"), "rules": {}}
        errs = {}
        for rule in RULES:
            x = np.array([v[rule] for v in sums])
            aff = fit_affine(x[fit], y[fit])
            pred = aff.a * x + aff.b
            e = pred / y - 1
            loo_e = np.asarray(aff.loo_predictions) / y[fit] - 1  # leave-one-out on the fit networks
            r = {"a": aff.a, "b": aff.b, "fit_loo_mape": float(100 * np.abs(loo_e).mean()),
                 "fit_loo_median": float(100 * np.median(np.abs(loo_e))), "fit_loo_worst": float(100 * np.abs(loo_e).max())}
            for st in sets:
                if st == "fit":
                    continue
                m = s == st
                r[st] = {"n": int(m.sum()), "mape": float(100 * np.abs(e[m]).mean()),
                         "worst": float(100 * np.abs(e[m]).max()), "signed": float(100 * e[m].mean())}
            errs[rule] = e
            run["rules"][rule] = r
        for rule in RULES[1:]:
            for st in sets:
                if st == "fit":
                    continue
                m = s == st
                run["rules"][rule][st]["vs_every_row_pp"] = _boot_diff(errs[rule][m], errs["every row"][m])
        report["results"][path.name] = run
    names = list(measured_by_run)
    agree = {}
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            common = sorted(set(measured_by_run[p]) & set(measured_by_run[q]))
            if len(common) >= 5:
                r = np.array([measured_by_run[q][k] / measured_by_run[p][k] for k in common])
                agree[f"{q} / {p}"] = {"n": len(common), "median": float(np.median(r)),
                                       "p10": float(np.percentile(r, 10)), "p90": float(np.percentile(r, 90))}
    report["measurement_agreement"] = agree

    lines = [f"# Which rows run: three ways to count, judged offline ({setup.backend}, {h}x{w}, {report['date']})", "",
             f"Command: `{report['command']}`. Affine a·Σ + b fitted on each result's fit networks; LOO on the fit "
             "networks; held-out sets judged once. Interval: paired bootstrap 90 % of the MAPE difference to "
             "`every row` (pp).", ""]
    for run_name, run in report["results"].items():
        spread = run["spread"]
        lines += [f"## {run_name} (reference spread {spread:.0%})" if spread is not None else f"## {run_name}", "",
                  "| rule | fit LOO MAPE (median, worst) | " + " | ".join(
                      k for k in run["rules"]["every row"] if isinstance(run["rules"]["every row"][k], dict)) + " |",
                  "|---|---|" + "---|" * sum(isinstance(v, dict) for v in run["rules"]["every row"].values())]
        for rule, r in run["rules"].items():
            cells = []
            for k, v in r.items():
                if not isinstance(v, dict):
                    continue
                c = f"{v['mape']:.2f} % (worst {v['worst']:.1f}, signed {v['signed']:+.1f})"
                if "vs_every_row_pp" in v:
                    dv, lo, hi = v["vs_every_row_pp"]
                    c += f"; {dv:+.2f} pp [{lo:+.2f}, {hi:+.2f}]"
                cells.append(c)
            lines.append(f"| {rule} | {r['fit_loo_mape']:.2f} % ({r['fit_loo_median']:.2f}, {r['fit_loo_worst']:.1f}) | "
                         + " | ".join(cells) + " |")
        lines.append("")
    if agree:
        lines += ["## The same fit networks measured in different runs", "",
                  "| runs | networks | median ratio | p10 | p90 |", "|---|---:|---:|---:|---:|"]
        for k, v in agree.items():
            lines.append(f"| {k} | {v['n']} | {v['median']:.3f} | {v['p10']:.3f} | {v['p90']:.3f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.out_dir is not None:
        name = a.name or f"row_rules-{setup.backend}-{h}x{w}-{report['date']}"
        a.out_dir.mkdir(parents=True, exist_ok=True)
        (a.out_dir / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
        (a.out_dir / f"{name}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
