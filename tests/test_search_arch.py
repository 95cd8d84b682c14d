"""Architecture parameters, Gumbel-softmax, the temperature schedule and the derivation rule."""

from __future__ import annotations

import pytest
import torch

from latbench.errors import UserError
from nas.config import SpaceConfig
from nas.genotype import Architecture
from nas.ops import CELL_PRIMITIVES, FUSION_PRIMITIVES, UP_PRIMITIVES
from nas.search.arch_params import ArchConfig, ArchParams, entropy, gumbel_softmax, sample_gumbel
from nas.search.config import SearchConfig
from nas.search.derive import derive_architecture, empty_nodes
from nas.search.ggm import GGMConfig
from nas.search.temperature import TemperatureSchedule


def test_paper_shapes_independent_cells():
    a = ArchParams(SpaceConfig(), generator=torch.Generator().manual_seed(0))
    assert a.cell_alpha.shape == (14, 5, 8)
    assert a.cell_logits().shape == (14, 5, 8)
    f = a.fusion_logits()
    assert len(f) == 13
    assert sorted(t.numel() for t in f) == [2] * 4 + [10] * 9
    assert a.fusion_op.shape == (9, len(FUSION_PRIMITIVES)) and a.fusion_up.shape == (4, len(UP_PRIMITIVES))
    assert a.cell_alpha.abs().max() < 0.01  # almost uniform start


def test_shared_cells_use_one_normal_and_one_reduction_matrix():
    cfg = SpaceConfig()
    a = ArchParams(cfg, ArchConfig(cells="shared"), generator=torch.Generator().manual_seed(0))
    assert a.cell_alpha.shape == (2, 5, 8)
    theta = a.cell_logits()
    for k in range(14):
        assert torch.equal(theta[k], a.cell_alpha[1 if cfg.is_reduction(k) else 0])
    theta[3].sum().backward()  # a normal cell's gradient lands on the normal matrix
    assert a.cell_alpha.grad[0].abs().sum() > 0 and a.cell_alpha.grad[1].abs().sum() == 0


def test_no_fusion_parameters_without_dcfc():
    a = ArchParams(SpaceConfig(fusion="aspp"))
    assert a.fusion_logits() == [] and a.fusion_op is None and a.fusion_up is None


def test_shared_cells_with_ggm_is_refused():
    with pytest.raises(UserError, match="--between none"):
        SearchConfig(arch=ArchConfig(cells="shared"), ggm=GGMConfig(mode="gcn"))
    SearchConfig(arch=ArchConfig(cells="shared"), ggm=GGMConfig(mode="none"))


def test_gumbel_softmax_is_eq_4():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.1, -0.3, 0.7])
    noise = sample_gumbel((3,), g)
    z = gumbel_softmax(logits, noise, 0.5)
    assert torch.allclose(z, torch.softmax((logits + noise) / 0.5, -1))
    assert torch.isclose(z.sum(), torch.tensor(1.0))
    # at a low temperature the sample is nearly one-hot at argmax(logits + G)
    z_cold = gumbel_softmax(logits, noise, 0.01)
    assert int(z_cold.argmax()) == int((logits + noise).argmax()) and z_cold.max() > 0.99
    # the arg-max frequency of many samples follows softmax(logits) (Gumbel-max trick)
    big = sample_gumbel((20000, 3), torch.Generator().manual_seed(1))
    freq = torch.bincount((logits + big).argmax(-1), minlength=3).double() / 20000
    assert torch.allclose(freq, torch.softmax(logits.double(), -1), atol=0.02)
    assert torch.isclose(entropy(torch.zeros(8)), torch.log(torch.tensor(8.0)))


@pytest.mark.parametrize("kind", ["exp", "linear", "cosine"])
def test_temperature_goes_from_1_to_0_03(kind):
    s = TemperatureSchedule(kind=kind)
    values = [s.at(t, 50) for t in range(50)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.03)
    assert all(a >= b for a, b in zip(values, values[1:]))
    if kind == "exp":  # geometric: constant ratio
        assert values[1] / values[0] == pytest.approx(values[30] / values[29])


def _logits_for(ops_per_cell, steps=2):
    theta = torch.zeros(len(ops_per_cell), 2 + 3 * (steps - 1), len(CELL_PRIMITIVES))
    for k, ops in enumerate(ops_per_cell):
        for e, op in enumerate(ops):
            theta[k, e, CELL_PRIMITIVES.index(op)] = 1.0
    return theta


def test_derivation_is_argmax_with_zero_removing_edges():
    cfg = SpaceConfig(num_cells=2, reduction_cells=(1,), fusion="none")
    cells = [["conv_3x3", "zero", "skip_connect", "sep_conv_3x3", "zero"],
             ["zero", "zero", "max_pool_3x3", "zero", "dil_sep_conv_3x3_d8"]]
    arch = derive_architecture(_logits_for(cells), [], cfg)
    assert [list(c) for c in arch.cells] == cells
    # cell 1: both inputs of node 0 are zero -> the node is kept as an all-zero map and reported
    assert empty_nodes(arch, cfg) == ["cell1.node0"]
    # ... and the derived network runs and matches the supernet with one-hot weights
    from nas.network import ArchWeights, LGCNet, derive_network
    torch.manual_seed(0)
    sup = LGCNet(cfg).eval()
    net = derive_network(cfg, arch, sup).eval()
    x = torch.randn(1, 3, 33, 65)
    onehot = [torch.nn.functional.one_hot(_logits_for(cells)[k].argmax(-1), 8).float() for k in range(2)]
    assert torch.allclose(net(x), sup(x, ArchWeights(cells=onehot)), atol=1e-5)


def test_derivation_ties_go_to_the_first_op_and_fusion_edges_respect_their_candidates():
    cfg = SpaceConfig(num_cells=14)
    theta = torch.zeros(14, 5, 8)
    from nas.fusion import edge_candidates
    fusion = [torch.zeros(len(c)) for c in edge_candidates()]
    fusion[2][1] = 1.0
    arch = derive_architecture(theta, fusion, cfg)
    assert all(op == CELL_PRIMITIVES[0] for cell in arch.cells for op in cell)
    assert arch.fusion[2] == edge_candidates()[2][1]
    assert all(op in c for op, c in zip(arch.fusion, edge_candidates()))
    assert isinstance(arch, Architecture)
