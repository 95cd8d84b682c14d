"""Whole networks for ``latbench fit`` and ``latbench validate-lut``: what both share.

- :func:`resolve_setup` reads from a LUT's metadata how it was measured (space, backend,
  precision, batch, protocol, device) and refuses a different device;
- :func:`arch_fingerprint` names an architecture by the LUT rows it is priced by (two
  architectures with the same rows are the same network to a LUT and to its latency model), so
  held-out sets can be kept disjoint from fit networks, and a stored model can say which networks
  it was fitted on (``provenance["fit_fingerprints"]``);
- :func:`sample_architectures` draws distinct architectures uniformly or from a search's α
  (the space's optional ``sample_from_search``);
- :func:`span_design` draws fit networks that cover the whole latency range a search reaches,
  light (zero / skip / pooling) to heavy, generic over spaces: op-preference tilts towards the
  cheapest and the most expensive rows of the LUT, then one network per evenly spaced target of
  the LUT's predicted latency;
- :func:`search_file_architectures` reads a search's result for ``latbench fit --test-search``:
  its derived architecture and draws from its α;
- :func:`measure_networks` builds, prepares and measures networks in interleaved rounds;
- :func:`figures` scores predictions against measurements.

Nothing here imports ``nas``: a space is used only through :class:`latbench.space.SearchSpace`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from latbench.errors import LUTError, UserError
from latbench.space import format_resolution, load_space

REFERENCE = "reference"
PROBE = "probe"
Row = tuple[str, str, float, bool]  # (op, stage, value, analytic)


# ---- setup -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LutSetup:
    """What the LUT says about how it was measured, and what this run will do to match it."""

    space: Any
    height: int
    width: int
    batch: int
    backend: str
    precision: str
    protocol: Any  # latbench.timing.TimingConfig
    device: str

    @property
    def resolution(self) -> str:
        return format_resolution((self.height, self.width))


def resolve_setup(lut: Any, resolution: tuple[int, int] | None = None, device: str | None = None,
                  space_name: str | None = None, space_options: Mapping[str, Any] | None = None,
                  lut_path: str | None = None) -> LutSetup:
    """Read space, backend, precision, batch and protocol from ``lut``'s metadata; choose the
    resolution (the LUT's only one, or ``resolution``, which the LUT must hold) and the device (the
    LUT's device type unless ``device`` is given; a different device model is refused).

    ``space_name`` (e.g. ``"package.module:Class"``) loads a space that is not registered under the
    entry point; its identity must still equal the LUT's. ``space_options`` change the LUT's space
    configuration (e.g. ``{"fusion": "aspp"}``: the networks of another Table X head, whose model a
    LUT keeps beside the others): the LUT must then hold every row of that configuration's
    network, by op key (:func:`latbench.lut.coverage.check_prices`)."""
    from latbench.device import describe_device, device_identity, resolve_device
    from latbench.timing import TimingConfig

    meta = lut.meta
    missing = [k for k in ("space", "backend", "precision", "batch", "protocol", "device") if k not in meta]
    if missing:
        raise LUTError(f"LUT metadata lacks {', '.join(missing)}: cannot reproduce how it was measured")
    ident = meta["space"] or {}
    try:
        space = load_space(space_name or str(ident.get("name")), {**(ident.get("config") or {}), **dict(space_options or {})})
    except UserError as exc:
        raise UserError(f"cannot load the LUT's search space: {exc.message}") from None
    mine = json.loads(json.dumps(space.identity(), default=str))
    if space_options:  # another configuration of the LUT's space: its rows are checked below, by key
        mine = {**mine, "config": ident.get("config")}
    if mine != ident:
        raise LUTError(f"LUT was built for search space {ident.get('name')!r} v{ident.get('version')} "
                       f"{ident.get('config')}, the loaded space is {mine.get('name')!r} v{mine.get('version')} "
                       f"{mine.get('config')}")
    if not lut.resolutions():
        raise LUTError("LUT holds no rows")
    from latbench.lut.coverage import choose_resolution

    resolution = choose_resolution(lut, None, resolution)
    if space_options:
        from latbench.lut.coverage import check_prices

        check_prices(lut, lut_path or "LUT", space, resolution, int(meta["batch"]), user="fit")
    lut_dev = meta.get("device") or {}
    if device is None:
        device = "cpu" if lut_dev.get("type") == "cpu" else f"cuda:{int(lut_dev.get('index') or 0)}"
    dev = resolve_device(device)
    here = device_identity(describe_device(dev))
    there = device_identity(lut_dev)
    if here != there:
        raise UserError(f"LUT was measured on {there.get('name')!r} ({there.get('type')}) but this run would measure on "
                        f"{here.get('name')!r} ({here.get('type')}); validate a LUT on its own device "
                        "(use compare-lut to compare devices)")
    try:
        protocol = TimingConfig.from_dict(dict(meta["protocol"]))
    except (TypeError, ValueError) as exc:
        raise LUTError(f"LUT metadata has an unusable protocol: {exc}") from None
    return LutSetup(space=space, height=int(resolution[0]), width=int(resolution[1]), batch=int(meta["batch"]),
                    backend=str(meta["backend"]), precision=str(meta["precision"]), protocol=protocol, device=dev)


# ---- identity ----------------------------------------------------------------------------------
def rows_fingerprint(rows: Iterable[Sequence[str]]) -> str:
    """16 hex digits naming a list of ``(position, op)`` LUT rows (order-free)."""
    canon = sorted([str(p), str(o)] for p, o in rows)
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()[:16]


def arch_fingerprint(space: Any, arch: Mapping[str, Any]) -> str:
    """An architecture's fingerprint: :func:`rows_fingerprint` of ``space.architecture_rows(arch)``.
    Two architectures with the same LUT rows are one network to a LUT and its latency model, so a
    held-out network with a fit network's rows would be judged in sample."""
    return rows_fingerprint(space.architecture_rows(arch))


# ---- sampling ----------------------------------------------------------------------------------
def sample_architectures(space: Any, n: int, seed: int | str, from_search: str | Path | None = None,
                         rng: random.Random | None = None) -> list[dict[str, Any]]:
    """``n`` architectures drawn with ``random.Random(seed)`` (or ``rng``) — uniformly, or from the
    distribution a search left in ``from_search`` (through the space's optional
    ``sample_from_search``); distinct while the space allows (after 50·n draws duplicates are
    accepted)."""
    rng = rng if rng is not None else random.Random(seed)
    if from_search is not None:
        draw_from = getattr(space, "sample_from_search", None)
        if draw_from is None:
            raise UserError(f"search space {getattr(space, 'name', space)!r} cannot sample from a search's result")

        def draw(r: random.Random) -> dict[str, Any]:
            return draw_from(r, from_search)
    else:
        draw = space.sample_architecture
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    draws = 0
    while len(out) < n:
        arch = draw(rng)
        draws += 1
        key = json.dumps(arch, sort_keys=True)
        if key in seen and draws < 50 * n:
            continue
        seen.add(key)
        out.append(arch)
    return out


def draw_distinct(space: Any, n: int, seed: int | str, taken: set[str], from_search: str | Path | None = None,
                  rng: random.Random | None = None) -> list[dict[str, Any]]:
    """Up to ``n`` architectures whose fingerprints are not in ``taken`` (added to it), from
    ``4n + 8`` draws of :func:`sample_architectures`."""
    got: list[dict[str, Any]] = []
    if n <= 0:
        return got
    for arch in sample_architectures(space, 4 * n + 8, seed, from_search, rng=rng):
        k = arch_fingerprint(space, arch)
        if k not in taken:
            got.append(arch)
            taken.add(k)
            if len(got) == n:
                break
    return got


class TiltedRandom(random.Random):
    """A :class:`random.Random` whose ``choice`` prefers some elements: an element ``e`` with a
    weight in ``weights`` is drawn with probability ∝ ``weights[e]`` (others: weight 1). A space
    that draws its ops with ``rng.choice`` (the protocol's ``sample_architecture``) thereby draws
    op mixes tilted towards cheap or expensive ops without latbench knowing its layout; a space
    that draws otherwise gets uniform draws.

    ``sticky`` (0–1): the probability that a ``choice`` over the same candidates as the previous
    one repeats the previous answer. Searches derive networks whose neighbouring edges share an op
    — whole cells of one convolution, whole cells of ``zero`` / ``skip`` once β is large — while
    independent draws mix ops edge by edge; a sticky draw gives the fit networks of that kind,
    again without latbench knowing which edges form a cell (a space draws its edges in order)."""

    def __init__(self, seed: Any, weights: Mapping[str, float], sticky: float = 0.0) -> None:
        super().__init__(seed)
        self.weights = dict(weights)
        if not 0.0 <= sticky < 1.0:
            raise ValueError(f"sticky must lie in [0, 1), not {sticky}")
        self.sticky = float(sticky)
        self._last: tuple[tuple[Any, ...], Any] | None = None

    def choice(self, seq):  # type: ignore[override]
        seq = list(seq)
        if not seq:
            raise IndexError("cannot choose from an empty sequence")
        key = tuple(seq)
        if self.sticky and self._last is not None and self._last[0] == key and self.random() < self.sticky:
            return self._last[1]
        w = [float(self.weights.get(e, 1.0)) if isinstance(e, str) else 1.0 for e in seq]
        if not all(math.isfinite(v) and v > 0 for v in w):
            out = super().choice(seq)
        else:
            out = self.choices(seq, weights=w)[0]
        self._last = (key, out)
        return out


def op_costs(lut: Any, height: int, width: int, batch: int = 1) -> dict[str, float]:
    """Each op's median µs over the LUT's usable rows at this resolution (analytic rows: 0)."""
    df = lut.df
    sel = df[(df["height"] == height) & (df["width"] == width) & (df["batch"] == batch)]
    out: dict[str, float] = {}
    for op, g in sel.groupby("op"):
        ana = g["status"] == "analytic"
        ok = g[(g["status"] == "ok") | ana]
        if len(ok):
            vals = np.where(ok["status"] == "analytic", 0.0, ok["median_us"].astype(float))
            vals = vals[np.isfinite(vals)]
            if vals.size:
                out[str(op)] = float(np.median(vals))
    return out


#: tilts of :func:`span_design`: log-weight per unit of an op's standardised cost rank
TILTS = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
#: stickiness of :func:`span_design`'s two kinds of draws: independent edges, and runs of one op
#: (mean run 1 / (1 − 0.8) = 5 draws, one LGCNet cell) as searches derive them
STICKINESS = (0.0, 0.8)
SPAN_QUANTILES = (0.02, 0.98)  # the pool's predicted-latency range the targets span


def tilt_weights(costs: Mapping[str, float], tilt: float) -> dict[str, float]:
    """``exp(tilt · z)`` per op, ``z`` its cost rank scaled to [−1, 1] (cheapest −1)."""
    ops = sorted(costs, key=lambda o: (costs[o], o))
    if len(ops) < 2:
        return {o: 1.0 for o in ops}
    return {o: math.exp(tilt * (2.0 * i / (len(ops) - 1) - 1.0)) for i, o in enumerate(ops)}


def span_design(space: Any, n: int, seed: int | str, taken: set[str], price: Callable[[dict[str, Any]], float],
                costs: Mapping[str, float], pool_size: int | None = None,
                kinds: list[str] | None = None) -> list[dict[str, Any]]:
    """``n`` fit architectures spread evenly over the predicted-latency range a search can reach.

    A pool of draws at every tilt of :data:`TILTS` (:class:`TiltedRandom` with
    :func:`tilt_weights` of the LUT's op costs ``costs``: negative tilts fill networks with the
    cheapest ops — zero, skip, pooling — positive ones with the most expensive), each tilt drawn
    both with independent edges and with sticky runs of one op (:data:`STICKINESS`: networks made
    of whole cells of one op, as searches derive them), is priced with ``price`` (e.g. Σ LUT);
    ``n`` targets evenly spaced over the pool's :data:`SPAN_QUANTILES` range each take the unused
    pool network nearest to them, the targets alternating between the two kinds of draw. The fit
    then sees light and heavy networks alike, mixed and collapsed alike, so the model's constant
    and slopes are pinned by data rather than extrapolated where a latency-constrained search
    goes. Fingerprints in ``taken`` are never picked; the picks are added to it. A list passed as
    ``kinds`` receives each pick's kind of draw (:func:`draw_kind`), in order."""
    pool_size = pool_size or max(20 * n, 400)
    per_draw = max(1, pool_size // (len(TILTS) * len(STICKINESS)))
    pool: list[dict[str, Any]] = []
    keys: list[str] = []
    pool_kind: list[int] = []
    seen = set(taken)
    for s_i, sticky in enumerate(STICKINESS):
        for j, tilt in enumerate(TILTS):
            name = f"latbench-span-{seed}-{j}" if s_i == 0 else f"latbench-span-{seed}-{j}-sticky{sticky:g}"
            rng = TiltedRandom(name, tilt_weights(costs, tilt), sticky=sticky)
            for arch in sample_architectures(space, per_draw, None, rng=rng):
                k = arch_fingerprint(space, arch)
                if k not in seen:
                    seen.add(k)
                    pool.append(arch)
                    keys.append(k)
                    pool_kind.append(s_i)
    if not pool:
        return []
    lat = np.array([price(a) for a in pool], dtype=np.float64)
    kind = np.array(pool_kind)
    lo, hi = np.quantile(lat, SPAN_QUANTILES)
    targets = lo + (np.arange(n) + 0.5) / n * (hi - lo) if hi > lo else np.full(n, lo)
    free = np.ones(len(pool), dtype=bool)
    picks: list[int] = []
    for i, t in enumerate(targets):
        if not free.any():
            break
        d = np.abs(lat - t)
        d[~free] = np.inf
        want = (kind == i % len(STICKINESS)) & free
        if want.any():
            d[~want] = np.inf
        j = int(np.argmin(d))
        picks.append(j)
        free[j] = False
    taken.update(keys[i] for i in picks)
    if kinds is not None:
        kinds.extend(draw_kind(STICKINESS[k]) for k in kind[picks])
    return [pool[i] for i in picks]


def draw_kind(sticky: float) -> str:
    """How a span draw chose its ops, in words (recorded as a fit network's source)."""
    return "span draw, independent edges" if not sticky else f"span draw, runs of one op (sticky {sticky:g})"


# ---- networks from other searches --------------------------------------------------------------
@dataclass
class SearchFileArchs:
    path: str
    sha256: str
    derived: dict[str, Any] | None   # the file's own architecture, when it holds one the space reads
    draws: list[dict[str, Any]]      # draws from the file's α, when the space can draw from it
    notes: list[str]


def _derived_architecture(space: Any, path: str) -> tuple[dict[str, Any] | None, str | None]:
    """The architecture a search file names: the space's optional ``load_architecture(path)``, else
    the file's JSON object cut to the keys the space's own architectures have."""
    loader = getattr(space, "load_architecture", None)
    if loader is not None:
        try:
            return loader(path), None
        except UserError as exc:
            return None, exc.message
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"not a JSON architecture ({type(exc).__name__})"
    if isinstance(d, Mapping) and isinstance(d.get("arch"), Mapping):
        d = d["arch"]
    if not isinstance(d, Mapping):
        return None, "not a JSON object"
    want = set(space.sample_architecture(random.Random(0)))
    if not want or not want <= set(d):
        return None, "holds no architecture of this space"
    arch = {k: d[k] for k in sorted(want)}
    try:
        space.architecture_rows(arch)
    except UserError as exc:
        return None, exc.message
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"holds no valid architecture of this space ({type(exc).__name__}: {exc})"
    return json.loads(json.dumps(arch)), None


def search_file_architectures(space: Any, path: str, draws: int, seed: int | str, taken: set[str]) -> SearchFileArchs:
    """What ``--test-search FILE`` adds to the held-out set ``other_searches``: the file's derived
    architecture (a genotype) and ``draws`` distinct draws from its α (a file the space's
    ``sample_from_search`` reads), none of them with a fingerprint in ``taken`` (added to it). A
    file that gives neither is refused with one line."""
    from latbench.files import file_sha256

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--test-search {path}: no such file")
    notes: list[str] = []
    derived, why = _derived_architecture(space, path)
    if derived is not None:
        k = arch_fingerprint(space, derived)
        if k in taken:
            notes.append(f"{path}: its architecture is already a fit (or held-out) network; not judged twice")
            derived = None
        else:
            taken.add(k)
    got: list[dict[str, Any]] = []
    why_draw = None
    if draws > 0 and getattr(space, "sample_from_search", None) is not None:
        try:
            got = draw_distinct(space, draws, seed, taken, from_search=path)
        except UserError as exc:
            why_draw = exc.message
        except (KeyError, TypeError, ValueError) as exc:
            why_draw = f"the space cannot draw from it ({type(exc).__name__}: {exc})"
    elif draws > 0:
        why_draw = f"space {getattr(space, 'name', space)!r} cannot draw from a search's α"
    if derived is None and not got and why is not None:
        raise UserError(f"--test-search {path}: neither an architecture of this space ({why}) nor a search "
                        f"distribution it can draw from ({why_draw or 'no draws asked for'})")
    if draws > 0 and why_draw is not None and derived is not None:
        notes.append(f"{path}: its derived architecture only (no α to draw from: {why_draw})")
    return SearchFileArchs(str(path), file_sha256(path), derived, got, notes)


# ---- measuring ---------------------------------------------------------------------------------
def measure_networks(setup: Any, backend: Any, archs: dict[str, dict[str, Any]], rounds: Any, *,
                     reference: str | None = None, done: Sequence[Any] = (),
                     on_window: Callable[[Any], None] | None = None,
                     on_event: Callable[[str], None] | None = None,
                     on_progress: Callable[[str, int, int, str], None] | None = None) -> Any:
    """Build and prepare every architecture (and the per-call overhead probe, item ``probe``) with
    ``backend`` and ``setup``'s protocol, measure them in interleaved rounds
    (:func:`latbench.timing.interleave.measure_interleaved`), close them.
    ``on_progress(phase, done, total, what)`` with phase ``prepare`` then ``measure``."""
    import torch

    from latbench.timing.interleave import measure_interleaved
    from latbench.timing.loop import describe_error
    from latbench.timing.registry import close_prepared
    from latbench.timing.probe import probe_inputs, probe_module

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
        close_prepared(prepared)


# ---- judging -----------------------------------------------------------------------------------
def figures(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """MAPE, worst error, share within ±5 / ±10 %, Kendall τ, Spearman ρ (percentages in %)."""
    from latbench.model.metrics import kendall_tau, share_within, spearman_rho

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(p - m) / m
    tau, rho = kendall_tau(p, m), spearman_rho(p, m)
    return {"n": int(p.size), "mape": float(100 * rel.mean()), "worst": float(100 * rel.max()),
            "within_5": share_within(p, m, 0.05), "within_10": share_within(p, m, 0.10),
            "kendall_tau": None if math.isnan(tau) else tau, "spearman_rho": None if math.isnan(rho) else rho,
            "mean_signed": float(100 * ((p - m) / m).mean())}
