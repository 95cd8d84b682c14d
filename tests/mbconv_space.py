"""A second, realistic search space for latbench's tests: an MBConv chain (ProxylessNAS / FBNet
style), written only against latbench's protocol (nothing of LGCNet).

Layout at input H×W (batch N): a stem (3×3 conv, stride 2, 16 ch), then ``blocks`` searchable
positions ``b0 … b{k}`` in three stages (channels 16 → 24 → 32, stride 2 at the first block of
stages 2 and 3), each choosing an inverted-residual block ``mb_k{3,5}_e{3,6}`` or — where input
and output shapes agree — ``skip`` (an identity: a pass-through, 0 µs); then a head (1×1 conv to
64 ch, global pooling, linear to 10 classes).
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import torch
from torch import nn

from latbench.space import Entry, OpSpec, Position

MB_OPS = ("mb_k3_e3", "mb_k3_e6", "mb_k5_e3", "mb_k5_e6")
STAGES = ((16, 1, 2), (24, 2, 2), (32, 2, 2))  # (channels, first stride, blocks)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class Head(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class MBConvSpace:
    name = "mbconv"
    version = 1

    def __init__(self, width: int = 1) -> None:
        self.width = int(width)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MBConvSpace":
        return cls(**dict(config))

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "config": {"width": self.width}}

    def _blocks(self) -> list[tuple[str, int, int, int, str]]:
        """(position, cin, cout, stride, stage) of every searchable block."""
        out, cin, k = [], 16 * self.width, 0
        for s, (c, stride, n) in enumerate(STAGES):
            for i in range(n):
                cout = c * self.width
                out.append((f"b{k}", cin, cout, stride if i == 0 else 1, f"stage{s + 1}"))
                cin, k = cout, k + 1
        return out

    def _candidates(self, cin: int, cout: int, stride: int) -> tuple[str, ...]:
        return MB_OPS + (("skip",) if stride == 1 and cin == cout else ())

    def positions(self) -> list[Position]:
        pos = [Position("fixed.stem", ("stem",), "fixed", "fixed")]
        pos += [Position(p, self._candidates(ci, co, s), "candidate", st) for p, ci, co, s, st in self._blocks()]
        return pos + [Position("fixed.head", ("head",), "fixed", "fixed")]

    def enumerate(self, height: int, width: int, batch: int = 1) -> list[Entry]:
        h, w = (height + 1) // 2, (width + 1) // 2
        out = [Entry("fixed.stem", "stem", OpSpec("stem", ((batch, 3, height, width),), (("cout", 16 * self.width),)),
                     "fixed", "fixed")]
        for p, ci, co, s, st in self._blocks():
            for op in self._candidates(ci, co, s):
                out.append(Entry(p, op, OpSpec(op, ((batch, ci, h, w),), (("cout", co), ("stride", s))), "candidate", st))
            if s == 2:
                h, w = (h + 1) // 2, (w + 1) // 2
        out.append(Entry("fixed.head", "head", OpSpec("head", ((batch, 32 * self.width, h, w),)), "fixed", "fixed"))
        return out

    def build_op(self, spec: OpSpec) -> nn.Module:
        cin = spec.inputs[0][1]
        if spec.op == "stem":
            m: nn.Module = nn.Sequential(nn.Conv2d(3, spec.param("cout"), 3, 2, 1, bias=False),
                                         nn.BatchNorm2d(spec.param("cout")), nn.ReLU6())
        elif spec.op == "head":
            m = Head(cin)
        elif spec.op == "skip":
            m = nn.Identity()
        else:
            k, e = int(spec.op[4]), int(spec.op[7])
            m = MBConv(cin, spec.param("cout"), k, e, spec.param("stride"))
        return m.eval()

    def sample_architecture(self, rng: random.Random) -> dict[str, Any]:
        return {p: rng.choice(self._candidates(ci, co, s)) for p, ci, co, s, _ in self._blocks()}

    def architecture_rows(self, arch: Mapping[str, Any]) -> list[tuple[str, str]]:
        return [("fixed.stem", "stem")] + [(p, arch[p]) for p, *_ in self._blocks()] + [("fixed.head", "head")]

    def build_architecture(self, arch: Mapping[str, Any]) -> nn.Module:
        layers = [self.build_op(OpSpec("stem", ((1, 3, 8, 8),), (("cout", 16 * self.width),)))]
        for p, ci, co, s, _ in self._blocks():
            layers.append(self.build_op(OpSpec(arch[p], ((1, ci, 8, 8),), (("cout", co), ("stride", s)))))
        layers.append(Head(32 * self.width))
        net = nn.Sequential(*layers).eval()
        net.whole_network = True  # for tests' fake backends, which price a network differently from an op
        return net
