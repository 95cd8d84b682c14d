"""Ratios and rank agreement between two LUTs' matched entries (see :mod:`latbench.lut.compare`
for the definitions): geometric-mean ratios per group, Spearman ρ and Kendall τ over entries, over
distinct keys and per candidate position."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from latbench.space import format_resolution


@dataclass(frozen=True)
class GroupStat:
    """Geometric-mean ratio (other/baseline) of one group of matched entries."""

    group: str
    n: int
    geomean_ratio: float
    speedup: float
    median_ratio: float
    min_ratio: float
    max_ratio: float
    baseline_sum_us: float
    other_sum_us: float


@dataclass(frozen=True)
class RankAgreement:
    n: int
    spearman_rho: float
    kendall_tau: float


@dataclass(frozen=True)
class PositionRank:
    position: str
    resolution: str
    stage: str
    n_ops: int
    kendall_tau: float
    spearman_rho: float


@dataclass(frozen=True)
class TauSummary:
    """Distribution of per-position Kendall τ (positions with a defined τ)."""

    positions: int
    undefined: int
    mean: float
    median: float
    min: float
    p10: float
    share_perfect: float
    share_below_0_5: float


def group_stat(name: str, e: pd.DataFrame) -> GroupStat:
    r = e["ratio"].to_numpy(dtype=float)
    g = float(np.exp(np.mean(np.log(r)))) if len(r) else math.nan
    return GroupStat(group=name, n=len(r), geomean_ratio=g, speedup=1.0 / g if len(r) else math.nan,
                     median_ratio=float(np.median(r)) if len(r) else math.nan,
                     min_ratio=float(r.min()) if len(r) else math.nan,
                     max_ratio=float(r.max()) if len(r) else math.nan,
                     baseline_sum_us=float(e["median_us_a"].sum()), other_sum_us=float(e["median_us_b"].sum()))


def groups(e: pd.DataFrame, by: str | list[str], name: Any) -> list[GroupStat]:
    out = [group_stat(name(k), g) for k, g in e.groupby(by, sort=True)]
    return out


def rank_agreement(x: Sequence[float], y: Sequence[float]) -> RankAgreement:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return RankAgreement(len(x), math.nan, math.nan)
    rho = stats.spearmanr(x, y).statistic
    tau = stats.kendalltau(x, y).statistic
    return RankAgreement(len(x), float(rho), float(tau))


def position_ranks(e: pd.DataFrame) -> list[PositionRank]:
    cand = e[e["kind"] == "candidate"]
    out = []
    for (pos, h, w), g in cand.groupby(["position", "height", "width"], sort=True):
        ra = rank_agreement(g["median_us_a"], g["median_us_b"])
        out.append(PositionRank(str(pos), format_resolution((h, w)), str(g["stage"].iloc[0]), len(g), ra.kendall_tau,
                                ra.spearman_rho))
    return out


def tau_summary(ranks: Sequence[PositionRank]) -> TauSummary:
    t = np.array([r.kendall_tau for r in ranks], dtype=float)
    d = t[np.isfinite(t)]
    if not len(d):
        return TauSummary(0, len(t), math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    return TauSummary(positions=len(d), undefined=len(t) - len(d), mean=float(d.mean()),
                      median=float(np.median(d)), min=float(d.min()), p10=float(np.percentile(d, 10)),
                      share_perfect=float(np.mean(d >= 1.0 - 1e-12)), share_below_0_5=float(np.mean(d < 0.5)))


def rank_distinct(e: pd.DataFrame) -> RankAgreement:
    d = e.drop_duplicates(subset=["key"])
    return rank_agreement(d["median_us_a"], d["median_us_b"])
