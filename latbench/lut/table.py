"""LUT storage: one Parquet file, one row per (position, op, height, width, backend, precision,
batch), provenance as JSON in the Parquet schema metadata (key ``latbench``). DESIGN §4.

:func:`read_lut` is the project's one LUT reader: ``show``, ``compare-lut``, ``validate-lut`` and
the search all go through it. It refuses (one-line :class:`LUTError`) a file that is not Parquet,
is corrupt, has no latbench metadata, has a schema version it does not know, lacks columns, has a
column of the wrong type, metadata fields of the wrong type (e.g. a calibration that is not two
finite numbers), rows without their identity (position, op, resolution, batch...), or latencies
that are negative or infinite anywhere, or missing / NaN in an ``ok`` row — naming the rows.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from latbench.errors import LUTError
from latbench.files import atomic_write

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
    # optional (§5.11): the load around the timing (latbench.timing.plausibility) and why it is not trusted
    "load_1m": pa.float64(),
    "run_queue": pa.float64(),  # a count, as float: nullable through pandas round trips
    "steal": pa.float64(),
    "competing": pa.float64(),  # a count, as float: nullable through pandas round trips
    "runq_wait": pa.float64(),
    "flag": pa.string(),
    "const_us": pa.float64(),  # optional: the op on an all-zero input (CPU builds; Predictor.network_rows)
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
    other: list[tuple[Any, str]] = field(default_factory=list)  # (entry, LUT key): the row times another shape

    @property
    def complete(self) -> bool:
        return not self.missing and not self.failed and not self.other


class LUT:
    """A latency lookup table: ``df`` (pandas, columns :data:`COLUMNS`) and ``meta`` (dict)."""

    def __init__(self, df: pd.DataFrame, meta: dict[str, Any]) -> None:
        self.df = df
        self.meta = dict(meta)
        self._index: dict[tuple, float | None] | None = None
        self._rows: dict[tuple, tuple[int, str, bool]] | None = None
        self._keys: dict[tuple, dict[tuple[str, str], tuple[str, str]]] = {}

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

    @cached_property
    def has_const_timings(self) -> bool:  # its ops timed on a constant input too (``const_us``)? (cached)
        return "const_us" in self.df.columns and bool(self.df["const_us"].notna().any())

    def row_info(self, position: str, op: str, height: int, width: int, batch: int = 1,
                 column: str = "median_us", constant: bool = False) -> tuple[str, str, float, bool] | None:
        """``(op, stage, value, analytic)`` of a usable row, ``value`` read from ``column``
        (``median_us`` or ``p10_us``; 0 for an analytic row): what a latency model needs to
        correct it (:mod:`latbench.model.latency_model`); ``constant``: the op reads a constant in the
        network — scaled by the row's ``const_us / median_us`` where it has one. None if unusable."""
        if self.lookup(position, op, height, width, batch) is None:
            return None
        if self._rows is None:
            d = self.df
            self._rows = {(str(p), str(o), int(h), int(w), int(b)): (i, str(s), st == "analytic")
                          for i, (p, o, h, w, b, s, st) in enumerate(zip(d["position"], d["op"], d["height"], d["width"],
                                                                         d["batch"], d["stage"], d["status"]))}
        i, stage, analytic = self._rows[(position, op, int(height), int(width), int(batch))]
        v = 0.0 if analytic else float(self.df[column].iat[i])
        if not math.isfinite(v):  # e.g. no p10 recorded: the median stands in
            v = float(self.df["median_us"].iat[i])
        if constant and not analytic and "const_us" in self.df.columns:
            c, med = self.df["const_us"].iat[i], float(self.df["median_us"].iat[i])
            if c is not None and not pd.isna(c) and med > 0:
                v *= float(c) / med
        return op, stage, v, analytic

    def resolutions(self) -> list[tuple[int, int]]:
        if self.df.empty:
            return []
        pairs = {(int(h), int(w)) for h, w in zip(self.df["height"], self.df["width"])}
        return sorted(pairs)

    def row_keys(self, height: int, width: int, batch: int = 1) -> dict[tuple[str, str], tuple[str, str]]:
        """``(position, op) -> (op key, status)`` of the rows at ``height``×``width`` and ``batch``."""
        k = (int(height), int(width), int(batch))
        if k not in self._keys:
            d = self.df
            sel = (d["height"] == k[0]) & (d["width"] == k[1]) & (d["batch"] == k[2])
            self._keys[k] = {(str(p), str(o)): (str(key), str(st)) for p, o, key, st in
                             zip(d["position"][sel], d["op"][sel], d["key"][sel], d["status"][sel])}
        return self._keys[k]

    def coverage_of(self, entries: Sequence[Any], height: int, width: int, batch: int = 1,
                    by_key: bool = True) -> Coverage:
        """Which of ``entries`` (:class:`latbench.space.Entry`: position, op, op key) this LUT holds
        at ``height``×``width`` and ``batch``: the missing ones, those that failed to time, and —
        ``by_key`` — ``other``: ``(entry, LUT key)`` pairs whose row times another op shape."""
        keys = self.row_keys(height, width, batch)
        present = 0
        missing, failed, other = [], [], []
        for e in entries:
            got = keys.get((e.position, e.op))
            if got is None:
                missing.append((e.position, e.op))
            elif by_key and got[0] != e.spec.key:
                other.append((e, got[0]))
            elif got[1] not in ("ok", "analytic"):
                failed.append((e.position, e.op))
            else:
                present += 1
        return Coverage(int(height), int(width), len(entries), present, missing, failed, other)

    def coverage(self, space: Any, height: int, width: int, batch: int = 1) -> Coverage:
        """What of ``space.enumerate(height, width, batch)`` is missing or failed, by (position,
        op) (:meth:`coverage_of`; pricing checks keys too: :mod:`latbench.lut.coverage`)."""
        return self.coverage_of(space.enumerate(height, width, batch), height, width, batch, by_key=False)

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
    """Write ``lut`` to ``path`` atomically (temporary file + ``os.replace``). What
    :func:`read_lut` would refuse is never written (:class:`LUTError`)."""
    table = to_table(lut)
    check_meta(json.loads(table.schema.metadata[META_KEY]), f"LUT for {str(path)!r}")
    check_rows(table.to_pandas(), f"LUT for {str(path)!r}")
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
    where = repr(str(path))
    check_meta(meta, where)
    check_column_types(table.schema, where)
    df = table.to_pandas()
    for c in ("position", "op", "key", "kind", "stage", "backend", "precision", "cache", "status"):
        df[c] = df[c].astype(object)
    bad = set(df["status"].dropna().unique()) - set(STATUSES)
    if bad:
        raise LUTError(f"{str(path)!r} has unknown status value(s): {', '.join(sorted(map(str, bad)))}")
    check_rows(df, where)
    return LUT(df, meta)


