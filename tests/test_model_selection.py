"""Robust model choice (latbench.model.selection) on synthetic networks with a known truth:
grouped folds never split a search, the one-standard-error rule prefers the simplest adequate
candidate, the fit respects the clip at 0, per-op corrections survive only where a bootstrap
supports them, and the cheapest-op report counts what changes for a search."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from latbench.model.fitting import Design, fit_fixed, fit_model, raw_sum, solve_design
from latbench.model.latency_model import LatencyModel, ModelScope
from latbench.model.op_changes import cheapest_op_changes
from latbench.model.selection import (Candidate, candidates, grouped_folds, one_standard_error,
                                      repeated_cv, select_and_fit)

SCOPE = ModelScope("fake", "fp32", 32, 64, 1, "warm", {"type": "cpu", "name": "Fake CPU"})
OVERHEAD = 5.0
OPS = {"conv": 40.0, "sep": 25.0, "pool": 8.0, "skip": 3.0}


def networks(n: int, seed: int, weights=None):
    """Rows of ``n`` networks: 12 positions whose kernel time varies with the position (so a row's
    value is not a function of its op alone), ops drawn with ``weights``."""
    rng = random.Random(seed)
    ops = list(OPS) + ["zero"]
    out = []
    for _ in range(n):
        rows = [("stem", "fixed", 60.0 + OVERHEAD, False)]
        for p in range(12):
            op = rng.choices(ops, weights=weights)[0]
            if op == "zero":  # analytic: costs nothing, and makes the row count vary
                rows.append(("zero", "s4" if p < 6 else "s8", 0.0, True))
                continue
            out_v = OPS[op] * (0.5 + 0.1 * p)
            rows.append((op, "s4" if p < 6 else "s8", out_v + OVERHEAD, False))
        out.append(rows)
    return out


def truth(rows, slope, per_row, constant=20.0):
    return constant + sum(max(slope[op if op in slope else "*"] * (v - OVERHEAD) + per_row.get(op, 0.0), 0.0)
                          for op, _, v, a in rows if not a)


def test_candidates_are_ordered_simplest_first():
    names = [c.name for c in candidates(("median_us", "p10_us"))]
    assert names[:5] == ["raw", "overhead", "affine", "global", "global p10"]
    assert names.index("per-op λ30") < names.index("per-op p10 λ30") < names.index("per-op λ3") \
        < names.index("per-op λ0.03") < names.index("per-op+stage λ30")


def test_grouped_folds_never_split_a_group_and_cover_every_network_once():
    groups = ["search-a"] * 8 + ["search-b"] * 5 + [f"u{i}" for i in range(17)]
    for seed in range(5):
        folds = grouped_folds(groups, 5, seed)
        allidx = np.concatenate(folds)
        assert sorted(allidx) == list(range(30))
        for g in ("search-a", "search-b"):
            members = {i for i, x in enumerate(groups) if x == g}
            assert sum(bool(members & set(f)) for f in folds) == 1
    assert len(grouped_folds(["a", "a", "b", "b", "c"], 5, 0)) == 3  # k capped at the groups
    with pytest.raises(ValueError):
        grouped_folds(["a"] * 6, 3, 0)
    # different seeds give different splits of the singletons
    assert any(not np.array_equal(a, b) for a, b in zip(grouped_folds(groups, 5, 0), grouped_folds(groups, 5, 1)))


def test_one_standard_error_rule_prefers_the_affine_fit_when_it_explains_the_networks():
    rows = networks(40, 1)
    rng = np.random.default_rng(0)
    y = np.array([1.3 * raw_sum(r) + 100.0 for r in rows]) * (1 + 0.003 * rng.standard_normal(40))
    model, sel = select_and_fit({"median_us": rows}, y, SCOPE, OVERHEAD, fold_seeds=range(4), n_boot=20)
    assert sel.chosen.name == "affine" and model.overhead_us == 0.0 and model.group_by == "none"
    for r in networks(10, 2):
        assert model.predict_rows(r) == pytest.approx(1.3 * raw_sum(r) + 100.0, rel=0.01)
    # the chosen one is within one standard error of the best, and every simpler one is not
    chosen, best, thr = one_standard_error(sel.scores)
    assert chosen.mape <= thr
    assert all(s.mape > thr for s in sel.scores if s.candidate.complexity < chosen.candidate.complexity)
    assert sum(s.wins for s in sel.scores) == 4
    d = sel.to_dict()
    assert d["chosen"] == "affine" and len(d["candidates"]) == len(sel.scores) and d["fold_seeds"] == [0, 1, 2, 3]


def test_a_parameter_free_candidate_is_chosen_only_when_it_scores_best():
    from latbench.model.selection import CVScore

    def score(c, mape, se=0.5):
        return CVScore(c, mape, se, (mape,))

    over, aff, per_op = Candidate("overhead"), Candidate("affine"), Candidate("fitted", "median_us", "op", 3.0)
    # the overhead form within one SE of the best: the simplest *fitted* one within it is chosen
    chosen, best, _ = one_standard_error([score(over, 1.3), score(aff, 1.4), score(per_op, 1.0)])
    assert best.candidate == per_op and chosen.candidate == aff
    chosen, _, _ = one_standard_error([score(over, 1.3), score(aff, 2.0), score(per_op, 1.0)])
    assert chosen.candidate == per_op
    # scoring best, it is chosen
    chosen, best, _ = one_standard_error([score(over, 0.9), score(aff, 1.0), score(per_op, 1.0)])
    assert chosen.candidate == over == best.candidate


def test_per_op_corrections_are_chosen_when_they_matter():
    rows = networks(40, 3)
    slope = {"conv": 1.25, "sep": 0.8, "pool": 1.0, "skip": 1.0, "*": 1.0}
    y = np.array([truth(r, slope, {}) for r in rows])
    model, sel = fit_model({"median_us": rows}, y, SCOPE, OVERHEAD, fold_seeds=range(3), n_boot=50)
    assert sel.chosen.group_by in ("op", "op+stage")
    assert model.provenance["selection"]["chosen"] == sel.chosen.name
    test = networks(20, 4)
    err = [abs(model.predict_rows(r) - truth(r, slope, {})) / truth(r, slope, {}) for r in test]
    assert max(err) < 0.01


def test_the_fit_respects_the_clip_at_zero():
    # pool rows cost max(2·v − 16, 0): small pools are free in the network (fused away). A plain
    # least-squares line through them goes negative at the small pools, which the model clips, so
    # its predictions are not the fit's; the clip-aware fit refits with those rows at 0 and lands
    # on the truth.
    rows = networks(40, 5, weights=[1, 1, 4, 1, 1])
    slope = {"conv": 1.0, "sep": 1.0, "pool": 2.0, "skip": 1.0, "*": 1.0}
    per_row = {"pool": -16.0}
    y = np.array([truth(r, slope, per_row) for r in rows])
    m = fit_fixed(rows, y, SCOPE, OVERHEAD, "op", lam=1e-6)
    assert m.provenance.get("clipped_rows", 0) > 0
    test = networks(20, 6, weights=[1, 1, 4, 1, 1])
    err = [abs(m.predict_rows(r) - truth(r, slope, per_row)) / truth(r, slope, per_row) for r in test]
    assert max(err) < 1e-3
    assert m.slopes["pool"] == pytest.approx(2.0, abs=0.01) and m.per_row["pool"] == pytest.approx(-16.0, abs=0.1)
    # the same problem without clip-awareness (one plain solve) is visibly worse
    from latbench.model.fitting import _solve, MAX_CLIP_ROUNDS  # noqa: F401

    d = Design.of(rows, OVERHEAD, "op")
    X, N = d.XN()
    naive = _solve(X, N, y, d.groups, 1e-6)
    dt = Design.of(test, OVERHEAD, "op", d.groups)
    yt = np.array([truth(r, slope, per_row) for r in test])
    assert np.max(np.abs(dt.predict(naive) - yt) / yt) > 10 * max(err)


def test_a_correction_the_bootstrap_does_not_support_is_shrunk_to_the_global_fit():
    # Only conv differs from the rest; with noise on y, per-op λ small is chosen, conv keeps its
    # slope, the others are tied to the global values.
    rows = networks(40, 7)
    slope = {"conv": 1.4, "*": 1.0}
    rng = np.random.default_rng(1)
    y = np.array([truth(r, slope, {}) for r in rows]) * (1 + 0.004 * rng.standard_normal(40))
    cand = [Candidate("fitted", "median_us", "op", 0.03)]  # force the per-op structure
    model, sel = select_and_fit({"median_us": rows}, y, SCOPE, OVERHEAD, fold_seeds=range(2), n_boot=100,
                                cands=cand)
    sup = {g.group: g for g in sel.groups_support}
    assert sup["conv"].supported and sup["conv"].effect_us[1] > 0
    assert "conv" not in sel.tied and len(sel.tied) >= 1
    for g in sel.tied:
        assert model.slopes[g] == pytest.approx(model.default_slope)
        assert model.per_row[g] == pytest.approx(model.default_per_row)
    assert model.slopes["conv"] > model.default_slope
    assert len(sel.bootstrap_models) == 100


def test_search_groups_are_held_apart_in_cross_validation():
    rows = networks(30, 8) + networks(10, 9, weights=[5, 1, 1, 1, 1])
    y = np.array([truth(r, {"*": 1.1}, {}) for r in rows])
    groups = [f"u{i}" for i in range(30)] + ["search"] * 10
    scores, errs = repeated_cv({"median_us": rows}, y, OVERHEAD, candidates(), groups, 5, range(2))
    assert errs.shape == (len(scores), 2, 40)
    _, sel = select_and_fit({"median_us": rows}, y, SCOPE, OVERHEAD, groups=groups, fold_seeds=range(2), n_boot=10)
    assert sel.grouping.startswith("grouped: 31 groups, 1 with several")
    _, sel1 = select_and_fit({"median_us": rows}, y, SCOPE, OVERHEAD, groups=["s"] * 40, fold_seeds=range(2),
                             n_boot=10)
    assert sel1.grouping.startswith("ungrouped")


def test_cheapest_op_changes_counts_changes_and_their_bootstrap_support():
    # Two edges. Raw: conv (20) < sep (25) at both. The model makes conv dearer (slope 2).
    pos = {"e0": [("conv", "s4", 20.0, False), ("sep", "s4", 25.0, False), ("zero", "s4", 0.0, True)],
           "e1": [("conv", "s4", 20.0, False), ("sep", "s4", 41.0, False)],
           "e2": [("conv", "s4", 20.0, False), ("zero", "s4", 0.0, True)]}  # one timed op: not an edge choice
    model = LatencyModel(SCOPE, 0.0, 0.0, group_by="op", slopes={"conv": 2.0, "sep": 1.0})
    def models(lo, hi):
        return [LatencyModel(SCOPE, 0.0, 0.0, group_by="op", slopes={"conv": s, "sep": 1.0}) for s in np.linspace(lo, hi, 10)]

    firm = models(1.9, 2.1)
    out = cheapest_op_changes(pos, model, firm)
    assert out["edges"] == 2 and out["changed"] == 1 and out["supported"] == 1  # e0 flips to sep; e1 stays conv
    e0 = next(e for e in out["per_edge"] if e["position"] == "e0")
    assert e0["raw_cheapest"] == "conv" and e0["model_cheapest"] == "sep" and e0["bootstrap_share"] == 1.0
    shaky = models(1.0, 2.0)
    out = cheapest_op_changes(pos, model, shaky)
    assert out["changed"] == 1 and out["supported"] == 0
    assert cheapest_op_changes(pos, model)["supported"] == 0  # no bootstrap: nothing is supported


def test_bounded_and_plain_least_squares_match_scipy():
    from scipy.optimize import lsq_linear

    from latbench.model.lsq import _bounded_lstsq, _lstsq

    rng = np.random.default_rng(3)
    for _ in range(5):
        A = rng.normal(size=(60, 12)) * rng.uniform(0.01, 100, 12)  # columns on very different scales
        t = rng.normal(size=60)
        assert np.allclose(_lstsq(A, t), np.linalg.lstsq(A, t, rcond=None)[0], rtol=1e-6, atol=1e-9)
        nonneg = np.arange(12) % 3 == 0
        lo = np.where(nonneg, 0.0, -np.inf)
        want = lsq_linear(A, t, bounds=(lo, np.full(12, np.inf)), method="bvls").x
        got = _bounded_lstsq(A, t, nonneg)
        assert np.all(got[nonneg] >= 0)
        assert np.linalg.norm(A @ got - t) == pytest.approx(np.linalg.norm(A @ want - t), rel=1e-7)
