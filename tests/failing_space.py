"""A toy space whose ops nearly all fail to build (for "a build where most entries fail")."""

from __future__ import annotations

from typing import Any, Mapping

from latbench.space import OpSpec
from toy_space import ToySpace


class MostlyFailingSpace(ToySpace):
    """:class:`toy_space.ToySpace`, but every op except the two-input ``add`` fails to build."""

    name = "toy-failing"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MostlyFailingSpace":
        base = ToySpace.from_config(config)
        return cls(channels=base.channels, extra_ops=base.extra_ops)

    def build_op(self, spec: OpSpec):
        if spec.op != "add":
            raise RuntimeError(f"{spec.op} cannot be built here")
        return super().build_op(spec)
