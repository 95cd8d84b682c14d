"""Steps 3 and 4 of :func:`latbench.model.fit.run_fit`: choose and fit the model on the fit networks
only, with the ablation ladder and the learned peers beside it, refuse a LUT that does not
explain the fit networks (:func:`lut_explains`), and judge every rung on every set with its
bootstrap interval, its paired difference to the affine fit and the measurement's ceiling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from latbench.errors import UserError
from latbench.model.fit_request import (ARCH_ROWS, MIN_FIT, MIN_RAW_CORRELATION, MIN_REFERENCE_WINDOWS, MIN_SCALE,
                                        SETS, Network)
from latbench.model.fitting import fit_fixed, fit_model, mechanisms, raw_sum
from latbench.model.latency_model import COLUMNS, LatencyModel, ModelScope
from latbench.model.networks import figures
from latbench.timing.interleave import InterleavedResult


def split_halves(res: InterleavedResult, statistic: str) -> dict[str, tuple[float, float]]:
    """Each item's figure from its even rounds and from its odd rounds (items with both)."""
    from latbench.timing.interleave import aggregate

    out = {}
    for k, r in res.items.items():
        a = aggregate([w for w in r.windows if w.round % 2 == 0], statistic)
        b = aggregate([w for w in r.windows if w.round % 2 == 1], statistic)
        if a.ok and b.ok:
            out[k] = (a.median_us, b.median_us)
    return out


