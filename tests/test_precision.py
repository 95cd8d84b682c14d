"""Precisions (fp32 strict, tf32, fp16), the fp32 math mode and its provenance, and that timing a
module leaves the caller's module where it was. CPU parts here; the GPU effects in test_gpu_timing."""

from __future__ import annotations

import warnings

import pytest
import torch
from click.testing import CliRunner

from latbench.errors import UserError
from latbench.timing import TimingConfig, get_backend, measure
from latbench.timing.precision import (DTYPES, check_precision, convert, fp32_math, precision_mode,
                                       tensor_precision)

QUICK = TimingConfig(warmup_s=0.0, min_samples=3, min_time_s=0.0, max_time_s=0.02, max_noise=0.5,
                     target_sample_s=1e-4, threads=1)


def _flags():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _set(cudnn: bool, matmul: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.matmul.allow_tf32 = matmul


@pytest.fixture
def restore_flags():
    before = _flags()
    yield
    _set(*before)


@pytest.mark.parametrize("start", [(True, False), (False, True)])
def test_fp32_is_strict_tf32_allows_and_the_callers_flags_come_back(restore_flags, start):
    _set(*start)
    with fp32_math("fp32"):
        assert _flags() == (False, False)
    assert _flags() == start
    with fp32_math("tf32"):
        assert _flags() == (True, True)
    assert _flags() == start
    with fp32_math("fp16"):  # fp16 tensors; any fp32 leftovers strict
        assert _flags() == (False, False)
    with pytest.raises(RuntimeError, match="inside"):
        with fp32_math("tf32"):
            raise RuntimeError("inside")
    assert _flags() == start


def test_precision_names_and_checks():
    assert set(DTYPES) == {"fp32", "tf32", "fp16"}
    assert DTYPES["tf32"] is torch.float32 and tensor_precision("tf32") == "fp32"
    assert check_precision("tf32", "cuda:0") == "tf32"
    with pytest.raises(UserError, match="GPU math mode"):
        check_precision("tf32", "cpu", "cpu")
    with pytest.raises(UserError, match="unknown precision"):
        check_precision("bf8")


@pytest.mark.parametrize("backend", ["cpu", "ort", "compile"])
def test_cpu_backends_refuse_tf32_with_one_line(tmp_path, backend):
    kw = {"cache_dir": tmp_path} if backend == "ort" else {}
    with pytest.raises(UserError, match="tf32") as info:
        get_backend(backend, device="cpu", precision="tf32", **kw)
    assert "\n" not in info.value.message


def test_precision_mode_is_recorded():
    cpu = precision_mode("fp32", "cpu")
    assert cpu == {"precision": "fp32", "tensor_dtype": "float32", "fp32_math": "ieee (cpu)"}
    gpu = precision_mode("fp32", "cuda:0")  # reads and restores the flags; no GPU needed
    assert gpu["fp32_math"] == "ieee" and gpu["cudnn_conv_tf32"] is False and gpu["cublas_matmul_tf32"] is False
    t = precision_mode("tf32", "cuda:0")
    assert t["fp32_math"] == "tf32" and t["cudnn_conv_tf32"] is True
    assert "cudnn_conv_tf32" not in precision_mode("fp32", "cuda:0", torch_flags=False)
    assert get_backend("cpu", threads=1).describe()["precision_mode"]["fp32_math"] == "ieee (cpu)"


def test_the_build_records_the_precision_mode(tmp_path, toy_space, fast_config):
    from latbench.build.builder import build_lut
    from latbench.lut.table import read_lut

    build_lut(toy_space, [(16, 32)], "cpu", fast_config, tmp_path / "p.parquet", "cpu", progress=False)
    meta = read_lut(tmp_path / "p.parquet").meta
    assert meta["precision"] == "fp32" and meta["precision_mode"]["fp32_math"] == "ieee (cpu)"
    assert meta["backend_info"]["precision_mode"] == meta["precision_mode"]


def test_build_lut_tf32_on_the_cpu_is_one_error_line(tmp_path):
    from latbench.cli import cli

    r = CliRunner().invoke(cli, ["build-lut", "--gpu", "cpu", "--device", "cpu", "--precision", "tf32",
                                 "--space", "toy_space:ToySpace", "--resolution", "16x32",
                                 "--output", str(tmp_path / "t.parquet"), "--no-progress"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "tf32" in lines[0], r.output


def test_convert_leaves_the_callers_module_alone():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    x = torch.randn(1, 3, 8, 8)
    got, (xi,) = convert(m, [x], "cpu", "fp16")
    assert got is not m and got.training is False and got[0].weight.dtype == torch.float16
    assert xi.dtype == torch.float16 and x.dtype == torch.float32
    assert m.training is True and m[0].weight.dtype == torch.float32  # untouched
    # already where it should be (device, dtype, eval): nothing is copied
    m.eval()
    same, _ = convert(m, [x], "cpu", "fp32")
    assert same is m


def test_measuring_a_module_does_not_change_it():
    m = torch.nn.Conv2d(4, 4, 3, padding=1).train()
    w = m.weight.detach().clone()
    res = measure(m, [torch.randn(1, 4, 8, 8)], QUICK, backend=get_backend("cpu", threads=1))
    assert res.ok
    assert m.training is True and m.weight.dtype == torch.float32 and torch.equal(m.weight.detach(), w)
