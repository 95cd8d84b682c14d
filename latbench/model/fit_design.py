"""Which networks ``latbench fit`` measures (step 1 of :func:`latbench.model.fit.run_fit`): the
fit networks by design, then the held-out sets from a fresh seed, never a fit network."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from latbench.errors import UserError
from latbench.model.fit_request import FitRequest, Network
from latbench.model.networks import arch_fingerprint, draw_distinct, search_file_architectures, span_design


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


@dataclass
class _Sampler:
    """What :func:`sample_networks` needs from the LUT: the space, prices and op costs."""

    space: Any
    price: Callable[[dict[str, Any]], float]
    costs: dict[str, float]
    featurize: Callable[[dict[str, Any]], np.ndarray] | None = None


def reference_architecture(space: Any, seed: int) -> dict[str, Any]:
    """The reference network of a fit with fit seed ``seed`` (measured between the others all
    through the fit; never a fit or held-out network)."""
    return space.sample_architecture(random.Random(f"latbench-fit-reference-{seed}"))


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

    reference = reference_architecture(space, request.seed)
    taken.add(arch_fingerprint(space, reference))
    n_search_fit = request.search_fit_networks if request.from_search else 0
    n_main = request.fit_networks - n_search_fit
    kinds: list[str] | None = None
    if request.design == "d-optimal" and sampler.featurize is not None:
        pool = draw_distinct(space, max(25 * n_main, 500), request.seed, set(taken))
        picks = d_optimal(np.array([sampler.featurize(a) for a in pool]), n_main)
        fit = [pool[i] for i in picks]
        taken.update(arch_fingerprint(space, a) for a in fit)
    elif request.design == "span":
        kinds = []
        fit = span_design(space, n_main, request.seed, taken, sampler.price, sampler.costs, kinds=kinds)
    else:
        fit = draw_distinct(space, n_main, request.seed, taken)
    if len(fit) < n_main:
        add(fit, n_main, "fit")  # refused, with one line
    for a, k in zip(fit, kinds or [None] * len(fit)):  # a span draw's kind as its source
        add([a], None, "fit", source=k)
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
