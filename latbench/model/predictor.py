"""The one predictor: what a LUT says a network costs, for one scope (DESIGN §1).

A :class:`Predictor` is made from a LUT, a scope (:class:`~latbench.model.latency_model.ModelScope`:
backend, precision, resolution, batch, cache state, device; plus the *family* of networks priced,
e.g. ``{"fusion": "aspp"}``, and optionally the measurement statistic) and what prices the rows:

- the LUT's latency model fitted for that scope (``latbench fit``; :mod:`.latency_model`),
- or none: the raw sum of the LUT's medians — with, when the LUT holds one, the legacy affine
  calibration ``a·Σ + b`` of ``validate-lut --save-calibration`` beside it (the special case of the
  model with one slope ``a``, no overhead and constant ``b``: :meth:`Predictor.affine_model`).

It answers three questions, and every consumer asks it rather than the LUT: ``validate-lut``,
``latbench fit``, ``nas search``, ``nas fps``, ``nas sample`` (and, through their records,
``nas report``):

1. the prediction for one architecture's rows (:meth:`Predictor.predict`: Σ LUT, calibrated,
   model; :meth:`Predictor.raw_sum`; :meth:`Predictor.rows` for a fit);
2. the per-row cost table a differentiable search takes its expectation over
   (:meth:`Predictor.cost_table`, :meth:`Predictor.fixed_cost`: the model is additive over rows, so
   the expectation under softmax / Gumbel weights of the priced rows is exact);
3. the scope check with its one-line refusal (:func:`choose_model`): a LUT whose models were all
   fitted for another backend, precision, resolution, batch or device is refused; a model fitted
   on another family of networks (another fusion head, Table X) or to another statistic prices
   nothing — under ``latency_model="auto"`` the raw sum does, with a one-line :attr:`Predictor.notice`,
   under ``"require"`` it is refused. :meth:`Predictor.model_mismatch` says why the model does not
   describe a given measurement (another backend or device, ``nas fps``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from latbench.errors import LUTError, UserError
from latbench.model.latency_model import LatencyModel, ModelScope, model_for, stored_models
from latbench.space import format_resolution
from latbench.timing.registry import folds_constants, network_rows_rule, weights_are_constants

Row = tuple[str, str, float, bool]


class NetworkRows(list):
    """The ``(position, op)`` rows of one network (:meth:`Predictor.network_rows`), with the
    positions among them whose input is a constant in that network (``constant_input``)."""

    def __init__(self, rows: Sequence[tuple[str, str]] = (), constant_input: frozenset[str] = frozenset()) -> None:
        super().__init__(rows)
        self.constant_input = frozenset(constant_input)


MODES = ("auto", "none", "require")
#: What a model's statistic is compared with in one ``measure()`` (``nas fps``): like with like.
MEASURED_FOR_STATISTIC = {"median": "median_us", "fastest-half": "p10_us"}


# ---- which model, if any ---------------------------------------------------------------------------
def model_family(model: LatencyModel) -> dict[str, Any]:
    """The configuration of the space whose networks ``model`` was fitted on ({} if not recorded)."""
    space = dict(model.provenance).get("space") or {}
    return dict(space.get("config") or {}) if isinstance(space, Mapping) else {}


def model_statistic(model: LatencyModel) -> str | None:
    """The statistic of the measured networks the model was fitted to (None if not recorded)."""
    s = dict(model.provenance).get("statistic")
    return None if s is None else str(s)


def family_mismatch(model: LatencyModel, family: Mapping[str, Any] | None, statistic: str | None = None) -> str | None:
    """Why ``model`` does not price networks of ``family`` measured with ``statistic``, in words
    (``"fusion=dcfc networks, not fusion=aspp"``); None if it does. Fields the model did not record
    (models fitted before they were recorded) do not disqualify it."""
    fitted = model_family(model)
    for k, want in dict(family or {}).items():
        have = fitted.get(k)
        if have is not None and have != want:
            return f"{k}={have} networks, not {k}={want}"
    have_stat = model_statistic(model)
    if statistic is not None and have_stat is not None and have_stat != statistic:
        return f"the {have_stat} statistic, not {statistic}"
    have_rows = dict(model.provenance).get("network_rows")
    if have_rows is not None:
        now = network_rows_rule(model.scope.backend)
        if have_rows != now:
            return f"sums of {have_rows}, while prices on {model.scope.backend} now sum {now}"
    return None


def choose_model(meta: Mapping[str, Any], scope: ModelScope, mode: str = "auto",
                 family: Mapping[str, Any] | None = None, statistic: str | None = None,
                 config: Mapping[str, Any] | None = None) -> tuple[LatencyModel | None, str | None]:
    """``(model, notice)``: the LUT's model for ``scope`` and ``family``, and a one-line notice
    when the raw sum prices instead of a model the LUT has (see the module docstring). Among
    several that fit, the one fitted on networks of exactly ``config`` (the priced networks' space
    configuration) wins, else the first stored."""
    if mode not in MODES:
        raise UserError(f"latency_model must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "none":
        return None, None
    found = model_for(meta, scope, required=mode == "require")  # refuses models of other scopes only
    if found is None:
        return None, None
    same = [m for m in stored_models(meta) if m.scope.difference(scope) is None]
    fits = [m for m in same if family_mismatch(m, family, statistic) is None]
    if fits:
        want = json.dumps(dict(config), sort_keys=True, default=str) if config is not None else None
        exact = [m for m in fits if json.dumps(model_family(m), sort_keys=True, default=str) == want]
        return (exact or fits)[0], None
    why = "; ".join(sorted({str(family_mismatch(m, family, statistic)) for m in same}))
    differ = {k: v for k, v in dict(family or {}).items()
              if any(model_family(m).get(k) not in (None, v) for m in same)}
    opts = "".join(f" --space-opt {k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                   for k, v in differ.items())
    fit = f"`latbench fit LUT{opts}`"
    if mode == "require":
        raise LUTError(f"the LUT's latency model for {scope.describe()} was fitted on {why}; fit one for these "
                       f"networks with {fit}, or use the raw LUT sum (--latency-model none)")
    return None, (f"priced by the raw LUT sum: the LUT's latency model for {scope.describe()} was fitted on "
                  f"{why} (fit one for these networks with {fit})")


def lut_calibration(meta: Mapping[str, Any]) -> tuple[float, float] | None:
    """The legacy affine calibration ``(a, b)`` a LUT holds (``validate-lut --save-calibration``)."""
    cal = meta.get("calibration")
    if isinstance(cal, Mapping) and "a" in cal and "b" in cal:
        return float(cal["a"]), float(cal["b"])
    return None


# ---- the predictor ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """One architecture's predicted latency (µs): Σ LUT, the legacy calibration's, the model's."""

    sum_us: float
    calibrated_us: float | None = None
    model_us: float | None = None

    @property
    def best_us(self) -> float:
        """The model's where there is one, else the calibrated, else the raw sum."""
        return next(v for v in (self.model_us, self.calibrated_us, self.sum_us) if v is not None)

    @classmethod
    def from_record(cls, d: Mapping[str, Any] | None) -> "Prediction | None":
        """The prediction a record (e.g. ``nas fps``'s ``lut``) holds as ``sum_us`` /
        ``calibrated_us`` / ``model_us``; None when it holds none."""
        d = d or {}
        vals = [d.get(k) if isinstance(d.get(k), (int, float)) else None for k in ("sum_us", "calibrated_us", "model_us")]
        if all(v is None for v in vals):
            return None
        if vals[0] is None:  # a record with a model's or calibrated figure only
            vals[0] = next(v for v in vals if v is not None)
        return cls(float(vals[0]), *(None if v is None else float(v) for v in vals[1:]))


