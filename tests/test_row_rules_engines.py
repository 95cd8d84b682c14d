"""The row-counting rules checked against the engines themselves, on many architectures.

A rule (``nas.constant_rows`` via ``LGCNetSpace.folded_positions``) says which rows of a network a
folding backend runs. Every convolution of a row that runs must still be in the engine's graph, and
none of a row that does not: the number of convolutions the engine keeps equals the number of
``Conv2d`` / ``ConvTranspose2d`` modules in the rows the rule keeps. ONNX Runtime: Conv nodes of the
graph after ``ORT_ENABLE_ALL``; Inductor: ``aten::convolution`` calls of one compiled forward.
Architectures: zero-heavy draws (where folding and dead code matter: whole cells of ``zero``, first
cells that read the stem through ``zero`` edges only) and plain uniform draws.
"""

from __future__ import annotations

import random

import pytest
import torch

from nas.space import LGCNetSpace
from search_support import RESOLUTION, tiny_space

E = 5


@pytest.fixture(scope="module")
def space():
    return LGCNetSpace(tiny_space())


@pytest.fixture(scope="module")
def conv_modules(space):
    """(position, op) → how many convolution modules its op holds."""
    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    return {(e.position, e.op): sum(isinstance(m, kinds) for m in space._build(e.spec).modules())
            for e in space.enumerate(*RESOLUTION)}


def _architectures(space, n: int, seed: int) -> list[dict]:
    from latbench.model.networks import sample_architectures

    base = sample_architectures(space, n, seed)
    r = random.Random(seed)
    out = []
    for i, arch in enumerate(base):
        cells = [list(c) for c in arch["cells"]]
        p_zero = (0.0, 0.5, 0.8)[i % 3]
        cells = [["zero" if r.random() < p_zero else op for op in c] for c in cells]
        if i % 3 == 2:  # the stem read through zero edges only
            cells[0] = ["zero"] * E
            cells[1] = ["zero"] * E
        out.append({"cells": cells, "fusion": list(arch["fusion"])})
    return out


def _kept(space, conv_modules, arch, weights_are_constants: bool) -> int:
    skip = space.folded_positions(arch, weights_are_constants=weights_are_constants)
    return sum(conv_modules[r] for r in space.architecture_rows(arch) if r[0] not in skip)


def test_onnx_runtime_keeps_the_convolutions_of_the_rows_the_ort_rule_runs(space, conv_modules, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from latbench.backends.onnx_export import export_onnx

    x = torch.randn(1, 3, *RESOLUTION)
    seen = []
    for i, arch in enumerate(_architectures(space, 9, seed=11)):
        exported = export_onnx(space.build_architecture(arch).eval(), [x], cache_dir=tmp_path / "onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(tmp_path / f"opt{i}.onnx")
        ort.InferenceSession(str(exported.path), so, providers=["CPUExecutionProvider"])
        got = sum("Conv" in n.op_type for n in onnx.load(str(tmp_path / f"opt{i}.onnx")).graph.node)
        want = _kept(space, conv_modules, arch, weights_are_constants=True)
        seen.append((got, want))
    assert all(g == w for g, w in seen), seen
    assert len({w for _, w in seen}) > 3  # the draws differ in what folds


def test_inductor_runs_the_convolutions_of_the_rows_the_compile_rule_runs(space, conv_modules):
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(1, 3, *RESOLUTION)
    seen = []
    for arch in _architectures(space, 4, seed=5):
        torch._dynamo.reset()
        net = torch.compile(space.build_architecture(arch).eval())
        with torch.no_grad():
            net(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                net(x)
        got = sum(1 for e in prof.events() if e.name == "aten::convolution")
        seen.append((got, _kept(space, conv_modules, arch, weights_are_constants=False)))
    assert all(g == w for g, w in seen), seen
    assert len({w for _, w in seen}) > 2
