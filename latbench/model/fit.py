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
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from latbench.errors import UserError
from latbench.files import FileLock, Journal, atomic_write_text, check_writable, lock_path, read_journal
from latbench.lut.table import now_iso, read_lut, write_lut
from latbench.model.fitting import Row, features, fit_fixed, fit_model, mechanisms, raw_sum
from latbench.model.latency_model import COLUMNS, LatencyModel, ModelScope, with_model
from latbench.model.predictor import Predictor
from latbench.model.networks import (PROBE, REFERENCE, LutSetup, arch_fingerprint, draw_distinct, figures,
                                     measure_networks, op_costs, resolve_setup, search_file_architectures,
                                     span_design)
from latbench.timing.interleave import InterleavedResult, RoundsConfig, Window

__all__ = ["FitRequest", "FitResult", "FitPlan", "Network", "run_fit", "save_model", "journal_path", "figures",
           "measure_networks", "d_optimal", "split_halves", "repeatability", "lut_explains", "PROBE", "REFERENCE"]

JOURNAL_SUFFIX = ".fit.jsonl"
ARCH_ROWS = "arch_rows"  # Network.rows key of the architecture's (position, op) rows
SETS = ("fit", "test", "search", "other_searches")
MIN_FIT = 8
DESIGNS = ("span", "uniform", "d-optimal")
MAX_NETWORKS = 2000        # beyond this many networks a fit is refused unless --yes
MAX_MINUTES = 60.0         # beyond this estimate a fit is refused unless --yes or --max-minutes
#: seconds to build and prepare one network, per backend (docs/latency_model.md "What it costs")
PREPARE_S = {"cpu": 0.05, "eager": 0.05, "cudagraph": 0.3, "ort": 1.3, "compile": 28.0, "trt": 30.0}
#: a LUT whose sums the fit networks' measurements scale by less than this (or more than its
#: inverse), or whose raw sums correlate with them below MIN_RAW_CORRELATION, does not explain them
MIN_SCALE = 0.05
MIN_RAW_CORRELATION = 0.3


@dataclass(frozen=True)
class FitRequest:
    """What ``latbench fit`` was asked to do (every field is recorded in the provenance)."""

    lut_path: str
    fit_networks: int = 40
    test_networks: int = 20
    search_networks: int = 20
    from_search: str | None = None
    seed: int = 0                    # the fit networks' draws
    test_seed: int | None = None     # the held-out sets' draws; None: a fresh random seed (recorded)
    test_search: tuple[str, ...] = ()  # other searches' results: held-out set ``other_searches``
    test_search_draws: int = 4       # draws from each --test-search file's α (beside its derived architecture)
    resolution: tuple[int, int] | None = None
    device: str | None = None
    space_name: str | None = None
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    save: bool = True
    design: str = "span"             # how fit networks are chosen: span | uniform | d-optimal
    uniform_fit_networks: int = 0    # ablation: also measure this many uniform fit networks and report their model
    search_fit_networks: int = 0     # of the fit networks, how many are drawn from the search's α (--from-search)
    yes: bool = False                # accept a plan beyond the bounds
    peers: tuple[str, ...] = ()      # learned predictors trained on the same fit networks (latbench.model.peers)
    max_minutes: float | None = None  # the bound on the estimated minutes (default MAX_MINUTES)

    def total_networks(self) -> int:
        other = len(self.test_search) * (1 + max(self.test_search_draws, 0))
        return (self.fit_networks + self.uniform_fit_networks + self.test_networks
                + (self.search_networks if self.from_search else 0) + other)

    def check(self) -> None:
        """Refuse impossible or unbounded requests at once, before anything is read or allocated."""
        if self.fit_networks < MIN_FIT:
            raise UserError(f"--fit-networks must be at least {MIN_FIT} (a model fitted on fewer networks "
                            f"cannot be cross-validated), got {self.fit_networks}")
        if self.test_networks < 0 or self.search_networks < 0 or self.test_search_draws < 0:
            raise UserError("--test-networks, --search-networks and --test-search-draws cannot be negative")
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
        if self.test_seed is not None and self.test_seed < 0:
            raise UserError(f"--test-seed cannot be negative, got {self.test_seed}")
        from latbench.model.peers import PEERS

        unknown = [p for p in self.peers if p not in PEERS]
        if unknown:
            raise UserError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise UserError(f"--max-minutes must be positive, got {self.max_minutes}")
        n = self.total_networks()
        if n > MAX_NETWORKS and not self.yes:
            raise UserError(f"this fit would measure {n} networks (more than {MAX_NETWORKS}: every one is built, "
                            "prepared and held in memory at once); ask for fewer, or pass --yes if you mean it")

    def journal_key(self, lut_created: Any, scope: ModelScope, search_sha: str | None, test_seed: int,
                    other_shas: Sequence[str]) -> dict[str, Any]:
        """What must match for a rerun to continue an unfinished fit's measurements."""
        return json.loads(json.dumps({
            "lut_created": lut_created, "scope": scope.to_dict(), "fit": self.fit_networks, "test": self.test_networks,
            "search": self.search_networks if self.from_search else 0, "search_sha": search_sha, "seed": self.seed,
            "test_seed": test_seed, "other_searches": list(other_shas), "other_draws": self.test_search_draws,
            "design": self.design, "uniform_fit": self.uniform_fit_networks,
            **({"search_fit": self.search_fit_networks} if self.search_fit_networks else {}),
            "rounds": self.rounds.to_dict()}, default=str))


