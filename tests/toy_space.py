"""A tiny but real search space for latbench's tests: real ``nn`` ops on small tensors.

Layout at input H×W (batch N):

- ``fixed.stem``: 3×3 conv 3 -> C, stride 2 (input N×3×H×W);
- ``cell0.e0``, ``cell0.e1``, ``cell1.e0``: candidates ``conv_3x3``, ``skip``, ``max_pool_3x3``,
  ``zero`` on an N×C×H/2×W/2 tensor -- all three positions see the same shape, so their OpSpecs
  coincide and each op is timed once for the three (deduplication);
- ``fixed.add``: the sum of two N×C×H/2×W/2 tensors (a two-input fixed part);
- ``fixed.head``: 1×1 conv C -> 2.

``zero`` is analytic (0 µs, never timed). ``fail_op`` can be made a candidate to test failures.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import torch
from torch import nn

from latbench.space import Entry, OpSpec, Position

CELL_OPS = ("conv_3x3", "skip", "max_pool_3x3", "zero")
CELL_POSITIONS = ("cell0.e0", "cell0.e1", "cell1.e0")


class Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class Fail(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this op always fails")


class ToySpace:
    name = "toy"
    version = 1

    def __init__(self, channels: int = 4, extra_ops: tuple[str, ...] = ()) -> None:
        self.channels = int(channels)
        self.extra_ops = tuple(extra_ops)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ToySpace":
        cfg = dict(config)
        space = cls(channels=int(cfg.pop("channels", 4)), extra_ops=tuple(cfg.pop("extra_ops", ())))
        if cfg:
            raise ValueError(f"unknown toy space option(s): {', '.join(sorted(cfg))}")
        return space

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version,
                "config": {"channels": self.channels, "extra_ops": list(self.extra_ops)}}

    @property
    def cell_ops(self) -> tuple[str, ...]:
        return CELL_OPS + self.extra_ops

    def positions(self) -> list[Position]:
        pos = [Position("fixed.stem", ("stem",), "fixed", "fixed")]
        pos += [Position(p, self.cell_ops, "candidate", "s2") for p in CELL_POSITIONS]
        pos += [Position("fixed.add", ("add",), "fixed", "fixed"), Position("fixed.head", ("head",), "fixed", "fixed")]
        return pos

    def enumerate(self, height: int, width: int, batch: int = 1) -> list[Entry]:
        c = self.channels
        h2, w2 = (height + 1) // 2, (width + 1) // 2
        feat = (batch, c, h2, w2)
        out = [Entry("fixed.stem", "stem", OpSpec("stem", ((batch, 3, height, width),), (("cout", c), ("stride", 2))),
                     "fixed", "fixed")]
        for p in CELL_POSITIONS:
            for op in self.cell_ops:
                out.append(Entry(p, op, OpSpec(op, (feat,), (("cout", c), ("stride", 1))), "candidate", "s2",
                                 analytic=(op == "zero")))
        out.append(Entry("fixed.add", "add", OpSpec("add", (feat, feat)), "fixed", "fixed"))
        out.append(Entry("fixed.head", "head", OpSpec("head", (feat,), (("cout", 2),)), "fixed", "fixed"))
        return out

    def build_op(self, spec: OpSpec) -> nn.Module:
        cin = spec.inputs[0][1]
        cout = spec.param("cout", cin)
        op = spec.op
        if op == "stem":
            m: nn.Module = nn.Conv2d(cin, cout, 3, stride=spec.param("stride", 1), padding=1)
        elif op == "conv_3x3":
            m = nn.Conv2d(cin, cout, 3, padding=1)
        elif op == "skip":
            m = nn.Identity()
        elif op == "max_pool_3x3":
            m = nn.MaxPool2d(3, stride=1, padding=1)
        elif op == "zero":
            m = Zero()
        elif op == "add":
            m = Add()
        elif op == "head":
            m = nn.Conv2d(cin, cout, 1)
        elif op == "fail_op":
            m = Fail()
        else:
            raise KeyError(f"unknown toy op {op!r}")
        return m.eval()

    def sample_architecture(self, rng: random.Random) -> dict[str, Any]:
        return {p: rng.choice(self.cell_ops) for p in CELL_POSITIONS}

    def sample_from_search(self, rng: random.Random, path: Any) -> dict[str, Any]:
        """A search's result for the toy space: a JSON file {"weights": {op: weight}} (the op mix a
        search prefers), drawn per position."""
        import json
        from pathlib import Path

        weights = json.loads(Path(path).read_text())["weights"]
        ops = list(self.cell_ops)
        return {p: rng.choices(ops, [float(weights.get(o, 0.0)) for o in ops])[0] for p in CELL_POSITIONS}

    def architecture_rows(self, arch: Mapping[str, Any]) -> list[tuple[str, str]]:
        return [("fixed.stem", "stem")] + [(p, arch[p]) for p in CELL_POSITIONS] + \
            [("fixed.add", "add"), ("fixed.head", "head")]

    def build_architecture(self, arch: Mapping[str, Any]) -> nn.Module:
        space = self
        c = self.channels

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
                self.ops = nn.ModuleList(space.build_op(OpSpec(arch[p], ((1, c, 8, 8),), (("cout", c),)))
                                         for p in CELL_POSITIONS)
                self.head = nn.Conv2d(c, 2, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = self.stem(x)
                a = self.ops[0](x)
                b = self.ops[1](x)
                y = self.ops[2](a) + b
                return self.head(y)

        return Net().eval()
