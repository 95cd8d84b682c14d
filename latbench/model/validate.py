"""Is a LUT right about whole networks? Sample architectures, measure them, compare (DESIGN §5.8).

:func:`validate_lut`:

1. reads the LUT (:func:`latbench.lut.table.read_lut`) and, from its metadata, the search space
   (``space``: name + config, loaded with :func:`latbench.space.load_space`), the timing backend,
   precision, batch and protocol (``protocol``, a :class:`~latbench.timing.TimingConfig`);
2. samples N distinct architectures with ``random.Random(seed)`` (``seed``: a fresh random one
   unless given, recorded) — uniformly (``space.sample_architecture``) or, with ``from_search``,
   from the distribution a search left in a file (the space's optional ``sample_from_search``,
   e.g. LGCNet's α probabilities) — never one the LUT's latency models were fitted on
   (:func:`fit_fingerprints`; the result says how many draws were excluded), so the model's
   figures are held out, not its own training data;
3. predicts each one as Σ LUT over ``space.architecture_rows(arch)`` at the chosen resolution —
   every row must be present and ``ok`` (or analytic), otherwise a :class:`UserError` names the
   missing ones — and, when the LUT holds a latency model for these rows (``latbench fit``,
   :mod:`latbench.model.latency_model`), with that model too;
4. builds each one (``space.build_architecture``) and measures it end to end through the *same*
   backend, precision, batch and protocol on the same kind of device the LUT was measured on (a
   different device is refused: that comparison is ``compare-lut``'s job), all networks in
   interleaved rounds (:mod:`latbench.timing.interleave`), so a slow episode of a shared machine cannot
   bias a few networks;
5. reports the figures of :func:`latbench.model.metrics.fidelity` for the raw sum (MAPE, share within
   ±5 % / ±10 %, Kendall τ, Spearman ρ, the affine calibration measured ≈ a·ΣLUT + b with its
   leave-one-out error and the MAPE after calibration) and, side by side, the model's.

:func:`save_calibration` stores the fitted ``a``, ``b`` in the LUT's metadata (``calibration``)
through :meth:`latbench.lut.table.LUT.with_calibration` and an atomic :func:`latbench.lut.table.write_lut`,
holding the LUT's build lock so a concurrent build is refused rather than overwritten. (A latency
model, ``latbench fit``, supersedes it: the search and ``nas fps`` prefer the model.)
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from latbench.device import describe_device, software_versions
from latbench.errors import UserError
from latbench.lut.table import now_iso, read_lut, write_lut
from latbench.model.metrics import Fidelity, fidelity
from latbench.model.networks import (PROBE, REFERENCE, LutSetup, arch_fingerprint, figures, measure_networks,
                                     resolve_setup, sample_architectures)
from latbench.timing import Measurement, get_backend

__all__ = ["ArchSample", "LutSetup", "ValidationResult", "fit_fingerprints", "resolve_setup",
           "sample_architectures", "sample_excluding", "save_calibration", "validate_lut"]


@dataclass
class ArchSample:
    """One sampled architecture: its LUT prediction (Σ LUT, and the latency model's when the LUT
    has one) and its end-to-end measurement (µs)."""

    index: int
    arch: dict[str, Any]
    predicted_us: float
    measurement: Measurement
    model_us: float | None = None

    @property
    def measured_us(self) -> float:
        return self.measurement.median_us

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {"index": self.index, "predicted_us": self.predicted_us, "model_us": self.model_us, "measured_us": None if math.isnan(m.median_us) else m.median_us,
                "p10_us": None if math.isnan(m.p10_us) else m.p10_us, "p90_us": None if math.isnan(m.p90_us) else m.p90_us,
                "noise": None if math.isnan(m.noise) else m.noise, "samples": m.samples, "host_bound": m.host_bound,
                "enqueue_us": m.enqueue_us, "throttled": m.throttled, "status": m.status, "error": m.error,
                "arch": self.arch}


@dataclass
class ValidationResult:
    lut_path: str
    lut_name: str | None
    setup: LutSetup
    seed: int
    samples: list[ArchSample]
    fidelity: Fidelity
    device_info: dict[str, Any]
    sampling: str = "uniform"
    date: str = field(default_factory=now_iso)
    model: Any = None                     # the LUT's latency model for these rows, if any
    model_figures: dict[str, Any] | None = None
    measurement: dict[str, Any] = field(default_factory=dict)
    excluded_fit_networks: int = 0        # draws skipped because the LUT's model was fitted on them
    exclusion_notes: list[str] = field(default_factory=list)
    excluding: int = 0                    # how many fit-network fingerprints the draws were checked against

    @property
    def ok_samples(self) -> list[ArchSample]:
        return [s for s in self.samples if s.measurement.ok]

    def to_dict(self) -> dict[str, Any]:
        s = self.setup
        ok = self.ok_samples
        hb = [x.measurement.host_bound for x in ok if x.measurement.host_bound is not None]
        return {
            "lut": self.lut_path, "lut_name": self.lut_name, "date": self.date, "seed": self.seed,
            "sampling": self.sampling,
            "excluded_fit_networks": self.excluded_fit_networks, "fit_fingerprints_known": self.excluding,
            "exclusion_notes": self.exclusion_notes,
            "space": s.space.identity(), "resolution": s.resolution, "batch": s.batch, "backend": s.backend,
            "precision": s.precision, "device": self.device_info, "versions": software_versions(),
            "protocol": s.protocol.to_dict(), "requested": len(self.samples), "measured": len(ok),
            "failed": len(self.samples) - len(ok),
            "host_bound_share": (sum(hb) / len(hb)) if hb else None,
            "fidelity": self.fidelity.to_dict(),
            "latency_model": self.model.summary() if self.model is not None else None,
            "model_fidelity": self.model_figures,
            "measurement": self.measurement,
            "samples": [x.to_dict() for x in self.samples],
        }


# ---- prediction and sampling -------------------------------------------------------------------
def _as_measurement(r: Any, statistic: str) -> Measurement:
    """An interleaved item's figure as a :class:`Measurement` (samples = rounds)."""
    if not r.ok:
        err = next((w.error for w in r.windows if w.error), "not measured")
        return Measurement.failed(str(err))
    return Measurement(median_us=r.median_us, samples=r.rounds, noise=r.noise,
                       extra={"statistic": statistic, "rounds": r.rounds, "windows": len(r.windows),
                              "noise_reached": bool(r.noise <= 0.01)})


