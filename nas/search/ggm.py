"""The GCN-guided module (GGM, paper III-C, eq. 5–7) and its ablations (Tables VI, VIII, IX).

For adjacent cells k−1 → k with logits θ (``p × q``: edges × candidate ops; see
:mod:`nas.search.arch_params` for why the GGM works on θ = log α):

- **edge-similarity graph** (``graph="edge"``, the paper's method)::

      A      = softmax_row( (θ_k w1) (θ_{k−1} w2)ᵀ )              # eq. 6, p × p, w1, w2: q × q
      X      = Φ1(θ_{k−1})                                         # FC q → d, p × d
      G(X,A) = A X W + X                                           # eq. 7, one layer, residual; W: d × d
      θ'_k   = θ_k + γ Φ2(G(X, A))                                 # eq. 5, Φ2: FC d → q

  Row i of A says how much edge i of cell k attends to each edge of cell k−1 ("given an edge in
  cell k, the similarity between this edge and all edges in cell k−1, normalised by softmax").
- **operation-identity graph** (``graph="operation"``, Table IX): every (edge, op) is a node.
  θ_k and θ_{k−1} are flattened to ``pq`` vectors a_k, a_{k−1};
  ``A = a_k a_{k−1}ᵀ`` (``pq × pq``), each node's feature is its scalar logit mapped by Φ1 (FC 1 → d),
  G as above, Φ2 (FC d → 1), reshaped back to ``p × q``. The paper writes A without
  normalisation; a raw rank-one product grows with pq and with |θ|, so by default we normalise
  its rows with the same softmax as eq. 6 (``op_graph_norm="softmax"``, our choice);
  ``op_graph_norm="none"`` gives the literal formula.
- **FC** (``mode="fc"``, Table VI c): θ'_k = θ_k + γ Φ2(Φ1(θ_{k−1})) — the same FC layers, no graph.
- **none** (``mode="none"``, Table VI a–b): θ' = θ.

Choices where the paper is silent (documented in ``docs/search.md``):

- one module (its own Φ1, Φ2, w1, w2, W) per pair of adjacent cells — eq. 7 indexes the GCN weight
  by cell (W^g_{k−1}) and IV-A says "one GCN between two adjacent cells";
- ``chain="raw"`` (default): θ'_k is computed from the raw θ_{k−1}, exactly as eq. 5 is written, so
  every cell is updated from its raw predecessor. ``chain="updated"`` uses the already updated
  θ'_{k−1} instead, propagating information along the whole chain of cells;
- cell 0 has no predecessor: θ'_0 = θ_0;
- Φ1 / Φ2 are bias-free ``nn.Linear`` layers by default (``bias=True`` adds biases), as are w1, w2, W,
  so θ' − θ is a (graph-weighted) linear function of θ_{k−1}: the previous cell's per-edge state is
  what is delivered. With biases, Φ2(G(Φ1(θ≈0))) is dominated by one bias-driven vector shared by
  every edge of a cell, and Adam moves the 64-wide layers much faster than θ, so short searches
  ended with one op on all edges of most cells. No non-linearity anywhere (the paper names none);
  PyTorch's default initialisation except Φ2, which starts at zero so that the
  module starts as the identity (θ' = θ) instead of adding one random op preference to every
  edge of a cell (Φ2 still gets a gradient at once, and through it Φ1, W, w1, w2);
- with ``cells="shared"`` the module is not allowed (it would make every cell different and so
  undo the sharing the ablation is about): the search command refuses the combination.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from latbench.errors import UserError

MODES = ("none", "fc", "gcn")
GRAPHS = ("edge", "operation")
CHAINS = ("raw", "updated")
OP_GRAPH_NORMS = ("softmax", "none")


@dataclass(frozen=True)
class GGMConfig:
    mode: str = "gcn"
    graph: str = "edge"
    dim: int = 64
    gamma: float = 0.5
    chain: str = "raw"
    op_graph_norm: str = "softmax"
    bias: bool = False

    def __post_init__(self) -> None:
        for name, value, allowed in (("mode", self.mode, MODES), ("graph", self.graph, GRAPHS),
                                     ("chain", self.chain, CHAINS),
                                     ("op_graph_norm", self.op_graph_norm, OP_GRAPH_NORMS)):
            if value not in allowed:
                raise UserError(f"unknown GGM {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.dim < 1:
            raise UserError(f"GCN dimension d must be >= 1, got {self.dim}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GGMConfig":
        return cls(**dict(d))


class CellLink(nn.Module):
    """θ'_k from (θ_k, θ_{k−1}) for one pair of adjacent cells (see the module docstring)."""

    def __init__(self, p: int, q: int, config: GGMConfig):
        super().__init__()
        self.config = config
        self.p, self.q = p, q
        d = config.dim
        feat = 1 if (config.mode == "gcn" and config.graph == "operation") else q
        self.phi1 = nn.Linear(feat, d, bias=config.bias)   # Φ1: to the embedding space
        self.phi2 = nn.Linear(d, feat, bias=config.bias)   # Φ2: back to the source space
        # Zero-initialised Φ2 (ours): the module starts as the identity θ' = θ and learns from
        # there. With PyTorch's default init, Φ2(G(Φ1(θ≈0))) is a random vector identical for
        # every edge, which would add the same random op preference to every edge of a cell.
        nn.init.zeros_(self.phi2.weight)
        if self.phi2.bias is not None:
            nn.init.zeros_(self.phi2.bias)
        if config.mode == "gcn":
            self.gcn_w = nn.Linear(d, d, bias=False)       # W (eq. 7): X W = gcn_w(X)
            if config.graph == "edge":
                self.w1 = nn.Linear(q, q, bias=False)      # φ1(θ_k) = θ_k w1
                self.w2 = nn.Linear(q, q, bias=False)      # φ2(θ_{k−1}) = θ_{k−1} w2

    def adjacency(self, cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """A: ``p × p`` (edge graph) or ``pq × pq`` (operation graph)."""
        if self.config.graph == "edge":
            return torch.softmax(self.w1(cur) @ self.w2(prev).transpose(-1, -2), dim=-1)
        a = cur.reshape(-1, 1) @ prev.reshape(1, -1)
        return torch.softmax(a, dim=-1) if self.config.op_graph_norm == "softmax" else a

    def forward(self, cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        gamma = self.config.gamma
        if self.config.mode == "fc":
            return cur + gamma * self.phi2(self.phi1(prev))
        if self.config.graph == "edge":
            x = self.phi1(prev)                                   # p × d
            g = self.adjacency(cur, prev) @ self.gcn_w(x) + x     # eq. 7
            return cur + gamma * self.phi2(g)                     # eq. 5
        x = self.phi1(prev.reshape(-1, 1))                        # pq × d
        g = self.adjacency(cur, prev) @ self.gcn_w(x) + x
        return cur + gamma * self.phi2(g).reshape(cur.shape)


class GGM(nn.Module):
    """Applies a :class:`CellLink` between every pair of adjacent cells of a ``[K, p, q]`` θ."""

    def __init__(self, num_cells: int, p: int, q: int, config: GGMConfig | None = None):
        super().__init__()
        self.config = config or GGMConfig()
        links = [CellLink(p, q, self.config) for _ in range(num_cells - 1)] if self.config.mode != "none" else []
        self.links = nn.ModuleList(links)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """θ' ``[K, p, q]`` from θ ``[K, p, q]``."""
        if self.config.mode == "none" or theta.shape[0] < 2:
            return theta
        out = [theta[0]]
        for k in range(1, theta.shape[0]):
            prev = theta[k - 1] if self.config.chain == "raw" else out[k - 1]
            out.append(self.links[k - 1](theta[k], prev))
        return torch.stack(out)
