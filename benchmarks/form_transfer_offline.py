"""Which model form carries over to other searches' networks, and could the fit data have told?
Committed ``latbench fit`` results re-analysed offline (no timing).

    python benchmarks/form_transfer_offline.py RESULT.json=LUT [RESULT.json=LUT ...] \\
        [--closed-loop RESULT.json=CLOSED_LOOP.json ...] [--out-dir DIR --name NAME]

For every result (with the LUT it was fitted on), on its own fit networks:

- **cross-validation per kind of fit network**: every candidate's repeated-CV MAPE (the fit's own
  folds, :func:`latbench.model.selection.repeated_cv`) over all fit networks and over each kind the
  fit networks record (``source``: span draws with independent edges, span draws with runs of one
  op, draws from a search's α); the kind of networks a search derives is the runs-of-one-op kind;
- **the rules**: the one-standard-error rule ``latbench fit`` uses, and two alternatives — the same
  rule on the worst kind's CV MAPE (a model must predict every kind it was fitted on), and the chosen
  per-group form shrunk half-way to the global form (the average of the two models' row costs,
  still additive);

then every rule's model and the rungs global / affine judged on the result's held-out sets
(MAPE, worst, mean signed error) and, with ``--closed-loop RESULT.json=CLOSED_LOOP.json``, on the
derived networks of a ``benchmarks/closed_loop.py`` run made with that fit's LUT (each network's
measurement relative to the anchors measured beside it, as the closed loop reports it).

The held-out sets of committed results have been read before; this says whether a rule *would* have
done better on networks already seen, not how it generalises — a rule adopted from it must be
judged on fresh searches.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # model_choice_offline, a sibling script

N_BOOT = 200  # bootstrap resamples for per-group support: the fit's default, so that the fit's model is reproduced
STICKY = "runs of one op"


def kind_of(net: dict[str, Any]) -> str:
    """The fit network's kind from its ``source`` (results of 2026-12-04 on record it)."""
    src = str(net.get("source") or "")
    if net.get("from_search"):
        return "search α"
    if STICKY in src:
        return "runs of one op"
    return "independent edges" if "span" in src else "uniform"


def _errors(model: Any, nets: list[dict[str, Any]]) -> np.ndarray:
    return np.array([model.predict_rows(n["rows"][model.column]) / n["y"] - 1 for n in nets])


def _blend(a: Any, b: Any, nets: list[dict[str, Any]]) -> np.ndarray:
    pa = np.array([a.predict_rows(n["rows"][a.column]) for n in nets])
    pb = np.array([b.predict_rows(n["rows"][b.column]) for n in nets])
    return 0.5 * (pa + pb) / np.array([n["y"] for n in nets]) - 1


def _figures(e: np.ndarray) -> dict[str, float]:
    return {"n": int(e.size), "mape": float(100 * np.abs(e).mean()), "worst": float(100 * np.abs(e).max()),
            "signed": float(100 * e.mean())}