# ---- the whole run -----------------------------------------------------------------------------
def fit_fingerprints(space: Any, meta: Mapping[str, Any]) -> tuple[set[str], list[str]]:
    """The fingerprints (:func:`~latbench.model.networks.arch_fingerprint`) of every network the
    LUT's stored latency models were fitted on, and notes on what could only be approximated.

    A model stored by this latbench lists them (``provenance["fit_fingerprints"]``). An older
    model does not; its uniform fit networks were the first distinct draws of
    ``random.Random(provenance["seed"])``, so every architecture among the draws its fit could
    have used is excluded instead (a superset); its search-drawn fit networks cannot be
    reconstructed (the search file is not recorded) and are said to be unknown."""
    from latbench.model.latency_model import stored_models

    out: set[str] = set()
    notes: list[str] = []
    for m in stored_models(meta):
        prov = dict(m.provenance)
        fps = prov.get("fit_fingerprints")
        if isinstance(fps, list):
            out.update(str(f) for f in fps)
            continue
        n = int(prov.get("fit_networks") or 0)
        if n <= 0:
            continue
        k = int(prov.get("fit_networks_from_search") or 0)
        n_uniform = max(n - k, 0)
        pool = max(25 * n_uniform, 500) if prov.get("fit_design") == "d-optimal" else n_uniform
        seed = prov.get("seed", 0)
        out.update(arch_fingerprint(space, a) for a in sample_architectures(space, 4 * pool + 8, seed))
        notes.append(f"the stored model {m.model_id} predates fit fingerprints: excluded every draw of its fit "
                     f"seed {seed} that could have been a fit network"
                     + (f"; its {k} search-drawn fit networks are unknown" if k else ""))
    return out, notes


