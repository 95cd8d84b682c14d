"""LGCNet as a latbench search space (entry point ``latbench.spaces: lgcnet``).

Positions and their LUT rows:

- ``cell{k}.e{j}`` — edge j of cell k, candidates = the 8 cell ops (Table II);
- ``fusion.e{j}`` — edge j of the fusion cell, the 10 ops of Table III or, on Up×2 edges,
  ``deconv`` / ``interp``;
- fixed parts every architecture has: ``fixed.stem``, ``cell{k}.pre0``, ``cell{k}.pre1``
  (input preprocessing), ``cell{k}.merge`` (node sums and concatenation), ``fusion.reduce{i}``
  (1×1 reductions to 48 channels), ``fusion.merge`` (concatenations, sums, final upsample-sum)
  — ``fixed.head`` and ``fixed.upsample``. The Table X ablations replace the fusion cell's
  rows: ``fixed.aspp`` / ``fixed.ppm`` and the head on their 48-channel output
  (``fixed.head_pyramid``), or with no fusion at all the head on the last cell
  (``fixed.head_direct``); both upsample from the last cell's stride (``fixed.upsample_deep``).
  Table X row d, the MSCell (:mod:`nas.fusion`), has ``mscell.reduce0/1`` (1×1 reductions of the
  stride-8 and stride-16 inputs), its searchable edges ``mscell.e{j}`` (e0: ``deconv`` /
  ``interp``; e1…e9: the 10 ops of Table III), ``mscell.merge`` (node sums and concatenation) and
  the head on its stride-8 output (``fixed.head_mscell``, ``fixed.upsample_s8``).
  The positions differ because the shapes do: one (position, op) names one op shape.
- Only the cells up to the last fusion input have rows (Table XI: ``SpaceConfig`` cuts
  ``num_cells`` there), so a row such as ``fusion_inputs [0, 7, 10]`` prices 11 cells.

:meth:`LGCNetSpace.network_entries` lists the rows of the configured network.
:meth:`LGCNetSpace.enumerate` — what ``latbench build-lut`` times — adds the rows of every other
fusion mode of Table X (``SpaceConfig.fusion``), so one LUT prices every ablation of Tables X and
XI: the cells feeding the fusion cell (Table XI) change no row as long as they stay in their
stages (strides 4 / 8 / 16), and a LUT prices a configuration when it holds every row that
configuration's network has, with the identical op key (:func:`nas.search.latency.check_lut`).
A LUT built before these extra rows existed gets them by rerunning the same ``build-lut``
command on the same file (the build resumes and times only what is missing).

``LGCNetSpace.from_config`` — how ``latbench build-lut`` makes the space — builds the deployed
width (:data:`nas.config.DEPLOY_WIDTH_MULT`) unless ``width_mult`` is given: a LUT prices the
network that will ship, not the narrower supernet the search trains.

The sum over an architecture's rows (:meth:`LGCNetSpace.architecture_rows`) therefore stands for
the whole network. ``zero`` rows are analytic (0 µs): the deployed network removes those edges.
So are identity ``skip_connect`` rows (stride 1, ``cin == cout``): the edge hands its input on and
nothing runs (timing one would time only the timer: an empty CUDA graph, a session run).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

import torch
from torch import nn

from latbench.errors import UserError
from latbench.space import Entry, OpSpec, Position
from nas.blocks import ASPP, PPM, Head, Upsample, make_preprocess, make_stem
from nas.cell import CellMerge, cell_edges, cell_input_channels, cell_input_strides
from nas.config import DEPLOY_WIDTH_MULT, FUSION_MODES, SpaceConfig
from nas.fold import fold_batchnorm
from nas.fusion import (EDGES as FUSION_EDGES, MSCELL_NODE_EDGES, MSCELL_STEPS, NODES as FUSION_NODES, FusionMerge,
                        edge_candidates, fusion_edge_candidates, fusion_edges, mscell_edge_candidates, node_channels)
from nas.genotype import SPACE_VERSION, Architecture
from nas.network import inference_network
from nas.ops import CELL_PRIMITIVES, DILATION, UP_OPS, ZERO, build_op, out_size

NAME = "lgcnet"


@dataclass(frozen=True)
class _Shapes:
    """Feature-map sizes of one network input resolution."""

    n: int
    h: int
    w: int
    config: SpaceConfig

    def at(self, stride: int) -> tuple[int, int]:
        h, w = self.h, self.w
        s = 1
        while s < stride:
            h, w, s = out_size(h, 2), out_size(w, 2), s * 2
        return h, w


class _Bound(nn.Module):
    """Binds extra forward arguments (e.g. the Up×2 target size) so every built op takes tensors only."""

    def __init__(self, module: nn.Module, *args: Any):
        super().__init__()
        self.module, self.args = module, args

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        return self.module(*x, *self.args)


def _is_identity_skip(op: str, inputs, params: Mapping[str, Any]) -> bool:
    """``skip_connect`` at stride 1 with ``cin == cout`` is ``nas.ops.Identity``: a pass-through
    that runs nothing on any device, so its LUT rows are analytic 0 µs (never timed)."""
    if op != "skip_connect":
        return False
    cin = int(inputs[0][1])
    return int(params.get("stride", 1)) == 1 and int(params.get("cout", cin)) == cin


def head_positions(cfg: SpaceConfig) -> tuple[str, str]:
    """LUT positions of the head and the final upsampling: they read the fusion cell's stride-4
    output, the ASPP / PPM output or the last cell's output (other shapes, so other positions)."""
    if cfg.fusion == "dcfc":
        return "fixed.head", "fixed.upsample"
    if cfg.fusion == "mscell":
        return "fixed.head_mscell", "fixed.upsample_s8"
    return ("fixed.head_pyramid" if cfg.fusion in ("aspp", "ppm") else "fixed.head_direct"), "fixed.upsample_deep"


