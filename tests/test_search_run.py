"""Real (tiny) searches on CPU: exact resume, the latency term's direction, torchrun + gloo, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nas.cli import cli
from nas.genotype import Genotype
from nas.search.config import OptimConfig
from nas.search.trainer import RunOptions, SearchRun
from search_support import TINY_CLI, build_tiny_lut, tiny_search_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    return build_tiny_lut(tmp_path_factory.mktemp("lut") / "tiny.parquet")


def _run(config, out, **kw):
    return SearchRun(config, RunOptions(out=str(out), device="cpu", progress=False, plots=False,
                                        log=lambda m: None, **kw)).run()


def _steps(out):
    return [json.loads(line) for line in (Path(out) / "steps.jsonl").read_text().splitlines()]


def test_resume_continues_exactly(lut_path, tmp_path):
    cfg = tiny_search_config(lut_path, checkpoint_every=2)
    full = _run(cfg, tmp_path / "full")
    assert full.finished and full.global_step == 8
    part = _run(cfg, tmp_path / "part", stop_after_steps=3)          # interrupted mid-epoch 1
    assert not part.finished and part.global_step == 3 and part.genotype_path is None
    done = _run(cfg, tmp_path / "part", resume=True)
    assert done.finished and done.global_step == 8
    a, b = _steps(tmp_path / "full"), _steps(tmp_path / "part")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [(r["ce"], r["loss"], r["latency_us"], r["tau"]) for r in a] == \
        [(r["ce"], r["loss"], r["latency_us"], r["tau"]) for r in b]
    ck_a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    ck_b = torch.load(tmp_path / "part/checkpoints/last.pt", weights_only=True)
    for part_name in ("arch", "ggm", "model"):
        for k, v in ck_a[part_name].items():
            assert torch.equal(v, ck_b[part_name][k]), f"{part_name}.{k} differs after resume"
    assert json.loads((tmp_path / "full/genotype.json").read_text())["cells"] == \
        json.loads((tmp_path / "part/genotype.json").read_text())["cells"]
    # a second resume of a finished run is a no-op that rewrites the same genotype
    again = _run(cfg, tmp_path / "part", resume=True)
    assert again.finished and again.global_step == 8


def test_existing_run_folder_needs_resume(lut_path, tmp_path):
    from latbench.errors import UserError

    cfg = tiny_search_config(lut_path, epochs=1)
    _run(cfg, tmp_path / "r")
    with pytest.raises(UserError, match="pass --resume"):
        _run(cfg, tmp_path / "r")
    with pytest.raises(UserError, match="no checkpoint"):
        _run(cfg, tmp_path / "empty", resume=True)


def test_larger_beta_finds_a_faster_architecture(lut_path, tmp_path):
    """Same data, seed, steps; only β differs. The LUT-predicted latency of the derived genotype drops."""
    optim = OptimConfig(lr_a=0.05)
    lat = {}
    for beta in (0.0, 10.0):
        res = _run(tiny_search_config(lut_path, beta=beta, optim=optim), tmp_path / f"b{beta}")
        geno = Genotype.load(res.genotype_path)
        lat[beta] = geno.meta["expected_latency"]["lut_sum_us"]
        assert geno.meta["search"]["beta"] == beta
    assert lat[10.0] < lat[0.0]
    # and the expected latency under softmax(α) at the end is lower with β = 10 than with β = 0
    # (comparing runs, not epochs: within one run λ's annealing and the Gumbel noise make the
    # epoch-to-epoch change of a 2-epoch search too noisy to pin)
    def last(beta):
        return json.loads((tmp_path / f"b{beta}/log.jsonl").read_text().splitlines()[-1])
    assert last(10.0)["expected_latency_us"] < last(0.0)["expected_latency_us"]


def test_two_process_torchrun_search_on_cpu(lut_path, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nas.cli", "search", "--lut", str(lut_path), "--dataset", "synthetic", "--epochs", "1",
           "--batch-size", "4", "--length", "8", "--out", str(out), "--workers", "0", "--device", "cpu",
           "--no-plots", *TINY_CLI]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    geno = Genotype.load(out / "genotype.json")
    assert len(geno.arch.cells) == 4
    steps = _steps(out)
    assert [s["step"] for s in steps] == [1, 2]  # 8 items / global batch 4, each process 2 per step
    assert "genotype:" in r.stdout and r.stdout.count("genotype:") == 1  # only rank 0 reports


def _invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_search_writes_genotype_and_plots_and_derive_agrees(lut_path, tmp_path):
    out = tmp_path / "cli"
    r = _invoke(["search", "--lut", str(lut_path), "--dataset", "synthetic", "--epochs", "2", "--batch-size", "4",
                 "--length", "8", "--out", str(out), "--workers", "0", "--seed", "3", "--beta", "0.01"])
    assert r.exit_code == 0, r.output
    geno = Genotype.load(out / "genotype.json")  # validates against the registry and config
    meta = geno.meta
    assert geno.config.num_cells == 4 and geno.config.init_channels == 4   # taken from the LUT
    assert meta["lut"]["backend"] == "cpu" and len(meta["lut"]["sha256"]) == 64
    assert meta["lut"]["name"] == "cpu-test" and meta["lut"]["device"]
    assert meta["expected_latency"]["lut_sum_us"] > 0 and meta["expected_latency"]["resolution"] == "33x65"
    assert meta["search"]["beta"] == 0.01 and meta["search"]["seed"] == 3 and meta["search"]["ggm"]["mode"] == "gcn"
    for name in ("alpha_cells", "alpha_fusion", "curves", "architecture", "fusion_cell"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert len(log[0]["alpha_entropy"]) == 4 and log[0]["images_per_s"] > 0
    assert log[-1]["temperature"] == pytest.approx(0.03)
    # nas derive re-derives the same genotype from the checkpoint, without the LUT
    r = _invoke(["derive", str(out / "checkpoints" / "last.pt"), "--out", str(tmp_path / "g2.json")])
    assert r.exit_code == 0, r.output
    g2 = Genotype.load(tmp_path / "g2.json")
    assert g2.arch == geno.arch
    assert g2.meta["expected_latency"]["lut_sum_us"] == meta["expected_latency"]["lut_sum_us"]


@pytest.mark.parametrize("ablation", [
    ["--cells", "shared"],
    ["--between", "fc"],
    ["--graph", "operation"],
])
def test_cli_ablations_run(lut_path, tmp_path, ablation):
    out = tmp_path / "abl"
    r = _invoke(["search", "--lut", str(lut_path), "--dataset", "synthetic", "--epochs", "1", "--batch-size", "4",
                 "--length", "4", "--out", str(out), "--workers", "0", "--no-plots", *ablation])
    assert r.exit_code == 0, r.output
    search = Genotype.load(out / "genotype.json").meta["search"]
    if "shared" in ablation:
        assert search["arch"]["cells"] == "shared" and search["ggm"]["mode"] == "none"
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    if "fc" in ablation:
        assert not any("gcn_w" in k for k in ck["ggm"]) and any("phi1" in k for k in ck["ggm"])
    if "operation" in ablation:
        assert not any(".w1." in k for k in ck["ggm"]) and any("gcn_w" in k for k in ck["ggm"])


def test_cli_fusion_ablations_from_one_lut(lut_path, tmp_path):
    """The fusion-cell LUT also prices the Table X ablations (its build times their rows too), and a
    LUT built for ASPP prices the fusion cell; other shapes still need their own LUT."""
    r = _invoke(["search", "--lut", str(lut_path), "--fusion", "ppm", "--dataset", "synthetic", "--epochs", "1",
                 "--batch-size", "4", "--length", "4", "--out", str(tmp_path / "b"), "--workers", "0", "--no-plots"])
    assert r.exit_code == 0, r.output
    geno = Genotype.load(tmp_path / "b" / "genotype.json")
    assert geno.config.fusion == "ppm" and geno.arch.fusion == ()
    assert geno.meta["expected_latency"]["lut_sum_us"] > 0
    aspp = build_tiny_lut(tmp_path / "aspp.parquet", fusion="aspp")
    r = _invoke(["search", "--lut", str(aspp), "--fusion", "dcfc", "--dataset", "synthetic", "--epochs", "1",
                 "--batch-size", "4", "--length", "4", "--out", str(tmp_path / "a"), "--workers", "0", "--no-plots"])
    assert r.exit_code == 0, r.output
    assert len(Genotype.load(tmp_path / "a" / "genotype.json").arch.fusion) == 13
    r = _invoke(["search", "--lut", str(lut_path), "--init-channels", "8", "--dataset", "synthetic",
                 "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "init_channels: LUT 4, search 8" in r.output


def test_supernet_searches_at_init_channels_and_the_genotype_has_the_luts_width(tmp_path):
    """A LUT of the widened (deployed) network prices a search whose supernet is at the search width;
    the genotype records the LUT's width, so the network trained and timed is the one the LUT priced."""
    from nas.search.trainer import SearchModel

    wide = build_tiny_lut(tmp_path / "wide.parquet", width_mult=2.0)
    r = _invoke(["search", "--lut", str(wide), "--dataset", "synthetic", "--epochs", "1", "--batch-size", "4",
                 "--length", "4", "--out", str(tmp_path / "w"), "--workers", "0", "--no-plots"])
    assert r.exit_code == 0, r.output
    geno = Genotype.load(tmp_path / "w" / "genotype.json")
    assert geno.config.width_mult == 2.0 and geno.config.channels == 8
    ck = torch.load(tmp_path / "w" / "checkpoints" / "last.pt", weights_only=True)
    stem = ck["model"]["stem.0.weight"]
    assert stem.shape[0] == 2 * geno.config.init_channels          # the supernet: width 1, 4 channels
    model = SearchModel(tiny_search_config(wide, space=geno.config), torch.Generator().manual_seed(0))
    assert model.supernet.stem[0].out_channels == 2 * geno.config.init_channels


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_bad_input_is_one_line_exit_2(lut_path, tmp_path):
    from latbench.lut.table import read_lut, write_lut

    base = ["search", "--dataset", "synthetic", "--out", str(tmp_path / "x")]
    _one_line_error(_invoke(base + ["--lut", str(tmp_path / "missing.parquet")]), "does not exist")
    _one_line_error(_invoke(base), "--lut PATH is required")
    _one_line_error(_invoke(base + ["--lut", str(lut_path), "--init-channels", "8"]),
                    "init_channels: LUT 4, search 8")
    _one_line_error(_invoke(base + ["--lut", str(lut_path), "--resolution", "33by65"]), "malformed resolution")
    _one_line_error(_invoke(base + ["--lut", str(lut_path), "--resolution", "65x129"]),
                    "no rows at 65x129", "33x65")
    _one_line_error(_invoke(["search", "--lut", str(lut_path), "--dataset", "imagenet"]), "unknown data set 'imagenet'")
    _one_line_error(_invoke(["search", "--lut", str(lut_path), "--dataset", "cityscapes"]), "needs --data-root")
    _one_line_error(_invoke(["search", "--lut", str(lut_path), "--dataset", "camvid", "--data-root",
                             str(tmp_path / "nowhere")]), "does not exist")
    _one_line_error(_invoke(base + ["--lut", str(lut_path), "--cells", "shared", "--between", "gcn"]),
                    "--between none")
    lut = read_lut(lut_path)
    lut.df = lut.df[~lut.df["position"].str.startswith("cell3.")].reset_index(drop=True)
    holes = tmp_path / "holes.parquet"
    write_lut(lut, holes)
    _one_line_error(_invoke(base + ["--lut", str(holes)]), "cell3.e0/max_pool_3x3@33x65", "more)")
    _one_line_error(_invoke(["search", "--out", str(tmp_path / "none"), "--resume"]), "no checkpoint")
    _one_line_error(_invoke(["derive", str(tmp_path / "nope.pt")]), "does not exist")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    _one_line_error(_invoke(["derive", str(tmp_path / "junk.pt")]), "cannot read checkpoint")


