"""`nas sample`: the random-search baselines of Table VII, (a) unconstrained and (b) FPS-constrained."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from search_support import build_tiny_lut

from latbench.lut.table import read_lut
from nas.commands.sample import sample
from nas.genotype import Genotype
from nas.space import LGCNetSpace


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    return build_tiny_lut(tmp_path_factory.mktemp("lut") / "tiny.parquet")


def _lut_sum(lut_path, geno: Genotype) -> float:
    """Σ of the architecture's LUT rows, computed here from the LUT file directly."""
    df = read_lut(lut_path).df
    med = {(p, o): m for p, o, m in zip(df["position"], df["op"], df["median_us"])}
    return sum(med[row] for row in LGCNetSpace(geno.config).architecture_rows(geno.arch))


def test_unconstrained_and_constrained_random_search(lut_path, tmp_path):
    r = CliRunner().invoke(sample, ["--lut", str(lut_path), "-n", "6", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    a = [Genotype.load(p) for p in sorted((tmp_path / "a").glob("random-*.json"))]
    assert len(a) == 6 and len({json.dumps(g.arch.to_dict()) for g in a}) == 6
    sums = sorted(_lut_sum(lut_path, g) for g in a)
    for g in a:
        assert g.meta["expected_latency"]["lut_sum_us"] == pytest.approx(_lut_sum(lut_path, g), rel=1e-6)
    # (b): a budget between the fastest and slowest of (a) keeps only architectures under it
    budget = (sums[1] + sums[-2]) / 2
    r = CliRunner().invoke(sample, ["--lut", str(lut_path), "-n", "4", "--min-fps", str(1e6 / budget),
                                    "--out", str(tmp_path / "b"), "--seed", "3"])
    assert r.exit_code == 0, r.output
    b = [Genotype.load(p) for p in sorted((tmp_path / "b").glob("random-*.json"))]
    assert len(b) == 4
    assert all(_lut_sum(lut_path, g) <= budget * (1 + 1e-9) for g in b)
    assert all(g.meta["random_search"]["setting"] == "b" for g in b)


def test_impossible_constraint_is_one_line_exit_2(lut_path, tmp_path):
    r = CliRunner().invoke(sample, ["--lut", str(lut_path), "-n", "2", "--min-fps", "1e9", "--max-draws", "20",
                                    "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "relax --min-fps" in r.output