class _Rows:
    """The entries of one network, appended in order (see :func:`_network_entries`)."""

    def __init__(self, cfg: SpaceConfig, height: int, width: int, batch: int):
        self.cfg, self.n, self.sh = cfg, batch, _Shapes(batch, height, width, cfg)
        self.entries: list[Entry] = []

    def add(self, position: str, op: str, inputs, kind: str, stage: str, **params: Any) -> None:
        self.entries.append(Entry(position, op, OpSpec(op, tuple(inputs), tuple(params.items())), kind, stage,
                                  analytic=op == ZERO or _is_identity_skip(op, inputs, params)))


def _cell_rows(r: _Rows, k: int) -> None:
    """Cell ``k``'s preprocessing, candidate edges (Table II) and merge."""
    cfg, n, sh = r.cfg, r.n, r.sh
    stage = f"s{cfg.cell_stride(k)}"
    c = cfg.cell_node_channels(k)
    c_pp, c_p = cell_input_channels(cfg, k)
    s_pp, s_p = cell_input_strides(cfg, k)
    h_pp, w_pp = sh.at(s_pp)
    h_p, w_p = sh.at(s_p)
    pre0 = "factorized_reduce" if s_pp != s_p else "preprocess_1x1"
    r.add(f"cell{k}.pre0", pre0, [(n, c_pp, h_pp, w_pp)], "fixed", stage, cout=c, stride=2 if s_pp != s_p else 1)
    r.add(f"cell{k}.pre1", "preprocess_1x1", [(n, c_p, h_p, w_p)], "fixed", stage, cout=c, stride=1)
    red = cfg.is_reduction(k)
    h_o, w_o = sh.at(cfg.cell_stride(k))
    for j, (src, _) in enumerate(cell_edges(cfg.steps)):
        stride = 2 if red and src < 2 else 1
        hi, wi = (h_p, w_p) if src < 2 else (h_o, w_o)
        for op in CELL_PRIMITIVES:
            r.add(f"cell{k}.e{j}", op, [(n, c, hi, wi)], "candidate", stage,
                  cout=c, stride=stride, dilation=DILATION[op])
    r.add(f"cell{k}.merge", "cell_merge", [(n, c, h_o, w_o)] * cfg.num_edges(), "fixed", stage, steps=cfg.steps)