@dataclass(frozen=True)
class FitPlan:
    """What a fit will cost, said before it starts."""

    networks: int          # measured networks (the reference and the overhead probe come on top)
    rounds: int
    window_s: float
    prepare_s: float       # per network
    backend: str

    @property
    def measure_s(self) -> float:
        return (self.networks + 2) * self.rounds * self.window_s * 1.3  # ≈ 30 % between windows (measured)

    @property
    def minutes(self) -> float:
        return (self.measure_s + (self.networks + 1) * self.prepare_s) / 60.0

    def describe(self) -> str:
        return (f"plan: {self.networks} networks × {self.rounds} rounds × {self.window_s:g} s window "
                f"(≈ {self.measure_s / 60:.1f} min measuring, more after slow episodes) + "
                f"≈ {self.prepare_s:g} s preparation per network with {self.backend} "
                f"(≈ {(self.networks + 1) * self.prepare_s / 60:.1f} min): about {self.minutes:.1f} minutes")

    def to_dict(self) -> dict[str, Any]:
        return {"networks": self.networks, "rounds": self.rounds, "window_s": self.window_s,
                "prepare_s_per_network": self.prepare_s, "backend": self.backend,
                "estimated_minutes": round(self.minutes, 2)}


@dataclass
class Network:
    key: str
    set: str
    arch: dict[str, Any]
    rows: dict[str, list[Any]]  # LUT column (median_us, p10_us) -> the network's rows; ARCH_ROWS -> (position, op)
    from_search: bool = False   # drawn from the search's α (held-out searched, or search-drawn fit networks)
    fingerprint: str = ""       # latbench.model.networks.arch_fingerprint
    source: str | None = None   # other_searches: the --test-search file and whether derived or drawn


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
    refused: str | None = None      # why the model was not stored (the LUT does not explain the networks)
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
    in the figures of :func:`figures`. Half against half understates how well the full measurement
    ranks the networks (each half has twice the noise); it is reported as what it is, not as a
    ceiling."""
    if len(pairs) < 3:
        return {"n": len(pairs)}
    a, b = zip(*pairs)
    return figures(a, b)


def journal_path(lut_path: str | os.PathLike) -> Path:
    return Path(str(lut_path) + JOURNAL_SUFFIX)


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


# ---- 1. plan -------------------------------------------------------------------------------------
def make_plan(request: FitRequest, backend: str) -> FitPlan:
    return FitPlan(request.total_networks(), request.rounds.rounds, request.rounds.window_s,
                   PREPARE_S.get(backend, 1.0), backend)


def check_plan(plan: FitPlan, request: FitRequest) -> None:
    bound = request.max_minutes if request.max_minutes is not None else MAX_MINUTES
    if plan.minutes > bound and not request.yes:
        raise UserError(f"this fit would take about {plan.minutes:.0f} minutes (more than {bound:g}); ask for fewer "
                        "networks or rounds, or pass --max-minutes M (or --yes) if you mean it")


@dataclass
class _Sampler:
    """What :func:`sample_networks` needs from the LUT: the space, prices and op costs."""

    space: Any
    price: Callable[[dict[str, Any]], float]
    costs: dict[str, float]
    featurize: Callable[[dict[str, Any]], np.ndarray] | None = None


def sample_networks(sampler: _Sampler, request: FitRequest, test_seed: int,
                    notes: list[str] | None = None) -> tuple[list[Network], dict[str, Any]]:
    """The fit networks, then the held-out sets (disjoint from them and from each other by
    :func:`~latbench.model.networks.arch_fingerprint`), and the reference architecture.

    Fit networks (``request.seed``): ``design`` ``span`` (default,
    :func:`~latbench.model.networks.span_design`: evenly over the LUT-predicted latency range
    that tilted draws reach, light to heavy), ``uniform`` draws, or ``d-optimal`` picks from
    uniform draws; with ``search_fit_networks`` = K, K of them are drawn from the search's α
    instead (keys ``fits…``). Held-out sets (``test_seed``): ``test`` uniform, ``search`` from
    ``from_search``'s α, ``other_searches`` from every ``test_search`` file (its derived
    architecture and ``test_search_draws`` draws from its α)."""
    space = sampler.space
    notes = notes if notes is not None else []
    taken: set[str] = set()
    out: list[Network] = []

    def add(archs: list[dict[str, Any]], n: int | None, name: str, prefix: str | None = None,
            from_search: bool = False, source: str | None = None) -> None:
        if n is not None and len(archs) < n:
            raise UserError(f"could draw only {len(archs)} distinct {name} architectures of the {n} asked for "
                            "(the space or the search distribution is too small)")
        start = sum(1 for x in out if x.key.startswith(prefix or name))
        for i, a in enumerate(archs):
            fp = arch_fingerprint(space, a)
            out.append(Network(f"{prefix or name}{start + i:03d}-{fp[:8]}", name, a, {}, from_search, fp, source))

    reference = space.sample_architecture(random.Random(f"latbench-fit-reference-{request.seed}"))
    taken.add(arch_fingerprint(space, reference))
    n_search_fit = request.search_fit_networks if request.from_search else 0
    n_main = request.fit_networks - n_search_fit
    if request.design == "d-optimal" and sampler.featurize is not None:
        pool = draw_distinct(space, max(25 * n_main, 500), request.seed, set(taken))
        picks = d_optimal(np.array([sampler.featurize(a) for a in pool]), n_main)
        fit = [pool[i] for i in picks]
        taken.update(arch_fingerprint(space, a) for a in fit)
    elif request.design == "span":
        fit = span_design(space, n_main, request.seed, taken, sampler.price, sampler.costs)
    else:
        fit = draw_distinct(space, n_main, request.seed, taken)
    add(fit, n_main, "fit")
    if n_search_fit:
        add(draw_distinct(space, n_search_fit, request.seed + 4_000_003, taken, request.from_search), n_search_fit,
            "fit", prefix="fits", from_search=True)
    if request.uniform_fit_networks:
        add(draw_distinct(space, request.uniform_fit_networks, request.seed + 3_000_003, taken),
            request.uniform_fit_networks, "fit-uniform")
    # held out: a fresh seed, never a fit network
    add(draw_distinct(space, request.test_networks, f"latbench-test-{test_seed}", taken), request.test_networks, "test")
    if request.from_search:
        add(draw_distinct(space, request.search_networks, f"latbench-search-{test_seed}", taken, request.from_search),
            request.search_networks, "search", from_search=True)
    for i, path in enumerate(request.test_search):
        got = search_file_architectures(space, path, request.test_search_draws, f"latbench-other-{test_seed}-{i}", taken)
        notes.extend(got.notes)
        if got.derived is not None:
            add([got.derived], None, "other_searches", prefix="oth", from_search=True, source=f"{path} (derived)")
        add(got.draws, None, "other_searches", prefix="oth", from_search=True, source=f"{path} (α draw)")
    return out, reference


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
    setup = resolve_setup(lut, request.resolution, request.device, request.space_name)
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
            return predictor.rows(setup.space.architecture_rows(arch), column)

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


# ---- 3. select -----------------------------------------------------------------------------------
def lut_explains(raw: Sequence[float], measured: Sequence[float], global_slope: float) -> tuple[bool, dict[str, Any]]:
    """Does the LUT explain the fit networks? Not when its raw sums are on another scale than the
    measurements (median measured / Σ LUT outside [:data:`MIN_SCALE`, 1 / MIN_SCALE]), when the
    differences between networks are not the LUT's differences (the affine fit's slope, measured ≈
    a·Σ + b, outside the same range — seen on a LUT timed under contention: measured ≈ 0.32 × Σ LUT
    with a slope of −0.003, a constant, not a model of the LUT) or when the raw sums correlate
    with the measurements below :data:`MIN_RAW_CORRELATION`. ``global_slope`` (the one-group
    model's) is reported beside. Returns (verdict, the figures and the reason)."""
    x, y = np.asarray(raw, float), np.asarray(measured, float)
    r = float(np.corrcoef(x, y)[0, 1]) if x.size > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else math.nan
    slope = float(np.polyfit(x, y, 1)[0]) if x.size > 2 and np.ptp(x) > 0 else math.nan
    scale = float(np.median(y / x)) if np.all(x > 0) else math.nan
    out: dict[str, Any] = {"scale": scale, "affine_slope": None if math.isnan(slope) else slope,
                           "raw_correlation": None if math.isnan(r) else r, "global_slope": float(global_slope),
                           "bounds": {"scale": [MIN_SCALE, 1 / MIN_SCALE], "affine_slope": [MIN_SCALE, 1 / MIN_SCALE],
                                      "raw_correlation": MIN_RAW_CORRELATION}}
    why = None
    if math.isfinite(scale) and not MIN_SCALE <= scale <= 1 / MIN_SCALE:
        why = (f"the networks measure {scale:.3g} × their LUT sum: the rows are on another scale than the networks "
               "(a LUT timed under contention or with another thread count?)")
    elif not math.isnan(r) and r < MIN_RAW_CORRELATION:
        why = (f"the LUT's raw sums correlate with the measured networks at r = {r:.2f} only (below "
               f"{MIN_RAW_CORRELATION}): the rows do not rank these networks")
    elif not math.isnan(slope) and not MIN_SCALE <= slope <= 1 / MIN_SCALE:
        why = (f"measured ≈ {slope:.3g} · Σ LUT + b: the LUT's differences between networks are not theirs "
               "(every slope ≈ 0 is a constant, not a model of the LUT)")
    out["reason"] = why
    return why is None, out


def train_peers(fit_nets: list[Network], y: Sequence[float], names: Sequence[str]) -> dict[str, Callable[[Any], float]]:
    """Learned predictors (:mod:`latbench.model.peers`: ridge on a one-hot encoding, boosted trees,
    a small GCN) trained on the fit networks' architectures alone, as ladder rungs ``peer: NAME``
    judged on the same held-out sets as the model."""
    from latbench.model.peers import fit_peers

    peers = fit_peers([n.rows[ARCH_ROWS] for n in fit_nets], y, names)
    return {f"peer: {name}": (lambda net, p=p: float(p.predict([net[ARCH_ROWS]])[0])) for name, p in peers.items()}


@dataclass
class _Selected:
    model: LatencyModel
    ladder: dict[str, Callable[[Any], float]]
    fit_nets: list[Network]
    explains: dict[str, Any]
    refused: str | None
    selection: Any = None  # latbench.model.selection.Selection (or an older fitting.Selection)


def select_model(prep: _Prepared, measured: dict[str, float], overhead: float, failed: list[str]) -> _Selected:
    """Step 3: the model (cross-validated on the fit networks only), the ablation ladder, and
    whether the LUT explains the fit networks at all."""
    networks, scope = prep.networks, prep.scope
    fit_nets = [n for n in networks if n.set == "fit" and n.key in measured]
    if len(fit_nets) < MIN_FIT:
        raise UserError(f"only {len(fit_nets)} fit networks could be measured (failed: {', '.join(failed[:5])})")
    fit_rows = {c: [n.rows[c] for n in fit_nets] for c in COLUMNS}
    fit_y = [measured[n.key] for n in fit_nets]
    # networks drawn from one search's α form one group: cross-validation never splits them
    groups = ["search" if n.from_search else n.key for n in fit_nets]
    model, selection = fit_model(fit_rows, fit_y, scope, overhead, groups=groups)
    ladder = mechanisms(fit_rows, fit_y, scope, overhead, model)

    def side_model(nets: list[Network]) -> Callable[[Any], float]:
        m, _ = fit_model({c: [n.rows[c] for n in nets] for c in COLUMNS}, [measured[n.key] for n in nets],
                         scope, overhead)
        return lambda net, m=m: m.predict_rows(net[m.column])

    uni = [n for n in networks if n.set == "fit-uniform" and n.key in measured]
    if len(uni) >= MIN_FIT:  # the design's ablation: the same model fitted on uniform networks
        ladder["model (uniform fit networks)"] = side_model(uni)
    uniform_part = [n for n in fit_nets if not n.from_search]
    if len(fit_nets) > len(uniform_part) >= MIN_FIT:  # search-drawn fit networks' ablation, no extra measurement
        ladder["model (uniform part of the fit set only)"] = side_model(uniform_part)
    if prep.peers:
        ladder.update(train_peers(fit_nets, fit_y, prep.peers))
    glob = fit_fixed(fit_rows["median_us"], fit_y, scope, overhead, "none", math.inf)
    ok, explains = lut_explains([raw_sum(r) for r in fit_rows["median_us"]], fit_y, glob.default_slope)
    return _Selected(model, ladder, fit_nets, explains, None if ok else explains["reason"], selection)


# ---- 4. judge ------------------------------------------------------------------------------------
def judge(prep: _Prepared, sel: _Selected, measured: dict[str, float],
          res: InterleavedResult, statistic: str) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
    """Step 4: every rung of the ladder on every set (``fit`` in sample, the others held out), each
    figure with its bootstrap interval (``ci``) and each rung's paired difference to the affine fit
    (``vs_affine``); per set, the measurement's agreement with itself and its noise ceiling; the
    model choice and what it changes for a search (:func:`statistics`)."""
    from latbench.model import metrics

    by_set = {s: [n for n in prep.networks if n.set == s and n.key in measured] for s in SETS}
    figs: dict[str, dict[str, dict[str, Any]]] = {}
    for s in SETS:
        nets = by_set[s]
        if len(nets) < 3:
            continue
        y = [measured[n.key] for n in nets]
        preds = {name: [f(n.rows) for n in nets] for name, f in sel.ladder.items()}
        preds = {name: p for name, p in preds.items() if all(math.isfinite(v) for v in p)}  # a peer may fail
        figs[s] = {name: figures(p, y) for name, p in preds.items()}
        for name, p in preds.items():
            figs[s][name]["ci"] = metrics.bootstrap_set_metrics(p, y)
        for name, d in metrics.paired_rung_differences(preds, y, against=("affine",)).items():
            if "vs affine" in d:
                figs[s][name]["vs_affine"] = d["vs affine"]
    halves = split_halves(res, statistic)
    for s, nets in by_set.items():
        if s in figs:
            figs[s]["measurement (split-half)"] = repeatability([halves[n.key] for n in nets if n.key in halves])
    return figs, statistics(prep, by_set, sel, res, statistic, halves)


def statistics(prep: _Prepared, by_set: dict[str, list[Network]], sel: _Selected, res: InterleavedResult,
               statistic: str, halves: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Per set, the ceiling any predictor could reach against this measurement (simulated from each
    network's per-round spread, :func:`latbench.model.metrics.noise_ceiling`, and the
    Spearman–Brown corrected split-half figure); the model choice
    (:class:`latbench.model.selection.Selection`); and, for the search, at how many edges the
    model's cheapest op differs from the raw LUT's and how many of those changes the bootstrap
    supports (:func:`latbench.model.selection.cheapest_op_changes`)."""
    from latbench.model import metrics

    out: dict[str, Any] = {"ceiling": {}}
    for s, nets in by_set.items():
        if len(nets) < 3:
            continue
        c: dict[str, Any] = {}
        try:
            c["simulated"] = metrics.noise_ceiling(
                [metrics.round_values(res.items[n.key].windows, statistic) for n in nets], statistic)
        except ValueError as exc:
            c["simulated"] = {"error": str(exc)}
        pairs = [halves[n.key] for n in nets if n.key in halves]
        try:
            c["spearman_brown"] = metrics.spearman_brown_ceiling(pairs)
        except ValueError as exc:
            c["spearman_brown"] = {"error": str(exc)}
        out["ceiling"][s] = c
    to_dict = getattr(sel.selection, "to_dict", None)
    if to_dict is not None:
        out["selection"] = to_dict()
    try:
        from latbench.model.selection import cheapest_op_changes, lut_position_rows
    except ImportError:
        return out
    setup, model = prep.setup, sel.model
    raw_rows = lut_position_rows(prep.lut, setup.space, setup.height, setup.width, setup.batch)
    model_rows = lut_position_rows(prep.lut, setup.space, setup.height, setup.width, setup.batch, model.column)
    ch = cheapest_op_changes(raw_rows, model, getattr(sel.selection, "bootstrap_models", ()),
                             model_rows_per_position=model_rows)
    out["cheapest_op_changes"] = ch
    return out


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

    fit_nets = sel.fit_nets
    return {
        "by": "latbench fit", "date": now_iso(), "device": device_info.get("name"), "host": device_info.get("host"),
        "space": json.loads(json.dumps(prep.setup.space.identity(), default=str)),
        "fit_networks": len(fit_nets), "fit_design": request.design, "seed": request.seed,
        "test_seed": prep.test_seed,
        "fit_fingerprints": [n.fingerprint for n in fit_nets],
        "fit_networks_from_search": sum(n.from_search for n in fit_nets),
        "test_search": [{"path": p, "sha256": file_sha256(p)} for p in request.test_search],
        "statistic": request.rounds.statistic,
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
    sel = select_model(prep, measured, overhead, failed)
    figs, stats = judge(prep, sel, measured, res, request.rounds.statistic)

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
    result = FitResult(request, prep.scope, model, prep.networks, measured, overhead, figs, measurement, device_info,
                       test_seed=prep.test_seed, plan=prep.plan, refused=sel.refused, explains=sel.explains,
                       notes=prep.notes, statistics=stats)
    n_other = sum(1 for n in prep.networks if n.set == "other_searches" and n.key in measured)
    if request.test_search and n_other < 3:
        result.notes.append(f"other_searches: {n_other} measured network(s), too few to judge as a set (give more "
                            "--test-search files or --test-search-draws); each is listed with its error")
    if request.save and sel.refused is None:
        save_model(request.lut_path, model)
        result.saved = True
    jpath = journal_path(request.lut_path)
    if jpath.exists():
        jpath.unlink()
    return result
