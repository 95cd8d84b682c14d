"""Merge LUTs built in pieces (different resolutions on different days, several GPUs of one
model) into one LUT. Pure computation on :class:`~latbench.lut.table.LUT` objects.

- **Provenance must agree** on :data:`MUST_AGREE`: the device identity (type, name, compute
  capability), backend, precision, batch, cache state, measurement protocol (which holds the
  CPU thread count) and search-space identity. Host, index, driver and library versions may
  differ (several machines with the same GPU model); every source's full provenance is kept in
  the output's ``meta["merged"]["sources"]``. A disagreement is refused with a one-line
  :class:`LUTError` unless ``force=True``; then the disagreeing top-level fields read
  ``"mixed"`` (so a later ``build-lut`` resume or a merge without force refuses the file) and
  ``meta["merged"]["conflicts"]`` lists them.
- **Duplicate rows** (same :data:`latbench.lut.table.ROW_ID`: position, op, height, width, backend,
  precision, batch) keep exactly one, chosen by :func:`preference` (deterministic): a successful
  timing over an analytic row over a failure; then not throttled; then more samples; then lower
  noise; then the input given first. The count (and how many disagreed by more than 5 % in
  median) is reported.
- **Latency models** (``latbench fit``): every input's model whose scope the merged LUT still
  covers (its device and cache state, rows of its backend, precision, resolution and batch) is
  kept — one per scope and family of networks, the earliest input's —; the others are dropped, and
  ``meta["merged"]["latency_models"]`` (and the command) say which and why. The legacy affine
  calibration is kept only when every input holds the same one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from latbench.errors import LUTError, UserError
from latbench.files import lock_path
from latbench.lut.table import LUT, ROW_ID, SCHEMA_VERSION, concat_rows, now_iso

MUST_AGREE = ("device", "backend", "precision", "batch", "cache", "protocol", "space")
DEVICE_IDENTITY = ("type", "name", "compute_capability")
STATUS_RANK = {"ok": 0, "analytic": 1, "failed": 2}
DISAGREE_REL = 0.05


def output_lock(output: str | os.PathLike) -> Path:
    """The lock file that keeps a merge and a build (or two merges) from writing one LUT at once."""
    return lock_path(output)


@dataclass(frozen=True)
class Conflict:
    """A provenance field whose value differs between sources (value per source, in order)."""

    field: str
    values: list[Any]

    def describe(self, labels: Sequence[str]) -> str:
        shown = "; ".join(f"{lab}: {_short(v)}" for lab, v in zip(labels, self.values))
        return f"{self.field} differs ({shown})"


@dataclass
class MergeResult:
    lut: LUT
    sources: list[str]
    rows_in: int
    rows_out: int
    duplicates_dropped: int
    duplicates_disagreeing: int
    conflicts: list[Conflict] = field(default_factory=list)
    forced: bool = False
    models_kept: list[str] = field(default_factory=list)      # "LABEL: model ID (scope)"
    models_dropped: list[str] = field(default_factory=list)   # "LABEL: model ID (scope): why"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("lut")
        d["resolutions"] = [f"{h}x{w}" for h, w in self.lut.resolutions()]
        return d


def _short(v: Any, n: int = 60) -> str:
    s = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else str(v)
    return s if len(s) <= n else s[: n - 1] + "…"


def identity(meta: dict[str, Any]) -> dict[str, Any]:
    """The provenance fields that must agree, with the device reduced to its identity."""
    out: dict[str, Any] = {}
    for k in MUST_AGREE:
        v = meta.get(k)
        if k == "device" and isinstance(v, dict):
            v = {x: v.get(x) for x in DEVICE_IDENTITY if x in v}
        out[k] = v
    return out


def _diff_detail(values: list[Any]) -> list[Any]:
    """For dict-valued fields, keep only the sub-keys that differ (readable messages)."""
    if not all(isinstance(v, dict) for v in values):
        return values
    keys = sorted({k for v in values for k in v})
    diff = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True, default=str) for v in values}) > 1]
    return [{k: v.get(k) for k in diff} for v in values]


def find_conflicts(metas: Sequence[dict[str, Any]]) -> list[Conflict]:
    ids = [identity(m) for m in metas]
    out = []
    for k in MUST_AGREE:
        vals = [i[k] for i in ids]
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals}) > 1:
            out.append(Conflict(k, _diff_detail(vals)))
    return out


def preference(df: pd.DataFrame, order: pd.Series) -> pd.DataFrame:
    """Sort key columns for duplicate resolution (smaller is preferred); see the module docstring."""
    return pd.DataFrame({
        "_status": df["status"].map(STATUS_RANK).fillna(3),
        "_throttled": df["throttled"].fillna(False).astype(bool).astype(int),
        "_samples": -pd.to_numeric(df["samples"], errors="coerce").fillna(0),
        "_noise": pd.to_numeric(df["noise"], errors="coerce").fillna(math.inf),
        "_source": order,
    }, index=df.index)


def dedupe(df: pd.DataFrame, source: pd.Series) -> tuple[pd.DataFrame, int, int]:
    """``(rows, dropped, disagreeing)``: one row per ROW_ID, the preferred one."""
    keys = preference(df, source)
    work = pd.concat([df, keys], axis=1)
    work = work.sort_values(list(keys.columns), kind="stable")
    ids = list(ROW_ID)
    med = pd.to_numeric(work["median_us"], errors="coerce")
    spread = med.groupby([work[c] for c in ids], dropna=False).agg(["min", "max", "size"])
    multi = spread[spread["size"] > 1]
    disagree = int(((multi["max"] - multi["min"]) > DISAGREE_REL * multi["max"].abs()).sum())
    kept = work.drop_duplicates(subset=ids, keep="first")
    dropped = len(work) - len(kept)
    kept = kept.drop(columns=list(keys.columns)).sort_index(kind="stable").reset_index(drop=True)
    return kept, dropped, disagree


def _not_covered(model: Any, df: pd.DataFrame, meta: dict[str, Any]) -> str | None:
    """Why the merged LUT (rows ``df``, metadata ``meta``) no longer holds ``model``'s scope; None
    if it does."""
    from latbench.device import device_identity

    sc = model.scope
    dev = meta.get("device")
    if not isinstance(dev, dict) or dev.get("mixed") or device_identity(dev) != device_identity(sc.device):
        return "the merged LUT's device is not the one it was fitted on"
    if str(meta.get("cache") or "warm") != sc.cache:
        return f"the merged LUT's cache state is not {sc.cache}"
    rows = ((df["backend"] == sc.backend) & (df["precision"] == sc.precision) & (df["height"] == sc.height)
            & (df["width"] == sc.width) & (df["batch"] == sc.batch))
    if not bool(rows.any()):
        return f"the merged LUT has no {sc.backend} {sc.precision} rows at {sc.resolution} batch {sc.batch}"
    return None


def merge_models(luts: Sequence[LUT], labels: Sequence[str], df: pd.DataFrame,
                 meta: dict[str, Any]) -> tuple[list[Any], list[str], list[str]]:
    """``(models, kept, dropped)``: every input's latency model whose scope the merged LUT still
    covers (one per slot — scope and fusion family —, the earliest input's), and, in words, which
    were kept and which were dropped and why."""
    from latbench.model.latency_model import same_slot, stored_models

    models: list[Any] = []
    kept, dropped = [], []
    owner: list[str] = []
    for lut, label in zip(luts, labels):
        try:
            found = stored_models(lut.meta)
        except LUTError as exc:
            dropped.append(f"{label}: its latency models ({exc.message})")
            continue
        for m in found:
            what = f"{label}: model {m.model_id} ({m.scope.describe()})"
            why = _not_covered(m, df, meta)
            if why is None:
                prior = next((i for i, k in enumerate(models) if same_slot(k, m)), None)
                if prior is not None:
                    why = f"the model of {owner[prior]} prices the same scope and networks (the earlier input's is kept)"
            if why is not None:
                dropped.append(f"{what}: {why}")
                continue
            models.append(m)
            owner.append(label)
            kept.append(what)
    return models, kept, dropped


def merge_luts(luts: Sequence[LUT], labels: Sequence[str], force: bool = False) -> MergeResult:
    """Merge ``luts`` (in order; ``labels`` name them in messages and in the output metadata)."""
    if len(luts) < 2:
        raise UserError(f"merging needs at least two LUTs, got {len(luts)}")
    metas = [l.meta for l in luts]
    conflicts = find_conflicts(metas)
    if conflicts and not force:
        raise LUTError("refusing to merge LUTs whose provenance disagrees: "
                       + "; ".join(c.describe(labels) for c in conflicts)
                       + " (--force merges anyway and records each source's provenance)")
    frames, sources = [], []
    for i, l in enumerate(luts):
        f = l.df.copy()
        sources.append(pd.Series(i, index=range(len(f))))
        frames.append(f)
    df = concat_rows(frames)
    src = pd.concat(sources, ignore_index=True)
    df.index = range(len(df))
    src.index = df.index
    rows_in = len(df)
    kept, dropped, disagree = dedupe(df, src)

    meta = dict(metas[0])
    for k in ("build", "calibration", "merged"):
        meta.pop(k, None)
    cal = [m.get("calibration") for m in metas]
    if all(c is not None for c in cal) and len({json.dumps(c, sort_keys=True) for c in cal}) == 1:
        meta["calibration"] = cal[0]
    for c in conflicts:  # a forced merge: say so where a reader looks, details in meta["merged"]
        meta[c.field] = {"mixed": True} if isinstance(metas[0].get(c.field), dict) else "mixed"
    from latbench.model.latency_model import META_KEY as MODELS_KEY

    meta.pop(MODELS_KEY, None)
    models, models_kept, models_dropped = merge_models(luts, labels, kept, meta)
    if models:
        meta[MODELS_KEY] = [m.to_dict() for m in models]
    created = sorted(str(m.get("created")) for m in metas if m.get("created"))
    resolutions = sorted({(int(h), int(w)) for h, w in zip(kept["height"], kept["width"])})
    meta.update({
        "schema_version": SCHEMA_VERSION, "updated": now_iso(), "created": created[0] if created else now_iso(),
        "complete": all(bool(m.get("complete")) for m in metas),
        "resolutions": [f"{h}x{w}" for h, w in resolutions],
        "merged": {
            "at": now_iso(), "forced": bool(force and conflicts),
            "conflicts": [{"field": c.field, "values": c.values} for c in conflicts],
            "duplicates_dropped": dropped, "duplicates_disagreeing": disagree,
            "latency_models": {"kept": models_kept, "dropped": models_dropped},
            "rule": "per (position, op, height, width, backend, precision, batch): ok > analytic > failed, "
                    "then not throttled, more samples, lower noise, earlier source",
            "sources": [{"label": lab, "rows": len(l.df), **{k: v for k, v in l.meta.items() if k != "merged"},
                         **({"merged_from": l.meta["merged"].get("sources")} if isinstance(
                             l.meta.get("merged"), dict) else {})}
                        for lab, l in zip(labels, luts)],
        },
    })
    return MergeResult(lut=LUT(kept, meta), sources=list(labels), rows_in=rows_in, rows_out=len(kept),
                       duplicates_dropped=dropped, duplicates_disagreeing=disagree, conflicts=conflicts,
                       forced=bool(force and conflicts), models_kept=models_kept, models_dropped=models_dropped)
