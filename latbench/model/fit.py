"""``latbench fit``: measure whole networks, fit a latency model, judge it on networks it never saw.

:func:`run_fit`:

1. reads the LUT and, from its metadata, how it was measured (:func:`latbench.model.validate.resolve_setup`:
   space, backend, precision, batch, protocol, device — a different device is refused);
2. samples three disjoint sets of architectures with ``random.Random``: ``fit`` (uniform), ``test``
   (uniform, held out) and, with ``from_search``, ``search`` (drawn from a search's α, held out),
   plus one *reference* network; every LUT row they need must be there (checked before timing);
3. builds and prepares every network with the LUT's own backend, and a near-empty *probe* op that
   measures the backend's per-call overhead (:mod:`latbench.timing.probe`);
4. measures all of them in interleaved rounds (:mod:`latbench.timing.interleave`), the reference network
   watching for slow episodes; every finished window goes to a journal next to the LUT
   (``LUT.fit.jsonl``), so a killed fit resumes and loses at most the window in flight;
5. fits the model on the fit networks only (:func:`latbench.model.fitting.fit_model`: grouping and λ by
   cross-validation on the fit set) and reports, on each held-out set, the figures of every
   mechanism of the ablation ladder (:func:`latbench.model.fitting.mechanisms`) side by side;
6. stores the model in the LUT's metadata (``latency_models``, replacing one of the same scope)
   under the LUT's lock, atomically, with its provenance.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from latbench.errors import UserError
from latbench.files import FileLock, Journal, check_writable, lock_path, read_journal
from latbench.timing.interleave import InterleavedResult, RoundsConfig, Window, measure_interleaved
from latbench.lut.table import now_iso, read_lut, write_lut
from latbench.model.metrics import kendall_tau, share_within, spearman_rho
from latbench.model.latency_model import COLUMNS, LatencyModel, ModelScope, lut_rows, with_model
from latbench.model.fitting import Row, features, fit_model, mechanisms
from latbench.space import format_resolution
from latbench.timing import get_backend

JOURNAL_SUFFIX = ".fit.jsonl"
REFERENCE = "reference"
PROBE = "probe"
SETS = ("fit", "test", "search")
MIN_FIT = 8
DESIGNS = ("uniform", "d-optimal")


@dataclass(frozen=True)
class FitRequest:
    """What ``latbench fit`` was asked to do (every field is recorded in the provenance)."""

    lut_path: str
    fit_networks: int = 40
    test_networks: int = 20
    search_networks: int = 20
    from_search: str | None = None
    seed: int = 0
    resolution: tuple[int, int] | None = None
    device: str | None = None
    space_name: str | None = None
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    save: bool = True
    design: str = "uniform"          # how fit networks are chosen: uniform | d-optimal (from uniform draws)
    uniform_fit_networks: int = 0    # ablation: also measure this many uniform fit networks and report their model
    search_fit_networks: int = 0     # of the fit networks, how many are drawn from the search's α (--from-search)

    def check(self) -> None:
        if self.fit_networks < MIN_FIT:
            raise UserError(f"--fit-networks must be at least {MIN_FIT} (a model fitted on fewer networks "
                            f"cannot be cross-validated), got {self.fit_networks}")
        if self.test_networks < 0 or self.search_networks < 0:
            raise UserError("--test-networks and --search-networks cannot be negative")
        if self.test_networks and self.test_networks < 3:
            raise UserError(f"--test-networks must be 0 or at least 3 (Kendall τ needs pairs), got {self.test_networks}")
        if self.design not in DESIGNS:
            raise UserError(f"--design must be one of {', '.join(DESIGNS)}, not {self.design!r}")
        if self.uniform_fit_networks and self.uniform_fit_networks < MIN_FIT:
            raise UserError(f"--uniform-fit-networks must be 0 or at least {MIN_FIT}")
        if self.search_fit_networks < 0:
            raise UserError("--search-fit-networks cannot be negative")
        if self.search_fit_networks and self.from_search is None:
            raise UserError("--search-fit-networks draws fit networks from a search's α: give --from-search too")
        if self.search_fit_networks > self.fit_networks - MIN_FIT // 2:
            raise UserError(f"--search-fit-networks ({self.search_fit_networks}) leaves too few uniform fit networks "
                            f"of --fit-networks {self.fit_networks}: at most {self.fit_networks - MIN_FIT // 2}")
        if self.from_search is not None and self.search_networks < 3:
            raise UserError(f"--search-networks must be at least 3 with --from-search, got {self.search_networks}")

    def journal_key(self, lut_created: Any, scope: ModelScope, search_sha: str | None) -> dict[str, Any]:
        """What must match for a rerun to continue an unfinished fit's measurements."""
        return json.loads(json.dumps({
            "lut_created": lut_created, "scope": scope.to_dict(), "fit": self.fit_networks, "test": self.test_networks,
            "search": self.search_networks if self.from_search else 0, "search_sha": search_sha, "seed": self.seed,
            "design": self.design, "uniform_fit": self.uniform_fit_networks,
            **({"search_fit": self.search_fit_networks} if self.search_fit_networks else {}),
            "rounds": self.rounds.to_dict()}, default=str))


