"""Gather FPS reports and mIoU results into a Table IV-style Markdown table and a Fig. 1-style plot.

Inputs under one reports folder (``--reports``, default ``reports``):

- ``fps/NAME.json`` — written by ``nas fps`` (format in :mod:`nas.fps`), one file per GPU / CPU.
- ``miou/RUN.json`` — written by ``nas eval`` (one file per evaluation run), format
  ``"nas-miou"`` version 1::

      {"format": "nas-miou", "version": 1,
       "genotype": {"path": "runs/x/genotype.json", "sha": "<nas.fps.genotype_hash(genotype)>"},
       "dataset": "cityscapes", "split": "val", "resolution": "769x1537",
       "miou": 0.724,                       # a fraction in [0, 1]
       "per_class": {"road": 0.97, ...},    # fractions; null for a class with undefined IoU
       "date": "2026-01-01T00:00:00+00:00", "checkpoint": "runs/x/best.pt"}   # optional extras

  ``genotype.sha`` is :func:`nas.fps.genotype_hash` of the genotype that was evaluated (width
  multiplier included, ``meta`` excluded): it is what joins an mIoU to FPS records.
  :func:`write_miou_record` writes such a file atomically; :func:`read_miou_record` validates one.

Table rows: one per (network, device, backend, precision, batch, resolution); when a setting was
measured several times the latest record wins. mIoU is that of the same network, preferring an
evaluation at the same resolution, then the latest one (the split is named in the table).

Repeated runs (the paper's mean of 5 or 3 searches), grouped as mean ± std over runs, are in
:mod:`nas.report_groups`; a run is named after the folder under ``runs/`` that holds its genotype
(:func:`run_name_from_path`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from latbench.errors import UserError
from latbench.files import atomic_write_text, save_png

MIOU_FORMAT = "nas-miou"
MIOU_VERSION = 1


# ---- mIoU records ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MiouRecord:
    genotype_sha: str
    dataset: str
    split: str
    resolution: str
    miou: float
    genotype_path: str | None = None
    per_class: dict[str, float | None] = field(default_factory=dict)
    date: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": MIOU_FORMAT, "version": MIOU_VERSION,
                "genotype": {"path": self.genotype_path, "sha": self.genotype_sha},
                "dataset": self.dataset, "split": self.split, "resolution": self.resolution,
                "miou": self.miou, "per_class": dict(self.per_class), "date": self.date, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "mIoU record") -> "MiouRecord":
        if not isinstance(d, Mapping) or d.get("format") != MIOU_FORMAT:
            raise UserError(f"{source} is not an mIoU record (expected \"format\": \"{MIOU_FORMAT}\")")
        if d.get("version") != MIOU_VERSION:
            raise UserError(f"{source} is mIoU record version {d.get('version')!r}; this nas reads {MIOU_VERSION}")
        g = d.get("genotype") or {}
        miou = d.get("miou")
        if not isinstance(g, Mapping) or not isinstance(g.get("sha"), str):
            raise UserError(f"{source} lacks genotype.sha")
        if not isinstance(miou, (int, float)) or isinstance(miou, bool) or not 0.0 <= float(miou) <= 1.0:
            raise UserError(f"{source}: miou must be a fraction in [0, 1], got {miou!r}")
        for k in ("dataset", "split", "resolution"):
            if not isinstance(d.get(k), str):
                raise UserError(f"{source} lacks {k}")
        if not _is_resolution(d["resolution"]):
            raise UserError(f"{source}: resolution must read HxW, e.g. 769x1537, not {d['resolution']!r}")
        if g.get("path") is not None and not isinstance(g.get("path"), str):
            raise UserError(f"{source}: genotype.path must be a string")
        per_class = d.get("per_class") or {}
        if not isinstance(per_class, Mapping) or not all(
                v is None or (_is_number(v) and 0.0 <= v <= 1.0) for v in per_class.values()):
            raise UserError(f"{source}: per_class must map class names to fractions in [0, 1] (or null)")
        if d.get("date") is not None and not isinstance(d.get("date"), str):
            raise UserError(f"{source}: date must be a string")
        known = {"format", "version", "genotype", "dataset", "split", "resolution", "miou", "per_class", "date"}
        return cls(genotype_sha=g["sha"], genotype_path=g.get("path"), dataset=d["dataset"], split=d["split"],
                   resolution=d["resolution"], miou=float(miou), per_class=dict(d.get("per_class") or {}),
                   date=d.get("date"), extra={k: v for k, v in d.items() if k not in known})


def write_miou_record(path: str | os.PathLike, record: MiouRecord) -> Path:
    """Write ``record`` as JSON to ``path`` atomically (``nas eval`` uses this)."""
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, allow_nan=False) + "\n")
    return Path(path)


def read_miou_record(path: str | os.PathLike) -> MiouRecord:
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read mIoU record {p}: {exc}") from None
    return MiouRecord.from_dict(d, source=str(p))


# ---- gathering ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportRow:
    network: str
    genotype_sha: str
    device: str
    backend: str
    precision: str
    batch: int
    resolution: str
    latency_ms: float | None
    p10_ms: float | None
    p90_ms: float | None
    fps: float | None
    host_bound: bool | None
    params: int | None
    flops: int | None
    lut_ms: float | None
    date: str
    miou: MiouRecord | None = None
    status: str = "ok"
    genotype_path: str | None = None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_resolution(v: Any) -> bool:
    parts = v.split("x") if isinstance(v, str) else []
    return len(parts) == 2 and all(p.isdigit() for p in parts)


# field -> (check, what it must be), for the fields of an FPS record the report reads
_FPS_FIELDS: dict[str, tuple[Any, str]] = {
    "backend": (lambda v: isinstance(v, str), "a string"),
    "precision": (lambda v: isinstance(v, str), "a string"),
    "batch": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "resolution": (_is_resolution, "a string HxW"),
    "date": (lambda v: v is None or isinstance(v, str), "a string"),
    "status": (lambda v: v is None or isinstance(v, str), "a string"),
    "report": (lambda v: v is None or isinstance(v, str), "a string"),
    "latency_ms": (lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 or null"),
    "p10_ms": (lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 or null"),
    "p90_ms": (lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 or null"),
    "fps": (lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 or null"),
    "host_bound": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "device": (lambda v: v is None or (isinstance(v, Mapping) and (v.get("name") is None or isinstance(v.get("name"), str))),
               "an object with a string name"),
    "network": (lambda v: v is None or (isinstance(v, Mapping) and all(
        v.get(k) is None or (isinstance(v.get(k), int) and not isinstance(v.get(k), bool)) for k in ("params", "flops"))
        and (v.get("width_mult") is None or _is_number(v.get("width_mult")))),
        "an object with integer params / flops and a numeric width_mult"),
    "lut": (lambda v: v is None or (isinstance(v, Mapping) and all(
        v.get(k) is None or _is_number(v.get(k)) for k in ("sum_us", "calibrated_us", "model_us"))),
        "an object with numeric sum_us / calibrated_us / model_us"),
}


def check_fps_record(r: Any, where: str) -> dict[str, Any]:
    """``r`` if it is an FPS record the report can place (``nas fps`` writes them); else a one-line
    :class:`UserError` naming ``where`` (file and record number) and the field."""
    if not isinstance(r, Mapping):
        raise UserError(f"{where} is not an FPS record (a JSON object) but {type(r).__name__}")
    g = r.get("genotype")
    if not isinstance(g, Mapping) or not isinstance(g.get("sha"), str) or not g.get("sha"):
        raise UserError(f"{where} names no genotype (genotype.sha), so it cannot be placed in the table")
    if g.get("name") is not None and not isinstance(g.get("name"), str):
        raise UserError(f"{where}: genotype.name must be a string")
    for key, (ok, what) in _FPS_FIELDS.items():
        if key in ("backend", "precision", "batch", "resolution") and key not in r:
            raise UserError(f"{where} lacks {key}")
        if not ok(r.get(key)):
            raise UserError(f"{where}: {key} must be {what}, not {str(json.dumps(r.get(key), default=str))[:40]}")
    return dict(r)


def load_fps_records(reports_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of ``REPORTS/fps/*.json``, each checked by :func:`check_fps_record`."""
    from nas.fps import read_report

    folder = Path(reports_dir) / "fps"
    out: list[dict[str, Any]] = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        out += [check_fps_record(r, f"{p} record {i}") for i, r in enumerate(read_report(p)["records"])]
    return out


