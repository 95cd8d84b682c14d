"""The latency term of the search (paper eq. 8–10), priced by a latbench LUT.

    lat_k = Σ_edges Σ_m z_m · lat_m                     (eq. 8, every cell k)
    LAT   = Σ_k lat_k                                   (eq. 9; ``--latency-scope cells``, the default)
    LAT   = Σ_k lat_k + Σ_fusion-edges Σ_m z_m · lat_m + fixed parts (+ the model's constant)
                                                        (``--latency-scope network``)
    loss  = CE + β · log(LAT)                           (eq. 10, LAT in µs)

The paper prices the cells only, so β = 0.005 pushes as hard as its Fig. 7 says; the ``network``
scope adds the fusion cell's edges and the fixed parts every architecture has (``fixed.stem``,
``cellK.pre0/pre1``, ``cellK.merge``, ``fusion.reduceI``, ``fusion.merge`` or
``fixed.aspp``/``fixed.ppm``, ``fixed.head``, ``fixed.upsample``), so that LAT is the whole
network's predicted latency (as :meth:`nas.space.LGCNetSpace.architecture_rows` is for a discrete
architecture) — a larger LAT, so the same β pushes less (d log LAT = dLAT / LAT).

Each lat_m is a *priced* row cost: when the LUT holds a latency model fitted for these rows
(``latbench fit``; :mod:`latbench.model.latency_model`: measured per-call overhead removed, per-op-group
corrections, a constant), its corrected cost — the model is additive over rows, so the expectation
under the Gumbel-softmax weights is exact; otherwise the LUT's median (and, in the ``network``
scope, the legacy affine calibration a·Σ+b of ``validate-lut --save-calibration``).
``--latency-model none`` prices with the raw medians; a LUT whose models were fitted for another
backend, precision, resolution, batch or device is refused in one line.

:func:`load_latency_table` checks, before any training (:func:`check_lut`), that the LUT holds
every (position, op) row of this configuration's network at the requested resolution and batch
with the identical op key — so one LUT prices every fusion ablation of Tables X and XI — and names
what is missing, with the ``build-lut`` command that adds it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from latbench.errors import LUTError, UserError
from latbench.files import file_sha256
from latbench.lut.table import LUT, read_lut
from latbench.space import format_resolution
from nas.config import SpaceConfig
from nas.genotype import SPACE_VERSION, Architecture
from nas.ops import CELL_PRIMITIVES
from nas.search.config import LUTConfig

SHOW_MISSING = 12
SCOPES = ("cells", "network")


def _fmt_rows(rows: Sequence[tuple[str, str]], res: str, limit: int = SHOW_MISSING) -> str:
    shown = ", ".join(f"{p}/{o}@{res}" for p, o in rows[:limit])
    return shown + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


@dataclass
class LatencyTable:
    """Per-candidate latencies (µs) laid out like the architecture parameters.

    ``cell``: ``[K, p, q]`` (q = 8, ``CELL_PRIMITIVES`` order); ``fusion``: one vector per fusion
    edge in its candidates' order; ``fixed``: µs of the fixed parts. These are the *priced* costs:
    the LUT's medians, or — when the LUT holds a latency model fitted for these rows
    (``latbench fit``, :mod:`latbench.model.latency_model`) — each row's corrected cost, with the model's
    constant added to ``fixed``. ``raw_*`` keep the plain LUT medians (Σ LUT, for reports);
    ``calibration`` is a legacy affine ``(a, b)`` applied to a whole-network sum when there is no
    model. ``scope`` says what LAT prices: ``"cells"`` (eq. 9: the cells' edges, the paper's
    default) or ``"network"`` (cells, fusion cell and fixed parts: the whole network's predicted
    latency). ``model`` summarises the model that priced the table (None: raw LUT).
    """

    cell: torch.Tensor
    fusion: list[torch.Tensor]
    fixed: float
    calibration: tuple[float, float] | None = None
    raw_cell: torch.Tensor | None = None
    raw_fusion: list[torch.Tensor] | None = None
    raw_fixed: float | None = None
    scope: str = "network"
    model: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise UserError(f"unknown latency scope {self.scope!r}; choose one of {', '.join(SCOPES)}")

    # --- the differentiable term ----------------------------------------------------------------
    def network_sum(self, cell_z: torch.Tensor, fusion_z: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Σ z·cost over every cell and fusion edge plus the fixed parts (the priced costs)."""
        lat = (cell_z * self.cell.to(cell_z)).sum() + self.fixed
        for z, t in zip(fusion_z, self.fusion):
            lat = lat + (z * t.to(z)).sum()
        return lat

    def cells_sum(self, cell_z: torch.Tensor) -> torch.Tensor:
        """Σ_k lat_k = Σ z·cost over the cells' edges only (eq. 8–9)."""
        return (cell_z * self.cell.to(cell_z)).sum()

    # kept for callers of the earlier name
    lut_sum = network_sum

    def calibrate(self, total: torch.Tensor | float) -> torch.Tensor | float:
        if self.calibration is None:
            return total
        a, b = self.calibration
        return a * total + b

    def latency(self, cell_z: torch.Tensor, fusion_z: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """LAT (µs) in this table's scope: the cells' edges (``cells``), or the whole network's
        predicted latency (``network``: priced costs, calibrated when there is only a legacy
        calibration)."""
        if self.scope == "cells":
            return self.cells_sum(cell_z)
        return self.calibrate(self.network_sum(cell_z, fusion_z))  # type: ignore[return-value]

    def loss(self, cell_z: torch.Tensor, fusion_z: Sequence[torch.Tensor], beta: float) -> torch.Tensor:
        """β · log(LAT) (eq. 10)."""
        return beta * torch.log(self.latency(cell_z, fusion_z))

    # --- discrete architectures -------------------------------------------------------------------
    def _one_hot(self, arch: Architecture) -> tuple[torch.Tensor, list[torch.Tensor]]:
        from nas.fusion import edge_candidates

        z = torch.zeros(self.cell.shape, dtype=torch.float64)
        for k, cell in enumerate(arch.cells):
            for e, op in enumerate(cell):
                z[k, e, CELL_PRIMITIVES.index(op)] = 1.0
        fz = []
        for e, (op, cands) in enumerate(zip(arch.fusion, edge_candidates())):
            v = torch.zeros(len(cands), dtype=torch.float64)
            v[cands.index(op)] = 1.0
            fz.append(v)
        return z, fz

    def architecture_lut_sum(self, arch: Architecture) -> float:
        """Σ LUT medians µs of a discrete architecture (the rows of ``LGCNetSpace.architecture_rows``)."""
        z, fz = self._one_hot(arch)
        raw_cell = self.cell if self.raw_cell is None else self.raw_cell
        raw_fusion = self.fusion if self.raw_fusion is None else self.raw_fusion
        total = float(self.fixed if self.raw_fixed is None else self.raw_fixed)
        total += float((z * raw_cell.detach().cpu().double()).sum())
        total += sum(float((v * t.detach().cpu().double()).sum()) for v, t in zip(fz, raw_fusion))
        return total

    def architecture_latency(self, arch: Architecture) -> float:
        """The whole network's predicted latency (µs): the latency model where the LUT has one,
        else the calibrated or raw Σ LUT — whatever LAT's scope."""
        z, fz = self._one_hot(arch)
        cell = self.cell.detach().cpu().double()
        total = float(self.fixed) + float((z * cell).sum())
        total += sum(float((v * t.detach().cpu().double()).sum()) for v, t in zip(fz, self.fusion))
        return float(self.calibrate(total))

    def architecture_lat(self, arch: Architecture) -> float:
        """LAT of a discrete architecture in this table's scope (what the search priced)."""
        z, fz = self._one_hot(arch)
        return float(self.latency(z.to(self.cell.dtype), [v.to(self.cell.dtype) for v in fz]))

    # --- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"cell": self.cell.clone(), "fusion": [t.clone() for t in self.fusion],
                             "fixed": float(self.fixed), "scope": self.scope,
                             "calibration": None if self.calibration is None else [float(x) for x in self.calibration]}
        if self.raw_cell is not None:
            d.update({"raw_cell": self.raw_cell.clone(), "raw_fusion": [t.clone() for t in self.raw_fusion or []],
                      "raw_fixed": float(self.raw_fixed if self.raw_fixed is not None else self.fixed)})
        if self.model is not None:
            d["model"] = dict(self.model)
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "LatencyTable":
        """From :meth:`state_dict` (checkpoints written before latency models and scopes load as
        raw, whole-network tables — what they priced)."""
        cal = d.get("calibration")
        return cls(d["cell"], list(d["fusion"]), float(d["fixed"]),
                   None if cal is None else (float(cal[0]), float(cal[1])),
                   raw_cell=d.get("raw_cell"), raw_fusion=list(d["raw_fusion"]) if d.get("raw_fusion") is not None else None,
                   raw_fixed=None if d.get("raw_fixed") is None else float(d["raw_fixed"]),
                   scope=str(d.get("scope", "network")), model=d.get("model"))