# ---- validation (read_lut) ---------------------------------------------------------------------
# Rows without these cannot be looked up (or counted) at all.
IDENTITY_COLUMNS = ("position", "op", "key", "height", "width", "batch", "backend", "precision", "status")
LATENCY_COLUMNS = ("median_us", "p10_us", "p90_us", "iqr_us", "mean_us", "enqueue_us")
SHOW_BAD_ROWS = 3


def _arrow_type_fits(expected: pa.DataType, got: pa.DataType) -> bool:
    if pa.types.is_dictionary(got):
        got = got.value_type
    if pa.types.is_null(got):  # a column of nothing but nulls
        return True
    if pa.types.is_floating(expected):
        return pa.types.is_floating(got) or pa.types.is_integer(got)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(got)
    if pa.types.is_boolean(expected):
        return pa.types.is_boolean(got)
    if pa.types.is_string(expected):
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    return got == expected


def check_column_types(schema: pa.Schema, where: str) -> None:
    """:class:`LUTError` naming every LUT column whose Arrow type cannot hold what it must
    (e.g. ``median_us`` stored as strings). Integers are accepted for float columns."""
    bad = []
    for name, expected in COLUMNS.items():
        if name in schema.names:
            got = schema.field(name).type
            if not _arrow_type_fits(expected, got):
                bad.append(f"{name} is {got}, expected {expected}")
    if bad:
        raise LUTError(f"{where} has LUT column(s) of the wrong type: {'; '.join(bad)}")