def load_miou_records(reports_dir: str | os.PathLike) -> list[MiouRecord]:
    folder = Path(reports_dir) / "miou"
    return [read_miou_record(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _pick_miou(candidates: Sequence[MiouRecord], resolution: str) -> MiouRecord | None:
    if not candidates:
        return None
    same = [m for m in candidates if m.resolution == resolution]
    pool = same or list(candidates)
    return max(pool, key=lambda m: m.date or "")


def build_rows(fps_records: Sequence[Mapping[str, Any]], miou: Sequence[MiouRecord]) -> list[ReportRow]:
    """One row per (network, device, backend, precision, batch, resolution): the latest record."""
    latest: dict[tuple, Mapping[str, Any]] = {}
    for r in fps_records:
        try:
            g = r["genotype"]
            dev = (r.get("device") or {}).get("name") or r.get("report") or "?"
            key = (g["sha"], dev, r["backend"], r["precision"], int(r["batch"]), r["resolution"])
        except (KeyError, TypeError, ValueError):
            continue  # a record we cannot place is skipped, not guessed
        if key not in latest or str(r.get("date", "")) >= str(latest[key].get("date", "")):
            latest[key] = r
    by_sha: dict[str, list[MiouRecord]] = {}
    for m in miou:
        by_sha.setdefault(m.genotype_sha, []).append(m)
    from latbench.model.predictor import Prediction

    rows = []
    for (sha, dev, backend, precision, batch, res), r in latest.items():
        net = r.get("network") or {}
        lut = r.get("lut") or {}
        # the best prediction the LUT made: its latency model's, else the calibrated, else the raw Σ
        pred = Prediction.from_record(lut)
        lut_us = pred.best_us if pred is not None else None
        name = str(r["genotype"].get("name") or sha)
        if name == "genotype":  # nas fps names a network after its file; a run's genotype.json says nothing
            name = run_name_from_path(r["genotype"].get("path")) or name
        wm = net.get("width_mult")
        if isinstance(wm, (int, float)) and wm != 1.0:
            name += f" ×{wm:g}"
        rows.append(ReportRow(
            network=name, genotype_sha=sha, device=dev, backend=backend,
            precision=precision, batch=batch, resolution=res, latency_ms=r.get("latency_ms"),
            p10_ms=r.get("p10_ms"), p90_ms=r.get("p90_ms"), fps=r.get("fps"), host_bound=r.get("host_bound"),
            params=net.get("params"), flops=net.get("flops"), lut_ms=lut_us / 1e3 if lut_us is not None else None,
            date=str(r.get("date", "")), miou=_pick_miou(by_sha.get(sha, []), res), status=str(r.get("status", "ok")),
            genotype_path=r["genotype"].get("path")))
    rows.sort(key=lambda x: (x.network, x.device, x.resolution, x.backend, x.precision, x.batch))
    return rows


def run_name_from_path(path: str | None) -> str | None:
    """A run's name from the path of its genotype: the folder under ``runs/`` (``runs/t6a-s0/train/
    genotype.json`` -> ``t6a-s0``; ``runs/t7a/random-003.json`` -> ``t7a-random-003``), else the
    file's stem unless it is the generic ``genotype``, else its folder."""
    if not isinstance(path, str) or not path:
        return None
    p = Path(path)
    parts = p.parts
    if "runs" in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index("runs")  # the last 'runs' component
        run = parts[i + 1] if i + 1 < len(parts) - 1 else None
        if p.stem == "genotype" and run:
            return run
        if run and i + 2 == len(parts) - 1:  # runs/t7a/random-003.json (nas sample): t7a-random-003
            return f"{run}-{p.stem}"
    if p.stem != "genotype":
        return p.stem
    return p.parent.name or None


# ---- rendering ---------------------------------------------------------------------------------
def _num(v: float | None, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def render_markdown(rows: Sequence[ReportRow]) -> str:
    """Table IV of the paper (Method | Input size | mIoU | Latency | FPS), widened with the device,
    backend, precision and batch that produced each figure."""
    head = ("| Network | Device | Backend | Precision | Batch | Input size | mIoU (%) | Latency (ms) | p10–p90 (ms) "
            "| FPS | Σ LUT (ms) | Params (M) | GFLOPs | Notes |")
    sep = "|" + "|".join(["---"] * 14) + "|"
    lines = [head, sep]
    for r in rows:
        notes = []
        if r.status != "ok":
            notes.append(f"measurement {r.status}")
        if r.host_bound:
            notes.append("host-bound")
        miou = "–"
        if r.miou is not None:
            miou = f"{100 * r.miou.miou:.1f}"
            notes.append(f"mIoU: {r.miou.dataset} {r.miou.split} @ {r.miou.resolution}")
        h, w = r.resolution.split("x")
        spread = f"{_num(r.p10_ms, '.2f')}–{_num(r.p90_ms, '.2f')}" if r.p10_ms is not None else "–"
        lines.append(
            f"| {r.network} (`{r.genotype_sha[:8]}`) | {r.device} | {r.backend} | {r.precision} | {r.batch} "
            f"| {h} × {w} | {miou} | {_num(r.latency_ms, '.2f')} | {spread} | {_num(r.fps, '.1f')} "
            f"| {_num(r.lut_ms, '.2f')} | {_num(r.params / 1e6 if r.params is not None else None, '.3f')} "
            f"| {_num(r.flops / 1e9 if r.flops is not None else None, '.2f')} | {'; '.join(notes)} |")
    lines += ["", paper_line()]
    return "\n".join(lines) + "\n"


def paper_line() -> str:
    """The paper's figures for its searched network, printed under every table for comparison."""
    from nas import paper

    h, w = paper.CITYSCAPES_RESOLUTION
    return (f"Paper, for comparison: LGCNet (Fig. 9) has {paper.PARAMS / 1e6:.2f} M params (Table VI d); "
            f"{paper.LATENCY_MS:.2f} ms = {paper.FPS:.1f} FPS at {h} × {w} on a Titan Xp, PyTorch, batch 1 "
            f"({paper.FPS_TENSORRT:.1f} FPS with TensorRT; Table IV).")


def plot_fps_miou(rows: Sequence[ReportRow], path: str | os.PathLike) -> Path:
    """FPS (x) against mIoU (y) as in the paper's Fig. 1, one marker per device/backend; settings
    without a recorded mIoU are drawn on a strip below the axis, labelled as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    groups: dict[str, list[ReportRow]] = {}
    for r in rows:
        if r.fps is not None:
            groups.setdefault(f"{r.device} · {r.backend} {r.precision}", []).append(r)
    with_miou = [r for r in rows if r.fps is not None and r.miou is not None]
    if with_miou:
        lo = min(100 * r.miou.miou for r in with_miou)
        hi = max(100 * r.miou.miou for r in with_miou)
    else:
        lo, hi = 0.0, 100.0
    span = max(hi - lo, 5.0)
    floor = lo - 0.35 * span  # strip for "no mIoU recorded"
    markers = "o^sDvP*Xh"
    for i, (label, rs) in enumerate(sorted(groups.items())):
        mk = markers[i % len(markers)]
        xs = [r.fps for r in rs if r.miou is not None]
        ys = [100 * r.miou.miou for r in rs if r.miou is not None]
        nx = [r.fps for r in rs if r.miou is None]
        col = f"C{i % 10}"
        if xs:
            ax.scatter(xs, ys, marker=mk, s=60, color=col, label=label, zorder=3)
            for r in rs:
                if r.miou is not None:
                    ax.annotate(f"{r.network} {r.resolution}", (r.fps, 100 * r.miou.miou), fontsize=7,
                                xytext=(4, 4), textcoords="offset points")
        if nx:
            ax.scatter(nx, [floor] * len(nx), marker=mk, s=60, facecolors="none", edgecolors=col,
                       label=None if xs else label, zorder=3)
            for r in rs:
                if r.miou is None:
                    ax.annotate(f"{r.network} {r.resolution}", (r.fps, floor), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if any(r.miou is None and r.fps is not None for r in rows):
        ax.axhline(floor + 0.15 * span, color="grey", lw=0.6, ls=":")
        ax.text(0.01, 0.02, "hollow, below the dotted line: no mIoU recorded yet", transform=ax.transAxes,
                fontsize=7, color="grey")
    fps_all = [r.fps for r in rows if r.fps is not None]
    if fps_all:
        ax.set_xlim(min(fps_all) / 1.4, max(fps_all) * 1.8)
    ax.set_ylim(floor - 0.12 * span, hi + 0.25 * span)
    if any(r.miou is None and r.fps is not None for r in rows):  # no mIoU scale inside the strip
        top = hi + 0.25 * span
        ax.set_yticks([t for t in ax.get_yticks() if floor + 0.15 * span < t <= top])
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    x0, x1 = ax.get_xlim()
    if x0 <= 30 <= x1:
        ax.axvline(30, color="grey", lw=0.8, ls="--")
        ax.text(30, hi + 0.2 * span, " 30 FPS", fontsize=7, color="grey", va="top")
    ax.set_xlabel("FPS (log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Speed and accuracy (cf. LGCNet Fig. 1)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if groups:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="device · backend", title_fontsize=7)
    fig.tight_layout()
    return save_png(fig, path, 130)
