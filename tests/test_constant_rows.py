"""Rows a constant-folding backend never runs (nas.constant_rows) and how prices leave them out."""

from __future__ import annotations


import pytest

from nas.space import LGCNetSpace
from search_support import RESOLUTION, tiny_space

E = 5  # edges per cell (steps = 2)
NO_GPOOL = ["conv_1x1", "conv_1x1", "interp", "conv_1x1", "interp", "conv_1x1", "conv_1x1", "conv_1x1",
            "conv_1x1", "interp", "conv_1x1", "conv_1x1", "interp"]


def _arch(cells):
    return {"cells": [list(c) for c in cells], "fusion": NO_GPOOL}


@pytest.fixture
def space():
    return LGCNetSpace(tiny_space())  # 4 cells, fusion inputs 0, 1, 3


def test_nothing_is_folded_without_zero_edges(space):
    assert space.folded_positions(_arch([["conv_3x3"] * E] * 4)) == set()


def test_a_constant_cell_folds_what_reads_only_it(space):
    got = space.folded_positions(_arch([["zero"] * E, ["skip_connect"] * E, ["conv_3x3"] * E, ["conv_3x3"] * E]))
    # cell 0's nodes are zeros: its merge and fusion input 0 are constants ...
    assert {"cell0.merge", "cell1.pre1", "cell2.pre0", "fusion.reduce0"} <= got
    # ... its preprocessing feeds only zero edges (dead), and the rest still reads the stem
    assert {"cell0.pre0", "cell0.pre1"} <= got
    assert not any(p.startswith(("cell3.", "fixed.")) for p in got) and "cell1.pre0" not in got
    # the edges leaving cell 1's constant input (state 1: e1, e3) compute on a constant
    assert {"cell1.e1", "cell1.e3"} <= got and not {"cell1.e0", "cell1.e2", "cell1.e4"} & got


def test_a_cell_nothing_reads_is_dead(space):
    # cell 2 is read only by cell 3 (s1 via pre1), whose edges from state 1 are all zero
    cell3 = ["conv_3x3", "zero", "conv_3x3", "zero", "zero"]  # e0: in0→n0, e1: in1→n0, e2: in0→n1, e3: in1→n1
    got = space.folded_positions(_arch([["conv_3x3"] * E, ["conv_3x3"] * E, ["conv_3x3"] * E, cell3]))
    assert {f"cell2.e{j}" for j in range(E)} | {"cell2.pre0", "cell2.pre1", "cell2.merge", "cell3.pre1"} <= got
    assert not any(p.startswith(("cell0.", "cell1.", "fusion.", "fixed.")) for p in got)


def test_an_all_zero_network_is_a_constant(space):
    arch = _arch([["zero"] * E] * 4)
    got = space.folded_positions(arch)
    assert got == {p for p, _ in space.architecture_rows(arch)}  # the stem too: nothing reads the input


@pytest.mark.parametrize("weights_are_constants", [True, False])
def test_the_stem_is_dead_when_the_first_cells_read_it_through_zero_edges_only(space, weights_are_constants):
    # cells 0 and 1 are all zero: cell 2 reads constants (s0 = cell 0, s1 = cell 1), nothing reads the stem
    arch = _arch([["zero"] * E, ["zero"] * E, ["conv_3x3"] * E, ["conv_3x3"] * E])
    assert "fixed.stem" in space.folded_positions(arch, weights_are_constants=weights_are_constants)
    # cell 1 reads the stem (its s0) through e0: the stem runs
    cell1 = ["conv_3x3", "zero", "zero", "zero", "zero"]
    arch = _arch([["zero"] * E, cell1, ["conv_3x3"] * E, ["conv_3x3"] * E])
    assert "fixed.stem" not in space.folded_positions(arch, weights_are_constants=weights_are_constants)
    # cell 1 reads only cell 0 (its s1): the stem is dead again
    cell1 = ["zero", "conv_3x3", "zero", "zero", "zero"]
    arch = _arch([["zero"] * E, cell1, ["conv_3x3"] * E, ["conv_3x3"] * E])
    assert "fixed.stem" in space.folded_positions(arch, weights_are_constants=weights_are_constants)


def test_prices_leave_folded_rows_out_on_folding_backends_only(space, tmp_path):
    from latbench.lut.table import read_lut
    from latbench.model.predictor import Predictor
    from search_support import build_tiny_lut

    lut = read_lut(build_tiny_lut(tmp_path / "tiny.parquet"))
    arch = _arch([["zero"] * E, ["skip_connect"] * E, ["conv_3x3"] * E, ["conv_3x3"] * E])
    eager = Predictor.for_lut(lut, *RESOLUTION)
    folding = Predictor.for_lut(lut, *RESOLUTION, backend="ort")
    full = eager.network_rows(space, arch)
    run = folding.network_rows(space, arch)
    assert full == space.architecture_rows(arch)
    assert set(full) - set(run) == {r for r in full if r[0] in space.folded_positions(arch)} and len(run) < len(full)
    assert folding.raw_sum(run) < eager.raw_sum(full)


def _conv_nodes(path) -> int:
    import onnx

    return sum("Conv" in n.op_type for n in onnx.load(str(path)).graph.node)


