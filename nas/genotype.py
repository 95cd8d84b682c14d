"""Architectures as data: the discrete choice at every edge, saved as ``genotype.json``.

A genotype file is JSON, never code (DESIGN §8)::

    {"format": "lgcnet-genotype", "space_version": 1,
     "config": {...SpaceConfig...},
     "cells":  [["skip_connect", "zero", "sep_conv_3x3", "conv_3x3", "max_pool_3x3"], ...],  # 14 × 5
     "fusion": ["conv_3x3", "sep_conv_3x3", "interp", ...],                                     # 13
     "meta":   {...search configuration, LUT identity, expected latency...}}

:meth:`Genotype.from_dict` is the one validating loader: every genotype read — a file
(:meth:`Genotype.load`: ``nas fps``, ``nas train``, ``nas eval --arch``, ``validate-lut
--from-search``) or the copy inside a training checkpoint — goes through it. It checks the JSON
types of every field (``cells`` a list of lists of op names, ``fusion`` a list of op names,
``config`` an object whose fields have their types, ``meta`` an object) and then the ops against
the registry and the configuration, and says what is wrong, naming the file, in one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from latbench.errors import UserError
from latbench.files import atomic_write_text
from nas.config import SpaceConfig
from nas.ops import CELL_PRIMITIVES, FUSION_PRIMITIVES, UP_PRIMITIVES

SPACE_VERSION = 1
FORMAT = "lgcnet-genotype"


@dataclass(frozen=True)
class Architecture:
    """One op per cell edge (``cells[k][e]``) and per searchable fusion edge (``fusion[e]``: the
    fusion cell's 13 or the MSCell's 10, :func:`nas.fusion.fusion_edges`)."""

    cells: tuple[tuple[str, ...], ...]
    fusion: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", tuple(tuple(c) for c in self.cells))
        object.__setattr__(self, "fusion", tuple(self.fusion))

    def to_dict(self) -> dict[str, Any]:
        return {"cells": [list(c) for c in self.cells], "fusion": list(self.fusion)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Architecture":
        """From ``{"cells": [[op, ...], ...], "fusion": [op, ...]}``; :class:`UserError` when a
        field has the wrong JSON type (ops are checked against a configuration by :meth:`validate`)."""
        if not isinstance(d, Mapping):
            raise UserError(f"an architecture must be a JSON object, not {_kind(d)}")
        cells = d.get("cells")
        if not isinstance(cells, list) or not all(isinstance(c, list) for c in cells):
            raise UserError(f"'cells' must be a list of cells, each a list of op names, not {_show(cells)}")
        for k, cell in enumerate(cells):
            for e, op in enumerate(cell):
                if not isinstance(op, str):
                    raise UserError(f"cell {k} edge {e}: an op name must be a string, not {_show(op)}")
        fusion = d.get("fusion", [])
        if not isinstance(fusion, list) or not all(isinstance(op, str) for op in fusion):
            raise UserError(f"'fusion' must be a list of op names, not {_show(fusion)}")
        return cls(cells=cells, fusion=fusion)

    def validate(self, config: SpaceConfig) -> None:
        from nas.fusion import fusion_edge_candidates

        if len(self.cells) != config.num_cells:
            raise UserError(f"architecture has {len(self.cells)} cells, the space has {config.num_cells}")
        for k, cell in enumerate(self.cells):
            if len(cell) != config.num_edges():
                raise UserError(f"cell {k} has {len(cell)} edges, the space has {config.num_edges()}")
            for e, op in enumerate(cell):
                if op not in CELL_PRIMITIVES:
                    raise UserError(f"cell {k} edge {e}: unknown op {op!r}; cell ops are {', '.join(CELL_PRIMITIVES)}")
        cands = fusion_edge_candidates(config.fusion)
        if cands:
            what = "MSCell" if config.fusion == "mscell" else "fusion cell"
            if len(self.fusion) != len(cands):
                raise UserError(f"{what} has {len(self.fusion)} edges, the space has {len(cands)}")
            for e, (op, allowed) in enumerate(zip(self.fusion, cands)):
                if op not in allowed:
                    raise UserError(f"fusion edge {e}: op {op!r} not allowed here; choose one of {', '.join(allowed)}")
        elif self.fusion:
            raise UserError(f"fusion mode {config.fusion!r} has no searchable edges, but the architecture lists {len(self.fusion)}")


@dataclass
class Genotype:
    arch: Architecture
    config: SpaceConfig
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "space_version": SPACE_VERSION, "config": self.config.to_dict(),
                **self.arch.to_dict(), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "genotype") -> "Genotype":
        """The one validating genotype loader (see the module docstring); ``source`` names the
        file (or checkpoint) in every error."""
        if not isinstance(d, Mapping):
            raise UserError(f"{source} is not an LGCNet genotype (a JSON object), but {_kind(d)}")
        if d.get("format") != FORMAT:
            raise UserError(f"{source} is not an LGCNet genotype (missing \"format\": \"{FORMAT}\")")
        version = d.get("space_version")
        if not (isinstance(version, int) and not isinstance(version, bool) and version == SPACE_VERSION):
            raise UserError(f"{source} was written for search-space version {_show(d.get('space_version'))}; "
                            f"this nas understands version {SPACE_VERSION}")
        raw_config = d.get("config", {})
        if not isinstance(raw_config, Mapping):
            raise UserError(f"{source}: 'config' must be a JSON object of space options, not {_show(raw_config)}")
        meta = d.get("meta", {})
        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise UserError(f"{source}: 'meta' must be a JSON object, not {_show(meta)}")
        try:
            config = SpaceConfig.from_dict(raw_config)
            arch = _cut_cells(Architecture.from_dict(d), config, raw_config)
            arch.validate(config)
        except UserError as exc:
            raise UserError(f"{source}: {exc.message}") from None
        return cls(arch=arch, config=config, meta=dict(meta))

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Genotype":
        p = Path(path)
        if p.is_dir():
            raise UserError(f"genotype {p} is a directory; give the genotype.json file")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"genotype file {p} does not exist") from None
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot read genotype {p}: {first}") from None
        return cls.from_dict(d, source=str(p))


def _cut_cells(arch: Architecture, config: SpaceConfig, raw_config: Mapping[str, Any]) -> Architecture:
    """A genotype written before cells after the last fusion input were cut (Table XI rows such as
    ``fusion_inputs [0, 7, 10]`` with 14 cells) lists those cells too; they feed nothing, so they
    are dropped (only when its own configuration asked for more cells than the network has)."""
    asked = raw_config.get("num_cells", SpaceConfig.num_cells)
    if isinstance(asked, int) and asked > config.num_cells and len(arch.cells) == asked:
        return Architecture(arch.cells[:config.num_cells], arch.fusion)
    return arch


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _show(v: Any, n: int = 40) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict, str, int, float, bool, type(None))) else repr(v)
    return s if len(s) <= n else s[: n - 1] + "…"


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON to ``path`` atomically (:func:`latbench.files.atomic_write_text`); strict JSON:
    a NaN or infinity is a bug, never written."""
    p = Path(path)
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as exc:  # e.g. a NaN carried in from a damaged input file
        raise UserError(f"cannot write {p}: it would hold a value JSON cannot represent ({exc})") from None
    atomic_write_text(p, text)
    return p


def supernet_candidates(config: SpaceConfig) -> tuple[list[list[tuple[str, ...]]], list[tuple[str, ...]]]:
    """Every candidate at every edge: what the supernet holds."""
    from nas.fusion import fusion_edge_candidates

    cells = [[CELL_PRIMITIVES] * config.num_edges() for _ in range(config.num_cells)]
    fusion = fusion_edge_candidates(config.fusion)
    return cells, fusion


def arch_candidates(arch: Architecture) -> tuple[list[list[tuple[str, ...]]], list[tuple[str, ...]]]:
    return [[(op,) for op in cell] for cell in arch.cells], [(op,) for op in arch.fusion]


__all__ = ["Architecture", "Genotype", "SPACE_VERSION", "supernet_candidates", "arch_candidates",
           "write_json_atomic", "CELL_PRIMITIVES", "FUSION_PRIMITIVES", "UP_PRIMITIVES"]
