"""The ``compile`` backend on the CPU: torch.compile (Inductor) outputs match eager for a handful
of registry ops and one small LGCNet, compile time is reported apart from the samples, and a
module Dynamo would silently run eagerly is caught.

Compiling on a 2-core machine is slow (the first Inductor compile in a process takes tens of
seconds), so this file compiles few things; the whole-network case is marked slow.
"""

from __future__ import annotations

import random

import pytest
import torch

from latbench.errors import UserError
from latbench.timing import TimingConfig, get_backend, measure
from nas.config import SpaceConfig
from nas.ops import build_op
from nas.space import LGCNetSpace

QUICK = TimingConfig(warmup_s=0.02, min_samples=3, min_time_s=0.0, max_time_s=0.05, max_noise=0.5,
                     target_sample_s=1e-4, threads=1)


@pytest.fixture(scope="module")
def backend():
    return get_backend("compile", device="cpu", precision="fp32", threads=1)


def _compiled_output(prepared, inputs):
    with torch.inference_mode():
        return prepared._fn(*inputs)


@pytest.mark.parametrize("op,shape,stride", [("sep_conv_3x3", (1, 8, 17, 33), 2), ("gpool_5x5", (1, 8, 9, 17), 1),
                                             ("skip_connect", (1, 8, 9, 17), 2), ("max_pool_3x3", (1, 8, 9, 17), 1)])
