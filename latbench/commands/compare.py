"""``latbench compare-lut``: compare LUTs against a baseline (terminal, Markdown, PNG, JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import click

from latbench.errors import UserError


def _rel(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(target.resolve(), start.resolve().parent)
    except ValueError:  # other drive (Windows)
        return str(target)


def print_terminal(c, max_flips: int = 15) -> None:
    """Rich tables: provenance (differing fields), a summary and, per pair, stages, ops and flips."""
    from rich.console import Console
    from rich.table import Table

    from latbench.lut.flips import iter_flipped
    from latbench.lut.report_md import fmt

    con = Console()
    t = Table(title="Provenance (fields that differ, plus identity)", title_justify="left")
    t.add_column("field", overflow="fold")
    for x in c.luts:
        t.add_column(x.label + (" (baseline)" if x.label == c.baseline else ""), overflow="fold")
    always = {"file", "device.name", "backend", "precision", "cache", "batch", "device.threads"}
    for k, vals, differs in c.provenance:
        if differs or k in always:
            t.add_row(("[bold yellow]✱ " if differs else "") + k, *[fmt(v) for v in vals])
    con.print(t)
    for p in c.pairs:
        m, o, f = p.matching, p.overall, p.flips
        con.print(f"\n[bold]{p.other} vs baseline {p.baseline}[/]: matched {m.matched} entries, compared "
                  f"{m.compared} (ok in both), {m.analytic} analytic, failed {m.failed_baseline}/{m.failed_other}, "
                  f"only in {p.baseline}: {m.only_baseline}, only in {p.other}: {m.only_other}")
        for label, n, ex in ((p.baseline, m.only_baseline, m.only_baseline_examples),
                             (p.other, m.only_other, m.only_other_examples)):
            if n:
                con.print(f"  only in {label}: " + ", ".join(ex[:5]) + (" …" if n > 5 else ""))
        word = "faster" if o.speedup >= 1 else "slower"
        con.print(f"  geometric-mean speed-up {fmt(o.speedup)}× ({p.other} {word}; ratio {p.other}/{p.baseline} "
                  f"= {fmt(o.geomean_ratio)}); Spearman ρ {fmt(p.rank_entries.spearman_rho)}, Kendall τ "
                  f"{fmt(p.rank_entries.kendall_tau)}; per-position τ median {fmt(p.tau_summary.median)} "
                  f"(min {fmt(p.tau_summary.min)}, {p.tau_summary.positions} positions)")
        g = Table(title="Geometric means (ratio = other/baseline, > 1 slower)", title_justify="left")
        for col in ("by", "group", "n", "geomean ratio", "speed-up", "min", "max"):
            g.add_column(col, justify="right" if col not in ("by", "group") else "left", overflow="fold")
        for by, groups in (("all", [o]), ("stage", p.by_stage), ("resolution", p.by_resolution), ("op", p.by_op)):
            for x in groups:
                g.add_row(by, x.group, str(x.n), fmt(x.geomean_ratio), fmt(x.speedup), fmt(x.min_ratio),
                          fmt(x.max_ratio))
        con.print(g)
        d = Table(title=f"Decision flips (tie: {fmt(f.tie_rel)} rel + {fmt(f.tie_abs_us)} µs)", title_justify="left")
        for col in ("stage", "positions", "cheapest-op flips", "order flips", "inverted pairs"):
            d.add_column(col, justify="left" if col == "stage" else "right")
        for s, v in f.by_stage.items():
            d.add_row(s, str(v["positions"]), str(v["cheapest_flips"]), str(v["order_flips"]),
                      f"{v['inversions']}/{v['pairs']}")
        d.add_row("all", str(f.positions), str(f.cheapest_flips), str(f.order_flips), f"{f.inversions}/{f.pairs}",
                  style="bold")
        con.print(d)
        flipped = list(iter_flipped(f))[:max_flips]
        if flipped:
            x = Table(title=f"Flipped positions (first {len(flipped)})", title_justify="left")
            for col in ("position", "res", f"cheapest {p.baseline}", f"cheapest {p.other}", "flip", "inversions",
                        "penalty µs"):
                x.add_column(col, overflow="fold")
            for dd in flipped:
                x.add_row(dd.position, dd.resolution, dd.cheapest_baseline, dd.cheapest_other,
                          "cheapest" if dd.cheapest_flip else "order", f"{dd.inversions}/{dd.pairs}",
                          fmt(dd.penalty_us))
            con.print(x)


@click.command("compare-lut")
@click.argument("luts", nargs=-1, metavar="A.parquet B.parquet [C.parquet ...]")
@click.option("--baseline", default=None, metavar="LUT",
              help="The LUT the others are compared against: a path, a LUT name, a file stem or a 1-based "
                   "position. Default: the first.")
@click.option("--report", "report", default=None, metavar="OUT.md", help="Write a Markdown report here.")
@click.option("--plot", "plot", default=None, metavar="OUT.png",
              help="Write a PNG: log-log scatter of matched entries by op type, histogram of log ratios.")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON on stdout (no tables).")
@click.option("--tie-rel", default=0.02, show_default=True, type=float,
              help="Decision flips: two latencies within this relative difference tie.")
@click.option("--tie-abs-us", default=0.0, show_default=True, type=float,
              help="Decision flips: ... or within this many µs.")
@click.option("--title", default=None, help="Title of the Markdown report.")
@click.option("--note", "notes", multiple=True, metavar="TEXT",
              help="A line for the Markdown report's preamble (how the LUTs were built, machine load...). "
                   "Repeatable.")
def compare_lut(luts: Sequence[str], baseline: str | None, report: str | None, plot: str | None, as_json: bool,
                tie_rel: float, tie_abs_us: float, title: str | None, notes: Sequence[str]) -> None:
    """Compare LUTs against a baseline: matched entries, latency ratios (geometric-mean speed-up
    overall, per op, stage and resolution), rank agreement (Spearman ρ, Kendall τ) and decision
    flips (positions whose cheapest op or op order differs: where a latency-constrained search
    would choose differently), with each LUT's provenance side by side.

    Entries match on (position, op key, resolution); backend, precision, cache and threads may
    differ, they are what is compared. Ratio = other/baseline (> 1: slower than the baseline).
    """
    from latbench.lut.compare import CompareOptions, compare_luts, resolve_baseline, unique_labels
    from latbench.files import atomic_write_text, check_writable
    from latbench.lut.table import read_lut

    if len(luts) < 2:
        raise UserError(f"compare-lut needs at least two LUTs, got {len(luts)}: "
                        "latbench compare-lut A.parquet B.parquet [C.parquet ...]")
    for out in (report, plot):
        if out:
            check_writable(out)
    if report and plot and Path(report).resolve() == Path(plot).resolve():
        raise UserError("--report and --plot name the same file")
    tables = [read_lut(p) for p in luts]
    labels = unique_labels(tables, list(luts))
    base = resolve_baseline(baseline, list(luts), labels)
    c = compare_luts(tables, list(luts), baseline=base, labels=labels,
                     options=CompareOptions(tie_rel=tie_rel, tie_abs_us=tie_abs_us))
    if plot:
        from latbench.lut.plots import compare_plot

        compare_plot(c, plot)
    if report:
        from latbench.lut.report_md import render_markdown

        cmd = "latbench compare-lut " + " ".join(luts) + (f" --baseline {baseline}" if baseline else "") + \
            (f" --tie-rel {tie_rel:g} --tie-abs-us {tie_abs_us:g}" if (tie_rel, tie_abs_us) != (0.02, 0.0) else "")
        atomic_write_text(report, render_markdown(
            c, title=title, plot=_rel(Path(plot), Path(report)) if plot else None,
            preamble="\n\n".join([f"Command: `{cmd}`", *notes])))
    if as_json:
        click.echo(json.dumps(c.to_dict(), indent=1, allow_nan=False))
        return
    print_terminal(c)
    for what, out in (("report", report), ("plot", plot)):
        if out:
            click.echo(f"wrote {what} {out}", err=True)
