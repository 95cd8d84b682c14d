"""The latency term: LUT tabulation, eq. 8–9 against the LUT rows, gradient vs finite differences,
calibration, and the coverage check that runs before any training."""

from __future__ import annotations

import random

import pytest
import torch

from latbench.errors import UserError
from latbench.lut.table import read_lut, write_lut
from nas.ops import CELL_PRIMITIVES
from nas.search.arch_params import ArchParams, gumbel_softmax
from nas.search.config import LUTConfig
from nas.search.ggm import GGM, GGMConfig
from nas.search.latency import load_latency_table
from nas.space import LGCNetSpace
from search_support import RESOLUTION, build_tiny_lut, tiny_space


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    return build_tiny_lut(tmp_path_factory.mktemp("lut") / "tiny.parquet")


def _table(path, **kw):
    return load_latency_table(LUTConfig(path=str(path), resolution=RESOLUTION, **kw), tiny_space())


def test_table_prices_architectures_like_the_lut_rows(lut_path):
    table, ident = _table(lut_path)
    space = LGCNetSpace(tiny_space())
    lut = read_lut(lut_path)
    assert ident["sha256"] and ident["backend"] == "cpu" and ident["resolution"] == "33x65"
    rng = random.Random(0)
    for _ in range(5):
        arch = space.sample_architecture(rng)
        rows = space.architecture_rows(arch)
        want = sum(lut.lookup(p, o, *RESOLUTION) for p, o in rows)
        from nas.genotype import Architecture
        a = Architecture.from_dict(arch)
        assert table.architecture_lut_sum(a) == pytest.approx(want, rel=1e-9)
        # eq. 8–9 with one-hot z gives the same number
        cell_z = torch.zeros(table.cell.shape, dtype=torch.float64)
        for k, cell in enumerate(a.cells):
            for e, op in enumerate(cell):
                cell_z[k, e, CELL_PRIMITIVES.index(op)] = 1
        from nas.fusion import edge_candidates
        fz = [torch.nn.functional.one_hot(torch.tensor(c.index(op)), len(c)).double()
              for op, c in zip(a.fusion, edge_candidates())]
        assert float(table.lut_sum(cell_z, fz)) == pytest.approx(want, rel=1e-9)
    # zero is free, and a conv costs something
    assert float(table.cell[0, 0, CELL_PRIMITIVES.index("zero")]) == 0.0
    assert float(table.cell[0, 0, CELL_PRIMITIVES.index("conv_3x3")]) > 0.0


def test_latency_gradient_matches_finite_differences(lut_path):
    table, _ = _table(lut_path)
    cfg = tiny_space()
    torch.manual_seed(0)
    arch = ArchParams(cfg, generator=torch.Generator().manual_seed(1)).double()
    ggm = GGM(cfg.num_cells, cfg.num_edges(), 8, GGMConfig()).double()
    with torch.no_grad():  # move away from the identity start so the GGM path matters
        for link in ggm.links:
            link.phi2.weight.normal_(0, 0.3)
        arch.cell_alpha.normal_(0, 0.5)
    g = torch.Generator().manual_seed(2)
    gum = -torch.log(-torch.log(torch.rand(arch.cell_alpha.shape, generator=g, dtype=torch.float64)))
    fus_g = [-torch.log(-torch.log(torch.rand(t.shape, generator=g, dtype=torch.float64))) for t in arch.fusion_logits()]
    beta, tau = 0.5, 0.7

    def loss(theta: torch.Tensor) -> torch.Tensor:
        z = gumbel_softmax(ggm(theta), gum, tau)
        fz = [gumbel_softmax(t, n, tau) for t, n in zip(arch.fusion_logits(), fus_g)]
        return table.loss(z, fz, beta)

    theta = arch.cell_alpha.detach().clone().requires_grad_(True)
    loss(theta).backward()
    grad = theta.grad
    eps = 1e-5
    for idx in [(0, 0, 2), (1, 3, 0), (2, 4, 7), (3, 1, 3), (3, 2, 5)]:
        plus, minus = theta.detach().clone(), theta.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        with torch.no_grad():
            fd = (loss(plus) - loss(minus)) / (2 * eps)
        assert float(grad[idx]) == pytest.approx(float(fd), rel=1e-4, abs=1e-9)
    assert grad.abs().sum() > 0


