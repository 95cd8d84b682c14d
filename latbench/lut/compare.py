"""Compare LUTs: what changes between two devices, backends, precisions, cache states or thread
counts, and would a latency-constrained search choose differently? Pure computation on
:class:`~latbench.lut.table.LUT` objects: matching and the entry points here, ratios and ranks in
:mod:`latbench.lut.ranks`, decision flips in :mod:`latbench.lut.flips`; rendering lives in
:mod:`latbench.lut.report_md`, :mod:`latbench.lut.plots` and the ``compare-lut`` command.

Definitions (every figure in :meth:`Comparison.to_dict`):

- **Matching.** Two rows match when they have the same ``(position, op, key, height, width)``
  (:data:`MATCH_ON`). Backend, precision, cache and thread count are deliberately *not* part of
  it: they are what is being compared. A LUT holding several rows for one match key (e.g. a
  forced merge of two backends) is refused.
- **Ratio** of a matched entry = ``other / baseline`` median µs: > 1 means slower than the
  baseline. **Speed-up** = ``baseline / other`` = 1 / ratio: > 1 means faster than the baseline.
  Group figures are geometric means over matched entries (one per position that uses the op,
  i.e. weighted as the network uses them). Only entries ``ok`` in both LUTs with a positive
  median count; ``analytic`` rows (the ``zero`` op, 0 µs by definition) and failed rows are
  counted but excluded.
- **Rank agreement** (scipy Spearman ρ and Kendall τ-b) over the same entries, once over all
  matched entries and once over distinct op signatures (``key``; a timing shared by several
  positions counts once). Per position (one network resolution at a time): τ and ρ of the timed
  candidate ops at that position; positions where either side is constant give no τ.
- **Decision flips**, per candidate position and resolution, over the candidate ops usable in
  both LUTs. Two latencies *tie* when ``|x − y| ≤ tie_rel·max(x, y) + tie_abs_us``.

  * *cheapest-op flip*: the sets of near-cheapest **timed** ops (those tying with the minimum)
    are disjoint between the two LUTs. Analytic ops are left out here on purpose: ``zero`` is
    0 µs in every LUT, so it would be the cheapest everywhere and no flip could ever show; the
    derived network also never keeps a ``zero`` edge as "the cheapest real op".
  * *order flip*: at least one *inversion*, a pair of ops strictly ordered one way in the
    baseline and strictly the other way in the other LUT (ties in either LUT are not
    inversions). Analytic ops **are** part of the order: their 0 µs is a real price the search
    pays, and a timed op that ties with 0 µs in one LUT but not in the other changes the
    search's choice between it and ``zero``. With all timed ops > tolerance, ``zero`` pairs
    can never invert and only add to ``pairs``.
  * ``penalty_us``: what the baseline's cheapest choice costs on the other device above the
    other device's own cheapest op (0 when there is no flip).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from latbench.errors import LUTError, UserError
from latbench.lut.flips import DecisionFlips, decision_flips
from latbench.lut.ranks import (GroupStat, PositionRank, RankAgreement, TauSummary, group_stat, groups,
                                position_ranks, rank_agreement, rank_distinct, tau_summary)
from latbench.lut.table import LUT

MATCH_ON = ("position", "op", "key", "height", "width")


# ---- options and result types ------------------------------------------------------------------
@dataclass(frozen=True)
class CompareOptions:
    """``tie_rel``/``tie_abs_us``: when two latencies count as equal for decision flips;
    ``max_listed``: how many examples of one-sided entries to keep."""

    tie_rel: float = 0.02
    tie_abs_us: float = 0.0
    max_listed: int = 10

    def __post_init__(self) -> None:
        if not (self.tie_rel >= 0 and self.tie_abs_us >= 0):
            raise UserError("tie tolerances must be >= 0")
        if self.max_listed < 0:
            raise UserError("max_listed must be >= 0")


@dataclass(frozen=True)
class LUTInfo:
    """One compared LUT: its label, file and provenance."""

    label: str
    path: str
    rows: int
    resolutions: list[str]
    meta: dict[str, Any]


@dataclass(frozen=True)
class Matching:
    """How two LUTs' rows line up. ``only_*_examples``: the first few ``position/op@HxW``."""

    baseline_rows: int
    other_rows: int
    matched: int
    compared: int
    analytic: int
    failed_baseline: int
    failed_other: int
    nonpositive: int
    only_baseline: int
    only_other: int
    only_baseline_examples: list[str]
    only_other_examples: list[str]


