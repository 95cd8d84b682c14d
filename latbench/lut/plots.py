"""PNG figures for latbench reports (matplotlib, Agg backend; nothing is shown on screen).

One function per figure; each takes plain data, writes a PNG atomically and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from latbench.files import save_png

if TYPE_CHECKING:
    from latbench.lut.compare import Comparison


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def compare_plot(c: "Comparison", path: str | os.PathLike, dpi: int = 120) -> Path:
    """One row per LUT against the baseline: a log-log scatter of matched entries (baseline µs on
    x, other µs on y) coloured by op type with the y = x line, and a histogram of log2 ratios."""
    plt = _pyplot()
    n = len(c.pairs)
    fig, axes = plt.subplots(n, 2, figsize=(14, 6.6 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1.15, 1]})
    cmap = plt.get_cmap("tab20")
    ops = sorted({o for p in c.pairs for o in p.entries["op"].astype(str)})
    colour = {o: cmap(i % 20) for i, o in enumerate(ops)}
    for row, p in zip(axes, c.pairs):
        ax, hx = row
        e = p.entries
        for op in ops:
            s = e[e["op"] == op]
            if len(s):
                ax.scatter(s["median_us_a"], s["median_us_b"], s=14, alpha=0.75, color=colour[op],
                           label=f"{op} ({len(s)})", edgecolors="none")
        lo = float(min(e["median_us_a"].min(), e["median_us_b"].min())) / 1.5
        hi = float(max(e["median_us_a"].max(), e["median_us_b"].max())) * 1.5
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="y = x (same latency)")
        g = p.overall.geomean_ratio
        ax.plot([lo, hi], [lo * g, hi * g], color="grey", lw=1, ls=":", label=f"y = {g:.3g}·x (geomean)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"{p.baseline} median latency (µs)")
        ax.set_ylabel(f"{p.other} median latency (µs)")
        ax.set_title(f"{p.other} vs {p.baseline}: {p.overall.n} matched entries, "
                     f"Spearman ρ = {p.rank_entries.spearman_rho:.3f}")
        ax.grid(True, which="both", alpha=0.25)
        # Below the axes, so that no point hides behind it.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, frameon=False)

        r = np.log2(e["ratio"].to_numpy(dtype=float))
        hx.hist(r, bins=min(60, max(10, len(r) // 8)), color="#4c72b0", alpha=0.85)
        hx.axvline(0.0, color="black", lw=1, ls="--", label="ratio 1 (same)")
        hx.axvline(float(np.log2(g)), color="#c44e52", lw=1.5, label=f"geomean ratio {g:.3g} "
                                                                      f"(speed-up {1 / g:.3g}×)")
        hx.set_xlabel(f"log2(ratio {p.other} / {p.baseline})   (> 0: slower than {p.baseline})")
        hx.set_ylabel("matched entries")
        f = p.flips
        hx.set_title(f"cheapest-op flips {f.cheapest_flips}/{f.positions}, order flips {f.order_flips}/{f.positions}")
        hx.legend(fontsize=8)
        hx.grid(True, alpha=0.25)
    fig.tight_layout()
    return save_png(fig, path, dpi)


def plot_fit(d: dict, path: str | os.PathLike, dpi: int = 120) -> Path:
    """``latbench fit``'s figure: one panel per network set (fit, held-out uniform, held-out from
    search), measured vs predicted latency for the raw LUT sum and for the latency model, y = x."""
    plt = _pyplot()
    sets = [s for s in ("fit", "test", "search", "other_searches")
            if any(n["set"] == s and n["measured_us"] for n in d["networks"])]
    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 5), squeeze=False)
    titles = {"fit": "fit networks", "test": "held-out uniform", "search": "held-out from search",
              "other_searches": "held-out from other searches"}
    for ax, s in zip(axes[0], sets):
        nets = [n for n in d["networks"] if n["set"] == s and n["measured_us"]]
        m = np.array([n["measured_us"] for n in nets]) / 1e3
        raw = np.array([n["raw_sum_us"] for n in nets]) / 1e3
        mod = np.array([n["model_us"] for n in nets]) / 1e3
        f = (d["figures"].get(s) or {})
        fr, fm = f.get("raw", {}), f.get("model", {})
        ax.scatter(m, raw, s=14, color="tab:grey", alpha=0.7,
                   label=f"Σ LUT: MAPE {fr.get('mape', float('nan')):.1f} %, τ {fr.get('kendall_tau') or float('nan'):.2f}")
        ax.scatter(m, mod, s=18, color="tab:red",
                   label=f"model: MAPE {fm.get('mape', float('nan')):.2f} %, τ {fm.get('kendall_tau') or float('nan'):.2f}")
        lo = float(min(m.min(), raw.min(), mod.min()))
        hi = float(max(m.max(), raw.max(), mod.max()))
        ax.plot([lo, hi], [lo, hi], "--", color="black", lw=0.8)
        ax.set_xlabel("measured (ms)")
        ax.set_ylabel("predicted (ms)")
        ax.set_title(f"{titles[s]} (n={len(nets)})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    sc = d["scope"]
    fig.suptitle(f"{Path(d['lut']).name}: {sc['backend']} {sc['precision']} {sc['height']}x{sc['width']} on "
                 f"{d['device'].get('name')}", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path, dpi)
