"""The network ImageNet pre-training trains: a derived LGCNet's backbone + a classification head.

The backbone is the stem and the cells of :class:`nas.network.LGCNet`, built by the same functions
(:func:`nas.blocks.make_stem`, :class:`nas.cell.Cell` with the genotype's op per edge) under the
same attribute names, so its state-dict keys and shapes are exactly those of the segmentation
network's ``stem.*`` / ``cells.*`` (a test checks this). The fusion cell and the segmentation head
are not part of it: they start from scratch at fine-tuning.

Head (ours; the paper does not describe its pre-training network): the last cell's output
(stride 16) → optionally a 1×1 conv → BN → ReLU to ``head_channels`` (MobileNet-style; default
1024, because the last cell of an LGCNet is narrow: 64 channels at width 1) → global average
pooling → dropout → linear classifier. Weights: PyTorch's default initialisation, as the
segmentation network.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.blocks import make_stem
from nas.cell import Cell
from nas.config import SpaceConfig
from nas.genotype import Architecture, arch_candidates
from nas.pretrain import is_backbone_key


class ClassificationHead(nn.Module):
    def __init__(self, cin: int, num_classes: int, head_channels: int = 1024, dropout: float = 0.0):
        super().__init__()
        if head_channels > 0:
            self.expand: nn.Module = nn.Sequential(nn.Conv2d(cin, head_channels, 1, bias=False),
                                                   nn.BatchNorm2d(head_channels), nn.ReLU(inplace=False))
            cin = head_channels
        else:
            self.expand = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.expand(x)), 1)))


class LGCNetClassifier(nn.Module):
    """``stem`` → ``cells`` (the genotype's ops) → ``pretrain_head`` (logits ``[N, num_classes]``)."""

    def __init__(self, config: SpaceConfig, arch: Architecture, num_classes: int, *,
                 head_channels: int = 1024, dropout: float = 0.0):
        super().__init__()
        arch.validate(config)
        cell_cands, _ = arch_candidates(arch)
        self.config, self.arch = config, arch
        self.stem = make_stem(config.stem_channels)
        self.cells = nn.ModuleList([Cell(config, k, cell_cands[k]) for k in range(config.num_cells)])
        # named HEAD_PREFIX: the one name a segmentation network does not have
        self.pretrain_head = ClassificationHead(config.cell_out_channels(config.num_cells - 1), num_classes,
                                                head_channels, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last cell's output (stride 16), as :meth:`nas.network.LGCNet.forward_features` runs
        the cells."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return s1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pretrain_head(self.forward_features(x))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of the backbone and of everything else (the head)."""
    counts = {"backbone": 0, "head": 0}
    for name, p in model.named_parameters():
        counts["backbone" if is_backbone_key(name) else "head"] += p.numel()
    return counts


__all__ = ["ClassificationHead", "LGCNetClassifier", "parameter_counts"]
