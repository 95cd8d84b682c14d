"""How well a LUT predicts whole networks: pure functions on (predicted, measured) pairs.

Everything takes two equal-length sequences of positive latencies (any one unit) and returns
plain floats; nothing here times, reads files or imports torch.

- :func:`mape` — mean absolute percentage error, ``100 · mean(|p − m| / m)`` (in %).
- :func:`share_within` — fraction of pairs with ``|p − m| / m <= tol`` (nn-Meter's ±5 % / ±10 %
  accuracy, as a fraction in [0, 1]).
- :func:`kendall_tau` — Kendall's τ-b (ties in either sequence handled as in scipy's default).
- :func:`spearman_rho` — Pearson correlation of average ranks.
- :func:`fit_affine` — least-squares ``m ≈ a·p + b`` plus its leave-one-out (LOO) errors, computed
  in closed form from the hat matrix (``e_i / (1 − h_ii)``) rather than by refitting n times.
- :func:`fidelity` — all of the above in one :class:`Fidelity` record.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np


def _pair(predicted: Sequence[float], measured: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    m = np.asarray(measured, dtype=np.float64).reshape(-1)
    if p.shape != m.shape:
        raise ValueError(f"predicted ({p.size}) and measured ({m.size}) differ in length")
    if p.size == 0:
        raise ValueError("no pairs")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(m))):
        raise ValueError("latencies must be finite")
    return p, m


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    """``(p − m) / m`` per pair (signed; positive = the prediction is too high)."""
    p, m = _pair(predicted, measured)
    if np.any(m <= 0):
        raise ValueError("measured latencies must be positive")
    return (p - m) / m


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error in % (relative to the measured value)."""
    return float(100.0 * np.mean(np.abs(relative_errors(predicted, measured))))


def share_within(predicted: Sequence[float], measured: Sequence[float], tol: float) -> float:
    """Fraction of pairs whose relative error is at most ``tol`` (0.05 for ±5 %)."""
    return float(np.mean(np.abs(relative_errors(predicted, measured)) <= tol + 1e-12))


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the average of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    sx = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b: (concordant − discordant) / sqrt((n0 − n1)(n0 − n2)); NaN if undefined."""
    a, b = _pair(x, y)
    n = a.size
    if n < 2:
        return math.nan
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(n, k=1)
    sa, sb = da[iu], db[iu]
    s = float(np.sum(sa * sb))
    n_a = float(np.sum(sa != 0))  # pairs not tied in a
    n_b = float(np.sum(sb != 0))
    if n_a == 0 or n_b == 0:
        return math.nan
    return s / math.sqrt(n_a * n_b)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson correlation of the average ranks; NaN if a sequence is constant."""
    a, b = _pair(x, y)
    if a.size < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(np.sum(ra * ra)) * float(np.sum(rb * rb)))
    return float(np.sum(ra * rb)) / den if den > 0 else math.nan


@dataclass(frozen=True)
class AffineFit:
    """``measured ≈ a · predicted + b`` by least squares, and how well it generalises.

    ``loo_predictions[i]`` is the calibrated prediction of pair i from a fit on the other n − 1
    pairs; ``loo_mape`` the MAPE (%) of those; ``mape`` the in-sample MAPE (%) after calibration.
    """

    a: float
    b: float
    n: int
    mape: float
    loo_mape: float
    loo_max_abs_pct: float
    loo_predictions: tuple[float, ...]

    def apply(self, predicted: float | np.ndarray) -> float | np.ndarray:
        return self.a * predicted + self.b


def fit_affine(predicted: Sequence[float], measured: Sequence[float]) -> AffineFit:
    """Least-squares affine calibration with closed-form leave-one-out errors (needs n >= 3 and
    at least two distinct predictions)."""
    p, m = _pair(predicted, measured)
    n = p.size
    if n < 3:
        raise ValueError(f"an affine calibration needs at least 3 pairs, got {n}")
    if np.ptp(p) == 0:
        raise ValueError("all predictions are equal: the affine calibration is undefined")
    X = np.column_stack([p, np.ones(n)])
    coef, *_ = np.linalg.lstsq(X, m, rcond=None)
    a, b = float(coef[0]), float(coef[1])
    fitted = X @ coef
    resid = m - fitted
    # Leverages h_ii = x_i (XᵀX)⁻¹ x_iᵀ; the LOO residual is e_i / (1 − h_ii).
    xtx_inv = np.linalg.inv(X.T @ X)
    h = np.einsum("ij,jk,ik->i", X, xtx_inv, X)
    loo_resid = resid / (1.0 - h)
    loo_pred = m - loo_resid
    loo_rel = np.abs(loo_resid) / m
    return AffineFit(a=a, b=b, n=int(n), mape=mape(fitted, m), loo_mape=float(100.0 * np.mean(loo_rel)),
                     loo_max_abs_pct=float(100.0 * np.max(loo_rel)),
                     loo_predictions=tuple(float(v) for v in loo_pred))


@dataclass(frozen=True)
class Fidelity:
    """Every figure ``latbench validate-lut`` reports (percentages in %, shares in [0, 1])."""

    n: int
    mape: float
    within_5: float
    within_10: float
    kendall_tau: float
    spearman_rho: float
    mean_ratio: float  # mean(measured / predicted)
    calibration: AffineFit | None
    calibrated_within_5: float | None
    calibrated_within_10: float | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.calibration is not None:
            d["calibration"] = {k: v for k, v in asdict(self.calibration).items() if k != "loo_predictions"}
        for k, v in list(d.items()):
            if isinstance(v, float) and math.isnan(v):
                d[k] = None
        return d


def fidelity(predicted: Sequence[float], measured: Sequence[float]) -> Fidelity:
    """All figures at once; the calibration is omitted (None) when fewer than 3 pairs or when every
    prediction is equal."""
    p, m = _pair(predicted, measured)
    try:
        fit: AffineFit | None = fit_affine(p, m)
    except ValueError:
        fit = None
    cal = fit.apply(p) if fit is not None else None
    return Fidelity(
        n=int(p.size), mape=mape(p, m), within_5=share_within(p, m, 0.05), within_10=share_within(p, m, 0.10),
        kendall_tau=kendall_tau(p, m), spearman_rho=spearman_rho(p, m),
        mean_ratio=float(np.mean(m / p)) if np.all(p > 0) else math.nan,
        calibration=fit,
        calibrated_within_5=share_within(cal, m, 0.05) if cal is not None else None,
        calibrated_within_10=share_within(cal, m, 0.10) if cal is not None else None,
    )