def repeatability(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """How well the measurement agrees with itself: one half of the rounds "predicting" the other,
    in the figures of :func:`figures`. Half against half understates how well the full measurement
    ranks the networks (each half has twice the noise); it is reported as what it is, not as a
    ceiling."""
    if len(pairs) < 3:
        return {"n": len(pairs)}
    a, b = zip(*pairs)
    return figures(a, b)


def lut_explains(raw: Sequence[float], measured: Sequence[float], global_slope: float) -> tuple[bool, dict[str, Any]]:
    """Does the LUT explain the fit networks? Not when its raw sums are on another scale than the
    measurements (median measured / Σ LUT outside [:data:`MIN_SCALE`, 1 / MIN_SCALE]), when the
    differences between networks are not the LUT's differences (the affine fit's slope, measured ≈
    a·Σ + b, outside the same range — seen on a LUT timed under contention: measured ≈ 0.32 × Σ LUT
    with a slope of −0.003, a constant, not a model of the LUT) or when the raw sums correlate
    with the measurements below :data:`MIN_RAW_CORRELATION`. ``global_slope`` (the one-group
    model's) is reported beside. Returns (verdict, the figures and the reason)."""
    x, y = np.asarray(raw, float), np.asarray(measured, float)
    r = float(np.corrcoef(x, y)[0, 1]) if x.size > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else math.nan
    slope = float(np.polyfit(x, y, 1)[0]) if x.size > 2 and np.ptp(x) > 0 else math.nan
    scale = float(np.median(y / x)) if np.all(x > 0) else math.nan
    out: dict[str, Any] = {"scale": scale, "affine_slope": None if math.isnan(slope) else slope,
                           "raw_correlation": None if math.isnan(r) else r, "global_slope": float(global_slope),
                           "bounds": {"scale": [MIN_SCALE, 1 / MIN_SCALE], "affine_slope": [MIN_SCALE, 1 / MIN_SCALE],
                                      "raw_correlation": MIN_RAW_CORRELATION}}
    why = None
    if math.isfinite(scale) and not MIN_SCALE <= scale <= 1 / MIN_SCALE:
        why = (f"the networks measure {scale:.3g} × their LUT sum: the rows are on another scale than the networks "
               "(a LUT timed under contention or with another thread count?)")
    elif not math.isnan(r) and r < MIN_RAW_CORRELATION:
        why = (f"the LUT's raw sums correlate with the measured networks at r = {r:.2f} only (below "
               f"{MIN_RAW_CORRELATION}): the rows do not rank these networks")
    elif not math.isnan(slope) and not MIN_SCALE <= slope <= 1 / MIN_SCALE:
        why = (f"measured ≈ {slope:.3g} · Σ LUT + b: the LUT's differences between networks are not theirs "
               "(every slope ≈ 0 is a constant, not a model of the LUT)")
    out["reason"] = why
    return why is None, out


def train_peers(fit_nets: list[Network], y: Sequence[float], names: Sequence[str]) -> dict[str, Callable[[Any], float]]:
    """Learned predictors (:mod:`latbench.model.peers`: ridge on a one-hot encoding, boosted trees,
    a small GCN) trained on the fit networks' architectures alone, as ladder rungs ``peer: NAME``
    judged on the same held-out sets as the model."""
    from latbench.model.peers import fit_peers

    peers = fit_peers([n.rows[ARCH_ROWS] for n in fit_nets], y, names)
    return {f"peer: {name}": (lambda net, p=p: float(p.predict([net[ARCH_ROWS]])[0])) for name, p in peers.items()}


@dataclass
class _Selected:
    model: LatencyModel
    ladder: dict[str, Callable[[Any], float]]
    fit_nets: list[Network]
    explains: dict[str, Any]
    refused: str | None
    selection: Any = None  # latbench.model.selection.Selection (or an older fitting.Selection)


def select_model(networks: list[Network], scope: ModelScope, measured: dict[str, float], overhead: float,
                 failed: list[str], peers: Sequence[str] = ()) -> _Selected:
    """Step 3: the model (cross-validated on the fit networks only), the ablation ladder (with the
    learned ``peers``), and whether the LUT explains the fit networks at all."""
    fit_nets = [n for n in networks if n.set == "fit" and n.key in measured]
    if len(fit_nets) < MIN_FIT:
        raise UserError(f"only {len(fit_nets)} fit networks could be measured (failed: {', '.join(failed[:5])})")
    fit_rows = {c: [n.rows[c] for n in fit_nets] for c in COLUMNS}
    fit_y = [measured[n.key] for n in fit_nets]
    # networks drawn from one search's α form one group: cross-validation never splits them
    groups = ["search" if n.from_search else n.key for n in fit_nets]
    model, selection = fit_model(fit_rows, fit_y, scope, overhead, groups=groups)
    ladder = mechanisms(fit_rows, fit_y, scope, overhead, model)

    def side_model(nets: list[Network]) -> Callable[[Any], float]:
        m, _ = fit_model({c: [n.rows[c] for n in nets] for c in COLUMNS}, [measured[n.key] for n in nets],
                         scope, overhead)
        return lambda net, m=m: m.predict_rows(net[m.column])

    uni = [n for n in networks if n.set == "fit-uniform" and n.key in measured]
    if len(uni) >= MIN_FIT:  # the design's ablation: the same model fitted on uniform networks
        ladder["model (uniform fit networks)"] = side_model(uni)
    uniform_part = [n for n in fit_nets if not n.from_search]
    if len(fit_nets) > len(uniform_part) >= MIN_FIT:  # search-drawn fit networks' ablation, no extra measurement
        ladder["model (uniform part of the fit set only)"] = side_model(uniform_part)
    if peers:
        ladder.update(train_peers(fit_nets, fit_y, peers))
    glob = fit_fixed(fit_rows["median_us"], fit_y, scope, overhead, "none", math.inf)
    ok, explains = lut_explains([raw_sum(r) for r in fit_rows["median_us"]], fit_y, glob.default_slope)
    why = None if ok else (f"{explains['reason']}; rebuild the LUT on a quiet machine (build-lut --threads 1) "
                           "and fit again")
    return _Selected(model, ladder, fit_nets, explains, why, selection)


def unsteady(summary: Mapping[str, Any], bound: float) -> str | None:
    """Why a fit's measurement is too unsteady to store its model, or None. The reference network,
    measured between the others all through the fit, should read the same every time; a p10–p90
    spread of its readings above ``bound`` (over at least :data:`MIN_REFERENCE_WINDOWS` readings)
    means the machine changed under the fit (other load, clock or frequency changes) — the drift
    checks re-time single rounds, but a model fitted across such a stretch carries its level and
    mispredicts the next run."""
    spread, n = summary.get("reference_p10_p90_spread"), int(summary.get("reference_windows") or 0)
    if spread is None or not math.isfinite(float(spread)) or n < MIN_REFERENCE_WINDOWS or float(spread) <= bound:
        return None
    return (f"the reference network's readings spread {float(spread):.0%} (p10–p90 of {n} readings; bound "
            f"{bound:.0%}): the machine was not steady during the fit, and a model fitted on such readings "
            "mispredicts later runs; rerun on a quieter machine (one thread, nothing else running), or raise "
            "--max-reference-spread to store it anyway")


# ---- 4. judge ------------------------------------------------------------------------------------
def judge(networks: list[Network], lut: Any, setup: Any, sel: _Selected, measured: dict[str, float],
          res: InterleavedResult, statistic: str) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
    """Step 4: every rung of the ladder on every set (``fit`` in sample, the others held out), each
    figure with its bootstrap interval (``ci``) and each rung's paired difference to the affine fit
    (``vs_affine``); per set, the measurement's agreement with itself and its noise ceiling; the
    model choice and what it changes for a search (:func:`statistics`)."""
    from latbench.model import metrics

    by_set = {s: [n for n in networks if n.set == s and n.key in measured] for s in SETS}
    figs: dict[str, dict[str, dict[str, Any]]] = {}
    for s in SETS:
        nets = by_set[s]
        if len(nets) < 3:
            continue
        y = [measured[n.key] for n in nets]
        preds = {name: [f(n.rows) for n in nets] for name, f in sel.ladder.items()}
        preds = {name: p for name, p in preds.items() if all(math.isfinite(v) for v in p)}  # a peer may fail
        figs[s] = {name: figures(p, y) for name, p in preds.items()}
        for name, p in preds.items():
            figs[s][name]["ci"] = metrics.bootstrap_set_metrics(p, y)
        for name, d in metrics.paired_rung_differences(preds, y, against=("affine",)).items():
            if "vs affine" in d:
                figs[s][name]["vs_affine"] = d["vs affine"]
    halves = split_halves(res, statistic)
    for s, nets in by_set.items():
        if s in figs:
            figs[s]["measurement (split-half)"] = repeatability([halves[n.key] for n in nets if n.key in halves])
    stats = statistics(lut, setup, by_set, sel, res, statistic, halves)
    stats["coverage"] = coverage(by_set, measured)
    return figs, stats


def coverage(by_set: dict[str, list[Network]], measured: dict[str, float]) -> dict[str, Any]:
    """How far each held-out set lies from the fit networks: per network, the LUT rows in which it
    differs from its nearest fit network (few: interpolation between siblings; many: a network the
    fit never came near), and how many networks measure outside the fit networks' latency range
    (the model extrapolates there)."""
    fit = by_set.get("fit") or []
    if not fit:
        return {}
    fit_rows = [set(n.rows[ARCH_ROWS]) for n in fit]
    lo, hi = min(measured[n.key] for n in fit), max(measured[n.key] for n in fit)
    out: dict[str, Any] = {"fit_range_us": [lo, hi]}
    for s, nets in by_set.items():
        if s == "fit" or not nets:
            continue
        dist = [min(len(set(n.rows[ARCH_ROWS]) - f) for f in fit_rows) for n in nets]
        y = [measured[n.key] for n in nets]
        out[s] = {"rows": len(nets[0].rows[ARCH_ROWS]), "nearest_fit_rows_differ": {
                      "min": int(min(dist)), "median": float(np.median(dist)), "max": int(max(dist))},
                  "range_us": [min(y), max(y)], "below_fit_range": sum(v < lo for v in y),
                  "above_fit_range": sum(v > hi for v in y)}
    return out


def statistics(lut: Any, setup: Any, by_set: dict[str, list[Network]], sel: _Selected, res: InterleavedResult,
               statistic: str, halves: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Per set, the ceiling any predictor could reach against this measurement (simulated from each
    network's per-round spread, :func:`latbench.model.metrics.noise_ceiling`, and the
    Spearman–Brown corrected split-half figure); the model choice
    (:class:`latbench.model.selection.Selection`); and, for the search, at how many edges the
    model's cheapest op differs from the raw LUT's and how many of those changes the bootstrap
    supports (:func:`latbench.model.op_changes.cheapest_op_changes`)."""
    from latbench.model import metrics

    out: dict[str, Any] = {"ceiling": {}}
    for s, nets in by_set.items():
        if len(nets) < 3:
            continue
        c: dict[str, Any] = {}
        try:
            c["simulated"] = metrics.noise_ceiling(
                [metrics.round_values(res.items[n.key].windows, statistic) for n in nets], statistic)
        except ValueError as exc:
            c["simulated"] = {"error": str(exc)}
        pairs = [halves[n.key] for n in nets if n.key in halves]
        try:
            c["spearman_brown"] = metrics.spearman_brown_ceiling(pairs)
        except ValueError as exc:
            c["spearman_brown"] = {"error": str(exc)}
        out["ceiling"][s] = c
    to_dict = getattr(sel.selection, "to_dict", None)
    if to_dict is not None:
        out["selection"] = to_dict()
    try:
        from latbench.model.op_changes import cheapest_op_changes, lut_position_rows
    except ImportError:
        return out
    model = sel.model
    raw_rows = lut_position_rows(lut, setup.space, setup.height, setup.width, setup.batch)
    model_rows = lut_position_rows(lut, setup.space, setup.height, setup.width, setup.batch, model.column)
    ch = cheapest_op_changes(raw_rows, model, getattr(sel.selection, "bootstrap_models", ()),
                             model_rows_per_position=model_rows)
    out["cheapest_op_changes"] = ch
    return out
