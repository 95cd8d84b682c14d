"""The latency term of the search (paper eq. 8–10), priced by a latbench LUT.

    lat_k = Σ_edges Σ_m z_m · lat_m                     (eq. 8, every cell k)
    LAT   = Σ_k lat_k + Σ_fusion-edges Σ_m z_m · lat_m + Σ fixed parts        (eq. 9 + what every
                                                                                architecture runs)
    loss  = CE + β · log(LAT)                           (eq. 10, LAT in µs)

The fixed parts are the LUT rows every architecture has (``fixed.stem``, ``cellK.pre0/pre1``,
``cellK.merge``, ``fusion.reduceI``, ``fusion.merge`` or ``fixed.aspp``/``fixed.ppm``,
``fixed.head``, ``fixed.upsample``): with them LAT predicts the whole network, as
:meth:`nas.space.LGCNetSpace.architecture_rows` does for a discrete architecture. The paper's eq. 9
sums cells only; the fixed parts are a constant, so they change β's effective strength through
the log (d log LAT = dLAT / LAT) but not which op is cheaper. When the LUT holds a fitted
calibration (``latbench validate-lut``: measured ≈ a·ΣLUT + b) the search uses ``a·ΣLUT + b``.

:func:`load_latency_table` checks, before any training, that the LUT was built for this exact
search space configuration and holds every (position, op) row at the requested resolution and
batch, and names what is missing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from latbench.errors import LUTError, UserError
from latbench.fileio import file_sha256
from latbench.lut import LUT, read_lut
from latbench.space import format_resolution
from nas.config import SpaceConfig
from nas.genotype import SPACE_VERSION, Architecture
from nas.ops import CELL_PRIMITIVES
from nas.search.config import LUTConfig

SHOW_MISSING = 12


def _fmt_rows(rows: Sequence[tuple[str, str]], res: str, limit: int = SHOW_MISSING) -> str:
    shown = ", ".join(f"{p}/{o}@{res}" for p, o in rows[:limit])
    return shown + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


@dataclass
class LatencyTable:
    """Per-candidate latencies (µs) laid out like the architecture parameters.

    ``cell``: ``[K, p, q]`` (q = 8, ``CELL_PRIMITIVES`` order); ``fusion``: one vector per fusion
    edge in its candidates' order; ``fixed``: µs of the fixed parts; ``calibration``: ``(a, b)``
    or None.
    """

    cell: torch.Tensor
    fusion: list[torch.Tensor]
    fixed: float
    calibration: tuple[float, float] | None = None

    # --- the differentiable term ----------------------------------------------------------------
    def lut_sum(self, cell_z: torch.Tensor, fusion_z: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Σ z·lat over every cell and fusion edge plus the fixed parts (raw LUT µs, eq. 8–9)."""
        lat = (cell_z * self.cell.to(cell_z)).sum() + self.fixed
        for z, t in zip(fusion_z, self.fusion):
            lat = lat + (z * t.to(z)).sum()
        return lat

    def calibrate(self, lut_sum: torch.Tensor | float) -> torch.Tensor | float:
        if self.calibration is None:
            return lut_sum
        a, b = self.calibration
        return a * lut_sum + b

    def latency(self, cell_z: torch.Tensor, fusion_z: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """LAT (µs): the LUT sum, calibrated when the LUT has a calibration."""
        return self.calibrate(self.lut_sum(cell_z, fusion_z))  # type: ignore[return-value]

    def loss(self, cell_z: torch.Tensor, fusion_z: Sequence[torch.Tensor], beta: float) -> torch.Tensor:
        """β · log(LAT) (eq. 10)."""
        return beta * torch.log(self.latency(cell_z, fusion_z))

    # --- discrete architectures -------------------------------------------------------------------
    def architecture_lut_sum(self, arch: Architecture) -> float:
        """Σ LUT µs of a discrete architecture (the same rows as ``LGCNetSpace.architecture_rows``)."""
        from nas.fusion import edge_candidates

        total = float(self.fixed)
        for k, cell in enumerate(arch.cells):
            for e, op in enumerate(cell):
                total += float(self.cell[k, e, CELL_PRIMITIVES.index(op)])
        for e, (op, cands) in enumerate(zip(arch.fusion, edge_candidates())):
            total += float(self.fusion[e][cands.index(op)])
        return total

    def architecture_latency(self, arch: Architecture) -> float:
        return float(self.calibrate(self.architecture_lut_sum(arch)))

    # --- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"cell": self.cell.clone(), "fusion": [t.clone() for t in self.fusion], "fixed": float(self.fixed),
                "calibration": None if self.calibration is None else [float(x) for x in self.calibration]}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "LatencyTable":
        cal = d.get("calibration")
        return cls(d["cell"], list(d["fusion"]), float(d["fixed"]), None if cal is None else (float(cal[0]), float(cal[1])))


