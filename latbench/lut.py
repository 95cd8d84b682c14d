"""LUT storage: one Parquet file, one row per (position, op, height, width, backend, precision,
batch), provenance as JSON in the Parquet schema metadata (key ``latbench``). DESIGN §4.

:func:`read_lut` is the project's one LUT reader: ``show``, ``compare-lut``, ``validate-lut`` and
the search all go through it. It refuses (one-line :class:`LUTError`) a file that is not Parquet,
is corrupt, has no latbench metadata, has a schema version it does not know or lacks columns.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from latbench.errors import LUTError
from latbench.fileio import atomic_write

SCHEMA_VERSION = 1
META_KEY = b"latbench"

# Column name -> arrow type. Order is the file's column order.
COLUMNS: dict[str, pa.DataType] = {
    "position": pa.string(),
    "op": pa.string(),
    "key": pa.string(),
    "kind": pa.string(),
    "stage": pa.string(),
    "cin": pa.int64(),
    "cout": pa.int64(),
    "in_h": pa.int64(),
    "in_w": pa.int64(),
    "stride": pa.int64(),
    "dilation": pa.int64(),
    "height": pa.int64(),
    "width": pa.int64(),
    "batch": pa.int64(),
    "backend": pa.string(),
    "precision": pa.string(),
    "cache": pa.string(),
    "median_us": pa.float64(),
    "p10_us": pa.float64(),
    "p90_us": pa.float64(),
    "iqr_us": pa.float64(),
    "mean_us": pa.float64(),
    "samples": pa.int64(),
    "noise": pa.float64(),
    "calls_per_sample": pa.int64(),
    "sm_clock_mhz": pa.float64(),
    "throttled": pa.bool_(),
    "host_bound": pa.bool_(),
    "enqueue_us": pa.float64(),
    "status": pa.string(),
    "error": pa.string(),
    "measured_at": pa.string(),
}
# What a reader insists on (later optional columns may be added without a schema bump).
REQUIRED_COLUMNS = (
    "position", "op", "key", "kind", "stage", "cin", "cout", "in_h", "in_w", "stride", "dilation",
    "height", "width", "batch", "backend", "precision", "cache", "median_us", "p10_us", "p90_us",
    "iqr_us", "mean_us", "samples", "noise", "sm_clock_mhz", "throttled", "status", "error", "measured_at",
)
ROW_ID = ("position", "op", "height", "width", "backend", "precision", "batch")
STATUSES = ("ok", "failed", "analytic")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def empty_frame() -> pd.DataFrame:
    return pa.schema(list(COLUMNS.items())).empty_table().to_pandas()


@dataclass(frozen=True)
class Coverage:
    """What a LUT holds of a space's enumeration at one resolution."""

    height: int
    width: int
    expected: int
    present: int
    missing: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.failed


class LUT:
    """A latency lookup table: ``df`` (pandas, columns :data:`COLUMNS`) and ``meta`` (dict)."""

    def __init__(self, df: pd.DataFrame, meta: dict[str, Any]) -> None:
        self.df = df
        self.meta = dict(meta)
        self._index: dict[tuple, float | None] | None = None

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return f"LUT({self.meta.get('name')!r}, rows={len(self.df)}, backend={self.meta.get('backend')!r})"

    # ---- lookups -----------------------------------------------------------------------------
    def _lookup_index(self) -> dict[tuple, float | None]:
        if self._index is None:
            idx: dict[tuple, float | None] = {}
            d = self.df
            for pos, op, h, w, b, st, med in zip(d["position"], d["op"], d["height"], d["width"],
                                                  d["batch"], d["status"], d["median_us"]):
                if st == "analytic":
                    val: float | None = 0.0 if (med is None or pd.isna(med)) else float(med)
                elif st == "ok" and med is not None and not pd.isna(med):
                    val = float(med)
                else:
                    val = None
                idx[(str(pos), str(op), int(h), int(w), int(b))] = val
            self._index = idx
        return self._index

    def lookup(self, position: str, op: str, height: int, width: int, batch: int = 1) -> float | None:
        """Median µs of ``op`` at ``position`` for input ``height``×``width``; None if missing or
        failed; 0 for an analytic entry (e.g. ``zero``)."""
        return self._lookup_index().get((position, op, int(height), int(width), int(batch)))

    def latency_table(self, positions: Sequence[str], candidates: Sequence[Sequence[str]], height: int,
                      width: int, batch: int = 1):
        """``(table, missing)``: a float64 tensor [len(positions) × max candidates] of median µs
        (NaN where missing, failed or padding) and the ``(position, op)`` pairs that are missing
        or failed, in order."""
        import torch

        if len(positions) != len(candidates):
            raise ValueError("positions and candidates must have the same length")
        width_c = max((len(c) for c in candidates), default=0)
        table = torch.full((len(positions), width_c), math.nan, dtype=torch.float64)
        missing: list[tuple[str, str]] = []
        for i, (pos, ops) in enumerate(zip(positions, candidates)):
            for j, op in enumerate(ops):
                v = self.lookup(pos, op, height, width, batch)
                if v is None:
                    missing.append((pos, op))
                else:
                    table[i, j] = v
        return table, missing

    def resolutions(self) -> list[tuple[int, int]]:
        if self.df.empty:
            return []
        pairs = {(int(h), int(w)) for h, w in zip(self.df["height"], self.df["width"])}
        return sorted(pairs)

    def coverage(self, space: Any, height: int, width: int, batch: int = 1) -> Coverage:
        """Compare with ``space.enumerate(height, width, batch)``: what is missing or failed."""
        idx = self._lookup_index()
        entries = space.enumerate(height, width, batch)
        present = 0
        missing, failed = [], []
        for e in entries:
            k = (e.position, e.op, int(height), int(width), int(batch))
            if k not in idx:
                missing.append((e.position, e.op))
            elif idx[k] is None:
                failed.append((e.position, e.op))
            else:
                present += 1
        return Coverage(int(height), int(width), len(entries), present, missing, failed)

    def with_calibration(self, a: float, b: float, **info: Any) -> "LUT":
        """A copy whose metadata holds ``calibration = {"a", "b", **info}`` (measured ≈ a·ΣLUT + b)."""
        meta = dict(self.meta)
        meta["calibration"] = {"a": float(a), "b": float(b), **info}
        meta["updated"] = now_iso()
        return LUT(self.df.copy(), meta)

    def counts(self) -> dict[str, int]:
        c = self.df["status"].value_counts()
        out = {s: int(c.get(s, 0)) for s in STATUSES}
        out["rows"] = len(self.df)
        out["distinct_keys"] = int(self.df["key"].nunique()) if len(self.df) else 0
        timed = self.df[self.df["status"] != "analytic"]
        out["distinct_timings"] = int(timed["key"].nunique()) if len(timed) else 0
        return out


