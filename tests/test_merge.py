"""latbench.lut.merge: pieces combine, provenance conflicts are refused, duplicates resolve predictably."""

from __future__ import annotations

import pytest

from latbench.errors import LUTError, UserError
from latbench.lut.table import read_lut
from latbench.lut.merge import find_conflicts, merge_luts
from lut_factory import make_lut, write

CELL = {"conv_3x3": 10.0, "skip": 1.0, "zero": 0.0}


def test_resolutions_built_on_different_days_merge(tmp_path):
    a = make_lut({"cell0.e0": CELL}, resolutions=((32, 64),), host="box1")
    b = make_lut({"cell0.e0": CELL}, resolutions=((64, 128),), host="box2",
                 versions={"python": "3.11", "torch": "2.12.0"})  # host and versions may differ
    r = merge_luts([a, b], ["a.parquet", "b.parquet"])
    assert r.rows_in == r.rows_out == 6 and r.duplicates_dropped == 0 and not r.conflicts
    out = write(r.lut, tmp_path / "m.parquet")
    back = read_lut(out)
    assert back.resolutions() == [(32, 64), (64, 128)]
    assert back.meta["resolutions"] == ["32x64", "64x128"]
    srcs = back.meta["merged"]["sources"]
    assert [s["label"] for s in srcs] == ["a.parquet", "b.parquet"]
    assert [s["host"] for s in srcs] == ["box1", "box2"]
    assert back.meta["merged"]["forced"] is False
    assert back.lookup("cell0.e0", "conv_3x3", 64, 128) == 10.0


@pytest.mark.parametrize("kw, field", [
    ({"backend": "eager"}, "backend"),
    ({"precision": "fp16"}, "precision"),
    ({"device_name": "Other GPU"}, "device"),
    ({"threads": 2}, "protocol"),
    ({"cache": "cold"}, "cache"),
    ({"batch": 8}, "batch"),
    ({"space": {"name": "toy", "version": 2, "config": {}}}, "space"),
])
def test_disagreeing_provenance_is_refused(kw, field):
    a = make_lut({"cell0.e0": CELL}, resolutions=((32, 64),))
    b = make_lut({"cell0.e0": CELL}, resolutions=((64, 128),), **kw)
    assert field in [c.field for c in find_conflicts([a.meta, b.meta])]
    with pytest.raises(LUTError, match=f"{field} differs"):
        merge_luts([a, b], ["a", "b"])


def test_force_merges_and_records_every_source(tmp_path):
    a = make_lut({"cell0.e0": CELL}, name="x", backend="eager")
    b = make_lut({"cell0.e0": CELL}, name="x", backend="cudagraph")
    r = merge_luts([a, b], ["a", "b"], force=True)
    assert r.forced and [c.field for c in r.conflicts] == ["backend"]
    assert r.rows_out == 6  # different backends are different rows, nothing dropped
    back = read_lut(write(r.lut, tmp_path / "f.parquet"))
    assert back.meta["backend"] == "mixed"
    m = back.meta["merged"]
    assert m["forced"] is True and m["conflicts"][0]["values"] == ["eager", "cudagraph"]
    assert [s["backend"] for s in m["sources"]] == ["eager", "cudagraph"]
    # A second, unforced merge of the mixed file with a clean one is refused.
    with pytest.raises(LUTError):
        merge_luts([back, a], ["f", "a"])


def test_duplicates_keep_the_better_measurement():
    a = make_lut({"cell0.e0": {"conv_3x3": 10.0, "skip": None}}, row_overrides={"samples": 20, "noise": 0.01})
    b = make_lut({"cell0.e0": {"conv_3x3": 12.0, "skip": 1.0}}, row_overrides={"samples": 80, "noise": 0.02})
    r = merge_luts([a, b], ["a", "b"])
    assert r.rows_out == 2 and r.duplicates_dropped == 2
    assert r.duplicates_disagreeing == 1  # conv 10 vs 12 (> 5 %); skip failed vs 1.0 has no spread
    # more samples wins over lower noise; a timing wins over a failure
    assert r.lut.lookup("cell0.e0", "conv_3x3", 32, 64) == 12.0
    assert r.lut.lookup("cell0.e0", "skip", 32, 64) == 1.0
    # Equal samples: lower noise wins; equal everything: the first source wins.
    c = make_lut({"cell0.e0": {"conv_3x3": 11.0}}, row_overrides={"samples": 80, "noise": 0.001})
    assert merge_luts([b, c], ["b", "c"]).lut.lookup("cell0.e0", "conv_3x3", 32, 64) == 11.0
    d = make_lut({"cell0.e0": {"conv_3x3": 13.0}}, row_overrides={"samples": 80, "noise": 0.02})
    assert merge_luts([b, d], ["b", "d"]).lut.lookup("cell0.e0", "conv_3x3", 32, 64) == 12.0
    assert merge_luts([d, b], ["d", "b"]).lut.lookup("cell0.e0", "conv_3x3", 32, 64) == 13.0


def test_throttled_loses_to_unthrottled():
    a = make_lut({"cell0.e0": {"conv_3x3": 20.0}}, row_overrides={"throttled": True, "samples": 500})
    b = make_lut({"cell0.e0": {"conv_3x3": 10.0}}, row_overrides={"throttled": False, "samples": 10})
    assert merge_luts([a, b], ["a", "b"]).lut.lookup("cell0.e0", "conv_3x3", 32, 64) == 10.0


def test_one_input_is_refused():
    with pytest.raises(UserError):
        merge_luts([make_lut({"cell0.e0": CELL})], ["a"])


def test_merge_uses_the_build_lock_file(tmp_path):
    from latbench.files import lock_path
    from latbench.lut.merge import output_lock

    assert output_lock(tmp_path / "x.parquet") == lock_path(tmp_path / "x.parquet")
