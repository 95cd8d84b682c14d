"""LGCNet: stem → 14 cells → fusion cell (or ASPP / PPM / MSCell / nothing) → head → upsample.

Only the cells up to the last fusion input exist (``SpaceConfig.num_cells`` is cut there: Table XI).

One class serves as the supernet (every candidate on every edge, mixed by architecture weights)
and as the derived network (one op per edge, ``zero`` edges removed). Because both build their
ops from :mod:`nas.ops` into identically named modules, a derived network can load the
supernet's weights for its chosen ops and compute exactly what the supernet computes with
one-hot weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from nas.blocks import ASPP, PPM, Head, Upsample, make_stem
from nas.cell import Cell
from nas.config import SpaceConfig
from nas.fold import fold_batchnorm
from nas.fusion import FusionCell, MSCell
from nas.genotype import Architecture, arch_candidates, supernet_candidates


@dataclass
class ArchWeights:
    """Mixing weights for a supernet forward: ``cells[k]`` is [edges × 8], ``fusion[e]`` a vector."""

    cells: Sequence[torch.Tensor]
    fusion: Sequence[torch.Tensor] = ()


class LGCNet(nn.Module):
    def __init__(self, config: SpaceConfig, arch: Architecture | None = None):
        super().__init__()
        self.config = config
        self.arch = arch
        if arch is None:
            cell_cands, fusion_cands = supernet_candidates(config)
        else:
            arch.validate(config)
            cell_cands, fusion_cands = arch_candidates(arch)
        self.stem = make_stem(config.stem_channels)
        self.cells = nn.ModuleList([Cell(config, k, cell_cands[k]) for k in range(config.num_cells)])
        last = config.cell_out_channels(config.num_cells - 1)
        f = config.fusion_channels
        if config.fusion == "dcfc":
            self.fusion: nn.Module | None = FusionCell([config.cell_out_channels(c) for c in config.fusion_inputs], f, fusion_cands)
        elif config.fusion == "mscell":
            self.fusion = MSCell([config.cell_out_channels(c) for c in config.fusion_inputs[1:]], f, fusion_cands)
        elif config.fusion == "aspp":
            self.fusion = ASPP(last, f)
        elif config.fusion == "ppm":
            self.fusion = PPM(last, f)
        else:
            self.fusion = None
        head_in = last if self.fusion is None else getattr(self.fusion, "out_channels", f)
        self.head = Head(head_in, config.head_channels, config.num_classes)
        self.upsample = Upsample()

    @property
    def is_supernet(self) -> bool:
        return self.arch is None

    def forward_features(self, x: torch.Tensor, weights: ArchWeights | None = None) -> torch.Tensor:
        if self.is_supernet and weights is None:
            raise ValueError("the supernet needs architecture weights")
        s0 = s1 = self.stem(x)
        outs = []
        for k, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, None if weights is None else weights.cells[k])
            outs.append(s1)
        cfg = self.config
        if cfg.fusion == "dcfc":
            return self.fusion([outs[c] for c in cfg.fusion_inputs], None if weights is None else weights.fusion)
        if cfg.fusion == "mscell":
            return self.fusion([outs[c] for c in cfg.fusion_inputs[1:]], None if weights is None else weights.fusion)
        if self.fusion is not None:
            return self.fusion(outs[-1])
        return outs[-1]

    def forward_head(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.upsample(self.head(feats), size)

    def forward(self, x: torch.Tensor, weights: ArchWeights | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, weights), tuple(x.shape[-2:]))

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())


def derive_network(config: SpaceConfig, arch: Architecture, supernet: LGCNet | None = None) -> LGCNet:
    """The discrete network for ``arch``; with ``supernet``, it takes the supernet's weights."""
    net = LGCNet(config, arch)
    if supernet is not None:
        src = supernet.state_dict()
        missing = [k for k in net.state_dict() if k not in src]
        if missing:
            raise ValueError(f"supernet lacks {len(missing)} tensors of the derived network, e.g. {missing[0]}")
        net.load_state_dict({k: src[k] for k in net.state_dict()})
    return net


def inference_network(config: SpaceConfig, arch: Architecture, state_dict: dict | None = None) -> LGCNet:
    """Eval-mode derived network with BatchNorm folded — what is timed and what ships."""
    net = LGCNet(config, arch)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    net.eval()
    return fold_batchnorm(net)
