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

Repeated runs (the paper's mean of 5 or 3 searches): a *run* is one ``nas eval`` result (its
``--name``) joined to its network's FPS row, or an FPS row no evaluation names (named after the
folder under ``runs/`` that holds its genotype). Runs whose names differ only in a trailing seed
marker (``t6a-s0``, ``t6a-s1``; :func:`group_name`) are one configuration: :func:`build_groups` gives
mean ± std (and the variance) of mIoU, latency and FPS over them, :func:`plot_groups` the error bars.
"""

from __future__ import annotations

import json
import math
import os
import re
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


# ---- repeated runs: grouped, mean ± std ---------------------------------------------------------
#: A run name's seed marker (``t6a-s0``, ``fig7-seed3``, ``t7a-random-003``), removed to name its group.
SEED_SUFFIX = re.compile(r"[-_](?:s|seed|random-)\d+$")


def group_name(run: str) -> str:
    """The configuration a run belongs to: its name without the trailing seed marker —
    ``t6a-s0`` and ``t6a-s1`` are two runs of ``t6a`` (the naming ``docs/reproduce.md``'s ``repeat`` uses)."""
    return SEED_SUFFIX.sub("", run) or run


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


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and sample variance (n - 1 in the denominator) of n values;
    std and var are None for a single value."""
    n: int
    mean: float
    std: float | None
    var: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> "Stat | None":
        xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not xs:
            return None
        mean = sum(xs) / len(xs)
        if len(xs) < 2:
            return cls(n=1, mean=mean, std=None, var=None)
        var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
        return cls(n=len(xs), mean=mean, std=math.sqrt(var), var=var)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "var": self.var}


@dataclass(frozen=True)
class Run:
    """One run: a network's FPS row and, when ``nas eval`` scored it, that evaluation."""
    name: str
    row: ReportRow
    miou: MiouRecord | None


@dataclass(frozen=True)
class GroupRow:
    group: str
    device: str
    backend: str
    precision: str
    batch: int
    resolution: str
    runs: tuple[Run, ...]
    miou_pct: Stat | None
    latency_ms: Stat | None
    fps: Stat | None
    params_m: Stat | None
    lut_ms: Stat | None

    def to_dict(self) -> dict[str, Any]:
        st = lambda s: None if s is None else s.to_dict()  # noqa: E731
        return {"group": self.group, "device": self.device, "backend": self.backend, "precision": self.precision,
                "batch": self.batch, "resolution": self.resolution, "runs": len(self.runs),
                "members": [r.name for r in self.runs], "miou_pct": st(self.miou_pct),
                "latency_ms": st(self.latency_ms), "fps": st(self.fps), "params_m": st(self.params_m),
                "lut_ms": st(self.lut_ms)}


def build_runs(rows: Sequence[ReportRow], miou: Sequence[MiouRecord]) -> list[Run]:
    """Every run behind the rows: each mIoU record (the latest per run name, at the row's resolution
    when there is one) joined to its network's FPS row, and each FPS row no evaluation names."""
    by_sha: dict[str, list[MiouRecord]] = {}
    for m in miou:
        by_sha.setdefault(m.genotype_sha, []).append(m)
    runs: list[Run] = []
    for row in rows:
        cands = by_sha.get(row.genotype_sha, [])
        same = [m for m in cands if m.resolution == row.resolution]
        latest: dict[str, MiouRecord] = {}
        for m in same or cands:
            name = _miou_run_name(m)
            if name not in latest or (m.date or "") >= (latest[name].date or ""):
                latest[name] = m
        if latest:
            runs += [Run(name=n, row=row, miou=m) for n, m in sorted(latest.items())]
        else:
            runs.append(Run(name=_row_run_name(row), row=row, miou=None))
    return runs


def _miou_run_name(m: MiouRecord) -> str:
    name = m.extra.get("name")
    if isinstance(name, str) and name:
        return name
    return run_name_from_path(m.genotype_path) or m.genotype_sha


def _row_run_name(row: ReportRow) -> str:
    base = row.network.split(" ×")[0]
    if base not in ("genotype", row.genotype_sha):
        return base
    return run_name_from_path(row.genotype_path) or base


#: Settings of a genotype's recorded search (``meta.search``) or random draw (``meta.random_search``)
#: that vary between runs of one configuration, left out of its key.
RUN_SETTINGS = ("seed", "draw")
GROUP_BY = ("name", "config")


def run_configuration(run: Run) -> dict[str, Any] | None:
    """The configuration that produced a run's network: its genotype's recorded search settings
    (``meta.search``, as ``nas search`` writes them) or random-search setting (``meta.random_search``,
    ``nas sample``), without the seed; None when the genotype file is not readable or records neither."""
    for path in (run.miou.genotype_path if run.miou is not None else None, run.row.genotype_path):
        try:
            meta = json.loads(Path(path).read_text(encoding="utf-8")).get("meta") or {}
        except (TypeError, OSError, ValueError, AttributeError):
            continue
        for kind in ("search", "random_search"):
            if isinstance(meta.get(kind), Mapping):
                cfg = {k: v for k, v in meta[kind].items() if k not in RUN_SETTINGS}
                if kind == "search":
                    cfg.pop("lut", None)  # where the LUT file lies is not a setting of the search
                return {kind: cfg}
    return None


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(d, sort_keys=True)}


