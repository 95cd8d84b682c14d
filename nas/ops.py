"""The one LGCNet operations registry.

Every candidate op of the search space is defined here, once. The LUT builder (through
:mod:`nas.space`), the supernet, the derived network and the FPS tool all build ops from these
factories, so the op that is timed is the op that is searched and the op that ships.

- ``CELL_PRIMITIVES`` — Table II of the paper, in α's column order for cells.
- ``FUSION_PRIMITIVES`` — Table III, α's column order for the fusion cell's ordinary edges.
- ``UP_PRIMITIVES`` — the two choices of an "Up×2" fusion edge (deconvolution, interpolation).

Factories share one signature, ``OPS[name](cin, cout, stride) -> nn.Module`` (``UP_OPS[name](c)``
for Up×2 edges, whose modules take ``forward(x, size)``). Shapes follow the ceil rule of a
stride-2, padding-1 3×3 conv: an H×W input gives ceil(H/2)×ceil(W/2), odd sizes included.

Where the paper is silent (it names ops, not their layer order) we follow DARTS' conventions:
ReLU → conv → BN for convolutions; a "separable conv" is ReLU → depthwise 3×3 → pointwise 1×1 →
BN (one depthwise-separable layer, not DARTS' doubled stack: this is a real-time search space);
a stride-2 skip is a factorized reduction; global-pooling ops are adaptive average pooling →
1×1 conv → BN → ReLU → bilinear upsampling back to the input size.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

CELL_PRIMITIVES: tuple[str, ...] = (
    "max_pool_3x3",
    "skip_connect",
    "conv_3x3",
    "zero",
    "sep_conv_3x3",
    "dil_sep_conv_3x3_d2",
    "dil_sep_conv_3x3_d4",
    "dil_sep_conv_3x3_d8",
)

FUSION_PRIMITIVES: tuple[str, ...] = (
    "conv_1x1",
    "conv_3x3",
    "sep_conv_3x3",
    "dil_sep_conv_3x3_d2",
    "dil_sep_conv_3x3_d4",
    "dil_sep_conv_3x3_d8",
    "dil_sep_conv_3x3_d12",
    "gpool_1x1",
    "gpool_2x2",
    "gpool_5x5",
)

UP_PRIMITIVES: tuple[str, ...] = ("deconv", "interp")

#: The op whose output is all zeros; the deployed network removes edges that chose it.
ZERO = "zero"


def out_size(n: int, stride: int) -> int:
    """Spatial size after a stride-``stride`` op with 'same' padding (ceil division)."""
    return -(-n // stride)


class ConvBN(nn.Sequential):
    """ReLU (optional) → k×k conv (dilation d, stride s, 'same' padding) → BN."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 relu: bool = True, groups: int = 1):
        pad = dilation * (kernel - 1) // 2
        layers: list[nn.Module] = [nn.ReLU(inplace=False)] if relu else []
        layers += [nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
                   nn.BatchNorm2d(cout)]
        super().__init__(*layers)


class SepConv(nn.Sequential):
    """ReLU → depthwise 3×3 (dilation d, stride s) → pointwise 1×1 → BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        pad = dilation
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(cin, cin, 3, stride, pad, dilation=dilation, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


class FactorizedReduce(nn.Module):
    """Stride-2 'skip': two 1×1 stride-2 convs on pixel grids offset by one, concatenated, BN.

    The offset branch pads right/bottom so odd sizes give ceil(H/2)×ceil(W/2) like every other
    stride-2 op (DARTS' version needs even sizes).
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = nn.Conv2d(cin, cout // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(cin, cout - cout // 2, 1, stride=2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        a = self.conv_a(x)
        b = self.conv_b(F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1)))
        return self.bn(torch.cat([a, b], dim=1))

    def fold_bn(self) -> None:
        """Fold the BN into the two convs (inference only)."""
        from nas.fold import fold_conv_bn_params

        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        ca = self.conv_a.out_channels
        wa, ba = fold_conv_bn_params(self.conv_a.weight, None, self.bn, slice(0, ca))
        wb, bb = fold_conv_bn_params(self.conv_b.weight, None, self.bn, slice(ca, None))
        for conv, w, b in ((self.conv_a, wa, ba), (self.conv_b, wb, bb)):
            conv.weight = nn.Parameter(w)
            conv.bias = nn.Parameter(b)
        self.bn = nn.Identity()


