"""nas fps: cost counting, BN folding of the whole network, the report file, bad input, GPU backends."""

from __future__ import annotations

import json
import random

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from latbench.build.builder import build_lut
from latbench.errors import UserError
from latbench.timing import TimingConfig
from nas.cli import cli
from nas.config import SpaceConfig
from nas.fps import FpsRequest, append_records, count_cost, genotype_hash, measure_fps, read_report, report_path
from nas.genotype import Architecture, Genotype
from nas.network import LGCNet, inference_network
from nas.space import LGCNetSpace

HW = (33, 65)
FAST = ["--warmup", "0", "--min-time", "0", "--max-time", "0.02", "--threads", "1"]


@pytest.fixture
def genotype_path(tmp_path):
    cfg = SpaceConfig(num_classes=4)
    arch = Architecture.from_dict(LGCNetSpace(cfg).sample_architecture(random.Random(0)))
    return Genotype(arch, cfg, {"name": "rand0"}).save(tmp_path / "genotype.json")


def _fast() -> TimingConfig:
    return TimingConfig(warmup_s=0.0, min_samples=3, min_time_s=0.0, max_time_s=0.02, max_noise=0.5,
                        target_sample_s=1e-4, threads=1)


def test_cost_counter_on_a_known_net():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),                          # 8·10·10 outputs × 3·9   = 21600
        nn.Conv2d(8, 8, 3, padding=1, groups=8),                # 8·10·10 × 1·9           = 7200
        nn.Conv2d(8, 4, 1, stride=2),                           # 4·5·5 × 8               = 800
        nn.ConvTranspose2d(4, 6, 2, stride=2),                  # 4·5·5 inputs × 6·4      = 2400
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),  # 6·5                    = 30
    )
    cost = count_cost(net, (1, 3, 10, 10))
    assert cost.macs == 21600 + 7200 + 800 + 2400 + 30
    assert cost.flops == 2 * cost.macs
    assert cost.params == sum(p.numel() for p in net.parameters())
    assert count_cost(net, (2, 3, 10, 10)).macs == 2 * cost.macs  # counts the batch it is given