def _config_difference(lut_cfg: dict[str, Any], ours: SpaceConfig) -> list[str]:
    mine = ours.to_dict()
    diffs = []
    for k in sorted(set(lut_cfg) | set(mine)):
        a, b = lut_cfg.get(k), mine.get(k)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(f"{k}: LUT {a!r}, search {b!r}")
    return diffs


def select_rows(lut: LUT, path: str, backend: str | None, precision: str | None) -> tuple[LUT, str, str]:
    """The LUT restricted to one backend and precision (a merged LUT may hold several)."""
    df = lut.df
    out = []
    for col, want in (("backend", backend), ("precision", precision)):
        have = sorted({str(v) for v in df[col].dropna().unique()})
        if want is None:
            if len(have) > 1:
                raise LUTError(f"LUT {path!r} holds several {col}s ({', '.join(have)}); choose one with --{col}")
            want = have[0] if have else str(lut.meta.get(col))
        elif want not in have:
            raise LUTError(f"LUT {path!r} has no {col} {want!r} rows (it holds {', '.join(have) or 'none'})")
        df = df[df[col] == want]
        out.append(want)
    return LUT(df.reset_index(drop=True), lut.meta), out[0], out[1]


def check_lut(lut: LUT, path: str, config: SpaceConfig, resolution: tuple[int, int], batch: int) -> None:
    """Refuse (one line) a LUT built for another space, configuration, resolution or batch, or one
    lacking rows this search needs — listing the missing (position, op, resolution) rows."""
    from nas.space import NAME, LGCNetSpace

    space = lut.meta.get("space") or {}
    if space.get("name") != NAME:
        raise LUTError(f"LUT {path!r} was built for search space {space.get('name')!r}, not {NAME!r}")
    if space.get("version") != SPACE_VERSION:
        raise LUTError(f"LUT {path!r} was built for {NAME} space version {space.get('version')!r}; "
                       f"this nas has version {SPACE_VERSION}: rebuild the LUT")
    diffs = _config_difference(dict(space.get("config") or {}), config)
    if diffs:
        raise LUTError(f"LUT {path!r} was built for another {NAME} configuration ({'; '.join(diffs)}); pass "
                       f"matching search options or build a LUT with matching --space-opt values")
    res = format_resolution(resolution)
    have = lut.resolutions()
    if tuple(resolution) not in have:
        listed = ", ".join(format_resolution(r) for r in have) or "none"
        raise LUTError(f"LUT {path!r} has no rows at resolution {res} (it holds {listed}); "
                       f"pass one of those with --resolution or build {res}")
    batches = sorted({int(b) for b in lut.df["batch"].unique()})
    if batch not in batches:
        raise LUTError(f"LUT {path!r} has no rows at batch {batch} (it holds {', '.join(map(str, batches))})")
    cov = lut.coverage(LGCNetSpace(config), resolution[0], resolution[1], batch)
    if not cov.complete:
        parts = []
        if cov.missing:
            parts.append(f"{len(cov.missing)} missing: {_fmt_rows(cov.missing, res)}")
        if cov.failed:
            parts.append(f"{len(cov.failed)} failed to time: {_fmt_rows(cov.failed, res)}")
        raise LUTError(f"LUT {path!r} lacks {len(cov.missing) + len(cov.failed)} of {cov.expected} rows this "
                       f"search needs at {res}, batch {batch} ({'; '.join(parts)}); finish it with latbench "
                       f"build-lut (same --output, --resolution {res}{' --retry-failed' if cov.failed else ''})")


