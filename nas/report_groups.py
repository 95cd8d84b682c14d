"""Repeated runs in ``nas report`` (the paper's mean of 5 or 3 searches), grouped, as mean ± std.

A *run* is one ``nas eval`` result (its ``--name``) joined to its network's FPS row
(:class:`nas.report.ReportRow`), or an FPS row no evaluation names (named after the folder under
``runs/`` that holds its genotype; :func:`nas.report.run_name_from_path`). Runs whose names differ
only in a trailing seed marker (``t6a-s0``, ``t6a-s1``; :func:`group_name`) are one configuration:
:func:`build_groups` gives mean ± std (and the variance) of mIoU, latency and FPS over them,
:func:`render_groups_markdown` the table, :func:`plot_groups` the error bars.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from latbench.errors import UserError
from latbench.files import save_png
from nas.report import MiouRecord, ReportRow, _num, run_name_from_path


#: A run name's seed marker (``t6a-s0``, ``fig7-seed3``, ``t7a-random-003``), removed to name its group.
SEED_SUFFIX = re.compile(r"[-_](?:s|seed|random-)\d+$")


def group_name(run: str) -> str:
    """The configuration a run belongs to: its name without the trailing seed marker —
    ``t6a-s0`` and ``t6a-s1`` are two runs of ``t6a`` (the naming ``docs/reproduce.md``'s ``repeat`` uses)."""
    return SEED_SUFFIX.sub("", run) or run


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
