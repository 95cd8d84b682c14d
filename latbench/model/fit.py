"""``latbench fit``: measure whole networks, fit a latency model, judge it on networks it never saw.

:func:`run_fit` reads as its five steps:

1. **plan** (:func:`plan_fit`): read the LUT and how it was measured
   (:func:`latbench.model.networks.resolve_setup`: space, backend, precision, batch, protocol,
   device — a different device is refused); say what the fit will cost (networks × rounds ×
   window, preparation per network, estimated minutes) and refuse beyond a bound unless asked;
   take the journal's lock (a second fit on the same LUT is refused here, before anything is
   read or resumed); draw the networks (:func:`sample_networks`): the *fit* networks (by default
   spread over the latency range searches reach, :func:`latbench.model.networks.span_design`;
   optionally half from a search's α), then the held-out sets — ``test`` (uniform), ``search``
   (from ``--from-search``'s α) and ``other_searches`` (``--test-search``: other searches'
   derived architectures and draws from their α) — from a *fresh* seed (``test_seed``, recorded),
   every held-out network disjoint by architecture (:func:`~latbench.model.networks.arch_fingerprint`)
   from every fit network; every LUT row they need must be there (checked before timing);
2. **measure** (:func:`measure_fit`): build and prepare every network with the LUT's own backend
   plus a near-empty *probe* op (the per-call overhead), measure them in interleaved rounds with a
   reference network watching for slow episodes; every finished window goes to a journal next
   to the LUT (``LUT.fit.jsonl``), so a killed fit resumes and loses at most the window in flight;
3. **select** (:func:`select_model`): fit the model on the fit networks only
   (:func:`latbench.model.fitting.fit_model`) and the ablation ladder beside it
   (:func:`latbench.model.fitting.mechanisms`); refuse to store a model when the LUT does not
   explain the fit networks (:func:`lut_explains`);
4. **judge** (:func:`judge`): every rung of the ladder on every set, side by side, with the
   measurement's agreement with itself;
5. **store** (:func:`save_model`): the model in the LUT's metadata (``latency_models``,
   replacing one of the same scope), under the LUT's lock, atomically, with its provenance — the
   fingerprints of its fit networks among it, so ``validate-lut`` never judges it on them.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from latbench.errors import UserError
from latbench.files import FileLock, Journal, atomic_write_text, check_writable, lock_path, read_journal
from latbench.lut.table import now_iso, read_lut, write_lut
from latbench.model.fit_design import _Sampler, d_optimal, sample_networks
from latbench.model.fit_judge import (_Selected, judge, lut_explains, repeatability, select_model, split_halves,
                                      unsteady)
from latbench.model.fit_request import (ARCH_ROWS, DESIGNS, JOURNAL_SUFFIX, MAX_MINUTES, MAX_NETWORKS, MIN_FIT,
                                        PREPARE_S, SETS, FitPlan, FitRequest, Network, check_plan, make_plan)
from latbench.model.fitting import Row, features, raw_sum
from latbench.model.latency_model import COLUMNS, LatencyModel, ModelScope, with_model
from latbench.model.networks import PROBE, REFERENCE, LutSetup, figures, measure_networks, op_costs, resolve_setup
from latbench.model.predictor import Predictor
from latbench.timing.interleave import InterleavedResult, Window

__all__ = ["FitRequest", "FitResult", "FitPlan", "Network", "run_fit", "save_model", "journal_path", "figures",
           "measure_networks", "d_optimal", "split_halves", "repeatability", "lut_explains", "sample_networks",
           "PROBE", "REFERENCE", "SETS", "MIN_FIT", "DESIGNS", "MAX_NETWORKS", "MAX_MINUTES", "PREPARE_S", "ARCH_ROWS"]


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
    test_seed: int | None = None
    plan: FitPlan | None = None
    refused: str | None = None      # why the model was not stored (the LUT does not explain the networks, or
    #                                 the measurement was too unsteady)
    explains: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)  # intervals, ceiling, selection (when available)

    def to_dict(self) -> dict[str, Any]:
        r = self.request
        return {
            "lut": r.lut_path, "date": self.date, "scope": self.scope.to_dict(),
            "device": self.device_info, "overhead_us": self.overhead_us,
            "model": self.model.to_dict(), "saved": self.saved, "refused": self.refused,
            "lut_explains": self.explains, "notes": self.notes,
            "plan": self.plan.to_dict() if self.plan else None,
            "request": {"fit_networks": r.fit_networks, "test_networks": r.test_networks,
                        "search_networks": r.search_networks if r.from_search else 0,
                        "from_search": r.from_search, "seed": r.seed, "test_seed": self.test_seed,
                        "test_search": list(r.test_search), "test_search_draws": r.test_search_draws,
                        "design": r.design, "uniform_fit_networks": r.uniform_fit_networks,
                        "search_fit_networks": r.search_fit_networks,
                        "rounds": r.rounds.to_dict()},
            "figures": self.figures, "statistics": self.statistics, "measurement": self.measurement,
            "networks": [{"key": n.key, "set": n.set, "measured_us": self.measured.get(n.key),
                          "raw_sum_us": raw_sum(n.rows["median_us"]),
                          "model_us": self.model.predict_rows(n.rows[self.model.column]),
                          "fingerprint": n.fingerprint, "source": n.source, "arch": n.arch}
                         for n in self.networks],
        }


def journal_path(lut_path: str | os.PathLike) -> Path:
    return Path(str(lut_path) + JOURNAL_SUFFIX)



# ---- 1. plan -------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    """Everything :func:`plan_fit` settled: what the later steps work on."""

    lut: Any
    setup: LutSetup
    scope: ModelScope
    plan: FitPlan
    networks: list[Network]
    reference: dict[str, Any]
    test_seed: int
    key: dict[str, Any]
    done: list[Window]
    header: dict[str, Any] | None
    lock: FileLock
    notes: list[str]
    peers: tuple[str, ...] = ()


def _read_journal(jpath: Path, notes: list[str],
                  on_event: Callable[[str], None] | None) -> tuple[dict[str, Any] | None, list[Window]]:
    """The journal's header and its measured windows; unreadable lines are counted and said."""
    if not jpath.exists():
        return None, []
    try:
        lines = [ln for ln in jpath.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError as exc:
        raise UserError(f"cannot read the fit journal {jpath}: {exc.strerror or exc}") from None
    records = list(read_journal(jpath))
    header = next((r for r in records if r.get("type") == "header" and isinstance(r.get("key"), dict)), None)
    latest: dict[tuple[str, int, float], Window] = {}
    bad = len(lines) - len(records)
    for r in records:
        if r.get("type") == "window":
            try:
                w = Window.from_dict(r["window"])
            except (KeyError, TypeError, ValueError, AttributeError):
                bad += 1
                continue
            latest[(w.item, w.round, w.t)] = w  # a later record of the same window (superseded) wins
        elif r.get("type") != "header":
            bad += 1
    msg = None
    if header is None and lines:
        msg = (f"notice: {jpath} is not a fit journal ({len(lines)} line(s) without a header); "
               "replacing it and starting afresh")
        atomic_write_text(jpath, "")
        latest = {}
    elif bad:
        msg = f"notice: ignored {bad} unreadable line(s) of the fit journal {jpath} (torn or garbled)"
    if msg:
        notes.append(msg)
        if on_event is not None:
            on_event(msg)
    return header, list(latest.values())


def plan_fit(request: FitRequest, on_event: Callable[[str], None] | None = None) -> _Prepared:
    """Step 1 (see the module docstring). Holds the journal's lock on return (``.lock``)."""
    request.check()
    lut = read_lut(request.lut_path)
    setup = resolve_setup(lut, request.resolution, request.device, request.space_name, request.space_options,
                          request.lut_path)
    from latbench.timing.plausibility import refuse_flagged
    refuse_flagged(lut, str(request.lut_path), height=setup.height, width=setup.width, batch=setup.batch,
                   backend=setup.backend, precision=setup.precision, use="a fit")  # §5.11
    scope = ModelScope.of_lut(lut.meta, setup.height, setup.width, setup.batch, setup.backend, setup.precision)
    if request.save:
        check_writable(request.lut_path)
    plan = make_plan(request, setup.backend)
    if on_event is not None:
        on_event(plan.describe())
    check_plan(plan, request)
    from latbench.files import file_sha256

    search_sha = file_sha256(request.from_search) if request.from_search else None
    for p in request.test_search:
        if not Path(p).is_file():
            raise UserError(f"--test-search {p}: no such file")
    other_shas = [file_sha256(p) for p in request.test_search]
    jpath = journal_path(request.lut_path)
    lock = FileLock(lock_path(jpath), purpose="a latbench fit")
    lock.acquire()  # before the journal is read: a second fit is refused, not told it resumes
    try:
        notes: list[str] = []
        header, done = _read_journal(jpath, notes, on_event)
        test_seed = request.test_seed
        if test_seed is None:
            old = (header or {}).get("key", {}).get("test_seed")
            test_seed = int(old) if isinstance(old, int) and not isinstance(old, bool) else secrets.randbelow(2**31)
        key = request.journal_key(lut.meta.get("created"), scope, search_sha, test_seed, other_shas)
        if header is not None and header.get("key") != key:
            raise UserError(f"{jpath} holds an unfinished fit with other settings (LUT, scope, network counts, seeds "
                            "or rounds); rerun it with the same options, or delete that file to start afresh")
        if done and on_event is not None:
            on_event(f"resuming: {len(done)} measured window(s) from {jpath}")

        predictor = Predictor(lut, scope)  # the LUT's rows at this scope (a fit prices them itself)

        def rows_of(arch: dict[str, Any], column: str = "median_us") -> list[Row]:
            return predictor.rows(predictor.network_rows(setup.space, arch), column)

        def price(arch: dict[str, Any]) -> float:
            try:
                return raw_sum(rows_of(arch))
            except UserError:
                return math.inf  # a row the LUT lacks: never a fit network

        groups = sorted({str(o) for o in lut.df["op"]})

        def featurize(arch: dict[str, Any]) -> np.ndarray:
            X, N, _ = features([rows_of(arch)], 0.0, "op", groups)
            return np.concatenate([X[0], N[0]])

        sampler = _Sampler(setup.space, price, op_costs(lut, setup.height, setup.width, setup.batch), featurize)
        networks, reference = sample_networks(sampler, request, test_seed, notes)
        for n in networks:  # a LUT that cannot price a network fails before any timing
            n.rows = {c: rows_of(n.arch, c) for c in COLUMNS}
            n.rows[ARCH_ROWS] = [tuple(r) for r in setup.space.architecture_rows(n.arch)]  # what learned peers see
        rows_of(reference)
    except BaseException:
        lock.release()
        raise
    return _Prepared(lut, setup, scope, plan, networks, reference, test_seed, key, done, header, lock, notes,
                     tuple(request.peers))


# ---- 2. measure ----------------------------------------------------------------------------------
def measure_fit(prep: _Prepared, request: FitRequest, *, on_event: Callable[[str], None] | None = None,
                on_progress: Callable[[str, int, int, str], None] | None = None) -> InterleavedResult:
    """Step 2: every network and the probe in interleaved rounds, journalled; releases the lock."""
    from latbench.timing import get_backend

    setup = prep.setup
    jpath = journal_path(request.lut_path)
    journal: Journal | None = None
    try:
        backend = get_backend(setup.backend, device=setup.device, precision=setup.precision,
                              threads=setup.protocol.threads)
        archs = {REFERENCE: prep.reference, **{n.key: n.arch for n in prep.networks}}
        journal = Journal(jpath)
        if prep.header is None:
            journal.append({"type": "header", "key": prep.key, "created": now_iso(), "pid": os.getpid()})
        jr = journal
        return measure_networks(
            setup, backend, archs, request.rounds, reference=REFERENCE, done=prep.done,
            on_window=lambda w: jr.append({"type": "window", "window": w.to_dict()}), on_event=on_event,
            on_progress=on_progress)
    finally:
        if journal is not None:
            journal.close()
        prep.lock.release()


# ---- 5. store ------------------------------------------------------------------------------------
def save_model(lut_path: str | os.PathLike, model: LatencyModel) -> None:
    """Store ``model`` in the LUT's metadata (replacing one of the same scope), atomically and
    under the LUT's lock so a concurrent build or calibration is refused, not overwritten."""
    from latbench.lut.table import LUT

    with FileLock(lock_path(lut_path), purpose="a LUT build, calibration or fit"):
        lut = read_lut(lut_path)  # re-read: save onto the current file, not a stale copy
        meta = with_model(lut.meta, model)
        meta["updated"] = now_iso()
        write_lut(LUT(lut.df, meta), lut_path)


def _provenance(prep: _Prepared, request: FitRequest, sel: _Selected, figs: dict[str, Any],
                measurement: dict[str, Any], device_info: dict[str, Any], res: InterleavedResult) -> dict[str, Any]:
    from latbench.files import file_sha256
    from latbench.timing.registry import network_rows_rule

    fit_nets = sel.fit_nets
    return {
        "by": "latbench fit", "date": now_iso(), "device": device_info.get("name"), "host": device_info.get("host"),
        "space": json.loads(json.dumps(prep.setup.space.identity(), default=str)),
        "fit_networks": len(fit_nets), "fit_design": request.design, "seed": request.seed,
        "test_seed": prep.test_seed,
        "fit_fingerprints": [n.fingerprint for n in fit_nets],
        "fit_networks_from_search": sum(n.from_search for n in fit_nets),
        "test_search": [{"path": p, "sha256": file_sha256(p)} for p in request.test_search],
        "statistic": request.rounds.statistic, "network_rows": network_rows_rule(prep.scope.backend),
        "rounds": request.rounds.rounds, "overhead_probe": "latbench.timing.probe (x + 1 on a tiny tensor)",
        "held_out": {s: {"n": f["model"]["n"], "mape": f["model"]["mape"], "worst": f["model"]["worst"],
                         "kendall_tau": f["model"]["kendall_tau"]} for s, f in figs.items() if s != "fit"},
        "in_sample": {k: figs["fit"]["model"][k] for k in ("n", "mape", "worst", "kendall_tau")} if "fit" in figs else None,
        "lut_explains": sel.explains,
        "drift_events": len(res.drift), "reference_p10_p90_spread": measurement.get("reference_p10_p90_spread"),
        "loadavg": measurement["loadavg_before"],
    }


def run_fit(request: FitRequest, *, on_event: Callable[[str], None] | None = None,
            on_progress: Callable[[str, int, int, str], None] | None = None) -> FitResult:
    """Plan → measure → select → judge → store; see the module docstring.
    ``on_progress(phase, done, total, what)``; ``on_event(line)`` for the plan and notices."""
    from latbench.device import describe_device

    prep = plan_fit(request, on_event)
    load_before = [round(v, 2) for v in os.getloadavg()]
    res = measure_fit(prep, request, on_event=on_event, on_progress=on_progress)

    failed = [k for k, r in res.items.items() if not r.ok]
    if PROBE in failed:
        raise UserError(f"the per-call overhead probe could not be measured with backend {prep.setup.backend}")
    measured = {k: r.median_us for k, r in res.items.items() if r.ok}
    overhead = measured[PROBE]
    sel = select_model(prep.networks, prep.scope, measured, overhead, failed, prep.peers)
    figs, stats = judge(prep.networks, prep.lut, prep.setup, sel, measured, res, request.rounds.statistic)

    device_info = describe_device(prep.setup.device)
    if device_info.get("type") == "cpu" and prep.setup.protocol.threads:
        device_info["threads"] = prep.setup.protocol.threads
    noises = [r.noise for k, r in res.items.items() if r.ok and k not in (PROBE, REFERENCE) and math.isfinite(r.noise)]
    measurement = {"statistic": request.rounds.statistic, "rounds": request.rounds.to_dict(),
                   "resumed_windows": len(prep.done), "protocol": prep.setup.protocol.to_dict(),
                   "median_network_noise": float(np.median(noises)) if noises else None,
                   "failed": failed, "loadavg_before": load_before,
                   "loadavg_after": [round(v, 2) for v in os.getloadavg()], **res.summary()}
    prov = _provenance(prep, request, sel, figs, measurement, device_info, res)
    model = LatencyModel(**{**sel.model.__dict__, "provenance": {**sel.model.provenance, **prov}})
    refused = sel.refused or unsteady(measurement, request.max_reference_spread)
    result = FitResult(request, prep.scope, model, prep.networks, measured, overhead, figs, measurement, device_info,
                       test_seed=prep.test_seed, plan=prep.plan, refused=refused, explains=sel.explains,
                       notes=prep.notes, statistics=stats)
    n_other = sum(1 for n in prep.networks if n.set == "other_searches" and n.key in measured)
    if request.test_search and n_other < 3:
        result.notes.append(f"other_searches: {n_other} measured network(s), too few to judge as a set (give more "
                            "--test-search files or --test-search-draws); each is listed with its error")
    if request.save and refused is None:
        save_model(request.lut_path, model)
        result.saved = True
    jpath = journal_path(request.lut_path)
    if jpath.exists():
        jpath.unlink()
    return result