@dataclass
class PairComparison:
    """One LUT against the baseline. ``entries``: the matched frame (for plots), not serialised
    row by row except through :meth:`entry_records`."""

    baseline: str
    other: str
    matching: Matching
    overall: GroupStat
    by_op: list[GroupStat]
    by_stage: list[GroupStat]
    by_resolution: list[GroupStat]
    rank_entries: RankAgreement
    rank_distinct: RankAgreement
    rank_positions: list[PositionRank]
    tau_summary: TauSummary
    flips: DecisionFlips
    entries: pd.DataFrame = field(repr=False)

    def entry_records(self) -> list[dict[str, Any]]:
        cols = ["position", "op", "key", "stage", "kind", "height", "width", "median_us_a", "median_us_b", "ratio"]
        out = []
        for r in self.entries[cols].itertuples(index=False):
            out.append({"position": r.position, "op": r.op, "key": r.key, "stage": r.stage, "kind": r.kind,
                        "resolution": f"{int(r.height)}x{int(r.width)}", "baseline_us": float(r.median_us_a),
                        "other_us": float(r.median_us_b), "ratio": float(r.ratio)})
        return out

    def to_dict(self) -> dict[str, Any]:
        flips = asdict(self.flips)
        for d, obj in zip(flips["decisions"], self.flips.decisions):
            d["order_flip"] = obj.order_flip
            d["inverted_pairs"] = [list(p) for p in obj.inverted_pairs]
        return _clean({
            "baseline": self.baseline, "other": self.other, "matching": asdict(self.matching),
            "overall": asdict(self.overall), "by_op": [asdict(g) for g in self.by_op],
            "by_stage": [asdict(g) for g in self.by_stage],
            "by_resolution": [asdict(g) for g in self.by_resolution],
            "rank": {"entries": asdict(self.rank_entries), "distinct_keys": asdict(self.rank_distinct),
                     "per_position_summary": asdict(self.tau_summary),
                     "per_position": [asdict(p) for p in self.rank_positions]},
            "decision_flips": flips, "entries": self.entry_records(),
        })


@dataclass
class Comparison:
    luts: list[LUTInfo]
    baseline: str
    options: CompareOptions
    provenance: list[tuple[str, list[Any], bool]]
    pairs: list[PairComparison]

    def to_dict(self) -> dict[str, Any]:
        return _clean({
            "baseline": self.baseline,
            "options": asdict(self.options),
            "definitions": {
                "match_on": list(MATCH_ON),
                "ratio": "other_us / baseline_us (> 1: slower than baseline)",
                "speedup": "baseline_us / other_us (> 1: faster than baseline)",
                "tie": "|x - y| <= tie_rel * max(x, y) + tie_abs_us",
            },
            "luts": [asdict(x) for x in self.luts],
            "provenance": [{"field": f, "values": v, "differs": d} for f, v, d in self.provenance],
            "pairs": [p.to_dict() for p in self.pairs],
        })


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# ---- matching ----------------------------------------------------------------------------------
def _res(h: Any, w: Any) -> str:
    return f"{int(h)}x{int(w)}"


def _check_unique(lut: LUT, label: str) -> None:
    df = lut.df
    dup = df.duplicated(subset=list(MATCH_ON), keep=False)
    if dup.any():
        combos = sorted({f"{b}/{p}/batch {n}" for b, p, n in zip(df["backend"], df["precision"], df["batch"])})
        raise LUTError(f"LUT {label!r} holds {int(dup.sum())} rows that share a (position, op, key, resolution) "
                       f"({', '.join(combos)}); compare LUTs that hold one backend/precision/batch each")