def test_onnx_runtime_runs_no_convolution_of_an_all_zero_network_and_all_of_a_full_one(space, tmp_path):
    """The premise, checked on ONNX Runtime itself: after its graph optimisations, the all-zero
    network keeps no convolution, one without zero edges keeps them, one with a constant cell fewer."""
    ort = pytest.importorskip("onnxruntime")
    import torch

    from latbench.backends.onnx_export import export_onnx

    x = torch.randn(1, 3, *RESOLUTION)
    counts = {}
    for name, cells in {"full": [["conv_3x3"] * E] * 4, "zero": [["zero"] * E] * 4,
                        "cell0": [["zero"] * E] + [["conv_3x3"] * E] * 3}.items():
        exported = export_onnx(space.build_architecture(_arch(cells)).eval(), [x], cache_dir=tmp_path / "onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
        ort.InferenceSession(str(exported.path), so, providers=["CPUExecutionProvider"])
        counts[name] = (_conv_nodes(exported.path), _conv_nodes(tmp_path / f"{name}.opt.onnx"))
    assert counts["zero"][1] == 0, counts
    assert counts["full"][1] > 0 and counts["cell0"][1] < counts["full"][1], counts


# ---- where weights are graph inputs (Inductor): only ops without weights fold ------------------
def test_without_constant_weights_only_weightless_ops_on_constants_fold(space):
    # e0: in0→n0, e1: in1→n0, e2: in0→n1, e3: in1→n1, e4: n0→n1; fusion reads cells 0, 1, 3
    cell1 = ["conv_3x3", "conv_3x3", "zero", "zero", "max_pool_3x3"]  # e1 reads the all-zero cell 0
    cell2 = ["zero", "zero", "conv_3x3", "zero", "max_pool_3x3"]      # node 0 zeros, e4 pools them
    cell3 = ["zero", "zero", "zero", "conv_3x3", "conv_3x3"]          # node 0 zeros, e4 convolves them
    arch = _arch([["zero"] * E, cell1, cell2, cell3])
    got = space.folded_positions(arch, weights_are_constants=False)
    assert "cell0.merge" in got and {"cell0.pre0", "cell0.pre1"} <= got  # a sum of zeros; dead code
    assert not {"cell1.pre1", "fusion.reduce0"} & got                    # weights on a constant: they run
    assert "cell2.e4" in got and "cell2.merge" not in got                 # pooling of zeros folds
    assert "cell3.e4" not in got                                          # a convolution of zeros runs
    every = space.folded_positions(arch)  # weights as constants (ONNX Runtime): all of them fold
    assert {"cell1.pre1", "fusion.reduce0", "cell2.e4", "cell3.e4"} <= every and got < every


def test_compile_prices_leave_out_what_inductor_folds(space, tmp_path):
    from latbench.lut.table import read_lut
    from latbench.model.predictor import Predictor
    from search_support import build_tiny_lut

    lut = read_lut(build_tiny_lut(tmp_path / "tiny.parquet"))
    arch = _arch([["zero"] * E, ["skip_connect"] * E, ["conv_3x3"] * E, ["conv_3x3"] * E])
    compiled = Predictor.for_lut(lut, *RESOLUTION, backend="compile")
    run = compiled.network_rows(space, arch)
    skip = space.folded_positions(arch, weights_are_constants=False)
    assert skip and set(space.architecture_rows(arch)) - set(run) == {r for r in space.architecture_rows(arch) if r[0] in skip}


def test_inductor_folds_pooling_of_a_constant_and_runs_a_convolution_of_it():
    """The premise, checked on Inductor itself: in a compiled graph whose weights are inputs, a
    max-pool of zeros leaves no kernel, a convolution of zeros is still called."""
    import torch
    from torch import nn
    from torch._inductor.utils import run_and_get_code

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)

        def forward(self, x):
            z = x.new_zeros(x.shape)
            return x + nn.functional.max_pool2d(z, 3, 1, 1) + self.conv(z).relu()

    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(Net().eval()), torch.randn(1, 4, 8, 8))
    src = "\n".join(code)
    assert "extern_kernels.convolution(" in src  # the convolution of the constant runs
    assert "max_pool" not in src                  # the pooling of the constant was folded


def test_inductor_runs_no_stem_when_the_first_cells_are_all_zero(space):
    """The stem rule, checked on Inductor itself: with cells 0 and 1 all ``zero``, the compiled
    network runs convolutions (later cells' weights on constants) but none on the image (3 channels:
    only the stem reads it), and the structural rule says the stem is dead."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    arch = _arch([["zero"] * E, ["zero"] * E, ["conv_3x3"] * E, ["conv_3x3"] * E])
    assert "fixed.stem" in space.folded_positions(arch, weights_are_constants=False)
    net = torch.compile(space.build_architecture(arch).eval())
    x = torch.randn(1, 3, *RESOLUTION)
    with torch.no_grad():
        net(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            net(x)
    convs = [e.input_shapes[0] for e in prof.events() if e.name == "aten::convolution" and e.input_shapes]
    assert convs, "the later cells' convolutions should run"
    assert not [s for s in convs if len(s) == 4 and s[1] == 3], convs  # nothing convolves the image
