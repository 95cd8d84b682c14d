"""CUDA timing backends on a real GPU (skipped without one; see conftest.py)."""

from __future__ import annotations

import pytest
import torch

from latbench.timing import TimingConfig, get_backend, measure

pytestmark = pytest.mark.gpu

CFG = TimingConfig(warmup_s=0.1, min_samples=10, min_time_s=0.1, max_time_s=1.0, max_noise=0.01)


def _conv():
    return torch.nn.Conv2d(64, 64, 3, padding=1), [torch.randn(1, 64, 128, 256)]


def test_eager_and_cudagraph_agree_on_a_real_conv():
    conv, x = _conv()
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        eager = measure(conv, x, CFG, backend=get_backend("eager", device="cuda:0"))
        graph = measure(conv, x, CFG, backend=get_backend("cudagraph", device="cuda:0"))
        assert torch.backends.cudnn.benchmark is False  # the caller's setting is back
    finally:
        torch.backends.cudnn.benchmark = before
    assert eager.status == "ok" and graph.status == "ok", (eager.error, graph.error)
    assert eager.samples >= 10 and graph.samples >= 10
    # a conv of this size is GPU-bound: the two clocks see the same kernels (generous bound)
    assert 0.5 < graph.median_us / eager.median_us < 1.5
    assert eager.enqueue_us is not None and eager.host_bound is not None
    assert eager.extra["cudnn_benchmark"] is True and graph.extra["cudnn_benchmark"] is True  # timed with it on


def test_cudagraph_captures_several_calls_for_a_microsecond_op():
    op, x = torch.nn.ReLU(), [torch.randn(1, 8, 16, 16)]
    m = measure(op, x, CFG, backend=get_backend("cudagraph", device="cuda:0"))
    assert m.status == "ok", m.error
    assert m.extra["calls_per_graph"] > 1
    assert m.calls_per_sample % m.extra["calls_per_graph"] == 0


def test_nvml_clock_is_recorded():
    pytest.importorskip("pynvml")
    conv, x = _conv()
    m = measure(conv, x, CFG, backend=get_backend("cudagraph", device="cuda:0"))
    assert m.sm_clock_mhz is not None and m.sm_clock_mhz > 100
    assert isinstance(m.throttled, bool) and "throttle_retries" in m.extra


@pytest.mark.parametrize("backend", ["eager", "cudagraph"])
def test_cold_cache_times_single_calls_after_a_flush(backend):
    op, x = torch.nn.ReLU(), [torch.randn(1, 64, 64, 64)]
    cold = TimingConfig(**{**CFG.to_dict(), "cold_cache": True})
    m = measure(op, x, cold, backend=get_backend(backend, device="cuda:0"))
    assert m.status == "ok", m.error
    assert m.calls_per_sample == 1 and m.extra["cold_cache"] is True
    if backend == "cudagraph":
        assert m.extra["calls_per_graph"] == 1
    # cold vs warm on a GPU-bound conv: a µs-scale ReLU timed eagerly is host-bound when warm (back
    # to back launches) while its cold samples hide the launch behind the flush, so its ratio says
    # nothing about the cache
    conv, cx = _conv()
    warm = measure(conv, cx, CFG, backend=get_backend(backend, device="cuda:0"))
    cold_conv = measure(conv, cx, cold, backend=get_backend(backend, device="cuda:0"))
    assert warm.ok and cold_conv.ok and warm.host_bound is False, (warm.error, cold_conv.error, warm.enqueue_us)
    assert cold_conv.median_us >= 0.8 * warm.median_us  # a flushed L2 is never much faster