def match_frames(a: LUT, b: LUT) -> pd.DataFrame:
    """Outer join of two LUTs on :data:`MATCH_ON`; ``_merge`` says which side a row exists on."""
    keep = list(MATCH_ON) + ["kind", "stage", "status", "median_us"]
    fa = a.df[keep].copy()
    fb = b.df[keep].copy()
    for f in (fa, fb):
        f["height"] = f["height"].astype("int64")
        f["width"] = f["width"].astype("int64")
    m = fa.merge(fb, on=list(MATCH_ON), how="outer", suffixes=("_a", "_b"), indicator=True, sort=False)
    m["stage"] = m["stage_a"].where(m["stage_a"].notna(), m["stage_b"])
    m["kind"] = m["kind_a"].where(m["kind_a"].notna(), m["kind_b"])
    return m


def _examples(df: pd.DataFrame, n: int) -> list[str]:
    df = df.sort_values(["height", "width", "position", "op"])
    return [f"{p}/{o}@{_res(h, w)}" for p, o, h, w in
            zip(df["position"][:n], df["op"][:n], df["height"][:n], df["width"][:n])]


def _matching(m: pd.DataFrame, a: LUT, b: LUT, opts: CompareOptions) -> tuple[Matching, pd.DataFrame]:
    both = m[m["_merge"] == "both"]
    ok = both[(both["status_a"] == "ok") & (both["status_b"] == "ok")]
    positive = ok[(ok["median_us_a"] > 0) & (ok["median_us_b"] > 0)].copy()
    positive["ratio"] = positive["median_us_b"] / positive["median_us_a"]
    only_a = m[m["_merge"] == "left_only"]
    only_b = m[m["_merge"] == "right_only"]
    info = Matching(
        baseline_rows=len(a.df), other_rows=len(b.df), matched=len(both), compared=len(positive),
        analytic=int(((both["status_a"] == "analytic") | (both["status_b"] == "analytic")).sum()),
        failed_baseline=int((both["status_a"] == "failed").sum()),
        failed_other=int((both["status_b"] == "failed").sum()),
        nonpositive=len(ok) - len(positive),
        only_baseline=len(only_a), only_other=len(only_b),
        only_baseline_examples=_examples(only_a, opts.max_listed),
        only_other_examples=_examples(only_b, opts.max_listed),
    )
    return info, positive.reset_index(drop=True)


# ---- provenance --------------------------------------------------------------------------------
_LEAD = ("name", "device.type", "device.name", "device.compute_capability", "device.threads", "host",
         "backend", "precision", "batch", "cache", "protocol.threads", "space.name", "space.version",
         "space.config", "complete", "created", "updated", "resolutions")
_SECTIONS = ("device", "protocol", "backend_info", "versions")


