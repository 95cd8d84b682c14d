"""The training checkpoint: a self-describing, tensors-only file (DESIGN §8).

``torch.load(path, weights_only=True)`` gives a plain dictionary::

    {"format": "lgcnet-checkpoint", "version": 1,
     "genotype": {...genotype.json as trained: config with the data set's num_classes / width...},
     "genotype_source": {"path": "...", "sha256": "..."},   # the file training started from
     "labels": {"dataset": "cityscapes", "class_names": [...], "palette": [[r, g, b], ...],
                "ignore_index": 255},
     "model": state_dict,
     # training state (absent from exported weights):
     "optimizer": ..., "scheduler": ..., "scaler": ..., "rng": ...,
     "progress": {"epoch": e, "step_in_epoch": s, "global_step": g, "loss_sum": x, "loss_count": n},
     "train_config": {...TrainConfig...}, "history": [...per-epoch records...]}

So ``nas eval`` and ``nas predict`` need nothing but the checkpoint: it names its architecture, its
configuration and the classes (with colours) its outputs mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from latbench.errors import UserError
from nas.data.palette import LabelSpec
from nas.genotype import Genotype
from nas.network import LGCNet
from nas.runtime import load_checkpoint

FORMAT = "lgcnet-checkpoint"
VERSION = 1


def labels_to_dict(spec: LabelSpec) -> dict[str, Any]:
    return {"dataset": spec.name, "class_names": list(spec.class_names),
            "palette": [list(c) for c in spec.palette], "ignore_index": spec.ignore_index}


def labels_from_dict(d: Mapping[str, Any]) -> LabelSpec:
    """The inverse of :func:`labels_to_dict`; ``ValueError`` naming the field of the wrong type."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(d, Mapping):
        raise ValueError(f"expected a dictionary, not {type(d).__name__}")
    names, palette, ignore = d.get("class_names"), d.get("palette"), d.get("ignore_index", 255)
    if not isinstance(d.get("dataset"), str):
        raise ValueError("'dataset' must be a string")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError("'class_names' must be a list of strings")
    if not isinstance(palette, (list, tuple)) or not all(
            isinstance(c, (list, tuple)) and len(c) == 3 and all(is_int(v) and 0 <= v <= 255 for v in c)
            for c in palette):
        raise ValueError("'palette' must be a list of [r, g, b] colours (integers 0-255)")
    if not is_int(ignore):
        raise ValueError("'ignore_index' must be an integer")
    return LabelSpec(d["dataset"], tuple(names), tuple(tuple(c) for c in palette), ignore)  # type: ignore[misc]


@dataclass
class ModelCheckpoint:
    """What a checkpoint says about the network it holds (training state left in ``raw``)."""

    path: Path
    genotype: Genotype
    labels: LabelSpec
    state_dict: dict[str, torch.Tensor]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.raw.get("progress", {}))

    @property
    def genotype_source(self) -> dict[str, Any]:
        return dict(self.raw.get("genotype_source", {}))

    @property
    def train_config(self) -> dict[str, Any]:
        return dict(self.raw.get("train_config", {}))


