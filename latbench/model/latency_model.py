"""The latency model: what a LUT predicts for a whole deployed network (DESIGN §1, §5.9).

A LUT times every op alone. A deployed network is not the sum of its ops timed alone: every op
timed alone pays the backend's per-call cost (Python dispatch, an ONNX Runtime session run, a
graph launch) that the network pays once, and a fusing backend (Inductor, ONNX Runtime,
TensorRT) merges op boundaries away. The model corrects the sum, keeping its additive form so a
differentiable search can still take its expectation under softmax / Gumbel weights::

    v_r        = max(t_r − overhead, 0)                 timed row r, per-call overhead removed
    cost_r     = max(slope[g(r)] · v_r + per_row[g(r)], 0)   (analytic rows, e.g. ``zero``: 0)
    prediction = constant + Σ_r cost_r

``t_r`` is the row's median, or its 10th percentile (``column``: the low end repeats better on a
noisy machine; cross-validation chooses). ``overhead`` is measured (a near-empty op timed with the LUT's own backend and protocol,
:mod:`latbench.timing.probe`); ``constant``, ``slope`` and ``per_row`` are fitted on measured whole
networks (:mod:`latbench.model.fitting`). ``g(r)`` groups rows by the row's ``op`` (``group_by="op"``),
by ``op`` and ``stage`` (``"op+stage"``) or not at all (``"none"``: one global slope). The raw sum
is the special case overhead 0, slope 1, per-row 0, constant 0.

A model is valid for exactly one *scope*: the LUT rows of one backend, precision, resolution,
batch and cache state, measured on one device. A LUT keeps its models in its metadata under
``latency_models`` (a list, one per scope and family of networks — e.g. one per fusion head —
each versioned and carrying its provenance); :func:`model_for` finds the one for a scope and
refuses, with one line, a LUT whose models were all fitted for something else. A LUT without models
still works (raw sum, or its affine ``calibration``). What prices a use — this model, the raw sum
or the calibration — is decided in one place, :mod:`latbench.model.predictor`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from latbench.errors import LUTError, UserError

MODEL_VERSION = 1
META_KEY = "latency_models"
GROUPINGS = ("none", "op", "op+stage")
COLUMNS = ("median_us", "p10_us")


def _identity(dev: Mapping[str, Any] | None) -> dict[str, Any]:
    from latbench.device import device_identity

    return device_identity(dict(dev or {}))


@dataclass(frozen=True)
class ModelScope:
    """What a model was fitted for: LUT rows of one backend / precision / resolution / batch /
    cache state, measured on one device (``device``: :func:`latbench.device.device_identity`)."""

    backend: str
    precision: str
    height: int
    width: int
    batch: int
    cache: str
    device: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> str:
        return f"{self.height}x{self.width}"

    def describe(self) -> str:
        name = self.device.get("name") or self.device.get("type") or "?"
        return f"{self.backend} {self.precision} {self.resolution} batch {self.batch} ({self.cache} cache) on {name}"

    def difference(self, other: "ModelScope") -> str | None:
        """The first field in which ``other`` differs, in words; None if they match."""
        for f in ("backend", "precision", "resolution", "batch", "cache"):
            a, b = getattr(self, f), getattr(other, f)
            if a != b:
                return f"{f} {a} (this use: {b})"
        if json.dumps(self.device, sort_keys=True) != json.dumps(other.device, sort_keys=True):
            return f"device {self.device.get('name')!r} (this use: {other.device.get('name')!r})"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelScope":
        return cls(backend=str(d["backend"]), precision=str(d["precision"]), height=int(d["height"]),
                   width=int(d["width"]), batch=int(d["batch"]), cache=str(d["cache"]),
                   device=dict(d.get("device") or {}))

    @classmethod
    def of_lut(cls, meta: Mapping[str, Any], height: int, width: int, batch: int | None = None,
               backend: str | None = None, precision: str | None = None) -> "ModelScope":
        """The scope of ``meta``'s LUT rows at ``height``×``width`` (backend / precision from the
        LUT's metadata unless given, e.g. for a merged LUT)."""
        return cls(backend=str(backend or meta.get("backend")), precision=str(precision or meta.get("precision")),
                   height=int(height), width=int(width), batch=int(batch if batch is not None else meta.get("batch", 1)),
                   cache=str(meta.get("cache") or "warm"), device=_identity(meta.get("device")))


