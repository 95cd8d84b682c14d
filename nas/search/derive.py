"""From architecture parameters to a discrete architecture (and a ``genotype.json``).

**Derivation rule.** Every edge keeps exactly one op: the arg-max of its GCN-updated logits θ'
(θ' = GGM(θ) during search; θ' = θ with ``--between none`` and for the fusion cell). Arg-max of
θ' is arg-max of softmax(θ') — the most likely op under the Gumbel-softmax distribution at any
temperature. Ties go to the op listed first (``CELL_PRIMITIVES`` / ``FUSION_PRIMITIVES`` order).

- ``zero`` is a candidate like any other (Table II) and may win: the edge is removed from the
  derived network (it contributes nothing and costs 0 µs in the LUT).
- A node keeps **every** incoming edge whose op is not ``zero`` — the paper's eq. 2 sums over all
  of a node's inputs, there is no DARTS-style "top-2 inputs per node".
- When **all** incoming edges of a node chose ``zero``, the node is kept as an all-zero map
  (:func:`nas.edge.node_sum`): the cell's concatenation keeps its channel count, so every later
  shape is unchanged, and the derived network computes what the supernet computes with those
  one-hot weights. Nothing is re-selected. :func:`empty_nodes` lists such nodes; the genotype's
  ``meta.empty_nodes`` records them so a reader is not surprised.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import torch

from latbench.errors import UserError
from nas import runtime
from nas.cell import cell_edges
from nas.config import SpaceConfig
from nas.genotype import Architecture, Genotype
from nas.ops import CELL_PRIMITIVES, ZERO

CHECKPOINT_FORMAT = "lgcnet-search-checkpoint"


def derive_architecture(cell_logits: torch.Tensor, fusion_logits: Sequence[torch.Tensor],
                        config: SpaceConfig) -> Architecture:
    """Arg-max per edge of θ' (``[K, p, 8]``) and of each fusion edge's logits (the fusion cell's
    or the MSCell's, :func:`nas.fusion.fusion_edges`)."""
    from nas.fusion import fusion_edge_candidates

    idx = cell_logits.detach().argmax(-1).tolist()
    cells = [[CELL_PRIMITIVES[m] for m in row] for row in idx]
    fusion = [cands[int(t.detach().argmax())] for t, cands in zip(fusion_logits, fusion_edge_candidates(config.fusion))]
    arch = Architecture(cells, fusion)
    arch.validate(config)
    return arch


def empty_nodes(arch: Architecture, config: SpaceConfig) -> list[str]:
    """``"cellK.nodeI"`` for every intermediate node whose incoming edges all chose ``zero``."""
    topo = cell_edges(config.steps)
    out = []
    for k, cell in enumerate(arch.cells):
        for i in range(config.steps):
            ops = [cell[e] for e, (_, dst) in enumerate(topo) if dst == i]
            if all(op == ZERO for op in ops):
                out.append(f"cell{k}.node{i}")
    return out


def arch_probabilities(cell_logits: torch.Tensor, fusion_logits: Sequence[torch.Tensor]) -> dict[str, Any]:
    """softmax(θ') per edge, rounded, for the genotype's record."""
    return {"cells": [[[round(float(p), 4) for p in edge] for edge in cell]
                      for cell in torch.softmax(cell_logits.detach().float(), -1)],
            "fusion": [[round(float(p), 4) for p in torch.softmax(t.detach().float(), -1)] for t in fusion_logits]}


def make_genotype(arch: Architecture, config: SpaceConfig, *, search: dict[str, Any], lut: dict[str, Any],
                  lut_sum_us: float, latency_us: float, probabilities: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Genotype:
    meta: dict[str, Any] = {
        "search": search,
        "lut": lut,
        "expected_latency": {
            "lut_sum_us": round(lut_sum_us, 3),
            "latency_us": round(latency_us, 3),
            "calibrated": lut.get("calibration") is not None,
            "resolution": lut.get("resolution"),
            "batch": lut.get("batch"),
            "what": "LUT-predicted latency of the derived architecture (Σ of its LUT rows, fixed parts "
                    "included; latency_us applies the LUT's calibration a·Σ+b when it has one)",
        },
        "derivation": "argmax of the GCN-updated logits per edge; zero removes the edge; a node whose "
                      "inputs are all zero stays as an all-zero map",
        "empty_nodes": empty_nodes(arch, config),
        "probabilities": probabilities,
    }
    meta.update(extra or {})
    return Genotype(arch=arch, config=config, meta=meta)


RESUME_KEYS = ("model", "opt_w", "opt_a", "sched_w", "scaler", "gumbel_rng", "epoch", "step_in_epoch",
               "global_step", "acc")


def _tensor_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_checkpoint(path: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """A search checkpoint (:func:`nas.runtime.load_checkpoint`: on the CPU, tensors only),
    checked: its format, and each entry ``nas derive`` (and, with ``resume``, ``nas search
    --resume``) reads has the type it must, so a damaged or hand-made file is one line."""
    where = os.fspath(path)
    ckpt = runtime.load_checkpoint(path, "checkpoint")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{where} is not an LGCNet search checkpoint "
                        f"(no \"format\": \"{CHECKPOINT_FORMAT}\")")
    if not isinstance(ckpt.get("config"), dict):
        raise UserError(f"search checkpoint {where} lacks its configuration")
    for key in ("arch", "ggm"):
        if not _tensor_dict(ckpt.get(key)):
            raise UserError(f"search checkpoint {where}: its {key!r} entry must map names to tensors")
    lat = ckpt.get("latency")
    cal = lat.get("calibration") if isinstance(lat, dict) else None
    if not (isinstance(lat, dict) and isinstance(lat.get("cell"), torch.Tensor)
            and isinstance(lat.get("fusion"), (list, tuple)) and all(isinstance(t, torch.Tensor) for t in lat["fusion"])
            and _number(lat.get("fixed"))
            and (cal is None or (isinstance(cal, (list, tuple)) and len(cal) == 2 and all(map(_number, cal))))):
        raise UserError(f"search checkpoint {where}: its latency table is damaged (cell / fusion tensors, fixed µs, "
                        "calibration)")
    if resume:
        missing = [k for k in RESUME_KEYS if k not in ckpt]
        if missing or not _tensor_dict(ckpt["model"]) or not isinstance(ckpt["acc"], dict) \
                or not all(isinstance(ckpt[k], int) and not isinstance(ckpt[k], bool) and ckpt[k] >= 0
                           for k in ("epoch", "step_in_epoch", "global_step")):
            raise UserError(f"search checkpoint {where} cannot be resumed: its training state is incomplete or damaged"
                            + (f" (no {', '.join(missing)})" if missing else ""))
    return ckpt


def genotype_from_checkpoint(path: str | os.PathLike) -> Genotype:
    """Re-derive the genotype a search checkpoint stands for (no LUT file needed: the checkpoint
    holds the latency table and the LUT's identity)."""
    from nas.search.arch_params import ArchParams
    from nas.search.config import SearchConfig
    from nas.search.ggm import GGM
    from nas.search.latency import LatencyTable

    ckpt = load_checkpoint(path)
    cfg = SearchConfig.from_dict(ckpt["config"])
    arch_params = ArchParams(cfg.space, cfg.arch)
    ggm = GGM(cfg.space.num_cells, cfg.space.num_edges(), len(CELL_PRIMITIVES), cfg.ggm)
    try:
        arch_params.load_state_dict(ckpt["arch"])
        ggm.load_state_dict(ckpt["ggm"])
        table = LatencyTable.from_state_dict(ckpt["latency"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UserError(f"checkpoint {path} does not match its own configuration: {str(exc).splitlines()[0]}") from None
    with torch.no_grad():
        theta = ggm(arch_params.cell_logits())
        fusion = arch_params.fusion_logits()
    arch = derive_architecture(theta, fusion, cfg.space)
    return make_genotype(arch, cfg.space, search=cfg.to_dict(), lut=dict(ckpt.get("lut") or {}),
                         lut_sum_us=table.architecture_lut_sum(arch), latency_us=table.architecture_latency(arch),
                         probabilities=arch_probabilities(theta, fusion),
                         extra={"checkpoint": {"path": os.path.abspath(os.fspath(path)),
                                               "epoch": int(ckpt.get("epoch", 0)),
                                               "global_step": int(ckpt.get("global_step", 0))},
                                "dataset": ckpt.get("dataset")})
