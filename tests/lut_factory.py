"""Small LUTs built by hand for tests, written through :mod:`latbench.lut.table` (the project's one
LUT writer), so tests exercise the real file format.

    lut = make_lut({"cell0.e0": {"conv_3x3": 10.0, "skip": 1.0, "zero": 0.0}}, name="a")
    path = write(lut, tmp_path / "a.parquet")

Positions named ``fixed.*`` get kind ``fixed``; others ``candidate``. ``zero`` is stored as an
analytic row (0 µs); ``None`` as a latency makes a failed row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from latbench.lut.table import LUT, SCHEMA_VERSION, now_iso, write_lut

DEFAULT_RES = (32, 64)


def stage_of(position: str) -> str:
    """``fixed.*`` -> ``fixed``; ``fusion.*`` -> ``fusion``; ``cellK.*`` -> s4 (K=0), s8 (1..7), s16."""
    head = position.split(".")[0]
    if head in ("fixed", "fusion"):
        return head
    if head.startswith("cell"):
        k = int(head[4:])
        return "s4" if k == 0 else ("s8" if k < 8 else "s16")
    return ""


def make_key(op: str, position: str, height: int, width: int, batch: int = 1, cin: int = 8) -> str:
    # The same op at two positions of the same stage shares a signature, as in a real space.
    return f"{op}|n={batch}|cin={cin}|h={height // 4}|w={width // 4}|stage={stage_of(position)}"


def make_row(position: str, op: str, median_us: float | None, *, height: int = DEFAULT_RES[0],
             width: int = DEFAULT_RES[1], batch: int = 1, backend: str = "cpu", precision: str = "fp32",
             cache: str = "warm", samples: int = 50, noise: float = 0.01, throttled: bool = False,
             key: str | None = None, stage: str | None = None, kind: str | None = None) -> dict[str, Any]:
    analytic = op == "zero"
    failed = median_us is None and not analytic
    med = 0.0 if analytic else (math.nan if failed else float(median_us))
    kind = kind or ("fixed" if position.startswith("fixed.") else "candidate")
    return {
        "position": position, "op": op, "key": key or make_key(op, position, height, width, batch),
        "kind": kind, "stage": stage if stage is not None else stage_of(position),
        "cin": 8, "cout": 8, "in_h": height // 4, "in_w": width // 4, "stride": 1, "dilation": 1,
        "height": height, "width": width, "batch": batch, "backend": backend, "precision": precision,
        "cache": cache, "median_us": med,
        "p10_us": math.nan if failed else med * 0.95, "p90_us": math.nan if failed else med * 1.05,
        "iqr_us": math.nan if failed else med * 0.05, "mean_us": med,
        "samples": 0 if (failed or analytic) else samples, "noise": math.nan if failed else noise,
        "calls_per_sample": 1, "sm_clock_mhz": math.nan, "throttled": throttled, "host_bound": False,
        "enqueue_us": math.nan, "status": "analytic" if analytic else ("failed" if failed else "ok"),
        "error": "RuntimeError: out of memory" if failed else None, "measured_at": now_iso(),
    }


def make_meta(name: str = "test", *, device_name: str = "Test CPU", device_type: str = "cpu",
              threads: int = 1, backend: str = "cpu", precision: str = "fp32", batch: int = 1,
              cache: str = "warm", space: Mapping[str, Any] | None = None,
              protocol: Mapping[str, Any] | None = None, versions: Mapping[str, Any] | None = None,
              host: str = "testhost") -> dict[str, Any]:
    proto = {"warmup_s": 0.2, "min_samples": 10, "min_time_s": 0.5, "max_time_s": 5.0, "max_noise": 0.005,
             "cold_cache": cache == "cold", "max_throttle_retries": 2, "target_sample_s": 0.001,
             "threads": threads}
    proto.update(protocol or {})
    return {
        "schema_version": SCHEMA_VERSION, "name": name,
        "space": dict(space or {"name": "toy", "version": 1, "config": {"channels": 8}}),
        "device": {"type": device_type, "name": device_name, "host": host, "threads": threads},
        "versions": dict(versions or {"python": "3.11", "torch": "2.13.0"}),
        "protocol": proto, "backend": backend, "backend_info": {}, "precision": precision,
        "batch": batch, "cache": cache, "host": host, "created": now_iso(), "updated": now_iso(),
        "complete": True,
    }


def make_lut(table: Mapping[str, Mapping[str, float | None]], *, name: str = "test",
             resolutions: tuple[tuple[int, int], ...] = (DEFAULT_RES,), meta: Mapping[str, Any] | None = None,
             row_overrides: Mapping[str, Any] | None = None, **meta_kw: Any) -> LUT:
    """A LUT holding ``table[position][op]`` µs at every resolution in ``resolutions``.

    ``meta_kw`` go to :func:`make_meta` (backend, precision, threads, device_name...); the row
    columns backend/precision/batch/cache follow them.
    """
    m = make_meta(name, **meta_kw)
    if meta:
        m.update(meta)
    rows = []
    for (h, w) in resolutions:
        for pos, ops in table.items():
            for op, us in ops.items():
                r = make_row(pos, op, us, height=h, width=w, batch=m["batch"], backend=m["backend"],
                             precision=m["precision"], cache=m["cache"])
                r.update(row_overrides or {})
                rows.append(r)
    return LUT(pd.DataFrame(rows), m)


def write(lut: LUT, path: str | Path) -> Path:
    write_lut(lut, path)
    return Path(path)
