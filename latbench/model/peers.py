"""Learned latency predictors, the LUT model's peers in the fit report's ladder (issue 17 item 3).

Each peer is trained on the same fit networks as the LUT-based model and judged on the same
held-out sets. They see an architecture only as its LUT rows' ``(position, op)`` pairs — what
every search space gives (:meth:`latbench.space.SearchSpace.architecture_rows`) — never a LUT
value, so they show what a predictor learns from a few dozen measured networks alone:

- ``ridge``: ridge regression on a one-hot encoding (one column per (position, op) pair seen in
  the fit networks, plus one count per op: :class:`OneHot`), on the relative error (weights 1/y²),
  its penalty chosen by leave-one-out
  (scikit-learn ``RidgeCV``);
- ``boosted-trees``: gradient-boosted regression trees on the same encoding, predicting log latency;
- ``gcn``: a small graph convolutional network in the spirit of BRP-NAS (Dudziak et al. 2020):
  nodes are the architecture's rows (features: one-hot op and one-hot position), edges join
  consecutive rows (or the edges a space supplies, ``edges=``), three GCN layers with symmetric
  normalisation, mean pooling, a linear read-out of standardised log latency; full-batch Adam,
  seeded, a few seconds on a CPU for 40 networks.

Every peer has ``fit(archs, y) -> self`` and ``predict(archs) -> np.ndarray`` (µs, or whatever unit
``y`` had); :func:`fit_peers` trains them all. latbench never imports a space here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

ArchRows = Sequence[tuple[str, str]]  # an architecture's (position, op) rows
PEERS = ("ridge", "boosted-trees", "gcn")


def _check(archs: Sequence[ArchRows], y: Sequence[float] | None = None) -> np.ndarray | None:
    if len(archs) == 0:
        raise ValueError("no networks")
    if y is None:
        return None
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    if t.size != len(archs):
        raise ValueError(f"{t.size} latencies for {len(archs)} networks")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError("latencies must be finite and positive")
    return t


class OneHot:
    """One column per ``(position, op)`` pair seen when fitted (pairs never seen are ignored),
    plus, with ``op_counts``, one column per op counting its rows: the position-free summary a
    few dozen networks can pin where 500 position × op columns cannot."""

    def __init__(self, op_counts: bool = True) -> None:
        self.op_counts = op_counts
        self.columns: dict[tuple[str, str], int] = {}
        self.ops: dict[str, int] = {}

    def fit(self, archs: Sequence[ArchRows]) -> "OneHot":
        pairs = sorted({(str(p), str(o)) for rows in archs for p, o in rows})
        self.columns = {pr: j for j, pr in enumerate(pairs)}
        self.ops = {o: j for j, o in enumerate(sorted({o for _, o in pairs}))} if self.op_counts else {}
        return self

    def transform(self, archs: Sequence[ArchRows]) -> np.ndarray:
        C = len(self.columns)
        X = np.zeros((len(archs), C + len(self.ops)))
        for i, rows in enumerate(archs):
            for p, o in rows:
                j = self.columns.get((str(p), str(o)))
                if j is not None:
                    X[i, j] += 1.0
                k = self.ops.get(str(o))
                if k is not None:
                    X[i, C + k] += 1.0
        return X


@dataclass
class RidgePeer:
    """Ridge regression on the one-hot encoding, relative error, penalty by leave-one-out."""

    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-4, 3, 15))
    name: str = "ridge"
    _enc: OneHot = field(default_factory=OneHot, repr=False)
    _model: Any = field(default=None, repr=False)

    def fit(self, archs: Sequence[ArchRows], y: Sequence[float]) -> "RidgePeer":
        from sklearn.linear_model import RidgeCV

        t = _check(archs, y)
        X = self._enc.fit(archs).transform(archs)
        w = (t.mean() / t) ** 2  # relative error, weights of mean ≈ 1 so that the alphas keep their scale
        self._model = RidgeCV(alphas=self.alphas).fit(X, t, sample_weight=w)
        return self

    def predict(self, archs: Sequence[ArchRows]) -> np.ndarray:
        _check(archs)
        return np.asarray(self._model.predict(self._enc.transform(archs)), dtype=np.float64)


@dataclass
class BoostedTreesPeer:
    """Gradient-boosted trees on the one-hot encoding, predicting log latency."""

    n_estimators: int = 300
    learning_rate: float = 0.05
    max_depth: int = 3
    subsample: float = 0.8
    seed: int = 0
    name: str = "boosted-trees"
    _enc: OneHot = field(default_factory=OneHot, repr=False)
    _model: Any = field(default=None, repr=False)

    def fit(self, archs: Sequence[ArchRows], y: Sequence[float]) -> "BoostedTreesPeer":
        from sklearn.ensemble import GradientBoostingRegressor

        t = _check(archs, y)
        X = self._enc.fit(archs).transform(archs)
        self._model = GradientBoostingRegressor(n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                                                max_depth=self.max_depth, subsample=self.subsample,
                                                random_state=self.seed).fit(X, np.log(t))
        return self

    def predict(self, archs: Sequence[ArchRows]) -> np.ndarray:
        _check(archs)
        return np.exp(np.asarray(self._model.predict(self._enc.transform(archs)), dtype=np.float64))


Edges = Callable[[ArchRows], Sequence[tuple[int, int]]]


def chain_edges(rows: ArchRows) -> list[tuple[int, int]]:
    """Consecutive rows joined: the order in which a space lists an architecture's rows."""
    return [(i, i + 1) for i in range(len(rows) - 1)]


