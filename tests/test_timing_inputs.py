"""The CPU timers rotate through several random input sets, call by call (latbench.timing.inputs):
the sets themselves, the rotation in the ``cpu`` timer and in ONNX Runtime's bindings (real
sessions), the budget, and what a build records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latbench.timing import TimingConfig, get_backend
from latbench.timing.cpu import CpuPrepared
from latbench.timing.inputs import input_sets, sets_for


def test_sets_start_with_the_given_inputs_and_draw_new_values_of_the_same_kind():
    x = torch.randn(1, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    idx = torch.arange(6)
    sets = input_sets([x, idx], 5)
    assert len(sets) == 5 and sets[0][0] is x and sets[0][1] is idx
    for a, b in sets[1:]:
        assert a.shape == x.shape and a.dtype == x.dtype and a.is_contiguous(memory_format=torch.channels_last)
        assert b is idx                                   # non-floating inputs are shared
    firsts = [s[0] for s in sets]
    assert all(not torch.equal(firsts[i], firsts[j]) for i in range(5) for j in range(i))
    again = input_sets([x, idx], 5)                       # reproducible draws
    assert all(torch.equal(a[0], b[0]) for a, b in zip(sets, again))


def test_the_byte_budget_bounds_the_sets():
    x = torch.zeros(1000)                                 # 4000 bytes
    assert sets_for([x], 8, budget_bytes=10_000) == 2
    assert sets_for([x], 8, budget_bytes=1_000) == 1      # at least the given inputs
    assert sets_for([x], 8, budget_bytes=10**9) == 8
    assert sets_for([x], 1) == 1 and len(input_sets([x], 1)) == 1


def test_the_cpu_timer_rotates_through_its_sets_in_turn():
    seen: list[float] = []

    def fn(t):
        seen.append(float(t.flatten()[0]))
        return t

    x = torch.randn(3, 3)
    p = CpuPrepared(fn, [x], threads=None, input_sets=4)
    assert p.info["input_sets"] == 4
    p.time(10)
    firsts = [float(s[0].flatten()[0]) for s in p._sets]
    assert seen == [firsts[i % 4] for i in range(10)]
    p.close()
    one = CpuPrepared(fn, [x], threads=None, input_sets=1)
    seen.clear()
    one.time(3)
    assert seen == [float(x.flatten()[0])] * 3


def test_the_cpu_backend_takes_the_count_from_the_protocol():
    b = get_backend("cpu", threads=1)
    for n in (1, 3):
        p = b.prepare(torch.nn.MaxPool2d(3, 1, 1), [torch.randn(1, 2, 5, 5)], TimingConfig(input_sets=n))
        assert p.info["input_sets"] == n
        p.close()
    with pytest.raises(ValueError, match="input_sets"):
        TimingConfig(input_sets=0)


def test_ort_rotates_its_bindings_and_each_run_reads_its_own_set(tmp_path):
    """Real ONNX Runtime session: after k calls the bound output is the op on set (k − 1) mod n."""
    b = get_backend("ort", device="cpu", precision="fp32", threads=1, cache_dir=tmp_path)
    op = torch.nn.MaxPool2d(3, 1, 1).eval()
    x = torch.randn(1, 3, 7, 9)
    p = b.prepare(op, [x], TimingConfig(threads=1, input_sets=3))
    assert p.info["input_sets"] == 3
    sets = input_sets([x], 3)
    for k in (1, 2, 3, 5):
        p.time(k)
        want = op(sets[(k - 1) % 3][0]).numpy()
        np.testing.assert_allclose(p.outputs()[0], want, rtol=1e-6)
    p.close()
