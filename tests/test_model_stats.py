"""Intervals and ceilings of latbench.model.metrics on synthetic data whose answer is known:
bootstrap intervals cover the true value at about the nominal rate, a paired difference finds
the better predictor, the simulated noise ceiling falls as noise grows and matches the τ a perfect
predictor actually scores."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from latbench.model.metrics import (_tau_b_resampled, bootstrap_set_metrics, kendall_tau, mape,
                                    noise_ceiling, paired_difference, paired_rung_differences, round_values,
                                    share_within, spearman_brown_ceiling, statistic_of)


def test_set_metrics_point_values_are_the_plain_metrics_and_lie_in_their_intervals():
    rng = np.random.default_rng(0)
    m = rng.uniform(10, 20, 30)
    p = m * (1 + 0.04 * rng.standard_normal(30))
    out = bootstrap_set_metrics(p, m, n_boot=500, seed=3)
    assert out["mape"]["value"] == pytest.approx(mape(p, m))
    assert out["within_5"]["value"] == pytest.approx(share_within(p, m, 0.05))
    assert out["kendall_tau"]["value"] == pytest.approx(kendall_tau(p, m))
    assert out["worst"]["value"] == pytest.approx(100 * np.max(np.abs(p - m) / m))
    for k in ("mape", "worst", "within_5", "within_10", "kendall_tau"):
        assert out[k]["lo"] <= out[k]["value"] + 1e-9 and out[k]["value"] <= out[k]["hi"] + 1e-9
    assert out["bootstrap"] == {"n": 500, "seed": 3, "level": 0.9}
    assert bootstrap_set_metrics(p, m, n_boot=500, seed=3) == out  # a fixed seed reproduces


def test_vectorised_resampled_tau_is_kendall_tau_b_of_each_resample():
    rng = np.random.default_rng(1)
    p, m = rng.normal(size=12), rng.normal(size=12)
    idx = rng.integers(0, 12, size=(20, 12))  # resamples repeat networks: pairs tied in both
    got = _tau_b_resampled(p, m, idx)
    want = [kendall_tau(p[i], m[i]) for i in idx]
    assert np.allclose(got, want)


def test_mape_interval_covers_the_true_mape_at_about_the_nominal_rate():
    rng = np.random.default_rng(2)
    sd = 0.03
    true_mape = 100 * sd * math.sqrt(2 / math.pi)  # E|N(0, sd)|
    hits = 0
    draws = 150
    for s in range(draws):
        m = rng.uniform(5, 50, 40)
        p = m * (1 + sd * rng.standard_normal(40))
        ci = bootstrap_set_metrics(p, m, n_boot=300, seed=s)["mape"]
        hits += ci["lo"] <= true_mape <= ci["hi"]
    assert 0.80 <= hits / draws <= 0.97


def test_paired_difference_finds_the_better_predictor_and_not_a_tie():
    rng = np.random.default_rng(4)
    m = rng.uniform(10, 30, 40)
    good = m * (1 + 0.01 * rng.standard_normal(40))
    bad = m * (1 + 0.06 * rng.standard_normal(40))
    d = paired_difference(good, bad, m, n_boot=500)
    assert d["mape"]["value"] < 0 and d["mape"]["hi"] < 0 and d["mape"]["better"] == "a"
    assert d["kendall_tau"]["better"] == "a" and d["kendall_tau"]["lo"] > 0
    same = paired_difference(good, good, m, n_boot=200)
    assert same["mape"] == {"value": 0.0, "lo": 0.0, "hi": 0.0, "better": None}
    # two equally good predictors: the interval straddles 0
    other = m * (1 + 0.01 * rng.standard_normal(40))
    tie = paired_difference(good, other, m, n_boot=500)
    assert tie["mape"]["lo"] < 0 < tie["mape"]["hi"] and tie["mape"]["better"] is None
    ladder = paired_rung_differences({"raw": bad, "affine": other, "model": good}, m, n_boot=200)
    assert set(ladder["model"]) == {"vs affine", "vs raw"} and set(ladder["affine"]) == {"vs raw"}
    assert set(ladder["raw"]) == {"vs affine"}


def _measure(truth: np.ndarray, rounds: int, noise: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-round window minima: interference only adds time (an exponential tail of scale
    ``noise`` × truth) plus a small symmetric jitter."""
    return [t * (1 + noise * rng.exponential(size=rounds) + 0.2 * noise * rng.standard_normal(rounds))
            for t in truth]