@dataclass
class Network:
    key: str
    set: str
    arch: dict[str, Any]
    rows: dict[str, list[Row]]  # LUT column (median_us, p10_us) -> the network's rows
    from_search: bool = False   # drawn from the search's α (held-out searched, or search-drawn fit networks)


@dataclass
class FitResult:
    request: FitRequest
    scope: ModelScope
    model: LatencyModel
    networks: list[Network]
    measured: dict[str, float]
    overhead_us: float
    figures: dict[str, dict[str, dict[str, Any]]]  # set -> mechanism -> figures
    measurement: dict[str, Any]
    device_info: dict[str, Any]
    saved: bool = False
    date: str = field(default_factory=now_iso)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lut": self.request.lut_path, "date": self.date, "scope": self.scope.to_dict(),
            "device": self.device_info, "overhead_us": self.overhead_us,
            "model": self.model.to_dict(), "saved": self.saved,
            "request": {"fit_networks": self.request.fit_networks, "test_networks": self.request.test_networks,
                        "search_networks": self.request.search_networks if self.request.from_search else 0,
                        "from_search": self.request.from_search, "seed": self.request.seed,
                        "design": self.request.design, "uniform_fit_networks": self.request.uniform_fit_networks,
                        "search_fit_networks": self.request.search_fit_networks,
                        "rounds": self.request.rounds.to_dict()},
            "figures": self.figures, "measurement": self.measurement,
            "networks": [{"key": n.key, "set": n.set, "measured_us": self.measured.get(n.key),
                          "raw_sum_us": _raw(n.rows["median_us"]), "model_us": self.model.predict_rows(n.rows[self.model.column]),
                          "arch": n.arch}
                         for n in self.networks],
        }


def _raw(rows: Sequence[Row]) -> float:
    return float(sum(0.0 if a else m for _, _, m, a in rows))


