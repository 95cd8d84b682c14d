"""The search-space protocol: how a search space plugs into latbench.

A search space tells latbench four things and nothing more:

1. which operations exist at which *positions* for a given input resolution
   (:meth:`SearchSpace.enumerate` -> :class:`Entry` rows, each holding an :class:`OpSpec`);
2. how to build one :class:`OpSpec` into a ready-to-time ``nn.Module``
   (:meth:`SearchSpace.build_op`);
3. how to sample a whole architecture and say which LUT rows it uses
   (:meth:`SearchSpace.sample_architecture`, :meth:`SearchSpace.architecture_rows`);
4. how to build that whole architecture (:meth:`SearchSpace.build_architecture`).

Spaces register under the entry-point group ``latbench.spaces``; ``load_space("lgcnet", {...})``
finds them. latbench never imports a space's package by name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from latbench.errors import UserError

ENTRY_POINT_GROUP = "latbench.spaces"

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpSpec:
    """Everything needed to build and time one operation: what it is and the exact shapes it sees.

    ``op`` is the registry name of the operation (or of a fixed part such as ``stem``),
    ``inputs`` the full input shapes (batch included), ``params`` sorted ``(name, value)`` pairs
    (``cout``, ``stride``, ``dilation``, output size ...). Two positions whose OpSpecs are equal
    run the same computation and share one timing.
    """

    op: str
    inputs: tuple[Shape, ...]
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(tuple(int(d) for d in s) for s in self.inputs))
        object.__setattr__(self, "params", tuple(sorted((str(k), v) for k, v in self.params)))

    def param(self, name: str, default: Any = None) -> Any:
        for k, v in self.params:
            if k == name:
                return v
        return default

    @property
    def key(self) -> str:
        """A stable, descriptive key, e.g. ``sep_conv_3x3|n=1|cin=16|h=96|w=192|cout=16|d=1|s=1``."""
        parts = [self.op]
        if len(self.inputs) == 1 and len(self.inputs[0]) == 4:
            n, c, h, w = self.inputs[0]
            parts += [f"n={n}", f"cin={c}", f"h={h}", f"w={w}"]
        else:
            parts.append("in=" + "+".join("x".join(str(d) for d in s) for s in self.inputs))
        parts += [f"{k}={_fmt(v)}" for k, v in self.params]
        return "|".join(parts)


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "x".join(str(x) for x in v)
    return str(v)


@dataclass(frozen=True)
class Entry:
    """One LUT row before timing: an op at a position, for one network input resolution.

    ``kind`` is ``"candidate"`` for a searchable choice and ``"fixed"`` for a part every
    architecture has. ``stage`` groups positions for reports (e.g. ``s4``, ``s8``, ``s16``,
    ``fusion``, ``fixed``). ``analytic`` marks an entry whose latency is known without timing
    (e.g. a ``zero`` op that the deployed network removes): it is stored as 0 µs.
    """

    position: str
    op: str
    spec: OpSpec
    kind: str = "candidate"
    stage: str = ""
    analytic: bool = False

    @property
    def key(self) -> str:
        return self.spec.key


@dataclass(frozen=True)
class Position:
    """A place in the network that holds one choice (or one fixed part) and its candidates."""

    name: str
    candidates: tuple[str, ...]
    kind: str = "candidate"
    stage: str = ""


@runtime_checkable
class SearchSpace(Protocol):
    """What latbench needs from a search space. See the module docstring."""

    name: str
    version: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SearchSpace":
        """The space built from ``config``, a dict of overrides of its defaults (``{}``: the
        defaults); what :func:`load_space` calls on the registered class. A key the space does
        not know is a :class:`~latbench.errors.UserError`."""

    def identity(self) -> dict[str, Any]:
        """JSON-able ``{"name", "version", "config"}`` stored in every LUT's metadata."""

    def positions(self) -> list[Position]:
        """Every position (candidate choices and fixed parts), in a stable order."""

    def enumerate(self, height: int, width: int, batch: int = 1) -> list[Entry]:
        """Every (position, op) pair at this input resolution, fixed parts included."""

    def build_op(self, spec: OpSpec) -> Any:
        """An ``nn.Module`` in inference form (eval mode, BN folded) computing ``spec``.

        Its ``forward`` takes ``len(spec.inputs)`` tensors of the given shapes.
        """

    def sample_architecture(self, rng: random.Random) -> dict[str, Any]:
        """A JSON-able architecture drawn uniformly from the space."""

    def architecture_rows(self, arch: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The (position, op) LUT rows whose sum predicts ``arch``'s latency (fixed parts included)."""

    def build_architecture(self, arch: Mapping[str, Any]) -> Any:
        """The whole network for ``arch`` in inference form; forward takes one (N, 3, H, W) tensor."""

    # Optional, used when the space has them:
    # - ``sample_from_search(rng, path) -> arch`` draws an architecture from the distribution a
    #   search left in ``path`` (a space-specific file, e.g. a genotype with α's probabilities):
    #   ``latbench validate-lut`` / ``fit --from-search``;
    # - ``load_architecture(path) -> arch`` reads the architecture a search derived (else the
    #   file's JSON object, cut to the keys of the space's own architectures);
    # - ``network_entries(height, width, batch) -> list[Entry]`` the rows pricing the configured
    #   network needs, where the LUT holds the rows of several variants (else :meth:`enumerate`);
    # - ``folded_positions(arch, weights_are_constants=True) -> set[str]`` the positions of ``arch``
    #   a constant-folding backend (:data:`latbench.timing.registry.FOLDS_CONSTANTS`) never runs:
    #   their input is a constant (downstream of removed edges) or their result reaches no output;
    #   with ``weights_are_constants=False`` (Inductor) an op with weights runs on a constant input
    #   and its output is no constant. Prices on such a backend leave them out
    #   (:meth:`latbench.model.predictor.Predictor.network_rows`);
    # - ``constant_input_positions(arch) -> set[str]`` the positions of ``arch`` whose input is a
    #   constant: a backend that runs them (eager) is priced there from the LUT's ``const_us``,
    #   the op timed on a constant input, where the LUT has it.


def available_spaces() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_space(name: str, config: Mapping[str, Any] | None = None) -> SearchSpace:
    """Find the space registered as ``name`` and build it from ``config`` (a dict of overrides)
    with its :meth:`SearchSpace.from_config`.

    ``name`` may also be ``"package.module:Class"`` (an importable class with ``from_config``),
    for spaces that are not installed under the entry point, e.g. a test's toy space.
    """
    if ":" in name:
        import importlib

        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"cannot load search space {name!r}: {exc}") from None
        return factory.from_config(dict(config or {}))
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not eps:
        avail = ", ".join(available_spaces()) or "none (is the package installed with pip install -e .?)"
        raise UserError(f"unknown search space {name!r}; registered spaces: {avail}")
    factory = eps[0].load()
    return factory.from_config(dict(config or {}))


def parse_resolution(text: str) -> tuple[int, int]:
    """``"769x1537"`` -> ``(769, 1537)``; a clear :class:`UserError` for anything else."""
    t = str(text).lower().replace("×", "x").strip()
    parts = t.split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"malformed resolution {text!r}: expected HxW, e.g. 769x1537")
    h, w = (int(p) for p in parts)
    if h < 8 or w < 8:
        raise UserError(f"resolution {text!r} is too small: height and width must be at least 8")
    return h, w


def format_resolution(hw: Sequence[int]) -> str:
    return f"{int(hw[0])}x{int(hw[1])}"
