"""Fitting a :class:`~latbench.model.latency_model.LatencyModel` on measured whole networks (pure numpy/scipy).

Each fit network ``i`` contributes its LUT rows ``(op, stage, median_us, analytic)`` and its
measured latency ``y_i``. With ``v_r = max(median_r − overhead, 0)`` and rows grouped by
``g(r)``, the features of a network are ``X_ig = Σ_{r∈g} v_r`` and ``N_ig = #{timed r ∈ g}``, and
the model predicts ``c + Σ_g (a_g X_ig + b_g N_ig)``. The fit minimises the *relative* squared
error ``Σ_i ((ŷ_i − y_i) / y_i)²`` plus a ridge penalty that pulls every group's ``a_g`` and
``b_g`` towards shared global values ``a`` and ``b`` (a hierarchical prior: groups the data say
little about behave like the average op). The penalty is scaled so that ``lam`` is dimensionless:
a deviation is charged by how much it moves the fit networks' latency, relatively. ``a_g ≥ 0``.

The LUT column (median or 10th percentile), ``lam`` and the grouping are chosen by K-fold
cross-validation on the fit networks only
(:func:`fit_model`); held-out networks judge the result elsewhere (:mod:`latbench.model.fit`).

:data:`MECHANISMS` names the ablation ladder a fit report shows: the raw sum, today's affine
calibration, the measured per-call overhead alone, overhead + a global affine correction, and
the per-group corrections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from latbench.model.latency_model import LatencyModel, ModelScope, group_key

Row = tuple[str, str, float, bool]  # (op, stage, median_us, analytic)

#: λ grid searched by cross-validation (``math.inf``: every group shares the global a, b).
LAMBDAS = (math.inf, 30.0, 3.0, 0.3, 0.03)
PRIOR = 1e-3  # a weak pull of the global a towards 1 and b towards 0 (keeps tiny fits defined)


def features(rows_per_net: Sequence[Sequence[Row]], overhead_us: float, group_by: str,
             groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(X, N, groups)``: per network (rows of the arrays) and group (columns), Σ v_r and the
    number of timed rows. ``groups`` fixes the column order (unknown groups of new networks are
    dropped into no column; pass the fit's groups and use :func:`LatencyModel` to predict them)."""
    if groups is None:
        seen: dict[str, None] = {}
        for rows in rows_per_net:
            for op, stage, _, analytic in rows:
                if not analytic:
                    seen.setdefault(group_key(group_by, op, stage), None)
        groups = list(seen)
    col = {g: j for j, g in enumerate(groups)}
    X = np.zeros((len(rows_per_net), len(groups)))
    N = np.zeros_like(X)
    for i, rows in enumerate(rows_per_net):
        for op, stage, med, analytic in rows:
            if analytic:
                continue
            j = col.get(group_key(group_by, op, stage))
            if j is None:
                continue
            X[i, j] += max(float(med) - overhead_us, 0.0)
            N[i, j] += 1.0
    return X, N, list(groups)


@dataclass(frozen=True)
class Coefficients:
    constant: float
    slope: float
    per_row: float
    slopes: dict[str, float]
    per_rows: dict[str, float]


def _solve(X: np.ndarray, N: np.ndarray, y: np.ndarray, groups: list[str], lam: float) -> Coefficients:
    """Weighted (relative-error) ridge least squares; see the module docstring."""
    from scipy.optimize import lsq_linear

    n, G = X.shape
    w = 1.0 / y
    if math.isinf(lam) or G == 0:
        # Global model: c + a·ΣX + b·ΣN.
        A = np.column_stack([np.ones(n), X.sum(1), N.sum(1)]) * w[:, None]
        t = np.ones(n)
        sx = float(np.mean(X.sum(1) * w)) or 1.0
        sn = float(np.mean(N.sum(1) * w)) or 1.0
        pr = math.sqrt(PRIOR)
        A = np.vstack([A, [0, pr * sx, 0], [0, 0, pr * sn]])
        t = np.concatenate([t, [pr * sx, 0.0]])
        res = lsq_linear(A, t, bounds=([-np.inf, 0, -np.inf], [np.inf, np.inf, np.inf]), method="bvls")
        c, a, b = (float(v) for v in res.x)
        return Coefficients(c, a, b, {g: a for g in groups}, {g: b for g in groups})
    # Parameters: [c, a, b, a_1..a_G, b_1..b_G].
    P = 3 + 2 * G
    A = np.zeros((n, P))
    A[:, 0] = 1.0
    A[:, 3:3 + G] = X
    A[:, 3 + G:] = N
    A *= w[:, None]
    t = np.ones(n)
    pen_rows, pen_t = [], []
    sx = np.mean(X * w[:, None], axis=0)
    sn = np.mean(N * w[:, None], axis=0)
    root = math.sqrt(lam)
    for j in range(G):
        r = np.zeros(P)
        r[3 + j], r[1] = root * sx[j], -root * sx[j]
        pen_rows.append(r)
        pen_t.append(0.0)
        r = np.zeros(P)
        r[3 + G + j], r[2] = root * sn[j], -root * sn[j]
        pen_rows.append(r)
        pen_t.append(0.0)
    pr = math.sqrt(PRIOR)
    tot_x, tot_n = float(sx.sum()) or 1.0, float(sn.sum()) or 1.0
    r = np.zeros(P)
    r[1] = pr * tot_x
    pen_rows.append(r)
    pen_t.append(pr * tot_x)
    r = np.zeros(P)
    r[2] = pr * tot_n
    pen_rows.append(r)
    pen_t.append(0.0)
    A = np.vstack([A, np.array(pen_rows)])
    t = np.concatenate([t, pen_t])
    lo = np.full(P, -np.inf)
    lo[1] = 0.0
    lo[3:3 + G] = 0.0
    res = lsq_linear(A, t, bounds=(lo, np.full(P, np.inf)), method="bvls")
    x = res.x
    return Coefficients(float(x[0]), float(x[1]), float(x[2]),
                        {g: float(x[3 + j]) for j, g in enumerate(groups)},
                        {g: float(x[3 + G + j]) for j, g in enumerate(groups)})


