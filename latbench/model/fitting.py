"""Fitting a :class:`~latbench.model.latency_model.LatencyModel` on measured whole networks (pure numpy/scipy).

Each fit network ``i`` contributes its LUT rows ``(op, stage, median_us, analytic)`` and its
measured latency ``y_i``. With ``v_r = max(median_r − overhead, 0)`` and rows grouped by
``g(r)``, the features of a network are ``X_ig = Σ_{r∈g} v_r`` and ``N_ig = #{timed r ∈ g}``, and
the model predicts ``c + Σ_g (a_g X_ig + b_g N_ig)``. The fit minimises the *relative* squared
error ``Σ_i ((ŷ_i − y_i) / y_i)²`` plus a ridge penalty that pulls every group's ``a_g`` and
``b_g`` towards shared global values ``a`` and ``b`` (a hierarchical prior: groups the data say
little about behave like the average op). The penalty is scaled so that ``lam`` is dimensionless:
a deviation is charged by how much it moves the fit networks' latency, relatively. ``a_g ≥ 0``.
A group can also be *tied* to the global values (``a_g = a``, ``b_g = b`` exactly): what
:mod:`latbench.model.selection` does with a group whose correction a bootstrap does not support.

The least squares themselves live in :mod:`latbench.model.lsq` (re-exported here), shared with
:mod:`latbench.model.selection`. The model clips a row's cost at 0 (``max(a_g v_r + b_g, 0)``); the fit knows it: it fits, finds
the rows whose linear cost is negative, refits with those rows fixed at 0 (out of the features),
and repeats until the set of clipped rows no longer changes (:data:`MAX_CLIP_ROUNDS` at most),
so the least-squares problem is the one the model predicts with.

The LUT column (median or 10th percentile), ``lam`` and the grouping are chosen by repeated,
grouped cross-validation on the fit networks only, with the one-standard-error rule
(:func:`fit_model`, :mod:`latbench.model.selection`); held-out networks judge the result elsewhere
(:mod:`latbench.model.fit`).

:func:`mechanisms` names the ablation ladder a fit report shows: the raw sum, today's affine
calibration, the measured per-call overhead alone, overhead + a global affine correction, and
the per-group corrections.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from latbench.model.latency_model import LatencyModel, ModelScope
# the least squares live in latbench.model.lsq (shared with latbench.model.selection); re-exported here
from latbench.model.lsq import (LAMBDAS, MAX_CLIP_ROUNDS, PRIOR, UNFITTED, Coefficients, Design, Row,  # noqa: F401
                                RowsByColumn, _model, _solve, features, fit_affine_model, fit_fixed,
                                overhead_model, raw_model, solve_design)


def fit_model(rows: RowsByColumn, y: Sequence[float], scope: ModelScope, overhead_us: float,
              provenance: dict[str, Any] | None = None, groupings: Sequence[str] = ("none", "op", "op+stage"),
              k: int = 5, *, groups: Sequence[Any] | None = None, fold_seeds: Sequence[int] | None = None,
              n_boot: int | None = None, seed: int = 0) -> tuple[LatencyModel, Any]:
    """Choose the model by repeated grouped cross-validation and the one-standard-error rule, keep
    per-group corrections a bootstrap supports, fit on every fit network
    (:func:`latbench.model.selection.select_and_fit`). ``groups``: one label per network
    (networks drawn from one search's α share a label; None: every network its own).
    Returns the model and the :class:`latbench.model.selection.Selection`."""
    from latbench.model import selection as S

    y = np.asarray(y, dtype=np.float64)
    if len(y) < 5:
        raise ValueError(f"a latency model needs at least 5 measured fit networks, got {len(y)}")
    return S.select_and_fit(rows, y, scope, overhead_us, provenance=provenance, groupings=groupings, k=k,
                            groups=groups, fold_seeds=S.FOLD_SEEDS if fold_seeds is None else fold_seeds,
                            n_boot=S.N_BOOT_GROUPS if n_boot is None else n_boot, seed=seed)


# ---- the ablation ladder -------------------------------------------------------------------------
Predictor = Callable[[Mapping[str, Sequence[Row]]], float]  # a network's rows by LUT column -> µs


def raw_sum(rows: Sequence[Row]) -> float:
    return float(sum(0.0 if a else float(m) for _, _, m, a in rows))


def mechanisms(rows: RowsByColumn, y: Sequence[float], scope: ModelScope, overhead_us: float,
               final: LatencyModel) -> dict[str, Predictor]:
    """Predictors fitted on the fit networks, one per mechanism, in order of what they add:

    - ``raw``: Σ LUT medians;
    - ``affine``: a·Σ LUT + b, least squares (today's ``validate-lut`` calibration);
    - ``overhead``: Σ max(m − overhead, 0) + overhead — measured, nothing fitted;
    - ``overhead+global``: c + a·Σ v + b·#rows on the medians (the model with one group);
    - ``+p10 column``: the same on the rows' 10th percentiles (when the LUT has them);
    - ``model``: the selected model (column, grouping and λ chosen by cross-validation).
    """
    from latbench.model.metrics import fit_affine

    y = np.asarray(y, dtype=np.float64)
    med = rows["median_us"]
    aff = fit_affine([raw_sum(r) for r in med], y)
    glob = fit_fixed(med, y, scope, overhead_us, "none", math.inf)

    def overhead_only(net: Mapping[str, Sequence[Row]]) -> float:
        return overhead_us + sum(0.0 if a else max(float(m) - overhead_us, 0.0) for _, _, m, a in net["median_us"])

    out: dict[str, Predictor] = {
        "raw": lambda net: raw_sum(net["median_us"]),
        "affine": lambda net: float(aff.apply(raw_sum(net["median_us"]))),
        "overhead": overhead_only,
        "overhead+global": lambda net: glob.predict_rows(net["median_us"]),
    }
    if "p10_us" in rows:
        glob10 = fit_fixed(rows["p10_us"], y, scope, overhead_us, "none", math.inf, "p10_us")
        out["+p10 column"] = lambda net: glob10.predict_rows(net["p10_us"])
    out["model"] = lambda net: final.predict_rows(net[final.column])
    return out
