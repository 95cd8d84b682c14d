"""Architecture parameters of the LGCNet supernet and their Gumbel-softmax relaxation (eq. 4).

**Storage: logits.** The paper writes Z = softmax((log α + G)/λ) with α > 0. We store
θ = log α directly — an unconstrained real tensor — so the relaxation is
``Z = softmax((θ + G) / λ)`` and no ``log`` of a possibly non-positive value is ever taken.
The paper's α is ``exp(θ)`` (up to a per-edge constant, which the softmax ignores). Every
consumer of "α" in this package (the GCN-guided module, the derivation, the heat maps, the
entropies in the log) works on θ or on ``softmax(θ)``; the docstrings say which.

**Shapes.** A cell has ``p = config.num_edges()`` edges (5 for N = 2 nodes) and ``q = 8``
candidates (``CELL_PRIMITIVES`` order = column order):

- ``cells="independent"`` (paper default, Table VI b–d): one ``[K, p, q]`` parameter, a
  ``p × q`` matrix per cell (14 × 5 × 8 for the paper's space);
- ``cells="shared"`` (Table VI a): one ``[2, p, q]`` parameter, a normal and a reduction matrix;
  every normal cell uses row 0, every reduction cell row 1.

The fusion cell (``fusion="dcfc"``) has its own parameters, never shared and never passed
through the GCN-guided module (the paper applies the GGM between cells only): one ``[9, 10]``
matrix for the edges choosing among the 10 ops of Table III (``FUSION_PRIMITIVES`` order) and one
``[4, 2]`` matrix for the Up×2 edges (``UP_PRIMITIVES`` order); :meth:`ArchParams.fusion_logits`
returns them as 13 vectors in fusion-edge order. The MSCell (``fusion="mscell"``, Table X row d)
is laid out the same way from its own edges (:func:`nas.fusion.fusion_edges`): ``[9, 10]`` for
its node edges and ``[1, 2]`` for its Up×2 edge, 10 vectors in its edge order (e0 first).

**Initialisation** (paper silent): ``init_std · N(0, 1)`` with ``init_std = 1e-3`` as DARTS, from
an explicit generator, so every edge starts (almost) uniform and runs are reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from latbench.errors import UserError
from nas.config import SpaceConfig
from nas.ops import CELL_PRIMITIVES

CELL_MODES = ("independent", "shared")


@dataclass(frozen=True)
class ArchConfig:
    """How the architecture parameters are laid out (see the module docstring)."""

    cells: str = "independent"
    init_std: float = 1e-3

    def __post_init__(self) -> None:
        if self.cells not in CELL_MODES:
            raise UserError(f"unknown cell mode {self.cells!r}; choose {' or '.join(CELL_MODES)}")
        if self.init_std < 0:
            raise UserError(f"init_std must be >= 0, got {self.init_std}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchConfig":
        return cls(**dict(d))


def fusion_layout(config: SpaceConfig) -> list[tuple[str, int]]:
    """For every fusion edge in order: ``("op", row)`` in the op matrix or ``("up", row)``."""
    from nas.fusion import fusion_edges

    rows = {"op": 0, "up": 0}
    out = []
    for _, kind, _ in fusion_edges(config.fusion):
        out.append((kind, rows[kind]))
        rows[kind] += 1
    return out


class ArchParams(nn.Module):
    """The logits θ = log α of every searchable edge (see the module docstring)."""

    def __init__(self, config: SpaceConfig, arch: ArchConfig | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        from nas.ops import FUSION_PRIMITIVES, UP_PRIMITIVES

        self.config = config
        self.arch = arch or ArchConfig()
        p, q = config.num_edges(), len(CELL_PRIMITIVES)
        n = config.num_cells if self.arch.cells == "independent" else 2
        std = self.arch.init_std

        def init(*shape: int) -> nn.Parameter:
            return nn.Parameter(std * torch.randn(*shape, generator=generator))

        self.cell_alpha = init(n, p, q)
        layout = fusion_layout(config)
        n_op = sum(1 for k, _ in layout if k == "op")
        n_up = sum(1 for k, _ in layout if k == "up")
        self.fusion_op = init(n_op, len(FUSION_PRIMITIVES)) if n_op else None
        self.fusion_up = init(n_up, len(UP_PRIMITIVES)) if n_up else None
        self._layout = layout
        index = [k if self.arch.cells == "independent" else int(config.is_reduction(k))
                 for k in range(config.num_cells)]
        self.register_buffer("_cell_index", torch.tensor(index, dtype=torch.long), persistent=False)

    @property
    def num_edges(self) -> int:
        return self.cell_alpha.shape[1]

    def cell_logits(self) -> torch.Tensor:
        """θ of every cell, ``[K, p, q]`` (shared mode: rows repeated per cell type, same storage
        gradient-wise)."""
        return self.cell_alpha.index_select(0, self._cell_index)

    def fusion_logits(self) -> list[torch.Tensor]:
        """θ of every fusion edge, in fusion-edge order (10 or 2 entries each); [] without a searched
        fusion cell (DCFC or MSCell)."""
        out = []
        for kind, row in self._layout:
            src = self.fusion_op if kind == "op" else self.fusion_up
            assert src is not None
            out.append(src[row])
        return out


def sample_gumbel(shape: Sequence[int], generator: torch.Generator, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """G = −log(−log U), U ~ Uniform(0, 1), drawn on the CPU from ``generator`` (so a run is
    reproducible and resumable whatever the device) and moved to ``device``."""
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float64)
    u = u.clamp_(min=torch.finfo(torch.float64).tiny, max=1.0 - 1e-12)
    return (-torch.log(-torch.log(u))).to(device=device, dtype=dtype)


def gumbel_softmax(logits: torch.Tensor, gumbel: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Z = softmax((θ + G)/λ) over the last dimension (eq. 4 with θ = log α); ``gumbel=None``
    gives the noiseless softmax(θ/λ)."""
    x = logits if gumbel is None else logits + gumbel
    return torch.softmax(x / tau, dim=-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(θ) over the last dimension."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)
