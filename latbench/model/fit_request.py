"""What ``latbench fit`` is asked to do and what it will cost: :class:`FitRequest` (checked at
once, before anything is read or allocated), :class:`FitPlan` (printed before a fit starts, and
refused beyond :data:`MAX_NETWORKS` networks or :data:`MAX_MINUTES` estimated minutes unless
asked), the :class:`Network` every step works on, and the constants the steps share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from latbench.errors import UserError
from latbench.model.latency_model import ModelScope
from latbench.timing.interleave import RoundsConfig

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


#: the reference network's p10–p90 spread beyond which a fit stores no model (see
#: :func:`latbench.model.fit_judge.unsteady`): on this project's CPU, fits measured at a spread of
#: 0.42 and 0.48 over-predicted networks measured later by 4–7 %, one at 0.18 was within 2 %
#: (docs/latency_model.md, 2026-12-04) — a default from three runs, not a law
MAX_REFERENCE_SPREAD = 0.30
#: a spread estimated from fewer reference readings than this is not judged (a tiny fit)
MIN_REFERENCE_WINDOWS = 100


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
    space_options: Mapping[str, Any] = field(default_factory=dict)  # another configuration of the LUT's space (--space-opt)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    save: bool = True
    design: str = "span"             # how fit networks are chosen: span | uniform | d-optimal
    uniform_fit_networks: int = 0    # ablation: also measure this many uniform fit networks and report their model
    search_fit_networks: int = 0     # of the fit networks, how many are drawn from the search's α (--from-search)
    yes: bool = False                # accept a plan beyond the bounds
    peers: tuple[str, ...] = ()      # learned predictors trained on the same fit networks (latbench.model.peers)
    max_minutes: float | None = None  # the bound on the estimated minutes (default MAX_MINUTES)
    max_reference_spread: float = MAX_REFERENCE_SPREAD  # a steadier measurement than this, or no model stored

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
            **({"space_options": dict(self.space_options)} if self.space_options else {}),
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



# ---- the plan ----------------------------------------------------------------------------------
def make_plan(request: FitRequest, backend: str) -> FitPlan:
    return FitPlan(request.total_networks(), request.rounds.rounds, request.rounds.window_s,
                   PREPARE_S.get(backend, 1.0), backend)


def check_plan(plan: FitPlan, request: FitRequest) -> None:
    bound = request.max_minutes if request.max_minutes is not None else MAX_MINUTES
    if plan.minutes > bound and not request.yes:
        raise UserError(f"this fit would take about {plan.minutes:.0f} minutes (more than {bound:g}); ask for fewer "
                        "networks or rounds, or pass --max-minutes M (or --yes) if you mean it")
