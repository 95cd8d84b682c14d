"""Architectures as data: the discrete choice at every edge, saved as ``genotype.json``.

A genotype file is JSON, never code (DESIGN §8)::

    {"format": "lgcnet-genotype", "space_version": 1,
     "config": {...SpaceConfig...},
     "cells":  [["skip_connect", "zero", "sep_conv_3x3", "conv_3x3", "max_pool_3x3"], ...],  # 14 × 5
     "fusion": ["conv_3x3", "sep_conv_3x3", "interp", ...],                                     # 13
     "meta":   {...search configuration, LUT identity, expected latency...}}

Loading validates everything against the registry and the configuration and says what is wrong.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from latbench.errors import UserError
from nas.config import SpaceConfig
from nas.ops import CELL_PRIMITIVES, FUSION_PRIMITIVES, UP_PRIMITIVES

SPACE_VERSION = 1
FORMAT = "lgcnet-genotype"


@dataclass(frozen=True)
class Architecture:
    """One op per cell edge (``cells[k][e]``) and per fusion edge (``fusion[e]``)."""

    cells: tuple[tuple[str, ...], ...]
    fusion: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", tuple(tuple(c) for c in self.cells))
        object.__setattr__(self, "fusion", tuple(self.fusion))

    def to_dict(self) -> dict[str, Any]:
        return {"cells": [list(c) for c in self.cells], "fusion": list(self.fusion)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Architecture":
        return cls(cells=d.get("cells", ()), fusion=d.get("fusion", ()))

    def validate(self, config: SpaceConfig) -> None:
        from nas.fusion import edge_candidates

        if len(self.cells) != config.num_cells:
            raise UserError(f"architecture has {len(self.cells)} cells, the space has {config.num_cells}")
        for k, cell in enumerate(self.cells):
            if len(cell) != config.num_edges():
                raise UserError(f"cell {k} has {len(cell)} edges, the space has {config.num_edges()}")
            for e, op in enumerate(cell):
                if op not in CELL_PRIMITIVES:
                    raise UserError(f"cell {k} edge {e}: unknown op {op!r}; cell ops are {', '.join(CELL_PRIMITIVES)}")
        if config.fusion == "dcfc":
            cands = edge_candidates()
            if len(self.fusion) != len(cands):
                raise UserError(f"fusion cell has {len(self.fusion)} edges, the space has {len(cands)}")
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
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise UserError(f"{source} is not an LGCNet genotype (missing \"format\": \"{FORMAT}\")")
        if d.get("space_version") != SPACE_VERSION:
            raise UserError(f"{source} was written for search-space version {d.get('space_version')}; "
                            f"this nas understands version {SPACE_VERSION}")
        config = SpaceConfig.from_dict(d.get("config", {}))
        arch = Architecture.from_dict(d)
        arch.validate(config)
        return cls(arch=arch, config=config, meta=dict(d.get("meta", {})))

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Genotype":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise UserError(f"genotype file {p} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read genotype {p}: {exc}") from None
        return cls.from_dict(d, source=str(p))


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON to ``path`` through a temporary file and ``os.replace``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def supernet_candidates(config: SpaceConfig) -> tuple[list[list[tuple[str, ...]]], list[tuple[str, ...]]]:
    """Every candidate at every edge: what the supernet holds."""
    from nas.fusion import edge_candidates

    cells = [[CELL_PRIMITIVES] * config.num_edges() for _ in range(config.num_cells)]
    fusion = edge_candidates() if config.fusion == "dcfc" else []
    return cells, fusion


def arch_candidates(arch: Architecture) -> tuple[list[list[tuple[str, ...]]], list[tuple[str, ...]]]:
    return [[(op,) for op in cell] for cell in arch.cells], [(op,) for op in arch.fusion]


__all__ = ["Architecture", "Genotype", "SPACE_VERSION", "supernet_candidates", "arch_candidates",
           "write_json_atomic", "CELL_PRIMITIVES", "FUSION_PRIMITIVES", "UP_PRIMITIVES"]