def _config_labels(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A short name per configuration (key: its canonical JSON): the settings in which it differs
    from the most common value among the configurations of its kind (``ggm.mode="fc"``,
    ``space.fusion="aspp"``), or ``search (most common settings)`` where it differs in none."""
    from collections import Counter

    flat = {k: _flat(v) for k, v in configs.items()}
    labels = {}
    for kind in sorted({next(iter(c)) for c in configs.values()}):
        mine = {k: d for k, d in flat.items() if next(iter(configs[k])) == kind}
        keys = sorted({f for d in mine.values() for f in d})
        usual = {f: Counter(d.get(f, "–") for d in mine.values()).most_common(1)[0][0] for f in keys}
        for k, d in mine.items():
            parts = [f"{f.split('.', 1)[1]}={d.get(f, '–')}" for f in keys if d.get(f, "–") != usual[f]]
            usual_name = "random" if kind == "random_search" else "search"
            labels[k] = ", ".join(parts) or f"{usual_name} (most common settings)"
    return labels


def build_groups(rows: Sequence[ReportRow], miou: Sequence[MiouRecord], by: str = "name") -> list[GroupRow]:
    """Runs of one configuration on one (device, backend, precision, batch, resolution): mean ± std
    of mIoU, latency, FPS over the runs. ``by="name"``: runs whose names are equal but for the seed
    marker (:func:`group_name`); ``by="config"``: runs whose genotypes record the same search (or
    random-search) settings but for the seed (:func:`run_configuration`; a run without one is grouped
    by name), labelled by the settings that tell the configurations apart."""
    if by not in GROUP_BY:
        raise UserError(f"unknown grouping {by!r}; choose one of {', '.join(GROUP_BY)}")
    runs_all = build_runs(rows, miou)
    label = {id(run): group_name(run.name) for run in runs_all}
    if by == "config":
        configs = {}
        for run in runs_all:
            cfg = run_configuration(run)
            if cfg is not None:
                key = json.dumps(cfg, sort_keys=True)
                configs[key] = cfg
                label[id(run)] = key
        names = _config_labels(configs)
        label = {i: names.get(v, v) for i, v in label.items()}
    groups: dict[tuple, list[Run]] = {}
    for run in runs_all:
        r = run.row
        groups.setdefault((label[id(run)], r.device, r.backend, r.precision, r.batch, r.resolution), []).append(run)
    out = []
    for (g, dev, backend, precision, batch, res), runs in groups.items():
        out.append(GroupRow(
            group=g, device=dev, backend=backend, precision=precision, batch=batch, resolution=res,
            runs=tuple(sorted(runs, key=lambda x: x.name)),
            miou_pct=Stat.of([100 * x.miou.miou if x.miou is not None else None for x in runs]),
            latency_ms=Stat.of([x.row.latency_ms for x in runs]), fps=Stat.of([x.row.fps for x in runs]),
            params_m=Stat.of([x.row.params / 1e6 if x.row.params is not None else None for x in runs]),
            lut_ms=Stat.of([x.row.lut_ms for x in runs])))
    out.sort(key=lambda x: (x.group, x.device, x.resolution, x.backend, x.precision, x.batch))
    return out


def _pm(s: Stat | None, spec: str, runs: int) -> str:
    """``72.41 ± 0.52`` (with ``(n=3)`` when fewer than all runs have the figure); ``–`` for none."""
    if s is None:
        return "–"
    text = format(s.mean, spec) + ("" if s.std is None else f" ± {format(s.std, spec)}")
    return text + (f" (n={s.n})" if s.n != runs else "")


def render_groups_markdown(groups: Sequence[GroupRow], by: str = "name") -> str:
    """The repeated-runs table: one row per configuration and setting, mean ± std over its runs,
    and the variance the paper prints as ``(± var)`` for mIoU (Tables VI, VII)."""
    how = ("Runs whose names differ only in a trailing seed marker (`-s0`, `-s1`, `-seed2`, `-random-003`) form "
           "one group." if by == "name" else
           "Runs whose genotypes record the same search (or random-search) settings but for the seed form one "
           "group, named by the settings that tell the groups apart (a run without such a record: by its name).")
    head = ("| Group | Runs | Device | Backend | Precision | Batch | Input size | mIoU (%) mean ± std | mIoU var "
            "| Latency (ms) mean ± std | FPS mean ± std | Σ LUT (ms) mean | Params (M) mean | Members |")
    lines = ["## Repeated runs", "",
             how + " ± is the sample standard deviation over the runs, var its square (n - 1 in the "
             "denominator; the paper's tables print mIoU as mean (± variance) without saying which); "
             "(n=k): only k of the group's runs have that figure.", "",
             head, "|" + "|".join(["---"] * 14) + "|"]
    for g in groups:
        n = len(g.runs)
        h, w = g.resolution.split("x")
        var = "–" if g.miou_pct is None or g.miou_pct.var is None else f"{g.miou_pct.var:.2f}"
        members = ", ".join(r.name for r in g.runs)
        lines.append(
            f"| {g.group} | {n} | {g.device} | {g.backend} | {g.precision} | {g.batch} | {h} × {w} "
            f"| {_pm(g.miou_pct, '.1f', n)} | {var} | {_pm(g.latency_ms, '.2f', n)} | {_pm(g.fps, '.1f', n)} "
            f"| {_num(g.lut_ms.mean if g.lut_ms else None, '.2f')} "
            f"| {_num(g.params_m.mean if g.params_m else None, '.3f')} | {members} |")
    return "\n".join(lines) + "\n"


def plot_groups(groups: Sequence[GroupRow], path: str | os.PathLike) -> Path:
    """Each configuration's mean FPS (x) against its mean mIoU (y) with ± std error bars in both;
    groups without an mIoU are drawn at their FPS on a strip below, labelled as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    pts = [g for g in groups if g.fps is not None]
    with_miou = [g for g in pts if g.miou_pct is not None]
    lo = min((g.miou_pct.mean - (g.miou_pct.std or 0) for g in with_miou), default=0.0)
    hi = max((g.miou_pct.mean + (g.miou_pct.std or 0) for g in with_miou), default=100.0)
    span = max(hi - lo, 1.0)
    floor = lo - 0.3 * span
    settings = sorted({(g.device, g.backend, g.precision) for g in pts})
    for i, (dev, backend, precision) in enumerate(settings):
        col = f"C{i % 10}"
        mine = [g for g in pts if (g.device, g.backend, g.precision) == (dev, backend, precision)]
        for j, g in enumerate(mine):
            y = g.miou_pct.mean if g.miou_pct is not None else floor
            ax.errorbar(g.fps.mean, y, xerr=g.fps.std or 0, yerr=(g.miou_pct.std or 0) if g.miou_pct else 0,
                        fmt="o" if g.miou_pct is not None else "s", color=col, mfc=col if g.miou_pct else "none",
                        capsize=3, label=f"{dev} · {backend} {precision}" if j == 0 else None, zorder=3)
            ax.annotate(f"{g.group} (n={len(g.runs)})", (g.fps.mean, y), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    if any(g.miou_pct is None for g in pts):
        ax.axhline(floor + 0.12 * span, color="grey", lw=0.6, ls=":")
        ax.text(0.01, 0.02, "hollow squares, below the dotted line: no mIoU recorded", transform=ax.transAxes,
                fontsize=7, color="grey")
    ax.set_ylim(floor - 0.1 * span, hi + 0.15 * span)
    ax.set_xlabel("FPS (mean ± std over runs)")
    ax.set_ylabel("mIoU (%) (mean ± std over runs)")
    ax.set_title("Repeated runs per configuration", fontsize=10)
    ax.grid(alpha=0.3)
    if settings:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="device · backend",
                  title_fontsize=7)
    fig.tight_layout()
    return save_png(fig, path, 130)
