"""Choosing the latency model robustly (pure numpy; no timing, no files).

A single 5-fold split of 20–40 networks is a lottery: the winner's margin is often smaller than
what another split moves. This module chooses the model the way the data can support:

1. **Candidates in a fixed order of complexity** (:func:`candidates`, simplest first)::

       raw Σ  →  measured overhead only  →  affine a·Σ + b  →  global slope (median column)
       →  global slope (p10 column)  →  per-op (λ 30, 3, 0.3, 0.03)  →  per-op+stage (λ 30 … 0.03)

   The sort key is (structure, λ from strong to weak pull, column median before p10): per-op at
   λ 30 on the median is simpler than per-op at λ 30 on the p10 column, which is simpler than
   per-op at λ 3. The affine fit is a candidate of its own (fitted on the relative error, like
   every other).
2. **Repeated, grouped cross-validation** (:func:`repeated_cv`): ``k``-fold over several fold seeds
   (default :data:`FOLD_SEEDS`: 10 × 5-fold). Networks carry a group label — a uniform draw is its
   own group, networks drawn from one search's α share one — and a group never sits on both
   sides of a split (:func:`grouped_folds`), so the score says how well a model predicts a search
   it was not fitted on, not a sibling of its fit networks.
3. **The one-standard-error rule**: each candidate's score is its MAPE over all networks and fold
   seeds; the standard error is that of the best candidate's per-network errors (averaged over
   seeds) over the networks, ``sd / √n``. The *simplest* candidate whose score is within one SE of
   the best is chosen — except that the parameter-free candidates (raw Σ, measured overhead only)
   are chosen only when they score best: the rule trades variance for bias, they have no variance,
   and their bias shows only on networks unlike the fit networks (issue 17: on `ort`, the overhead
   form chosen within one SE over-predicted other searches' networks by 7 %, where a fitted per-op
   form on the same measurements was 1.9 % off; `benchmarks/results/lut_swap-ort-65x129-2026-12-04.md`).
   How often each candidate wins a single seed is reported (``wins``): it
   shows how much a one-split choice would have been a lottery.
4. **Per-group corrections only where a bootstrap supports them** (:func:`group_support`): the
   chosen per-group structure is refitted on :data:`N_BOOT_GROUPS` bootstrap resamples of the fit
   networks; a group keeps its own slope and per-row cost only if the 90 % interval of its effect
   on a typical row of the group relative to the median group (``(a_g − med a)·v̄_g + (b_g − med b)``,
   µs) excludes 0; every other group is tied to the global values. The final model is refitted
   with those ties.
5. The clip at 0 µs is respected by every fit (:func:`latbench.model.lsq.solve_design`).

:func:`latbench.model.op_changes.cheapest_op_changes` reports, for a search, at how many edges the
model's cheapest timed op differs from the raw LUT's and how many of those changes the bootstrap supports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from latbench.model.lsq import (LAMBDAS, UNFITTED, Coefficients, Design, RowsByColumn, _model, overhead_model,
                                raw_model, solve_design)
from latbench.model.latency_model import LatencyModel, ModelScope

FOLD_SEEDS = tuple(range(10))
N_BOOT_GROUPS = 200
SUPPORT_LEVEL = 0.90
EFFECT_TOL_US = 1e-6  # an effect interval must clear 0 by more than rounding error
STRUCTURES = ("raw", "overhead", "affine", "none", "op", "op+stage")  # complexity order
COLUMN_ORDER = ("median_us", "p10_us")
#: candidates with nothing fitted: rungs of the ladder, chosen only when they score best
PARAMETER_FREE = ("raw", "overhead")


@dataclass(frozen=True)
class Candidate:
    """One model structure: ``kind`` raw / overhead / affine / fitted; for fitted ones the
    grouping and λ (``math.inf`` for the global fit)."""

    kind: str
    column: str = "median_us"
    group_by: str = "none"
    lam: float = math.inf

    @property
    def structure(self) -> str:
        return self.group_by if self.kind == "fitted" else self.kind

    @property
    def complexity(self) -> tuple[int, float, int]:
        """Sort key, simplest first: structure, then λ from strong to weak pull (∞ first), then
        the column (median before p10)."""
        col = COLUMN_ORDER.index(self.column) if self.column in COLUMN_ORDER else len(COLUMN_ORDER)
        return (STRUCTURES.index(self.structure), -self.lam, col)

    @property
    def name(self) -> str:
        if self.kind == "raw":
            return "raw"
        if self.kind == "overhead":
            return "overhead" + ("" if self.column == "median_us" else " (p10)")
        if self.kind == "affine":
            return "affine"
        col = "" if self.column == "median_us" else " p10"
        if self.group_by == "none":
            return f"global{col}"
        return f"{'per-op' if self.group_by == 'op' else 'per-op+stage'}{col} λ{self.lam:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "column": self.column,
                "group_by": UNFITTED if self.kind == "overhead" else self.group_by,
                "lambda": None if math.isinf(self.lam) else self.lam}


def candidates(columns: Iterable[str] = ("median_us",), groupings: Sequence[str] = ("none", "op", "op+stage"),
               lambdas: Sequence[float] = LAMBDAS) -> list[Candidate]:
    """Every candidate, simplest first (see the module docstring for the order)."""
    cols = [c for c in COLUMN_ORDER if c in set(columns)] + [c for c in columns if c not in COLUMN_ORDER]
    out = [Candidate("raw"), Candidate("overhead"), Candidate("affine")]
    for col in cols:
        for gb in groupings:
            for lam in ([math.inf] if gb == "none" else [v for v in lambdas if not math.isinf(v)]):
                out.append(Candidate("fitted", col, gb, lam))
    return sorted(out, key=lambda c: c.complexity)


# ---- folds ---------------------------------------------------------------------------------------
def grouped_folds(groups: Sequence[Any], k: int, seed: int) -> list[np.ndarray]:
    """``k`` folds (index arrays) such that all networks of one group sit in one fold. Groups are
    shuffled by ``seed``, then placed largest first into the fold with the fewest networks so far,
    so folds stay as even as the groups allow. ``k`` is capped at the number of groups."""
    labels = list(dict.fromkeys(groups))
    if len(labels) < 2:
        raise ValueError("grouped cross-validation needs at least two groups")
    k = max(2, min(k, len(labels)))
    members: dict[Any, list[int]] = {g: [] for g in labels}
    for i, g in enumerate(groups):
        members[g].append(i)
    rng = np.random.default_rng(seed)
    order = [labels[j] for j in rng.permutation(len(labels))]
    order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the shuffled order
    folds: list[list[int]] = [[] for _ in range(k)]
    start = int(rng.integers(k))
    for g in order:
        j = min(range(k), key=lambda f: (len(folds[f]), (f - start) % k))
        folds[j].extend(members[g])
    return [np.array(sorted(f), dtype=np.int64) for f in folds if f]


# ---- candidates as fits on precomputed designs -----------------------------------------------------
class _Designs:
    """Designs per (column, overhead, grouping), built once for all networks."""

    def __init__(self, rows: RowsByColumn, overhead_us: float) -> None:
        self.rows, self.overhead = rows, overhead_us
        self._cache: dict[tuple[str, float, str], Design] = {}

    def get(self, column: str, overhead: float, group_by: str) -> Design:
        key = (column, overhead, group_by)
        if key not in self._cache:
            self._cache[key] = Design.of(self.rows[column], overhead, group_by)
        return self._cache[key]

    def of(self, c: Candidate) -> tuple[Design, float, bool]:
        """The design, λ and whether there is a per-row term for candidate ``c``."""
        if c.kind in ("raw", "affine"):
            return self.get("median_us", 0.0, "none"), math.inf, False
        if c.kind == "overhead":
            return self.get(c.column, self.overhead, "none"), math.inf, True
        return self.get(c.column, self.overhead, c.group_by), c.lam, True


def _fixed_coefficients(c: Candidate, overhead: float) -> Coefficients | None:
    if c.kind == "raw":
        return Coefficients(0.0, 1.0, 0.0, {}, {})
    if c.kind == "overhead":
        return Coefficients(overhead, 1.0, 0.0, {}, {})
    return None


def _fit(designs: _Designs, c: Candidate, y: np.ndarray, subset: np.ndarray | None = None,
         tied: Sequence[str] = ()) -> tuple[Coefficients, int]:
    fixed = _fixed_coefficients(c, designs.overhead)
    if fixed is not None:
        return fixed, 0
    d, lam, per_row = designs.of(c)
    ys = y if subset is None else y[subset]
    return solve_design(d, ys, lam, subset, tied=tied, per_row=per_row)


def _to_model(c: Candidate, co: Coefficients, scope: ModelScope, overhead: float) -> LatencyModel:
    if c.kind == "raw":
        return raw_model(scope)
    if c.kind == "overhead":
        return overhead_model(scope, overhead, c.column)
    if c.kind == "affine":
        return _model(scope, 0.0, "none", co, "median_us", {"affine": True})
    return _model(scope, overhead, c.group_by, co, c.column)


# ---- repeated grouped cross-validation -----------------------------------------------------------
@dataclass(frozen=True)
class CVScore:
    candidate: Candidate
    mape: float                   # % over all networks and fold seeds
    se: float                     # % standard error over networks (per-network errors averaged over seeds)
    per_seed: tuple[float, ...]   # % MAPE of each fold seed
    wins: int = 0                 # fold seeds on which this candidate had the lowest MAPE

    def to_dict(self) -> dict[str, Any]:
        return {**self.candidate.to_dict(), "cv_mape": self.mape, "se": self.se,
                "per_seed_min": min(self.per_seed), "per_seed_max": max(self.per_seed), "wins": self.wins}


def repeated_cv(rows: RowsByColumn, y: Sequence[float], overhead_us: float, cands: Sequence[Candidate],
                groups: Sequence[Any] | None = None, k: int = 5,
                fold_seeds: Sequence[int] = FOLD_SEEDS) -> tuple[list[CVScore], np.ndarray]:
    """Every candidate's cross-validated relative errors, ``k``-fold per fold seed, folds grouped
    by ``groups`` (None: every network its own group). Returns the scores (in ``cands`` order) and
    the per-network errors, shape (candidates, seeds, networks), as fractions."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    labels = list(range(n)) if groups is None else list(groups)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} group labels for {n} networks")
    designs = _Designs(rows, overhead_us)
    errs = np.zeros((len(cands), len(fold_seeds), n))
    for s, seed in enumerate(fold_seeds):
        folds = grouped_folds(labels, k, seed)
        for fold in folds:
            train = np.setdiff1d(np.arange(n), fold)
            for ci, c in enumerate(cands):
                co, _ = _fit(designs, c, y, train)
                d, _, _ = designs.of(c)
                pred = d.predict(co)[fold]
                errs[ci, s, fold] = np.abs(pred - y[fold]) / y[fold]
    per_seed = 100.0 * errs.mean(axis=2)
    winners = np.argmin(per_seed, axis=0)
    scores = []
    for ci, c in enumerate(cands):
        e = errs[ci].mean(axis=0)
        se = float(100.0 * e.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        scores.append(CVScore(c, float(100.0 * e.mean()), se, tuple(float(v) for v in per_seed[ci]),
                              int(np.sum(winners == ci))))
    return scores, errs


def one_standard_error(scores: Sequence[CVScore]) -> tuple[CVScore, CVScore, float]:
    """(chosen, best, threshold): the simplest candidate whose score is within one standard error
    of the best score (ties in complexity: the lower score). A parameter-free candidate
    (:data:`PARAMETER_FREE`) is chosen only when it scores best: it has no variance for the rule to
    trade against, and its bias is judged only on networks of the fit networks' kind."""
    best = min(scores, key=lambda s: (s.mape, s.candidate.complexity))
    threshold = best.mape + (best.se if math.isfinite(best.se) else 0.0)
    ok = [s for s in scores if s.mape <= threshold + 1e-12
          and (s is best or s.candidate.kind not in PARAMETER_FREE)]
    chosen = min(ok, key=lambda s: (s.candidate.complexity, s.mape))
    return chosen, best, threshold


# ---- per-group corrections and the bootstrap ------------------------------------------------------
@dataclass(frozen=True)
class GroupSupport:
    """A group's correction over bootstrap resamples of the fit networks (90 % intervals)."""

    group: str
    slope: tuple[float, float, float]      # (fit, lo, hi)
    per_row_us: tuple[float, float, float]
    effect_us: tuple[float, float, float]  # (a_g − med a)·v̄_g + (b_g − med b): the correction on a typical row
    typical_v_us: float
    supported: bool

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "slope": list(self.slope), "per_row_us": list(self.per_row_us),
                "effect_us": list(self.effect_us), "typical_v_us": self.typical_v_us, "supported": self.supported}


