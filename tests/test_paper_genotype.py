"""The paper's searched network (Fig. 9), as encoded in nas/genotypes/lgcnet_paper.json, and the
deployed-width rule fitted on it: at DEPLOY_WIDTH_MULT it has the paper's 2.09 M parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas import paper
from nas.config import DEPLOY_WIDTH_MULT
from nas.fps import count_cost
from nas.genotype import Genotype
from nas.network import inference_network

PATH = Path(__file__).resolve().parents[1] / "nas" / "genotypes" / "lgcnet_paper.json"
LIGHT = ("zero", "skip_connect", "max_pool_3x3")
LARGE = ("dil_sep_conv_3x3_d4", "dil_sep_conv_3x3_d8")


def _params(g: Genotype, width_mult: float) -> int:
    cfg = g.config.replace(width_mult=width_mult)
    return count_cost(inference_network(cfg, g.arch), (1, 3, 65, 129)).params


@pytest.fixture(scope="module")
def genotype():
    return Genotype.load(PATH)


def test_it_is_the_paper_network_as_the_text_describes_it(genotype):
    cfg = genotype.config
    assert cfg.init_channels == paper.SEARCH_INIT_CHANNELS and cfg.num_classes == 19 and cfg.fusion == "dcfc"
    assert cfg.fusion_inputs == (0, 7, 13) and cfg.width_mult == DEPLOY_WIDTH_MULT
    cells = genotype.arch.cells
    # IV-D: thirty light-weight ops (none, max pooling, skip) ...
    assert sum(op in LIGHT for cell in cells for op in cell) == 30
    # ... and 11 large-receptive-field ops (dilation 4 or 8) in the last four cells
    assert sum(op in LARGE for cell in cells[-4:] for op in cell) == 11
    # shallow cells lighter than deep ones
    assert sum(op in LIGHT for c in cells[:7] for op in c) > sum(op in LIGHT for c in cells[7:] for op in c)
    assert "read" in genotype.meta["note"] and "Fig. 9" in genotype.meta["note"]


def test_the_deployed_width_gives_the_papers_parameter_count(genotype):
    at_rule = _params(genotype, DEPLOY_WIDTH_MULT)
    assert abs(at_rule - paper.PARAMS) / paper.PARAMS < 0.03
    # the rule is the closest quarter step: a quarter narrower is too small, a quarter wider too big
    assert _params(genotype, DEPLOY_WIDTH_MULT - 0.25) < paper.PARAMS < _params(genotype, DEPLOY_WIDTH_MULT + 0.25)
    # the searched width alone is far from it (why the deployed network is widened)
    assert _params(genotype, 1.0) < 0.4 * paper.PARAMS
    assert genotype.meta["width_fit"]["params_at_rule"] == at_rule


def test_nas_fps_prints_params_beside_the_papers(genotype):
    from click.testing import CliRunner

    from nas.cli import cli

    r = CliRunner().invoke(cli, ["fps", "--arch", str(PATH), "--device", "cpu", "--resolution", "33x65",
                                 "--max-time", "0.05", "--min-time", "0", "--warmup", "0", "--no-save"])
    assert r.exit_code == 0, r.output
    ours = genotype.meta["width_fit"]["params_at_rule"] / 1e6
    assert f"{ours:.3f} M params (paper: 2.09 M, Table VI)" in r.output