def group_key(group_by: str, op: str, stage: str) -> str:
    if group_by == "none":
        return "*"
    if group_by == "op":
        return str(op)
    if group_by == "op+stage":
        return f"{op}@{stage}"
    raise ValueError(f"unknown grouping {group_by!r}; expected one of {', '.join(GROUPINGS)}")


@dataclass(frozen=True)
class LatencyModel:
    """A fitted latency model (see the module docstring). ``slopes`` / ``per_row`` map group keys
    to coefficients; a group the fit never saw uses ``default_slope`` / ``default_per_row``."""

    scope: ModelScope
    overhead_us: float
    constant_us: float
    group_by: str = "none"
    column: str = "median_us"
    slopes: Mapping[str, float] = field(default_factory=dict)
    per_row: Mapping[str, float] = field(default_factory=dict)
    default_slope: float = 1.0
    default_per_row: float = 0.0
    provenance: Mapping[str, Any] = field(default_factory=dict)
    version: int = MODEL_VERSION

    def __post_init__(self) -> None:
        if self.group_by not in GROUPINGS:
            raise ValueError(f"unknown grouping {self.group_by!r}")
        if self.column not in COLUMNS:
            raise ValueError(f"unknown LUT column {self.column!r}")
        vals = [self.overhead_us, self.constant_us, self.default_slope, self.default_per_row,
                *self.slopes.values(), *self.per_row.values()]
        if not all(isinstance(v, (int, float)) and math.isfinite(float(v)) for v in vals):
            raise ValueError("every coefficient of a latency model must be a finite number")
        if self.overhead_us < 0:
            raise ValueError("the per-call overhead cannot be negative")

    # ---- prediction ------------------------------------------------------------------------------
    def row_cost(self, op: str, stage: str, median_us: float, analytic: bool = False) -> float:
        """Corrected µs of one LUT row (0 for an analytic row); ``median_us`` is the row's value in
        the model's ``column``."""
        if analytic:
            return 0.0
        g = group_key(self.group_by, op, stage)
        a = float(self.slopes.get(g, self.default_slope))
        b = float(self.per_row.get(g, self.default_per_row))
        return max(a * max(float(median_us) - self.overhead_us, 0.0) + b, 0.0)

    def predict_rows(self, rows: Sequence[tuple[str, str, float, bool]]) -> float:
        """``constant + Σ row_cost`` over ``(op, stage, value, analytic)`` rows (values from the
        model's ``column``, :meth:`latbench.model.predictor.Predictor.rows`)."""
        return float(self.constant_us) + sum(self.row_cost(*r) for r in rows)

    # ---- identity and storage ------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """First 16 hex digits of the sha256 of the model's coefficients and scope."""
        d = self.to_dict()
        d.pop("provenance", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """What a search log / genotype / FPS record says about the model that priced it."""
        p = dict(self.provenance)
        return {"id": self.model_id, "version": self.version, "scope": self.scope.describe(),
                "group_by": self.group_by, "column": self.column, "overhead_us": self.overhead_us, "constant_us": self.constant_us,
                "fitted_on": p.get("fit_networks"), "fitted_at": p.get("date"), "by": p.get("by")}

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "scope": self.scope.to_dict(), "overhead_us": float(self.overhead_us),
                "constant_us": float(self.constant_us), "group_by": self.group_by, "column": self.column,
                "slopes": {k: float(v) for k, v in sorted(self.slopes.items())},
                "per_row": {k: float(v) for k, v in sorted(self.per_row.items())},
                "default_slope": float(self.default_slope), "default_per_row": float(self.default_per_row),
                "provenance": json.loads(json.dumps(dict(self.provenance), default=str))}

    @classmethod
    def from_dict(cls, d: Any) -> "LatencyModel":
        """Parse a stored model; :class:`LUTError` (one line) for a corrupt or unknown one."""
        if not isinstance(d, Mapping):
            raise LUTError("the LUT's latency model is corrupt (not a JSON object); refit it with latbench fit")
        ver = d.get("version")
        if ver != MODEL_VERSION:
            raise LUTError(f"the LUT's latency model has version {ver!r}; this latbench reads version "
                           f"{MODEL_VERSION} only (refit it with latbench fit)")
        try:
            return cls(scope=ModelScope.from_dict(d["scope"]), overhead_us=float(d["overhead_us"]),
                       constant_us=float(d["constant_us"]), group_by=str(d.get("group_by", "none")),
                       column=str(d.get("column", "median_us")),
                       slopes={str(k): float(v) for k, v in dict(d.get("slopes") or {}).items()},
                       per_row={str(k): float(v) for k, v in dict(d.get("per_row") or {}).items()},
                       default_slope=float(d.get("default_slope", 1.0)),
                       default_per_row=float(d.get("default_per_row", 0.0)),
                       provenance=dict(d.get("provenance") or {}), version=int(ver))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LUTError(f"the LUT's latency model is corrupt ({type(exc).__name__}: {exc}); "
                           "refit it with latbench fit") from None