def _model(scope: ModelScope, overhead: float, group_by: str, co: Coefficients, column: str = "median_us",
           provenance: dict[str, Any] | None = None) -> LatencyModel:
    return LatencyModel(scope=scope, overhead_us=float(overhead), constant_us=co.constant, group_by=group_by,
                        column=column, slopes=co.slopes, per_row=co.per_rows, default_slope=co.slope,
                        default_per_row=co.per_row, provenance=provenance or {})


def fit_fixed(rows_per_net: Sequence[Sequence[Row]], y: Sequence[float], scope: ModelScope, overhead_us: float,
              group_by: str, lam: float, column: str = "median_us") -> LatencyModel:
    """One fit with a given grouping and λ on rows whose values come from LUT ``column``."""
    y = np.asarray(y, dtype=np.float64)
    X, N, groups = features(rows_per_net, overhead_us, group_by)
    co = _solve(X, N, y, groups, lam if group_by != "none" else math.inf)
    return _model(scope, overhead_us, group_by, co, column)


UNFITTED = "measured-overhead-only"


def overhead_model(scope: ModelScope, overhead_us: float, column: str = "median_us") -> LatencyModel:
    """The model with nothing fitted: every row minus the measured per-call overhead, plus one
    overhead for the network."""
    return LatencyModel(scope=scope, overhead_us=float(overhead_us), constant_us=float(overhead_us),
                        column=column, provenance={"fitted": False})


def _folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    return [idx[i::k] for i in range(k)]


def cross_validated_mape(rows_per_net: Sequence[Sequence[Row]], y: np.ndarray, scope: ModelScope,
                         overhead_us: float, group_by: str, lam: float, k: int = 5) -> float:
    """Mean absolute percentage error of K-fold predictions (each network predicted by a model
    fitted without it)."""
    n = len(y)
    k = max(2, min(k, n))
    errs = np.zeros(n)
    for fold in _folds(n, k):
        train = np.setdiff1d(np.arange(n), fold)
        m = fit_fixed([rows_per_net[i] for i in train], y[train], scope, overhead_us, group_by, lam)
        for i in fold:
            errs[i] = abs(m.predict_rows(rows_per_net[i]) - y[i]) / y[i]
    return float(100.0 * errs.mean())


@dataclass(frozen=True)
class Selection:
    column: str
    group_by: str
    lam: float
    cv_mape: float
    table: tuple[tuple[str, str, float, float], ...]  # every (column, group_by, lam, cv_mape) tried


RowsByColumn = Mapping[str, Sequence[Sequence[Row]]]  # LUT column -> rows of every network


def select(rows: RowsByColumn, y: Sequence[float], scope: ModelScope, overhead_us: float,
           groupings: Sequence[str] = ("none", "op", "op+stage"), lambdas: Sequence[float] = LAMBDAS,
           k: int = 5) -> Selection:
    """The LUT column, grouping and λ with the lowest K-fold cross-validated MAPE on the fit
    networks (ties go to the simpler choice: median column, one global group)."""
    y = np.asarray(y, dtype=np.float64)
    tried = []
    for col, rows_per_net in rows.items():
        # the measured overhead alone, nothing fitted: what a fit must beat to be worth its parameters
        tried.append((col, UNFITTED, math.inf, float(100.0 * np.mean(
            [abs(overhead_model(scope, overhead_us, col).predict_rows(r) - t) / t for r, t in zip(rows_per_net, y)]))))
        for gb in groupings:
            for lam in ([math.inf] if gb == "none" else [v for v in lambdas if not math.isinf(v)]):
                tried.append((col, gb, lam, cross_validated_mape(rows_per_net, y, scope, overhead_us, gb, lam, k)))
    best = min(tried, key=lambda t: (round(t[3], 6), t[0] != "median_us", t[1] != UNFITTED, t[1] != "none"))
    return Selection(best[0], best[1], best[2], best[3], tuple(tried))


def fit_model(rows: RowsByColumn, y: Sequence[float], scope: ModelScope, overhead_us: float,
              provenance: dict[str, Any] | None = None, groupings: Sequence[str] = ("none", "op", "op+stage"),
              k: int = 5) -> tuple[LatencyModel, Selection]:
    """Choose LUT column, grouping and λ by cross-validation, then fit on every fit network."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 5:
        raise ValueError(f"a latency model needs at least 5 measured fit networks, got {len(y)}")
    sel = select(rows, y, scope, overhead_us, groupings, k=k)
    if sel.group_by == UNFITTED:
        m = overhead_model(scope, overhead_us, sel.column)
    else:
        m = fit_fixed(rows[sel.column], y, scope, overhead_us, sel.group_by, sel.lam, sel.column)
    prov = dict(provenance or {})
    prov.update({"lambda": None if math.isinf(sel.lam) else sel.lam, "cv_mape": sel.cv_mape,
                 "cv_folds": max(2, min(k, len(y))),
                 "fitted": sel.group_by != UNFITTED,
                 "selection": [{"column": c, "group_by": g, "lambda": None if math.isinf(lam) else lam, "cv_mape": v}
                               for c, g, lam, v in sel.table]})
    return LatencyModel(**{**m.__dict__, "provenance": {**dict(m.provenance), **prov}}), sel


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
