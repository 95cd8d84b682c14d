"""The one predictor (latbench.model.predictor) and the one LUT check (latbench.lut.coverage): the
same numbers as the sums the consumers computed themselves before, the scope refusal in one line,
a model per fusion head, a merged LUT keeping every input's models, and the build-lut command
spelled from build-lut's own options."""

from __future__ import annotations

import dataclasses
import math
import shlex

import pytest

from latbench.errors import LUTError, UserError
from latbench.lut.table import LUT
from latbench.model.latency_model import LatencyModel, ModelScope, stored_models, with_model
from latbench.model.predictor import Prediction, Predictor
from lut_factory import make_lut

H, W = 32, 64
TABLE = {
    "fixed.stem": {"stem": 50.0},
    "cell0.e0": {"conv_3x3": 10.0, "skip": 1.0, "zero": 0.0},
    "cell0.e1": {"sep_conv_3x3": 7.0, "skip": 1.5},
    "fusion.e0": {"deconv": 4.0, "interp": 2.0},
    "fixed.head": {"head": 20.0},
}
ROWS = [("fixed.stem", "stem"), ("cell0.e0", "conv_3x3"), ("cell0.e1", "skip"), ("fusion.e0", "deconv"),
        ("fixed.head", "head")]
TOY = {"name": "toy", "version": 1, "config": {"channels": 8, "fusion": "dcfc"}}


def _lut(**kw) -> LUT:
    return make_lut(TABLE, space=TOY, **kw)


def _model(lut: LUT, fusion: str = "dcfc", statistic: str | None = "fastest-half", column: str = "median_us",
           **scope) -> LatencyModel:
    sc = ModelScope.of_lut(lut.meta, H, W, 1)
    if scope:
        sc = ModelScope(**{**sc.to_dict(), **scope})
    prov = {"space": {**TOY, "config": {**TOY["config"], "fusion": fusion}}}
    if statistic is not None:
        prov["statistic"] = statistic
    return LatencyModel(sc, overhead_us=0.5, constant_us=30.0, group_by="op", column=column,
                        slopes={"conv_3x3": 1.5}, per_row={"skip": -0.25}, default_slope=0.9, provenance=prov)


def _with(lut: LUT, *models: LatencyModel) -> LUT:
    meta = dict(lut.meta)
    for m in models:
        meta = with_model(meta, m)
    return LUT(lut.df, meta)


def test_raw_sum_rows_and_model_are_the_numbers_the_consumers_computed():
    lut = _lut()
    m = _model(lut)
    p = Predictor.for_lut(_with(lut, m), H, W, family={"fusion": "dcfc"})
    assert p.model is not None and p.model.model_id == m.model_id and p.notice is None
    # the raw sum: Σ of the rows' medians (what validate.predict_us summed)
    assert p.raw_sum(ROWS) == sum(lut.lookup(pos, op, H, W) for pos, op in ROWS) == 50 + 10 + 1.5 + 4 + 20
    # the model: constant + Σ corrected rows (what latency_model.lut_rows + predict_rows gave)
    rows = [lut.row_info(pos, op, H, W, 1, "median_us") for pos, op in ROWS]
    assert p.rows(ROWS) == rows
    assert p.model_us(ROWS) == pytest.approx(m.predict_rows(rows), rel=1e-15)
    want = 30.0 + sum(max(({"conv_3x3": 1.5}.get(op, 0.9)) * max(v - 0.5, 0) + ({"skip": -0.25}.get(op, 0.0)), 0)
                      for op, _, v, _ in rows)
    assert p.model_us(ROWS) == pytest.approx(want)
    # the p10 column is read when asked
    assert [r[2] for r in p.rows(ROWS, "p10_us")] == pytest.approx([0.95 * r[2] for r in rows])
    pred = p.predict(ROWS)
    assert pred.sum_us == p.raw_sum(ROWS) and pred.model_us == p.model_us(ROWS) and pred.best_us == pred.model_us
    assert pred.calibrated_us is None and p.priced_by == f"latency model {m.model_id}"
    assert p.summary()["statistic"] == "fastest-half" and p.measured_for_model() == "p10_us"


