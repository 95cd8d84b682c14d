"""The rows a LUT build writes and reads back: one finished timing (:class:`Timed`), the LUT row of
an entry (:func:`lut_row`), the timings an existing LUT already holds (:func:`timed_from_frame`),
and what an existing LUT or journal must share with a request for a build to continue it
(:func:`compat`, :func:`check_compatible`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from latbench.device import device_identity
from latbench.errors import UserError
from latbench.lut.table import now_iso
from latbench.space import Entry
from latbench.timing import Measurement
from latbench.timing.plausibility import ROW_FIELDS

MEASUREMENT_FIELDS = ("median_us", "p10_us", "p90_us", "iqr_us", "mean_us", "samples", "noise",
                      "calls_per_sample", "sm_clock_mhz", "throttled", "host_bound", "enqueue_us",
                      "status", "error", "const_us") + ROW_FIELDS  # + the load around the timing and its flag (§5.11)


def jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


@dataclass(frozen=True)
class Timed:
    """A finished timing of one key: the measurement's LUT fields and when it was taken."""

    fields: dict[str, Any]
    measured_at: str | None

    @classmethod
    def from_measurement(cls, m: Measurement) -> "Timed":
        d = m.to_dict()
        return cls({k: d.get(k) for k in MEASUREMENT_FIELDS}, now_iso())


def compat(meta: dict[str, Any]) -> dict[str, Any]:
    """What must match between an existing LUT and a new request for the build to continue it."""
    return jsonable({
        "name": meta.get("name"),
        "space": meta.get("space"),
        "backend": meta.get("backend"),
        "precision": meta.get("precision"),
        "batch": meta.get("batch"),
        "protocol": meta.get("protocol"),
        "device": device_identity(meta.get("device") or {}),
    })


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for field in ("space", "name", "backend", "precision", "batch", "protocol", "device"):
        a, b = old.get(field), new.get(field)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            flat_a, flat_b = flatten(a), flatten(b)
            diffs = [k for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k) != flat_b.get(k)]
            shown = ", ".join(f"{k}: {flat_a.get(k)!r} -> {flat_b.get(k)!r}" for k in diffs[:3])
            more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
            return f"a different {field} ({shown}{more})"
        return f"a different {field} ({a!r} -> {b!r})"
    return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True)
    return out


def check_compatible(where: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = describe_difference(old, new)
    if diff:
        raise UserError(f"{where} was built for {diff} than requested; use a new --output "
                        "(or delete the old file) to build a separate LUT")


def lut_row(entry: Entry, height: int, width: int, batch: int, backend: str, precision: str, cache: str,
         timed: Timed | None) -> dict[str, Any]:
    spec = entry.spec
    first = spec.inputs[0] if spec.inputs else ()
    four_d = len(first) == 4
    row: dict[str, Any] = {
        "position": entry.position, "op": entry.op, "key": spec.key, "kind": entry.kind, "stage": entry.stage,
        "cin": first[1] if four_d else None,
        "cout": spec.param("cout"),
        "in_h": first[2] if four_d else None, "in_w": first[3] if four_d else None,
        "stride": spec.param("stride", 1), "dilation": spec.param("dilation", 1),
        "height": height, "width": width, "batch": batch,
        "backend": backend, "precision": precision, "cache": cache,
    }
    for k in ("cout", "stride", "dilation"):
        v = row[k]
        row[k] = int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    if entry.analytic:
        row.update({"median_us": 0.0, "p10_us": 0.0, "p90_us": 0.0, "iqr_us": 0.0, "mean_us": 0.0,
                    "samples": 0, "noise": 0.0, "calls_per_sample": 0, "status": "analytic",
                    "error": None, "throttled": False, "measured_at": None})
    else:
        assert timed is not None
        row.update(timed.fields)
        row["measured_at"] = timed.measured_at
    return row


def timed_from_frame(df: pd.DataFrame, keep_failed: bool) -> dict[str, Timed]:
    out: dict[str, Timed] = {}
    if df.empty:
        return out
    for rec in df.to_dict("records"):
        st = rec.get("status")
        # "analytic" rows of a timed key are pass-throughs found at build time (see time_spec)
        if (st == "failed" and not keep_failed) or st not in ("ok", "failed", "analytic"):
            continue
        fields = {}
        for k in MEASUREMENT_FIELDS:
            v = rec.get(k)
            if v is not None and not isinstance(v, str) and pd.isna(v):
                v = None
            fields[k] = v.item() if hasattr(v, "item") else v
        when = rec.get("measured_at")
        missing = when is None or (not isinstance(when, str) and pd.isna(when)) or when == ""
        out[str(rec["key"])] = Timed(fields, None if missing else str(when))  # None: an analytic pass-through
    return out


#: The LUT fields of a pass-through's rows (analytic, 0 µs, never timed).
PASSTHROUGH = Timed({"median_us": 0.0, "p10_us": 0.0, "p90_us": 0.0, "iqr_us": 0.0, "mean_us": 0.0, "samples": 0,
                     "noise": 0.0, "calls_per_sample": 0, "sm_clock_mhz": None, "throttled": False,
                     "host_bound": None, "enqueue_us": None, "status": "analytic", "error": None}, None)
