"""The LGCNet search-space configuration: one typed value passed explicitly everywhere.

What the paper fixes (section III, IV-A) is the default; where it is silent we chose, and say so:

- ``reduction_cells=(1, 8)``: the paper only says cells 0 / 7 / 13 feed the fusion cell at
  strides 4 / 8 / 16 and that cell 0 is the only stride-4 cell (Table XI). A stride-4 stem plus
  reductions at cells 1 and 8 gives exactly that: cell 0 at stride 4, cells 1–7 at 8, 8–13 at 16.
- Stem: three 3×3 convs (stride 2, 1, 2) with ``2C, 2C, 4C`` channels (paper: "three conv layers").
- Cell widths: ``C`` channels per node at stride 4, doubled at each reduction (DARTS); a cell
  outputs the concatenation of its ``steps`` nodes.
- Head: 3×3 conv (``head_channels``) → BN → ReLU → 1×1 conv to the classes, then bilinear
  upsampling to the input size.
- ``fusion``: ``"dcfc"`` (the dense-connected fusion cell, default), or the paper's Table X
  ablations ``"aspp"``, ``"ppm"``, ``"none"`` applied to the last cell's output, or ``"mscell"``
  (Table X row d: CAS's searched multi-scale cell on the stride-8 and stride-16 inputs,
  :mod:`nas.fusion`).
- Cells after the last fusion input (Table XI rows such as ``fusion_inputs=(0, 7, 10)``) feed
  nothing, so they are not part of the network: with ``fusion`` ``"dcfc"`` or ``"mscell"``,
  ``num_cells`` is cut to ``max(fusion_inputs) + 1`` (and reduction cells beyond it dropped), so
  the supernet, α, the GCN-guided module, the LUT rows, the price and the parameter count all stop
  there (ours: the paper does not say what its Table XI networks did with those cells). A
  genotype written with the uncut cell list still reads (:meth:`nas.genotype.Genotype.from_dict`).
- Widths: ``init_channels`` (8, paper IV-A) is the width the supernet *searches* at;
  ``width_mult`` widens the *deployed* network (the one trained, timed and priced by the LUT):
  ``round(init_channels · width_mult)`` node channels at stride 4, stem and cells scaled alike,
  the fusion cell's 48 channels (paper) and the head fixed. The paper gives the search width and
  the searched network's size (Table VI d: 2.09 M parameters) but no widening rule;
  :data:`DEPLOY_WIDTH_MULT` is ours, the widening that gives its Fig. 9 network (as encoded in
  ``nas/genotypes/lgcnet_paper.json``) about 2.09 M parameters (``docs/search.md`` §9).
  The dataclass default stays 1.0 (the network as searched);
  :meth:`nas.space.LGCNetSpace.from_config` — how ``latbench build-lut`` makes the space —
  defaults to :data:`DEPLOY_WIDTH_MULT`, so a default LUT prices the deployed network and a
  search priced by it writes genotypes of that width. :meth:`SpaceConfig.search_config` is the
  supernet's configuration.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from latbench.errors import UserError

FUSION_MODES = ("dcfc", "aspp", "ppm", "none", "mscell")
#: Fusion modes that read ``fusion_inputs`` (the others read the last cell only).
INPUT_FUSION_MODES = ("dcfc", "mscell")
#: Widening of the deployed network relative to the search width (ours; see the module docstring).
DEPLOY_WIDTH_MULT = 4.5
INT_FIELDS = ("num_cells", "steps", "init_channels", "fusion_channels", "head_channels", "num_classes")
# Node channels at stride 4 beyond this cannot be built on any machine (and overflow shape arithmetic).
MAX_CHANNELS = 1 << 20


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _show(v: Any, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 1] + "…"


@dataclass(frozen=True)
class SpaceConfig:
    num_cells: int = 14
    steps: int = 2
    init_channels: int = 8
    reduction_cells: tuple[int, ...] = (1, 8)
    fusion: str = "dcfc"
    fusion_inputs: tuple[int, ...] = (0, 7, 13)
    fusion_channels: int = 48
    head_channels: int = 64
    num_classes: int = 19
    width_mult: float = 1.0

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "reduction_cells", tuple(int(c) for c in self.reduction_cells))
        object.__setattr__(self, "fusion_inputs", tuple(int(c) for c in self.fusion_inputs))
        if self.channels > MAX_CHANNELS:
            raise UserError(f"init_channels {self.init_channels} × width_mult {self.width_mult:g} gives "
                            f"{self.channels} channels; at most {MAX_CHANNELS} are supported")
        low = [f"{k} must be at least {lo}, not {getattr(self, k)}" for k, lo in
               (("num_cells", 1), ("steps", 1), ("init_channels", 1), ("num_classes", 2), ("fusion_channels", 1),
                ("head_channels", 1)) if getattr(self, k) < lo]
        if low:
            raise UserError(f"invalid space config: {'; '.join(low)}")
        if self.width_mult <= 0:
            raise UserError(f"width_mult must be positive, got {self.width_mult}")
        if any(not 0 <= c < self.num_cells for c in self.reduction_cells):
            raise UserError(f"reduction_cells {self.reduction_cells} outside 0..{self.num_cells - 1}")
        if self.fusion not in FUSION_MODES:
            raise UserError(f"unknown fusion mode {self.fusion!r}; choose one of {', '.join(FUSION_MODES)}")
        if self.fusion in INPUT_FUSION_MODES:
            if len(self.fusion_inputs) != 3:
                raise UserError(f"fusion_inputs needs three cells (strides 4, 8, 16), got {self.fusion_inputs}")
            if any(not 0 <= c < self.num_cells for c in self.fusion_inputs):
                raise UserError(f"fusion_inputs {self.fusion_inputs} outside 0..{self.num_cells - 1}")
            strides = [self.cell_stride(c) for c in self.fusion_inputs]
            if strides[1] != 2 * strides[0] or strides[2] != 2 * strides[1]:
                raise UserError(
                    f"fusion_inputs {self.fusion_inputs} sit at strides {strides}; the fusion cell's Up×2 "
                    f"edges need three cells whose strides double (e.g. 4, 8, 16)")
            self._cut_after_last_input()

    def _cut_after_last_input(self) -> None:
        """Cells after the last fusion input feed nothing: they are not part of the network
        (module docstring). Strides of the kept cells are unchanged (only later reductions go)."""
        used = max(self.fusion_inputs) + 1
        if used < self.num_cells:
            object.__setattr__(self, "num_cells", used)
            object.__setattr__(self, "reduction_cells", tuple(r for r in self.reduction_cells if r < used))

    def _check_types(self) -> None:
        """Every field of the type it must have (a genotype or LUT file is data from anywhere)."""
        for name in INT_FIELDS:
            v = getattr(self, name)
            if not _is_int(v):
                raise UserError(f"space option {name} must be an integer, not {_show(v)}")
        for name in ("reduction_cells", "fusion_inputs"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or not all(_is_int(c) for c in v):
                raise UserError(f"space option {name} must be a list of integers, not {_show(v)}")
        if not isinstance(self.fusion, str):
            raise UserError(f"space option fusion must be one of {', '.join(FUSION_MODES)}, not {_show(self.fusion)}")
        w = self.width_mult
        if not isinstance(w, numbers.Real) or isinstance(w, bool) or not math.isfinite(w):
            raise UserError(f"space option width_mult must be a finite number, not {_show(w)}")

    # --- derived geometry -------------------------------------------------------------------
    @property
    def channels(self) -> int:
        """Node channels at stride 4 after the width multiplier."""
        return max(1, int(round(self.init_channels * self.width_mult)))

    @property
    def stem_channels(self) -> tuple[int, int, int]:
        c = self.channels
        return (2 * c, 2 * c, 4 * c)

    def is_reduction(self, k: int) -> bool:
        return k in self.reduction_cells

    def cell_stride(self, k: int) -> int:
        """Output stride of cell ``k`` (the stem has stride 4)."""
        return 4 * 2 ** sum(1 for r in self.reduction_cells if r <= k)

    def cell_node_channels(self, k: int) -> int:
        return self.channels * 2 ** sum(1 for r in self.reduction_cells if r <= k)

    def cell_out_channels(self, k: int) -> int:
        return self.steps * self.cell_node_channels(k)

    def num_edges(self) -> int:
        return sum(2 + i for i in range(self.steps))

    # --- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["reduction_cells"] = list(self.reduction_cells)
        d["fusion_inputs"] = list(self.fusion_inputs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SpaceConfig":
        if d is not None and not isinstance(d, Mapping):
            raise UserError(f"an LGCNet space config must be a JSON object of options, not {_show(d)}")
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise UserError(f"unknown LGCNet space option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise UserError(f"invalid LGCNet space config {d}: {exc}") from None

    def replace(self, **changes: Any) -> "SpaceConfig":
        return dataclasses.replace(self, **changes)

    def search_config(self) -> "SpaceConfig":
        """The supernet's configuration: this one at the search width (``init_channels``, no widening)."""
        return self.replace(width_mult=1.0)
