"""Ops that read a constant in a network (downstream of all-``zero`` cells) on an eager backend:
which positions they are (nas.constant_rows.constant_input_positions), the LUT build's timing of
each op on an all-zero input (``const_us``), and prices that use it there and nowhere else."""

from __future__ import annotations

import math

import pytest

from latbench.build.builder import build_lut
from latbench.lut.table import read_lut, write_lut
from latbench.model.predictor import Predictor
from latbench.timing import TimingConfig
from nas.space import LGCNetSpace
from search_support import RESOLUTION, tiny_space

E = 5
FUSION = ["conv_1x1", "conv_1x1", "interp", "conv_1x1", "interp", "conv_1x1", "conv_1x1", "conv_1x1",
          "conv_1x1", "interp", "conv_1x1", "conv_1x1", "interp"]
#: cells 0 and 1 all zero, so cell 2 reads constants only; cell 3 reads cell 2 (s1) and cell 1 (s0)
DEAD_FIRST = {"cells": [["zero"] * E, ["zero"] * E, ["max_pool_3x3"] * E, ["conv_3x3"] * E], "fusion": FUSION}


@pytest.fixture(scope="module")
def space():
    return LGCNetSpace(tiny_space())


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("const") / "tiny.parquet"
    cfg = TimingConfig(warmup_s=0.002, min_samples=3, min_time_s=0.0, max_time_s=0.02, target_sample_s=2e-4,
                       threads=1, const_inputs=True)
    build_lut(LGCNetSpace(tiny_space()), [RESOLUTION], "cpu", cfg, path, name="cpu-test", device="cpu",
              progress=False, warn=lambda m: None)
    return path


def test_constant_input_positions_follow_the_data(space):
    got = space.constant_input_positions(DEAD_FIRST)
    # cell 2 reads two constant cells: everything in it computes on constants ...
    assert {f"cell2.e{e}" for e in range(E)} | {"cell2.pre0", "cell2.pre1", "cell2.merge"} <= got
    # ... cell 3's preprocessing of cells 1 and 2 too, and the merge of cell 0's zero nodes; cell 0's
    # preprocessing reads the stem (input-dependent)
    assert {"cell3.pre0", "cell3.pre1", "cell0.merge", "cell1.merge"} <= got
    assert not {"cell0.pre0", "cell0.pre1", "fixed.stem"} & got
    # cell 3's conv edges read constants too: with weights as constants their outputs are constants
    assert {f"cell3.e{e}" for e in range(E)} <= got
    every_op = {"cells": [["conv_3x3"] * E] * 4, "fusion": FUSION}
    assert space.constant_input_positions(every_op) == set()


def test_the_build_times_each_op_on_zeros_too(lut_path):
    df = read_lut(lut_path).df
    ok, analytic = df[df.status == "ok"], df[df.status == "analytic"]
    assert len(ok) and ok["const_us"].notna().all() and (ok["const_us"] > 0).all()
    assert analytic["const_us"].isna().all()
    assert read_lut(lut_path).meta["protocol"]["const_inputs"] is True


def test_a_build_without_it_leaves_the_column_empty(tmp_path, toy_space, fast_config):
    out = tmp_path / "plain.parquet"
    build_lut(toy_space, [(16, 24)], "cpu", fast_config, out, "cpu", progress=False)
    lut = read_lut(out)
    assert not lut.has_const_timings and lut.meta["protocol"]["const_inputs"] is False


def _with_const(lut_path, tmp_path, factor):
    """The LUT with every timed row's constant-input timing set to ``factor`` × its median."""
    lut = read_lut(lut_path)
    ok = lut.df.status == "ok"
    lut.df.loc[ok, "const_us"] = lut.df.loc[ok, "median_us"] * factor
    out = tmp_path / f"const-{factor}.parquet"
    write_lut(lut, out)
    return read_lut(out)


def test_eager_prices_use_the_constant_timing_where_the_input_is_constant(space, lut_path, tmp_path):
    lut = _with_const(lut_path, tmp_path, 0.5)
    p = Predictor.for_lut(lut, *RESOLUTION)
    rows = p.network_rows(space, DEAD_FIRST)
    const = rows.constant_input
    assert const == space.constant_input_positions(DEAD_FIRST) & {pos for pos, _ in rows} and const
    h, w = RESOLUTION
    want = sum(lut.lookup(pos, op, h, w) * (0.5 if pos in const else 1.0) for pos, op in rows)
    assert p.raw_sum(rows) == pytest.approx(want, rel=1e-12)
    assert p.raw_sum(list(rows)) > p.raw_sum(rows)  # the same rows without the marks: the plain sum
    # the p10 column is scaled by the same const / median
    ok = lut.df[(lut.df.status == "ok") & lut.df.position.isin(const)]
    ok = ok[[dict(rows)[pos] == op for pos, op in zip(ok.position, ok.op)]]
    assert len(ok)
    pos, op, p10 = ok.position.iat[0], ok.op.iat[0], float(ok.p10_us.iat[0])
    one = type(rows)([(pos, op)], frozenset([pos]))
    assert math.isclose(p.rows(one, "p10_us")[0][2], 0.5 * p10, rel_tol=1e-12)


def test_without_constant_timings_nothing_changes(space, lut_path, tmp_path):
    lut = read_lut(lut_path)
    lut.df["const_us"] = None
    out = tmp_path / "none.parquet"
    write_lut(lut, out)
    p = Predictor.for_lut(read_lut(out), *RESOLUTION)
    rows = p.network_rows(space, DEAD_FIRST)
    assert rows.constant_input == frozenset()
    h, w = RESOLUTION
    assert p.raw_sum(rows) == pytest.approx(sum(read_lut(out).lookup(pos, op, h, w) for pos, op in rows))


def test_a_folding_backend_leaves_constant_rows_out_instead(space, lut_path, tmp_path):
    lut = _with_const(lut_path, tmp_path, 0.5)
    folding = Predictor.for_lut(lut, *RESOLUTION, backend="ort")
    rows = folding.network_rows(space, DEAD_FIRST)
    assert rows.constant_input == frozenset()  # every row computing on a constant is folded away
    assert not {pos for pos, _ in rows} & space.constant_input_positions(DEAD_FIRST)