def test_simulated_ceiling_falls_as_noise_grows():
    rng = np.random.default_rng(5)
    truth = np.exp(rng.uniform(np.log(10), np.log(14), 30))
    taus, mapes = [], []
    for noise in (0.005, 0.03, 0.12):
        c = noise_ceiling(_measure(truth, 15, noise, rng), n_sim=300)
        taus.append(c["kendall_tau"]["value"])
        mapes.append(c["mape"]["value"])
    assert taus[0] > taus[1] > taus[2]
    assert mapes[0] < mapes[1] < mapes[2]
    assert taus[0] > 0.9


def test_simulated_and_spearman_brown_ceilings_match_what_a_perfect_predictor_scores():
    rng = np.random.default_rng(6)
    truth = np.exp(rng.uniform(np.log(10), np.log(14), 30))
    noise, rounds = 0.04, 16
    # what predicting the truth exactly scores against independent measurements
    actual_tau, actual_mape, sim_tau, sb_tau = [], [], [], []
    for _ in range(30):
        vals = _measure(truth, rounds, noise, rng)
        m = np.array([statistic_of(v) for v in vals])
        actual_tau.append(kendall_tau(truth, m))
        actual_mape.append(mape(m, truth))
        sim_tau.append(noise_ceiling(vals, n_sim=200)["kendall_tau"]["value"])
        halves = [(float(statistic_of(v[0::2])), float(statistic_of(v[1::2]))) for v in vals]
        sb_tau.append(spearman_brown_ceiling(halves)["kendall_tau"])
    # the naive even-vs-odd τ understates the ceiling; the corrected ones do not
    naive = np.mean([kendall_tau([float(statistic_of(v[0::2])) for v in vals],
                                 [float(statistic_of(v[1::2])) for v in vals]) for vals in
                     [_measure(truth, rounds, noise, rng) for _ in range(10)]])
    assert naive < np.mean(actual_tau) - 0.03
    assert abs(np.mean(sim_tau) - np.mean(actual_tau)) < 0.06
    assert abs(np.mean(sb_tau) - np.mean(actual_tau)) < 0.08
    # MAPE: a perfect predictor of what the measurement measures on average (interference's
    # bias, common to every network, is the fit's to absorb, not noise) scores the simulated figure
    ms = np.array([[statistic_of(v) for v in _measure(truth, rounds, noise, rng)] for _ in range(200)])
    expected = ms.mean(axis=0)
    actual = np.mean([mape(expected, row) for row in ms])
    sim = np.mean([noise_ceiling(_measure(truth, rounds, noise, rng), n_sim=200)["mape"]["value"] for _ in range(10)])
    assert sim == pytest.approx(actual, rel=0.15)


def test_ceiling_refuses_too_little_data():
    with pytest.raises(ValueError, match="at least 3"):
        noise_ceiling([[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="2 rounds"):
        noise_ceiling([[1.0, 2.0], [1.0], [3.0, 4.0]])


def test_round_values_follow_the_aggregate_rules():
    W = lambda r, lo, med, sup=False, ok=True: SimpleNamespace(round=r, min_us=lo, median_us=med,  # noqa: E731
                                                                superseded=sup, ok=ok)
    ws = [W(0, 10, 12), W(1, 30, 31, sup=True), W(1, 11, 13), W(2, 9, 9.5, ok=False), W(3, 8, 8.5)]
    assert round_values(ws) == [10, 11, 8]
    assert round_values(ws, "median") == [12, 13, 8.5]
    assert statistic_of(np.array([10.0, 11.0, 8.0, 20.0])) == pytest.approx(9.0)
