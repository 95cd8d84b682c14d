"""The ``trt`` backend.

Without TensorRT (every machine of this project so far) only the refusal is tested: asking for
it is a one-line UserError naming what to install, from the API and from ``latbench build-lut``
(exit status 2), never a fallback. The tests marked ``trt`` build real engines and skip cleanly
where TensorRT or a CUDA GPU is missing; they have never run in this project.
"""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch
from click.testing import CliRunner

from latbench.errors import UserError
from latbench.timing import TimingConfig, get_backend, measure

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = torch.cuda.is_available()
needs_trt = pytest.mark.skipif(not (HAVE_TRT and HAVE_GPU), reason="needs TensorRT and a CUDA GPU")

QUICK = TimingConfig(warmup_s=0.05, min_samples=5, min_time_s=0.0, max_time_s=0.2, max_noise=0.5)


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_one_line_with_install_hint(tmp_path):
    with pytest.raises(UserError) as info:
        get_backend("trt", device="cuda:0", precision="fp16", cache_dir=tmp_path)
    msg = info.value.message
    assert "\n" not in msg and "pip install" in msg and "TensorRT" in msg


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_build_lut_backend_trt_without_tensorrt_exits_2_with_one_line(tmp_path):
    from latbench.cli import cli

    args = ["build-lut", "--gpu", "cpu", "--device", "cpu", "--backend", "trt", "--space", "toy_space:ToySpace",
            "--resolution", "16x32", "--output", str(tmp_path / "t.parquet"), "--no-progress"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install" in lines[0], r.output
    assert not (tmp_path / "t.parquet").exists()


# --- real engines (TensorRT + GPU) ---------------------------------------------------------------

def test_timing_cache_key_leaves_out_the_network_and_keeps_the_rest():
    """Without TensorRT: the shared timing cache is keyed like an engine minus its network."""
    from latbench.backends.trt import BuilderSettings, timing_cache_key

    gpu = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}
    k = timing_cache_key("10.9.0", gpu, "fp32", BuilderSettings())
    assert k == timing_cache_key("10.9.0", dict(gpu), "fp32", BuilderSettings())
    assert len({k, timing_cache_key("10.9.0", gpu, "fp16", BuilderSettings()),
                timing_cache_key("10.9.0", gpu, "fp32", BuilderSettings(tf32=True)),
                timing_cache_key("10.9.0", gpu, "fp32", BuilderSettings(optimization_level=5)),
                timing_cache_key("10.13.0", gpu, "fp32", BuilderSettings()),
                timing_cache_key("10.9.0", {**gpu, "gpu": "NVIDIA H100"}, "fp32", BuilderSettings())}) == 6
    assert BuilderSettings().timing_cache is True and BuilderSettings().tf32 is False


# fp32 is strict (TF32 tactics off) and holds 1e-3 against PyTorch on the CPU; tf32 engines round
# their products' inputs to 10-bit mantissas (~3e-4 relative per product, more over long sums).
@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("tf32", 1e-2), ("fp16", 2e-2)])
@pytest.mark.parametrize("op,shape,stride", [("sep_conv_3x3", (1, 16, 33, 65), 2), ("gpool_5x5", (1, 48, 17, 33), 1),
                                             ("dil_sep_conv_3x3_d8", (1, 32, 17, 33), 1)])
def test_engine_outputs_match_pytorch_and_time(tmp_path, op, shape, stride, precision, tol):
    from nas.ops import build_op

    torch.manual_seed(0)
    m = build_op(op, shape[1], shape[1], stride).eval()
    x = torch.randn(shape)
    b = get_backend("trt", device="cuda:0", precision=precision, cache_dir=tmp_path)
    p = b.prepare(m, [x], QUICK)
    try:
        p.time(p.granularity)
        got = p.outputs()[0].float().cpu()
        res = measure(p, config=QUICK)
    finally:
        p.close()
    ref = m(x).detach()
    assert (got - ref).abs().max() / ref.abs().max() < tol
    assert res.ok and res.median_us > 0 and res.extra["engine_cached"] is False
    assert res.extra["calls_per_graph"] >= 1 and res.extra["onnx_precision"] == precision
    # the second prepare finds the engine on disk
    p2 = b.prepare(m, [x], QUICK)
    try:
        assert p2.info["engine_cached"] is True
    finally:
        p2.close()
    # the first build left the shared timing cache; the mode is recorded
    assert b.timing_cache_path().is_file() and b.timing_cache_path().stat().st_size > 0
    assert b.describe()["precision_mode"]["trt_builder_tf32"] is (precision == "tf32")


@pytest.mark.trt
@needs_trt
def test_engines_share_one_timing_cache(tmp_path):
    from nas.ops import build_op

    b = get_backend("trt", device="cuda:0", precision="fp32", cache_dir=tmp_path)
    tc = b.timing_cache_path()
    assert not tc.exists()
    sizes = []
    for w in (33, 35):  # two networks (two engines) with layers of the same kinds
        m = build_op("conv_3x3", 16, 16, 1).eval()
        p = b.prepare(m, [torch.randn(1, 16, 17, w)], QUICK)
        try:
            assert p.info["engine_cached"] is False
            sizes.append(tc.stat().st_size)
        finally:
            p.close()
    assert sizes[0] > 0 and sizes[1] >= sizes[0]  # merged, never replaced by a smaller one
    assert b.describe()["timing_cache"] == str(tc)


@pytest.mark.trt
@needs_trt
def test_whole_network_engine_matches_pytorch(tmp_path):
    from nas.space import LGCNetSpace

    space = LGCNetSpace()
    torch.manual_seed(0)
    net = space.build_architecture(space.sample_architecture(random.Random(0))).eval()
    x = torch.randn(1, 3, 129, 257)
    b = get_backend("trt", device="cuda:0", precision="fp32", cache_dir=tmp_path)
    d = b.describe()
    assert d["tensorrt"] and d["builder"]["strongly_typed"] is True
    p = b.prepare(net, [x], QUICK)
    try:
        p.time(p.granularity)
        got = p.outputs()[0].float().cpu()
    finally:
        p.close()
    ref = net(x).detach()
    assert (got - ref).abs().max() / ref.abs().max() < 1e-3