def sample_excluding(space: Any, n: int, seed: int, exclude: set[str],
                     from_search: str | Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """``n`` distinct architectures drawn as :func:`sample_architectures` does, skipping every
    one whose fingerprint is in ``exclude``; returns them and how many draws were skipped."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    skipped = 0
    for arch in sample_architectures(space, 4 * n + 8 + len(exclude), seed, from_search):
        fp = arch_fingerprint(space, arch)
        if fp in exclude:
            skipped += 1
            continue
        if fp in seen:
            continue
        seen.add(fp)
        out.append(arch)
        if len(out) == n:
            break
    if len(out) < n:
        raise UserError(f"could draw only {len(out)} distinct architectures of the {n} asked for that the LUT's "
                        f"latency model was not fitted on ({skipped} draw(s) were its fit networks); ask for fewer")
    return out, skipped


def validate_lut(lut_path: str | Path, samples: int, seed: int | None = None, resolution: tuple[int, int] | None = None,
                 device: str | None = None, space_name: str | None = None,
                 on_sample: Callable[[ArchSample], None] | None = None,
                 from_search: str | Path | None = None, rounds: Any = None, latency_model: str = "auto",
                 on_event: Callable[[str], None] | None = None,
                 on_progress: Callable[[str, int, int, str], None] | None = None) -> ValidationResult:
    """Sample, predict, measure (interleaved rounds, ``rounds``: a
    :class:`latbench.timing.interleave.RoundsConfig`) and score; see the module docstring."""
    import secrets

    from latbench.timing.interleave import RoundsConfig
    from latbench.model.predictor import Predictor

    if samples < 3:
        raise UserError(f"--samples must be at least 3 (an affine calibration needs 3 points), got {samples}")
    rounds = rounds or RoundsConfig()
    lut = read_lut(lut_path)
    setup = resolve_setup(lut, resolution, device, space_name)
    from latbench.timing.plausibility import refuse_flagged
    refuse_flagged(lut, str(lut_path), height=setup.height, width=setup.width, batch=setup.batch,
                   backend=setup.backend, precision=setup.precision, use="validate-lut")  # §5.11
    predictor = Predictor.for_lut(lut, setup.height, setup.width, setup.batch, backend=setup.backend,
                                  precision=setup.precision, latency_model=latency_model,
                                  family=setup.space.identity().get("config"))
    if predictor.notice and on_event is not None:
        on_event(predictor.notice)
    model = predictor.model
    backend = get_backend(setup.backend, device=setup.device, precision=setup.precision,
                          threads=setup.protocol.threads)
    if seed is None:
        seed = secrets.randbelow(2**31)  # a fresh seed (recorded): never the fit's draws by construction
    exclude, notes = fit_fingerprints(setup.space, lut.meta)
    archs, excluded = sample_excluding(setup.space, samples, seed, exclude, from_search)
    if on_event is not None:
        for note in notes:
            on_event(f"notice: {note}")
        if exclude:
            on_event(f"excluded {excluded} sampled architecture(s) the LUT's latency model was fitted on")
    # Predict everything first: a LUT that cannot price an architecture fails before any timing.
    all_rows = [predictor.network_rows(setup.space, a) for a in archs]
    preds = [predictor.raw_sum(r) for r in all_rows]
    model_preds = [predictor.model_us(r) for r in all_rows]
    keys = {f"net{i:03d}": a for i, a in enumerate(archs)}
    load_before = [round(v, 2) for v in os.getloadavg()]
    res = measure_networks(setup, backend, {REFERENCE: setup.space.sample_architecture(random.Random(f"ref-{seed}")),
                                            **keys}, rounds, reference=REFERENCE, on_event=on_event,
                           on_progress=on_progress)
    results: list[ArchSample] = []
    for i, (key, arch) in enumerate(keys.items()):
        s = ArchSample(i, arch, preds[i], _as_measurement(res.items[key], rounds.statistic), model_preds[i])
        results.append(s)
        if on_sample is not None:
            on_sample(s)
    ok = [s for s in results if s.measurement.ok]
    if len(ok) < 3:
        errors = "; ".join(sorted({str(s.measurement.error) for s in results if not s.measurement.ok}))[:300]
        raise UserError(f"only {len(ok)} of {len(results)} architectures could be measured ({errors})")
    fid = fidelity([s.predicted_us for s in ok], [s.measured_us for s in ok])
    model_figs = None
    if model is not None:
        model_figs = figures([s.model_us for s in ok], [s.measured_us for s in ok])
    info = describe_device(setup.device)
    if info.get("type") == "cpu" and setup.protocol.threads:
        info["threads"] = setup.protocol.threads
    probe = res.items.get(PROBE)
    measurement = {"statistic": rounds.statistic, "rounds": rounds.to_dict(),
                   "overhead_us": probe.median_us if probe is not None and probe.ok else None,
                   "loadavg_before": load_before, "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                   **res.summary()}
    return ValidationResult(str(lut_path), lut.meta.get("name"), setup, seed, results, fid, info,
                            sampling=f"search distribution in {from_search}" if from_search else "uniform",
                            model=model, model_figures=model_figs, measurement=measurement,
                            excluded_fit_networks=excluded, exclusion_notes=notes, excluding=len(exclude))


def save_calibration(lut_path: str | Path, result: ValidationResult) -> dict[str, Any]:
    """Write ``result``'s calibration into the LUT's metadata (atomically, under the LUT's build
    lock); returns the stored calibration."""
    from latbench.files import lock_path
    from latbench.files import FileLock

    fit = result.fidelity.calibration
    if fit is None:
        raise UserError("no calibration to save (fewer than 3 measured architectures or constant predictions)")
    s = result.setup
    info = {"n": fit.n, "loo_mape": fit.loo_mape, "mape_after": fit.mape, "mape_before": result.fidelity.mape,
            "kendall_tau": result.fidelity.kendall_tau, "resolution": s.resolution, "batch": s.batch,
            "backend": s.backend, "precision": s.precision, "seed": result.seed,
            "device": result.device_info.get("name"), "date": result.date, "by": "latbench validate-lut"}
    with FileLock(lock_path(lut_path), purpose="a LUT build or calibration"):
        lut = read_lut(lut_path)  # re-read: save onto the current file, not a stale copy
        updated = lut.with_calibration(fit.a, fit.b, **info)
        write_lut(updated, lut_path)
    return updated.meta["calibration"]


def plot_validation(result: ValidationResult, path: str | Path) -> Path:
    """Measured vs predicted scatter with y = x and the fitted line, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = result.ok_samples
    p = np.array([s.predicted_us for s in ok]) / 1e3
    m = np.array([s.measured_us for s in ok]) / 1e3
    f = result.fidelity
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(p, m, s=22, color="tab:blue", zorder=3, label="Σ LUT")
    if result.model is not None and result.model_figures:
        mp = np.array([s.model_us for s in ok]) / 1e3
        mf = result.model_figures
        ax.scatter(mp, m, s=22, color="tab:red", marker="x", zorder=4,
                   label=f"latency model: MAPE {mf['mape']:.2f} %, τ {mf['kendall_tau'] or float('nan'):.3f}")
        p = np.concatenate([p, mp])
        m = np.concatenate([m, m])
    lo, hi = float(min(p.min(), m.min())), float(max(p.max(), m.max()))
    pad = 0.05 * (hi - lo or hi)
    xs = np.linspace(lo - pad, hi + pad, 50)
    ax.plot(xs, xs, "--", color="grey", lw=1, label="measured = Σ LUT")
    if f.calibration is not None:
        c = f.calibration
        ax.plot(xs, c.a * xs + c.b / 1e3, color="tab:red", lw=1.2,
                label=f"fit: {c.a:.3f}·Σ LUT + {c.b / 1e3:.3f} ms (LOO MAPE {c.loo_mape:.2f} %)")
    s = result.setup
    ax.set_xlabel("predicted (ms)")
    ax.set_ylabel("measured end to end (ms)")
    ax.set_title(f"{result.lut_name or Path(result.lut_path).stem}: {s.backend} {s.precision} {s.resolution} b{s.batch}\n"
                 f"n={f.n}  MAPE {f.mape:.2f} %  τ {f.kendall_tau:.3f}  ρ {f.spearman_rho:.3f}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    from latbench.files import save_png

    return save_png(fig, path, 120)
