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

Intervals and ceilings (issue 17), all vectorised numpy, milliseconds for a few dozen networks:

- :func:`bootstrap_set_metrics` — MAPE, worst, ±5 / ±10 % shares and τ of a set with percentile
  bootstrap intervals (networks resampled; :data:`N_BOOT` resamples, fixed seed, 90 %).
- :func:`paired_difference` / :func:`paired_rung_differences` — a rung minus another (the affine
  fit, the raw sum) on the same resamples, with its interval and which side it favours.
- :func:`noise_ceiling` — the τ and MAPE a perfect predictor would score against this
  measurement, simulated from each network's per-round values (:func:`round_values`);
  :func:`spearman_brown_ceiling` — the same from the even/odd split, Spearman–Brown corrected.
  Either replaces "even rounds against odd rounds", which understates how well the full
  measurement ranks the networks (each half has half the rounds).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

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


# ---- intervals: bootstrap over networks ----------------------------------------------------------
#: Bootstrap defaults: resamples and the level of every interval (percentile intervals).
N_BOOT = 2000
LEVEL = 0.90
BOOT_SEED = 0
SET_METRICS = ("mape", "worst", "within_5", "within_10", "kendall_tau")


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """``(n_boot, n)`` indices of networks drawn with replacement (a fixed ``seed``: recorded)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _tau_b_resampled(p: np.ndarray, m: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Kendall τ-b of ``(p[idx_b], m[idx_b])`` for every row ``idx_b`` (vectorised: one
    ``n × n`` sign matrix per sequence, gathered per resample). A network drawn twice forms a pair
    tied in both sequences, which τ-b leaves out, as :func:`kendall_tau` does."""
    sp = np.sign(p[:, None] - p[None, :])
    sm = np.sign(m[:, None] - m[None, :])
    out = np.empty(idx.shape[0])
    step = max(1, 4_000_000 // max(1, idx.shape[1] ** 2))
    for s in range(0, idx.shape[0], step):
        ib = idx[s:s + step]
        a = sp[ib[:, :, None], ib[:, None, :]]
        b = sm[ib[:, :, None], ib[:, None, :]]
        num = (a * b).sum(axis=(1, 2))
        den = np.sqrt((a != 0).sum(axis=(1, 2)).astype(float) * (b != 0).sum(axis=(1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + step] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def _set_stats(p: np.ndarray, m: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every set metric per resample (MAPE and worst in %, shares in [0, 1])."""
    rel = np.abs(p - m) / m
    r = rel[idx]
    return {"mape": 100.0 * r.mean(axis=1), "worst": 100.0 * r.max(axis=1),
            "within_5": (r <= 0.05 + 1e-12).mean(axis=1), "within_10": (r <= 0.10 + 1e-12).mean(axis=1),
            "kendall_tau": _tau_b_resampled(p, m, idx)}


def _point(p: np.ndarray, m: np.ndarray) -> dict[str, float]:
    rel = np.abs(p - m) / m
    return {"mape": float(100.0 * rel.mean()), "worst": float(100.0 * rel.max()),
            "within_5": float(np.mean(rel <= 0.05 + 1e-12)), "within_10": float(np.mean(rel <= 0.10 + 1e-12)),
            "kendall_tau": kendall_tau(p, m)}


def _summary(value: float, boot: np.ndarray, level: float) -> dict[str, float | None]:
    ok = boot[np.isfinite(boot)]
    if ok.size == 0 or not math.isfinite(value):
        return {"value": None if not math.isfinite(value) else value, "lo": None, "hi": None}
    lo, hi = np.percentile(ok, [50 * (1 - level), 50 * (1 + level)])
    return {"value": float(value), "lo": float(lo), "hi": float(hi)}


def bootstrap_set_metrics(predicted: Sequence[float], measured: Sequence[float], *, n_boot: int = N_BOOT,
                          seed: int = BOOT_SEED, level: float = LEVEL) -> dict[str, Any]:
    """MAPE, worst error, ±5 / ±10 % shares and Kendall τ of one set of networks, each with a
    percentile bootstrap interval at ``level`` (networks resampled with replacement, ``n_boot``
    times, ``seed`` fixed): ``{metric: {"value", "lo", "hi"}, "bootstrap": {n, seed, level}}``.
    The worst error's interval is the spread of the largest error among resampled sets: it says how
    much the worst case depends on which networks happened to be drawn, not a bound on it."""
    p, m = _pair(predicted, measured)
    if np.any(m <= 0):
        raise ValueError("measured latencies must be positive")
    idx = bootstrap_indices(p.size, n_boot, seed)
    boot = _set_stats(p, m, idx)
    point = _point(p, m)
    out: dict[str, Any] = {k: _summary(point[k], boot[k], level) for k in SET_METRICS}
    out["n"] = int(p.size)
    out["bootstrap"] = {"n": int(n_boot), "seed": int(seed), "level": float(level)}
    return out


def paired_difference(predicted_a: Sequence[float], predicted_b: Sequence[float], measured: Sequence[float], *,
                      n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = LEVEL) -> dict[str, Any]:
    """Metric(a) − metric(b) on the same networks, with a *paired* bootstrap interval (both
    predictors judged on the same resample each time), for every metric of
    :func:`bootstrap_set_metrics`. For MAPE and worst, negative means a is better; for the shares
    and τ, positive means a is better. ``better`` says, per metric, whether the interval excludes
    0 in a's favour (``"a"``), in b's (``"b"``) or not at all (``None``)."""
    pa, m = _pair(predicted_a, measured)
    pb, _ = _pair(predicted_b, measured)
    if np.any(m <= 0):
        raise ValueError("measured latencies must be positive")
    idx = bootstrap_indices(m.size, n_boot, seed)
    ba, bb = _set_stats(pa, m, idx), _set_stats(pb, m, idx)
    qa, qb = _point(pa, m), _point(pb, m)
    out: dict[str, Any] = {}
    for k in SET_METRICS:
        s = _summary(qa[k] - qb[k], ba[k] - bb[k], level)
        lower_is_better = k in ("mape", "worst")
        better = None
        if s["lo"] is not None and s["hi"] is not None:
            if s["hi"] < 0:
                better = "a" if lower_is_better else "b"
            elif s["lo"] > 0:
                better = "b" if lower_is_better else "a"
        out[k] = {**s, "better": better}
    out["n"] = int(m.size)
    out["bootstrap"] = {"n": int(n_boot), "seed": int(seed), "level": float(level), "paired": True}
    return out


def paired_rung_differences(ladder: Mapping[str, Sequence[float]], measured: Sequence[float], *,
                            against: Sequence[str] = ("affine", "raw"), n_boot: int = N_BOOT,
                            seed: int = BOOT_SEED, level: float = LEVEL) -> dict[str, dict[str, Any]]:
    """For every rung of an ablation ladder (name → predictions of one set), its paired difference
    to each rung in ``against`` present in the ladder: ``{rung: {"vs affine": ..., "vs raw": ...}}``
    (:func:`paired_difference`; the same resamples for every rung)."""
    out: dict[str, dict[str, Any]] = {}
    for name, pred in ladder.items():
        out[name] = {f"vs {ref}": paired_difference(pred, ladder[ref], measured, n_boot=n_boot, seed=seed, level=level)
                     for ref in against if ref in ladder and ref != name}
    return out


# ---- the ceiling: how well can the measurement itself be predicted? ------------------------------
def round_values(windows: Sequence[Any], statistic: str = "fastest-half") -> list[float]:
    """An item's per-round values as :func:`latbench.timing.interleave.aggregate` uses them
    (the latest good, not superseded window of each round; its minimum for ``fastest-half``, its
    median for ``median``). ``windows``: objects with ``ok``, ``superseded``, ``round``,
    ``min_us``, ``median_us`` (e.g. :class:`~latbench.timing.interleave.Window`)."""
    per_round: dict[int, Any] = {}
    for w in windows:
        if w.ok and not w.superseded:
            per_round[int(w.round)] = w
    return [float(w.min_us if statistic == "fastest-half" else w.median_us)
            for _, w in sorted(per_round.items())]


def statistic_of(values: np.ndarray, statistic: str = "fastest-half") -> np.ndarray:
    """The item's figure over the last axis of ``values`` (vectorised): the mean of the fastest
    half (at least one) or the median."""
    v = np.asarray(values, dtype=np.float64)
    if statistic == "median":
        return np.median(v, axis=-1)
    if statistic != "fastest-half":
        raise ValueError(f"unknown statistic {statistic!r}")
    h = max(1, v.shape[-1] // 2)
    return np.sort(v, axis=-1)[..., :h].mean(axis=-1)


def _tau_against(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Kendall τ-b between the fixed ``x`` and every row of ``Y`` (vectorised)."""
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(Y[:, :, None] - Y[:, None, :])
    num = (sx[None] * sy).sum(axis=(1, 2))
    den = np.sqrt(float((sx != 0).sum()) * (sy != 0).sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def noise_ceiling(per_round: Sequence[Sequence[float]], statistic: str = "fastest-half", *,
                  n_sim: int = 1000, seed: int = BOOT_SEED, level: float = LEVEL) -> dict[str, Any]:
    """The best τ and MAPE any prediction could score against this measurement, simulated from
    each network's own per-round spread.

    ``per_round[i]``: network i's per-round values (:func:`round_values`). Its measured figure is
    ``m_i = statistic(per_round[i])``. A perfect predictor knows every network's true latency;
    taking ``m`` for the truth, the measurement it would be judged against is simulated by
    resampling each network's rounds with replacement and recomputing the statistic (centred so
    that the simulated noise has mean 0 around ``m_i``: the bootstrap of a fastest-half mean is
    biased low). ``kendall_tau`` is τ(m, simulated measurement), ``mape`` the mean |simulated − m| / m,
    each as the median over ``n_sim`` simulations with a ``level`` interval. The MAPE ceiling is
    against what the measurement measures on average: a bias common to every network
    (interference adds time to all of them) is not noise, and a fit absorbs it. Taking the measured
    ``m`` for the truth widens the spread between networks by the noise itself, so the τ ceiling
    is, if anything, slightly optimistic: a model within its interval is at the ceiling."""
    vals = [np.asarray(v, dtype=np.float64) for v in per_round]
    if len(vals) < 3:
        raise ValueError(f"a ceiling needs at least 3 networks, got {len(vals)}")
    if any(v.size < 2 for v in vals):
        raise ValueError("every network needs at least 2 rounds for its spread")
    rng = np.random.default_rng(seed)
    m = np.array([float(statistic_of(v, statistic)) for v in vals])
    sims = np.empty((n_sim, len(vals)))
    for i, v in enumerate(vals):
        draws = v[rng.integers(0, v.size, size=(n_sim, v.size))]
        s = statistic_of(draws, statistic)
        sims[:, i] = s - (s.mean() - m[i])
    taus = _tau_against(m, sims)
    mapes = 100.0 * np.mean(np.abs(sims - m[None, :]) / m[None, :], axis=1)
    noise = np.std(sims, axis=0) / m

    def med(x: np.ndarray) -> dict[str, float | None]:
        ok = x[np.isfinite(x)]
        if ok.size == 0:
            return {"value": None, "lo": None, "hi": None}
        lo, hi = np.percentile(ok, [50 * (1 - level), 50 * (1 + level)])
        return {"value": float(np.median(ok)), "lo": float(lo), "hi": float(hi)}

    return {"method": "simulation from each network's per-round spread", "n": len(vals), "statistic": statistic,
            "kendall_tau": med(taus), "mape": med(mapes),
            "median_network_noise_pct": float(100.0 * np.median(noise)),
            "simulations": int(n_sim), "seed": int(seed), "level": float(level)}


def spearman_brown_ceiling(halves: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """The τ ceiling from split-half reliability: ``r`` = Pearson correlation (of log latencies)
    between each network's even-round and odd-round figures, Spearman–Brown corrected to the full
    measurement, ``R = 2r / (1 + r)``; the correlation between the truth and the measurement is
    ``√R``, and for a bivariate normal τ = (2/π)·arcsin(√R). The MAPE ceiling is the mean
    |half − half| / m scaled to the full measurement's noise: ``|a − b|`` has the spread of √2 ×
    a half's noise and a full measurement ``1/√2`` of a half's, so a perfect predictor's MAPE is
    about mean(|a − b| / mean(a, b)) / 2."""
    if len(halves) < 3:
        raise ValueError(f"a ceiling needs at least 3 networks, got {len(halves)}")
    a = np.log(np.array([h[0] for h in halves], dtype=np.float64))
    b = np.log(np.array([h[1] for h in halves], dtype=np.float64))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        r = math.nan
    else:
        r = float(np.corrcoef(a, b)[0, 1])
    R = 2 * r / (1 + r) if math.isfinite(r) and r > -1 else math.nan
    if not math.isfinite(R):
        tau = math.nan
    else:
        tau = (2 / math.pi) * math.asin(math.sqrt(R)) if R >= 0 else 0.0
    ea, eb = np.exp(a), np.exp(b)
    mape = float(100.0 * np.mean(np.abs(ea - eb) / (0.5 * (ea + eb))) / 2.0)
    return {"method": "Spearman-Brown corrected split-half reliability", "n": len(halves),
            "split_half_r": None if math.isnan(r) else r, "reliability": None if math.isnan(R) else R,
            "kendall_tau": None if math.isnan(tau) else tau, "mape": mape}