def test_calibration_from_lut_metadata(lut_path, tmp_path):
    lut = read_lut(lut_path)
    p = tmp_path / "cal.parquet"
    write_lut(lut.with_calibration(1.5, 100.0), p)
    raw, _ = _table(lut_path, latency_scope="network")
    cal, ident = _table(p, latency_scope="network")
    z = torch.softmax(torch.randn(raw.cell.shape, dtype=torch.float64), -1)
    fz = [torch.softmax(torch.randn(t.shape, dtype=torch.float64), -1) for t in raw.fusion]
    assert float(cal.latency(z, fz)) == pytest.approx(1.5 * float(raw.latency(z, fz)) + 100.0)
    assert ident["calibration"] == {"a": 1.5, "b": 100.0}
    # the cells scope prices the cells' edges only, the searched scope (the default) the cells' and
    # the fusion cell's searchable edges: no calibration in either
    cells, _ = _table(p, latency_scope="cells")
    assert float(cells.latency(z, fz)) == pytest.approx(float((z * raw.cell).sum()))
    searched, ident_s = _table(p)
    assert ident_s["latency_scope"] == "searched"
    want = float((z * raw.cell).sum()) + sum(float((v * t).sum()) for v, t in zip(fz, raw.fusion))
    assert float(searched.latency(z, fz)) == pytest.approx(want)
    off, ident_off = _table(p, use_calibration=False, latency_scope="network")
    assert float(off.latency(z, fz)) == pytest.approx(float(raw.latency(z, fz)))
    assert ident_off["calibration"] is None
    write_lut(lut.with_calibration(1.0, -1e9), p)
    with pytest.raises(UserError, match="non-positive"):
        _table(p)


def _model_lut(lut_path, tmp_path, **scope_changes):
    """The tiny LUT with a latency model stored in its metadata (per-op slopes, a per-row term,
    an overhead, a constant: every part of the model is exercised)."""
    from latbench.model.latency_model import LatencyModel, ModelScope, with_model
    from latbench.lut.table import LUT

    lut = read_lut(lut_path)
    scope = ModelScope.of_lut(lut.meta, *RESOLUTION, 1)
    if scope_changes:
        scope = ModelScope(**{**scope.to_dict(), **scope_changes})
    model = LatencyModel(scope, overhead_us=3.0, constant_us=250.0, group_by="op",
                         slopes={"conv_3x3": 1.5, "sep_conv_3x3": 0.7}, per_row={"conv_3x3": -2.0},
                         default_slope=1.1, default_per_row=1.0,
                         provenance={"by": "test", "space": lut.meta.get("space")})
    p = tmp_path / "model.parquet"
    write_lut(LUT(lut.df, with_model(lut.meta, model)), p)
    return p, model


def test_a_latency_model_prices_every_row_and_the_expectation_is_exact(lut_path, tmp_path):
    from latbench.model.latency_model import ModelScope
    from latbench.model.predictor import Predictor
    from nas.genotype import Architecture

    p, model = _model_lut(lut_path, tmp_path)
    net, ident = _table(p, latency_scope="network")
    cells, _ = _table(p, latency_scope="cells")
    searched, _ = _table(p)
    raw, _ = _table(p, latency_model="none", latency_scope="network")
    assert ident["latency_model"]["id"] == model.model_id and "latency model" in ident["priced_by"]
    assert net.model is not None and raw.model is None
    lut = read_lut(p)
    space = LGCNetSpace(tiny_space())
    rng = random.Random(3)
    for _ in range(4):
        a = Architecture.from_dict(space.sample_architecture(rng))
        rows = Predictor(lut, ModelScope.of_lut(lut.meta, *RESOLUTION)).rows(space.architecture_rows(a.to_dict()))
        assert net.architecture_latency(a) == pytest.approx(model.predict_rows(rows), rel=1e-9)
        assert net.architecture_lut_sum(a) == pytest.approx(raw.architecture_lut_sum(a), rel=1e-12)
        assert cells.architecture_latency(a) == pytest.approx(model.predict_rows(rows), rel=1e-9)
    # a soft choice: LAT is linear in z, so the expectation equals the z-weighted sum of priced rows
    z = torch.softmax(torch.randn(net.cell.shape, dtype=torch.float64), -1)
    fz = [torch.softmax(torch.randn(t.shape, dtype=torch.float64), -1) for t in net.fusion]
    want = net.fixed + float((z * net.cell).sum()) + sum(float((v * t).sum()) for v, t in zip(fz, net.fusion))
    assert float(net.latency(z, fz)) == pytest.approx(want)
    assert float(cells.latency(z, fz)) == pytest.approx(float((z * cells.cell).sum()))
    assert float(searched.latency(z, fz)) == pytest.approx(
        float((z * net.cell).sum()) + sum(float((v * t).sum()) for v, t in zip(fz, net.fusion)))
    # a checkpoint round trip keeps the priced and the raw tables and the model's summary
    from nas.search.latency import LatencyTable

    back = LatencyTable.from_state_dict(net.state_dict())
    assert back.model == net.model and back.scope == "network"
    assert float(back.latency(z, fz)) == pytest.approx(float(net.latency(z, fz)))