def _fusion_cell_rows(r: _Rows) -> tuple[int, int, int, int]:
    """The dense-connected fusion cell's rows; returns the head's input shape (stride 4)."""
    cfg, n, f = r.cfg, r.n, r.cfg.fusion_channels
    lv = [r.sh.at(cfg.cell_stride(c)) for c in cfg.fusion_inputs]
    for i, cell in enumerate(cfg.fusion_inputs):
        r.add(f"fusion.reduce{i}", "fusion_reduce", [(n, cfg.cell_out_channels(cell), *lv[i])], "fixed", "fusion", cout=f)
    ch = node_channels(f)
    merge_in = []
    for j, ((src, dst, kind), cands) in enumerate(zip(FUSION_EDGES, edge_candidates())):
        hs, ws = lv[FUSION_NODES[src][1]]
        hd, wd = lv[FUSION_NODES[dst][1]]
        cout = ch[src] if kind == "up" else f
        for op in cands:
            params = dict(cout=cout, stride=1, dilation=DILATION[op])
            if kind == "up":
                params["out"] = (hd, wd)
            r.add(f"fusion.e{j}", op, [(n, ch[src], hs, ws)], "candidate", "fusion", **params)
        merge_in.append((n, cout, hd, wd))
    r.add("fusion.merge", "fusion_merge", merge_in, "fixed", "fusion")
    return (n, f, *lv[0])


def _mscell_rows(r: _Rows) -> tuple[int, int, int, int]:
    """The MSCell's rows (Table X d, :mod:`nas.fusion`); returns the head's input shape (stride 8)."""
    cfg, n, f = r.cfg, r.n, r.cfg.fusion_channels
    (h8, w8), (h16, w16) = (r.sh.at(cfg.cell_stride(c)) for c in cfg.fusion_inputs[1:])
    for i, (cell, (hi, wi)) in enumerate(zip(cfg.fusion_inputs[1:], ((h8, w8), (h16, w16)))):
        r.add(f"mscell.reduce{i}", "fusion_reduce", [(n, cfg.cell_out_channels(cell), hi, wi)], "fixed", "mscell", cout=f)
    cands = mscell_edge_candidates()
    for op in cands[0]:
        r.add("mscell.e0", op, [(n, f, h16, w16)], "candidate", "mscell",
              cout=f, stride=1, dilation=DILATION[op], out=(h8, w8))
    for j, ops in enumerate(cands[1:], start=1):
        for op in ops:
            r.add(f"mscell.e{j}", op, [(n, f, h8, w8)], "candidate", "mscell", cout=f, stride=1, dilation=DILATION[op])
    r.add("mscell.merge", "cell_merge", [(n, f, h8, w8)] * len(MSCELL_NODE_EDGES), "fixed", "mscell", steps=MSCELL_STEPS)
    return (n, MSCELL_STEPS * f, h8, w8)


def _network_entries(cfg: SpaceConfig, height: int, width: int, batch: int) -> list[Entry]:
    """The LUT rows of the network ``cfg`` describes (see :meth:`LGCNetSpace.network_entries`)."""
    r = _Rows(cfg, height, width, batch)
    n = batch
    r.add("fixed.stem", "stem", [(n, 3, height, width)], "fixed", "fixed", channels=cfg.stem_channels)
    for k in range(cfg.num_cells):
        _cell_rows(r, k)
    if cfg.fusion == "dcfc":
        head_in = _fusion_cell_rows(r)
    elif cfg.fusion == "mscell":
        head_in = _mscell_rows(r)
    else:
        last = cfg.num_cells - 1
        h_l, w_l = r.sh.at(cfg.cell_stride(last))
        head_in = (n, cfg.cell_out_channels(last), h_l, w_l)
        if cfg.fusion in ("aspp", "ppm"):
            r.add(f"fixed.{cfg.fusion}", cfg.fusion, [head_in], "fixed", "fixed", cout=cfg.fusion_channels)
            head_in = (n, cfg.fusion_channels, h_l, w_l)
    head, up = head_positions(cfg)
    r.add(head, "head", [head_in], "fixed", "fixed", mid=cfg.head_channels, cout=cfg.num_classes)
    r.add(up, "upsample", [(n, cfg.num_classes, head_in[2], head_in[3])], "fixed", "fixed", out=(height, width))
    return r.entries