def figures(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """MAPE, worst error, share within ±5 / ±10 %, Kendall τ, Spearman ρ (percentages in %)."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(p - m) / m
    tau, rho = kendall_tau(p, m), spearman_rho(p, m)
    return {"n": int(p.size), "mape": float(100 * rel.mean()), "worst": float(100 * rel.max()),
            "within_5": share_within(p, m, 0.05), "within_10": share_within(p, m, 0.10),
            "kendall_tau": None if math.isnan(tau) else tau, "spearman_rho": None if math.isnan(rho) else rho,
            "mean_signed": float(100 * ((p - m) / m).mean())}


def split_halves(res: InterleavedResult, statistic: str) -> dict[str, tuple[float, float]]:
    """Each item's figure from its even rounds and from its odd rounds (items with both)."""
    from latbench.timing.interleave import aggregate

    out = {}
    for k, r in res.items.items():
        a = aggregate([w for w in r.windows if w.round % 2 == 0], statistic)
        b = aggregate([w for w in r.windows if w.round % 2 == 1], statistic)
        if a.ok and b.ok:
            out[k] = (a.median_us, b.median_us)
    return out


def repeatability(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """How well the measurement agrees with itself: one half of the rounds "predicting" the other,
    in the figures of :func:`figures`. No model can rank networks better than their measurement
    ranks itself: τ between halves is the ceiling the held-out τ is bounded by."""
    if len(pairs) < 3:
        return {"n": len(pairs)}
    a, b = zip(*pairs)
    return figures(a, b)


def journal_path(lut_path: str | os.PathLike) -> Path:
    return Path(str(lut_path) + JOURNAL_SUFFIX)


def _arch_key(arch: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


def d_optimal(features: np.ndarray, n: int) -> list[int]:
    """``n`` row indices of ``features`` chosen greedily for a D-optimal design: each pick is the
    candidate whose feature vector the picks so far predict worst (largest ``f M⁻¹ fᵀ``), so
    the chosen networks spread over every direction the model's coefficients live in. Columns are
    standardised; constant columns carry no information and are dropped."""
    F = np.asarray(features, dtype=np.float64)
    sd = F.std(0)
    keep = sd > 1e-12 * (np.abs(F).max() + 1.0)
    F = (F[:, keep] - F[:, keep].mean(0)) / sd[keep]
    F = np.column_stack([np.ones(len(F)), F])
    m_inv = np.eye(F.shape[1]) * 1e3
    free = np.ones(len(F), dtype=bool)
    chosen: list[int] = []
    for _ in range(min(n, len(F))):
        v = np.einsum("ij,jk,ik->i", F, m_inv, F)
        v[~free] = -np.inf
        i = int(np.argmax(v))
        chosen.append(i)
        free[i] = False
        mf = m_inv @ F[i]
        m_inv -= np.outer(mf, mf) / (1.0 + F[i] @ mf)
    return chosen


def sample_sets(space: Any, request: FitRequest,
                featurize: Callable[[dict[str, Any]], np.ndarray] | None = None) -> tuple[list[Network], dict[str, Any]]:
    """The fit / test / search networks (disjoint) and the reference architecture.

    The fit networks are uniform draws (``request.design == "uniform"``, the default) or, with
    ``"d-optimal"`` (and ``featurize``: an architecture's per-op-group LUT sums and counts), the
    ones :func:`d_optimal` picks from a pool of uniform draws. Measured on this project's CPU
    (benchmarks/results/latency_model-*-design-*): the D-optimal pick judged uniform held-out
    networks better but searched ones worse than uniform fit networks, and a pool enriched with
    op-skewed networks made both worse (the per-row corrections are not linear that far out), so
    uniform fit networks are the default. With ``request.search_fit_networks`` = K, K of the fit
    networks are drawn from the search's α instead (disjoint from the held-out searched ones; their
    keys start ``fits``): uniform draws barely vary in op composition, searches do not.
    Held-out networks are always drawn as asked (uniform, from the search)."""
    from latbench.model.validate import sample_architectures

    taken: set[str] = set()
    out: list[Network] = []

    def fresh(n: int, seed: int, from_search: str | None) -> list[dict[str, Any]]:
        got = []
        for arch in sample_architectures(space, 4 * n + 8, seed, from_search):
            k = _arch_key(arch)
            if k not in taken:
                got.append(arch)
                taken.add(k)
                if len(got) == n:
                    break
        return got

    def add(archs: list[dict[str, Any]], n: int, name: str, prefix: str | None = None,
            from_search: bool = False) -> None:
        if len(archs) < n:
            raise UserError(f"could draw only {len(archs)} distinct {name} architectures of the {n} asked for "
                            "(the space or the search distribution is too small)")
        out.extend(Network(f"{prefix or name}{i:03d}-{_arch_key(a)[:8]}", name, a, {}, from_search)
                   for i, a in enumerate(archs))

    reference = space.sample_architecture(random.Random(f"latbench-fit-reference-{request.seed}"))
    taken.add(_arch_key(reference))
    # held-out sets first: the design must not pick a network the model is judged on
    test = fresh(request.test_networks, request.seed + 1_000_003, None) if request.test_networks else []
    search = fresh(request.search_networks, request.seed + 2_000_003, request.from_search) if request.from_search else []
    n_search_fit = request.search_fit_networks if request.from_search else 0
    n_uniform = request.fit_networks - n_search_fit
    if request.design == "d-optimal" and featurize is not None:
        pool = fresh(max(25 * n_uniform, 500), request.seed, None)
        picks = d_optimal(np.array([featurize(a) for a in pool]), n_uniform)
        fit = [pool[i] for i in picks]
        taken.difference_update(_arch_key(a) for i, a in enumerate(pool) if i not in set(picks))
    else:
        fit = fresh(n_uniform, request.seed, None)
    add(fit, n_uniform, "fit")
    if n_search_fit:
        add(fresh(n_search_fit, request.seed + 4_000_003, request.from_search), n_search_fit, "fit", prefix="fits",
            from_search=True)
    if request.uniform_fit_networks:
        add(fresh(request.uniform_fit_networks, request.seed + 3_000_003, None), request.uniform_fit_networks,
            "fit-uniform")
    add(test, request.test_networks, "test")
    if request.from_search:
        add(search, request.search_networks, "search", from_search=True)
    return out, reference


def measure_networks(setup: Any, backend: Any, archs: dict[str, dict[str, Any]], rounds: RoundsConfig, *,
                     reference: str | None = None, done: Sequence[Window] = (),
                     on_window: Callable[[Window], None] | None = None,
                     on_event: Callable[[str], None] | None = None,
                     on_progress: Callable[[str, int, int, str], None] | None = None) -> InterleavedResult:
    """Build and prepare every architecture (and the per-call overhead probe, item ``probe``) with
    ``backend`` and ``setup``'s protocol, measure them in interleaved rounds, close them.
    ``on_progress(phase, done, total, what)`` with phase ``prepare`` then ``measure``."""
    from latbench.timing.probe import probe_inputs, probe_module
    from latbench.timing.loop import describe_error

    prepared: dict[str, Any] = {}
    total = len(archs) + 1
    x = torch.randn(setup.batch, 3, setup.height, setup.width, generator=torch.Generator().manual_seed(0))
    try:
        for i, (key, arch) in enumerate(archs.items()):
            if on_progress is not None:
                on_progress("prepare", i, total, key)
            net = setup.space.build_architecture(arch)
            if isinstance(net, torch.nn.Module):
                net.eval()
            try:
                prepared[key] = backend.prepare(net, (x,), setup.protocol)
            except Exception as exc:
                raise UserError(f"cannot prepare network {key} with backend {setup.backend}: "
                                f"{describe_error(exc)}") from None
        prepared[PROBE] = backend.prepare(probe_module(), tuple(probe_inputs(setup.batch)), setup.protocol)
        if on_progress is not None:
            on_progress("prepare", total, total, "prepared")
        return measure_interleaved(
            prepared, setup.protocol, rounds, reference=reference, done=done, on_window=on_window,
            on_event=on_event,
            on_progress=(lambda d, t, w: on_progress("measure", d, t, w)) if on_progress else None)
    finally:
        for p in prepared.values():
            try:
                p.close()
            except Exception:
                pass


def run_fit(request: FitRequest, *, on_event: Callable[[str], None] | None = None,
            on_progress: Callable[[str, int, int, str], None] | None = None) -> FitResult:
    """See the module docstring. ``on_progress(phase, done, total, what)``."""
    from latbench.device import describe_device
    from latbench.model.validate import resolve_setup

    request.check()
    lut = read_lut(request.lut_path)
    setup = resolve_setup(lut, request.resolution, request.device, request.space_name)
    scope = ModelScope.of_lut(lut.meta, setup.height, setup.width, setup.batch, setup.backend, setup.precision)
    if request.save:
        check_writable(request.lut_path)
    search_sha = None
    if request.from_search:
        from latbench.files import file_sha256

        search_sha = file_sha256(request.from_search)
    def featurize(arch: dict[str, Any]) -> np.ndarray:
        rows = lut_rows(lut, setup.space.architecture_rows(arch), setup.height, setup.width, setup.batch)
        X, N, _ = features([rows], 0.0, "op", design_groups)
        return np.concatenate([X[0], N[0]])

    design_groups = sorted({str(o) for o in lut.df["op"]})
    networks, reference = sample_sets(setup.space, request, featurize)
    for n in networks:  # a LUT that cannot price a network fails before any timing
        pr = setup.space.architecture_rows(n.arch)
        n.rows = {c: lut_rows(lut, pr, setup.height, setup.width, setup.batch, c) for c in COLUMNS}
    lut_rows(lut, setup.space.architecture_rows(reference), setup.height, setup.width, setup.batch)

    jpath = journal_path(request.lut_path)
    key = request.journal_key(lut.meta.get("created"), scope, search_sha)
    done: list[Window] = []
    records = list(read_journal(jpath))
    header = next((r for r in records if r.get("type") == "header"), None)
    if header is not None and header.get("key") != key:
        raise UserError(f"{jpath} holds an unfinished fit with other settings (LUT, scope, network counts, seed "
                        "or rounds); rerun it with the same options, or delete that file to start afresh")
    latest: dict[tuple[str, int, float], Window] = {}
    for r in records:
        if r.get("type") == "window":
            try:
                w = Window.from_dict(r["window"])
            except (KeyError, TypeError, ValueError):
                continue
            latest[(w.item, w.round, w.t)] = w  # a later record of the same window (superseded) wins
    done = list(latest.values())
    if done and on_event is not None:
        on_event(f"resuming: {len(done)} measured window(s) from {jpath}")

    backend = get_backend(setup.backend, device=setup.device, precision=setup.precision,
                          threads=setup.protocol.threads)
    archs = {REFERENCE: reference, **{n.key: n.arch for n in networks}}
    lock = FileLock(lock_path(jpath), purpose="a latbench fit")
    lock.acquire()
    journal: Journal | None = None
    load_before = list(os.getloadavg())
    try:
        journal = Journal(jpath)
        if header is None:
            journal.append({"type": "header", "key": key, "created": now_iso(), "pid": os.getpid()})
        jr = journal
        res: InterleavedResult = measure_networks(
            setup, backend, archs, request.rounds, reference=REFERENCE, done=done,
            on_window=lambda w: jr.append({"type": "window", "window": w.to_dict()}), on_event=on_event,
            on_progress=on_progress)
    finally:
        if journal is not None:
            journal.close()
        lock.release()

    failed = [k for k, r in res.items.items() if not r.ok]
    if PROBE in failed:
        raise UserError(f"the per-call overhead probe could not be measured with backend {setup.backend}")
    measured = {k: r.median_us for k, r in res.items.items() if r.ok}
    overhead = measured[PROBE]
    by_set = {s: [n for n in networks if n.set == s and n.key in measured] for s in SETS}
    fit_nets = by_set["fit"]
    if len(fit_nets) < MIN_FIT:
        raise UserError(f"only {len(fit_nets)} fit networks could be measured (failed: {', '.join(failed[:5])})")
    device_info = describe_device(setup.device)
    if device_info.get("type") == "cpu" and setup.protocol.threads:
        device_info["threads"] = setup.protocol.threads
    fit_rows = {c: [n.rows[c] for n in fit_nets] for c in COLUMNS}
    fit_y = [measured[n.key] for n in fit_nets]
    model, sel = fit_model(fit_rows, fit_y, scope, overhead)
    ladder = mechanisms(fit_rows, fit_y, scope, overhead, model)
    uni = [n for n in networks if n.set == "fit-uniform" and n.key in measured]
    if len(uni) >= MIN_FIT:  # the design's ablation: the same model fitted on uniform networks
        uni_model, _ = fit_model({c: [n.rows[c] for n in uni] for c in COLUMNS}, [measured[n.key] for n in uni],
                                 scope, overhead)
        ladder["model (uniform fit networks)"] = lambda net, m=uni_model: m.predict_rows(net[m.column])
    uniform_part = [n for n in fit_nets if not n.from_search]
    if len(uniform_part) < len(fit_nets) and len(uniform_part) >= MIN_FIT:
        # the ablation of search-drawn fit networks, at no extra measurement: the same fit on the uniform part only
        part_model, _ = fit_model({c: [n.rows[c] for n in uniform_part] for c in COLUMNS},
                                  [measured[n.key] for n in uniform_part], scope, overhead)
        ladder["model (uniform part of the fit set only)"] = lambda net, m=part_model: m.predict_rows(net[m.column])
    figs: dict[str, dict[str, dict[str, Any]]] = {}
    for s in SETS:
        nets = by_set[s]
        if len(nets) < 3:
            continue
        y = [measured[n.key] for n in nets]
        figs[s] = {name: figures([f(n.rows) for n in nets], y) for name, f in ladder.items()}
    noises = [r.noise for k, r in res.items.items() if r.ok and k not in (PROBE, REFERENCE) and math.isfinite(r.noise)]
    halves = split_halves(res, request.rounds.statistic)
    for s, nets in by_set.items():
        if s in figs:
            figs[s]["measurement (split-half)"] = repeatability([halves[n.key] for n in nets if n.key in halves])
    measurement = {"statistic": request.rounds.statistic, "rounds": request.rounds.to_dict(),
                   "resumed_windows": len(done),
                   "protocol": setup.protocol.to_dict(), "median_network_noise": float(np.median(noises)) if noises else None,
                   "failed": failed, "loadavg_before": [round(v, 2) for v in load_before],
                   "loadavg_after": [round(v, 2) for v in os.getloadavg()], **res.summary()}
    provenance = {
        "by": "latbench fit", "date": now_iso(), "device": device_info.get("name"), "host": device_info.get("host"),
        "space": json.loads(json.dumps(setup.space.identity(), default=str)),
        "fit_networks": len(fit_nets), "fit_design": request.design, "seed": request.seed,
        "fit_networks_from_search": sum(n.from_search for n in fit_nets),
        "statistic": request.rounds.statistic,
        "rounds": request.rounds.rounds, "overhead_probe": "latbench.timing.probe (x + 1 on a tiny tensor)",
        "held_out": {s: {"n": f["model"]["n"], "mape": f["model"]["mape"], "worst": f["model"]["worst"],
                         "kendall_tau": f["model"]["kendall_tau"]} for s, f in figs.items() if s != "fit"},
        "in_sample": {k: figs["fit"]["model"][k] for k in ("n", "mape", "worst", "kendall_tau")} if "fit" in figs else None,
        "drift_events": len(res.drift), "reference_p10_p90_spread": measurement.get("reference_p10_p90_spread"),
        "loadavg": measurement["loadavg_before"],
    }
    model = LatencyModel(**{**model.__dict__, "provenance": {**model.provenance, **provenance}})
    result = FitResult(request, scope, model, networks, measured, overhead, figs, measurement, device_info)
    if request.save:
        save_model(request.lut_path, model)
        result.saved = True
    if jpath.exists():
        jpath.unlink()
    return result


def save_model(lut_path: str | os.PathLike, model: LatencyModel) -> None:
    """Store ``model`` in the LUT's metadata (replacing one of the same scope), atomically and
    under the LUT's lock so a concurrent build or calibration is refused, not overwritten."""
    from latbench.lut.table import LUT

    with FileLock(lock_path(lut_path), purpose="a LUT build, calibration or fit"):
        lut = read_lut(lut_path)  # re-read: save onto the current file, not a stale copy
        meta = with_model(lut.meta, model)
        meta["updated"] = now_iso()
        write_lut(LUT(lut.df, meta), lut_path)


def format_resolution_of(scope: ModelScope) -> str:
    return format_resolution((scope.height, scope.width))
