"""The latency scope (issue 19): by default LAT prices the searched edges — the cells' and the fusion
cell's (eq. 9 over the searched cells; the paper's fusion cell is "guided by the latency oriented
loss") — so β moves the fusion cell's α toward cheaper ops; β = 0 does not. Older checkpoints keep
the scope they priced."""

from __future__ import annotations

import pytest
import torch

from nas.genotype import Genotype
from nas.search.config import LUTConfig, OptimConfig, SearchConfig
from nas.search.latency import LatencyTable, load_latency_table
from nas.search.trainer import RunOptions, SearchRun
from search_support import RESOLUTION, build_tiny_lut, tiny_search_config, tiny_space


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    return build_tiny_lut(tmp_path_factory.mktemp("lut") / "tiny.parquet")


def _fusion_expected_us(probabilities: list[list[float]], table: LatencyTable) -> float:
    """E[latency of the fusion cell's searchable edges] under the recorded softmax(α)."""
    return sum(float((torch.tensor(p, dtype=torch.float64) * t.double()).sum())
               for p, t in zip(probabilities, table.fusion))


def test_beta_moves_the_fusion_cells_alpha_toward_cheaper_ops_in_the_default_scope(lut_path, tmp_path):
    table, ident = load_latency_table(LUTConfig(path=str(lut_path), resolution=RESOLUTION), tiny_space())
    assert ident["latency_scope"] == "searched" and table.scope == "searched"
    uniform = [[1.0 / len(t)] * len(t) for t in table.fusion]
    start = _fusion_expected_us(uniform, table)
    got = {}
    for beta, scope in ((0.0, "searched"), (10.0, "searched"), (10.0, "cells")):
        cfg = tiny_search_config(lut_path, beta=beta, epochs=1, optim=OptimConfig(lr_a=0.05))
        cfg = cfg.replace(lut=LUTConfig(path=str(lut_path), resolution=RESOLUTION, latency_scope=scope))
        out = tmp_path / f"{scope}-{beta}"
        res = SearchRun(cfg, RunOptions(out=str(out), device="cpu", progress=False, plots=False,
                                        log=lambda m: None)).run()
        geno = Genotype.load(res.genotype_path)
        assert geno.meta["lut"]["latency_scope"] == scope
        got[(beta, scope)] = _fusion_expected_us(geno.meta["probabilities"]["fusion"], table)
    # β > 0 in the searched scope: the fusion cell's α moved toward cheaper ops ...
    assert got[(10.0, "searched")] < start
    # ... which β = 0 (CE alone) and the cells-only scope (the fusion cell unpriced) did not do
    assert got[(10.0, "searched")] < got[(0.0, "searched")]
    assert got[(10.0, "searched")] < got[(10.0, "cells")]


def test_a_configuration_saved_before_scopes_existed_reads_with_the_scope_it_priced():
    cfg = SearchConfig(space=tiny_space(), lut=LUTConfig(path="x.parquet", latency_scope="cells"))
    d = cfg.to_dict()
    assert SearchConfig.from_dict(d).lut.latency_scope == "cells"   # the old default, recorded: kept
    d["lut"].pop("latency_scope")
    assert SearchConfig.from_dict(d).lut.latency_scope == "network"  # before scopes: the whole network
    assert LUTConfig().latency_scope == "searched"


def test_a_checkpointed_table_keeps_its_scope_resolution_and_fusion_candidates(lut_path):
    table, _ = load_latency_table(LUTConfig(path=str(lut_path), resolution=RESOLUTION), tiny_space())
    back = LatencyTable.from_state_dict(table.state_dict())
    assert back.scope == "searched" and back.resolution == RESOLUTION
    assert back.fusion_candidates == table.fusion_candidates
    old = table.state_dict()
    for k in ("scope", "resolution", "fusion_candidates"):
        old.pop(k)
    legacy = LatencyTable.from_state_dict(old)  # a checkpoint from before: the whole network, dcfc's edges
    assert legacy.scope == "network" and legacy.resolution is None
    z = torch.softmax(torch.randn(table.cell.shape, dtype=torch.float64), -1)
    fz = [torch.softmax(torch.randn(t.shape, dtype=torch.float64), -1) for t in table.fusion]
    assert float(legacy.latency(z, fz)) == pytest.approx(float(table.network_sum(z, fz)))
