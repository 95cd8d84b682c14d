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
    eager = measure(conv, x, CFG, backend=get_backend("eager", device="cuda:0"))
    graph = measure(conv, x, CFG, backend=get_backend("cudagraph", device="cuda:0"))
    assert eager.status == "ok" and graph.status == "ok", (eager.error, graph.error)
    assert eager.samples >= 10 and graph.samples >= 10
    # a conv of this size is GPU-bound: the two clocks see the same kernels (generous bound)
    assert 0.5 < graph.median_us / eager.median_us < 1.5
    assert eager.enqueue_us is not None and eager.host_bound is not None
    assert torch.backends.cudnn.benchmark is True


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
    warm = measure(op, x, CFG, backend=get_backend(backend, device="cuda:0"))
    assert m.median_us >= 0.8 * warm.median_us  # a flushed L2 is never much faster


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

    from latbench.build import build_lut

    cfg = TimingConfig(warmup_s=0.05, min_samples=5, min_time_s=0.05, max_time_s=0.2, max_noise=0.05)
    lut = build_lut(ToySpace(), [(64, 128)], "cudagraph", cfg, tmp_path / "g.parquet", "gpu", device="cuda:0",
                    progress=False)
    assert lut.meta["device"]["type"] == "cuda" and lut.meta["device"]["compute_capability"]
    assert (lut.df.status != "failed").all()
    assert lut.coverage(ToySpace(), 64, 128).complete