def _describe_rows(df: pd.DataFrame, mask, column: str | None = None) -> str:
    idx = list(df.index[mask])
    shown = []
    for i in idx[:SHOW_BAD_ROWS]:
        r = {k: (v.item() if hasattr(v, "item") else v) for k, v in df.loc[i].items()}  # plain Python values
        what = f"row {i} ({r.get('position')} / {r.get('op')} at {r.get('height')}x{r.get('width')}"
        what += f", {r.get('status')})" if column is None else f", {r.get('status')}): {r.get(column)!r}"
        shown.append(what)
    more = f" and {len(idx) - SHOW_BAD_ROWS} more" if len(idx) > SHOW_BAD_ROWS else ""
    return f"{len(idx)} row(s), e.g. {'; '.join(shown)}{more}"


def check_rows(df: pd.DataFrame, where: str) -> None:
    """:class:`LUTError` naming rows that lack their identity, have a resolution or batch below 1,
    or carry a latency that is negative or infinite — or missing / NaN in an ``ok`` row."""
    import numpy as np

    if df.empty:
        return
    for col in IDENTITY_COLUMNS:
        null = df[col].isna()
        if null.any():
            raise LUTError(f"{where}: column {col} is empty in {_describe_rows(df, null)}")
    for col in ("height", "width", "batch"):
        small = df[col] < 1
        if small.any():
            raise LUTError(f"{where}: {col} must be at least 1, not so in {_describe_rows(df, small, col)}")
    ok = (df["status"] == "ok").to_numpy()
    for col in LATENCY_COLUMNS:
        if col not in df.columns:
            continue
        v = df[col].to_numpy(dtype=float, na_value=np.nan)
        finite = np.isfinite(v)
        bad = (~np.isnan(v) & ~finite) | (finite & (v < 0))
        if col == "median_us":
            bad |= ok & ~finite
        if bad.any():
            kind = "median_us must be a finite number >= 0 (and present in ok rows)" if col == "median_us" else \
                f"{col} must be a finite number >= 0 (or empty)"
            raise LUTError(f"{where}: {kind}; not so in {_describe_rows(df, bad, col)}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


META_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "backend": (str,), "precision": (str,), "cache": (str,), "host": (str,),
    "created": (str,), "updated": (str,), "complete": (bool,), "device": (dict,), "space": (dict,),
    "protocol": (dict,), "versions": (dict,), "backend_info": (dict,), "build": (dict,),
    "calibration": (dict,), "resolutions": (list,), "plausibility": (dict,),
}


def check_meta(meta: dict[str, Any], where: str) -> None:
    """:class:`LUTError` for provenance fields of the wrong type (``null`` is allowed): what
    readers dereference (device, space, protocol, batch, calibration...) must be what it says."""
    for key, types in META_TYPES.items():
        v = meta.get(key)
        if v is not None and not isinstance(v, types):
            raise LUTError(f"{where}: metadata field {key!r} must be a JSON {_json_kind(types)}, "
                           f"not {type(v).__name__} {_short(v)}")
    batch = meta.get("batch")
    if batch is not None and not (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1):
        raise LUTError(f"{where}: metadata field 'batch' must be an integer >= 1, not {_short(batch)}")
    space = meta.get("space") or {}
    for key, types in (("name", (str,)), ("config", (dict,))):
        v = space.get(key)
        if v is not None and not isinstance(v, types):
            raise LUTError(f"{where}: metadata field 'space.{key}' must be a JSON {_json_kind(types)}, not {_short(v)}")
    cal = meta.get("calibration")
    if cal is not None and not (_is_number(cal.get("a")) and _is_number(cal.get("b"))):
        raise LUTError(f"{where}: its calibration must hold two finite numbers a and b (measured ≈ a·ΣLUT + b), "
                       f"not a={_short(cal.get('a'))}, b={_short(cal.get('b'))}; rerun validate-lut "
                       "--save-calibration")


def _json_kind(types: tuple[type, ...]) -> str:
    return {str: "string", bool: "boolean", dict: "object", list: "array"}.get(types[0], types[0].__name__)


def _short(v: Any, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 1] + "…"


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