class Zero(nn.Module):
    """All-zero output of the right shape (only ever used inside the supernet)."""

    def __init__(self, cout: int, stride: int):
        super().__init__()
        self.cout, self.stride = cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return x.new_zeros(n, self.cout, out_size(h, self.stride), out_size(w, self.stride))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class GlobalPoolConv(nn.Module):
    """Adaptive average pooling to k×k → 1×1 conv → BN → ReLU → bilinear upsampling to the input size."""

    def __init__(self, cin: int, cout: int, bins: int):
        super().__init__()
        self.bins = bins
        self.pool = nn.AdaptiveAvgPool2d(bins)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.pool(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class Deconv(nn.Module):
    """Up×2 by a 4×4 stride-2 transposed conv, cropped to the target size (odd sizes)."""

    def __init__(self, c: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(c, c, 4, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        y = self.deconv(x)
        if size is not None:
            y = y[:, :, : size[0], : size[1]]
        return y


class Interp(nn.Module):
    """Up×2 by bilinear interpolation to the target size."""

    def __init__(self, c: int):
        super().__init__()

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _skip(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return Identity()
    if stride == 2:
        return FactorizedReduce(cin, cout)
    return ConvBN(cin, cout, 1)


def _max_pool(cin: int, cout: int, stride: int) -> nn.Module:
    if cin != cout:
        raise ValueError("max_pool_3x3 needs cin == cout")
    return nn.MaxPool2d(3, stride=stride, padding=1)


OpFactory = Callable[[int, int, int], nn.Module]

OPS: dict[str, OpFactory] = {
    "max_pool_3x3": _max_pool,
    "skip_connect": _skip,
    "zero": lambda cin, cout, stride: Zero(cout, stride),
    "conv_1x1": lambda cin, cout, stride: ConvBN(cin, cout, 1, stride),
    "conv_3x3": lambda cin, cout, stride: ConvBN(cin, cout, 3, stride),
    "sep_conv_3x3": lambda cin, cout, stride: SepConv(cin, cout, stride, 1),
    "dil_sep_conv_3x3_d2": lambda cin, cout, stride: SepConv(cin, cout, stride, 2),
    "dil_sep_conv_3x3_d4": lambda cin, cout, stride: SepConv(cin, cout, stride, 4),
    "dil_sep_conv_3x3_d8": lambda cin, cout, stride: SepConv(cin, cout, stride, 8),
    "dil_sep_conv_3x3_d12": lambda cin, cout, stride: SepConv(cin, cout, stride, 12),
    "gpool_1x1": lambda cin, cout, stride: GlobalPoolConv(cin, cout, 1),
    "gpool_2x2": lambda cin, cout, stride: GlobalPoolConv(cin, cout, 2),
    "gpool_5x5": lambda cin, cout, stride: GlobalPoolConv(cin, cout, 5),
}

UP_OPS: dict[str, Callable[[int], nn.Module]] = {
    "deconv": Deconv,
    "interp": Interp,
}

#: Dilation of each op, for LUT columns and reports (1 for everything not dilated).
DILATION: dict[str, int] = {name: int(name.rsplit("_d", 1)[1]) if "_d" in name and name.startswith("dil_") else 1
                            for name in list(OPS) + list(UP_OPS)}


def build_op(name: str, cin: int, cout: int, stride: int = 1) -> nn.Module:
    """Build a candidate op by name (cell, fusion or Up×2 op)."""
    if name in OPS:
        return OPS[name](cin, cout, stride)
    if name in UP_OPS:
        if cin != cout:
            raise ValueError(f"{name} keeps its channel count (cin={cin}, cout={cout})")
        return UP_OPS[name](cin)
    raise KeyError(f"unknown op {name!r}; known: {sorted(OPS) + sorted(UP_OPS)}")