def _interval(v: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.nanpercentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_coefficients(d: Design, y: np.ndarray, lam: float, n_boot: int, seed: int,
                           tied: Sequence[str] = (), per_row: bool = True) -> list[Coefficients]:
    """The fit refitted on ``n_boot`` resamples (with replacement) of the networks of ``d``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        idx = rng.integers(0, d.n, d.n)
        co, _ = solve_design(d, y[idx], lam, idx, tied=tied, per_row=per_row)
        out.append(co)
    return out


def group_support(d: Design, y: np.ndarray, lam: float, boot: Sequence[Coefficients], full: Coefficients,
                  level: float = SUPPORT_LEVEL) -> list[GroupSupport]:
    """Per group of ``d``: its slope, per-row cost and effect on a typical row (the mean ``v`` of
    its rows) relative to the median group (``(a_g − median a)·v̄_g + (b_g − median b)``), with
    bootstrap intervals; ``supported`` when the effect's interval excludes 0."""
    out = []
    # the reference a group is compared with: the median group (per resample), not the penalty's
    # centre, which a few heavy groups pull towards themselves so that every light group looks
    # different from it
    A = np.array([[c.slopes.get(g, c.slope) for g in d.groups] for c in boot])
    B = np.array([[c.per_rows.get(g, c.per_row) for g in d.groups] for c in boot])
    ma, mb = np.median(A, axis=1), np.median(B, axis=1)
    fa = np.median([full.slopes[g] for g in d.groups])
    fb = np.median([full.per_rows[g] for g in d.groups])
    for j, g in enumerate(d.groups):
        vbar = float(d.v[d.grp == j].mean()) if np.any(d.grp == j) else 0.0
        a, b = A[:, j], B[:, j]
        eff = (a - ma) * vbar + (b - mb)
        fe = (full.slopes[g] - fa) * vbar + (full.per_rows[g] - fb)
        lo, hi = _interval(eff, level)
        out.append(GroupSupport(g, (full.slopes[g], *_interval(a, level)), (full.per_rows[g], *_interval(b, level)),
                                (float(fe), lo, hi), vbar, bool(lo > EFFECT_TOL_US or hi < -EFFECT_TOL_US)))
    return out


@dataclass(frozen=True)
class Selection:
    """What :func:`select_and_fit` chose, and why."""

    chosen: Candidate
    best: Candidate
    threshold: float
    scores: tuple[CVScore, ...]
    fold_seeds: tuple[int, ...]
    k: int
    grouping: str                                  # how folds were grouped, in words
    groups_support: tuple[GroupSupport, ...] = ()  # per-group corrections (per-group candidates only)
    tied: tuple[str, ...] = ()                     # groups shrunk to the global fit
    clipped_rows: int = 0
    n_boot: int = 0
    seed: int = 0
    bootstrap_models: tuple[LatencyModel, ...] = field(default=(), repr=False, compare=False)

    # the fields earlier callers read
    @property
    def column(self) -> str:
        return self.chosen.column

    @property
    def group_by(self) -> str:
        return UNFITTED if self.chosen.kind == "overhead" else self.chosen.group_by

    @property
    def lam(self) -> float:
        return self.chosen.lam

    @property
    def cv_mape(self) -> float:
        return next(s.mape for s in self.scores if s.candidate == self.chosen)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": "simplest candidate within one standard error of the best (repeated grouped k-fold CV)",
                "chosen": self.chosen.name, "best": self.best.name, "threshold": self.threshold,
                "k": self.k, "fold_seeds": list(self.fold_seeds), "grouping": self.grouping,
                "candidates": [s.to_dict() for s in self.scores],
                "groups": [g.to_dict() for g in self.groups_support], "tied_groups": list(self.tied),
                "clipped_rows": self.clipped_rows, "bootstrap": {"n": self.n_boot, "seed": self.seed,
                                                                 "level": SUPPORT_LEVEL}}