def test_the_cost_table_and_the_fixed_parts_price_rows_like_one_architecture():
    lut = _with(_lut(), _model(_lut()))
    p = Predictor.for_lut(lut, H, W)
    priced, raw, missing = p.cost_table(["cell0.e0", "fusion.e0"], [("conv_3x3", "skip", "zero"), ("deconv", "interp")])
    assert missing == []
    assert raw[0].tolist() == [10.0, 1.0, 0.0] and raw[1, :2].tolist() == [4.0, 2.0] and math.isnan(raw[1, 2])
    assert priced[0, 0] == pytest.approx(1.5 * 9.5) and priced[0, 2] == 0.0  # zero is analytic: free
    assert priced[0, 1] == pytest.approx(0.9 * 0.5 - 0.25)
    fixed, fixed_raw, missing = p.fixed_cost([("fixed.stem", "stem"), ("fixed.head", "head")])
    assert fixed_raw == 70.0 and missing == []
    assert fixed == pytest.approx(30.0 + 0.9 * 49.5 + 0.9 * 19.5)
    # one architecture = its rows from the table + the fixed parts (the search's expectation with one-hot z)
    arch = fixed + float(priced[0, 0]) + p.row_cost("cell0.e1", "skip") + float(priced[1, 0])
    assert arch == pytest.approx(p.model_us(ROWS))
    _, _, missing = p.cost_table(["cell0.e0"], [("conv_3x3", "dil_conv_9x9")])
    assert missing == [("cell0.e0", "dil_conv_9x9")]
    with pytest.raises(UserError, match="lacks .* 1 row") as exc:
        p.raw_sum([("cell0.e0", "dil_conv_9x9")])
    assert "\n" not in exc.value.message


def test_the_legacy_calibration_is_the_affine_special_case_of_the_model():
    lut = _lut().with_calibration(1.25, 40.0)
    p = Predictor.for_lut(lut, H, W)
    assert p.model is None and p.calibration == (1.25, 40.0) and p.priced_by == "Σ LUT, affine calibration"
    pred = p.predict(ROWS)
    assert pred.calibrated_us == pytest.approx(1.25 * pred.sum_us + 40.0) and pred.best_us == pred.calibrated_us
    affine = p.affine_model()
    assert affine.predict_rows(p.rows(ROWS)) == pytest.approx(pred.calibrated_us)
    assert Predictor.for_lut(lut, H, W, calibration=False).calibration is None


def test_a_model_of_another_scope_is_refused_in_one_line():
    lut = _lut()
    for change, word in (({"backend": "ort"}, "backend"), ({"height": 64, "width": 128}, "resolution"),
                         ({"device": {"type": "cuda", "name": "NVIDIA H100"}}, "device")):
        bad = _with(lut, _model(lut, **change))
        with pytest.raises(LUTError, match="latency model was fitted for") as exc:
            Predictor.for_lut(bad, H, W)
        assert word in exc.value.message and "\n" not in exc.value.message
        assert Predictor.for_lut(bad, H, W, latency_model="none").model is None  # the raw sum for who asks
    with pytest.raises(UserError, match="no latency model"):
        Predictor.for_lut(lut, H, W, latency_model="require")
    assert Predictor.for_lut(lut, H, W).model is None  # no model at all: the raw sum, no notice