def _config_difference(lut_cfg: dict[str, Any], ours: SpaceConfig) -> list[str]:
    mine = ours.to_dict()
    diffs = []
    for k in sorted(set(lut_cfg) | set(mine)):
        a, b = lut_cfg.get(k), mine.get(k)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(f"{k}: LUT {a!r}, search {b!r}")
    return diffs


def build_command(lut: LUT, path: str, resolution: tuple[int, int], retry_failed: bool = False) -> str:
    """The ``latbench build-lut`` command that adds the missing rows to the LUT at ``path``.

    It repeats the LUT's own build (name, device, backend, batch, precision, protocol, space
    configuration), so the build resumes into the same file and times only what is missing."""
    import shlex

    from latbench.timing import TimingConfig
    from nas.space import LGCNetSpace

    meta = lut.meta
    dev = meta.get("device") if isinstance(meta.get("device"), dict) else {}
    device = f"cuda:{int(dev.get('index') or 0)}" if dev.get("type") == "cuda" else "cpu"
    proto = dict(meta.get("protocol") or {})
    argv = ["latbench", "build-lut", "--gpu", str(meta.get("name")), "--device", device,
            "--backend", str(meta.get("backend")), "--resolution", format_resolution(resolution)]
    if int(meta.get("batch") or 1) != 1:
        argv += ["--batch", str(int(meta["batch"]))]
    if meta.get("precision") not in (None, "fp32"):
        argv += ["--precision", str(meta["precision"])]
    defaults = TimingConfig().to_dict()
    for key, opt in (("max_noise", "--max-noise"), ("max_time_s", "--max-time"), ("min_time_s", "--min-time"),
                     ("warmup_s", "--warmup")):
        if key in proto and proto[key] != defaults[key]:  # build-lut's defaults are TimingConfig's
            argv += [opt, f"{proto[key]:g}"]
    if proto.get("cold_cache"):
        argv.append("--cold-cache")
    if proto.get("threads"):
        argv += ["--threads", str(int(proto["threads"]))]
    space_cfg = dict((meta.get("space") or {}).get("config") or {})
    default_cfg = LGCNetSpace.from_config({}).config.to_dict()
    for k, v in space_cfg.items():
        if default_cfg.get(k) != v:
            argv += ["--space-opt", f"{k}={json.dumps(v, separators=(',', ':'))}"]
    argv += ["--output", str(path)] + (["--retry-failed"] if retry_failed else [])
    cmd = shlex.join(argv)
    odd = sorted(k for k in proto if k in defaults and k not in (
        "max_noise", "max_time_s", "min_time_s", "warmup_s", "cold_cache", "threads") and proto[k] != defaults[k])
    if odd:
        cmd += (f" (this LUT's protocol also sets {', '.join(odd)}, which build-lut's options do not: "
                f"finish it with latbench.build.builder.build_lut and the LUT's protocol)")
    older = sorted(k for k in defaults if k not in proto)
    if proto and older:
        cmd += (f" — but this LUT was measured before the timing protocol had {', '.join(older)}, so a build "
                f"cannot resume into it: rebuild it (the same command with a new --output)")
    return cmd


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


