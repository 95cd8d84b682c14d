"""Markdown rendering of a :class:`~latbench.lut.compare.Comparison` (``compare-lut --report``)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from latbench.lut.compare import Comparison, PairComparison
from latbench.lut.flips import iter_flipped
from latbench.lut.ranks import GroupStat


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for tables: NaN/None as an em dash, floats to ``digits`` significant places."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "—"
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"
    return str(x)


def _cell(x: Any) -> str:
    return fmt(x).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _groups(title: str, groups: Sequence[GroupStat]) -> str:
    rows = [(g.group, g.n, g.geomean_ratio, g.speedup, g.median_ratio, g.min_ratio, g.max_ratio,
             g.baseline_sum_us, g.other_sum_us) for g in groups]
    return f"#### {title}\n\n" + table(
        ["group", "n", "geomean ratio", "speed-up", "median ratio", "min", "max", "Σ baseline µs", "Σ other µs"],
        rows)


def pair_section(p: PairComparison, max_flips: int = 30) -> str:
    m, f, o = p.matching, p.flips, p.overall
    faster = "faster" if o.speedup >= 1 else "slower"
    out = [f"## {p.other} vs baseline {p.baseline}", ""]
    out.append(f"**Geometric-mean speed-up of {p.other} over {p.baseline}: {fmt(o.speedup)}×** "
               f"({p.other} is {faster}; geometric-mean ratio {p.other}/{p.baseline} = {fmt(o.geomean_ratio)}, "
               f"over {o.n} entries timed in both).")
    out += ["", "### Matching", "",
            table(["", p.baseline, p.other], [
                ("rows", m.baseline_rows, m.other_rows),
                ("matched (position, op, key, resolution)", m.matched, m.matched),
                ("compared (ok in both, > 0 µs)", m.compared, m.compared),
                ("analytic in either (zero op; excluded from ratios/ranks)", m.analytic, m.analytic),
                ("failed", m.failed_baseline, m.failed_other),
                ("in this LUT only", m.only_baseline, m.only_other),
            ])]
    for label, n, ex in ((p.baseline, m.only_baseline, m.only_baseline_examples),
                         (p.other, m.only_other, m.only_other_examples)):
        if n:
            more = f" (first {len(ex)} of {n})" if n > len(ex) else ""
            out += ["", f"Only in {label}{more}: " + ", ".join(f"`{e}`" for e in ex)]
    out += ["", "### Ratios", "",
            "ratio = other / baseline median µs (> 1: slower than the baseline); "
            "speed-up = 1 / ratio (> 1: faster). Geometric means over matched entries.", "",
            _groups("Overall", [o]), "", _groups("Per stage", p.by_stage), "", _groups("Per op", p.by_op), "",
            _groups("Per resolution", p.by_resolution)]
    t = p.tau_summary
    out += ["", "### Rank agreement", "",
            table(["over", "n", "Spearman ρ", "Kendall τ"], [
                ("all matched entries", p.rank_entries.n, p.rank_entries.spearman_rho, p.rank_entries.kendall_tau),
                ("distinct op signatures", p.rank_distinct.n, p.rank_distinct.spearman_rho,
                 p.rank_distinct.kendall_tau)]),
            "", f"Per candidate position (timed ops at one position and resolution): {t.positions} positions "
                f"with a defined τ ({t.undefined} undefined).", "",
            table(["mean τ", "median τ", "min τ", "p10 τ", "share τ = 1", "share τ < 0.5"],
                  [(t.mean, t.median, t.min, t.p10, t.share_perfect, t.share_below_0_5)])]
    out += ["", "### Decision flips", "",
            f"Ties: |x − y| ≤ {fmt(f.tie_rel)}·max(x, y) + {fmt(f.tie_abs_us)} µs. A *cheapest-op flip* is a "
            "position whose near-cheapest timed ops (those tying with the minimum; the analytic `zero` op "
            "is 0 µs in every LUT and left out) share none between the two LUTs. An *order flip* is a "
            "position with at least one pair of candidate ops strictly ordered one way in the baseline and "
            "the other way here (analytic ops included in the order). *Penalty*: what the baseline's "
            "cheapest choice costs on this device above this device's own cheapest.", "",
            table(["stage", "positions", "cheapest-op flips", "order flips", "inverted pairs", "pairs"],
                  [(s, v["positions"], v["cheapest_flips"], v["order_flips"], v["inversions"], v["pairs"])
                   for s, v in f.by_stage.items()]
                  + [("**all**", f.positions, f.cheapest_flips, f.order_flips, f.inversions, f.pairs)])]
    if f.skipped:
        out += ["", f"{f.skipped} position(s) skipped (fewer than two ops, or no timed op, usable in both)."]
    flipped = list(iter_flipped(f))
    if flipped:
        shown = flipped[:max_flips]
        more = f" (first {len(shown)} of {len(flipped)})" if len(flipped) > len(shown) else ""
        out += ["", f"Flipped positions{more}:", "",
                table(["position", "res", "stage", f"cheapest {p.baseline}", f"cheapest {p.other}",
                       "cheapest flip", "inversions", "inverted pairs (baseline order)", "penalty µs"],
                      [(d.position, d.resolution, d.stage, d.cheapest_baseline, d.cheapest_other, d.cheapest_flip,
                        f"{d.inversions}/{d.pairs}",
                        "; ".join(f"{x}<{y}" for x, y in d.inverted_pairs[:4])
                        + (" …" if len(d.inverted_pairs) > 4 else ""), d.penalty_us) for d in shown])]
    else:
        out += ["", "No position flips."]
    return "\n".join(out)


def render_markdown(c: Comparison, *, title: str | None = None, plot: str | None = None,
                    preamble: str | None = None) -> str:
    """The whole report: provenance side by side, then one section per LUT against the baseline."""
    out = [f"# {title or 'LUT comparison'}", ""]
    if preamble:
        out += [preamble.rstrip(), ""]
    out += [f"Baseline: **{c.baseline}**. Compared: " + ", ".join(f"**{x.label}** (`{x.path}`)" for x in c.luts) + ".",
            "", "## Provenance", "", "Rows marked ✱ differ between the LUTs.", "",
            table(["field"] + [x.label for x in c.luts],
                  [((f"✱ {k}" if d else k), *v) for k, v, d in c.provenance])]
    if plot:
        out += ["", f"![matched entries: log-log scatter and histogram of log ratios]({plot})"]
    summary = [(p.other, p.matching.matched, p.overall.n, p.overall.speedup, p.overall.geomean_ratio,
                p.rank_entries.spearman_rho, p.rank_entries.kendall_tau, p.tau_summary.median,
                f"{p.flips.cheapest_flips}/{p.flips.positions}", f"{p.flips.order_flips}/{p.flips.positions}")
               for p in c.pairs]
    out += ["", "## Summary", "",
            table(["vs " + c.baseline, "matched", "compared", "speed-up", "geomean ratio", "Spearman ρ",
                   "Kendall τ", "median τ per position", "cheapest-op flips", "order flips"], summary)]
    for p in c.pairs:
        out += ["", pair_section(p)]
    return "\n".join(out) + "\n"