def test_compiled_op_matches_eager(backend, op, shape, stride):
    torch.manual_seed(0)
    m = build_op(op, shape[1], 8, stride).eval()
    x = torch.randn(shape)
    p = backend.prepare(m, [x], QUICK)
    try:
        got = _compiled_output(p, [x])
        assert p.info["compile_s"] > 0 and p.info["compiled_graphs"] >= 1
        assert p.info["recompiles_after_warmup"] == 0 and p.info["compile_mode"] == "default"
        res = measure(p, config=QUICK)
    finally:
        p.close()
    with torch.no_grad():
        ref = m(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert res.ok and res.median_us > 0
    # compilation happened in prepare, not in the samples: the samples are far below compile time
    assert res.p90_us * 1e-6 < p.info["compile_s"]


def test_identity_skip_is_a_timed_passthrough_not_a_failure(backend):
    """A stride-1 skip returns its input: Dynamo makes no graph for it (a compiled network drops it),
    so the backend times the plain call and records that nothing was compiled."""
    m = build_op("skip_connect", 8, 8, 1).eval()
    x = torch.randn(1, 8, 9, 17)
    p = backend.prepare(m, [x], QUICK)
    try:
        assert p.info["compiled_graphs"] == 0 and p.info["passthrough"] is True
        res = measure(p, config=QUICK)
    finally:
        p.close()
    assert res.ok and res.median_us >= 0


def test_one_grad_mode_one_compilation_and_timing_compiles_nothing(backend):
    """Compilation, warm-up and timing run in one grad mode (the CPU timer's inference_mode), so
    Dynamo compiles the module exactly once and the measurement compiles nothing more."""
    from torch._dynamo.utils import counters

    from latbench.timing.cpu import GRAD_MODE

    m = build_op("conv_3x3", 8, 8).eval()
    x = torch.randn(1, 8, 9, 17)
    p = backend.prepare(m, [x], QUICK)
    try:
        assert p.info["compiled_graphs"] == 1 and p.info["recompiles_after_warmup"] == 0
        assert p.info["compile_grad_mode"] == GRAD_MODE.__name__
        graphs, frames = counters["stats"]["unique_graphs"], sum(counters["frames"].values())
        res = measure(p, config=QUICK)
        assert res.ok and res.extra["compile_s"] > 0
        assert counters["stats"]["unique_graphs"] == graphs  # no compilation while timing
        assert sum(counters["frames"].values()) == frames
    finally:
        p.close()


def test_compile_module_compiles_in_the_grad_mode_it_is_given():
    """The CUDA path compiles under no_grad, the mode of latbench's CUDA timers (checked here on
    the CPU): calling the result in that mode compiles nothing new."""
    from torch._dynamo.utils import counters

    from latbench.backends.compile import CompileSettings, compile_module

    m = build_op("sep_conv_3x3", 8, 8, 1).eval()
    x = torch.randn(1, 8, 9, 17)
    fn, facts = compile_module(m, [x], CompileSettings(), torch.no_grad)
    assert facts["compiled_graphs"] == 1 and facts["recompiles_after_warmup"] == 0
    assert facts["compile_grad_mode"] == "no_grad"
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        fn(x)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_module_that_computes_but_compiles_to_nothing_is_refused():
    from latbench.backends.compile import CompileSettings, compile_module

    class Graphless(torch.nn.Module):
        @torch._dynamo.disable
        def forward(self, x):  # computes, but Dynamo is told to skip it: it would run eagerly
            return x * 2

    with pytest.raises(RuntimeError, match="no graph"):
        compile_module(Graphless().eval(), [torch.randn(3)], CompileSettings())


def test_many_modules_of_one_class_each_really_compile(backend):
    """Past Dynamo's recompile limit a frame silently runs eagerly; every prepared module has an
    entry function of its own, so each one is compiled (here with the limit lowered to 1 to make
    the point cheaply)."""
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(recompile_limit=1):
        for w in (9, 11, 13):
            m = build_op("conv_3x3", 4, 4).eval()
            p = backend.prepare(m, [torch.randn(1, 4, 7, w)], QUICK)
            try:
                assert p.info["compiled_graphs"] >= 1
            finally:
                p.close()


class Branches(torch.nn.Module):
    def __init__(self, ops):
        super().__init__()
        make = {"conv": lambda: torch.nn.Conv2d(4, 4, 3, padding=1), "pool": lambda: torch.nn.MaxPool2d(3, 1, 1),
                "relu": torch.nn.ReLU}
        self.ops = torch.nn.ModuleDict({k: make[k]() for k in ops})

    def forward(self, x):
        return sum(op(x) for op in self.ops.values())


class TwoCells(torch.nn.Module):
    """Nested module containers, as a sampled network's cells and edges are."""

    def __init__(self, a, b):
        super().__init__()
        self.cells = torch.nn.ModuleList([Branches(a), Branches(b)])

    def forward(self, x):
        for cell in self.cells:
            x = cell(x)
        return x


def test_modules_prepared_together_stay_compiled_when_timed_in_turn(backend):
    """latbench fit / validate-lut prepare every network first and then time them in interleaved
    rounds: preparing one must not undo another, and no timing call may compile (before the
    private entries each prepare reset Dynamo: the earlier networks recompiled inside their samples
    and, past the recompile limit, ran eagerly)."""
    from torch._dynamo.utils import counters

    # one class, different submodules (as sampled networks differ): one compiled graph's guards
    # fail for the others
    prepared = [backend.prepare(TwoCells(a, b).eval(), [torch.randn(1, 4, 7, 9)], QUICK)
                for a, b in ((("conv",), ("pool",)), (("pool",), ("relu",)), (("relu",), ("conv",)),
                             (("conv", "pool"), ("relu",)))]
    try:
        graphs = counters["stats"]["unique_graphs"]
        for _ in range(2):
            for p in prepared:
                assert p.time(2) > 0
        assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled while timing
        assert all(p.info["compiled_graphs"] == 1 for p in prepared)
    finally:
        for p in prepared:
            p.close()


def test_a_timing_call_that_compiles_is_an_error():
    from latbench.backends.compile import RecompileCheck

    class CompilesWhileTimed:  # stands in for a prepared object whose guards fail inside a sample
        info: dict = {}

        def time(self, calls):
            torch.compile(lambda t: t * 3)(torch.randn(2))
            return 1e-3

    with pytest.raises(RuntimeError, match="recompiled during timing"):
        RecompileCheck(CompilesWhileTimed()).time(1)
    assert RecompileCheck(CompilesWhileTimed()).info == {}


def test_describe_records_mode_and_settings():
    b = get_backend("compile", device="cpu", threads=1, mode="max-autotune-no-cudagraphs")
    d = b.describe()
    assert d["backend"] == "compile" and d["compile"]["mode"] == "max-autotune-no-cudagraphs"
    assert d["torch"] == torch.__version__ and d["timing"] == "wall clock"


@pytest.mark.parametrize("kw,match", [({"mode": "fastest"}, "torch.compile mode"),
                                      ({"precision": "int8"}, "precision")])
def test_bad_options_are_user_errors(kw, match):
    with pytest.raises(UserError, match=match):
        get_backend("compile", device="cpu", **kw)


@pytest.mark.slow
def test_compiled_small_network_matches_eager(backend):
    # A 4-cell LGCNet (cells 0/1/2 at strides 4/8/16 feed the full fusion cell): every op kind of a
    # real network, at a fraction of the 14-cell compile time.
    space = LGCNetSpace(SpaceConfig(num_cells=4, reduction_cells=(1, 2), fusion_inputs=(0, 1, 2)))
    torch.manual_seed(0)
    net = space.build_architecture(space.sample_architecture(random.Random(1))).eval()
    x = torch.randn(1, 3, 33, 65)
    p = backend.prepare(net, [x], QUICK)
    try:
        got = _compiled_output(p, [x])
    finally:
        p.close()
    with torch.no_grad():
        ref = net(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
