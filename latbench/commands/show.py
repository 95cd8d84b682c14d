"""``latbench show LUT``: provenance, coverage and the slowest entries of a LUT."""

from __future__ import annotations

import json
import math
from typing import Any

import click


def summarize_lut(lut, top: int = 10, space: Any = None) -> dict[str, Any]:
    """A JSON-able report of ``lut`` (see :func:`show`)."""
    df = lut.df
    meta = lut.meta
    dev = meta.get("device") or {}
    report: dict[str, Any] = {
        "name": meta.get("name"),
        "schema_version": meta.get("schema_version"),
        "space": meta.get("space"),
        "device": dev,
        "versions": meta.get("versions"),
        "backend": meta.get("backend"), "precision": meta.get("precision"), "batch": meta.get("batch"),
        "cache": meta.get("cache"), "protocol": meta.get("protocol"), "host": meta.get("host"),
        "created": meta.get("created"), "updated": meta.get("updated"), "complete": meta.get("complete"),
        "calibration": meta.get("calibration"),
        "precision_mode": meta.get("precision_mode"),
        "latency_models": _models(meta),
        "canary": (meta.get("build") or {}).get("canary") if isinstance(meta.get("build"), dict) else None,
        "counts": lut.counts(),
    }
    cov = []
    if len(df):
        g = df.groupby(["height", "width", "kind", "stage"], sort=True, dropna=False)
        for (h, w, kind, stage), part in g:
            st = part["status"].value_counts()
            cov.append({"resolution": f"{int(h)}x{int(w)}", "kind": kind, "stage": stage,
                        "positions": int(part["position"].nunique()), "rows": len(part),
                        "ok": int(st.get("ok", 0)), "failed": int(st.get("failed", 0)),
                        "analytic": int(st.get("analytic", 0)),
                        "sum_median_us": float(part.loc[part["status"] == "ok", "median_us"].sum())})
    report["coverage"] = cov
    if space is not None:
        report["missing"] = {}
        for h, w in lut.resolutions():
            c = lut.coverage(space, h, w, int(meta.get("batch") or 1))
            report["missing"][f"{h}x{w}"] = {"expected": c.expected, "present": c.present,
                                            "missing": [list(x) for x in c.missing],
                                            "failed": [list(x) for x in c.failed]}
    ok = df[df["status"] == "ok"].drop_duplicates(subset=["key"]).sort_values("median_us", ascending=False)
    report["slowest"] = [
        {"key": r["key"], "op": r["op"], "median_us": float(r["median_us"]), "p10_us": _f(r["p10_us"]),
         "p90_us": _f(r["p90_us"]), "noise": _f(r["noise"]), "samples": int(r["samples"]),
         "rows": int((df["key"] == r["key"]).sum())}
        for _, r in ok.head(top).iterrows()
    ]
    failed = df[df["status"] == "failed"].drop_duplicates(subset=["key"])
    report["failed"] = [{"key": r["key"], "error": r["error"]} for _, r in failed.iterrows()]
    report["flagged"] = _flagged(lut)
    report["plausibility"] = meta.get("plausibility")
    return report


def _flagged(lut) -> list[dict[str, Any]]:
    """The distinct timings flagged by the build (contended or implausible, DESIGN §5.11), with
    the load recorded around them."""
    from latbench.lut.flags import flagged_rows
    from latbench.timing.load import LOAD_COLUMNS

    out = []
    for _, r in flagged_rows(lut).drop_duplicates(subset=["key"]).iterrows():
        d = {"key": r["key"], "median_us": _f(r["median_us"]), "flag": str(r["flag"]),
             "measured_at": r.get("measured_at")}
        d.update({c: (_f(r[c]) if c in r else None) for c in LOAD_COLUMNS})
        out.append(d)
    return out


