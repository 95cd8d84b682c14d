"""One default LUT prices every ablation of the paper's Tables X (none / ASPP / PPM / fusion cell)
and XI (which cells feed the fusion cell); a LUT that lacks rows names the build-lut command that
adds them to the same file, and that command does."""

from __future__ import annotations

import random
import shlex

import pytest
from click.testing import CliRunner

from latbench.cli import cli as latbench_cli
from latbench.errors import UserError
from latbench.lut.table import read_lut, write_lut
from nas.config import DEPLOY_WIDTH_MULT, SpaceConfig
from nas.genotype import Architecture
from nas.search.config import LUTConfig
from nas.search.latency import load_latency_table
from nas.space import LGCNetSpace
from search_support import RESOLUTION, TINY_SPACE, tiny_space

TABLE_X = ("none", "aspp", "ppm", "dcfc")
TABLE_XI = ((0, 5, 13), (0, 6, 13), (0, 7, 13), (0, 7, 10), (0, 7, 11), (0, 7, 12))


@pytest.mark.parametrize("fusion", TABLE_X)
@pytest.mark.parametrize("inputs", TABLE_XI)
def test_default_enumeration_holds_every_row_of_every_ablation(fusion, inputs):
    """The rows `latbench build-lut` times for the default space include, with identical op keys,
    every row of every Table X / XI network: what pricing needs."""
    default = LGCNetSpace.from_config({})
    built = {(e.position, e.op): e.spec.key for e in default.enumerate(65, 129)}
    variant = LGCNetSpace(default.config.replace(fusion=fusion, fusion_inputs=inputs))
    rows = variant.network_entries(65, 129)
    assert rows and all(built.get((e.position, e.op)) == e.spec.key for e in rows)
    # and an architecture of the variant sums exactly those rows
    arch = variant.sample_architecture(random.Random(0))
    assert set(variant.architecture_rows(arch)) <= {(e.position, e.op) for e in rows}


def test_enumeration_has_one_shape_per_row_and_the_extra_rows_are_few():
    space = LGCNetSpace.from_config({})
    assert space.config.width_mult == DEPLOY_WIDTH_MULT
    entries = space.enumerate(65, 129)
    assert len({(e.position, e.op) for e in entries}) == len(entries)
    own = {(e.position, e.op) for e in space.network_entries(65, 129)}
    extra = [(e.position, e.op) for e in entries if (e.position, e.op) not in own]
    mscell = {(e.position, e.op) for e in LGCNetSpace(space.config.replace(fusion="mscell")).network_entries(65, 129)}
    assert sorted(extra) == sorted([("fixed.aspp", "aspp"), ("fixed.ppm", "ppm"), ("fixed.head_pyramid", "head"),
                                    ("fixed.head_direct", "head"), ("fixed.upsample_deep", "upsample")]
                                   + sorted(mscell - own))
    assert all(p.startswith(("mscell.", "fixed.head_mscell", "fixed.upsample_s8")) for p, _ in mscell - own)


@pytest.fixture(scope="module")
def default_lut(tmp_path_factory):
    """A tiny LGCNet LUT built by `latbench build-lut` with the space's default enumeration."""
    path = tmp_path_factory.mktemp("abl") / "tiny.parquet"
    r = CliRunner().invoke(latbench_cli, _build_args(path), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return path


def _build_args(path):
    args = ["build-lut", "--gpu", "cpu-test", "--device", "cpu", "--backend", "cpu", "--resolution", "33x65",
            "--max-time", "0.02", "--min-time", "0", "--warmup", "0", "--threads", "1", "--accept-load", "--no-progress",
            "--output", str(path)]
    for k, v in TINY_SPACE.items():
        args += ["--space-opt", f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "")]
    return args


def _space(**kw):
    return tiny_space(width_mult=DEPLOY_WIDTH_MULT, **kw)


@pytest.mark.parametrize("fusion", TABLE_X)
@pytest.mark.parametrize("inputs", [(0, 1, 3), (0, 1, 2)])   # the tiny space's Table XI: s4, s8, either s16 cell
def test_one_lut_prices_every_ablation(default_lut, fusion, inputs):
    cfg = _space(fusion=fusion, fusion_inputs=inputs)
    table, _ = load_latency_table(LUTConfig(path=str(default_lut), resolution=RESOLUTION), cfg)
    lut = read_lut(default_lut)
    space = LGCNetSpace(cfg)
    for seed in range(3):
        arch = Architecture.from_dict(space.sample_architecture(random.Random(seed)))
        want = sum(lut.lookup(p, o, *RESOLUTION) for p, o in space.architecture_rows(arch))
        assert table.architecture_lut_sum(arch) == pytest.approx(want, rel=1e-9)


def test_missing_rows_come_with_the_command_that_adds_them(default_lut, tmp_path):
    lut = read_lut(default_lut)
    drop = lut.df["position"].isin(["fixed.aspp", "fixed.head_pyramid"])
    lut.df = lut.df[~drop].reset_index(drop=True)
    holey = tmp_path / "holey.parquet"
    write_lut(lut, holey)
    # the fusion-cell network is still priced; ASPP is refused with the command
    load_latency_table(LUTConfig(path=str(holey), resolution=RESOLUTION), _space())
    with pytest.raises(UserError) as exc:
        load_latency_table(LUTConfig(path=str(holey), resolution=RESOLUTION), _space(fusion="aspp"))
    msg = str(exc.value)
    assert "\n" not in msg and "fixed.aspp/aspp@33x65" in msg and "fixed.head_pyramid/head@33x65" in msg
    cmd = msg.split("with: ", 1)[1]
    argv = shlex.split(cmd)
    assert argv[:2] == ["latbench", "build-lut"] and argv[argv.index("--output") + 1] == str(holey)
    assert "--accept-load" in argv   # the LUT's own build: it was built with --accept-load
    r = CliRunner().invoke(latbench_cli, argv[1:] + ["--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "2 timed now" in r.output            # only the two missing rows were timed
    load_latency_table(LUTConfig(path=str(holey), resolution=RESOLUTION), _space(fusion="aspp"))
    after = read_lut(holey)
    assert len(after.df) == len(read_lut(default_lut).df)


def test_rows_of_another_shape_are_refused_naming_the_difference(default_lut):
    with pytest.raises(UserError, match=f"width_mult: LUT {DEPLOY_WIDTH_MULT!r}, search 1.0"):
        load_latency_table(LUTConfig(path=str(default_lut), resolution=RESOLUTION), tiny_space())
    with pytest.raises(UserError, match="num_classes: LUT 5, search 7"):
        load_latency_table(LUTConfig(path=str(default_lut), resolution=RESOLUTION), _space(num_classes=7))


def test_a_lut_from_an_older_protocol_is_not_promised_a_resume(default_lut, tmp_path):
    """A LUT measured before a timing-protocol field existed cannot be resumed by build-lut (the
    protocols differ): the message says to rebuild instead of printing a command that would fail."""
    lut = read_lut(default_lut)
    lut.df = lut.df[lut.df["position"] != "fixed.aspp"].reset_index(drop=True)
    proto = dict(lut.meta["protocol"])
    proto.pop("warmup_rounds")
    lut.meta["protocol"] = proto
    old = tmp_path / "old.parquet"
    write_lut(lut, old)
    with pytest.raises(UserError, match="measured before the timing protocol had warmup_rounds.*rebuild"):
        load_latency_table(LUTConfig(path=str(old), resolution=RESOLUTION), _space(fusion="aspp"))