def test_the_start_lead_keeps_the_host_launch_out_of_a_sample():
    """One graph replay per sample: without the spin before the start event the sample also counts
    the host's replay launch; with it, that launch happens while the GPU spins."""
    from latbench.timing.cuda import CudaGraphPrepared

    cfg = TimingConfig(**{**CFG.to_dict(), "target_sample_s": 1e-7})  # one call per graph
    p = get_backend("cudagraph", device="cuda:0").prepare(torch.nn.ReLU(), [torch.randn(1, 8, 16, 16)], cfg)
    try:
        assert isinstance(p, CudaGraphPrepared) and p.granularity == 1
        assert p.info["start_lead"].startswith("torch.cuda._sleep") and p.info["sleep_cycles_per_us"] > 100

        def median_single_replay(n: int = 200) -> float:
            return sorted(p.time(1) for _ in range(n))[n // 2]

        median_single_replay(20)
        with_lead = median_single_replay()
        assert 50 <= p.info["start_lead_us"] <= 1000
        cycles, p._lead.cycles_per_s = p._lead.cycles_per_s, None  # the same graph without the lead
        without = median_single_replay()
        p._lead.cycles_per_s = cycles
        assert with_lead < without, (with_lead * 1e6, without * 1e6)
    finally:
        p.close()


def test_fp16_precision_converts_module_and_inputs():
    conv, x = _conv()
    m = measure(conv, x, CFG, backend=get_backend("cudagraph", device="cuda:0", precision="fp16"))
    assert m.status == "ok", m.error


def test_out_of_memory_is_a_failed_measurement_not_a_crash():
    class Huge(torch.nn.Module):
        def forward(self, x):
            return torch.empty(1 << 45, device=x.device, dtype=torch.uint8)

    m = measure(Huge(), [torch.randn(4)], CFG, backend=get_backend("eager", device="cuda:0"))
    assert m.status == "failed" and "out of memory" in m.error


def test_build_on_the_gpu(tmp_path):
    from toy_space import ToySpace

    from latbench.build.builder import build_lut

    cfg = TimingConfig(warmup_s=0.05, min_samples=5, min_time_s=0.05, max_time_s=0.2, max_noise=0.05)
    lut = build_lut(ToySpace(), [(64, 128)], "cudagraph", cfg, tmp_path / "g.parquet", "gpu", device="cuda:0",
                    progress=False)
    assert lut.meta["device"]["type"] == "cuda" and lut.meta["device"]["compute_capability"]
    assert (lut.df.status != "failed").all()
    assert lut.coverage(ToySpace(), 64, 128).complete


# --- fp32 math, grad mode, pass-throughs, provenance (issue 11) ------------------------------------

def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double().cpu() - ref).norm() / ref.norm())


def test_fp32_is_strict_and_tf32_is_tf32_on_the_gpu():
    from latbench.timing.precision import fp32_math

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    ref = a.double() @ b.double()
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    x = torch.randn(1, 256, 64, 64, generator=g)
    conv_ref = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    ac, bc, xc, convc = a.cuda(), b.cuda(), x.cuda(), conv.cuda()
    with fp32_math("fp32"), torch.no_grad():
        strict_mm, strict_conv = _rel_err(ac @ bc, ref), _rel_err(convc(xc), conv_ref)
    with fp32_math("tf32"), torch.no_grad():
        tf32_mm = _rel_err(ac @ bc, ref)
    # strict fp32: ~1e-6 (cuDNN may pick Winograd / FFT algorithms: a little more for the conv)
    assert strict_mm < 1e-5 and strict_conv < 1e-4, (strict_mm, strict_conv)
    assert tf32_mm > 1e-5, tf32_mm  # TF32 products: ~1e-4..1e-3 relative


def test_timing_in_fp32_restores_the_callers_tf32_flags():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = True
        try:
            conv, x = _conv()
            b = get_backend("cudagraph", device="cuda:0", precision="fp32")
            m = measure(conv, x, CFG, backend=b)
            assert m.ok and m.extra["fp32_math"] == "ieee" and m.extra["grad_mode"] == "no_grad"
            assert torch.backends.cudnn.allow_tf32 is True  # the caller's setting is back
            mode = b.describe()["precision_mode"]
            assert mode["fp32_math"] == "ieee" and mode["cudnn_conv_tf32"] is False
            assert get_backend("eager", device="cuda:0", precision="tf32").describe()["precision_mode"]["cudnn_conv_tf32"]
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_cudagraph_refuses_a_passthrough_instead_of_timing_an_empty_graph():
    m = measure(torch.nn.Identity(), [torch.randn(1, 8, 16, 16)], CFG, backend=get_backend("cudagraph", device="cuda:0"))
    assert m.status == "failed" and "pass-through" in m.error