@dataclass
class GraphPeer:
    """A small GCN over the architecture's rows (see the module docstring)."""

    hidden: int = 32
    layers: int = 3
    epochs: int = 400
    lr: float = 0.01
    weight_decay: float = 1e-4
    seed: int = 0
    edges: Edges = chain_edges
    name: str = "gcn"
    _ops: dict[str, int] = field(default_factory=dict, repr=False)
    _pos: dict[str, int] = field(default_factory=dict, repr=False)
    _net: Any = field(default=None, repr=False)
    _mu: float = 0.0
    _sd: float = 1.0

    def _tensors(self, archs: Sequence[ArchRows]) -> tuple[Any, Any, Any]:
        import torch

        L = max(len(r) for r in archs)
        F = len(self._ops) + len(self._pos)
        x = torch.zeros(len(archs), L, F)
        adj = torch.zeros(len(archs), L, L)
        mask = torch.zeros(len(archs), L)
        for i, rows in enumerate(archs):
            n = len(rows)
            for j, (p, o) in enumerate(rows):
                if str(o) in self._ops:
                    x[i, j, self._ops[str(o)]] = 1.0
                if str(p) in self._pos:
                    x[i, j, len(self._ops) + self._pos[str(p)]] = 1.0
            for a, b in self.edges(rows):
                if 0 <= a < n and 0 <= b < n:
                    adj[i, a, b] = adj[i, b, a] = 1.0
            adj[i, range(n), range(n)] = 1.0
            mask[i, :n] = 1.0
        deg = adj.sum(-1).clamp(min=1.0)
        dinv = deg.rsqrt()
        adj = dinv[:, :, None] * adj * dinv[:, None, :]
        return x, adj, mask

    def _build(self, F: int) -> Any:
        import torch
        from torch import nn

        hidden, layers = self.hidden, self.layers

        class GCN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                dims = [F] + [hidden] * layers
                self.lin = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
                self.out = nn.Linear(hidden, 1)

            def forward(self, x: Any, adj: Any, mask: Any) -> Any:
                h = x
                for lin in self.lin:
                    h = torch.relu(adj @ lin(h))
                pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                return self.out(pooled).squeeze(-1)

        return GCN()

    def fit(self, archs: Sequence[ArchRows], y: Sequence[float]) -> "GraphPeer":
        import torch

        t = _check(archs, y)
        self._ops = {o: j for j, o in enumerate(sorted({str(o) for r in archs for _, o in r}))}
        self._pos = {p: j for j, p in enumerate(sorted({str(p) for r in archs for p, _ in r}))}
        logt = np.log(t)
        self._mu, self._sd = float(logt.mean()), float(logt.std()) or 1.0
        target = torch.tensor((logt - self._mu) / self._sd, dtype=torch.float32)
        x, adj, mask = self._tensors(archs)
        threads = torch.get_num_threads()
        # one thread: these tensors are tiny, and intra-op threads only wait on each other (15x
        # slower with 2 threads on a loaded 2-core machine); restored afterwards
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                net = self._build(x.shape[-1])
                opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
                for _ in range(self.epochs):
                    opt.zero_grad()
                    loss = torch.mean((net(x, adj, mask) - target) ** 2)
                    loss.backward()
                    opt.step()
        finally:
            torch.set_num_threads(threads)
        self._net = net.eval()
        return self

    def predict(self, archs: Sequence[ArchRows]) -> np.ndarray:
        import torch

        _check(archs)
        x, adj, mask = self._tensors(archs)
        with torch.no_grad():
            z = self._net(x, adj, mask).double().numpy()
        return np.exp(z * self._sd + self._mu)