# ---- frames ------------------------------------------------------------------------------------
def normalize_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in :data:`COLUMNS` order with their arrow types (missing optional ones added)."""
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra]


def to_table(lut: LUT) -> pa.Table:
    df = normalize_frame(lut.df)
    fields = [pa.field(c, COLUMNS[c]) for c in COLUMNS]
    arrays = []
    for c in COLUMNS:
        vals = df[c].tolist()
        if COLUMNS[c] == pa.float64():
            vals = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in vals]
        elif COLUMNS[c] == pa.int64():
            vals = [None if v is None or pd.isna(v) else int(v) for v in vals]
        elif COLUMNS[c] == pa.bool_():
            vals = [None if v is None or pd.isna(v) else bool(v) for v in vals]
        else:
            vals = [None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v) for v in vals]
        arrays.append(pa.array(vals, type=COLUMNS[c]))
    meta = dict(lut.meta)
    meta["schema_version"] = SCHEMA_VERSION
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta, default=str).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def write_lut(lut: LUT, path: str | os.PathLike) -> None:
    """Write ``lut`` to ``path`` atomically (temporary file + ``os.replace``)."""
    table = to_table(lut)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_lut(path: str | os.PathLike) -> LUT:
    """Read a LUT written by :func:`write_lut`; :class:`LUTError` (one line) if it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise LUTError(f"LUT {str(path)!r} does not exist")
    if path.is_dir():
        raise LUTError(f"LUT {str(path)!r} is a directory, not a Parquet file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LUTError(f"{str(path)!r} is not a readable Parquet LUT (corrupt or not Parquet: {reason[:160]})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise LUTError(f"{str(path)!r} is a Parquet file but not a latbench LUT (no 'latbench' metadata)")
    try:
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise LUTError(f"{str(path)!r}: its latbench metadata is not valid JSON") from None
    ver = meta.get("schema_version")
    if ver != SCHEMA_VERSION:
        raise LUTError(f"{str(path)!r} has LUT schema version {ver!r}; this latbench reads version "
                       f"{SCHEMA_VERSION} only (rebuild the LUT or use a matching latbench)")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise LUTError(f"{str(path)!r} lacks LUT column(s): {', '.join(missing)}")
    df = table.to_pandas()
    for c in ("position", "op", "key", "kind", "stage", "backend", "precision", "cache", "status"):
        df[c] = df[c].astype(object)
    bad = set(df["status"].dropna().unique()) - set(STATUSES)
    if bad:
        raise LUTError(f"{str(path)!r} has unknown status value(s): {', '.join(sorted(map(str, bad)))}")
    return LUT(df, meta)


def dedupe_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Keep the last row per :data:`ROW_ID`."""
    if df.empty:
        return df
    return df.drop_duplicates(subset=list(ROW_ID), keep="last").reset_index(drop=True)


def concat_rows(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return empty_frame()
    return pd.concat([normalize_frame(f) for f in frames], ignore_index=True)
