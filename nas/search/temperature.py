"""The Gumbel-softmax temperature λ (eq. 4): 1.0 at the first step, 0.03 at the last (paper IV-A).

The paper says λ "gradually decreases" from 1.0 to 0.03 and nothing about the curve. We anneal
per optimisation step, geometrically by default (``kind="exp"``: λ_t = λ_0 · (λ_min/λ_0)^(t/(T−1)),
as FBNet's exponential decay, reaching λ_min exactly at the last step T−1); ``"linear"`` and
``"cosine"`` are there for comparison. λ is a pure function of (step, total steps): nothing to
checkpoint, and a resumed run sees the same λ at the same step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from latbench.errors import UserError

KINDS = ("exp", "linear", "cosine")


@dataclass(frozen=True)
class TemperatureSchedule:
    start: float = 1.0
    end: float = 0.03
    kind: str = "exp"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown temperature schedule {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not (self.start > 0 and self.end > 0):
            raise UserError(f"temperatures must be positive (start {self.start}, end {self.end})")

    def at(self, step: int, total_steps: int) -> float:
        """λ at optimisation step ``step`` (0-based) of ``total_steps``."""
        if total_steps <= 1:
            return self.start
        t = min(max(step, 0), total_steps - 1) / (total_steps - 1)
        if self.kind == "exp":
            return self.start * (self.end / self.start) ** t
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        return self.end + 0.5 * (self.start - self.end) * (1.0 + math.cos(math.pi * t))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TemperatureSchedule":
        return cls(**dict(d))
