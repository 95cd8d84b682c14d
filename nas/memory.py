"""Memory an LGCNet needs, estimated on the ``meta`` device before anything is allocated.

:func:`estimate_network` builds the network (supernet or derived) on the ``meta`` device — shapes
only, no storage — counts its parameters and runs a forward pass at the requested batch and
resolution, recording every leaf module's output. From those it takes a lower bound:

- inference: parameters + the input + twice the largest activation (an op's input and output
  are resident together);
- training: parameters twice (weights and gradients) + the input + half the sum of all
  activations (autograd keeps most of them for the backward pass).

:func:`check_network_fits` refuses (one line, with the estimate) a request whose lower bound
exceeds everything the device has (:func:`latbench.memory.check_fits`), e.g. a 100000×100000
input or ``init_channels: 100000``, instead of an allocator traceback after minutes of work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latbench.memory import check_fits, format_bytes
from nas.config import SpaceConfig
from nas.genotype import Architecture

BYTES = 4  # fp32 parameters and activations


@dataclass(frozen=True)
class MemoryEstimate:
    params: int            # bytes of parameters (and gradients when training)
    activations: int       # bytes of activations (lower bound), input included
    exact_forward: bool    # False: the meta forward failed and a coarse bound was used

    @property
    def total(self) -> int:
        return self.params + self.activations

    def describe(self) -> str:
        return f"parameters {format_bytes(self.params)}, activations {format_bytes(self.activations)}"


def _arch_weights(config: SpaceConfig):
    from nas.fusion import fusion_edge_candidates
    from nas.network import ArchWeights
    from nas.ops import CELL_PRIMITIVES

    q = len(CELL_PRIMITIVES)
    cells = [torch.full((config.num_edges(), q), 1.0 / q, device="meta") for _ in range(config.num_cells)]
    fusion = [torch.full((len(c),), 1.0 / len(c), device="meta") for c in fusion_edge_candidates(config.fusion)]
    return ArchWeights(cells=cells, fusion=fusion)


def estimate_network(config: SpaceConfig, arch: Architecture | None, *, batch: int = 1,
                     resolution: tuple[int, int] | None = None, training: bool = False) -> MemoryEstimate:
    """Lower bound of the memory a forward (``training``: and backward) pass needs; see the
    module docstring. ``arch=None``: the supernet. ``resolution=None``: parameters only."""
    from nas.network import LGCNet

    with torch.device("meta"):
        net = LGCNet(config, arch)
    n_params = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
    params = n_params * BYTES * (2 if training else 1)
    if resolution is None:
        return MemoryEstimate(params, 0, True)
    h, w = int(resolution[0]), int(resolution[1])
    x_bytes = batch * 3 * h * w * BYTES
    sizes: list[int] = []

    def hook(_m: Any, _args: Any, out: Any) -> None:
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                sizes.append(t.numel())

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    exact = True
    try:
        with torch.no_grad():
            x = torch.empty(batch, 3, h, w, device="meta")
            net.train(training)
            net(x, _arch_weights(config) if arch is None else None)
    except Exception:  # noqa: BLE001 - an op without a meta kernel: fall back to the stem alone
        exact = False
        c0 = config.stem_channels[0]
        sizes = [batch * c0 * ((h + 1) // 2) * ((w + 1) // 2)]
    finally:
        for hd in handles:
            hd.remove()
    if training:
        act = x_bytes + sum(sizes) * BYTES // 2
    else:
        act = x_bytes + 2 * max(sizes, default=0) * BYTES
    return MemoryEstimate(params, act, exact)


def check_network_fits(config: SpaceConfig, arch: Architecture | None, device: str, *, batch: int = 1,
                       resolution: tuple[int, int] | None = None, training: bool = False,
                       what: str = "the network") -> MemoryEstimate:
    """:class:`~latbench.errors.ResourceError` when :func:`estimate_network` exceeds all of
    ``device``'s memory; else the estimate."""
    est = estimate_network(config, arch, batch=batch, resolution=resolution, training=training)
    at = f" at batch {batch}, {resolution[0]}x{resolution[1]}" if resolution is not None else ""
    check_fits(est.total, device, f"{what}{at}", est.describe(),
               "lower the batch size, the resolution or the channel count (init_channels / width_mult)")
    return est


__all__ = ["MemoryEstimate", "check_network_fits", "estimate_network"]
