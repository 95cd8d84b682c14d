"""Decision flips between two LUTs: at each candidate position, would a latency-constrained search
choose differently? (cheapest-op flips, order inversions, the penalty; definitions in
:mod:`latbench.lut.compare`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from latbench.space import format_resolution

USABLE = ("ok", "analytic")


@dataclass(frozen=True)
class PositionDecision:
    """The choice at one candidate position and resolution under each LUT."""

    position: str
    resolution: str
    stage: str
    n_ops: int
    cheapest_baseline: str
    cheapest_other: str
    near_cheapest_baseline: list[str]
    near_cheapest_other: list[str]
    cheapest_flip: bool
    pairs: int
    inversions: int
    inverted_pairs: list[tuple[str, str]]
    order_baseline: list[str]
    order_other: list[str]
    penalty_us: float
    penalty_rel: float

    @property
    def order_flip(self) -> bool:
        return self.inversions > 0


@dataclass(frozen=True)
class DecisionFlips:
    tie_rel: float
    tie_abs_us: float
    positions: int
    skipped: int
    cheapest_flips: int
    order_flips: int
    inversions: int
    pairs: int
    by_stage: dict[str, dict[str, int]]
    decisions: list[PositionDecision]

    @property
    def flipped(self) -> list[PositionDecision]:
        return [d for d in self.decisions if d.cheapest_flip or d.order_flip]


def compare_latencies(x: float, y: float, tie_rel: float, tie_abs_us: float) -> int:
    """-1 if ``x`` is strictly cheaper than ``y``, +1 if dearer, 0 if they tie."""
    if abs(x - y) <= tie_rel * max(abs(x), abs(y)) + tie_abs_us:
        return 0
    return -1 if x < y else 1


def decide_position(position: str, resolution: str, stage: str, ops: Sequence[str], a: Sequence[float],
                    b: Sequence[float], analytic: Sequence[bool], tie_rel: float,
                    tie_abs_us: float) -> PositionDecision | None:
    """The decision at one position from the candidate ops' latencies in each LUT (see the module
    docstring); None when fewer than two ops, or no timed op, are usable in both."""
    n = len(ops)
    timed = [i for i in range(n) if not analytic[i]]
    if n < 2 or not timed:
        return None

    def near_cheapest(v: Sequence[float]) -> list[str]:
        lo = min(v[i] for i in timed)
        return sorted((ops[i] for i in timed if compare_latencies(v[i], lo, tie_rel, tie_abs_us) == 0),
                      key=lambda o: (v[ops.index(o)], o))

    na, nb = near_cheapest(a), near_cheapest(b)
    best_a = min(timed, key=lambda i: (a[i], ops[i]))
    best_b = min(timed, key=lambda i: (b[i], ops[i]))
    flip = not (set(na) & set(nb))
    inverted: list[tuple[str, str]] = []
    pairs = 0
    for i in range(n):
        for j in range(i + 1, n):
            pairs += 1
            ca = compare_latencies(a[i], a[j], tie_rel, tie_abs_us)
            cb = compare_latencies(b[i], b[j], tie_rel, tie_abs_us)
            if ca * cb < 0:  # strictly opposite orders
                inverted.append((ops[i], ops[j]) if ca < 0 else (ops[j], ops[i]))
    penalty = float(b[best_a] - b[best_b]) if flip else 0.0
    return PositionDecision(
        position=position, resolution=resolution, stage=stage, n_ops=n,
        cheapest_baseline=ops[best_a], cheapest_other=ops[best_b], near_cheapest_baseline=na,
        near_cheapest_other=nb, cheapest_flip=flip, pairs=pairs, inversions=len(inverted),
        inverted_pairs=inverted,
        order_baseline=[ops[i] for i in sorted(range(n), key=lambda i: (a[i], ops[i]))],
        order_other=[ops[i] for i in sorted(range(n), key=lambda i: (b[i], ops[i]))],
        penalty_us=penalty, penalty_rel=penalty / b[best_b] if flip and b[best_b] > 0 else 0.0,
    )


def decision_flips(m: pd.DataFrame, tie_rel: float, tie_abs_us: float) -> DecisionFlips:
    """The decision at every candidate position and resolution of the matched frame ``m``
    (:func:`latbench.lut.compare.match_frames`) under each LUT, and the flips between them."""
    both = m[(m["_merge"] == "both") & (m["kind"] == "candidate")]
    usable = both[both["status_a"].isin(USABLE) & both["status_b"].isin(USABLE)].copy()
    for s in ("a", "b"):
        usable[f"v_{s}"] = np.where(usable[f"status_{s}"] == "analytic", 0.0, usable[f"median_us_{s}"])
    usable = usable[np.isfinite(usable["v_a"]) & np.isfinite(usable["v_b"])]
    decisions: list[PositionDecision] = []
    skipped = 0
    for (pos, h, w), g in usable.groupby(["position", "height", "width"], sort=True):
        g = g.sort_values("op")
        analytic = ((g["status_a"] == "analytic") | (g["status_b"] == "analytic")).tolist()
        d = decide_position(str(pos), format_resolution((h, w)), str(g["stage"].iloc[0]), g["op"].astype(str).tolist(),
                            g["v_a"].astype(float).tolist(), g["v_b"].astype(float).tolist(), analytic,
                            tie_rel, tie_abs_us)
        if d is None:
            skipped += 1
        else:
            decisions.append(d)
    by_stage: dict[str, dict[str, int]] = {}
    for d in decisions:
        s = by_stage.setdefault(d.stage, {"positions": 0, "cheapest_flips": 0, "order_flips": 0, "inversions": 0,
                                          "pairs": 0})
        s["positions"] += 1
        s["cheapest_flips"] += int(d.cheapest_flip)
        s["order_flips"] += int(d.order_flip)
        s["inversions"] += d.inversions
        s["pairs"] += d.pairs
    return DecisionFlips(
        tie_rel=tie_rel, tie_abs_us=tie_abs_us, positions=len(decisions), skipped=skipped,
        cheapest_flips=sum(d.cheapest_flip for d in decisions), order_flips=sum(d.order_flip for d in decisions),
        inversions=sum(d.inversions for d in decisions), pairs=sum(d.pairs for d in decisions),
        by_stage=dict(sorted(by_stage.items())), decisions=decisions)


def iter_flipped(flips: DecisionFlips) -> Iterable[PositionDecision]:
    """Flipped positions, cheapest-op flips first, then by number of inversions."""
    return sorted(flips.flipped, key=lambda d: (not d.cheapest_flip, -d.inversions, d.resolution, d.position))
