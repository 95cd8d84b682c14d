"""Table X row d: the MSCell (CAS's multi-scale cell, as we read it) as a fourth fusion option —
enumerated by the space, priced from the same LUT, searchable and trainable."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from latbench.errors import UserError
from latbench.lut.table import read_lut
from nas.config import FUSION_MODES, SpaceConfig
from nas.fusion import MSCELL_NODE_EDGES, MSCELL_STEPS, fusion_edge_candidates, fusion_edges
from nas.genotype import Architecture, Genotype
from nas.network import ArchWeights, LGCNet, derive_network, inference_network
from nas.ops import FUSION_PRIMITIVES, OPS, UP_OPS, UP_PRIMITIVES
from nas.space import LGCNetSpace
from search_support import RESOLUTION, build_tiny_lut, tiny_space

H, W = 33, 65
# 5 cells (s4, s8, s8, s16, s16): small, and every MSCell input shape is exercised
SMALL = dict(num_cells=5, reduction_cells=(1, 3), fusion_inputs=(0, 2, 4), init_channels=4, num_classes=5,
             fusion="mscell")


def _cfg(**kw) -> SpaceConfig:
    return SpaceConfig(**{**SMALL, **kw})


def test_mscell_is_a_fusion_mode_with_ten_searchable_edges_from_the_one_registry():
    assert "mscell" in FUSION_MODES
    edges = fusion_edges("mscell")
    assert [p for p, _, _ in edges] == [f"mscell.e{j}" for j in range(10)]
    assert edges[0][1:] == ("up", UP_PRIMITIVES)
    assert all(kind == "op" and cands == FUSION_PRIMITIVES for _, kind, cands in edges[1:])
    assert len(MSCELL_NODE_EDGES) == 9 and MSCELL_STEPS == 3
    # every candidate is a registry op (no second copy of any op)
    assert all(op in OPS or op in UP_OPS for c in fusion_edge_candidates("mscell") for op in c)
    assert fusion_edge_candidates("aspp") == [] and len(fusion_edge_candidates("dcfc")) == 13


def test_enumerated_rows_have_the_shapes_the_real_mscell_runs():
    cfg = _cfg()
    space = LGCNetSpace(cfg)
    arch = Architecture.from_dict(space.sample_architecture(random.Random(2)))
    net = LGCNet(cfg, arch).eval()
    seen: dict[str, tuple] = {}
    hooks = [e.register_forward_hook(lambda m, a, o, name=f"mscell.e{j}": seen.__setitem__(name, (a[0].shape, o.shape)))
             for j, e in enumerate(net.fusion.edges)]
    hooks += [r.register_forward_hook(lambda m, a, o, name=f"mscell.reduce{i}": seen.__setitem__(name, (a[0].shape, o.shape)))
              for i, r in enumerate(net.fusion.reduce)]
    hooks.append(net.head.register_forward_hook(lambda m, a, o: seen.__setitem__("fixed.head_mscell", (a[0].shape, o.shape))))
    with torch.no_grad():
        assert net(torch.randn(1, 3, H, W)).shape == (1, 5, H, W)
    for h in hooks:
        h.remove()
    chosen = dict(space.architecture_rows(arch))
    specs = {(e.position, e.op): e.spec for e in space.network_entries(H, W)}
    assert len(seen) == 10 + 2 + 1
    for pos, (inp, out) in seen.items():
        spec = specs[(pos, chosen[pos])]
        assert spec.inputs[0] == tuple(inp), pos
        with torch.no_grad():
            assert space.build_op(spec)(torch.randn(*inp)).shape == out, pos
    # the s16 input really is one level coarser, the node edges run at s8, the head reads 3 × 48 channels
    assert seen["mscell.e0"][0][-2:] == (3, 5) and seen["mscell.e1"][0][-2:] == (5, 9)
    assert seen["fixed.head_mscell"][0][1] == MSCELL_STEPS * cfg.fusion_channels
    # the merge row times exactly the sums and concatenation of the node-edge outputs
    merge = specs[("mscell.merge", "cell_merge")]
    outs = [torch.randn(*s) for s in merge.inputs]
    assert space.build_op(merge)(*outs).shape == (1, MSCELL_STEPS * cfg.fusion_channels, 5, 9)


def test_one_default_lut_holds_every_mscell_row_with_the_same_op_key():
    """`latbench build-lut` on the default space times the MSCell's rows too (Table X row d is
    priced from the same LUT as rows a–c and e)."""
    default = LGCNetSpace.from_config({})
    built = {(e.position, e.op): e.spec.key for e in default.enumerate(65, 129)}
    variant = LGCNetSpace(default.config.replace(fusion="mscell"))
    rows = variant.network_entries(65, 129)
    assert all(built.get((e.position, e.op)) == e.spec.key for e in rows)
    assert {e.position for e in rows} >= {f"mscell.e{j}" for j in range(10)}
    arch = variant.sample_architecture(random.Random(0))
    priced = variant.architecture_rows(arch)
    assert len(priced) == len(variant.positions()) and set(priced) <= set(built)
    assert not any(p.startswith("fusion.") for p, _ in priced)


@pytest.fixture(scope="module")
def tiny_lut(tmp_path_factory):
    """A real CPU LUT of the tiny space (fusion cell configuration): its default enumeration."""
    return build_tiny_lut(tmp_path_factory.mktemp("mscell") / "tiny.parquet")


def test_a_real_lut_prices_an_mscell_network(tiny_lut):
    lut = read_lut(tiny_lut)
    cfg = tiny_space(fusion="mscell")
    space = LGCNetSpace(cfg)
    have = {(str(p), str(o)): str(k) for p, o, k in zip(lut.df["position"], lut.df["op"], lut.df["key"])}
    # every row of the MSCell network is in the LUT, with the same op key
    assert all(have.get((e.position, e.op)) == e.spec.key for e in space.network_entries(*RESOLUTION))
    for seed in range(2):
        arch = space.sample_architecture(random.Random(seed))
        rows = space.architecture_rows(arch)
        costs = {p: lut.lookup(p, o, *RESOLUTION) for p, o in rows}
        assert all(v is not None and v >= 0 for v in costs.values())
        assert sum(v for p, v in costs.items() if p.startswith("mscell.e")) > 0


def _one_hot(cands, op):
    w = torch.zeros(len(cands))
    w[cands.index(op)] = 1.0
    return w


def test_derived_mscell_network_equals_the_supernet_with_one_hot_weights():
    torch.manual_seed(0)
    cfg = _cfg()
    space = LGCNetSpace(cfg)
    arch = Architecture.from_dict(space.sample_architecture(random.Random(5)))
    supernet = LGCNet(cfg).eval()
    derived = derive_network(cfg, arch, supernet).eval()
    from nas.ops import CELL_PRIMITIVES

    w = ArchWeights([torch.stack([_one_hot(CELL_PRIMITIVES, op) for op in c]) for c in arch.cells],
                    [_one_hot(c, op) for c, op in zip(fusion_edge_candidates("mscell"), arch.fusion)])
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        a, b = supernet(x, w), derived(x)
        c = inference_network(cfg, arch, derived.state_dict())(x)
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-5, rtol=1e-4)


def test_mscell_alpha_is_searched_and_derived():
    """A few architecture steps of the real search model: the MSCell's α (its 9 × 10 op matrix and
    its Up×2 row) gets gradients and moves; the derivation picks one registry op per edge."""
    from nas.search.arch_params import gumbel_softmax, sample_gumbel
    from nas.search.config import SearchConfig, LUTConfig
    from nas.search.derive import arch_probabilities, derive_architecture
    from nas.search.trainer import SearchModel

    cfg = SearchConfig(space=_cfg(), lut=LUTConfig(path="unused.parquet"))
    gen = torch.Generator().manual_seed(0)
    model = SearchModel(cfg, gen)
    assert tuple(model.arch.fusion_op.shape) == (9, 10) and tuple(model.arch.fusion_up.shape) == (1, 2)
    before = [t.detach().clone() for t in model.arch.fusion_logits()]
    opt = torch.optim.Adam(model.arch_parameters(), lr=0.05)
    x, y = torch.randn(2, 3, H, W), torch.randint(0, 5, (2, H, W))
    for _ in range(2):
        cell_g = sample_gumbel((cfg.space.num_cells, cfg.space.num_edges(), 8), gen)
        fusion_g = [sample_gumbel((t.numel(),), gen) for t in model.arch.fusion_logits()]
        out, _, fusion_z = model(x, 1.0, cell_g, fusion_g)
        assert len(fusion_z) == 10
        opt.zero_grad()
        F.cross_entropy(out, y).backward()
        assert model.arch.fusion_op.grad.abs().sum() > 0 and model.arch.fusion_up.grad.abs().sum() > 0
        opt.step()
    after = model.arch.fusion_logits()
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    theta, fusion = model.logits()
    arch = derive_architecture(theta, fusion, cfg.space)
    assert len(arch.fusion) == 10 and arch.fusion[0] in UP_PRIMITIVES
    assert all(op in FUSION_PRIMITIVES for op in arch.fusion[1:])
    assert [len(p) for p in arch_probabilities(theta, fusion)["fusion"]] == [2] + [10] * 9
    # gumbel_softmax over the MSCell's rows sums to one per edge
    assert all(torch.isclose(gumbel_softmax(t, None, 1.0).sum(), torch.tensor(1.0)) for t in fusion)


def test_mscell_network_trains_and_its_genotype_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg()
    space = LGCNetSpace(cfg)
    arch = Architecture.from_dict(space.sample_architecture(random.Random(1)))
    path = Genotype(arch, cfg, {"note": "test"}).save(tmp_path / "genotype.json")
    geno = Genotype.load(path)
    assert geno.arch == arch and geno.config == cfg and geno.config.fusion == "mscell"
    net = LGCNet(geno.config, geno.arch).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, H, W), torch.randint(0, 5, (2, H, W))
    loss0 = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss0.backward()
    assert all(p.grad is not None for p in net.fusion.parameters())
    opt.step()
    with torch.no_grad():
        assert float(F.cross_entropy(net(x), y)) < float(loss0.detach())


@pytest.mark.parametrize("fusion,why", [(["conv_3x3"] * 10, "not allowed here"), (["interp"] * 3, "MSCell has 3 edges")])
def test_an_mscell_genotype_with_wrong_edges_is_refused(tmp_path, fusion, why):
    cfg = _cfg()
    arch = Architecture.from_dict(LGCNetSpace(cfg).sample_architecture(random.Random(0)))
    d = Genotype(arch, cfg).to_dict()
    d["fusion"] = fusion
    with pytest.raises(UserError, match=why):
        Genotype.from_dict(d, source="g.json")


def test_the_search_prices_the_mscell_edges_and_beta_moves_them_to_cheaper_ops(tiny_lut):
    """The search's latency table lays out the MSCell's 10 edges from the same LUT; under β > 0
    the latency term alone moves its α toward cheaper ops (β = 0: no latency gradient)."""
    from nas.search.arch_params import ArchParams
    from nas.search.config import LUTConfig
    from nas.search.latency import load_latency_table

    cfg = tiny_space(fusion="mscell")
    table, _ = load_latency_table(LUTConfig(path=str(tiny_lut), resolution=RESOLUTION, latency_scope="network"), cfg)
    assert [len(t) for t in table.fusion] == [2] + [10] * 9
    space, lut = LGCNetSpace(cfg), read_lut(tiny_lut)
    arch = Architecture.from_dict(space.sample_architecture(random.Random(0)))
    want = sum(lut.lookup(p, o, *RESOLUTION) for p, o in space.architecture_rows(arch))
    assert table.architecture_lut_sum(arch) == pytest.approx(want, rel=1e-9)

    @torch.no_grad()
    def expected_mscell_cost(params):
        return float(sum((torch.softmax(t, -1) * c).sum() for t, c in zip(params.fusion_logits(), table.fusion)))

    for beta in (0.0, 0.5):
        params = ArchParams(cfg, generator=torch.Generator().manual_seed(0))
        start = expected_mscell_cost(params)
        opt = torch.optim.Adam(params.parameters(), lr=0.1)
        for _ in range(10):
            z = torch.softmax(params.cell_logits(), -1)
            fz = [torch.softmax(t, -1) for t in params.fusion_logits()]
            opt.zero_grad()
            (beta * torch.log(table.latency(z, fz)) + 0.0 * z.sum()).backward()
            opt.step()
        end = expected_mscell_cost(params)
        assert (end < 0.9 * start) if beta > 0 else end == pytest.approx(start)


def test_nas_search_fusion_mscell_runs_and_writes_an_mscell_genotype(tiny_lut, tmp_path):
    from click.testing import CliRunner

    from nas.cli import cli

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["search", "--lut", str(tiny_lut), "--fusion", "mscell", "--dataset", "synthetic",
                                 "--epochs", "1", "--batch-size", "4", "--length", "4", "--workers", "0",
                                 "--device", "cpu", "--no-plots", "--no-progress", "--out", str(out)])
    assert r.exit_code == 0, r.output
    geno = Genotype.load(out / "genotype.json")
    assert geno.config.fusion == "mscell" and len(geno.arch.fusion) == 10
    assert [len(p) for p in geno.meta["probabilities"]["fusion"]] == [2] + [10] * 9
    rows = LGCNetSpace(geno.config).architecture_rows(geno.arch)
    lut = read_lut(tiny_lut)
    assert geno.meta["expected_latency"]["lut_sum_us"] == pytest.approx(
        sum(lut.lookup(p, o, *RESOLUTION) for p, o in rows), rel=1e-3)
    # nas derive re-derives the same MSCell genotype from the checkpoint (no LUT needed)
    r = CliRunner().invoke(cli, ["derive", str(out / "checkpoints" / "last.pt"), "--out", str(tmp_path / "g2.json")])
    assert r.exit_code == 0, r.output
    assert Genotype.load(tmp_path / "g2.json").arch == geno.arch
