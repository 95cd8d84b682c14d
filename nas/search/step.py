"""One step of the search (paper eq. 10, IV-A) and what it runs on: the model (supernet + θ + GGM
in one module), the optimisers, the mixed-precision choice and the latency table on the step's
device. Shared by the search loop (:mod:`nas.search.trainer`) and ``benchmarks/search_throughput.py``."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latbench.errors import UserError
from nas.data.palette import IGNORE_INDEX
from nas.network import ArchWeights, LGCNet
from nas.ops import CELL_PRIMITIVES
from nas.search.arch_params import ArchParams, gumbel_softmax, sample_gumbel
from nas.search.config import SearchConfig
from nas.search.ggm import GGM
from nas.search.latency import LatencyTable


# the model: supernet + θ + GGM in one module (one DDP wrapper averages all their gradients)
class SearchModel(nn.Module):
    def __init__(self, config: SearchConfig, arch_generator: torch.Generator):
        super().__init__()
        space = config.space
        # the supernet trains at the search width (init_channels, paper IV-A); config.space is the
        # deployed network's configuration, which the LUT prices and the genotype records
        self.supernet = LGCNet(space.search_config())
        self.arch = ArchParams(space, config.arch, generator=arch_generator)
        self.ggm = GGM(space.num_cells, space.num_edges(), len(CELL_PRIMITIVES), config.ggm)

    def logits(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(θ' ``[K, p, q]`` after the GGM, fusion logits)."""
        return self.ggm(self.arch.cell_logits()), self.arch.fusion_logits()

    def forward(self, x: torch.Tensor, tau: float, cell_g: torch.Tensor, fusion_g: Sequence[torch.Tensor]):
        theta, fusion = self.logits()
        cell_z = gumbel_softmax(theta, cell_g, tau)
        fusion_z = [gumbel_softmax(t, g, tau) for t, g in zip(fusion, fusion_g)]
        out = self.supernet(x, ArchWeights(cells=list(cell_z), fusion=fusion_z))
        return out, cell_z, fusion_z

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.supernet.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.parameters()) + list(self.ggm.parameters())


class SearchStep:
    """One single-level optimisation step (see the module docstring); shared by the search loop and
    ``benchmarks/search_throughput.py``."""

    def __init__(self, model: SearchModel, net: nn.Module, table: LatencyTable, config: SearchConfig,
                 opt_w: torch.optim.Optimizer, opt_a: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 gumbel_gen: torch.Generator, device: torch.device, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False):
        # The latency table on the step's device once (LatencyTable.lut_sum would otherwise copy
        # its CPU tensors to the GPU at every step); the caller's table (checkpoints) stays on the CPU.
        self.model, self.net, self.table, self.config = model, net, table_on(table, device), config
        self.opt_w, self.opt_a, self.scaler, self.gen = opt_w, opt_a, scaler, gumbel_gen
        self.device, self.amp_dtype, self.channels_last = device, amp_dtype, channels_last
        space = config.space
        self.cell_shape = (space.num_cells, space.num_edges(), len(CELL_PRIMITIVES))
        self.fusion_lens = [t.numel() for t in model.arch.fusion_logits()]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, tau: float, update_arch: bool = True):
        """``(ce, loss, LAT)`` of the step, after both optimisers stepped (α only if ``update_arch``)."""
        cfg, dev = self.config, self.device
        cell_g = sample_gumbel(self.cell_shape, self.gen, dev)
        fusion_g = [sample_gumbel((n,), self.gen, dev) for n in self.fusion_lens]
        images = images.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out, cell_z, fusion_z = self.net(images, tau, cell_g, fusion_g)
        ce = F.cross_entropy(out.float(), labels, ignore_index=IGNORE_INDEX)
        lat = self.table.latency(cell_z.float(), [z.float() for z in fusion_z])
        loss = ce + cfg.beta * torch.log(lat)
        self.opt_w.zero_grad(set_to_none=True)
        self.opt_a.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.optim.grad_clip:
            self.scaler.unscale_(self.opt_w)
            nn.utils.clip_grad_norm_(self.model.weight_parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.opt_w)
        if update_arch:
            self.scaler.step(self.opt_a)
        self.scaler.update()
        return ce, loss, lat


def table_on(table: LatencyTable, device: torch.device) -> LatencyTable:
    """A copy of ``table`` whose tensors live on ``device`` in float32 (the dtype the step prices
    in); every other field is kept as it is."""
    if not dataclasses.is_dataclass(table):  # an unknown table type: leave it (priced where it is)
        return table
    moved = {f.name: getattr(table, f.name) for f in dataclasses.fields(table) if f.init}
    for name, value in moved.items():
        if isinstance(value, torch.Tensor):
            moved[name] = value.to(device=device, dtype=torch.float32)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            moved[name] = type(value)(v.to(device=device, dtype=torch.float32) for v in value)
    return dataclasses.replace(table, **moved)


def make_optimizers(model: SearchModel, config: SearchConfig, total_steps: int):
    """(SGD for the weights, Adam for θ and the GGM, cosine lr scheduler for the weights)."""
    o = config.optim
    opt_w = torch.optim.SGD(model.weight_parameters(), lr=o.lr_w, momentum=o.momentum, weight_decay=o.wd_w)
    opt_a = torch.optim.Adam(model.arch_parameters(), lr=o.lr_a, betas=o.betas, weight_decay=o.wd_a)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_w, T_max=max(1, total_steps), eta_min=o.lr_w_min)
    return opt_w, opt_a, sched


def resolve_amp(config: SearchConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off":
        return None
    if device.type != "cuda":
        if config.amp == "auto":
            return None
        raise UserError(f"--amp {config.amp} needs a CUDA device (this run uses {device})")
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