@pytest.mark.parametrize("seed", [0, 1])
def test_cost_counter_agrees_with_torch_flop_counter_on_derived_networks(seed):
    """torch.utils.flop_counter counts aten convolutions independently (2·MACs, no bias)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = SpaceConfig(num_classes=4)
    arch = Architecture.from_dict(LGCNetSpace(cfg).sample_architecture(random.Random(seed)))
    net = inference_network(cfg, arch)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.zeros(1, 3, *HW))
    assert fc.get_total_flops() > 0
    assert count_cost(net, (1, 3, *HW)).flops == fc.get_total_flops()


def test_bn_folding_of_the_whole_derived_network_is_exact():
    """With non-trivial BN statistics everywhere, the folded network equals the unfolded one."""
    torch.manual_seed(0)
    cfg = SpaceConfig(num_classes=5)
    arch = Architecture.from_dict(LGCNetSpace(cfg).sample_architecture(random.Random(7)))
    net = LGCNet(cfg, arch)
    n_bn = 0
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n_bn += 1
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.weight is not None:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    assert n_bn > 20
    net.eval()
    x = torch.randn(1, 3, *HW)
    with torch.no_grad():
        ref = net(x)
        folded = inference_network(cfg, arch, net.state_dict())
        out = folded(x)
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert remaining < n_bn  # folding really happened
    assert torch.allclose(ref, out, atol=1e-5, rtol=1e-5), (ref - out).abs().max()


def test_report_file_appends_and_keeps_provenance(tmp_path, genotype_path):
    req = FpsRequest(genotype_path=str(genotype_path), resolutions=(HW,), backends=("cpu",), device="cpu",
                     timing=_fast())
    name, recs = measure_fps(req)
    assert name == "cpu" and len(recs) == 1
    out = append_records(report_path(tmp_path / "reports", name), recs)
    _, recs2 = measure_fps(FpsRequest(**{**req.__dict__, "resolutions": (HW, (17, 33))}))
    append_records(out, recs2)
    d = read_report(out)
    assert d["format"] == "nas-fps-report" and len(d["records"]) == 3
    r = d["records"][0]
    for key in ("device", "versions", "backend", "precision", "protocol", "genotype", "resolution", "batch", "date",
                "latency_ms", "p10_ms", "p90_ms", "fps", "host_bound", "measurement", "network", "backend_info"):
        assert key in r, key
    assert r["genotype"]["sha"] == genotype_hash(Genotype.load(genotype_path))
    assert r["device"]["type"] == "cpu" and r["versions"]["torch"] == torch.__version__
    assert r["protocol"]["max_time_s"] == 0.02 and r["backend"] == "cpu"
    assert r["p10_ms"] <= r["latency_ms"] <= r["p90_ms"]
    assert r["fps"] == pytest.approx(1e3 / r["latency_ms"])
    assert r["network"]["params"] > 0 and r["network"]["flops"] == 2 * r["network"]["macs"]
    assert [x["resolution"] for x in d["records"]] == ["33x65", "33x65", "17x33"]
    # a corrupt report is refused, not overwritten
    out.write_text("{broken")
    with pytest.raises(UserError, match="cannot read"):
        append_records(out, recs)
    assert out.read_text() == "{broken"


def test_cli_json_with_lut_and_width_mult(tmp_path, genotype_path):
    cfg = Genotype.load(genotype_path).config
    lut = tmp_path / "lgc.parquet"
    build_lut(LGCNetSpace(cfg), [HW], "cpu", _fast(), lut, "cpu", progress=False)
    r = CliRunner().invoke(cli, ["fps", "--arch", str(genotype_path), "--device", "cpu", "--resolution", "33x65",
                                 "--lut", str(lut), "--reports", str(tmp_path / "rep"), "--json", *FAST])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    rec = d["records"][0]
    assert rec["lut"]["sum_us"] > 0 and rec["lut"]["backend"] == "cpu"
    assert (tmp_path / "rep" / "fps" / "cpu.json").exists()
    # the width multiplier changes the network (and a LUT of width 1 no longer describes it)
    r = CliRunner().invoke(cli, ["fps", "--arch", str(genotype_path), "--device", "cpu", "--resolution", "33x65",
                                 "--width-mult", "0.5", "--no-save", "--json", *FAST])
    assert r.exit_code == 0, r.output
    half = json.loads(r.stdout)["records"][0]
    assert half["network"]["width_mult"] == 0.5 and half["network"]["params"] < rec["network"]["params"]
    assert half["genotype"]["sha"] != rec["genotype"]["sha"]
    r = CliRunner().invoke(cli, ["fps", "--arch", str(genotype_path), "--device", "cpu", "--resolution", "33x65",
                                 "--width-mult", "0.5", "--lut", str(lut), "--no-save", *FAST])
    assert r.exit_code == 2 and "width_mult" in r.output


def _bad_genotype(tmp_path, genotype_path):
    d = json.loads(genotype_path.read_text())
    d["space_version"] = 99
    p = tmp_path / "v99.json"
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("version", "version"),
    ("backend", "unknown timing backend"),
    ("cuda", "cuda"),
    ("lut_resolution", "no rows at 17x33"),
    ("gpu_label", "does not describe"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, genotype_path, case, message):
    args = ["fps", "--arch", str(genotype_path), "--device", "cpu", "--resolution", "33x65", "--no-save", *FAST]
    if case == "missing":
        args[2] = str(tmp_path / "nope.json")
    elif case == "version":
        args[2] = str(_bad_genotype(tmp_path, genotype_path))
    elif case == "backend":
        args += ["--backend", "cpu,warp-drive"]
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        args[4] = "cuda"
    elif case == "lut_resolution":
        lut = tmp_path / "l.parquet"
        build_lut(LGCNetSpace(Genotype.load(genotype_path).config), [HW], "cpu", _fast(), lut, "cpu", progress=False)
        args[6] = "17x33"
        args += ["--lut", str(lut)]
    elif case == "gpu_label":
        args += ["--gpu", "h100"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["eager", "cudagraph"])
def test_fps_on_the_gpu(tmp_path, genotype_path, backend):
    req = FpsRequest(genotype_path=str(genotype_path), resolutions=((257, 513),), backends=(backend,),
                     device="cuda:0", timing=TimingConfig(warmup_s=0.1, min_time_s=0.1, max_time_s=1.0))
    name, recs = measure_fps(req)
    r = recs[0]
    assert r["status"] == "ok", r["error"]
    assert r["device"]["type"] == "cuda" and r["backend"] == backend
    assert r["host_bound"] in (True, False) and r["enqueue_us"] is not None
    assert r["p10_ms"] <= r["latency_ms"] <= r["p90_ms"] and r["fps"] > 0
    out = append_records(report_path(tmp_path, name), recs)
    assert read_report(out)["records"][0]["device"]["name"] == torch.cuda.get_device_name(0)


def test_the_model_is_shown_beside_what_it_describes_and_compared_like_with_like(tmp_path):
    """A LUT model fitted to the fastest-half statistic is compared with the measured p10; beside a
    measurement of another backend or device it predicts nothing and says why; a model fitted on
    another fusion head is not used (the raw sum stands, with a notice)."""
    from latbench.lut.table import LUT, read_lut, write_lut
    from latbench.model.latency_model import LatencyModel, ModelScope, with_model
    from latbench.timing import Measurement
    from nas.fps import lut_prediction, lut_predictor, prediction_for
    from search_support import RESOLUTION, build_tiny_lut, tiny_space

    base = read_lut(build_tiny_lut(tmp_path / "tiny.parquet"))
    cfg = tiny_space()
    geno = Genotype(Architecture.from_dict(LGCNetSpace(cfg).sample_architecture(random.Random(0))), cfg, {"name": "t"})
    gpath = geno.save(tmp_path / "g.json")
    scope = ModelScope.of_lut(base.meta, *RESOLUTION, 1)
    model = LatencyModel(scope, 0.0, 100.0, default_slope=0.8,
                         provenance={"space": base.meta["space"], "statistic": "fastest-half"})
    path = tmp_path / "model.parquet"
    write_lut(LUT(base.df, with_model(base.meta, model)), path)
    _, recs = measure_fps(FpsRequest(str(gpath), (RESOLUTION,), ("cpu",), "cpu", timing=_fast(), lut_path=str(path)))
    rec = recs[0]
    shown = rec["lut"]
    rows = LGCNetSpace(cfg).architecture_rows(geno.arch)
    assert shown["model_us"] == pytest.approx(model.predict_rows(lut_predictor(read_lut(path), geno, RESOLUTION, 1).rows(rows)))
    assert shown["model_statistic"] == "fastest-half" and shown["model_compared_with"] == "p10_us"
    assert shown["model_error_pct"] == pytest.approx(100 * (shown["model_us"] - rec["p10_ms"] * 1e3) / (rec["p10_ms"] * 1e3))
    # another backend, another device: no model prediction for that measurement, and why
    lut = read_lut(path)
    pr = lut_predictor(lut, geno, RESOLUTION, 1)
    pred = lut_prediction(pr, str(path), geno)
    m = Measurement(median_us=900.0, p10_us=800.0, samples=5)
    ok = prediction_for(pred, pr, "cpu", rec["device"], geno, m)
    assert ok["model_us"] == pred["model_us"] and ok["model_error_pct"] == pytest.approx(100 * (pred["model_us"] - 800) / 800)
    other = prediction_for(pred, pr, "ort", rec["device"], geno, m)
    assert other["model_us"] is None and "backend cpu" in other["model_notice"] and other["sum_us"] == pred["sum_us"]
    elsewhere = prediction_for(pred, pr, "cpu", {**rec["device"], "name": "Another CPU"}, geno, m)
    assert elsewhere["model_us"] is None and "'Another CPU'" in elsewhere["model_notice"]
    # an ASPP network: the fusion-cell model does not price it; the raw sum does, with a notice
    aspp = Genotype(Architecture.from_dict(LGCNetSpace(tiny_space(fusion="aspp")).sample_architecture(random.Random(1))),
                    tiny_space(fusion="aspp"), {"name": "a"})
    pa = lut_predictor(lut, aspp, RESOLUTION, 1)
    got = lut_prediction(pa, str(path), aspp)
    assert got["model_us"] is None and "fusion=dcfc networks, not fusion=aspp" in got["notice"]
    with pytest.raises(UserError, match="fusion=dcfc networks, not fusion=aspp"):
        lut_predictor(lut, aspp, RESOLUTION, 1, latency_model="require")