def compare_rows(lut: LUT, config: SpaceConfig, resolution: tuple[int, int], batch: int):
    """``(entries, missing, failed, other)``: this configuration's network rows at ``resolution`` and
    ``batch``, the ``(position, op)`` pairs the LUT lacks, those it failed to time, and the
    ``(entry, LUT key)`` pairs whose LUT row times another op shape."""
    from nas.space import LGCNetSpace

    h, w = resolution
    df = lut.df
    sel = (df["height"] == h) & (df["width"] == w) & (df["batch"] == batch)
    rows = {(str(p), str(o)): (str(k), str(st)) for p, o, k, st in
            zip(df["position"][sel], df["op"][sel], df["key"][sel], df["status"][sel])}
    entries = LGCNetSpace(config).network_entries(h, w, batch)
    missing, failed, other = [], [], []
    for e in entries:
        got = rows.get((e.position, e.op))
        if got is None:
            missing.append((e.position, e.op))
        elif got[0] != e.spec.key:
            other.append((e, got[0]))
        elif got[1] not in ("ok", "analytic"):
            failed.append((e.position, e.op))
    return entries, missing, failed, other


def check_lut(lut: LUT, path: str, config: SpaceConfig, resolution: tuple[int, int], batch: int) -> None:
    """Refuse (one line) a LUT that cannot price the network ``config`` describes at this resolution
    and batch.

    A LUT prices a configuration when it holds every row of that configuration's network
    (:meth:`nas.space.LGCNetSpace.network_entries`: position, op) at this resolution and batch,
    timed successfully, **with the identical op key** (the same shapes, channels, stride, dilation).
    The LUT's own configuration need not be equal: the Table X / XI ablations (``fusion``,
    ``fusion_inputs`` within the same stages) change which rows are used, not what any row times,
    and one LUT holds the rows of every fusion mode. Rows timing other shapes (another width,
    class count, resolution …) are refused naming the configuration fields that differ; missing
    rows are listed with the exact ``latbench build-lut`` command that adds them to the same file."""
    from nas.space import NAME

    space = lut.meta.get("space") or {}
    if space.get("name") != NAME:
        raise LUTError(f"LUT {path!r} was built for search space {space.get('name')!r}, not {NAME!r}")
    if space.get("version") != SPACE_VERSION:
        raise LUTError(f"LUT {path!r} was built for {NAME} space version {space.get('version')!r}; "
                       f"this nas has version {SPACE_VERSION}: rebuild the LUT")
    res = format_resolution(resolution)
    have = lut.resolutions()
    if tuple(resolution) not in have:
        listed = ", ".join(format_resolution(r) for r in have) or "none"
        raise LUTError(f"LUT {path!r} has no rows at resolution {res} (it holds {listed}); "
                       f"pass one of those with --resolution or build {res}")
    batches = sorted({int(b) for b in lut.df["batch"].unique()})
    if batch not in batches:
        raise LUTError(f"LUT {path!r} has no rows at batch {batch} (it holds {', '.join(map(str, batches))})")
    entries, missing, failed, other = compare_rows(lut, config, resolution, batch)
    if other:
        diffs = _config_difference(dict(space.get("config") or {}), config)
        e, theirs = other[0]
        why = "; ".join(diffs) if diffs else f"{len(other)} rows time other shapes"
        raise LUTError(f"LUT {path!r} was built for another {NAME} configuration ({why}): its rows time other "
                       f"op shapes than this network's (e.g. {e.position}/{e.op}: LUT {theirs}, network "
                       f"{e.spec.key}); pass matching search options or build a LUT with matching --space-opt values")
    if missing or failed:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_fmt_rows(missing, res)}")
        if failed:
            parts.append(f"{len(failed)} failed to time: {_fmt_rows(failed, res)}")
        cmd = build_command(lut, path, resolution, retry_failed=bool(failed))
        raise LUTError(f"LUT {path!r} lacks {len(missing) + len(failed)} of {len(entries)} rows this "
                       f"search needs at {res}, batch {batch} ({'; '.join(parts)}); add them to the same file "
                       f"(the build resumes and times only what is missing) with: {cmd}")


