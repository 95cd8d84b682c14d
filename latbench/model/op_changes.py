"""What the search sees of a latency model: at how many edges its cheapest timed op differs from
the raw LUT's, and how many of those changes the bootstrap of :func:`latbench.model.selection.select_and_fit`
supports (:func:`cheapest_op_changes`; the rows per edge come from :func:`lut_position_rows`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from latbench.model.latency_model import LatencyModel
from latbench.model.lsq import Row
from latbench.model.selection import SUPPORT_LEVEL


def cheapest_op_changes(rows_per_position: Mapping[str, Sequence[Row]], model: LatencyModel,
                        bootstrap_models: Sequence[LatencyModel] = (), *,
                        model_rows_per_position: Mapping[str, Sequence[Row]] | None = None,
                        support: float = SUPPORT_LEVEL) -> dict[str, Any]:
    """At how many edges (positions with ≥ 2 timed candidate rows) the model's cheapest timed op
    differs from the raw LUT's, and how many of those changes the bootstrap supports.

    ``rows_per_position``: each position's candidate rows ``(op, stage, median_us, analytic)``
    (the raw LUT's values); ``model_rows_per_position``: the same rows in the model's column
    (default: the same values). A change is *supported* when the model's cheapest op is also the
    cheapest under at least ``support`` of the bootstrap models. Also returns, per edge, Kendall τ
    between the raw and the model's costs of its ops (the median over edges says how much of the
    raw order the model keeps)."""
    from latbench.model.metrics import kendall_tau

    mrows = model_rows_per_position or rows_per_position
    edges, changed, supported, taus = 0, 0, 0, []
    per_edge = []
    for pos, rows in rows_per_position.items():
        timed = [(i, r) for i, r in enumerate(rows) if not r[3]]
        if len(timed) < 2:
            continue
        edges += 1
        mr = mrows[pos]
        raw_costs = np.array([float(r[2]) for _, r in timed])
        ops = [r[0] for _, r in timed]

        def costs(m: LatencyModel) -> np.ndarray:
            return np.array([m.row_cost(*mr[i]) for i, _ in timed])

        mc = costs(model)
        raw_best, model_best = ops[int(np.argmin(raw_costs))], ops[int(np.argmin(mc))]
        share = None
        if bootstrap_models:
            share = float(np.mean([ops[int(np.argmin(costs(b)))] == model_best for b in bootstrap_models]))
        tau = kendall_tau(raw_costs, mc) if np.ptp(mc) > 0 and np.ptp(raw_costs) > 0 else math.nan
        if not math.isnan(tau):
            taus.append(tau)
        ch = raw_best != model_best
        changed += ch
        sup = bool(ch and share is not None and share >= support)
        supported += sup
        per_edge.append({"position": pos, "raw_cheapest": raw_best, "model_cheapest": model_best,
                         "bootstrap_share": share, "changed": ch, "supported": sup,
                         "kendall_tau": None if math.isnan(tau) else tau})
    return {"edges": edges, "changed": changed, "supported": supported, "support_level": support,
            "bootstrap_models": len(bootstrap_models),
            "median_edge_tau": float(np.median(taus)) if taus else None, "per_edge": per_edge}


def lut_position_rows(lut: Any, space: Any, height: int, width: int, batch: int = 1,
                      column: str = "median_us") -> dict[str, list[Row]]:
    """Every candidate position's rows ``(op, stage, value, analytic)`` from ``lut`` (ops the LUT
    lacks are left out), for :func:`cheapest_op_changes`."""
    out: dict[str, list[Row]] = {}
    for p in space.positions():
        if getattr(p, "kind", "candidate") != "candidate":
            continue
        rows = [r for r in (lut.row_info(p.name, op, height, width, batch, column) for op in p.candidates)
                if r is not None]
        if rows:
            out[p.name] = rows
    return out
