"""ONNX export of every registry op, every LGCNet fixed part and sampled whole networks: the file
passes onnx.checker and ONNX Runtime (CPU) reproduces PyTorch within 1e-4 relative error (fp32).

Relative error is max|ort - torch| / max|torch| per output (element-wise relative error is
meaningless where outputs cross zero).
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latbench.errors import UserError
from latbench.backends.onnx_export import (AdaptiveAvgPoolAsMatMul, ExportSettings, OnnxExportError, adaptive_pool_matrix,
                                  export_onnx)
from nas.config import SpaceConfig
from nas.ops import CELL_PRIMITIVES, FUSION_PRIMITIVES, UP_PRIMITIVES, build_op
from nas.space import LGCNetSpace

REL_TOL = 1e-4


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def _ort_run(path, inputs):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feed)


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    scale = max(float(np.abs(ref).max()), 1e-6)
    return float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) / scale


def check_roundtrip(module: nn.Module, inputs, cache, settings: ExportSettings | None = None):
    """Export, check the file, run it with ONNX Runtime and compare with PyTorch."""
    module = module.eval()
    with torch.no_grad():
        ref = module(*inputs)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    exported = export_onnx(module, inputs, settings, cache)
    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model, full_check=True)
    assert exported.settings.opset >= 17
    assert all(o.version >= 17 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    # weights inside the file: every initializer holds its data, none points to external data
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    # fixed shapes
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), f"{vi.name} has a symbolic dimension"
    outs = _ort_run(exported.path, inputs)
    assert len(outs) == len(refs)
    for got, r in zip(outs, refs):
        assert got.shape == tuple(r.shape)
        err = _rel_err(got, r.numpy())
        assert err <= REL_TOL, f"{type(module).__name__}: relative error {err:.2e} > {REL_TOL}"
    return exported


# --- every op of the registry, odd sizes included ------------------------------------------------

CELL_CASES = [(op, (1, 8, 17, 33), 1) for op in CELL_PRIMITIVES] + \
             [(op, (1, 8, 9, 17), 2) for op in CELL_PRIMITIVES] + \
             [(op, (2, 8, 16, 32), 2) for op in ("skip_connect", "sep_conv_3x3")]
FUSION_ONLY = [op for op in FUSION_PRIMITIVES if op not in CELL_PRIMITIVES]
FUSION_CASES = [(op, (1, 8, 17, 33), 1) for op in FUSION_ONLY] + \
               [(op, (1, 8, 5, 9), 1) for op in FUSION_ONLY] + \
               [(op, (2, 8, 4, 7), 1) for op in ("gpool_2x2", "gpool_5x5")]  # fewer pixels than bins


@pytest.mark.parametrize("op,shape,stride", CELL_CASES + FUSION_CASES,
                         ids=[f"{o}-{'x'.join(map(str, s))}-s{st}" for o, s, st in CELL_CASES + FUSION_CASES])
def test_registry_op_exports_and_matches(op, shape, stride, cache):
    torch.manual_seed(0)
    m = build_op(op, shape[1], shape[1], stride)
    check_roundtrip(m, [torch.randn(shape)], cache)


class _UpTo(nn.Module):
    def __init__(self, op: nn.Module, size):
        super().__init__()
        self.op, self.size = op, tuple(size)

    def forward(self, x):
        return self.op(x, self.size)


@pytest.mark.parametrize("op", UP_PRIMITIVES)
@pytest.mark.parametrize("shape,size", [((1, 8, 9, 17), (17, 33)), ((1, 8, 8, 16), (16, 32))])
def test_up_ops_export_and_match(op, shape, size, cache):
    torch.manual_seed(0)
    check_roundtrip(_UpTo(build_op(op, shape[1], shape[1]), size), [torch.randn(shape)], cache)


# --- fixed parts and whole networks --------------------------------------------------------------

def _fixed_specs():
    space = LGCNetSpace(SpaceConfig())
    specs = {}
    for h, w in ((33, 65), (65, 129)):
        for e in space.enumerate(h, w):
            if e.kind == "fixed":
                specs.setdefault(e.spec.key, e.spec)
    return space, list(specs.values())


@pytest.mark.slow
def test_every_fixed_part_exports_and_matches(cache):
    space, specs = _fixed_specs()
    assert {s.op for s in specs} >= {"stem", "preprocess_1x1", "factorized_reduce", "cell_merge", "fusion_reduce",
                                     "fusion_merge", "head", "upsample"}
    for i, spec in enumerate(specs):
        torch.manual_seed(i)
        check_roundtrip(space.build_op(spec), [torch.randn(s) for s in spec.inputs], cache)


@pytest.mark.parametrize("fusion,seed", [("dcfc", 0), ("dcfc", 1), ("ppm", 2)])
def test_sampled_network_exports_and_matches(fusion, seed, cache):
    space = LGCNetSpace(SpaceConfig(fusion=fusion))
    arch = space.sample_architecture(random.Random(seed))
    torch.manual_seed(seed)
    net = space.build_architecture(arch)
    exported = check_roundtrip(net, [torch.randn(1, 3, 33, 65)], cache)
    assert exported.output_shapes == ((1, SpaceConfig().num_classes, 33, 65),)
    assert "GatherND" not in exported.op_types  # adaptive pools were rewritten, not gathered


# --- adaptive pooling on sizes the bins do not divide ----------------------------------------------

@pytest.mark.parametrize("n_in,n_out", [(17, 5), (33, 2), (9, 5), (5, 5), (4, 5), (3, 5), (16, 2), (1, 2), (49, 6)])
def test_pool_matrix_equals_adaptive_avg_pool(n_in, n_out):
    x = torch.randn(2, 3, n_in, n_in + 4, dtype=torch.float64)
    ref = F.adaptive_avg_pool2d(x, n_out)
    # the formulation is exact (up to float64 rounding) ...
    ph = adaptive_pool_matrix(n_in, n_out, torch.float64)
    pw = adaptive_pool_matrix(n_in + 4, n_out, torch.float64)
    assert torch.allclose(ph @ x @ pw.t(), ref, rtol=1e-12, atol=1e-12)
    # ... and the fp32 module used for export agrees to fp32 rounding
    m = AdaptiveAvgPoolAsMatMul((n_in, n_in + 4), (n_out, n_out))
    assert torch.allclose(m(x.float()), ref.float(), rtol=1e-6, atol=1e-6)
    assert torch.allclose(adaptive_pool_matrix(n_in, n_out, torch.float64).sum(1),
                          torch.ones(n_out, dtype=torch.float64))


def test_dynamo_exporter_alone_emits_a_gather_graph_and_rewrite_removes_it(cache):
    """What DESIGN §6 warned about: without the rewrite, 5x5 bins on 17x33 export as a gather graph."""
    torch.manual_seed(0)
    m = build_op("gpool_5x5", 8, 8)
    x = torch.randn(1, 8, 17, 33)
    raw = check_roundtrip(m, [x], cache, ExportSettings(rewrite_adaptive_pool=False))
    assert "GatherND" in raw.op_types and raw.rewrites == ()
    new = check_roundtrip(m, [x], cache)
    assert "GatherND" not in new.op_types and "MatMul" in new.op_types
    assert len(new.rewrites) == 1 and "17x33->5x5" in new.rewrites[0]
    assert new.nodes < raw.nodes
    # bins that divide the input are left to the exporter (an exact AveragePool)
    even = check_roundtrip(build_op("gpool_2x2", 8, 8), [torch.randn(1, 8, 16, 32)], cache)
    assert even.rewrites == () and "MatMul" not in even.op_types


def test_legacy_exporter_refuses_uneven_adaptive_pool_and_works_with_rewrite(cache):
    torch.manual_seed(0)
    m = build_op("gpool_2x2", 8, 8)
    x = torch.randn(1, 8, 9, 17)
    with pytest.raises(OnnxExportError, match="torchscript"):
        export_onnx(m, [x], ExportSettings(exporter="torchscript", rewrite_adaptive_pool=False), cache)
    exported = check_roundtrip(m, [x], cache, ExportSettings(exporter="torchscript", opset=17))
    assert exported.settings.exporter == "torchscript" and exported.rewrites


# --- cache, precision, settings ----------------------------------------------------------------------

def test_cache_hit_is_not_re_exported_and_keys_follow_content(tmp_path):
    torch.manual_seed(0)
    m = build_op("sep_conv_3x3", 8, 8)
    x = torch.randn(1, 8, 9, 17)
    first = export_onnx(m, [x], cache_dir=tmp_path)
    mtime = first.path.stat().st_mtime_ns
    again = export_onnx(m, [x], cache_dir=tmp_path)
    assert again.cached and not first.cached
    assert again.path == first.path and again.sha256 == first.sha256 and first.path.stat().st_mtime_ns == mtime
    # other weights: a new file when weights must match, the same one for timing (structure)
    other = build_op("sep_conv_3x3", 8, 8)
    assert export_onnx(other, [x], cache_dir=tmp_path).key != first.key
    s1 = export_onnx(m, [x], cache_dir=tmp_path, match="structure")
    s2 = export_onnx(other, [x], cache_dir=tmp_path, match="structure")
    assert s2.cached and s2.key == s1.key
    # another shape, stride or dilation is another file
    assert export_onnx(m, [torch.randn(1, 8, 9, 19)], cache_dir=tmp_path).key != first.key
    d4 = build_op("dil_sep_conv_3x3_d4", 8, 8)
    d4.load_state_dict(m.state_dict())
    assert export_onnx(d4, [x], cache_dir=tmp_path).key != first.key
    # a damaged cache entry is re-exported, not used
    first.path.write_bytes(b"garbage")
    fixed = export_onnx(m, [x], cache_dir=tmp_path)
    assert not fixed.cached and fixed.sha256 == first.sha256


def test_export_does_not_touch_the_module(tmp_path):
    m = build_op("gpool_5x5", 8, 8).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    export_onnx(m, [torch.randn(1, 8, 17, 33)], cache_dir=tmp_path)
    assert isinstance(m.pool, nn.AdaptiveAvgPool2d)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_fp16_export_is_fp16_end_to_end(tmp_path):
    torch.manual_seed(0)
    m = build_op("conv_3x3", 8, 8).eval()
    x = torch.randn(1, 8, 17, 33)
    exported = export_onnx(m, [x], ExportSettings(precision="fp16"), tmp_path)
    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model, full_check=True)
    f16 = onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == f16
    assert model.graph.output[0].type.tensor_type.elem_type == f16
    assert all(i.data_type == f16 for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, f16))
    got = _ort_run(exported.path, [x.half()])[0]
    assert got.dtype == np.float16
    assert _rel_err(got, m(x).detach().numpy()) < 1e-2


@pytest.mark.parametrize("kw", [{"opset": 16}, {"exporter": "tracing"}, {"precision": "int8"}])
def test_bad_export_settings_are_user_errors(kw):
    with pytest.raises(UserError):
        ExportSettings(**kw)
