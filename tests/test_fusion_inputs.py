"""Table XI: with fusion inputs such as [0, 7, 10], the cells after the last input feed nothing, so
they are not built (supernet, derived network), not enumerated or priced (LUT rows, LAT) and not
counted (parameters, MACs); genotypes written with the uncut cell list still read."""

from __future__ import annotations

import random

import pytest
import torch

from nas.config import SpaceConfig
from nas.fps import count_cost
from nas.genotype import Architecture, Genotype
from nas.network import LGCNet
from nas.search.arch_params import ArchParams
from nas.space import LGCNetSpace
from search_support import RESOLUTION, build_tiny_lut, tiny_space

ROW = (0, 7, 10)
H, W = 33, 65


@pytest.mark.parametrize("fusion", ["dcfc", "mscell"])
def test_cells_after_the_last_input_are_not_part_of_the_configuration(fusion):
    cfg = SpaceConfig(fusion=fusion, fusion_inputs=ROW)
    assert cfg.num_cells == 11 and cfg.fusion_inputs == ROW and cfg.reduction_cells == (1, 8)
    assert [cfg.cell_stride(c) for c in ROW] == [4, 8, 16]       # strides of the kept cells unchanged
    assert SpaceConfig(fusion=fusion, fusion_inputs=(0, 7, 13)).num_cells == 14
    # the last cell feeds ASPP / PPM / the head directly: nothing to cut there
    assert SpaceConfig(fusion="aspp", fusion_inputs=ROW).num_cells == 14
    assert SpaceConfig.from_dict(cfg.to_dict()) == cfg


def test_row_0_7_10_is_neither_built_nor_enumerated_nor_searched():
    cfg = SpaceConfig(fusion_inputs=ROW, num_classes=5)
    space = LGCNetSpace(cfg)
    late = tuple(f"cell{k}." for k in (11, 12, 13))
    for rows in (space.network_entries(H, W), space.enumerate(H, W)):
        assert not any(e.position.startswith(late) for e in rows)
        assert any(e.position.startswith("cell10.") for e in rows)
    assert not any(p.name.startswith(late) for p in space.positions())
    arch = space.sample_architecture(random.Random(0))
    assert len(arch["cells"]) == 11
    assert not any(p.startswith(late) for p, _ in space.architecture_rows(arch))
    assert len(LGCNet(cfg).cells) == 11                        # the supernet
    assert len(space.build_architecture(arch).cells) == 11     # the derived (inference) network
    assert ArchParams(cfg).cell_alpha.shape[0] == 11           # α (and the GGM's chain) stop there too


def test_row_0_7_10_counts_parameters_and_macs_without_the_late_cells():
    """Same ops in cells 0–10: the [0, 7, 10] network is the [0, 7, 13] one minus cells 11–13."""
    full_cfg = SpaceConfig(num_classes=5)
    cut_cfg = SpaceConfig(fusion_inputs=ROW, num_classes=5)
    full_arch = Architecture.from_dict(LGCNetSpace(full_cfg).sample_architecture(random.Random(4)))
    cut_arch = Architecture(full_arch.cells[:11], full_arch.fusion)
    torch.manual_seed(0)
    full, cut = LGCNet(full_cfg, full_arch).eval(), LGCNet(cut_cfg, cut_arch).eval()
    late = sum(p.numel() for k in (11, 12, 13) for p in full.cells[k].parameters())
    assert late > 0
    a, b = count_cost(full, (1, 3, H, W)), count_cost(cut, (1, 3, H, W))
    assert b.params == a.params - late
    assert 0 < b.macs < a.macs
    with torch.no_grad():
        assert cut(torch.randn(1, 3, H, W)).shape == (1, 5, H, W)


def test_a_genotype_with_the_uncut_cell_list_still_reads(tmp_path):
    cfg = SpaceConfig(fusion_inputs=ROW)
    arch = Architecture.from_dict(LGCNetSpace(cfg).sample_architecture(random.Random(1)))
    d = Genotype(arch, cfg).to_dict()
    d["config"]["num_cells"] = 14                      # as written before the cut
    d["cells"] = d["cells"] + [["conv_3x3"] * 5] * 3
    geno = Genotype.from_dict(d, source="old.json")
    assert geno.config.num_cells == 11 and geno.arch == arch
    # a genotype whose cell list does not match its own configuration is still refused
    d["cells"] = d["cells"][:12]
    with pytest.raises(Exception, match="12 cells"):
        Genotype.from_dict(d, source="bad.json")


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    """A real CPU LUT of the tiny space (4 cells, fusion inputs 0, 1, 3)."""
    return build_tiny_lut(tmp_path_factory.mktemp("xi") / "tiny.parquet")


def test_a_lut_of_the_full_space_prices_the_cut_row_without_the_late_cells(lut_path):
    """The tiny space's Table XI row (inputs 0, 1, 2 of 4 cells): the search's latency table has
    rows for cells 0–2 only, and a discrete architecture's price is the sum of its own rows."""
    from latbench.lut.table import read_lut
    from nas.search.config import LUTConfig
    from nas.search.latency import load_latency_table

    cfg = tiny_space(fusion_inputs=(0, 1, 2))
    assert cfg.num_cells == 3
    table, _ = load_latency_table(LUTConfig(path=str(lut_path), resolution=RESOLUTION, latency_scope="network"), cfg)
    assert table.cell.shape[0] == 3
    space, lut = LGCNetSpace(cfg), read_lut(lut_path)
    arch = Architecture.from_dict(space.sample_architecture(random.Random(0)))
    rows = space.architecture_rows(arch)
    assert not any(p.startswith("cell3.") for p, _ in rows)
    assert table.architecture_lut_sum(arch) == pytest.approx(sum(lut.lookup(p, o, *RESOLUTION) for p, o in rows))


def test_nas_search_with_an_earlier_last_input_searches_only_the_cells_it_uses(lut_path, tmp_path):
    from click.testing import CliRunner

    from latbench.lut.table import read_lut
    from nas.cli import cli

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["search", "--lut", str(lut_path), "--fusion-inputs", "0,1,2", "--dataset", "synthetic",
                                 "--epochs", "1", "--batch-size", "4", "--length", "4", "--workers", "0",
                                 "--device", "cpu", "--no-plots", "--no-progress", "--out", str(out)])
    assert r.exit_code == 0, r.output
    geno = Genotype.load(out / "genotype.json")
    assert geno.config.num_cells == 3 and len(geno.arch.cells) == 3
    assert len(geno.meta["probabilities"]["cells"]) == 3
    lut = read_lut(lut_path)
    rows = LGCNetSpace(geno.config).architecture_rows(geno.arch)
    assert geno.meta["expected_latency"]["lut_sum_us"] == pytest.approx(
        sum(lut.lookup(p, o, *RESOLUTION) for p, o in rows), rel=1e-3)
