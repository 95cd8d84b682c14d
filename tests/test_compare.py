"""latbench.lut.compare on hand-built LUTs whose right answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from latbench.lut.compare import CompareOptions, compare_luts, compare_pair, resolve_baseline
from latbench.lut.flips import decide_position
from latbench.errors import LUTError, UserError
from lut_factory import make_lut

CELL = {"conv_3x3": 10.0, "skip": 1.0, "max_pool_3x3": 3.0, "zero": 0.0}


def _decision(pair, position):
    return next(d for d in pair.flips.decisions if d.position == position)


def test_cheapest_op_flip_and_penalty():
    a = make_lut({"cell0.e0": dict(CELL), "cell1.e0": dict(CELL)}, name="a")
    # On b, conv_3x3 becomes the cheapest op at cell1.e0 only.
    b = make_lut({"cell0.e0": dict(CELL), "cell1.e0": {**CELL, "conv_3x3": 0.4}}, name="b")
    p = compare_pair(a, b, "a", "b")
    assert p.flips.positions == 2
    assert p.flips.cheapest_flips == 1
    d = _decision(p, "cell1.e0")
    assert d.cheapest_flip and d.cheapest_baseline == "skip" and d.cheapest_other == "conv_3x3"
    # skip costs 1.0 on b where conv costs 0.4: taking a's choice costs 0.6 µs (150 %).
    assert d.penalty_us == pytest.approx(0.6)
    assert d.penalty_rel == pytest.approx(1.5)
    # conv moved below skip and max_pool: two inversions of the 6 pairs (zero included in the order).
    assert d.inversions == 2 and d.pairs == 6
    assert sorted(d.inverted_pairs) == [("max_pool_3x3", "conv_3x3"), ("skip", "conv_3x3")]
    assert not _decision(p, "cell0.e0").cheapest_flip
    assert _decision(p, "cell0.e0").inversions == 0
    assert p.flips.by_stage["s8"]["cheapest_flips"] == 1 and p.flips.by_stage["s4"]["cheapest_flips"] == 0


def test_order_flip_without_cheapest_flip():
    a = make_lut({"cell0.e0": {"skip": 1.0, "max_pool_3x3": 3.0, "conv_3x3": 10.0}})
    b = make_lut({"cell0.e0": {"skip": 1.0, "max_pool_3x3": 12.0, "conv_3x3": 10.0}})
    d = _decision(compare_pair(a, b), "cell0.e0")
    assert not d.cheapest_flip and d.order_flip
    assert d.inverted_pairs == [("max_pool_3x3", "conv_3x3")]
    assert d.order_baseline == ["skip", "max_pool_3x3", "conv_3x3"]
    assert d.order_other == ["skip", "conv_3x3", "max_pool_3x3"]
    assert d.penalty_us == 0.0


def test_full_reversal_counts_every_pair():
    ops = {"o1": 1.0, "o2": 2.0, "o3": 4.0, "o4": 8.0}
    a = make_lut({"cell0.e0": {**ops, "zero": 0.0}})
    b = make_lut({"cell0.e0": {"o1": 8.0, "o2": 4.0, "o3": 2.0, "o4": 1.0, "zero": 0.0}})
    p = compare_pair(a, b)
    d = _decision(p, "cell0.e0")
    # 4 timed ops -> 6 pairs, all inverted; the 4 pairs with zero never invert (0 < x in both).
    assert (d.inversions, d.pairs) == (6, 10)
    assert d.cheapest_flip and d.cheapest_baseline == "o1" and d.cheapest_other == "o4"
    assert p.rank_positions[0].kendall_tau == pytest.approx(-1.0)
    assert p.rank_positions[0].n_ops == 4  # zero is not in rank statistics


def test_ties_within_tolerance_are_not_flips():
    a = make_lut({"cell0.e0": {"skip": 1.00, "max_pool_3x3": 1.01, "conv_3x3": 5.0}})
    b = make_lut({"cell0.e0": {"skip": 1.01, "max_pool_3x3": 1.00, "conv_3x3": 5.0}})
    tol = compare_pair(a, b, options=CompareOptions(tie_rel=0.02))
    d = _decision(tol, "cell0.e0")
    assert not d.cheapest_flip and d.inversions == 0
    assert d.near_cheapest_baseline == ["skip", "max_pool_3x3"]
    strict = compare_pair(a, b, options=CompareOptions(tie_rel=0.0))
    d = _decision(strict, "cell0.e0")
    assert d.cheapest_flip and d.inverted_pairs == [("skip", "max_pool_3x3")]
    # An absolute tolerance works too.
    d = _decision(compare_pair(a, b, options=CompareOptions(tie_rel=0.0, tie_abs_us=0.02)), "cell0.e0")
    assert not d.cheapest_flip and d.inversions == 0


def test_zero_is_never_the_cheapest_but_is_in_the_order():
    # A timed op within the absolute tolerance of 0 µs ties with zero in b but not in a: the
    # search's zero-vs-skip choice changed from "zero strictly cheaper" to "tie", not an inversion.
    a = make_lut({"cell0.e0": {"zero": 0.0, "skip": 1.0, "conv_3x3": 4.0}})
    b = make_lut({"cell0.e0": {"zero": 0.0, "skip": 0.05, "conv_3x3": 4.0}})
    d = _decision(compare_pair(a, b, options=CompareOptions(tie_abs_us=0.1)), "cell0.e0")
    assert d.cheapest_baseline == "skip" and d.cheapest_other == "skip"
    assert "zero" not in d.near_cheapest_baseline and d.order_baseline[0] == "zero"
    assert d.inversions == 0 and d.pairs == 3
    # If b timed "zero" (a different space version) above skip, that is an order inversion.
    b2 = make_lut({"cell0.e0": {"zero": 0.0, "skip": 1.0, "conv_3x3": 4.0}},
                  row_overrides=None)
    b2.df.loc[b2.df["op"] == "zero", ["status", "median_us"]] = ["ok", 2.0]
    p = compare_pair(a, b2)
    d = _decision(p, "cell0.e0")
    assert d.inverted_pairs == [("zero", "skip")]
    assert not d.cheapest_flip  # zero is analytic on one side: never "the cheapest timed op"


def test_fixed_positions_have_ratios_but_no_decisions():
    a = make_lut({"fixed.stem": {"stem": 50.0}, "cell0.e0": dict(CELL)})
    b = make_lut({"fixed.stem": {"stem": 100.0}, "cell0.e0": dict(CELL)})
    p = compare_pair(a, b)
    assert [d.position for d in p.flips.decisions] == ["cell0.e0"]
    fixed = next(g for g in p.by_stage if g.group == "fixed")
    assert fixed.n == 1 and fixed.geomean_ratio == pytest.approx(2.0) and fixed.speedup == pytest.approx(0.5)


def test_geometric_means_per_group_and_resolution():
    res = ((32, 64), (64, 128))
    a = make_lut({"cell0.e0": {"conv_3x3": 10.0, "skip": 1.0, "zero": 0.0},
                  "fusion.e0": {"conv_3x3": 20.0, "skip": 2.0}}, resolutions=res)
    b = make_lut({"cell0.e0": {"conv_3x3": 40.0, "skip": 1.0, "zero": 0.0},
                  "fusion.e0": {"conv_3x3": 5.0, "skip": 2.0}}, resolutions=res, backend="other", precision="fp16")
    p = compare_pair(a, b)
    # Backend/precision differ, entries still match: 2 resolutions x 5 rows, 2 of them analytic.
    assert p.matching.matched == 10 and p.matching.compared == 8 and p.matching.analytic == 2
    by_op = {g.group: g for g in p.by_op}
    assert by_op["conv_3x3"].geomean_ratio == pytest.approx(1.0)  # sqrt(4 * 0.25)
    assert by_op["skip"].geomean_ratio == pytest.approx(1.0)
    stage = {g.group: g for g in p.by_stage}
    assert stage["s4"].geomean_ratio == pytest.approx(2.0)  # sqrt(4 * 1)
    assert stage["fusion"].geomean_ratio == pytest.approx(0.5)
    assert stage["fusion"].speedup == pytest.approx(2.0)
    assert [g.group for g in p.by_resolution] == ["32x64", "64x128"]
    assert p.overall.geomean_ratio == pytest.approx(1.0) and p.overall.n == 8
    assert p.flips.positions == 4  # two positions at two resolutions
    assert p.flips.order_flips == 0


def test_matching_one_sided_and_failed_entries():
    a = make_lut({"cell0.e0": {"conv_3x3": 10.0, "skip": 1.0, "max_pool_3x3": None},
                  "cell1.e0": {"skip": 1.0}, "cell2.e0": {"skip": 1.0}})
    b = make_lut({"cell0.e0": {"conv_3x3": 9.0, "skip": 1.0, "max_pool_3x3": 2.0}, "cell9.e0": {"skip": 1.0}})
    p = compare_pair(a, b, "a", "b", CompareOptions(max_listed=1))
    m = p.matching
    assert (m.matched, m.compared, m.failed_baseline, m.failed_other) == (3, 2, 1, 0)
    assert (m.only_baseline, m.only_other) == (2, 1)
    assert m.only_baseline_examples == ["cell1.e0/skip@32x64"]
    assert m.only_other_examples == ["cell9.e0/skip@32x64"]
    # The failed op is left out of the decision; the two others keep their order.
    d = _decision(p, "cell0.e0")
    assert d.n_ops == 2 and d.inversions == 0


def test_rank_agreement_overall_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    ops = [f"op{i}" for i in range(6)]
    va = {f"cell{k}.e0": {o: float(rng.uniform(1, 100)) for o in ops} for k in range(4)}
    vb = {p: {o: v * float(rng.uniform(0.5, 2.0)) for o, v in d.items()} for p, d in va.items()}
    p = compare_pair(make_lut(va), make_lut(vb))
    xa = [va[k][o] for k in sorted(va) for o in sorted(ops)]
    xb = [vb[k][o] for k in sorted(va) for o in sorted(ops)]
    assert p.rank_entries.n == 24
    assert p.rank_entries.spearman_rho == pytest.approx(stats.spearmanr(xa, xb).statistic)
    assert p.rank_entries.kendall_tau == pytest.approx(stats.kendalltau(xa, xb).statistic)
    # The factory shares one key per (op, stage): cell1..cell3 are s8 -> 6 (s4) + 6 (s8) distinct keys,
    # and compare keeps the first timing of each key.
    assert p.rank_distinct.n == 12


def test_disjoint_luts_are_refused():
    a = make_lut({"cell0.e0": dict(CELL)}, resolutions=((32, 64),))
    b = make_lut({"cell0.e0": dict(CELL)}, resolutions=((64, 128),))
    with pytest.raises(LUTError, match="share no entry"):
        compare_pair(a, b)


def test_lut_with_two_backends_per_entry_is_refused():
    a = make_lut({"cell0.e0": dict(CELL)})
    b1 = make_lut({"cell0.e0": dict(CELL)}, backend="eager")
    b2 = make_lut({"cell0.e0": dict(CELL)}, backend="cudagraph")
    import pandas as pd

    from latbench.lut.table import LUT

    both = LUT(pd.concat([b1.df, b2.df], ignore_index=True), b1.meta)
    with pytest.raises(LUTError, match="one backend"):
        compare_pair(a, both, "a", "both")


def test_three_luts_and_baseline_choice():
    a = make_lut({"cell0.e0": dict(CELL)}, name="a")
    b = make_lut({"cell0.e0": {k: 2 * v for k, v in CELL.items()}}, name="b")
    c = make_lut({"cell0.e0": {k: 4 * v for k, v in CELL.items()}}, name="c")
    paths = ["x/a.parquet", "x/b.parquet", "x/c.parquet"]
    base = resolve_baseline("b", paths, ["a", "b", "c"])
    assert base == 1
    assert resolve_baseline("3", paths, ["a", "b", "c"]) == 2
    assert resolve_baseline("x/c.parquet", paths, ["a", "b", "c"]) == 2
    with pytest.raises(UserError):
        resolve_baseline("nope", paths, ["a", "b", "c"])
    comp = compare_luts([a, b, c], paths, baseline=base)
    assert comp.baseline == "b" and [p.other for p in comp.pairs] == ["a", "c"]
    assert comp.pairs[0].overall.speedup == pytest.approx(2.0)
    assert comp.pairs[1].overall.geomean_ratio == pytest.approx(2.0)
    d = comp.to_dict()
    json.dumps(d, allow_nan=False)  # strict JSON: no NaN
    assert d["pairs"][1]["overall"]["speedup"] == pytest.approx(0.5)
    assert len(d["pairs"][0]["entries"]) == 3


def test_single_lut_is_refused():
    with pytest.raises(UserError):
        compare_luts([make_lut({"cell0.e0": dict(CELL)})], ["a.parquet"])


def test_provenance_marks_what_differs():
    a = make_lut({"cell0.e0": dict(CELL)}, name="a", threads=1, device_name="X")
    b = make_lut({"cell0.e0": dict(CELL)}, name="b", threads=2, device_name="X", precision="fp16")
    comp = compare_luts([a, b], ["a.parquet", "b.parquet"])
    prov = {k: (v, d) for k, v, d in comp.provenance}
    assert prov["device.threads"] == ([1, 2], True)
    assert prov["precision"] == (["fp32", "fp16"], True)
    assert prov["device.name"] == (["X", "X"], False)
    assert prov["protocol.threads"][1] is True


def test_decide_position_direct():
    d = decide_position("p", "1x1", "s4", ["a", "b", "zero"], [1.0, 2.0, 0.0], [2.0, 1.0, 0.0],
                        [False, False, True], 0.0, 0.0)
    assert d.cheapest_flip and d.inverted_pairs == [("a", "b")] and d.pairs == 3
    assert decide_position("p", "1x1", "s4", ["zero"], [0.0], [0.0], [True], 0.0, 0.0) is None
    assert math.isclose(d.penalty_us, 1.0)