def _priced_rows(lut: LUT, model: Any, positions: Sequence[str], candidates: Sequence[Sequence[str]],
                 h: int, w: int, batch: int) -> torch.Tensor:
    """``[len(positions) × max candidates]`` of each row's cost under ``model`` (NaN padding)."""
    width_c = max((len(c) for c in candidates), default=0)
    out = torch.full((len(positions), width_c), math.nan, dtype=torch.float64)
    for i, (pos, ops) in enumerate(zip(positions, candidates)):
        for j, op in enumerate(ops):
            r = lut.row_info(pos, op, h, w, batch, model.column)
            if r is not None:
                out[i, j] = model.row_cost(*r)
    return out


def build_table(lut: LUT, config: SpaceConfig, resolution: tuple[int, int], batch: int,
                calibration: bool = True, model: Any = None, scope: str = "network") -> LatencyTable:
    """The :class:`LatencyTable` of a LUT that passed :func:`check_lut`, priced by ``model`` (a
    :class:`latbench.model.latency_model.LatencyModel` for these rows) or, without one, by the raw medians and
    the LUT's legacy ``calibration`` (when ``calibration`` is true)."""
    from nas.fusion import edge_candidates
    from nas.space import LGCNetSpace

    h, w = resolution
    k_cells, p = config.num_cells, config.num_edges()
    cell_pos = [f"cell{k}.e{j}" for k in range(k_cells) for j in range(p)]
    cell_t, missing = lut.latency_table(cell_pos, [CELL_PRIMITIVES] * len(cell_pos), h, w, batch)
    fusion: list[torch.Tensor] = []
    fus_pos, cands = [], []
    if config.fusion == "dcfc":
        cands = edge_candidates()
        fus_pos = [f"fusion.e{j}" for j in range(len(cands))]
        fus_t, m2 = lut.latency_table(fus_pos, cands, h, w, batch)
        missing += m2
        fusion = [fus_t[j, :len(c)].clone() for j, c in enumerate(cands)]
    fixed = 0.0
    fixed_rows = []
    for pos in LGCNetSpace(config).positions():
        if pos.kind == "fixed":
            v = lut.lookup(pos.name, pos.candidates[0], h, w, batch)
            if v is None:
                missing.append((pos.name, pos.candidates[0]))
            else:
                fixed += v
                fixed_rows.append((pos.name, pos.candidates[0]))
    if missing:  # check_lut should have caught it; never price a hole as 0 µs
        raise LUTError(f"LUT lacks {len(missing)} rows: {_fmt_rows(missing, format_resolution(resolution))}")
    cell_t = cell_t.reshape(k_cells, p, len(CELL_PRIMITIVES))
    if model is not None:
        priced_cell = _priced_rows(lut, model, cell_pos, [CELL_PRIMITIVES] * len(cell_pos), h, w, batch)
        priced_fus = _priced_rows(lut, model, fus_pos, cands, h, w, batch) if fus_pos else None
        priced_fixed = float(model.constant_us) + sum(
            model.row_cost(*lut.row_info(pos, op, h, w, batch, model.column)) for pos, op in fixed_rows)
        return LatencyTable(priced_cell.reshape(k_cells, p, len(CELL_PRIMITIVES)),
                            [priced_fus[j, :len(c)].clone() for j, c in enumerate(cands)] if priced_fus is not None else [],
                            priced_fixed, None, raw_cell=cell_t, raw_fusion=fusion, raw_fixed=fixed, scope=scope,
                            model=model.summary())
    cal = lut.meta.get("calibration") if calibration else None
    cal_ab = None
    if isinstance(cal, dict) and "a" in cal and "b" in cal:
        cal_ab = (float(cal["a"]), float(cal["b"]))
    table = LatencyTable(cell_t, fusion, fixed, cal_ab, scope=scope)
    if cal_ab is not None:
        cheapest = fixed + float(table.cell.min(-1).values.sum()) + sum(float(t.min()) for t in fusion)
        if cal_ab[0] * cheapest + cal_ab[1] <= 0:
            raise LUTError(f"the LUT's calibration (a={cal_ab[0]:g}, b={cal_ab[1]:g}) predicts a non-positive "
                           f"latency for the cheapest architecture ({cheapest:.1f} µs LUT sum), so log(LAT) "
                           f"is undefined; search without it (--no-calibration)")
    return table


