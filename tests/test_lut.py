"""LUT storage: round trip, refusals, lookups, latency tables, coverage, calibration."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from latbench.errors import LUTError
from latbench.lut.table import COLUMNS, LUT, META_KEY, SCHEMA_VERSION, read_lut, write_lut


def _row(position, op, median, status="ok", h=16, w=32, key=None):
    return {"position": position, "op": op, "key": key or f"{op}|k", "kind": "candidate", "stage": "s2",
            "cin": 4, "cout": 4, "in_h": 8, "in_w": 16, "stride": 1, "dilation": 1, "height": h, "width": w,
            "batch": 1, "backend": "cpu", "precision": "fp32", "cache": "warm", "median_us": median,
            "p10_us": median, "p90_us": median, "iqr_us": 0.0, "mean_us": median, "samples": 10, "noise": 0.001,
            "sm_clock_mhz": None, "throttled": False, "status": status,
            "error": "out of memory: x" if status == "failed" else None, "measured_at": "2026-01-01T00:00:00+00:00"}


@pytest.fixture
def small_lut():
    rows = [_row("cell0.e0", "conv_3x3", 10.0), _row("cell0.e0", "skip", 1.0), _row("cell0.e0", "zero", 0.0, "analytic"),
            _row("cell0.e1", "conv_3x3", 10.0), _row("cell0.e1", "skip", math.nan, "failed"),
            _row("cell0.e0", "conv_3x3", 40.0, h=32, w=64)]
    return LUT(pd.DataFrame(rows), {"name": "t", "backend": "cpu", "space": {"name": "toy"}})


def test_roundtrip_keeps_rows_types_and_metadata(tmp_path, small_lut):
    p = tmp_path / "a.parquet"
    write_lut(small_lut, p)
    lut = read_lut(p)
    assert len(lut) == 6
    assert lut.meta["schema_version"] == SCHEMA_VERSION and lut.meta["name"] == "t"
    assert set(COLUMNS) <= set(lut.df.columns)
    assert pq.read_schema(p).field("median_us").type == pa.float64()
    assert lut.resolutions() == [(16, 32), (32, 64)]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_lookup(small_lut):
    assert small_lut.lookup("cell0.e0", "conv_3x3", 16, 32) == 10.0
    assert small_lut.lookup("cell0.e0", "conv_3x3", 32, 64) == 40.0
    assert small_lut.lookup("cell0.e0", "zero", 16, 32) == 0.0  # analytic
    assert small_lut.lookup("cell0.e1", "skip", 16, 32) is None  # failed
    assert small_lut.lookup("cell9.e0", "skip", 16, 32) is None  # absent
    assert small_lut.lookup("cell0.e0", "conv_3x3", 16, 32, batch=2) is None


def test_latency_table_and_missing(small_lut):
    from latbench.model.predictor import Predictor

    cost_table = Predictor.for_lut(small_lut, 16, 32).cost_table
    priced, table, missing = cost_table(["cell0.e0", "cell0.e1"], [["conv_3x3", "skip", "zero"], ["conv_3x3", "skip"]])
    assert torch.equal(priced.nan_to_num(-1), table.nan_to_num(-1))  # no model: the medians price
    assert table.shape == (2, 3) and table.dtype == torch.float64
    assert table[0].tolist() == [10.0, 1.0, 0.0]
    assert table[1, 0].item() == 10.0
    assert math.isnan(table[1, 1].item()) and math.isnan(table[1, 2].item())  # failed, padding
    assert missing == [("cell0.e1", "skip")]
    with pytest.raises(ValueError):
        cost_table(["a"], [])


def test_coverage_against_a_space(toy_space, small_lut):
    cov = small_lut.coverage(toy_space, 16, 32)
    n = len(toy_space.enumerate(16, 32))
    assert cov.expected == n
    assert ("cell0.e1", "skip") in cov.failed
    assert ("fixed.stem", "stem") in cov.missing
    assert cov.present == 4 and not cov.complete


def test_with_calibration_is_a_copy(tmp_path, small_lut):
    cal = small_lut.with_calibration(1.1, 25.0, mape=0.03)
    assert cal.meta["calibration"] == {"a": 1.1, "b": 25.0, "mape": 0.03}
    assert "calibration" not in small_lut.meta
    write_lut(cal, tmp_path / "c.parquet")
    assert read_lut(tmp_path / "c.parquet").meta["calibration"]["a"] == 1.1


def _write_raw(path, df, meta):
    table = pa.Table.from_pandas(df, preserve_index=False)
    md = {META_KEY: json.dumps(meta).encode()} if meta is not None else {}
    pq.write_table(table.replace_schema_metadata(md), path)


def test_refuses_unknown_schema_version(tmp_path, small_lut):
    p = tmp_path / "v2.parquet"
    _write_raw(p, small_lut.df, {"schema_version": 2})
    with pytest.raises(LUTError, match="schema version 2"):
        read_lut(p)


def test_refuses_corrupt_and_non_parquet_files(tmp_path, small_lut):
    good = tmp_path / "g.parquet"
    write_lut(small_lut, good)
    data = good.read_bytes()
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(LUTError, match="corrupt or not Parquet"):
        read_lut(bad)
    txt = tmp_path / "x.parquet"
    txt.write_text("position,op\n")
    with pytest.raises(LUTError, match="corrupt or not Parquet"):
        read_lut(txt)
    with pytest.raises(LUTError, match="does not exist"):
        read_lut(tmp_path / "none.parquet")


def test_refuses_missing_columns_and_foreign_parquet(tmp_path, small_lut):
    p = tmp_path / "m.parquet"
    _write_raw(p, small_lut.df.drop(columns=["median_us", "key"]), {"schema_version": SCHEMA_VERSION})
    with pytest.raises(LUTError, match="lacks LUT column.*median_us"):
        read_lut(p)
    q = tmp_path / "foreign.parquet"
    _write_raw(q, small_lut.df, None)
    with pytest.raises(LUTError, match="not a latbench LUT"):
        read_lut(q)


def test_lut_errors_are_one_line(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(LUTError) as ei:
        read_lut(p)
    assert "\n" not in str(ei.value.message)


# ---- values and types: the one reader refuses what no consumer could use ----------------------
def _raw_lut(tmp_path, small_lut, name="raw.parquet", meta_changes=None, **column_changes):
    df = small_lut.df.copy()
    for col, (row, value) in column_changes.items():
        df[col] = df[col].astype(object)
        df.at[row, col] = value
    meta = {"schema_version": SCHEMA_VERSION, **small_lut.meta, **(meta_changes or {})}
    p = tmp_path / name
    _write_raw(p, df, meta)
    return p


@pytest.mark.parametrize("value", [-1.0, math.inf, -math.inf, math.nan, None])
def test_refuses_an_ok_row_whose_median_is_not_a_finite_nonnegative_number(tmp_path, small_lut, value):
    p = _raw_lut(tmp_path, small_lut, median_us=(1, value))
    with pytest.raises(LUTError) as ei:
        read_lut(p)
    msg = ei.value.message
    assert "median_us must be a finite number >= 0" in msg and "row 1 (cell0.e0 / skip at 16x32, ok)" in msg
    assert "\n" not in msg


def test_failed_and_analytic_rows_may_lack_a_median_but_no_row_may_hold_a_negative_or_infinite_one(tmp_path, small_lut):
    assert read_lut(_raw_lut(tmp_path, small_lut, "nan-failed.parquet", median_us=(4, math.nan))).lookup(
        "cell0.e1", "skip", 16, 32) is None
    for col, row, value in (("median_us", 4, math.inf), ("p10_us", 4, -3.0), ("p90_us", 0, math.inf),
                            ("mean_us", 2, -1.0)):
        with pytest.raises(LUTError, match=f"{col} must be a finite number >= 0.*row {row} "):
            read_lut(_raw_lut(tmp_path, small_lut, f"{col}.parquet", **{col: (row, value)}))


@pytest.mark.parametrize("col,value", [("median_us", "10.0"), ("height", "16"), ("batch", 1.5),
                                       ("status", 3), ("throttled", "no"), ("samples", "ten")])
def test_refuses_a_column_of_the_wrong_type(tmp_path, small_lut, col, value):
    df = small_lut.df.copy()
    df[col] = [value] * len(df)
    p = tmp_path / "types.parquet"
    _write_raw(p, df, {"schema_version": SCHEMA_VERSION, **small_lut.meta})
    with pytest.raises(LUTError, match=f"wrong type: {col} is"):
        read_lut(p)


@pytest.mark.parametrize("col", ["position", "op", "height", "status"])
def test_refuses_rows_without_their_identity(tmp_path, small_lut, col):
    with pytest.raises(LUTError, match=f"column {col} is empty in 1 row"):
        read_lut(_raw_lut(tmp_path, small_lut, **{col: (3, None)}))


@pytest.mark.parametrize("changes,fragment", [
    ({"calibration": {"a": math.nan, "b": 1.0}}, "calibration must hold two finite numbers"),
    ({"calibration": {"a": "1.1", "b": 0}}, "calibration must hold two finite numbers"),
    ({"calibration": [1.1, 0.0]}, "'calibration' must be a JSON object"),
    ({"device": "cpu"}, "'device' must be a JSON object"),
    ({"space": 5}, "'space' must be a JSON object"),
    ({"space": {"name": "toy", "config": [1]}}, "'space.config' must be a JSON object"),
    ({"batch": "1"}, "'batch' must be an integer >= 1"),
    ({"batch": 0}, "'batch' must be an integer >= 1"),
    ({"protocol": "fast"}, "'protocol' must be a JSON object"),
])
def test_refuses_metadata_of_the_wrong_type(tmp_path, small_lut, changes, fragment):
    with pytest.raises(LUTError, match=fragment):
        read_lut(_raw_lut(tmp_path, small_lut, meta_changes=changes))


def test_writer_never_writes_what_the_reader_refuses(tmp_path, small_lut):
    bad = LUT(small_lut.df.copy(), small_lut.meta)
    bad.df.loc[0, "median_us"] = math.inf
    with pytest.raises(LUTError, match="median_us"):
        write_lut(bad, tmp_path / "w.parquet")
    assert not (tmp_path / "w.parquet").exists() and list(tmp_path.iterdir()) == []
