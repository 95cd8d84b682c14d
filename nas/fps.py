"""End-to-end latency and FPS of a derived LGCNet, measured through latbench's one protocol.

:func:`measure_fps` builds the inference network of a genotype (``nas.network.inference_network``:
eval mode, ``zero`` edges removed, BatchNorm folded; random weights — latency does not depend on
their values), and for every (resolution, backend) times it with :func:`latbench.timing.measure`
and the backend from :func:`latbench.timing.get_backend` — the same loop and backends that time
LUT entries, so a LUT's Σ and an FPS figure are comparable. ``FPS = batch · 10⁶ / median µs``.

Cost counting (:func:`count_cost`), per image (batch 1) at the given resolution, with forward
hooks on ``nn.Conv2d``, ``nn.ConvTranspose2d`` and ``nn.Linear``:

- ``Conv2d``: MACs = N·C_out·H_out·W_out · (C_in / groups)·k_h·k_w (grouped/depthwise included);
- ``ConvTranspose2d``: MACs = N·C_in·H_in·W_in · (C_out / groups)·k_h·k_w;
- ``Linear``: MACs = (elements of the input / in_features) · in_features · out_features;
- ``flops = 2 · macs``. Bias additions, BatchNorm (folded anyway), activations, pooling,
  interpolation and element-wise sums are not counted (they are memory-bound and small; the usual
  convention of segmentation papers). ``params`` counts every parameter of the folded network.

A LUT given with ``--lut`` adds its predictions beside each measurement, from the one predictor
(:class:`latbench.model.predictor.Predictor`): Σ LUT over ``LGCNetSpace.architecture_rows``,
``a·Σ + b`` when the LUT holds a legacy calibration, and the latency model's prediction when the
LUT holds a model for these rows and this fusion head (``latbench fit``) — shown only beside a
measurement the model describes (its backend and device) and compared with the measured figure of
the statistic it was fitted to (median, or p10 for the fastest-half statistic). The LUT must hold
every row of the genotype's network with the same op key (width multiplier included) at each
resolution (:func:`latbench.lut.coverage.check_prices`).

Report files (``REPORTS/fps/NAME.json``, one per GPU or CPU; NAME from ``--gpu`` or the device's
name) hold ``{"format": "nas-fps-report", "version": 1, "name": NAME, "records": [...]}``; each
record carries its full provenance (see :func:`make_record`). Appending reads the file, adds the
records and replaces the file atomically, under a lock file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from latbench.device import describe_device, name_matches, software_versions
from latbench.errors import UserError
from latbench.files import FileLock, atomic_write_text, file_sha256
from latbench.lut.table import LUT, now_iso, read_lut
from latbench.space import format_resolution
from latbench.timing import Measurement, TimingConfig, get_backend, measure
from nas.genotype import Genotype

REPORT_FORMAT = "nas-fps-report"
REPORT_VERSION = 1


# ---- identity ----------------------------------------------------------------------------------
def genotype_hash(genotype: Genotype) -> str:
    """sha256 (hex, first 16 digits) of the genotype's architecture and space configuration
    (``meta`` excluded): the key that joins FPS records and mIoU records of one network."""
    d = genotype.to_dict()
    d.pop("meta", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return s or "device"


# ---- cost ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCost:
    params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    kh, kw = m.kernel_size
    return int(out.numel()) * (m.in_channels // m.groups) * kh * kw


def _deconv_macs(m: nn.ConvTranspose2d, inp: torch.Tensor) -> int:
    kh, kw = m.kernel_size
    return int(inp.numel()) * (m.out_channels // m.groups) * kh * kw


def _linear_macs(m: nn.Linear, inp: torch.Tensor) -> int:
    return int(inp.numel()) * m.out_features


@torch.no_grad()
def count_cost(model: nn.Module, input_shape: Sequence[int]) -> ModelCost:
    """Parameters and MACs of one forward of ``model`` on a tensor of ``input_shape`` (see the
    module docstring for what is counted). Runs on the ``meta`` device when the model allows it
    (shapes only, no arithmetic), else on the CPU."""
    params = sum(int(p.numel()) for p in model.parameters())
    total = [0]

    def hook(m: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(m, nn.ConvTranspose2d):
            total[0] += _deconv_macs(m, args[0])
        elif isinstance(m, nn.Conv2d):
            total[0] += _conv_macs(m, out)
        elif isinstance(m, nn.Linear):
            total[0] += _linear_macs(m, args[0])

    def run(device: str) -> None:
        import copy

        net = copy.deepcopy(model).to(device).eval()
        handles = [m.register_forward_hook(hook) for m in net.modules()
                   if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
        try:
            net(torch.zeros(tuple(input_shape), device=device))
        finally:
            for h in handles:
                h.remove()

    try:
        run("meta")
    except Exception:
        total[0] = 0
        run("cpu")
    return ModelCost(params=params, macs=int(total[0]))


# ---- LUT prediction -----------------------------------------------------------------------------
def check_lut_for(lut: LUT, lut_path: str, genotype: Genotype, resolutions: Sequence[tuple[int, int]],
                  batch: int) -> None:
    """:class:`UserError` unless ``lut`` prices this genotype's network at every resolution: the
    one LUT/space check (:func:`latbench.lut.coverage.check_prices`; one LUT prices every fusion
    ablation: what must match is every row of this network, with the same op key)."""
    from latbench.lut.coverage import check_prices
    from nas.space import LGCNetSpace

    space = LGCNetSpace(genotype.config)
    for hw in resolutions:
        check_prices(lut, lut_path, space, tuple(hw), int(batch), user="genotype")


def lut_predictor(lut: LUT, genotype: Genotype, hw: tuple[int, int], batch: int, latency_model: str = "auto"):
    """The :class:`latbench.model.predictor.Predictor` of ``lut`` for this genotype's network at
    ``hw`` (its fusion head is the family a latency model must have been fitted on)."""
    from latbench.model.predictor import Predictor

    return Predictor.for_lut(lut, hw[0], hw[1], batch, latency_model=latency_model,
                             family={"fusion": genotype.config.fusion}, config=genotype.config.to_dict())


def lut_prediction(predictor: Any, lut_path: str, genotype: Genotype) -> dict[str, Any]:
    """What the LUT predicts for the genotype (µs): the raw Σ LUT, the legacy calibrated a·Σ + b if
    stored, and the latency model's prediction when the LUT has a model for these rows and this
    fusion head (``model_statistic``: the statistic it was fitted to; ``notice``: why the raw sum
    stands in for a model the LUT has)."""
    from nas.space import LGCNetSpace

    p = predictor.predict(predictor.network_rows(LGCNetSpace(genotype.config), genotype.arch))
    prov = predictor.provenance(lut_path)
    return {"path": lut_path, "name": prov["name"], "backend": prov["backend"], "precision": prov["precision"],
            "device": prov["device"], "sum_us": p.sum_us, "calibrated_us": p.calibrated_us,
            "calibration": predictor.calibration_info, "model_us": p.model_us, "model": predictor.summary(),
            "model_statistic": predictor.statistic, "notice": predictor.notice}


def prediction_for(pred: dict[str, Any] | None, predictor: Any, backend: str | None, device_info: dict[str, Any],
                   genotype: Genotype, m: Measurement) -> dict[str, Any] | None:
    """``pred`` as one measurement's record shows it: the model's prediction only where the model
    describes this measurement (its backend, device and fusion head; otherwise ``model_us`` is None
    and ``model_notice`` says why), compared like with like — with the measured figure of the
    statistic the model was fitted to (``model_compared_with``: ``median_us``, or ``p10_us`` for
    the fastest-half statistic) — as ``model_error_pct``."""
    if pred is None:
        return None
    out = dict(pred)
    if out.get("model_us") is None:
        return out
    why = predictor.model_mismatch(backend=backend, device=device_info, family={"fusion": genotype.config.fusion})
    if why is not None:
        out.update(model_us=None, model_notice=why + "; no model prediction for it")
        return out
    field_name = predictor.measured_for_model()
    measured = getattr(m, field_name, math.nan)
    out["model_compared_with"] = field_name
    out["model_error_pct"] = (100.0 * (out["model_us"] - measured) / measured
                              if m.ok and measured and math.isfinite(measured) else None)
    return out


# ---- measurement --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FpsRequest:
    genotype_path: str
    resolutions: tuple[tuple[int, int], ...]
    backends: tuple[str, ...]
    device: str
    precision: str = "fp32"
    batch: int = 1
    width_mult: float | None = None
    timing: TimingConfig = field(default_factory=TimingConfig)
    lut_path: str | None = None
    label: str | None = None
    latency_model: str = "auto"


def effective_genotype(genotype: Genotype, width_mult: float | None) -> Genotype:
    if width_mult is None or width_mult == genotype.config.width_mult:
        return genotype
    return Genotype(genotype.arch, genotype.config.replace(width_mult=float(width_mult)), dict(genotype.meta))


def make_record(*, request: FpsRequest, genotype: Genotype, genotype_file_sha: str, hw: tuple[int, int],
                backend: Any, m: Measurement, cost: ModelCost, device_info: dict[str, Any],
                lut: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """One report record: the figures and everything needed to reproduce or question them."""
    ok = m.ok and m.median_us > 0
    ms = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v / 1e3  # noqa: E731
    return {
        "date": now_iso(),
        "report": name,
        "genotype": {"path": str(request.genotype_path), "sha": genotype_hash(genotype),
                     "file_sha256": genotype_file_sha, "name": genotype.meta.get("name") or Path(request.genotype_path).stem},
        "network": {"width_mult": genotype.config.width_mult, "params": cost.params, "macs": cost.macs,
                    "flops": cost.flops, "cost_counted": "per image; conv/deconv/linear MACs, flops = 2*macs",
                    "config": genotype.config.to_dict()},
        "resolution": format_resolution(hw), "height": hw[0], "width": hw[1], "batch": request.batch,
        "backend": getattr(backend, "name", None), "precision": request.precision,
        # effective fp32 math (strict IEEE or TF32) and the flags behind it
        "precision_mode": (backend.describe().get("precision_mode") if hasattr(backend, "describe") else None),
        "status": m.status, "error": m.error,
        "latency_ms": ms(m.median_us), "p10_ms": ms(m.p10_us), "p90_ms": ms(m.p90_us),
        "fps": request.batch * 1e6 / m.median_us if ok else None,
        "host_bound": m.host_bound, "enqueue_us": m.enqueue_us,
        "measurement": m.to_dict(),
        "lut": lut,
        "device": device_info, "versions": software_versions(),
        "backend_info": backend.describe() if hasattr(backend, "describe") else {},
        "protocol": request.timing.to_dict(),
    }


def report_name(label: str | None, device_info: dict[str, Any]) -> str:
    """The report's NAME: ``--gpu`` (checked against the device) or a slug of the device's name."""
    if label:
        if not name_matches(label, device_info):
            raise UserError(f"--gpu {label!r} does not describe the device measured here "
                            f"({device_info.get('name')}); reports are filed under the device that produced them")
        if "/" in label or "\\" in label or label.startswith("."):
            raise UserError(f"--gpu {label!r} cannot name a report file")
        return label
    return "cpu" if device_info.get("type") == "cpu" else slug(device_info.get("name", "gpu"))


def measure_fps(request: FpsRequest, on_record: Callable[[dict[str, Any]], None] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Measure every (resolution, backend) of ``request``; returns ``(report NAME, records)``.

    Every input is checked before the first timing (backends exist and run on the device, the LUT
    fits), so bad input fails fast with a :class:`UserError`. The network is built once on the CPU
    and stays there: each backend times its own copy on the device (:func:`latbench.timing.measure`
    never moves or casts the module it is given), so every backend and resolution starts from the
    same fp32 CPU network."""
    from nas.memory import check_network_fits
    from nas.network import inference_network

    genotype = Genotype.load(request.genotype_path)
    file_sha = file_sha256(request.genotype_path)
    genotype = effective_genotype(genotype, request.width_mult)
    if request.batch < 1:
        raise UserError(f"batch must be >= 1, not {request.batch}")
    if not request.resolutions:
        raise UserError("no resolution given")
    if not request.backends:
        raise UserError("no backend given")
    backends = [get_backend(b, device=request.device, precision=request.precision, threads=request.timing.threads)
                for b in request.backends]
    device_info = describe_device(request.device)
    if device_info.get("type") == "cpu" and request.timing.threads:
        device_info["threads"] = request.timing.threads
    name = report_name(request.label, device_info)
    lut = None
    if request.lut_path:
        lut = read_lut(request.lut_path)
        check_lut_for(lut, str(request.lut_path), genotype, request.resolutions, request.batch)

    for hw in request.resolutions:  # refuse what cannot fit before building anything
        check_network_fits(genotype.config, genotype.arch, request.device, batch=request.batch, resolution=hw,
                           what="measuring the network")
    # every LUT prediction before the first timing: a model fitted for something else fails fast
    predictors = {hw: lut_predictor(lut, genotype, hw, request.batch, request.latency_model)
                  for hw in request.resolutions} if lut else {}
    preds = {hw: lut_prediction(p, str(request.lut_path), genotype) for hw, p in predictors.items()}
    net = inference_network(genotype.config, genotype.arch)
    records = []
    for hw in request.resolutions:
        cost = count_cost(net, (1, 3, hw[0], hw[1]))
        pred = preds.get(hw)
        x = torch.randn(request.batch, 3, hw[0], hw[1], generator=torch.Generator().manual_seed(0))
        for backend in backends:
            m = measure(net, [x], request.timing, backend=backend)
            shown = prediction_for(pred, predictors.get(hw), getattr(backend, "name", None), device_info, genotype, m)
            rec = make_record(request=request, genotype=genotype, genotype_file_sha=file_sha, hw=hw, backend=backend,
                              m=m, cost=cost, device_info=device_info, lut=shown, name=name)
            records.append(rec)
            if on_record is not None:
                on_record(rec)
    return name, records