class Predictor:
    """LUT + scope + model (or none): see the module docstring. Make one with :meth:`for_lut`."""

    def __init__(self, lut: Any, scope: ModelScope, model: LatencyModel | None = None,
                 calibration: tuple[float, float] | None = None, notice: str | None = None,
                 family: Mapping[str, Any] | None = None) -> None:
        self.lut = lut
        self.scope = scope
        self.model = model
        self.calibration = calibration
        self.notice = notice
        self.family = dict(family or {})
        cal = lut.meta.get("calibration") if calibration is not None else None
        #: the stored calibration with its provenance (fit figures, date), None without one
        self.calibration_info = dict(cal) if isinstance(cal, Mapping) else None

    @classmethod
    def for_lut(cls, lut: Any, height: int, width: int, batch: int | None = None, *, backend: str | None = None,
                precision: str | None = None, latency_model: str = "auto", calibration: bool = True,
                family: Mapping[str, Any] | None = None, statistic: str | None = None,
                config: Mapping[str, Any] | None = None) -> "Predictor":
        """The predictor of ``lut``'s rows at ``height``×``width`` and ``batch`` (backend and
        precision: the LUT's unless given, e.g. for a merged LUT); ``latency_model``: auto / none /
        require; ``calibration``: whether the legacy calibration is offered; ``family``: the
        networks priced (compared with the space configuration a model was fitted on); ``config``:
        their whole space configuration (a model fitted on exactly it is preferred)."""
        scope = ModelScope.of_lut(lut.meta, height, width, batch, backend, precision)
        model, notice = choose_model(lut.meta, scope, latency_model, family, statistic, config)
        return cls(lut, scope, model, lut_calibration(lut.meta) if calibration else None, notice, family)

    # ---- facts ----------------------------------------------------------------------------------
    @property
    def resolution(self) -> tuple[int, int]:
        return (self.scope.height, self.scope.width)

    @property
    def column(self) -> str:
        """The LUT column the pricing reads (the model's; the median without one)."""
        return self.model.column if self.model is not None else "median_us"

    @property
    def statistic(self) -> str | None:
        """The statistic the model was fitted to (None: no model, or not recorded)."""
        return model_statistic(self.model) if self.model is not None else None

    @property
    def constant_us(self) -> float:
        return float(self.model.constant_us) if self.model is not None else 0.0

    @property
    def priced_by(self) -> str:
        if self.model is not None:
            return "latency model " + self.model.model_id
        return "Σ LUT, affine calibration" if self.calibration is not None else "Σ LUT (raw medians)"

    def summary(self) -> dict[str, Any] | None:
        """The model's summary (None without one), with the statistic it was fitted to."""
        if self.model is None:
            return None
        return {**self.model.summary(), "statistic": self.statistic}

    def affine_model(self) -> LatencyModel | None:
        """The legacy calibration as a latency model (one slope ``a``, constant ``b``)."""
        if self.calibration is None:
            return None
        a, b = self.calibration
        return LatencyModel(self.scope, overhead_us=0.0, constant_us=b, default_slope=a,
                            provenance={"by": "validate-lut --save-calibration"})

    def provenance(self, path: str | Path) -> dict[str, Any]:
        """What a genotype or a record says about the LUT (and model) that priced it."""
        from latbench.files import file_sha256

        meta = self.lut.meta
        dev = meta.get("device") or {}
        return {"path": str(Path(path).resolve()), "name": meta.get("name"), "sha256": file_sha256(path),
                "device": dev.get("name") if isinstance(dev, dict) else dev, "device_info": dev,
                "backend": self.scope.backend, "precision": self.scope.precision, "cache": meta.get("cache"),
                "batch": int(self.scope.batch), "resolution": format_resolution(self.resolution),
                "created": meta.get("created")}

    # ---- one architecture ---------------------------------------------------------------------------
    def rows(self, rows: Sequence[tuple[str, str]], column: str | None = None) -> list[Row]:
        """``(op, stage, value, analytic)`` of each ``(position, op)`` row, ``value`` from ``column``
        (the model's by default; at the positions ``rows.constant_input`` names — :class:`NetworkRows`
        — from the op's timing on a constant input where the LUT has it); :class:`UserError` naming
        the rows that are missing or failed."""
        h, w = self.resolution
        const = getattr(rows, "constant_input", frozenset())
        out, bad = [], []
        for pos, op in rows:
            r = self.lut.row_info(pos, op, h, w, self.scope.batch, column or self.column, constant=pos in const)
            if r is None:
                bad.append(f"{pos}:{op}")
            else:
                out.append(r)
        if bad:
            self._refuse_missing(bad)
        return out

    def network_rows(self, space: Any, arch: Mapping[str, Any]) -> NetworkRows:
        """The ``(position, op)`` rows of ``arch`` that run on this predictor's backend: all of
        ``space.architecture_rows(arch)``, less the positions a constant-folding backend never runs
        (the space's optional ``folded_positions``; :func:`latbench.timing.registry.folds_constants`);
        those of them that read a constant (the space's optional ``constant_input_positions``) are
        priced from the LUT's timings on a constant input where it has them. Every price of a whole
        network goes through here."""
        rows = list(space.architecture_rows(arch))
        folded = getattr(space, "folded_positions", None)
        if folded is not None and folds_constants(self.scope.backend):
            skip = folded(arch, weights_are_constants=weights_are_constants(self.scope.backend))
            rows = [r for r in rows if r[0] not in skip]
        const = getattr(space, "constant_input_positions", None)
        if const is None or not self.lut.has_const_timings:
            return NetworkRows(rows)
        return NetworkRows(rows, frozenset(const(arch)) & {p for p, _ in rows})

    def raw_sum(self, rows: Sequence[tuple[str, str]]) -> float:
        """Σ LUT median over ``rows`` (constant-input timings as :meth:`rows`); :class:`UserError`
        naming the rows that are missing or failed."""
        return float(sum(r[2] for r in self.rows(rows, "median_us")))

    def _refuse_missing(self, bad: Sequence[str]) -> None:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UserError(f"LUT lacks (or failed) {len(bad)} row(s) this architecture needs at "
                        f"{format_resolution(self.resolution)} batch {self.scope.batch}: {', '.join(bad[:3])}{more}")

    def model_us(self, rows: Sequence[tuple[str, str]]) -> float | None:
        """The model's prediction for ``rows`` (None without a model)."""
        if self.model is None:
            return None
        return self.model.predict_rows(self.rows(rows, self.model.column))

    def predict(self, rows: Sequence[tuple[str, str]]) -> Prediction:
        """Σ LUT, the calibrated a·Σ + b (when the LUT holds a calibration) and the model's
        prediction (when it has a model for this scope) of one architecture's rows."""
        total = self.raw_sum(rows)
        cal = None if self.calibration is None else self.calibration[0] * total + self.calibration[1]
        return Prediction(total, cal, self.model_us(rows))

    # ---- the search's cost table ------------------------------------------------------------------
    def row_cost(self, position: str, op: str) -> float | None:
        """The priced µs of one row (the model's corrected cost, or the median); None if missing."""
        h, w = self.resolution
        if self.model is None:
            return self.lut.lookup(position, op, h, w, self.scope.batch)
        r = self.lut.row_info(position, op, h, w, self.scope.batch, self.model.column)
        return None if r is None else self.model.row_cost(*r)

    def cost_table(self, positions: Sequence[str], candidates: Sequence[Sequence[str]]):
        """``(priced, raw, missing)``: float64 tensors ``[len(positions) × max candidates]`` of each
        candidate row's priced cost and raw median (NaN where missing or padding), and the
        ``(position, op)`` rows that are missing or failed, in order."""
        import torch

        if len(positions) != len(candidates):
            raise ValueError("positions and candidates must have the same length")
        h, w = self.resolution
        width_c = max((len(c) for c in candidates), default=0)
        raw = torch.full((len(positions), width_c), math.nan, dtype=torch.float64)
        priced = raw.clone()
        missing: list[tuple[str, str]] = []
        for i, (pos, ops) in enumerate(zip(positions, candidates)):
            for j, op in enumerate(ops):
                v = self.lut.lookup(pos, op, h, w, self.scope.batch)
                if v is None:
                    missing.append((pos, op))
                    continue
                raw[i, j] = v
                priced[i, j] = v if self.model is None else self.row_cost(pos, op)
        return priced, raw, missing

    def fixed_cost(self, rows: Sequence[tuple[str, str]]) -> tuple[float, float, list[tuple[str, str]]]:
        """``(priced, raw, missing)`` of rows every architecture has: the priced sum includes the
        model's constant; ``missing`` lists rows the LUT lacks."""
        h, w = self.resolution
        raw, present, missing = 0.0, [], []
        for pos, op in rows:
            v = self.lut.lookup(pos, op, h, w, self.scope.batch)
            if v is None:
                missing.append((pos, op))
            else:
                raw += v
                present.append((pos, op))
        if self.model is None:
            return raw, raw, missing
        priced = float(self.model.constant_us) + sum(self.row_cost(pos, op) for pos, op in present)
        return priced, raw, missing

    # ---- does the model describe a measurement? -------------------------------------------------------
    def model_mismatch(self, backend: str | None = None, device: Mapping[str, Any] | None = None,
                       family: Mapping[str, Any] | None = None) -> str | None:
        """Why the model does not describe a network measured with ``backend`` on ``device``
        (:func:`latbench.device.describe_device`) of ``family``, in words; None if it does."""
        from latbench.device import device_identity

        if self.model is None:
            return None
        sc = self.model.scope
        if backend is not None and backend != sc.backend:
            return f"the latency model was fitted for backend {sc.backend}, this measurement uses {backend}"
        if device is not None:
            here = device_identity(dict(device))
            if here.get("type") != sc.device.get("type") or here.get("name") != sc.device.get("name"):
                return (f"the latency model was fitted on {sc.device.get('name')!r}, this measurement runs on "
                        f"{here.get('name')!r}")
        why = family_mismatch(self.model, family)
        if why is not None:
            return f"the latency model was fitted on {why}"
        return None

    def measured_for_model(self) -> str:
        """The figure of one ``measure()`` to compare the model with (like with like): the median
        for a model fitted to medians, the 10th percentile for one fitted to the fastest half."""
        return MEASURED_FOR_STATISTIC.get(self.statistic or "median", "median_us")