def closed_loop_nets(D: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """A closed loop's derived networks as held-out networks of set ``closed loop <stem>``: rows
    from the fit's LUT, the measurement divided by the anchors' drift (so that an error here is the
    closed loop's ``error_vs_anchors``)."""
    from latbench.model.latency_model import COLUMNS, ModelScope
    from latbench.model.predictor import Predictor

    d = json.loads(path.read_text())
    lut, setup = D["lut"], D["setup"]
    prices = Predictor(lut, ModelScope.of_lut(lut.meta, setup.height, setup.width, setup.batch))
    drift = float(d["anchors"]["drift"])
    out = []
    for r in d["runs"]:
        pr = prices.network_rows(setup.space, r["arch"])
        out.append({"key": f"{r['pricing']}-b{r['beta']:g}-s{r['seed']}", "set": f"closed loop {path.stem}",
                    "y": float(r["measured_us"]) / drift, "rows": {c: prices.rows(pr, c) for c in COLUMNS},
                    "from_search": False, "source": None})
    return out


def analyse(result_path: Path, lut_path: Path, closed_loops: list[Path] = ()) -> dict[str, Any]:
    from latbench.model.selection import candidates, one_standard_error, repeated_cv, select_and_fit
    from model_choice_offline import load

    D = load(result_path, lut_path)
    nets = D["nets"] + [n for cl in closed_loops for n in closed_loop_nets(D, cl)]
    fit = [n for n in nets if n["set"] == "fit"]
    if not any(n.get("source") for n in fit) and (D["fit"].get("request") or {}).get("design") == "span":
        from model_choice_offline import span_kinds  # a fit written before fit networks recorded their kind

        kinds_by_fp = span_kinds(D)
        for n in fit:
            n["source"] = kinds_by_fp.get(n.get("fingerprint"))
    y = np.array([n["y"] for n in fit])
    rows = {c: [n["rows"][c] for n in fit] for c in fit[0]["rows"]}
    groups = ["search" if n["from_search"] else f"u{i}" for i, n in enumerate(fit)]
    kinds = np.array([kind_of(n) for n in fit])
    cands = candidates(rows.keys())
    scores, errs = repeated_cv(rows, y, D["overhead"], cands, groups)
    per_net = errs.mean(axis=1)  # (candidates, networks), averaged over fold seeds
    cv = {s.candidate.name: {"all": s.mape, **{k: float(100 * per_net[ci][kinds == k].mean())
                                               for k in sorted(set(kinds))}}
          for ci, s in enumerate(scores)}
    chosen = one_standard_error(scores)[0].candidate
    # the worst-kind rule: the same one-SE rule on each candidate's worst kind
    worst = [float(max(100 * per_net[ci][kinds == k].mean() for k in set(kinds))) for ci in range(len(cands))]
    b = int(np.argmin(worst))
    se = float(100 * per_net[b].std(ddof=1) / np.sqrt(per_net.shape[1]))
    worst_kind = min((c for ci, c in enumerate(cands) if worst[ci] <= worst[b] + se
                      and (ci == b or c.kind not in ("raw", "overhead"))), key=lambda c: c.complexity)

    def model_of(c: Any) -> Any:
        return select_and_fit(rows, y, D["scope"], D["overhead"], cands=[c], groups=groups, n_boot=N_BOOT)[0]

    by_name = {c.name: c for c in cands}
    models = {name: model_of(by_name[name]) for name in dict.fromkeys([chosen.name, worst_kind.name, "global", "affine"])}
    held = sorted({n["set"] for n in nets} - {"fit"})
    rungs: dict[str, dict[str, Any]] = {}
    labels = {"one-SE rule (the fit's)": chosen.name, "worst-kind rule": worst_kind.name, "global": "global",
              "affine": "affine"}
    for label, name in labels.items():
        rungs[label] = {"model": name, **{st: _figures(_errors(models[name], [n for n in nets if n["set"] == st]))
                                          for st in held}}
    rungs["one-SE, shrunk half-way to global"] = {
        "model": f"½ {chosen.name} + ½ global",
        **{st: _figures(_blend(models[chosen.name], models["global"], [n for n in nets if n["set"] == st]))
           for st in held}}
    return {"result": str(result_path), "lut": str(lut_path), "fit_networks": len(fit),
            "kinds": {k: int(np.sum(kinds == k)) for k in sorted(set(kinds))}, "cv": cv, "rungs": rungs}


def markdown(results: list[dict[str, Any]], command: str) -> str:
    out = ["# Model form on other searches: could the fit data have told? (offline)", "",
           f"- {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; no timing, committed measurements only",
           f"- command: `{command}`",
           "- held-out sets below were all read before: a diagnostic, not a judgement", ""]
    for r in results:
        name = Path(r["result"]).name
        kinds = sorted(r["kinds"])
        out += [f"## {name}", "", f"LUT `{r['lut']}`; fit networks: "
                + ", ".join(f"{r['kinds'][k]} {k}" for k in kinds), "",
                "| rule or rung | model | " + " | ".join(f"{st}: MAPE / worst / signed" for st in r["rungs"]["global"]
                                                      if st != "model") + " |",
                "|---|---|" + "---:|" * (len(r["rungs"]["global"]) - 1)]
        for label, d in r["rungs"].items():
            cells = [f"{v['mape']:.2f} / {v['worst']:.1f} / {v['signed']:+.1f} %" for st, v in d.items() if st != "model"]
            out.append(f"| {label} | {d['model']} | " + " | ".join(cells) + " |")
        shown = dict.fromkeys([d["model"] for d in r["rungs"].values() if d["model"] in r["cv"]])
        out += ["", "| candidate | CV MAPE all | " + " | ".join(kinds) + " |", "|---|---:|" + "---:|" * len(kinds)]
        for name in shown:
            c = r["cv"][name]
            out.append(f"| {name} | {c['all']:.2f} % | " + " | ".join(f"{c[k]:.2f} %" for k in kinds) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", metavar="RESULT.json=LUT",
                    help="a committed latbench fit result and the LUT it was fitted on")
    ap.add_argument("--closed-loop", action="append", default=[], metavar="RESULT.json=CLOSED_LOOP.json",
                    help="also judge RESULT's models on the derived networks of this benchmarks/closed_loop.py run "
                         "(made with RESULT's LUT); repeatable")
    ap.add_argument("--out-dir", type=Path, help="write NAME.md and NAME.json here")
    ap.add_argument("--name", default="form_transfer-offline")
    args = ap.parse_args(argv)
    results = []
    pairs = {}
    for pair, what in [(p, "RESULT.json=LUT") for p in args.pairs] + \
            [(p, "RESULT.json=CLOSED_LOOP.json") for p in args.closed_loop]:
        a, sep, b = pair.partition("=")
        if not sep:
            print(f"Error: '{pair}' is not {what}", file=sys.stderr)
            return 2
        for p in (a, b):
            if not Path(p).exists():
                print(f"Error: no such file: {p}", file=sys.stderr)
                return 2
        pairs.setdefault(what, []).append((a, b))
    loops: dict[str, list[Path]] = {}
    for res, cl in pairs.get("RESULT.json=CLOSED_LOOP.json", []):
        if res not in dict(pairs["RESULT.json=LUT"]):
            print(f"Error: --closed-loop names {res}, which is not among the RESULT.json=LUT pairs", file=sys.stderr)
            return 2
        loops.setdefault(res, []).append(Path(cl))
    for res, lut in pairs["RESULT.json=LUT"]:
        results.append(analyse(Path(res), Path(lut), loops.get(res, [])))
    command = "python benchmarks/form_transfer_offline.py " + " ".join(args.pairs) + \
        "".join(f" --closed-loop {c}" for c in args.closed_loop)
    text = markdown(results, command)
    print(text)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / f"{args.name}.md").write_text(text + "\n")
        (args.out_dir / f"{args.name}.json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
