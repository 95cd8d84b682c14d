"""The LGCNet search space: ops registry, topology, enumeration against the paper and the real network."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from latbench.errors import UserError
from latbench.space import load_space
from nas.config import SpaceConfig
from nas.fusion import EDGES, NODES, edge_candidates
from nas.genotype import Architecture, Genotype
from nas.network import ArchWeights, LGCNet, derive_network, inference_network
from nas.ops import CELL_PRIMITIVES, FUSION_PRIMITIVES, UP_PRIMITIVES, build_op
from nas.space import LGCNetSpace

H, W = 65, 129


def test_candidate_sets_match_paper_tables():
    assert len(CELL_PRIMITIVES) == 8 and len(set(CELL_PRIMITIVES)) == 8  # Table II
    assert {"max_pool_3x3", "skip_connect", "conv_3x3", "zero", "sep_conv_3x3"} <= set(CELL_PRIMITIVES)
    assert {p for p in CELL_PRIMITIVES if p.startswith("dil_")} == {f"dil_sep_conv_3x3_d{d}" for d in (2, 4, 8)}
    assert len(FUSION_PRIMITIVES) == 10  # Table III
    assert {p for p in FUSION_PRIMITIVES if p.startswith("gpool")} == {"gpool_1x1", "gpool_2x2", "gpool_5x5"}
    assert UP_PRIMITIVES == ("deconv", "interp")


def test_fusion_cell_has_nine_nodes_and_thirteen_edges():
    assert len(NODES) == 9 and len(EDGES) == 13
    ups = [e for e in EDGES if e[2] == "up"]
    assert len(ups) == 4
    for s, d, kind in EDGES:
        assert s < d  # a DAG in evaluation order
        ls, ld = NODES[s][1], NODES[d][1]
        assert (ld == ls - 1) if kind == "up" else (ld == ls)  # Up×2 goes one level finer; ops stay


def test_enumeration_counts_match_the_paper():
    space = LGCNetSpace(SpaceConfig())
    entries = space.enumerate(H, W)
    by_kind = Counter(e.kind for e in entries)
    # the cells (Table II), the fusion cell (Table III + Up×2), and the MSCell of Table X row d
    assert by_kind["candidate"] == 14 * 5 * 8 + 9 * 10 + 4 * 2 + (9 * 10 + 1 * 2)
    assert sum(1 for e in space.network_entries(H, W) if e.kind == "candidate") == 14 * 5 * 8 + 9 * 10 + 4 * 2
    cell_pairs = {(e.position, e.op) for e in entries if e.position.startswith("cell") and e.kind == "candidate"}
    assert len(cell_pairs) == 14 * 5 * 8
    fixed = {e.position for e in entries if e.kind == "fixed"}
    assert "fixed.stem" in fixed and "fixed.head" in fixed and "fixed.upsample" in fixed and "fusion.merge" in fixed
    assert {f"cell{k}.{p}" for k in range(14) for p in ("pre0", "pre1", "merge")} <= fixed
    assert {f"fusion.reduce{i}" for i in range(3)} <= fixed
    # rows are unique per (position, op)
    assert len({(e.position, e.op) for e in entries}) == len(entries)
    # deduplication possible: fewer distinct timed signatures than rows
    assert len({e.key for e in entries if not e.analytic}) < len(entries)
    # zero, and skip_connect where it is an identity (stride 1): nothing runs, 0 µs
    assert all(e.analytic == (e.op == "zero" or (e.op == "skip_connect" and e.spec.param("stride") == 1))
               for e in entries)


def test_strides_of_fusion_inputs_are_4_8_16():
    cfg = SpaceConfig()
    assert [cfg.cell_stride(c) for c in cfg.fusion_inputs] == [4, 8, 16]
    assert [k for k in range(14) if cfg.cell_stride(k) == 4] == [0]
    # Table XI's alternatives are valid configurations too
    for inputs in ([0, 5, 13], [0, 6, 13], [0, 7, 10], [0, 7, 11], [0, 7, 12]):
        SpaceConfig(fusion_inputs=tuple(inputs))
    with pytest.raises(UserError):
        SpaceConfig(fusion_inputs=(0, 3, 5))


def _record_inputs(net: LGCNet):
    seen: dict[str, tuple] = {}
    hooks = []
    for k, cell in enumerate(net.cells):
        for j, edge in enumerate(cell.edges):
            hooks.append(edge.register_forward_hook(lambda m, a, o, name=f"cell{k}.e{j}": seen.__setitem__(name, (tuple(a[0].shape), tuple(o.shape) if o is not None else None))))
    if net.config.fusion == "dcfc":
        for j, edge in enumerate(net.fusion.edges):
            hooks.append(edge.register_forward_hook(lambda m, a, o, name=f"fusion.e{j}": seen.__setitem__(name, (tuple(a[0].shape), tuple(o.shape)))))
    return seen, hooks


@pytest.mark.parametrize("hw", [(65, 129), (64, 96)])
def test_enumerated_shapes_equal_the_real_network(hw):
    cfg = SpaceConfig(num_classes=7)
    space = LGCNetSpace(cfg)
    arch = Architecture.from_dict(space.sample_architecture(random.Random(1)))
    # keep every edge alive so each one is observed
    arch = Architecture([["conv_3x3"] * 5] * 14, arch.fusion)
    net = LGCNet(cfg, arch).eval()
    seen, hooks = _record_inputs(net)
    with torch.no_grad():
        y = net(torch.randn(2, 3, *hw))
    assert y.shape == (2, 7, *hw)
    specs = {(e.position, e.op): e.spec for e in space.enumerate(*hw, batch=2)}
    for pos, (inp, out) in seen.items():
        op = arch.cells[int(pos[4:pos.index(".")])][int(pos.split(".e")[1])] if pos.startswith("cell") else arch.fusion[int(pos.split(".e")[1])]
        spec = specs[(pos, op)]
        assert spec.inputs[0] == inp, pos
        module = space.build_op(spec)
        with torch.no_grad():
            assert tuple(module(torch.randn(*inp)).shape) == out, pos


def test_every_registry_op_runs_at_odd_sizes_and_folding_is_exact():
    torch.manual_seed(0)
    for name in sorted(set(CELL_PRIMITIVES) | set(FUSION_PRIMITIVES)):
        for stride in (1, 2) if name in CELL_PRIMITIVES else (1,):
            m = build_op(name, 6, 6, stride)
            for mod in m.modules():  # non-trivial BN statistics so folding is really tested
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.uniform_(-1, 1); mod.running_var.uniform_(0.5, 2)
                    mod.weight.data.uniform_(0.5, 1.5); mod.bias.data.uniform_(-1, 1)
            m.eval()
            x = torch.randn(1, 6, 13, 21)
            with torch.no_grad():
                y = m(x)
                assert y.shape == (1, 6, 7 if stride == 2 else 13, 11 if stride == 2 else 21), name
                from nas.fold import fold_batchnorm
                y2 = fold_batchnorm(m)(x)
            assert torch.allclose(y, y2, atol=1e-5, rtol=1e-5), name


def _one_hot_weights(arch: Architecture) -> ArchWeights:
    def oh(cands, op):
        w = torch.zeros(len(cands))
        w[cands.index(op)] = 1.0
        return w
    cells = [torch.stack([oh(CELL_PRIMITIVES, op) for op in cell]) for cell in arch.cells]
    fusion = [oh(c, op) for c, op in zip(edge_candidates(), arch.fusion)]
    return ArchWeights(cells, fusion)


def test_derived_network_equals_supernet_with_one_hot_weights():
    torch.manual_seed(0)
    cfg = SpaceConfig(num_classes=5)
    space = LGCNetSpace(cfg)
    arch = Architecture.from_dict(space.sample_architecture(random.Random(3)))
    supernet = LGCNet(cfg).eval()
    derived = derive_network(cfg, arch, supernet).eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        a = supernet(x, _one_hot_weights(arch))
        b = derived(x)
        c = inference_network(cfg, arch, derived.state_dict())(x)
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in derived.parameters()) < sum(p.numel() for p in supernet.parameters())


def test_architecture_rows_cover_each_position_once():
    space = LGCNetSpace(SpaceConfig())
    arch = space.sample_architecture(random.Random(0))
    rows = space.architecture_rows(arch)
    positions = [p for p, _ in rows]
    assert len(positions) == len(set(positions)) == len(space.positions())
    enumerated = {(e.position, e.op) for e in space.enumerate(H, W)}
    assert set(rows) <= enumerated


@pytest.mark.parametrize("fusion", ["aspp", "ppm", "none"])
def test_fusion_ablations_enumerate_and_build(fusion):
    cfg = SpaceConfig(fusion=fusion, num_classes=4)
    space = LGCNetSpace(cfg)
    entries = space.network_entries(H, W)
    assert not any(e.position.startswith("fusion.") for e in entries)
    # a LUT built for the ablation still holds the fusion cell's rows (one LUT, every Table X row)
    assert any(e.position.startswith("fusion.") for e in space.enumerate(H, W))
    arch = space.sample_architecture(random.Random(0))
    assert arch["fusion"] == []
    with torch.no_grad():
        assert space.build_architecture(arch)(torch.randn(1, 3, H, W)).shape == (1, 4, H, W)


def test_space_is_found_through_the_entry_point_and_checks_options():
    space = load_space("lgcnet", {"init_channels": 16})
    assert space.identity()["config"]["init_channels"] == 16
    with pytest.raises(UserError, match="unknown LGCNet space option"):
        load_space("lgcnet", {"channels_typo": 3})
    with pytest.raises(UserError, match="unknown search space"):
        load_space("nope")


def test_genotype_round_trip_and_validation(tmp_path):
    cfg = SpaceConfig()
    arch = Architecture.from_dict(LGCNetSpace(cfg).sample_architecture(random.Random(5)))
    g = Genotype(arch, cfg, {"expected_latency_us": 123.0})
    path = g.save(tmp_path / "genotype.json")
    assert Genotype.load(path).arch == arch
    bad = g.to_dict()
    bad["cells"][3][1] = "conv_7x7"
    with pytest.raises(UserError, match="cell 3 edge 1"):
        Genotype.from_dict(bad)
    bad = g.to_dict(); bad["space_version"] = 99
    with pytest.raises(UserError, match="version"):
        Genotype.from_dict(bad)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        Genotype.load(tmp_path / "x.json")
