"""The ``ort`` backend on the CPU: registry, I/O-bound outputs match PyTorch, the protocol measures
it, settings are recorded, a missing CUDA execution provider is a one-line UserError, and
``latbench build-lut --backend ort`` builds a complete LUT."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from latbench.backends import BACKENDS
from latbench.errors import UserError
from latbench.timing import TimingConfig, available_backends, get_backend, measure
from nas.ops import build_op

QUICK = TimingConfig(warmup_s=0.02, min_samples=3, min_time_s=0.0, max_time_s=0.05, max_noise=0.5,
                     target_sample_s=1e-4, threads=1)


@pytest.fixture
def backend(tmp_path):
    return get_backend("ort", device="cpu", precision="fp32", threads=1, cache_dir=tmp_path)


def test_registered_names():
    assert {"ort", "compile", "trt"} <= set(available_backends())
    assert set(BACKENDS) == {"ort", "compile", "trt"}


@pytest.mark.parametrize("op,shape,stride", [("sep_conv_3x3", (1, 8, 17, 33), 2), ("gpool_5x5", (1, 8, 9, 17), 1),
                                             ("factorized_reduce", (2, 8, 9, 17), 2)])
def test_bound_outputs_match_pytorch_and_time(backend, op, shape, stride):
    torch.manual_seed(0)
    if op == "factorized_reduce":
        from nas.ops import FactorizedReduce

        m = FactorizedReduce(shape[1], 8).eval()
    else:
        m = build_op(op, shape[1], 8, stride).eval()
    x = torch.randn(shape)
    prepared = backend.prepare(m, [x], QUICK)
    try:
        prepared.run()
        got = prepared.outputs()[0]
        ref = m(x).detach().numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
        t = prepared.time(5)
        assert 0 < t < 5
        m1 = measure(prepared, config=QUICK)
    finally:
        prepared.close()
    assert m1.ok and m1.median_us > 0 and m1.samples >= 3
    assert m1.extra["onnx_exporter"] == "dynamo" and m1.extra["intra_op_threads"] == 1
    assert m1.extra["onnx_match"] == "structure"


def test_describe_records_versions_providers_and_session_options(tmp_path):
    b = get_backend("ort", device="cpu", precision="fp32", threads=2, cache_dir=tmp_path,
                    graph_optimization="basic")
    d = b.describe()
    assert d["backend"] == "ort" and d["onnxruntime"] == ort.__version__
    assert d["providers"] == ["CPUExecutionProvider"]
    assert d["session_options"]["intra_op_threads"] == 2
    assert d["session_options"]["graph_optimization"] == "basic"
    assert d["export"]["opset"] >= 17 and d["io_binding"] is True
    # which ONNX Runtime wheel(s) provide the module here (this machine: the CPU one alone)
    assert d["onnxruntime_wheels"].get("onnxruntime", d["onnxruntime_wheels"].get("onnxruntime-gpu")) == ort.__version__
    json.dumps(d)  # JSON-able for the LUT metadata


def test_cpu_and_gpu_wheels_side_by_side_are_named_with_the_repair():
    from latbench.backends.ort_session import coinstall_note, installed_ort_distributions

    both = {"onnxruntime": "1.30.0", "onnxruntime-gpu": "1.22.0"}
    note = coinstall_note(both)
    assert note.startswith("; ") and "\n" not in note
    assert "onnxruntime 1.30.0 (CPU) and onnxruntime-gpu 1.22.0 are both installed" in note
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in note
    assert coinstall_note({"onnxruntime": "1.30.0"}) == "" and coinstall_note({"onnxruntime-gpu": "1.22.0"}) == ""
    here = installed_ort_distributions()
    assert here and set(here) <= {"onnxruntime", "onnxruntime-gpu"}
    assert (coinstall_note() != "") == (len(here) == 2)


def test_the_ort_extras_are_alternatives_not_a_co_install():
    """pyproject.toml: no ONNX Runtime wheel in the base dependencies, [ort] the CPU wheel and
    [ort-gpu] the CUDA wheel, neither extra pulling in the other."""
    import re
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    name = lambda req: re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower()  # noqa: E731
    assert not {name(r) for r in meta["dependencies"]} & {"onnxruntime", "onnxruntime-gpu"}
    extras = {k: {name(r) for r in v} for k, v in meta["optional-dependencies"].items()}
    assert "onnxruntime" in extras["ort"] and "onnxruntime-gpu" not in extras["ort"]
    assert "onnxruntime-gpu" in extras["ort-gpu"] and "onnxruntime" not in extras["ort-gpu"]


def test_measure_by_name_goes_through_the_backend(tmp_path):
    m = build_op("conv_3x3", 8, 8).eval()
    b = get_backend("ort", device="cpu", threads=1, cache_dir=tmp_path)
    res = measure(m, [torch.randn(1, 8, 16, 16)], QUICK, backend=b)
    assert res.ok and "onnx_sha256" in res.extra


def test_fp16_runs_on_the_cpu_provider(tmp_path):
    torch.manual_seed(0)
    m = build_op("conv_3x3", 8, 8).eval()
    x = torch.randn(1, 8, 17, 33)
    b = get_backend("ort", device="cpu", precision="fp16", threads=1, cache_dir=tmp_path)
    p = b.prepare(m, [x], QUICK)
    try:
        p.run()
        got = p.outputs()[0]
    finally:
        p.close()
    assert got.dtype == np.float16
    ref = m(x).detach().numpy()
    assert np.abs(got.astype(np.float32) - ref).max() / np.abs(ref).max() < 1e-2


def test_export_failure_is_a_failed_measurement_not_a_crash(backend):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return x.numpy()  # not a tensor program: cannot be exported or traced

    res = measure(Bad(), [torch.randn(1, 2, 4, 4)], QUICK, backend=backend)
    assert not res.ok and res.error


@pytest.mark.parametrize("kw,match", [
    ({"device": "cuda:0"}, "onnxruntime-gpu"),
    ({"device": "mps"}, "cpu or cuda"),
    ({"graph_optimization": "max"}, "graph optimisation"),
    ({"cuda_graph": True}, "need --device cuda"),
])
def test_bad_requests_are_one_line_user_errors(tmp_path, kw, match):
    if kw.get("device", "").startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(UserError, match=match) as info:
        get_backend("ort", cache_dir=tmp_path, **{"device": "cpu", **kw})
    assert "\n" not in info.value.message


def test_build_lut_cli_with_ort_backend(tmp_path):
    """``latbench build-lut --backend ort`` end to end (toy space, tiny protocol)."""
    from latbench.cli import cli
    from latbench.lut.table import read_lut

    out = tmp_path / "toy-ort.parquet"
    args = ["build-lut", "--gpu", "cpu", "--device", "cpu", "--backend", "ort", "--space", "toy_space:ToySpace",
            "--resolution", "16x32", "--output", str(out), "--no-progress", "--json", "--warmup", "0",
            "--min-time", "0", "--max-time", "0.02", "--max-noise", "0.5", "--threads", "1"]
    env = {"LATBENCH_CACHE_DIR": str(tmp_path / "cache")}
    r = CliRunner(env=env).invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["failed"] == 0 and summary["backend"] == "ort"
    lut = read_lut(out)
    assert lut.meta["complete"] is True and lut.meta["backend"] == "ort"
    info = lut.meta["backend_info"]
    assert info["onnxruntime"] == ort.__version__ and info["session_options"]["intra_op_threads"] == 1
    assert lut.meta["protocol"]["input_sets"] == 8      # the CPU default: rotating input sets
    assert lut.meta["protocol"]["const_inputs"] is True  # ... and each op timed on zeros too
    assert lut.df[lut.df.status == "ok"]["const_us"].notna().all()
    assert set(lut.df.backend) == {"ort"}
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))


def test_probe_of_a_provider_that_cannot_start_fails_once_with_the_reason():
    """The probe session is real: asking this (CPU) onnxruntime for its CUDA provider is exactly the
    failure onnxruntime-gpu shows when the provider's CUDA libraries cannot load: no exception, a
    session on the CPU provider. The probe turns that into one clear UserError."""
    from latbench.backends.ort_session import probe_provider

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(UserError) as info:
        probe_provider("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"})
    msg = info.value.message
    assert "\n" not in msg and "CUDAExecutionProvider" in msg and "CPUExecutionProvider" in msg
    assert "pip install" in msg  # says what to do
    # a provider that does start passes and reports the session's providers
    assert probe_provider("CPUExecutionProvider") == ["CPUExecutionProvider"]


def test_cuda_sessions_time_device_time_not_synchronous_latency():
    """Settings only (no GPU here): the timed runs disable ONNX Runtime's per-run stream sync and
    the provider gets the fp32 math the precision asks for."""
    from latbench.backends.ort import NO_SYNC
    from latbench.backends.ort_session import OrtSessionSettings, cuda_provider_options

    assert NO_SYNC == "disable_synchronize_execution_providers"
    s = OrtSessionSettings(intra_op_threads=1)
    assert s.synchronize is False and s.use_tf32 is False
    assert cuda_provider_options("cuda:1", s)["use_tf32"] == "0"
    assert cuda_provider_options("cuda:1", s)["device_id"] == "1"
    assert cuda_provider_options("cuda:0", OrtSessionSettings(intra_op_threads=1, use_tf32=True))["use_tf32"] == "1"