def test_measure_leaves_the_module_on_the_cpu():
    conv, x = _conv()
    m = measure(conv, x, CFG, backend=get_backend("cudagraph", device="cuda:0", precision="fp16"))
    assert m.ok and conv.weight.device.type == "cpu" and conv.weight.dtype == torch.float32


def test_compile_on_the_gpu_compiles_once_and_captures_what_it_compiled():
    from torch._dynamo.utils import counters

    b = get_backend("compile", device="cuda:0", precision="fp32")
    conv, x = _conv()
    p = b.prepare(conv.eval(), x, CFG)
    try:
        assert p.info["compiled_graphs"] >= 1 and p.info["recompiles_after_warmup"] == 0
        assert p.info["compile_grad_mode"] == "no_grad" and p.info["calls_per_graph"] >= 1
        graphs = counters["stats"]["unique_graphs"]
        res = measure(p, config=CFG)
        assert res.ok and counters["stats"]["unique_graphs"] == graphs  # capture and timing compiled nothing
    finally:
        p.close()


def test_a_slow_first_call_does_not_size_the_samples_on_the_gpu():
    # a 2k x 2k conv: cuDNN's benchmark search makes the first call the slowest by far
    conv = torch.nn.Conv2d(64, 64, 7, padding=3)
    m = measure(conv, [torch.randn(1, 64, 512, 512)], CFG, backend=get_backend("eager", device="cuda:0"))
    assert m.ok and m.extra["warmup_rounds"] >= 3
    assert m.extra["warmup_last_call_us"] < 2 * m.median_us


def test_the_search_prices_with_a_table_already_on_the_gpu():
    from nas.search.latency import LatencyTable
    from nas.search.trainer import table_on

    t = LatencyTable(torch.rand(2, 5, 8, dtype=torch.float64), [torch.rand(10, dtype=torch.float64)], 3.0)
    g = table_on(t, torch.device("cuda", 0))
    assert g.cell.is_cuda and g.cell.dtype == torch.float32 and all(f.is_cuda for f in g.fusion)
    assert not t.cell.is_cuda  # the caller's (checkpointed) table stays on the CPU
    z = torch.softmax(torch.randn(2, 5, 8, device="cuda"), -1)
    zf = [torch.softmax(torch.randn(10, device="cuda"), -1)]
    assert torch.allclose(g.lut_sum(z, zf).cpu(), t.lut_sum(z.cpu(), [f.cpu() for f in zf]).float())


def test_ort_cuda_provider_times_device_time_or_refuses_once():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDA provider (onnxruntime-gpu not installed)")
    from latbench.errors import UserError

    try:
        b = get_backend("ort", device="cuda:0", precision="fp32")
    except UserError as exc:  # the provider is listed but cannot start: one clear refusal
        assert "\n" not in exc.message and "CUDAExecutionProvider" in exc.message
        pytest.skip(f"CUDA provider cannot start here: {exc.message}")
    conv, x = _conv()
    m = measure(conv, x, CFG, backend=b)
    assert m.ok and m.extra["run_sync"] is False and b.describe()["precision_mode"]["ort_cuda_use_tf32"] is False
    assert m.host_bound is False  # a GPU-bound conv, runs enqueued back to back
    assert m.extra["cold_cache"] is False and m.extra["start_lead"].startswith("torch.cuda._sleep")
    cold = measure(conv, x, TimingConfig(**{**CFG.to_dict(), "cold_cache": True}), backend=b)
    assert cold.ok and cold.extra["cold_cache"] is True and cold.calls_per_sample == 1  # a flushed L2, one run