def make_peer(name: str, seed: int = 0) -> Any:
    """A fresh, untrained peer by name (:data:`PEERS`)."""
    if name == "ridge":
        return RidgePeer()
    if name == "boosted-trees":
        return BoostedTreesPeer(seed=seed)
    if name == "gcn":
        return GraphPeer(seed=seed)
    raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")


def fit_peers(archs: Sequence[ArchRows], y: Sequence[float], names: Sequence[str] = PEERS,
              seed: int = 0) -> dict[str, Any]:
    """Every peer in ``names`` trained on ``(archs, y)``: ``{name: peer}``; each has
    ``predict(archs)``. For the fit report: ``{f"peer: {k}": p.predict(held_out) ...}``."""
    t = _check(archs, y)
    return {n: make_peer(n, seed).fit(archs, t) for n in names}


def peer_predictions(peers: dict[str, Any], archs: Sequence[ArchRows]) -> dict[str, np.ndarray]:
    """Every peer's predictions for ``archs`` (NaN where a peer's prediction is not finite)."""
    out = {}
    for n, p in peers.items():
        v = np.asarray(p.predict(archs), dtype=np.float64)
        out[n] = np.where(np.isfinite(v), v, math.nan)
    return out


# ---- as rungs of the fit report's ladder ----------------------------------------------------------
def rows_as_arch(rows: Sequence[tuple[str, str, float, bool]]) -> list[tuple[str, str]]:
    """An architecture's LUT rows ``(op, stage, value, analytic)`` (:func:`latbench.model.latency_model.lut_rows`,
    in the space's fixed row order) as ``(position, op)`` pairs, the position named by the row's
    index and stage. The values are dropped: a peer never sees the LUT."""
    return [(f"{i}:{stage}", str(op)) for i, (op, stage, _, _) in enumerate(rows)]


def peer_ladder(fit_rows: Sequence[Sequence[tuple[str, str, float, bool]]], y: Sequence[float],
                names: Sequence[str] = PEERS, seed: int = 0,
                column: str = "median_us") -> dict[str, Callable[[Any], float]]:
    """Peers trained on the fit networks, as ladder rungs: ``{"peer: ridge": f, ...}`` where
    ``f(net)`` takes a network's rows by LUT column (``{"median_us": rows, ...}``, what
    :func:`latbench.model.fitting.mechanisms`' predictors take) and returns µs. Usage in a fit::

        ladder.update(peer_ladder(fit_rows["median_us"], fit_y))
    """
    peers = fit_peers([rows_as_arch(r) for r in fit_rows], y, names, seed)

    def rung(p: Any) -> Callable[[Any], float]:
        return lambda net: float(p.predict([rows_as_arch(net[column])])[0])

    return {f"peer: {n}": rung(p) for n, p in peers.items()}
