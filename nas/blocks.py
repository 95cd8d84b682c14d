"""The fixed (non-searched) parts of LGCNet: stem, cell preprocessing, head, ASPP and PPM.

Built only here, so that the network and the LUT's fixed-part entries time the same modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.ops import ConvBN, FactorizedReduce


def make_stem(channels: tuple[int, int, int]) -> nn.Sequential:
    """Three conv layers (paper III-A): 3×3 s2 → 3×3 s1 → 3×3 s2, BN after each, ReLU between."""
    a, b, c = channels
    return nn.Sequential(
        nn.Conv2d(3, a, 3, 2, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=False),
        nn.Conv2d(a, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=False),
        nn.Conv2d(b, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c),
    )


def make_preprocess(cin: int, cout: int, reduce: bool) -> nn.Module:
    """A cell's input preprocessing: 1×1 ReLU-conv-BN, or a factorized reduction when the input
    comes from before a reduction cell (twice the resolution of the other input)."""
    return FactorizedReduce(cin, cout) if reduce else ConvBN(cin, cout, 1)


class Head(nn.Module):
    """3×3 conv → BN → ReLU → 1×1 conv to classes (logits at the feature stride)."""

    def __init__(self, cin: int, mid: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, mid, 3, 1, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=False))
        self.classifier = nn.Conv2d(mid, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class Upsample(nn.Module):
    """Bilinear upsampling of the logits to the input size (``fixed.upsample`` in the LUT)."""

    def __init__(self, size: tuple[int, int] | None = None):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size or self.size), mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3) — the Table X ablation in place of the fusion cell.

    1×1 conv, three 3×3 dilated convs (rates 6, 12, 18 — DeepLabv3 at output stride 16) and image
    pooling, concatenated and projected to ``cout``.
    """

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        def cbr(k: int, d: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, 1, d * (k - 1) // 2, dilation=d, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=False))
        self.branches = nn.ModuleList([cbr(1, 1)] + [cbr(3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                                  nn.BatchNorm2d(cout), nn.ReLU(inplace=False))
        n = len(self.branches) + 1
        self.project = nn.Sequential(nn.Conv2d(n * cout, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(outs, 1))


class PPM(nn.Module):
    """Pyramid pooling module (PSPNet, bins 1, 2, 3, 6) — the other Table X ablation."""

    def __init__(self, cin: int, cout: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        red = max(1, cin // len(bins))
        self.stages = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(cin, red, 1, bias=False), nn.BatchNorm2d(red), nn.ReLU(inplace=False))
            for b in bins])
        self.project = nn.Sequential(nn.Conv2d(cin + red * len(bins), cout, 3, 1, 1, bias=False),
                                     nn.BatchNorm2d(cout), nn.ReLU(inplace=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return self.project(torch.cat(outs, 1))
