"""Least squares behind the latency model (pure numpy/scipy): the features of fit networks, the
relative-error ridge fit with tied groups and the clip at 0, and the models that need no fit.

Each fit network ``i`` contributes its LUT rows ``(op, stage, value, analytic)`` and its measured
latency ``y_i``. With ``v_r = max(value_r − overhead, 0)`` and rows grouped by ``g(r)``, the model
predicts ``c + Σ_g (a_g X_ig + b_g N_ig)`` (``X_ig = Σ_{r∈g} v_r``, ``N_ig`` the timed rows of g);
see :mod:`latbench.model.fitting` for the objective and :mod:`latbench.model.selection` for the
choice among structures. This module is the shared bottom of both (no import cycle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from latbench.model.latency_model import LatencyModel, ModelScope, group_key

Row = tuple[str, str, float, bool]  # (op, stage, median_us, analytic)

#: λ grid searched by cross-validation (``math.inf``: every group shares the global a, b).
LAMBDAS = (math.inf, 30.0, 3.0, 0.3, 0.03)
PRIOR = 1e-3  # a weak pull of the global a towards 1 and b towards 0 (keeps tiny fits defined)
MAX_CLIP_ROUNDS = 10


def features(rows_per_net: Sequence[Sequence[Row]], overhead_us: float, group_by: str,
             groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(X, N, groups)``: per network (rows of the arrays) and group (columns), Σ v_r and the
    number of timed rows. ``groups`` fixes the column order (unknown groups of new networks are
    dropped into no column; pass the fit's groups and use :func:`LatencyModel` to predict them)."""
    d = Design.of(rows_per_net, overhead_us, group_by, groups)
    X, N = d.XN()
    return X, N, list(d.groups)


