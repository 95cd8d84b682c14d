"""Memory estimates before work (latbench.memory, nas.memory) and the CLI's one-line translation
of what the machine refuses (out of memory, a storage error), while real bugs keep their traceback."""

from __future__ import annotations

import os
import time

import click
import pytest
import torch
from click.testing import CliRunner

from latbench.errors import ResourceError
from latbench.lazycli import LazyGroup
from latbench.memory import check_entries_fit, device_capacity
from nas.config import SpaceConfig
from nas.memory import check_network_fits, estimate_network

TINY = dict(num_cells=4, init_channels=4, reduction_cells=(1, 2), fusion_inputs=(0, 1, 3), num_classes=5)


def _uniform_weights(cfg: SpaceConfig):
    from nas.fusion import edge_candidates
    from nas.network import ArchWeights
    from nas.ops import CELL_PRIMITIVES

    q = len(CELL_PRIMITIVES)
    return ArchWeights(cells=[torch.full((cfg.num_edges(), q), 1.0 / q) for _ in range(cfg.num_cells)],
                       fusion=[torch.full((len(c),), 1.0 / len(c)) for c in edge_candidates()])


def test_training_estimate_is_a_lower_bound_of_what_autograd_keeps():
    """The supernet's training estimate never exceeds what a real forward pass saves for backward
    (unique storages of the saved tensors, the input included)."""
    from nas.network import LGCNet

    cfg = SpaceConfig(**TINY)
    batch, res = 2, (33, 65)
    est = estimate_network(cfg, None, batch=batch, resolution=res, training=True)
    assert est.exact_forward
    torch.manual_seed(0)
    net = LGCNet(cfg).train()
    own = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in own:  # activations only (weights are counted in est.params)
            storages[s.data_ptr()] = s.nbytes()
        return t

    x = torch.randn(batch, 3, *res)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, _uniform_weights(cfg)).sum().backward()
    kept = sum(storages.values())
    params = sum(p.numel() for p in net.parameters()) * 4
    assert est.activations <= kept, (est.activations, kept)
    assert est.params >= 2 * params  # weights and their gradients
    assert est.activations > 0.2 * kept  # and not a uselessly low bound


def test_inference_estimate_grows_with_resolution_and_batch():
    cfg = SpaceConfig(**TINY)
    a = estimate_network(cfg, None, batch=1, resolution=(33, 65))
    b = estimate_network(cfg, None, batch=1, resolution=(66, 130))
    c = estimate_network(cfg, None, batch=4, resolution=(33, 65))
    assert a.params == b.params == c.params
    assert b.activations > 3 * a.activations and c.activations > 3 * a.activations


def test_impossible_requests_are_refused_fast_with_the_estimate_and_possible_ones_pass():
    cfg = SpaceConfig(**TINY)
    assert check_network_fits(cfg, None, "cpu", batch=2, resolution=(33, 65), training=True).total < 2**30
    t0 = time.perf_counter()
    with pytest.raises(ResourceError, match=r"needs at least \d+\.\d TiB of memory \(parameters .*, activations .*\), "
                                            r"but cpu has .* in all"):
        check_network_fits(cfg, None, "cpu", batch=16, resolution=(100000, 100000), training=True)
    with pytest.raises(ResourceError, match=r"parameters \d+\.\d (TiB|GiB)"):
        check_network_fits(SpaceConfig(**{**TINY, "init_channels": 100000}), None, "cpu")
    assert time.perf_counter() - t0 < 30  # shapes only: nothing was allocated


def test_lut_build_entries_are_checked_against_the_device(toy_space):
    cap = device_capacity("cpu")
    assert cap and cap > 2**28
    check_entries_fit(toy_space.enumerate(16, 32), "fp32", "cpu", toy_space)
    with pytest.raises(ResourceError, match=r"timing stem\|.*needs at least .* \(its input and output tensors\)"):
        check_entries_fit(toy_space.enumerate(100000, 100000), "fp32", "cpu", toy_space)


# ---- the CLI's translation -------------------------------------------------------------------------
@click.group(cls=LazyGroup)
def group() -> None:
    """A group like latbench's and nas's."""


@group.command("alloc")
def alloc() -> None:
    torch.empty(2**48, dtype=torch.uint8)  # 256 TiB: the allocator refuses


@group.command("write-dir")
@click.argument("path")
def write_dir(path: str) -> None:
    os.open(path, os.O_WRONLY)  # a folder cannot be opened for writing: EISDIR


@group.command("missing")
@click.argument("path")
def missing(path: str) -> None:
    open(path, "rb")  # ENOENT: not the storage's doing, a bug here


@group.command("bug")
def bug() -> None:
    raise RuntimeError("index 3 is out of bounds for dimension 0")


def _one_error_line(r) -> str:
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit) and len(errors) == 1, r.output
    return errors[0]


def test_out_of_memory_is_one_line():
    line = _one_error_line(CliRunner().invoke(group, ["alloc"]))
    assert "out of memory" in line and "lower --batch-size" in line


def test_a_storage_error_is_one_line_naming_the_file(tmp_path):
    line = _one_error_line(CliRunner().invoke(group, ["write-dir", str(tmp_path)]))
    assert str(tmp_path) in line and "Is a directory" in line


def test_real_bugs_keep_their_traceback(tmp_path):
    r = CliRunner().invoke(group, ["missing", str(tmp_path / "nope")])
    assert isinstance(r.exception, FileNotFoundError)
    r = CliRunner().invoke(group, ["bug"])
    assert isinstance(r.exception, RuntimeError) and r.exit_code == 1