def build_table(lut: LUT, config: SpaceConfig, resolution: tuple[int, int], batch: int,
                calibration: bool = True) -> LatencyTable:
    """The :class:`LatencyTable` of a LUT that passed :func:`check_lut`."""
    from nas.fusion import edge_candidates
    from nas.space import LGCNetSpace

    h, w = resolution
    k_cells, p = config.num_cells, config.num_edges()
    cell_pos = [f"cell{k}.e{j}" for k in range(k_cells) for j in range(p)]
    cell_t, missing = lut.latency_table(cell_pos, [CELL_PRIMITIVES] * len(cell_pos), h, w, batch)
    fusion: list[torch.Tensor] = []
    if config.fusion == "dcfc":
        cands = edge_candidates()
        fus_t, m2 = lut.latency_table([f"fusion.e{j}" for j in range(len(cands))], cands, h, w, batch)
        missing += m2
        fusion = [fus_t[j, :len(c)].clone() for j, c in enumerate(cands)]
    fixed = 0.0
    for pos in LGCNetSpace(config).positions():
        if pos.kind == "fixed":
            v = lut.lookup(pos.name, pos.candidates[0], h, w, batch)
            if v is None:
                missing.append((pos.name, pos.candidates[0]))
            else:
                fixed += v
    if missing:  # check_lut should have caught it; never price a hole as 0 µs
        raise LUTError(f"LUT lacks {len(missing)} rows: {_fmt_rows(missing, format_resolution(resolution))}")
    cal = lut.meta.get("calibration") if calibration else None
    cal_ab = None
    if isinstance(cal, dict) and "a" in cal and "b" in cal:
        cal_ab = (float(cal["a"]), float(cal["b"]))
    table = LatencyTable(cell_t.reshape(k_cells, p, len(CELL_PRIMITIVES)), fusion, fixed, cal_ab)
    if cal_ab is not None:
        cheapest = fixed + float(table.cell.min(-1).values.sum()) + sum(float(t.min()) for t in fusion)
        if cal_ab[0] * cheapest + cal_ab[1] <= 0:
            raise LUTError(f"the LUT's calibration (a={cal_ab[0]:g}, b={cal_ab[1]:g}) predicts a non-positive "
                           f"latency for the cheapest architecture ({cheapest:.1f} µs LUT sum), so log(LAT) "
                           f"is undefined; search without it (--no-calibration)")
    return table


def lut_identity(lut: LUT, path: str | os.PathLike, backend: str, precision: str,
                 resolution: tuple[int, int], batch: int, calibration: tuple[float, float] | None) -> dict[str, Any]:
    """What a genotype records about the LUT that priced it."""
    dev = lut.meta.get("device") or {}
    return {
        "path": str(Path(path).resolve()),
        "name": lut.meta.get("name"),
        "sha256": file_sha256(path),
        "device": dev.get("name") if isinstance(dev, dict) else dev,
        "device_info": dev,
        "backend": backend,
        "precision": precision,
        "cache": lut.meta.get("cache"),
        "batch": int(batch),
        "resolution": format_resolution(resolution),
        "created": lut.meta.get("created"),
        "calibration": None if calibration is None else {"a": calibration[0], "b": calibration[1]},
    }


def load_latency_table(request: LUTConfig, config: SpaceConfig) -> tuple[LatencyTable, dict[str, Any]]:
    """Read, check and tabulate a LUT for ``config``: ``(table, identity)``. Every problem is a
    one-line :class:`~latbench.errors.UserError` raised before any training starts."""
    lut = read_lut(request.path)
    lut, backend, precision = select_rows(lut, request.path, request.backend, request.precision)
    resolution = request.resolution
    if resolution is None:
        have = lut.resolutions()
        if len(have) != 1:
            listed = ", ".join(format_resolution(r) for r in have) or "none"
            raise UserError(f"LUT {request.path!r} holds {len(have)} resolutions ({listed}); choose one with --resolution")
        resolution = have[0]
    check_lut(lut, request.path, config, resolution, request.batch)
    table = build_table(lut, config, resolution, request.batch, request.use_calibration)
    ident = lut_identity(lut, request.path, backend, precision, resolution, request.batch, table.calibration)
    return table, ident
