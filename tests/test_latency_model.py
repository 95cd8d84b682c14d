"""The latency model (latbench.model.latency_model) and its fit (latbench.model.fitting) on synthetic networks whose
true cost is known: per-call overhead paid once per row but once per network, fusion savings per
op type, a context slope, a constant."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from latbench.errors import LUTError, UserError
from latbench.model.latency_model import LatencyModel, ModelScope, model_for, stored_models, with_model
from latbench.model.fitting import features, fit_fixed, fit_model, mechanisms, raw_sum

SCOPE = ModelScope("fake", "fp32", 32, 64, 1, "warm", {"type": "cpu", "name": "Fake CPU"})
OPS = {"conv": 40.0, "sep": 25.0, "pool": 8.0, "skip": 3.0}
OVERHEAD = 5.0
# Ground truth of the fake backend: a network pays each op's kernel time scaled by a context
# factor, minus a fusion saving per op boundary, plus the per-call overhead once.
CONTEXT = {"conv": 1.10, "sep": 0.90, "pool": 1.0, "skip": 1.0}
FUSION_SAVING = {"conv": 2.0, "sep": 4.0, "pool": 0.5, "skip": 0.0}
FIXED = [("stem", "fixed", 60.0), ("head", "fixed", 30.0)]


def sample_rows(rng: random.Random, positions: int = 12) -> list[tuple[str, str, float, bool]]:
    rows = [(op, st, v + OVERHEAD, False) for op, st, v in FIXED]
    for p in range(positions):
        op = rng.choice(list(OPS) + ["zero"])
        stage = "s4" if p < 6 else "s8"
        kernel = OPS[op] * (1 if stage == "s4" else 0.5) if op != "zero" else 0.0
        rows.append((op, stage, kernel + OVERHEAD if op != "zero" else 0.0, op == "zero"))
    return rows


def true_cost(rows) -> float:
    total = OVERHEAD
    for op, stage, med, analytic in rows:
        if analytic:
            continue
        kernel = med - OVERHEAD
        if op in CONTEXT:
            total += CONTEXT[op] * kernel - FUSION_SAVING[op]
        else:  # fixed parts
            total += kernel
    return total


def dataset(n: int, seed: int):
    rng = random.Random(seed)
    rows = [sample_rows(rng) for _ in range(n)]
    return rows, np.array([true_cost(r) for r in rows])


def test_raw_sum_is_the_special_case():
    rows, _ = dataset(5, 0)
    m = LatencyModel(SCOPE, overhead_us=0.0, constant_us=0.0)
    for r in rows:
        assert m.predict_rows(r) == pytest.approx(raw_sum(r))


def test_features_count_timed_rows_and_subtract_overhead():
    rows = [("conv", "s4", 45.0, False), ("conv", "s8", 25.0, False), ("zero", "s4", 0.0, True)]
    X, N, groups = features([rows], OVERHEAD, "op")
    assert groups == ["conv"]
    assert X[0, 0] == pytest.approx(40.0 + 20.0)
    assert N[0, 0] == 2
    X, N, groups = features([rows], OVERHEAD, "op+stage")
    assert sorted(groups) == ["conv@s4", "conv@s8"]


def test_per_group_fit_recovers_the_fake_backend_exactly():
    rows, y = dataset(40, 1)
    m = fit_fixed(rows, y, SCOPE, OVERHEAD, "op", lam=1e-6)
    test_rows, test_y = dataset(30, 2)
    pred = np.array([m.predict_rows(r) for r in test_rows])
    assert np.max(np.abs(pred - test_y) / test_y) < 1e-3
    # The per-op slopes are the context factors (fixed parts are collinear with the constant,
    # so only the candidate ops' slopes are identified).
    for op in CONTEXT:
        if op != "skip":
            assert m.slopes[op] == pytest.approx(CONTEXT[op], abs=0.02)


def test_cross_validation_picks_groups_when_they_matter_and_beats_every_simpler_mechanism():
    rows, y = dataset(40, 3)
    model, sel = fit_model({"median_us": rows}, y, SCOPE, OVERHEAD)
    assert sel.group_by != "none" and sel.column == "median_us"
    test_rows, test_y = dataset(30, 4)
    ladder = mechanisms({"median_us": rows}, y, SCOPE, OVERHEAD, model)
    assert list(ladder) == ["raw", "affine", "overhead", "overhead+global", "model"]
    err = {k: np.mean([abs(f({"median_us": r}) - t) / t for r, t in zip(test_rows, test_y)])
           for k, f in ladder.items()}
    assert err["model"] < 0.002
    assert err["model"] < err["affine"] < err["raw"]
    assert err["model"] < err["overhead+global"]


def test_global_model_is_chosen_when_groups_do_not_help():
    # A backend that is an exact affine function of the raw sum: per-group terms buy nothing.
    rows, _ = dataset(40, 5)
    y = np.array([1.3 * raw_sum(r) + 100.0 for r in rows])
    rng = np.random.default_rng(0)
    y = y * (1 + 0.002 * rng.standard_normal(y.size))
    model, sel = fit_model({"median_us": rows}, y, SCOPE, OVERHEAD)
    test_rows, _ = dataset(20, 6)
    for r in test_rows:
        assert model.predict_rows(r) == pytest.approx(1.3 * raw_sum(r) + 100.0, rel=0.01)


def test_fit_refuses_too_few_networks():
    rows, y = dataset(4, 7)
    with pytest.raises(ValueError, match="at least 5"):
        fit_model({"median_us": rows}, y, SCOPE, OVERHEAD)


def test_cross_validation_chooses_the_lut_column_that_predicts():
    # The truth follows the rows' 10th percentiles, whose ratio to the median differs from
    # position to position (no per-group linear map of the medians reproduces them): the fit must
    # pick p10_us.
    rows, _ = dataset(40, 9)
    ratio = [1.0, 1.0] + [0.6 + 0.4 * ((7 * p) % 5) / 4 for p in range(12)]  # fixed parts, then positions
    p10 = [[(op, st, ratio[j] * v, a) for j, (op, st, v, a) in enumerate(r)] for r in rows]
    y = np.array([true_cost(r) for r in p10])
    model, sel = fit_model({"median_us": rows, "p10_us": p10}, y, SCOPE, OVERHEAD)
    assert sel.column == "p10_us" and model.column == "p10_us"
    ladder = mechanisms({"median_us": rows, "p10_us": p10}, y, SCOPE, OVERHEAD, model)
    assert "+p10 column" in ladder


def test_row_costs_are_never_negative():
    m = LatencyModel(SCOPE, overhead_us=OVERHEAD, constant_us=10.0, group_by="op",
                     slopes={"conv": 1.0}, per_row={"conv": -100.0})
    assert m.row_cost("conv", "s4", 20.0) == 0.0
    assert m.row_cost("zero", "s4", 0.0, analytic=True) == 0.0


# ---- storage and refusal -----------------------------------------------------------------------
def test_model_round_trips_through_metadata_and_is_found_for_its_scope():
    rows, y = dataset(20, 8)
    m = fit_fixed(rows, y, SCOPE, OVERHEAD, "op", 0.3)
    meta = with_model({"backend": "fake"}, m)
    meta = json.loads(json.dumps(meta))  # what a Parquet file's metadata holds
    back = model_for(meta, SCOPE)
    assert back is not None and back.model_id == m.model_id
    for r in rows:
        assert back.predict_rows(r) == pytest.approx(m.predict_rows(r))
    # Storing a model of the same scope replaces it; another scope is added.
    other = ModelScope("fake", "fp32", 64, 128, 1, "warm", SCOPE.device)
    meta2 = with_model(with_model(meta, m), LatencyModel(other, 1.0, 2.0))
    assert len(stored_models(meta2)) == 2


def test_model_for_another_scope_is_refused_in_one_line():
    m = LatencyModel(SCOPE, 1.0, 2.0)
    meta = with_model({}, m)
    for other, word in [(ModelScope("ort", "fp32", 32, 64, 1, "warm", SCOPE.device), "backend"),
                        (ModelScope("fake", "fp16", 32, 64, 1, "warm", SCOPE.device), "precision"),
                        (ModelScope("fake", "fp32", 64, 64, 1, "warm", SCOPE.device), "resolution"),
                        (ModelScope("fake", "fp32", 32, 64, 1, "warm", {"type": "cuda", "name": "H100"}), "device")]:
        with pytest.raises(LUTError) as exc:
            model_for(meta, other)
        msg = exc.value.message
        assert word in msg and "\n" not in msg and "latbench fit" in msg
    assert model_for({}, SCOPE) is None
    with pytest.raises(UserError):
        model_for({}, SCOPE, required=True)


@pytest.mark.parametrize("bad", [
    "not a list", [42], [{"version": 99}], [{"version": 1, "scope": {}}],
    [{"version": 1, "scope": SCOPE.to_dict(), "overhead_us": "x", "constant_us": 1}],
    [{"version": 1, "scope": SCOPE.to_dict(), "overhead_us": math.inf, "constant_us": 1}],
])
def test_corrupt_model_metadata_is_refused_in_one_line(bad):
    with pytest.raises(LUTError) as exc:
        model_for({"latency_models": bad}, SCOPE)
    assert "\n" not in exc.value.message


def test_d_optimal_design_spreads_the_fit_networks_over_every_direction():
    from latbench.model.fit import d_optimal

    rng = np.random.default_rng(0)
    pool = rng.multinomial(80, [1 / 8] * 8, size=2000).astype(float)  # op counts of uniform networks
    pool[:, 0] *= 30.0  # a column on another scale: the design standardises
    picks = d_optimal(pool, 40)
    assert len(set(picks)) == 40

    def logdet(rows):
        f = (rows - pool.mean(0)) / pool.std(0)
        f = np.column_stack([np.ones(len(f)), f])
        return np.linalg.slogdet(f.T @ f)[1]

    random_sets = [logdet(pool[rng.choice(2000, 40, replace=False)]) for _ in range(20)]
    assert logdet(pool[picks]) > max(random_sets)
    # the chosen networks reach further into each op's range than uniform picks do
    spread = pool[picks].std(0) / pool.std(0)
    assert np.all(spread > 1.2)