# ---- models in a LUT's metadata --------------------------------------------------------------------
def stored_models(meta: Mapping[str, Any]) -> list[LatencyModel]:
    """Every model in a LUT's metadata (:class:`LUTError` if the list is corrupt)."""
    raw = meta.get(META_KEY)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise LUTError(f"the LUT's metadata key {META_KEY!r} is corrupt (not a list); refit with latbench fit")
    return [LatencyModel.from_dict(d) for d in raw]


def _fitted_space(model: LatencyModel) -> str:
    space = dict(model.provenance).get("space") or {}
    cfg = space.get("config") if isinstance(space, Mapping) else None
    return json.dumps(cfg or {}, sort_keys=True, default=str)


def same_slot(a: LatencyModel, b: LatencyModel) -> bool:
    """Do ``a`` and ``b`` price the same thing: one scope, networks of one space configuration (a
    model that did not record its configuration shares the slot of any)? A LUT keeps one model per
    slot, so a model per fusion head (Table X) lives beside the others."""
    if a.scope.difference(b.scope) is not None:
        return False
    fa, fb = _fitted_space(a), _fitted_space(b)
    return fa == fb or "{}" in (fa, fb)


def with_model(meta: Mapping[str, Any], model: LatencyModel) -> dict[str, Any]:
    """``meta`` with ``model`` stored, replacing any earlier model of the same slot (scope and the
    space configuration of its networks, :func:`same_slot`)."""
    out = dict(meta)
    keep = [m.to_dict() for m in stored_models(meta) if not same_slot(m, model)]
    out[META_KEY] = keep + [model.to_dict()]
    return out


def model_for(meta: Mapping[str, Any], scope: ModelScope, *, required: bool = False) -> LatencyModel | None:
    """The stored model fitted for ``scope``; None when the LUT has no model (or ``required`` is
    false and none matches... see below).

    A LUT that holds models, none of them for ``scope``, is refused with one line (a model fitted
    for another backend, precision, resolution, batch or device must not price this use): the
    user refits or opts out (e.g. ``--latency-model none``). With no models at all the answer is
    None, unless ``required``."""
    models = stored_models(meta)
    if not models:
        if required:
            raise UserError("the LUT holds no latency model; fit one with `latbench fit LUT`")
        return None
    for m in models:
        if m.scope.difference(scope) is None:
            return m
    why = models[0].scope.difference(scope)
    fitted = "; ".join(m.scope.describe() for m in models)
    raise LUTError(f"the LUT's latency model was fitted for {fitted}, not for this use (it differs in {why}); "
                   f"fit one for {scope.describe()} with `latbench fit`, or use the raw LUT sum "
                   f"(--latency-model none)")