@dataclass(frozen=True)
class Design:
    """The timed rows of a set of networks, flattened for one overhead and grouping: row ``r``
    belongs to network ``net[r]`` and group ``grp[r]`` and has ``v[r] = max(value − overhead, 0)``
    (analytic rows cost 0 and are left out)."""

    net: np.ndarray
    grp: np.ndarray
    v: np.ndarray
    groups: tuple[str, ...]
    n: int

    @classmethod
    def of(cls, rows_per_net: Sequence[Sequence[Row]], overhead_us: float, group_by: str,
           groups: Sequence[str] | None = None) -> "Design":
        fixed = groups is not None
        col: dict[str, int] = {g: j for j, g in enumerate(groups or ())}
        net, grp, v = [], [], []
        for i, rows in enumerate(rows_per_net):
            for op, stage, med, analytic in rows:
                if analytic:
                    continue
                g = group_key(group_by, op, stage)
                j = col.get(g)
                if j is None:
                    if fixed:
                        continue
                    j = col[g] = len(col)
                net.append(i)
                grp.append(j)
                v.append(max(float(med) - overhead_us, 0.0))
        return cls(np.asarray(net, dtype=np.int64), np.asarray(grp, dtype=np.int64), np.asarray(v, dtype=np.float64),
                   tuple(col), len(rows_per_net))

    def XN(self, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per network and group: Σ v and the count of the rows in ``keep`` (default: all)."""
        G = len(self.groups)
        k = np.ones(self.v.size) if keep is None else keep.astype(np.float64)
        idx = self.net * G + self.grp
        X = np.bincount(idx, weights=self.v * k, minlength=self.n * G).reshape(self.n, G)
        N = np.bincount(idx, weights=k, minlength=self.n * G).reshape(self.n, G)
        return X, N

    def predict(self, co: "Coefficients", constant: bool = True) -> np.ndarray:
        """Every network's prediction under ``co`` (rows clipped at 0, as the model does)."""
        a = np.array([co.slopes.get(g, co.slope) for g in self.groups])
        b = np.array([co.per_rows.get(g, co.per_row) for g in self.groups])
        cost = np.maximum(a[self.grp] * self.v + b[self.grp], 0.0) if self.v.size else np.zeros(0)
        return (co.constant if constant else 0.0) + np.bincount(self.net, weights=cost, minlength=self.n)


@dataclass(frozen=True)
class Coefficients:
    constant: float
    slope: float
    per_row: float
    slopes: dict[str, float]
    per_rows: dict[str, float]


def _solve(X: np.ndarray, N: np.ndarray, y: np.ndarray, groups: Sequence[str], lam: float,
           tied: Collection[str] = (), per_row: bool = True) -> Coefficients:
    """Weighted (relative-error) ridge least squares; see the module docstring.

    Parameters ``[c, a, b, a_f.., b_f..]`` over the *free* groups ``f`` (all groups when ``lam``
    is finite, minus ``tied`` and groups with no rows in ``X``); a tied group's rows count towards
    the global ``a``, ``b``. ``per_row=False`` fixes every ``b`` at 0 (the affine fit c + a·Σ)."""
    n, G = X.shape
    w = 1.0 / y
    counts = N.sum(0)
    free = [j for j, g in enumerate(groups) if not math.isinf(lam) and g not in tied and counts[j] > 0]
    fset = set(free)
    tj = [j for j in range(G) if j not in fset]
    F = len(free)
    P = 3 + 2 * F
    A = np.zeros((n, P))
    A[:, 0] = 1.0
    A[:, 1] = X[:, tj].sum(1)
    A[:, 2] = N[:, tj].sum(1)
    A[:, 3:3 + F] = X[:, free]
    A[:, 3 + F:] = N[:, free]
    A *= w[:, None]
    t = np.ones(n)
    sx = np.mean(X * w[:, None], axis=0) if n else np.zeros(G)
    sn = np.mean(N * w[:, None], axis=0) if n else np.zeros(G)
    pen: list[np.ndarray] = []
    pen_t: list[float] = []
    if F:
        root = math.sqrt(lam)
        for k, j in enumerate(free):
            r = np.zeros(P)
            r[3 + k], r[1] = root * sx[j], -root * sx[j]
            pen.append(r)
            pen_t.append(0.0)
            r = np.zeros(P)
            r[3 + F + k], r[2] = root * sn[j], -root * sn[j]
            pen.append(r)
            pen_t.append(0.0)
    pr = math.sqrt(PRIOR)
    tot_x, tot_n = float(sx.sum()) or 1.0, float(sn.sum()) or 1.0
    r = np.zeros(P)
    r[1] = pr * tot_x
    pen.append(r)
    pen_t.append(pr * tot_x)
    r = np.zeros(P)
    r[2] = pr * tot_n
    pen.append(r)
    pen_t.append(0.0)
    A = np.vstack([A, np.array(pen)])
    t = np.concatenate([t, pen_t])
    active = np.ones(P, dtype=bool)
    if not per_row:
        active[2] = False
        active[3 + F:] = False
    slope_idx = np.r_[1, 3:3 + F]
    x = np.zeros(P)
    x[active] = _lstsq(A[:, active], t)
    if np.any(x[slope_idx] < 0):  # a slope constraint binds: solve the bounded problem
        x = np.zeros(P)
        x[active] = _bounded_lstsq(A[:, active], t, np.isin(np.flatnonzero(active), slope_idx))
    a, b = float(x[1]), float(x[2])
    slopes = {g: a for g in groups}
    per_rows = {g: b for g in groups}
    for k, j in enumerate(free):
        slopes[groups[j]] = float(x[3 + k])
        per_rows[groups[j]] = float(x[3 + F + k])
    return Coefficients(float(x[0]), a, b, slopes, per_rows)


def _lstsq(A: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``argmin ‖A x − t‖`` by the normal equations of the column-scaled problem (a tiny ridge
    keeps exactly collinear columns, e.g. a fixed part every network has once and the constant,
    defined; it does not move predictions). SVD-based ``lstsq`` took 10–100× longer on a loaded
    2-core machine, and a model choice solves thousands of these."""
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    B = A / scale
    G = B.T @ B
    G[np.diag_indices_from(G)] += 1e-12 * max(float(np.trace(G)), 1.0)
    try:
        z = np.linalg.solve(G, B.T @ t)
    except np.linalg.LinAlgError:
        z = np.linalg.lstsq(B, t, rcond=None)[0]
    if not np.all(np.isfinite(z)):
        z = np.linalg.lstsq(B, t, rcond=None)[0]
    return z / scale


def _bounded_lstsq(A: np.ndarray, t: np.ndarray, nonneg: np.ndarray) -> np.ndarray:
    """``argmin ‖A x − t‖`` with ``x[nonneg] ≥ 0`` and the other entries free, by non-negative
    least squares (Lawson–Hanson, compiled: scipy's ``nnls``) on ``[A_nonneg, A_free, −A_free]``:
    a free entry is the difference of two non-negative ones. Fast where ``lsq_linear``'s BVLS,
    written in Python, took seconds for a hundred parameters."""
    from scipy.optimize import nnls

    free = ~nonneg
    B = np.hstack([A[:, nonneg], A[:, free], -A[:, free]])
    scale = np.linalg.norm(B, axis=0)
    scale[scale == 0] = 1.0
    z, _ = nnls(B / scale, t, maxiter=50 * B.shape[1])
    z = z / scale
    x = np.zeros(A.shape[1])
    k, f = int(nonneg.sum()), int(free.sum())
    x[nonneg] = z[:k]
    x[free] = z[k:k + f] - z[k + f:]
    return x


def solve_design(d: Design, y: np.ndarray, lam: float, subset: np.ndarray | None = None,
                 tied: Collection[str] = (), per_row: bool = True) -> tuple[Coefficients, int]:
    """Fit on the networks ``subset`` of ``d`` (indices, repeats allowed: a bootstrap) with the
    clip at 0 respected (see the module docstring). ``y`` holds the subset's latencies, in
    order. Returns the coefficients and how many timed rows (of all of ``d``'s rows) they clip."""
    sub = np.arange(d.n) if subset is None else np.asarray(subset, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.ones(d.v.size, dtype=bool)
    seen: set[bytes] = set()
    co = None
    for _ in range(MAX_CLIP_ROUNDS):
        X, N = d.XN(keep)
        co = _solve(X[sub], N[sub], y, d.groups, lam, tied, per_row)
        a = np.array([co.slopes[g] for g in d.groups])
        b = np.array([co.per_rows[g] for g in d.groups])
        new = (a[d.grp] * d.v + b[d.grp]) >= 0 if d.v.size else keep
        if np.array_equal(new, keep) or new.tobytes() in seen:
            keep = new
            break
        seen.add(keep.tobytes())
        keep = new
    assert co is not None
    return co, int((~keep).sum())


def _model(scope: ModelScope, overhead: float, group_by: str, co: Coefficients, column: str = "median_us",
           provenance: dict[str, Any] | None = None) -> LatencyModel:
    return LatencyModel(scope=scope, overhead_us=float(overhead), constant_us=co.constant, group_by=group_by,
                        column=column, slopes=co.slopes, per_row=co.per_rows, default_slope=co.slope,
                        default_per_row=co.per_row, provenance=provenance or {})


def fit_fixed(rows_per_net: Sequence[Sequence[Row]], y: Sequence[float], scope: ModelScope, overhead_us: float,
              group_by: str, lam: float, column: str = "median_us", tied: Collection[str] = ()) -> LatencyModel:
    """One fit with a given grouping and λ on rows whose values come from LUT ``column``
    (``tied``: groups held at the global slope and per-row cost)."""
    y = np.asarray(y, dtype=np.float64)
    d = Design.of(rows_per_net, overhead_us, group_by)
    co, clipped = solve_design(d, y, lam if group_by != "none" else math.inf, tied=tied)
    return _model(scope, overhead_us, group_by, co, column, {"clipped_rows": clipped} if clipped else None)


def fit_affine_model(rows_per_net: Sequence[Sequence[Row]], y: Sequence[float], scope: ModelScope,
                     column: str = "median_us") -> LatencyModel:
    """``c + a · Σ LUT`` as a :class:`LatencyModel` (overhead 0, one slope, no per-row term),
    fitted on the relative error like every other candidate; ``a ≥ 0``."""
    d = Design.of(rows_per_net, 0.0, "none")
    co, _ = solve_design(d, np.asarray(y, dtype=np.float64), math.inf, per_row=False)
    return _model(scope, 0.0, "none", co, column, {"affine": True})


def raw_model(scope: ModelScope, column: str = "median_us") -> LatencyModel:
    """The raw LUT sum as a model (overhead 0, slope 1, nothing else)."""
    return LatencyModel(scope=scope, overhead_us=0.0, constant_us=0.0, column=column, provenance={"fitted": False})


UNFITTED = "measured-overhead-only"


def overhead_model(scope: ModelScope, overhead_us: float, column: str = "median_us") -> LatencyModel:
    """The model with nothing fitted: every row minus the measured per-call overhead, plus one
    overhead for the network."""
    return LatencyModel(scope=scope, overhead_us=float(overhead_us), constant_us=float(overhead_us),
                        column=column, provenance={"fitted": False})


RowsByColumn = Mapping[str, Sequence[Sequence[Row]]]  # LUT column -> rows of every network