@pytest.mark.parametrize("change", [{"backend": "ort"}, {"precision": "fp16"}, {"height": 65, "width": 129},
                                    {"device": {"type": "cuda", "name": "NVIDIA H100"}}])
def test_a_model_fitted_for_something_else_is_refused(lut_path, tmp_path, change):
    p, _ = _model_lut(lut_path, tmp_path, **change)
    with pytest.raises(UserError, match="latency model was fitted for") as exc:
        _table(p)
    assert "\n" not in exc.value.message
    table, ident = _table(p, latency_model="none")  # the raw sum is still there for who asks
    assert table.model is None and ident["latency_model"] is None
    with pytest.raises(UserError, match="no latency model"):
        _table(lut_path, latency_model="require")


def test_missing_rows_are_listed_before_training(lut_path, tmp_path):
    lut = read_lut(lut_path)
    drop = (lut.df["position"] == "cell2.e3") & lut.df["op"].isin(["conv_3x3", "sep_conv_3x3"]) \
        | (lut.df["position"] == "fusion.e4")
    lut.df = lut.df[~drop].reset_index(drop=True)
    p = tmp_path / "holes.parquet"
    write_lut(lut, p)
    with pytest.raises(UserError) as exc:
        _table(p)
    msg = str(exc.value)
    assert "lacks 4 of" in msg and "cell2.e3/conv_3x3@33x65" in msg and "cell2.e3/sep_conv_3x3@33x65" in msg
    assert "fusion.e4/deconv@33x65" in msg and "fusion.e4/interp@33x65" in msg
    assert "\n" not in msg


def test_many_missing_rows_are_truncated(lut_path, tmp_path):
    lut = read_lut(lut_path)
    lut.df = lut.df[~lut.df["position"].str.startswith("cell1.")].reset_index(drop=True)
    p = tmp_path / "cell1.parquet"
    write_lut(lut, p)
    with pytest.raises(UserError, match=r"\(\+\d+ more\)"):
        _table(p)


@pytest.mark.parametrize("kw, match", [
    (dict(space=dict(init_channels=8)), "init_channels: LUT 4, search 8"),
    (dict(space=dict(num_classes=7)), "num_classes: LUT 5, search 7"),
    (dict(resolution=(65, 129)), "no rows at 65x129"),
    (dict(batch=2), "no rows at batch 2"),
    (dict(backend="cudagraph"), "no backend 'cudagraph'"),
    (dict(precision="fp16"), "no precision 'fp16'"),
])
def test_wrong_lut_is_refused(lut_path, kw, match):
    space = tiny_space(**kw.pop("space", {}))
    res = kw.pop("resolution", RESOLUTION)
    with pytest.raises(UserError, match=match):
        load_latency_table(LUTConfig(path=str(lut_path), resolution=res, **kw), space)


def test_not_a_lut(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_latency_table(LUTConfig(path=str(tmp_path / "nope.parquet")), tiny_space())
    bad = tmp_path / "bad.parquet"
    bad.write_text("hello")
    with pytest.raises(UserError, match="not a readable Parquet LUT"):
        load_latency_table(LUTConfig(path=str(bad)), tiny_space())


def test_a_model_fitted_on_fusion_cell_networks_does_not_price_another_head(lut_path, tmp_path):
    """Table X: a model fitted on fusion-cell networks prices no ASPP network; under auto the raw
    sum does, with a one-line notice (recorded in the identity); require refuses."""
    p, _ = _model_lut(lut_path, tmp_path)
    table, ident = load_latency_table(LUTConfig(path=str(p), resolution=RESOLUTION), tiny_space(fusion="aspp"))
    raw, _ = load_latency_table(LUTConfig(path=str(p), resolution=RESOLUTION, latency_model="none"),
                                tiny_space(fusion="aspp"))
    assert table.model is None and ident["latency_model"] is None and ident["priced_by"] == "Σ LUT (raw medians)"
    note = ident["latency_notice"]
    assert "fusion=dcfc networks, not fusion=aspp" in note and "raw LUT sum" in note and "\n" not in note
    assert torch.equal(table.cell, raw.cell) and table.fixed == raw.fixed
    with pytest.raises(UserError, match="fitted on fusion=dcfc networks, not fusion=aspp") as exc:
        load_latency_table(LUTConfig(path=str(p), resolution=RESOLUTION, latency_model="require"),
                           tiny_space(fusion="aspp"))
    assert "\n" not in exc.value.message
    # the fusion-cell network it was fitted on is priced by it, without a notice
    table, ident = load_latency_table(LUTConfig(path=str(p), resolution=RESOLUTION), tiny_space())
    assert table.model is not None and "latency_notice" not in ident