def select_and_fit(rows: RowsByColumn, y: Sequence[float], scope: ModelScope, overhead_us: float, *,
                   provenance: Mapping[str, Any] | None = None,
                   groupings: Sequence[str] = ("none", "op", "op+stage"), k: int = 5,
                   groups: Sequence[Any] | None = None, fold_seeds: Sequence[int] = FOLD_SEEDS,
                   n_boot: int = N_BOOT_GROUPS, seed: int = 0,
                   cands: Sequence[Candidate] | None = None) -> tuple[LatencyModel, Selection]:
    """The whole choice (module docstring, steps 1–5) and the final model fitted on every network."""
    y = np.asarray(y, dtype=np.float64)
    if np.any(~np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("measured latencies must be finite and positive")
    cands = list(cands) if cands is not None else candidates(rows.keys(), groupings)
    grouping = "every network its own group"
    if groups is not None:
        if len(groups) != y.size:
            raise ValueError(f"{len(groups)} group labels for {y.size} networks")
        n_labels = len(set(groups))
        if n_labels < 2:
            groups, grouping = None, "ungrouped (every network came from one group: nothing to hold apart)"
        else:
            big = sum(1 for g in set(groups) if list(groups).count(g) > 1)
            grouping = f"grouped: {n_labels} groups, {big} with several networks (one search's α each)"
    scores, _ = repeated_cv(rows, y, overhead_us, cands, groups, k, fold_seeds)
    chosen, best, threshold = one_standard_error(scores)
    designs = _Designs(rows, overhead_us)
    support: list[GroupSupport] = []
    tied: list[str] = []
    c = chosen.candidate
    co, clipped = _fit(designs, c, y)
    boot: list[Coefficients] = []
    if c.kind == "fitted" and c.group_by != "none":
        d, lam, _ = designs.of(c)
        pre = bootstrap_coefficients(d, y, lam, n_boot, seed)
        support = group_support(d, y, lam, pre, co)
        tied = [g.group for g in support if not g.supported]
        if tied:
            co, clipped = _fit(designs, c, y, tied=tied)
    if c.kind not in ("raw", "overhead") and n_boot > 0:
        d, lam, per_row = designs.of(c)
        boot = bootstrap_coefficients(d, y, lam, n_boot, seed + 1, tied=tied, per_row=per_row)
    model = _to_model(c, co, scope, overhead_us)
    boot_models = tuple(_to_model(c, b, scope, overhead_us) for b in boot)
    sel = Selection(c, best.candidate, threshold, tuple(scores), tuple(int(s) for s in fold_seeds), k, grouping,
                    tuple(support), tuple(tied), clipped, n_boot, seed, boot_models)
    n_folds = max(2, min(k, y.size if groups is None else len(set(groups))))
    prov = dict(provenance or {})
    prov.update({"lambda": None if math.isinf(c.lam) else c.lam, "cv_mape": sel.cv_mape, "cv_folds": n_folds,
                 "cv_fold_seeds": len(fold_seeds), "fitted": c.kind not in ("raw", "overhead"),
                 "candidate": c.name, "selection": sel.to_dict()})
    return LatencyModel(**{**model.__dict__, "provenance": {**dict(model.provenance), **prov}}), sel
