"""Do two measuring runs agree on the same networks? (issue 17: what a held-out figure from
*another* run can claim.)

    python benchmarks/rerun_agreement.py CLOSED_LOOP.json FIT.json [--out FILE.md]

``CLOSED_LOOP.json`` is a ``benchmarks/closed_loop.py`` result (derived networks and anchor fit
networks measured in one run); ``FIT.json`` a ``latbench fit --json`` result whose sets hold some
of the same architectures (e.g. the derived networks as ``--test-search``, the anchors as fit
networks). Every architecture measured in both runs is matched by its JSON; for each, the ratio
of its latency in the fit's run to its latency in the closed loop's run. If the machine only
drifted, every ratio is the same; the spread of the ratios, and the shift of the derived networks
against the fit networks, is how far a figure measured in one run can be trusted in another.
Nothing is timed here: it reads two results files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _key(arch: dict) -> str:
    return json.dumps({k: arch[k] for k in sorted(arch) if k in ("cells", "fusion")} or arch, sort_keys=True)


def agreement(closed: dict, fit: dict) -> dict:
    in_fit = {_key(n["arch"]): n for n in fit["networks"] if n.get("measured_us")}
    derived = []
    for r in closed["runs"]:
        n = in_fit.get(_key(r["arch"]))
        if n is not None:
            derived.append({"name": f"{r['pricing']}-b{r['beta']:g}-s{r['seed']}", "set": n["set"],
                            "ratio": n["measured_us"] / r["measured_us"]})
    d = np.array([x["ratio"] for x in derived])
    out = {"derived_matched": len(derived), "derived": derived}
    if len(d):
        rng = np.random.default_rng(0)
        boots = [float(np.median(rng.choice(d, len(d)))) for _ in range(2000)]
        out.update({"median_ratio": float(np.median(d)), "median_ratio_90ci": [float(np.percentile(boots, 5)),
                                                                                float(np.percentile(boots, 95))],
                    "min_ratio": float(d.min()), "max_ratio": float(d.max()),
                    "spread_p10_p90": float(np.percentile(d, 90) - np.percentile(d, 10))})
    return out


def anchor_ratios(closed: dict, closed_fit: dict, fit: dict) -> list[float]:
    """Ratios (fit run / closed-loop run) of the closed loop's anchors found in ``fit``."""
    by_lat = {round(n["measured_us"], 3): n for n in closed_fit["networks"] if n.get("measured_us")}
    in_fit = {_key(n["arch"]): n for n in fit["networks"] if n.get("measured_us")}
    out = []
    for k, us in closed["anchors"]["fit_measured_us"].items():
        src = by_lat.get(round(us, 3))
        if src is None:
            continue
        n = in_fit.get(_key(src["arch"]))
        if n is not None:
            out.append(n["measured_us"] / (us * closed["anchors"]["ratios"][k]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("closed_loop")
    ap.add_argument("fit")
    ap.add_argument("--out", help="write the summary as Markdown here too")
    args = ap.parse_args(argv)
    closed = json.loads(Path(args.closed_loop).read_text())
    fit = json.loads(Path(args.fit).read_text())
    res = agreement(closed, fit)
    closed_fit = json.loads(Path(closed["fit_json"]).read_text()) if Path(closed["fit_json"]).exists() else None
    anc = anchor_ratios(closed, closed_fit, fit) if closed_fit else []
    lines = [f"# Re-run agreement: {args.closed_loop} vs {args.fit}", "",
             f"- derived networks measured in both runs: {res['derived_matched']}"]
    if res["derived_matched"]:
        lo, hi = res["median_ratio_90ci"]
        lines.append(f"- their latency in the fit's run ÷ in the closed loop's run: median {res['median_ratio']:.3f} "
                     f"[{lo:.3f}, {hi:.3f}], range {res['min_ratio']:.3f}–{res['max_ratio']:.3f}, p10–p90 spread "
                     f"{res['spread_p10_p90']:.3f}")
    if anc:
        lines.append(f"- the closed loop's anchor (fit) networks, same ratio: median {np.median(anc):.3f}, range "
                     f"{min(anc):.3f}–{max(anc):.3f} ({len(anc)} networks)")
        if res["derived_matched"]:
            lines.append(f"- derived networks against the anchors: {res['median_ratio'] / np.median(anc) - 1:+.1%} "
                         "(0 if the two runs agree up to a drift of the machine)")
    lines += ["", "| network | set in the fit | ratio |", "|---|---|---|"]
    lines += [f"| {x['name']} | {x['set']} | {x['ratio']:.3f} |" for x in res["derived"]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps({**res, "anchor_ratios": anc,
                                                                   "inputs": [args.closed_loop, args.fit]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