def read_checkpoint(path: str | os.PathLike) -> ModelCheckpoint:
    """Load and validate a training checkpoint; one-line :class:`UserError` for anything unusable."""
    p = Path(path)
    raw = load_checkpoint(p)
    if raw.get("format") != FORMAT:
        raise UserError(f"{p} is not an LGCNet training checkpoint (no \"format\": \"{FORMAT}\"); "
                        f"plain weights can be loaded with nas train --init")
    if raw.get("version") != VERSION:
        raise UserError(f"checkpoint {p} has format version {raw.get('version')}; this nas reads version {VERSION}")
    for key in ("genotype", "labels", "model"):
        if key not in raw:
            raise UserError(f"checkpoint {p} lacks its {key!r} entry")
    genotype = Genotype.from_dict(raw["genotype"], source=f"the genotype inside checkpoint {p}")
    model = raw["model"]
    if not isinstance(model, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in model.items()):
        raise UserError(f"checkpoint {p}: its 'model' entry must map tensor names to tensors")
    for key in ("progress", "train_config", "genotype_source", "trajectory"):
        if key in raw and not isinstance(raw[key], Mapping):
            raise UserError(f"checkpoint {p}: its {key!r} entry must be a dictionary, not {type(raw[key]).__name__}")
    try:
        labels = labels_from_dict(raw["labels"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"checkpoint {p} has an unreadable label list: {exc}") from None
    if labels.num_classes != genotype.config.num_classes:
        raise UserError(f"checkpoint {p} names {labels.num_classes} classes but its network has "
                        f"{genotype.config.num_classes} outputs")
    return ModelCheckpoint(p, genotype, labels, raw["model"], raw)


def architecture_differences(expected: Genotype, found: Genotype,
                             ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable differences between two genotypes' networks (empty when identical).

    ``ignore``: configuration fields left out of the comparison (e.g. ``num_classes``, which
    training sets from the data set, when comparing a checkpoint with the searched genotype).
    """
    diffs: list[str] = []
    a, b = expected.config.to_dict(), found.config.to_dict()
    for k in a:
        if k not in ignore and a[k] != b.get(k):
            diffs.append(f"config {k}: {a[k]} vs {b.get(k)}")
    ca, cb = expected.arch.cells, found.arch.cells
    if len(ca) != len(cb):
        diffs.append(f"{len(ca)} vs {len(cb)} cells")
    for k, (x, y) in enumerate(zip(ca, cb)):
        for e, (oa, ob) in enumerate(zip(x, y)):
            if oa != ob:
                diffs.append(f"cell {k} edge {e}: {oa} vs {ob}")
    fa, fb = expected.arch.fusion, found.arch.fusion
    if len(fa) != len(fb):
        diffs.append(f"{len(fa)} vs {len(fb)} fusion edges")
    for e, (oa, ob) in enumerate(zip(fa, fb)):
        if oa != ob:
            diffs.append(f"fusion edge {e}: {oa} vs {ob}")
    return diffs


def check_same_architecture(expected: Genotype, found: Genotype, expected_name: str,
                            found_name: str, ignore: tuple[str, ...] = ()) -> None:
    """:class:`UserError` naming what differs (the first few items) when the networks differ."""
    diffs = architecture_differences(expected, found, ignore)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise UserError(f"{found_name} is for a different architecture than {expected_name} "
                        f"(given as {expected_name.split()[0]} vs {found_name.split()[0]}): {shown}")


def build_model(ckpt: ModelCheckpoint, *, device: str = "cpu", resolution: tuple[int, int] | None = None) -> LGCNet:
    """The derived network of ``ckpt`` with its weights, in eval mode, on the CPU. Refused up
    front (:mod:`nas.memory`) when its parameters — and, given ``resolution``, one image's
    activations on ``device`` — cannot fit."""
    from nas.memory import check_network_fits

    check_network_fits(ckpt.genotype.config, ckpt.genotype.arch, device, resolution=resolution,
                       what=f"the network of checkpoint {ckpt.path}")
    model = LGCNet(ckpt.genotype.config, ckpt.genotype.arch)
    load_exact(model, ckpt.state_dict, f"checkpoint {ckpt.path}")
    return model.eval()


def load_exact(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming missing / extra / resized tensors."""
    report = match_state(model, state)
    problems = []
    if report.missing:
        problems.append(f"{len(report.missing)} missing (e.g. {report.missing[0]})")
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} unexpected (e.g. {report.unexpected[0]})")
    if report.wrong_shape:
        k, want, got = report.wrong_shape[0]
        problems.append(f"{len(report.wrong_shape)} with the wrong shape (e.g. {k}: network "
                        f"{list(want)}, file {list(got)})")
    if problems:
        raise UserError(f"{source} does not fit the architecture it names: tensors "
                        + ", ".join(problems))
    model.load_state_dict(dict(state), strict=True)


@dataclass
class MatchReport:
    """How a weights file lines up with a network, tensor by tensor."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)          # in the network, not in the file
    unexpected: list[str] = field(default_factory=list)       # in the file, not in the network
    wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    source_format: str | None = None                          # the file's "format" entry, if any

    def parts(self) -> dict[str, dict[str, int]]:
        """Matched / total network tensors of the backbone (stem + cells) and of the rest."""
        from nas.pretrain import is_backbone_key

        out = {"backbone": {"matched": 0, "total": 0}, "fusion_and_head": {"matched": 0, "total": 0}}
        for names, hit in ((self.matched, 1), (self.missing, 0), ([k for k, _, _ in self.wrong_shape], 0)):
            for k in names:
                part = out["backbone" if is_backbone_key(k) else "fusion_and_head"]
                part["total"] += 1
                part["matched"] += hit
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"matched": len(self.matched), "missing": self.missing, "unexpected": self.unexpected,
                "wrong_shape": [{"name": k, "network": list(a), "file": list(b)} for k, a, b in self.wrong_shape],
                **self.parts(), "source_format": self.source_format}

    def summary(self) -> str:
        b, r = self.parts()["backbone"], self.parts()["fusion_and_head"]
        parts = [f"backbone: {b['matched']}/{b['total']} tensors matched, "
                 f"fusion + head: {r['matched']}/{r['total']}"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (kept their fresh initialisation)")
        if self.wrong_shape:
            parts.append(f"{len(self.wrong_shape)} with the wrong shape (skipped, e.g. {self.wrong_shape[0][0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} in the file unused (e.g. {self.unexpected[0]})")
        return ", ".join(parts)


def match_state(model: nn.Module, state: Mapping[str, Any]) -> MatchReport:
    own = model.state_dict()
    rep = MatchReport()
    for k, v in own.items():
        if k not in state:
            rep.missing.append(k)
        elif not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(v.shape):
            got = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else ()
            rep.wrong_shape.append((k, tuple(v.shape), got))
        else:
            rep.matched.append(k)
    rep.unexpected = [k for k in state if k not in own]
    return rep


def load_init_weights(model: nn.Module, path: str | os.PathLike) -> MatchReport:
    """``--init``: copy every tensor of ``path`` whose name and shape fit ``model``.

    ``path`` is an LGCNet checkpoint or a ``nas pretrain`` checkpoint (their ``model`` entry is
    used) or a plain state dict (a ``state_dict`` / ``model`` entry or a ``module.`` prefix from
    DistributedDataParallel is unwrapped). Nothing matching at all is an error, and so is a
    ``nas pretrain`` checkpoint whose backbone does not fit the network's entirely (another
    genotype or width: its weights would be copied piecemeal).
    """
    from nas.pretrain import FORMAT as PRETRAIN_FORMAT

    raw = load_checkpoint(path, "--init weights")
    state: Any = raw
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    rep = match_state(model, state)
    rep.source_format = raw.get("format") if isinstance(raw.get("format"), str) else None
    b = rep.parts()["backbone"]
    if rep.source_format == PRETRAIN_FORMAT and b["matched"] < b["total"]:
        from nas.pretrain import is_backbone_key

        miss = [k for k in rep.missing if is_backbone_key(k)]
        bad = [k for k, _, _ in rep.wrong_shape if is_backbone_key(k)]
        what = ", ".join(([f"{len(miss)} missing (e.g. {miss[0]})"] if miss else [])
                         + ([f"{len(bad)} with the wrong shape (e.g. {bad[0]})"] if bad else []))
        raise UserError(f"--init {path} is a nas pretrain checkpoint of another backbone: {b['matched']}/{b['total']} "
                        f"backbone tensors fit this network ({what}); pre-train the genotype you fine-tune, "
                        f"with the same --width-mult")
    if not rep.matched:
        raise UserError(f"--init {path}: no tensor of the file matches the network by name and shape "
                        f"({len(state)} tensors in the file, e.g. {next(iter(state), 'none')})")
    own = model.state_dict()
    with torch.no_grad():
        for k in rep.matched:
            own[k].copy_(state[k])
    return rep


__all__ = ["FORMAT", "VERSION", "MatchReport", "ModelCheckpoint", "architecture_differences",
           "build_model", "check_same_architecture",
           "labels_from_dict", "labels_to_dict", "load_exact", "load_init_weights", "match_state",
           "read_checkpoint"]