def lut_identity(lut: LUT, path: str | os.PathLike, backend: str, precision: str,
                 resolution: tuple[int, int], batch: int, calibration: tuple[float, float] | None,
                 model: dict[str, Any] | None = None, scope: str | None = None) -> dict[str, Any]:
    """What a genotype records about the LUT (and the latency model) that priced it."""
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
        "latency_model": model,
        "latency_scope": scope,
        "priced_by": ("latency model " + str(model.get("id"))) if model else
                     ("Σ LUT, affine calibration" if calibration is not None else "Σ LUT (raw medians)"),
    }


def resolve_model(lut: LUT, request: LUTConfig, backend: str, precision: str, resolution: tuple[int, int],
                  config: SpaceConfig | None = None) -> Any:
    """The latency model that prices this search: the LUT's model for these rows with
    ``latency_model="auto"`` (None when the LUT has none), none with ``"none"``; a LUT whose models
    were fitted for another backend, precision, resolution, batch or device is refused (one line)."""
    from latbench.model.latency_model import ModelScope, model_for

    if request.latency_model == "none":
        return None
    scope = ModelScope.of_lut(lut.meta, resolution[0], resolution[1], request.batch, backend, precision)
    model = model_for(lut.meta, scope, required=request.latency_model == "require")
    fitted = ((dict(model.provenance).get("space") or {}).get("config") or {}) if model is not None else {}
    if model is not None and config is not None and fitted.get("fusion") not in (None, config.fusion):
        # its corrections were learnt on networks with another head (Table X ablations)
        raise UserError(f"the LUT's latency model was fitted on fusion={fitted.get('fusion')} networks, this search "
                        f"builds fusion={config.fusion} networks; price it with the raw LUT (--latency-model none)")
    return model


def load_latency_table(request: LUTConfig, config: SpaceConfig,
                       scope: str | None = None) -> tuple[LatencyTable, dict[str, Any]]:
    """Read, check and tabulate a LUT for ``config``: ``(table, identity)``. Every problem is a
    one-line :class:`~latbench.errors.UserError` raised before any training starts. ``scope``
    overrides ``request.latency_scope`` (e.g. ``"network"`` for FPS constraints)."""
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
    from latbench.timing.plausibility import refuse_flagged
    refuse_flagged(lut, str(request.path), height=resolution[0], width=resolution[1], batch=request.batch,
                   backend=backend, precision=precision, use="the search")  # §5.11
    model = resolve_model(lut, request, backend, precision, resolution, config)
    scope = scope or request.latency_scope
    table = build_table(lut, config, resolution, request.batch, request.use_calibration, model, scope)
    ident = lut_identity(lut, request.path, backend, precision, resolution, request.batch, table.calibration,
                         table.model, scope)
    return table, ident
