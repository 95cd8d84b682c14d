"""latbench.model.metrics against hand-computed values and independent numpy/scipy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from latbench.model.metrics import (fidelity, fit_affine, kendall_tau, mape, relative_errors, share_within,
                                  spearman_rho)

# A small recorded set: Σ LUT (µs) and measured (µs) of five architectures.
PRED = [1000.0, 1200.0, 900.0, 1500.0, 1100.0]
MEAS = [1040.0, 1190.0, 1000.0, 1620.0, 1100.0]


def test_mape_and_shares_by_hand():
    # |errors| / measured: 40/1040, 10/1190, 100/1000, 120/1620, 0/1100
    rel = [40 / 1040, 10 / 1190, 100 / 1000, 120 / 1620, 0.0]
    assert mape(PRED, MEAS) == pytest.approx(100 * sum(rel) / 5, rel=1e-12)
    assert share_within(PRED, MEAS, 0.05) == pytest.approx(3 / 5)  # 3.8 %, 0.8 %, 0 %
    assert share_within(PRED, MEAS, 0.10) == pytest.approx(1.0)  # 10 % exactly counts as within
    assert relative_errors([110.0], [100.0])[0] == pytest.approx(0.1)


def test_rank_correlations_match_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=12)
        y = x + rng.normal(scale=0.7, size=12)
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    x = [1, 2, 2, 3, 4, 4, 4, 5]
    y = [2, 1, 3, 3, 5, 4, 6, 6]
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_affine_fit_equals_polyfit_and_loo_equals_refitting():
    fit = fit_affine(PRED, MEAS)
    a, b = np.polyfit(PRED, MEAS, 1)
    assert fit.a == pytest.approx(a, rel=1e-10) and fit.b == pytest.approx(b, rel=1e-8, abs=1e-6)
    cal = a * np.array(PRED) + b
    assert fit.mape == pytest.approx(100 * np.mean(np.abs(cal - MEAS) / MEAS), rel=1e-10)
    # leave-one-out by brute force: refit without point i, predict point i
    loo = []
    for i in range(len(PRED)):
        p = np.delete(PRED, i)
        m = np.delete(MEAS, i)
        ai, bi = np.polyfit(p, m, 1)
        loo.append(ai * PRED[i] + bi)
    assert np.allclose(fit.loo_predictions, loo, rtol=1e-10)
    rel = np.abs(np.array(loo) - MEAS) / MEAS
    assert fit.loo_mape == pytest.approx(100 * rel.mean(), rel=1e-10)
    assert fit.loo_max_abs_pct == pytest.approx(100 * rel.max(), rel=1e-10)


def test_exact_affine_relation_is_recovered():
    p = np.array([10.0, 20.0, 35.0, 50.0])
    m = 1.25 * p + 7.0
    fit = fit_affine(p, m)
    assert fit.a == pytest.approx(1.25) and fit.b == pytest.approx(7.0)
    assert fit.mape == pytest.approx(0.0, abs=1e-9) and fit.loo_mape == pytest.approx(0.0, abs=1e-9)
    f = fidelity(p, m)
    assert f.kendall_tau == pytest.approx(1.0) and f.spearman_rho == pytest.approx(1.0)
    assert f.calibrated_within_5 == 1.0
    assert f.mean_ratio == pytest.approx(float(np.mean(m / p)))


def test_fidelity_collects_everything_and_serialises():
    f = fidelity(PRED, MEAS)
    assert f.n == 5 and f.mape == pytest.approx(mape(PRED, MEAS))
    assert f.kendall_tau == pytest.approx(stats.kendalltau(PRED, MEAS).statistic)
    d = f.to_dict()
    assert set(d["calibration"]) >= {"a", "b", "mape", "loo_mape"} and "loo_predictions" not in d["calibration"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        mape([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        mape([1.0], [0.0])
    with pytest.raises(ValueError):
        fit_affine([1.0, 2.0], [1.0, 2.0])  # needs 3 points
    with pytest.raises(ValueError):
        fit_affine([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])
    assert fidelity([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]).calibration is None