def test_a_model_per_fusion_head_and_the_raw_sum_with_a_notice_for_the_others():
    lut = _lut()
    dcfc, aspp = _model(lut), _model(lut, fusion="aspp")
    both = _with(lut, dcfc, aspp)
    assert len(stored_models(both.meta)) == 2  # one per fusion head: neither replaces the other
    assert Predictor.for_lut(both, H, W, family={"fusion": "aspp"}).model.model_id == aspp.model_id
    assert Predictor.for_lut(both, H, W, family={"fusion": "dcfc"}).model.model_id == dcfc.model_id
    # refitting one head replaces that head's model only
    again = _with(both, _model(lut, fusion="aspp", statistic="median"))
    assert len(stored_models(again.meta)) == 2
    only = _with(lut, dcfc)
    p = Predictor.for_lut(only, H, W, family={"fusion": "ppm"})
    assert p.model is None and "fusion=dcfc networks, not fusion=ppm" in p.notice and "\n" not in p.notice
    assert p.predict(ROWS).best_us == p.raw_sum(ROWS)
    with pytest.raises(LUTError, match="fitted on fusion=dcfc networks, not fusion=ppm"):
        Predictor.for_lut(only, H, W, family={"fusion": "ppm"}, latency_model="require")
    # a statistic asked for explicitly must be the one the model was fitted to
    p = Predictor.for_lut(only, H, W, statistic="median")
    assert p.model is None and "fastest-half statistic, not median" in p.notice
    # a model fitted when prices on its backend summed other rows (constant folding) prices nothing
    from latbench.timing.registry import network_rows_rule

    rule = network_rows_rule("cpu")
    assert rule == "every row" and network_rows_rule("ort") != network_rows_rule("compile") != rule
    base = _model(lut)
    same = dataclasses.replace(base, provenance={**base.provenance, "network_rows": rule})
    assert Predictor.for_lut(_with(lut, same), H, W).model is not None
    stale = dataclasses.replace(base, provenance={**base.provenance, "network_rows": network_rows_rule("ort")})
    p = Predictor.for_lut(_with(lut, stale), H, W)
    assert p.model is None and "while prices on cpu now sum every row" in p.notice and "\n" not in p.notice
    # a model that did not record its networks prices any (models fitted before they were recorded)
    old = _with(lut, LatencyModel(ModelScope.of_lut(lut.meta, H, W, 1), 0.0, 5.0))
    assert Predictor.for_lut(old, H, W, family={"fusion": "ppm"}).model is not None


def test_the_model_describes_only_measurements_of_its_backend_and_device():
    lut = _lut()
    p = Predictor.for_lut(_with(lut, _model(lut)), H, W)
    dev = dict(lut.meta["device"])
    assert p.model_mismatch(backend="cpu", device=dev) is None
    assert "backend cpu, this measurement uses ort" in p.model_mismatch(backend="ort", device=dev)
    assert "this measurement runs on 'Other CPU'" in p.model_mismatch(backend="cpu", device={**dev, "name": "Other CPU"})
    assert "fusion=dcfc networks, not fusion=none" in p.model_mismatch(family={"fusion": "none"})


def test_prediction_from_a_record():
    assert Prediction.from_record({}) is None and Prediction.from_record(None) is None
    assert Prediction.from_record({"sum_us": 10.0, "calibrated_us": None, "model_us": 12.0}).best_us == 12.0
    assert Prediction.from_record({"sum_us": 10.0, "calibrated_us": 11.0, "model_us": None}).best_us == 11.0
    assert Prediction.from_record({"sum_us": 10.0}).best_us == 10.0


# ---- merge keeps every input's models ---------------------------------------------------------------
def test_merge_keeps_every_inputs_model_and_says_which_it_dropped():
    from latbench.lut.merge import merge_luts

    a = make_lut(TABLE, space=TOY, resolutions=((H, W),))
    b = make_lut(TABLE, space=TOY, resolutions=((64, 128),))
    ma = _model(a)
    mb = LatencyModel(ModelScope.of_lut(b.meta, 64, 128, 1), 0.0, 7.0, provenance={"space": TOY})
    r = merge_luts([_with(a, ma), _with(b, mb)], ["a", "b"])
    ids = {m.model_id for m in stored_models(r.lut.meta)}
    assert ids == {ma.model_id, mb.model_id} and len(r.models_kept) == 2 and not r.models_dropped
    assert r.lut.meta["merged"]["latency_models"]["kept"] == r.models_kept
    # two inputs with a model for the same scope and networks: the earlier input's is kept, the other named
    a2 = make_lut(TABLE, space=TOY, resolutions=((H, W),))
    r = merge_luts([_with(a, ma), _with(a2, _model(a2, statistic="median"))], ["a", "a2"])
    assert [m.model_id for m in stored_models(r.lut.meta)] == [ma.model_id]
    assert len(r.models_dropped) == 1 and r.models_dropped[0].startswith("a2: model")
    assert "prices the same scope" in r.models_dropped[0]
    # a forced merge of two devices: no model describes the mixed result
    c = make_lut(TABLE, space=TOY, resolutions=((64, 128),), device_name="Other CPU")
    mc = LatencyModel(ModelScope.of_lut(c.meta, 64, 128, 1), 0.0, 7.0)
    r = merge_luts([_with(a, ma), _with(c, mc)], ["a", "c"], force=True)
    assert stored_models(r.lut.meta) == [] and len(r.models_dropped) == 2
    assert all("device" in d for d in r.models_dropped)


