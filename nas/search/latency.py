"""The latency term of the search (paper eq. 8–10), priced by a latbench LUT.

    lat_k = Σ_edges Σ_m z_m · lat_m                     (eq. 8, every cell k)
    LAT   = Σ_k lat_k + Σ_fusion-edges Σ_m z_m · lat_m  (eq. 9 over the searched cells;
                                                          ``--latency-scope searched``, the default)
    LAT   = Σ_k lat_k                                   (``--latency-scope cells``: the 14 cells only)
    LAT   = Σ_k lat_k + Σ_fusion-edges Σ_m z_m · lat_m + fixed parts (+ the model's constant)
                                                        (``--latency-scope network``)
    loss  = CE + β · log(LAT)                           (eq. 10, LAT in µs)

Eq. 9 sums the latency of the searched cells, and the paper says of its fusion cell that its
search is "guided by the latency oriented loss" too: so the default ``searched`` scope prices the
14 cells' edges and the fusion cell's searchable edges (the MSCell's with ``--fusion mscell``;
nothing more with ASPP / PPM / no fusion, which have none). ``cells`` keeps the earlier default
(the fusion cell's α then moves by CE alone); ``network`` adds the fixed parts every architecture
has (``fixed.stem``, ``cellK.pre0/pre1``, ``cellK.merge``, ``fusion.reduceI``, ``fusion.merge`` or
``fixed.aspp``/``fixed.ppm``, ``fixed.head``, ``fixed.upsample``), so that LAT is the whole
network's predicted latency (as :meth:`nas.space.LGCNetSpace.architecture_rows` is for a discrete
architecture) — a larger LAT, so the same β pushes less (d log LAT = dLAT / LAT).

Each lat_m is a *priced* row cost from the one predictor,
:class:`latbench.model.predictor.Predictor`: when the LUT holds a latency model fitted for these
rows and this fusion head (``latbench fit``), its corrected cost — the model is additive over rows,
so the expectation under the Gumbel-softmax weights is exact; otherwise the LUT's median (and, in
the ``network`` scope, the legacy affine calibration a·Σ+b of ``validate-lut --save-calibration``).
``--latency-model none`` prices with the raw medians; a LUT whose models were fitted for another
backend, precision, resolution, batch or device is refused in one line; a model fitted on networks
with another fusion head prices nothing (the raw medians do, with a one-line notice; refused
under ``--latency-model require``).

:func:`load_latency_table` checks, before any training (:func:`latbench.lut.coverage.check_prices`),
that the LUT holds every (position, op) row of this configuration's network at the requested
resolution and batch with the identical op key — so one LUT prices every fusion ablation of Tables X
and XI — and names what is missing, with the ``build-lut`` command that adds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from latbench.errors import LUTError, UserError
from latbench.lut.coverage import check_prices, choose_resolution, select_rows
from latbench.lut.table import LUT, read_lut
from latbench.model.predictor import Predictor
from latbench.space import format_resolution
from nas.config import SpaceConfig
from nas.genotype import Architecture
from nas.ops import CELL_PRIMITIVES
from nas.search.config import LATENCY_SCOPES as SCOPES, LUTConfig


@dataclass
class LatencyTable:
    """Per-candidate latencies (µs) laid out like the architecture parameters.

    ``cell``: ``[K, p, q]`` (q = 8, ``CELL_PRIMITIVES`` order); ``fusion``: one vector per
    searchable fusion edge in its candidates' order (``fusion_candidates``; the fusion cell's when
    not recorded); ``fixed``: µs of the fixed parts. These are the *priced* costs: the LUT's
    medians, or — when the LUT holds a latency model fitted for these rows (``latbench fit``) —
    each row's corrected cost, with the model's constant added to ``fixed``. ``raw_*`` keep the
    plain LUT medians (Σ LUT, for reports); ``calibration`` is a legacy affine ``(a, b)`` applied
    to a whole-network sum when there is no model. ``scope`` says what LAT prices: ``"searched"``
    (eq. 9: the cells' and the fusion cell's searchable edges, the default), ``"cells"`` (the cells'
    edges only) or ``"network"`` (cells, fusion cell and fixed parts: the whole network's predicted
    latency). ``model`` summarises the model that priced the table (None: raw LUT);
    ``resolution`` is the LUT resolution it was priced at.
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
    resolution: tuple[int, int] | None = None
    fusion_candidates: list[tuple[str, ...]] | None = None

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

    def searched_sum(self, cell_z: torch.Tensor, fusion_z: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Σ z·cost over the cells' and the fusion cell's searchable edges (eq. 8–9 over every
        searched cell)."""
        lat = self.cells_sum(cell_z)
        for z, t in zip(fusion_z, self.fusion):
            lat = lat + (z * t.to(z)).sum()
        return lat

    def latency(self, cell_z: torch.Tensor, fusion_z: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """LAT (µs) in this table's scope: the searched edges (``searched``), the cells' edges
        (``cells``), or the whole network's predicted latency (``network``: priced costs,
        calibrated when there is only a legacy calibration)."""
        if self.scope == "cells":
            return self.cells_sum(cell_z)
        if self.scope == "searched":
            return self.searched_sum(cell_z, fusion_z)
        return self.calibrate(self.network_sum(cell_z, fusion_z))  # type: ignore[return-value]

    def loss(self, cell_z: torch.Tensor, fusion_z: Sequence[torch.Tensor], beta: float) -> torch.Tensor:
        """β · log(LAT) (eq. 10)."""
        return beta * torch.log(self.latency(cell_z, fusion_z))

    # --- discrete architectures -------------------------------------------------------------------
    def _fusion_candidates(self) -> list[tuple[str, ...]]:
        if self.fusion_candidates is not None:
            return [tuple(c) for c in self.fusion_candidates]
        from nas.fusion import edge_candidates  # tables written before they were recorded: the fusion cell's

        return edge_candidates() if self.fusion else []

    def _one_hot(self, arch: Architecture) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = torch.zeros(self.cell.shape, dtype=torch.float64)
        for k, cell in enumerate(arch.cells):
            for e, op in enumerate(cell):
                z[k, e, CELL_PRIMITIVES.index(op)] = 1.0
        fz = []
        for e, (op, cands) in enumerate(zip(arch.fusion, self._fusion_candidates())):
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
        if self.resolution is not None:
            d["resolution"] = [int(x) for x in self.resolution]
        if self.fusion_candidates is not None:
            d["fusion_candidates"] = [list(c) for c in self.fusion_candidates]
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
                   scope=str(d.get("scope", "network")), model=d.get("model"),
                   resolution=None if d.get("resolution") is None else (int(d["resolution"][0]), int(d["resolution"][1])),
                   fusion_candidates=None if d.get("fusion_candidates") is None else
                   [tuple(str(o) for o in c) for c in d["fusion_candidates"]])



# ---- tabulating a LUT for one configuration ------------------------------------------------------
def build_table(predictor: Predictor, config: SpaceConfig, scope: str = "network") -> LatencyTable:
    """The :class:`LatencyTable` of ``config``'s network priced by ``predictor`` (whose LUT passed
    :func:`latbench.lut.coverage.check_prices`): its model's corrected costs, or the raw medians and
    the legacy calibration (kept for the ``network`` scope)."""
    from nas.space import LGCNetSpace

    positions = LGCNetSpace(config).positions()
    cands = [p for p in positions if p.kind == "candidate"]
    cell_pos = [p for p in cands if p.name.startswith("cell")]
    fus_pos = [p for p in cands if not p.name.startswith("cell")]
    k_cells, p_edges = config.num_cells, config.num_edges()
    priced_cell, raw_cell, missing = predictor.cost_table([p.name for p in cell_pos], [p.candidates for p in cell_pos])
    fus_cands = [tuple(p.candidates) for p in fus_pos]
    priced_fus, raw_fus = [], []
    if fus_pos:
        pf, rf, m2 = predictor.cost_table([p.name for p in fus_pos], fus_cands)
        missing += m2
        priced_fus = [pf[j, :len(c)].clone() for j, c in enumerate(fus_cands)]
        raw_fus = [rf[j, :len(c)].clone() for j, c in enumerate(fus_cands)]
    priced_fixed, raw_fixed, m3 = predictor.fixed_cost([(p.name, p.candidates[0]) for p in positions
                                                        if p.kind == "fixed"])
    missing += m3
    if missing:  # check_prices should have caught it; never price a hole as 0 µs
        raise LUTError(f"LUT lacks {len(missing)} rows: "
                       + ", ".join(f"{p}/{o}@{format_resolution(predictor.resolution)}" for p, o in missing[:12]))
    shape = (k_cells, p_edges, len(CELL_PRIMITIVES))
    common = dict(scope=scope, resolution=predictor.resolution, fusion_candidates=fus_cands)
    if predictor.model is not None:
        return LatencyTable(priced_cell.reshape(shape), priced_fus, priced_fixed, None, raw_cell=raw_cell.reshape(shape),
                            raw_fusion=raw_fus, raw_fixed=raw_fixed, model=predictor.summary(), **common)
    cal_ab = predictor.calibration
    table = LatencyTable(raw_cell.reshape(shape), raw_fus, raw_fixed, cal_ab, **common)
    if cal_ab is not None:
        cheapest = raw_fixed + float(table.cell.min(-1).values.sum()) + sum(float(t.min()) for t in raw_fus)
        if cal_ab[0] * cheapest + cal_ab[1] <= 0:
            raise LUTError(f"the LUT's calibration (a={cal_ab[0]:g}, b={cal_ab[1]:g}) predicts a non-positive "
                           f"latency for the cheapest architecture ({cheapest:.1f} µs LUT sum), so log(LAT) "
                           f"is undefined; search without it (--no-calibration)")
    return table


def load_latency_table(request: LUTConfig, config: SpaceConfig, scope: str | None = None,
                       lut: LUT | None = None) -> tuple[LatencyTable, dict[str, Any]]:
    """Check and tabulate the LUT at ``request.path`` (``lut``: that file, already read) for
    ``config``: ``(table, identity)``. Every problem is a one-line
    :class:`~latbench.errors.UserError` raised before any training starts. ``scope`` overrides
    ``request.latency_scope`` (e.g. ``"network"`` for FPS constraints). ``identity`` — what a
    genotype records — says what priced the table and, under ``latency_notice``, why the raw sum
    priced it where the LUT has a model for other networks."""
    from nas.space import LGCNetSpace

    lut = read_lut(request.path) if lut is None else lut
    lut, backend, precision = select_rows(lut, request.path, request.backend, request.precision)
    resolution = choose_resolution(lut, request.path, request.resolution)
    check_prices(lut, request.path, LGCNetSpace(config), resolution, request.batch, user="search")
    from latbench.timing.plausibility import refuse_flagged
    refuse_flagged(lut, str(request.path), height=resolution[0], width=resolution[1], batch=request.batch,
                   backend=backend, precision=precision, use="the search")  # §5.11
    predictor = Predictor.for_lut(lut, resolution[0], resolution[1], request.batch, backend=backend,
                                  precision=precision, latency_model=request.latency_model,
                                  calibration=request.use_calibration, family={"fusion": config.fusion},
                                  config=LGCNetSpace(config).identity()["config"])
    scope = scope or request.latency_scope
    table = build_table(predictor, config, scope)
    cal = table.calibration
    ident = {**predictor.provenance(request.path),
             "calibration": None if cal is None else {"a": cal[0], "b": cal[1]},
             "latency_model": table.model, "latency_scope": scope,
             "priced_by": ("latency model " + str(table.model.get("id"))) if table.model else
                          ("Σ LUT, affine calibration" if cal is not None else "Σ LUT (raw medians)")}
    if predictor.notice:
        ident["latency_notice"] = predictor.notice
    return table, ident