# ---- report file --------------------------------------------------------------------------------
def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report file's content; a missing file is an empty report; anything else unreadable is a
    :class:`UserError` (never silently replaced)."""
    p = Path(path)
    if not p.exists():
        return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "name": p.stem, "records": []}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read FPS report {p}: {exc}") from None
    if not isinstance(d, dict) or d.get("format") != REPORT_FORMAT or not isinstance(d.get("records"), list):
        raise UserError(f"{p} is not an FPS report (expected \"format\": \"{REPORT_FORMAT}\" and a records list)")
    if d.get("version") != REPORT_VERSION:
        raise UserError(f"{p} is FPS report version {d.get('version')!r}; this nas reads version {REPORT_VERSION}")
    return d


def append_records(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path:
    """Read the report at ``path``, add ``records`` and replace it atomically (under ``path.lock``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(Path(str(p) + ".lock"), purpose="another nas fps"):
        d = read_report(p)
        d["records"].extend(_finite(r) for r in records)
        d["updated"] = now_iso()
        atomic_write_text(p, json.dumps(d, indent=2, default=str, allow_nan=False) + "\n")
    return p


def _finite(x: Any) -> Any:
    """``x`` with every NaN / inf float replaced by None (JSON has no NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def report_path(reports_dir: str | os.PathLike, name: str) -> Path:
    return Path(reports_dir) / "fps" / f"{name}.json"