# ---- the build-lut command that fills a LUT ----------------------------------------------------------
def test_the_rebuild_command_is_spelled_with_build_luts_own_options(tmp_path):
    from latbench.commands.build import build_lut
    from latbench.lut.coverage import rebuild_command

    lut = make_lut(TABLE, name="cpu-test", protocol={"max_time_s": 0.02, "min_time_s": 0.0, "warmup_s": 0.0},
                   meta={"space": {"name": "lgcnet", "version": 1, "config": {}}})
    cmd = rebuild_command(lut, tmp_path / "l.parquet", [(H, W)], retry_failed=True)
    argv = shlex.split(cmd.split(" — ")[0])  # the command, before what is said about it
    assert argv[:2] == ["latbench", "build-lut"]
    flags = {o for p in build_lut.params for o in p.opts}
    assert all(a in flags for a in argv[2:] if a.startswith("--"))  # only options build-lut has
    got = dict(zip(argv[2::1], argv[3::1]))
    assert got["--gpu"] == "cpu-test" and got["--device"] == "cpu" and got["--backend"] == "cpu"
    assert got["--resolution"] == f"{H}x{W}" and got["--output"] == str(tmp_path / "l.parquet")
    assert got["--max-time"] == "0.02" and got["--min-time"] == "0" and got["--warmup"] == "0"
    assert "--retry-failed" in argv and "--max-noise" not in argv  # a default is not repeated
    assert "--batch" not in argv and "--precision" not in argv


def test_fit_can_draw_its_networks_from_another_fusion_head_of_the_luts_space(tmp_path):
    """`latbench fit --space-opt fusion=aspp`: the setup builds ASPP networks from the LUT's space,
    after checking the LUT holds their rows by key; the model's family is then aspp."""
    from latbench.lut.table import read_lut, write_lut
    from latbench.model.networks import resolve_setup
    from search_support import RESOLUTION, build_tiny_lut

    path = build_tiny_lut(tmp_path / "tiny.parquet")
    lut = read_lut(path)
    setup = resolve_setup(lut, RESOLUTION, "cpu", space_options={"fusion": "aspp"}, lut_path=str(path))
    assert setup.space.config.fusion == "aspp" and setup.space.identity()["config"]["fusion"] == "aspp"
    assert resolve_setup(lut, RESOLUTION, "cpu").space.config.fusion == "dcfc"
    lut.df = lut.df[lut.df["position"] != "fixed.aspp"].reset_index(drop=True)
    holey = tmp_path / "holey.parquet"
    write_lut(lut, holey)
    with pytest.raises(LUTError, match="fixed.aspp/aspp@33x65") as exc:
        resolve_setup(read_lut(holey), RESOLUTION, "cpu", space_options={"fusion": "aspp"}, lut_path=str(holey))
    assert "latbench build-lut" in exc.value.message and "\n" not in exc.value.message


def test_among_models_of_one_head_the_one_fitted_on_exactly_these_networks_wins():
    lut = _lut()
    other_inputs = _model(lut)
    other_inputs = LatencyModel(**{**other_inputs.__dict__, "constant_us": 99.0, "provenance": {
        "space": {**TOY, "config": {**TOY["config"], "fusion_inputs": [0, 7, 10]}}}})
    default = _model(lut)
    both = _with(lut, other_inputs, default)
    assert len(stored_models(both.meta)) == 2
    p = Predictor.for_lut(both, H, W, family={"fusion": "dcfc"}, config=TOY["config"])
    assert p.model.model_id == default.model_id
    p = Predictor.for_lut(both, H, W, family={"fusion": "dcfc"}, config={**TOY["config"], "fusion_inputs": [0, 7, 10]})
    assert p.model.model_id == other_inputs.model_id