def _models(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Summaries of the LUT's latency models (``latbench fit``), with their held-out figures."""
    from latbench.model.latency_model import stored_models

    out = []
    for m in stored_models(meta):
        d = m.summary()
        d["held_out"] = dict(m.provenance).get("held_out")
        out.append(d)
    return out


def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _print_report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal:
        con = Console(width=200)
    dev = r["device"] or {}
    v = r["versions"] or {}
    sp = r["space"] or {}
    con.print(f"[bold]LUT {r['name']}[/]  (schema {r['schema_version']}, "
              f"{'complete' if r['complete'] else 'INCOMPLETE'})")
    con.print(f"  device:   {dev.get('name')} ({dev.get('type')}"
              + (f", cc {dev['compute_capability']}" if dev.get("compute_capability") else "")
              + (f", driver {dev['driver']}" if dev.get("driver") else "")
              + (f", {dev['threads']} threads" if dev.get("threads") else "") + f") on {r['host']}")
    con.print("  versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None))
    con.print(f"  space:    {sp.get('name')} v{sp.get('version')} {json.dumps(sp.get('config'), sort_keys=True)}")
    con.print(f"  timing:   backend {r['backend']}, {r['precision']}, batch {r['batch']}, cache {r['cache']}; "
              + ", ".join(f"{k}={val}" for k, val in (r["protocol"] or {}).items()))
    con.print(f"  created {r['created']}, updated {r['updated']}")
    if r.get("precision_mode"):
        con.print(f"  precision mode: {r['precision_mode']}")
    if r.get("calibration"):
        con.print(f"  calibration: {json.dumps(r['calibration'])}")
    for m in r.get("latency_models") or []:
        held = "; ".join(f"{k}: MAPE {v.get('mape', 0):.2f} %, worst {v.get('worst', 0):.2f} %, τ {v.get('kendall_tau') or 0:.3f}"
                         f" (n={v.get('n')})" for k, v in (m.get("held_out") or {}).items())
        con.print(f"  latency model {m['id']}: {m['scope']}; {m['group_by']} groups, column {m['column']}, overhead "
                  f"{m['overhead_us']:.2f} µs, constant {m['constant_us']:.1f} µs; fitted on {m['fitted_on']} networks "
                  f"{m['fitted_at']}" + (f"; held out: {held}" if held else ""))
    if r.get("canary"):
        cy = r["canary"]
        con.print(f"  canary {cy.get('key')}: baseline {cy.get('baseline_us', 0):.2f} µs, {cy.get('checks')} checks, "
                  f"{len(cy.get('drift_events') or [])} drift event(s), {cy.get('retimed')} entries re-timed")
    c = r["counts"]
    con.print(f"  rows {c['rows']}: ok {c['ok']}, failed {c['failed']}, analytic {c['analytic']}; "
              f"distinct timings {c['distinct_timings']} (deduplication shares each across "
              f"{c['rows'] - c['analytic']} timed rows)")
    t = Table(title="coverage", title_justify="left")
    for col in ("resolution", "kind", "stage", "positions", "rows", "ok", "failed", "analytic", "Σ median µs"):
        t.add_column(col, justify="right" if col not in ("resolution", "kind", "stage") else "left")
    for row in r["coverage"]:
        t.add_row(row["resolution"], str(row["kind"]), str(row["stage"]), str(row["positions"]), str(row["rows"]),
                  str(row["ok"]), str(row["failed"]), str(row["analytic"]), f"{row['sum_median_us']:.1f}")
    con.print(t)
    for res, m in (r.get("missing") or {}).items():
        con.print(f"  {res}: {m['present']}/{m['expected']} present, {len(m['missing'])} missing, "
                  f"{len(m['failed'])} failed" + (f"; first missing {m['missing'][:3]}" if m["missing"] else ""))
    t = Table(title=f"slowest {len(r['slowest'])} distinct entries", title_justify="left")
    for col in ("key", "median µs", "p10", "p90", "noise", "samples", "rows"):
        t.add_column(col, justify="left" if col == "key" else "right")
    for s in r["slowest"]:
        t.add_row(s["key"], f"{s['median_us']:.2f}", f"{s['p10_us'] or 0:.2f}", f"{s['p90_us'] or 0:.2f}",
                  f"{(s['noise'] or 0) * 100:.2f}%", str(s["samples"]), str(s["rows"]))
    con.print(t)
    for f in r["failed"][:20]:
        con.print(f"  [red]failed[/] {f['key']}: {f['error']}")
    flagged = r.get("flagged") or []
    if flagged:
        con.print(f"  {len(flagged)} flagged timing(s): fit and nas search refuse them until re-timed "
                  "(latbench build-lut <same options> --retry-flagged, on a quieter machine)")
    for f in flagged[:20]:
        con.print(f"  [yellow]flagged[/] {f['key']} ({f['median_us'] or 0:.1f} µs): {f['flag']}", markup=True,
                  highlight=False)


@click.command("show")
@click.argument("lut_path", metavar="LUT")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0), help="How many slowest entries.")
@click.option("--space", "space_name", default=None,
              help="Also list what is missing against this space (built with the LUT's own space config).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def show(lut_path, top, space_name, as_json) -> None:
    """Print a LUT's provenance, coverage per position kind / stage and resolution, and its
    slowest entries."""
    from latbench.lut.table import read_lut
    from latbench.space import load_space

    lut = read_lut(lut_path)
    space = None
    if space_name:
        space = load_space(space_name, ((lut.meta.get("space") or {}).get("config")) or {})
    report = summarize_lut(lut, top=top, space=space)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report)