def _flat(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if k in _SECTIONS and isinstance(v, dict):
            for k2, v2 in v.items():
                out[f"{k}.{k2}"] = v2
        elif k == "space" and isinstance(v, dict):
            for k2, v2 in v.items():
                out[f"space.{k2}"] = v2
        elif k in ("build", "calibration") and isinstance(v, dict):
            for k2, v2 in v.items():
                out[f"{k}.{k2}"] = v2
        else:
            out[k] = v
    return out


def _show(v: Any) -> Any:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_show(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(str(_show(x)) for x in v)
    return v


def provenance_table(luts: Sequence[LUTInfo]) -> list[tuple[str, list[Any], bool]]:
    """``(field, value per LUT, differs)`` for the file and every provenance field any LUT has."""
    flats = [_flat(x.meta) for x in luts]
    keys = [k for k in _LEAD if any(k in f for f in flats)]
    rest = sorted({k for f in flats for k in f} - set(keys) - {"schema_version"})
    rows: list[tuple[str, list[Any], bool]] = [("file", [x.path for x in luts], False),
                                              ("rows", [x.rows for x in luts], len({x.rows for x in luts}) > 1)]
    for k in keys + rest:
        vals = [_show(f.get(k)) for f in flats]
        differs = len({repr(v) for v in vals}) > 1 and k not in ("created", "updated", "name", "build.elapsed_s")
        rows.append((k, vals, differs))
    return rows


# ---- entry points ------------------------------------------------------------------------------
def compare_pair(a: LUT, b: LUT, label_a: str = "A", label_b: str = "B",
                 options: CompareOptions | None = None) -> PairComparison:
    """Compare ``b`` against the baseline ``a``. :class:`LUTError` when they share no usable entry."""
    opts = options or CompareOptions()
    _check_unique(a, label_a)
    _check_unique(b, label_b)
    m = match_frames(a, b)
    info, e = _matching(m, a, b, opts)
    if info.matched == 0:
        ra = ", ".join(_res(*r) for r in a.resolutions()) or "none"
        rb = ", ".join(_res(*r) for r in b.resolutions()) or "none"
        raise LUTError(f"LUTs {label_a!r} and {label_b!r} share no entry (position, op, key, resolution): "
                       f"resolutions {ra} vs {rb}; built for different spaces, batches or resolutions?")
    if info.compared == 0:
        raise LUTError(f"LUTs {label_a!r} and {label_b!r} match {info.matched} entries but none is timed "
                       f"successfully in both (failed: {info.failed_baseline} / {info.failed_other})")
    return PairComparison(
        baseline=label_a, other=label_b, matching=info, overall=group_stat("all", e),
        by_op=groups(e, "op", str), by_stage=groups(e, "stage", lambda s: str(s) or "(none)"),
        by_resolution=groups(e, ["height", "width"], lambda k: _res(*k)),
        rank_entries=rank_agreement(e["median_us_a"], e["median_us_b"]),
        rank_distinct=rank_distinct(e), rank_positions=(pr := position_ranks(e)),
        tau_summary=tau_summary(pr), flips=decision_flips(m, opts.tie_rel, opts.tie_abs_us), entries=e)


def unique_labels(luts: Sequence[LUT], paths: Sequence[str]) -> list[str]:
    """The LUTs' names when they are distinct, else their file stems, else ``stem#i``."""
    from pathlib import Path

    names = [str(l.meta.get("name") or "") for l in luts]
    if all(names) and len(set(names)) == len(names):
        return names
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{s}#{i + 1}" for i, s in enumerate(stems)]


def compare_luts(luts: Sequence[LUT], paths: Sequence[str], baseline: int = 0,
                 options: CompareOptions | None = None, labels: Sequence[str] | None = None) -> Comparison:
    """Compare every LUT against ``luts[baseline]`` (at least two LUTs)."""
    if len(luts) < 2:
        raise UserError(f"comparing needs at least two LUTs, got {len(luts)}")
    if len(paths) != len(luts):
        raise ValueError("one path per LUT")
    if not 0 <= baseline < len(luts):
        raise UserError(f"baseline index {baseline} out of range")
    opts = options or CompareOptions()
    labels = list(labels) if labels else unique_labels(luts, paths)
    infos = [LUTInfo(label=lab, path=str(p), rows=len(l), resolutions=[_res(*r) for r in l.resolutions()],
                     meta=dict(l.meta)) for lab, p, l in zip(labels, paths, luts)]
    pairs = [compare_pair(luts[baseline], l, labels[baseline], labels[i], opts)
             for i, l in enumerate(luts) if i != baseline]
    return Comparison(luts=infos, baseline=labels[baseline], options=opts, provenance=provenance_table(infos),
                      pairs=pairs)


def resolve_baseline(choice: str | None, paths: Sequence[str], labels: Sequence[str]) -> int:
    """Index of the baseline named by ``choice`` (a path as given, a file, a label or a 1-based
    index); the first LUT when None. :class:`UserError` if it names none or several."""
    from pathlib import Path

    if choice is None:
        return 0
    hits = [i for i, p in enumerate(paths) if choice == p]
    if not hits:
        try:
            target = Path(choice).resolve()
            hits = [i for i, p in enumerate(paths) if Path(p).resolve() == target]
        except OSError:
            hits = []
    if not hits:
        hits = [i for i, lab in enumerate(labels) if lab == choice]
    if not hits:
        hits = [i for i, p in enumerate(paths) if Path(p).stem == choice or Path(p).name == choice]
    if not hits and choice.isdigit() and 1 <= int(choice) <= len(paths):
        hits = [int(choice) - 1]
    if len(hits) > 1 and len({Path(paths[i]).resolve() for i in hits}) > 1:
        raise UserError(f"--baseline {choice!r} names several LUTs: {', '.join(paths[i] for i in hits)}")
    if not hits:
        raise UserError(f"--baseline {choice!r} is none of the compared LUTs ({', '.join(labels)}); "
                        f"give one of their paths, names or 1-based positions")
    return hits[0]