class LGCNetSpace:
    """The LGCNet search space for latbench (see the module docstring)."""

    name = NAME
    version = SPACE_VERSION

    def __init__(self, config: SpaceConfig | None = None):
        self.config = config or SpaceConfig(width_mult=DEPLOY_WIDTH_MULT)

    @classmethod
    def from_config(cls, d: Mapping[str, Any] | None) -> "LGCNetSpace":
        """The space of configuration ``d``; ``width_mult`` defaults to the deployed width."""
        if d is not None and not isinstance(d, Mapping):
            return cls(SpaceConfig.from_dict(d))  # refused there, with the message
        d = dict(d or {})
        d.setdefault("width_mult", DEPLOY_WIDTH_MULT)
        return cls(SpaceConfig.from_dict(d))

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "config": self.config.to_dict()}

    # --- positions ------------------------------------------------------------------------------
    def fusion_positions(self) -> list[str]:
        """Positions of the searchable fusion edges (the fusion cell's or the MSCell's), α's order."""
        return [pos for pos, _, _ in fusion_edges(self.config.fusion)]

    def positions(self) -> list[Position]:
        cfg = self.config
        out: list[Position] = [Position("fixed.stem", ("stem",), "fixed", "fixed")]
        for k in range(cfg.num_cells):
            stage = f"s{cfg.cell_stride(k)}"
            s_pp, s_p = cell_input_strides(cfg, k)
            out.append(Position(f"cell{k}.pre0", ("factorized_reduce" if s_pp != s_p else "preprocess_1x1",), "fixed", stage))
            out.append(Position(f"cell{k}.pre1", ("preprocess_1x1",), "fixed", stage))
            out += [Position(f"cell{k}.e{j}", CELL_PRIMITIVES, "candidate", stage) for j in range(cfg.num_edges())]
            out.append(Position(f"cell{k}.merge", ("cell_merge",), "fixed", stage))
        if cfg.fusion == "dcfc":
            out += [Position(f"fusion.reduce{i}", ("fusion_reduce",), "fixed", "fusion") for i in range(3)]
            out += [Position(f"fusion.e{j}", cands, "candidate", "fusion") for j, cands in enumerate(edge_candidates())]
            out.append(Position("fusion.merge", ("fusion_merge",), "fixed", "fusion"))
        elif cfg.fusion == "mscell":
            out += [Position(f"mscell.reduce{i}", ("fusion_reduce",), "fixed", "mscell") for i in range(2)]
            out += [Position(pos, cands, "candidate", "mscell") for pos, _, cands in fusion_edges("mscell")]
            out.append(Position("mscell.merge", ("cell_merge",), "fixed", "mscell"))
        elif cfg.fusion in ("aspp", "ppm"):
            out.append(Position(f"fixed.{cfg.fusion}", (cfg.fusion,), "fixed", "fixed"))
        head, up = head_positions(cfg)
        out.append(Position(head, ("head",), "fixed", "fixed"))
        out.append(Position(up, ("upsample",), "fixed", "fixed"))
        return out

    # --- enumeration ----------------------------------------------------------------------------
    def enumerate(self, height: int, width: int, batch: int = 1) -> list[Entry]:
        """Every row a LUT of this space holds: this network's (:meth:`network_entries`), then
        those only another fusion mode of Table X has (same cells, other fixed parts)."""
        out = self.network_entries(height, width, batch)
        seen = {(e.position, e.op) for e in out}
        for mode in FUSION_MODES:
            if mode == self.config.fusion:
                continue
            try:
                other = self.config.replace(fusion=mode)
            except UserError:  # e.g. too few cells for the fusion cell's three strides
                continue
            for e in _network_entries(other, height, width, batch):
                if (e.position, e.op) not in seen:
                    seen.add((e.position, e.op))
                    out.append(e)
        return out

    def network_entries(self, height: int, width: int, batch: int = 1) -> list[Entry]:
        """The rows of this configuration's network: what pricing it needs."""
        return _network_entries(self.config, height, width, batch)

    # --- building -------------------------------------------------------------------------------
    def build_op(self, spec: OpSpec) -> nn.Module:
        """The module for ``spec`` in inference form (eval mode, BatchNorm folded)."""
        m = self._build(spec)
        m.eval()
        return fold_batchnorm(m)

    def _build(self, spec: OpSpec) -> nn.Module:
        op = spec.op
        cin = spec.inputs[0][1]
        cout = spec.param("cout")
        if op in UP_OPS:
            return _Bound(build_op(op, cin, cout), tuple(spec.param("out")))
        if op == "stem":
            return make_stem(tuple(spec.param("channels")))
        if op == "preprocess_1x1":
            return make_preprocess(cin, cout, reduce=False)
        if op == "factorized_reduce":
            return make_preprocess(cin, cout, reduce=True)
        if op == "cell_merge":
            return CellMerge(int(spec.param("steps")))
        if op == "fusion_reduce":
            return make_preprocess(cin, cout, reduce=False)
        if op == "fusion_merge":
            return FusionMerge()
        if op == "aspp":
            return ASPP(cin, cout)
        if op == "ppm":
            return PPM(cin, cout)
        if op == "head":
            return Head(cin, int(spec.param("mid")), cout)
        if op == "upsample":
            return Upsample(tuple(spec.param("out")))
        return build_op(op, cin, cout, int(spec.param("stride", 1)))

    # --- architectures --------------------------------------------------------------------------
    def sample_architecture(self, rng: random.Random) -> dict[str, Any]:
        cfg = self.config
        cells = [[rng.choice(CELL_PRIMITIVES) for _ in range(cfg.num_edges())] for _ in range(cfg.num_cells)]
        fusion = [rng.choice(c) for c in fusion_edge_candidates(cfg.fusion)]
        return Architecture(cells, fusion).to_dict()

    def sample_from_search(self, rng: random.Random, path: str) -> dict[str, Any]:
        """An architecture drawn per edge from the α probabilities recorded in a search's
        ``genotype.json`` (``meta.probabilities``: softmax of the GCN-updated logits)."""
        from latbench.errors import UserError
        from nas.genotype import Genotype

        geno = Genotype.load(path)
        if geno.config != self.config:
            raise UserError(f"{path} was searched in another configuration of the space than the LUT's")
        probs = geno.meta.get("probabilities") or {}
        cells, fusion = probs.get("cells"), probs.get("fusion", [])
        cands = fusion_edge_candidates(self.config.fusion)
        if (not isinstance(cells, list) or len(cells) != self.config.num_cells
                or any(len(c) != self.config.num_edges() or any(len(e) != len(CELL_PRIMITIVES) for e in c) for c in cells)
                or len(fusion) != len(cands) or any(len(p) != len(c) for p, c in zip(fusion, cands))):
            raise UserError(f"{path} records no usable α probabilities (meta.probabilities); "
                            "it must be a genotype written by `nas search`")
        arch = Architecture([[rng.choices(CELL_PRIMITIVES, weights=e)[0] for e in c] for c in cells],
                            [rng.choices(c, weights=p)[0] for p, c in zip(fusion, cands)])
        return arch.to_dict()

    def architecture_rows(self, arch: Mapping[str, Any] | Architecture) -> list[tuple[str, str]]:
        a = arch if isinstance(arch, Architecture) else Architecture.from_dict(arch)
        a.validate(self.config)
        chosen = {f"cell{k}.e{j}": op for k, cell in enumerate(a.cells) for j, op in enumerate(cell)}
        chosen.update({pos: op for pos, op in zip(self.fusion_positions(), a.fusion)})
        rows = []
        for p in self.positions():
            rows.append((p.name, chosen[p.name] if p.kind == "candidate" else p.candidates[0]))
        return rows

    def folded_positions(self, arch: Mapping[str, Any] | Architecture, weights_are_constants: bool = True) -> set[str]:
        """Positions of ``arch`` a constant-folding backend never runs (:mod:`nas.constant_rows`);
        ``weights_are_constants=False``: a backend that folds only ops without weights (Inductor)."""
        from nas.constant_rows import folded_positions

        a = arch if isinstance(arch, Architecture) else Architecture.from_dict(arch)
        a.validate(self.config)
        names = [p.name for p in self.positions()]
        if weights_are_constants:
            return folded_positions(self.config, a, names)
        rows = dict(self.architecture_rows(a))
        return folded_positions(self.config, a, names,
                                weighted=lambda pos: self._weighted_rows.get((pos, rows[pos]), True))  # unknown: it runs

    def constant_input_positions(self, arch: Mapping[str, Any] | Architecture) -> set[str]:
        """Positions of ``arch`` whose input is a constant (:mod:`nas.constant_rows`): an eager
        backend runs them, at the cost of the op on a constant input."""
        from nas.constant_rows import constant_input_positions

        a = arch if isinstance(arch, Architecture) else Architecture.from_dict(arch)
        a.validate(self.config)
        return constant_input_positions(self.config, a, [p.name for p in self.positions()])

    @cached_property
    def _weighted_rows(self) -> dict[tuple[str, str], bool]:
        """(position, op) → does its module apply weights (has a parameter)? Built once, at a small
        resolution (whether an op has weights does not depend on it)."""
        return {(e.position, e.op): any(True for _ in self._build(e.spec).parameters()) for e in self.enumerate(33, 65)}

    def build_architecture(self, arch: Mapping[str, Any] | Architecture) -> nn.Module:
        a = arch if isinstance(arch, Architecture) else Architecture.from_dict(arch)
        return inference_network(self.config, a)
