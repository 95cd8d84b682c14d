"""Does the LUT decide how well searched networks are predicted? Committed ``latbench fit`` results
re-priced with other LUTs of the same backend and resolution, offline (no timing).

    python benchmarks/lut_swap_offline.py RESULT.json [RESULT.json ...] --luts LUT [LUT ...] \\
        [--span-only] [--out-dir DIR --name NAME]

For every result and every LUT, each measured network's rows are read from that LUT (the rule of the
LUT's backend decides which rows run), the model is chosen and fitted the way ``latbench fit`` does
(:func:`latbench.model.selection.select_and_fit`: repeated grouped CV, one-standard-error rule,
bootstrap-supported corrections; networks drawn from one search's α share a group) on the result's
fit networks, and judged on its held-out sets (MAPE, worst, mean signed error). The measurements
stay the result's own; only the LUT changes. A result's own LUT (the file it names, or one with the
same content) is marked ``*``. ``--span-only`` leaves out fit networks drawn from a search's α (so
that runs with and without them compare). Rows are read by ``model_choice_offline.load``.

The held-out sets of committed results have been read before: the table says which LUT explains
the same measurements better, not how well a model generalises.
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

N_BOOT = 50  # bootstrap resamples for per-group support (the fit's default is 200; the choice rarely moves)


def judge(result_path: Path, lut_path: Path, span_only: bool) -> dict[str, Any]:
    """The model the fit's way on the result's fit networks priced by ``lut_path``; figures per
    held-out set (rows read by :func:`model_choice_offline.load`)."""
    from latbench.model.latency_model import ModelScope
    from latbench.model.selection import select_and_fit
    from model_choice_offline import load

    D = load(result_path, lut_path, check=False)
    nets, lut, setup = D["nets"], D["lut"], D["setup"]
    fit = [n for n in nets if n["set"] == "fit" and not (span_only and n["from_search"])]
    groups = ["search" if n["from_search"] else f"u{i}" for i, n in enumerate(fit)]
    rows = {c: [n["rows"][c] for n in fit] for c in fit[0]["rows"]}
    scope = ModelScope.of_lut(lut.meta, setup.height, setup.width, setup.batch)
    model, sel = select_and_fit(rows, [n["y"] for n in fit], scope, D["overhead"],
                                groups=groups, n_boot=N_BOOT)
    out: dict[str, Any] = {"chosen": sel.chosen.name, "fit_networks": len(fit)}
    for st in sorted({n["set"] for n in nets} - {"fit"}):
        e = np.array([model.predict_rows(n["rows"][model.column]) / n["y"] - 1 for n in nets if n["set"] == st])
        out[st] = {"n": int(e.size), "mape": float(100 * np.abs(e).mean()), "worst": float(100 * np.abs(e).max()),
                   "signed": float(100 * e.mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--luts", type=Path, nargs="+", required=True)
    ap.add_argument("--span-only", action="store_true", help="leave out fit networks drawn from a search's α")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.json and NAME.md here")
    ap.add_argument("--name", default=None, help="output name (default lut_swap-<backend>-<date>)")
    a = ap.parse_args(argv)
    for p in [*a.results, *a.luts]:
        if not p.is_file():
            print(f"Error: no such file: {p}", file=sys.stderr)
            return 2

    from latbench.errors import UserError
    from latbench.files import file_sha256
    from latbench.lut.table import read_lut
    from latbench.model.networks import resolve_setup

    luts = {}  # path -> (backend, height, width); each cell reads its rows itself (judge)
    for p in a.luts:
        try:
            s = resolve_setup(read_lut(p))
        except UserError as exc:
            print(f"Error: {p}: {exc}", file=sys.stderr)
            return 2
        luts[str(p)] = (s.backend, s.height, s.width)
    shas = {p: file_sha256(p) for p in luts}
    backends = set(luts.values())
    if len(backends) != 1:
        print(f"Error: the LUTs differ in backend or resolution: {sorted(backends)}", file=sys.stderr)
        return 2
    backend, h, w = backends.pop()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    report: dict[str, Any] = {"date": date, "backend": backend, "resolution": f"{h}x{w}", "span_only": a.span_only,
                              "command": " ".join(["benchmarks/lut_swap_offline.py",
                                                   *(argv if argv is not None else sys.argv[1:])]),
                              "results": {}}
    for path in a.results:
        d = json.loads(path.read_text())
        if d.get("scope", {}).get("backend", backend) != backend:
            print(f"Error: {path} was measured on {d['scope']['backend']}, the LUTs are {backend}", file=sys.stderr)
            return 2
        own = d.get("lut")
        if own and Path(own).is_file():  # the same file under another path counts as the own LUT
            mine = file_sha256(own)
            same = [p for p in luts if shas[p] == mine]
            own = same[0] if same else own
        report["results"][path.name] = {"own_lut": own,
                                        "by_lut": {p: judge(path, Path(p), a.span_only) for p in luts}}
    text = _markdown(report)
    print(text)
    if a.out_dir is not None:
        name = a.name or f"lut_swap-{backend}-{date}"
        a.out_dir.mkdir(parents=True, exist_ok=True)
        (a.out_dir / f"{name}.json").write_text(json.dumps(report, indent=1))
        (a.out_dir / f"{name}.md").write_text(text)
    return 0


def _markdown(report: dict[str, Any]) -> str:
    luts = list(next(iter(report["results"].values()))["by_lut"])
    lines = [f"# Does the LUT decide? Fits re-priced with other LUTs ({report['backend']}, {report['resolution']}, "
             f"{report['date']})", "",
             f"Command: `{report['command']}`. Each cell: the model chosen the fit's way on the result's fit networks "
             f"{'(span networks only) ' if report['span_only'] else ''}priced by that LUT, judged on the result's "
             "held-out sets (already read before: a comparison of LUTs on the same measurements, not a "
             "generalisation claim). Own LUT marked *.", "", "LUTs: " + ", ".join(f"L{i} `{p}`" for i, p in enumerate(luts)),
             ""]
    for st in ("other_searches", "test"):
        lines += [f"## {st}: MAPE % (worst, mean signed; chosen)", "",
                  "| result | " + " | ".join(f"L{i}" for i in range(len(luts))) + " |",
                  "|---|" + "---|" * len(luts)]
        for name, r in report["results"].items():
            cells = []
            for p in luts:
                j = r["by_lut"][p]
                own = "*" if r["own_lut"] and Path(r["own_lut"]).resolve() == Path(p).resolve() else ""
                f = j.get(st)
                cells.append("–" if f is None else f"{own}{f['mape']:.2f} ({f['worst']:.1f}, {f['signed']:+.1f}; {j['chosen']})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