def test_cli_resume_refuses_changed_options(lut_path, tmp_path):
    out = tmp_path / "r"
    r = _invoke(["search", "--lut", str(lut_path), "--dataset", "synthetic", "--epochs", "1", "--batch-size", "4",
                 "--length", "8", "--out", str(out), "--workers", "0", "--no-plots", "--stop-after-steps", "1"])
    assert r.exit_code == 0 and "continue with" in r.output
    _one_line_error(_invoke(["search", "--out", str(out), "--resume", "--beta", "0.1"]),
                    "has --beta 0.005; drop --beta 0.1")
    _one_line_error(_invoke(["search", "--out", str(out), "--resume", "--resolution", "65x129"]), "has --resolution 33x65")
    # repeating the saved values (as a script that always passes the same options does) is fine
    r = _invoke(["search", "--out", str(out), "--resume", "--workers", "0", "--no-plots", "--lut", str(lut_path),
                 "--dataset", "synthetic", "--epochs", "1", "--batch-size", "4", "--beta", "0.005",
                 "--resolution", "33x65", "--length", "8"])
    assert r.exit_code == 0, r.output
    assert (out / "genotype.json").exists()


def test_a_search_priced_by_a_latency_model_resumes_exactly_and_says_which_model(lut_path, tmp_path):
    from latbench.lut.table import LUT, read_lut, write_lut
    from latbench.model.latency_model import LatencyModel, ModelScope, with_model
    from nas.search.config import LUTConfig
    from search_support import RESOLUTION

    lut = read_lut(lut_path)
    model = LatencyModel(ModelScope.of_lut(lut.meta, *RESOLUTION, 1), overhead_us=2.0, constant_us=300.0,
                         group_by="op", slopes={"conv_3x3": 1.4}, per_row={"sep_conv_3x3": 3.0}, default_slope=1.1)
    path = tmp_path / "model.parquet"
    write_lut(LUT(lut.df, with_model(lut.meta, model)), path)
    import dataclasses

    cfg = tiny_search_config(path, checkpoint_every=2)
    cfg = dataclasses.replace(cfg, lut=LUTConfig(path=str(path), resolution=RESOLUTION, latency_scope="network"))
    full = _run(cfg, tmp_path / "full")
    _run(cfg, tmp_path / "part", stop_after_steps=3)
    done = _run(cfg, tmp_path / "part", resume=True)
    assert full.finished and done.finished
    a, b = _steps(tmp_path / "full"), _steps(tmp_path / "part")
    assert [(r["ce"], r["loss"], r["latency_us"]) for r in a] == [(r["ce"], r["loss"], r["latency_us"]) for r in b]
    geno = json.loads((tmp_path / "part/genotype.json").read_text())
    assert geno["meta"]["lut"]["latency_model"]["id"] == model.model_id
    assert geno["meta"]["lut"]["latency_scope"] == "network"
    # the genotype's predicted latency is the model's, not the raw sum
    from latbench.model.predictor import Predictor
    from nas.space import LGCNetSpace

    rows = LGCNetSpace(cfg.space).architecture_rows({"cells": geno["cells"], "fusion": geno["fusion"]})
    want = Predictor.for_lut(read_lut(path), *RESOLUTION).model_us(rows)
    assert geno["meta"]["expected_latency"]["latency_us"] == pytest.approx(want, rel=1e-6)
