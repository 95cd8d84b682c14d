"""Fine-tuning a derived LGCNet on a segmentation data set (paper IV-A).

What the paper fixes: 200 epochs, mini-batch 8, SGD, 'poly' learning rate from 0.01 to zero,
online bootstrapping of hard pixels (OHEM, following Wu et al.; :class:`nas.losses.OhemCrossEntropy`),
random flip, random resize 0.5–2.0 and a random crop of fixed size. Where it is silent we chose,
and say so:

- momentum 0.9 (the paper gives a momentum only for the search's SGD; we reuse it);

- poly power 0.9 (the usual 'poly'): ``lr = 0.01 · (1 − step / total_steps) ** 0.9``, stepped per
  iteration, reaching zero at the last step;
- weight decay 5e-4 (the common value for real-time segmentation fine-tuning; BiSeNet, FasterSeg);
- OHEM threshold 0.7 and at least 100 000 kept pixels per batch (PSPNet / HRNet defaults);
- crop: Cityscapes 768x768, CamVid 720x960 (the paper's CamVid input), synthetic 64x64;
- the random scale is relative to the paper's input size (``base_size="paper"``: Cityscapes
  769x1537, CamVid 720x960 — IV-B, Table V), i.e. 0.5–2.0 × the resolution the network is
  evaluated and deployed at (``"native"``: the stored frame's size instead);
- validation at the paper's evaluation input (``val_resolution="paper"``: Cityscapes 769x1537,
  CamVid 720x960, single scale, scored at the label's resolution);
- ``train_split``: ``train`` by default; ``train+val`` (+ ``train_extra``, Cityscapes' coarse
  annotations) is the test-server protocol (IV-B: "the validation set is added to train the
  network before submitting"; the 74.0 % result also uses the coarse data);
- the global batch is split evenly over ``torchrun`` processes; SyncBatchNorm on multi-GPU runs.

Mixed precision (float16 autocast + gradient scaling) and channels-last are on by default on
GPUs, off on the CPU. A run folder holds ``last.pt`` (the resume point, written atomically at the
end of every epoch and every ``checkpoint_every`` steps), ``best.pt`` (best validation mIoU),
``log.jsonl`` (one record per event: start, init, resume, epoch — with training loss and
validation mIoU — and done) and a copy of the genotype.

Resuming restores model, optimiser, scheduler, gradient scaler, every RNG and the position in the
epoch (the data order is a function of ``(seed, epoch)``, each item's augmentation a function of
``(seed, epoch, index)``), so an interrupted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from latbench.errors import UserError
from latbench.files import Journal
from nas.data import make_dataset
from nas.data.base import SegDataset
from nas.genotype import Genotype
from nas.losses import OhemCrossEntropy
from nas.network import LGCNet
from nas.runtime import DistContext, init_distributed, seed_everything, teardown_distributed
from nas.train.checkpoint import (FORMAT, VERSION, MatchReport, check_same_architecture,
                                  labels_to_dict, load_init_weights)
from nas.train.evaluate import DataSource, eval_dataset, evaluate_split
from nas.train.loop import EpochRun, Progress, genotype_source, read_log

DEFAULT_CROP = {"cityscapes": (768, 768), "camvid": (720, 960), "synthetic": (64, 64)}

# TrainConfig fields that decide the trajectory of a run: a resumed run must keep them.
TRAJECTORY_FIELDS = ("dataset", "epochs", "batch_size", "crop", "lr", "momentum", "weight_decay",
                     "poly_power", "ohem_thresh", "ohem_min_kept", "seed", "width_mult",
                     "scale_range", "base_size", "synthetic_size", "synthetic_length",
                     "synthetic_classes", "limit", "train_split")
# what a trajectory field meant in checkpoints written before the field existed
TRAJECTORY_DEFAULTS = {"train_split": "train"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one fine-tuning run needs besides the genotype. Defaults are the paper's."""

    dataset: str
    out_dir: str
    data_root: str | None = None
    epochs: int = 200
    batch_size: int = 8
    crop: tuple[int, int] | None = None          # None: DEFAULT_CROP[dataset]
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000
    scale_range: tuple[float, float] = (0.5, 2.0)
    base_size: Any = "paper"                     # scale relative to: "paper" (its input size), "native", (H, W)
    train_split: str = "train"                   # or "train+val" (+ "+train_extra"): test-server protocol
    width_mult: float | None = None              # None: the genotype's
    seed: int = 0
    device: str | None = None
    workers: int = 2
    amp: bool | None = None                      # None: on for CUDA
    channels_last: bool | None = None            # None: on for CUDA
    val_every: int = 1
    val_split: str = "val"
    val_resolution: Any = "paper"                # network input for validation: "paper", "native", (H, W)
    eval_batch_size: int = 1
    checkpoint_every: int | None = None          # also save last.pt every N steps
    stop_after: int | None = None                # stop (and save) after N optimiser steps in total
    init: str | None = None
    resume: bool = False
    synthetic_size: tuple[int, int] = (64, 128)
    synthetic_length: int | None = None
    synthetic_classes: int | None = None         # None: the genotype's num_classes (as nas search)
    limit: int | None = None                     # real data sets: first N items of each split
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.val_every < 1 or self.eval_batch_size < 1:
            raise UserError("epochs, batch size, val-every and eval batch size must be >= 1")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.stop_after is not None and self.stop_after < 1:
            raise UserError(f"stop_after must be >= 1, got {self.stop_after}")
        from nas.data.base import split_parts

        split_parts(self.train_split)
        resolve_resolution(self.base_size, self.dataset)
        resolve_resolution(self.val_resolution, self.dataset)

    @property
    def scale_base(self) -> tuple[int, int] | None:
        """The size random scaling is relative to (None: each image's own size)."""
        return resolve_resolution(self.base_size, self.dataset)

    @property
    def val_input(self) -> tuple[int, int] | None:
        """The validation input size (None: as stored)."""
        return resolve_resolution(self.val_resolution, self.dataset)

    @property
    def crop_size(self) -> tuple[int, int]:
        if self.crop is not None:
            return tuple(self.crop)  # type: ignore[return-value]
        return DEFAULT_CROP.get(self.dataset, (512, 512))

    def source(self) -> DataSource:
        return DataSource(self.dataset, self.data_root, tuple(self.synthetic_size),  # type: ignore[arg-type]
                          self.synthetic_length, self.limit)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists, JSON-safe

    def trajectory(self) -> dict[str, Any]:
        d = self.to_dict()
        d["crop"] = list(self.crop_size)
        d["base_size"] = None if self.scale_base is None else list(self.scale_base)
        return {k: d[k] for k in TRAJECTORY_FIELDS}


@dataclass
class TrainResult:
    out_dir: Path
    history: list[dict[str, Any]]
    progress: Progress
    finished: bool
    is_main: bool = True


def train_genotype(genotype: Genotype, cfg: TrainConfig, genotype_path: str | None = None,
                   log: Callable[[str], None] = print) -> TrainResult:
    """Fine-tune ``genotype`` as configured; under ``torchrun`` every process calls this."""
    ctx = init_distributed(cfg.device)
    try:
        return _Run(genotype, cfg, genotype_path, ctx, log).run()
    finally:
        teardown_distributed(ctx)


def resolve_resolution(value: Any, dataset: str) -> tuple[int, int] | None:
    """``"paper"`` → the paper's input size for ``dataset`` (None for synthetic data), ``"native"``
    / None → None (as stored), ``(H, W)`` → itself."""
    from nas.train.evaluate import paper_resolution

    if value is None or value == "native":
        return None
    if value == "paper":
        return paper_resolution(dataset)
    if isinstance(value, str):
        raise UserError(f"unknown resolution {value!r}: expected paper, native or HxW")
    return int(value[0]), int(value[1])


def poly_lambda(total_steps: int, power: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        return max(0.0, 1.0 - step / max(1, total_steps)) ** power
    return f


class _Run(EpochRun):
    def __init__(self, genotype: Genotype, cfg: TrainConfig, genotype_path: str | None,
                 ctx: DistContext, log: Callable[[str], None]):
        super().__init__(cfg, ctx, log)
        self.train_ds = self._train_dataset(genotype.config.num_classes)
        self.val_ds = eval_dataset(cfg.source(), cfg.val_split, num_classes=self.train_ds.num_classes,
                                   resolution=cfg.val_input)
        changes: dict[str, Any] = {"num_classes": self.train_ds.num_classes}
        if cfg.width_mult is not None:
            changes["width_mult"] = float(cfg.width_mult)
        self.genotype = Genotype(genotype.arch, genotype.config.replace(**changes), dict(genotype.meta))
        self.genotype_source = genotype_source(genotype_path)
        self._count_steps(f"the {cfg.dataset} training split has {len(self.train_ds)} items")

    def _train_dataset(self, genotype_classes: int) -> SegDataset:
        cfg = self.cfg
        synth = cfg.dataset == "synthetic"
        return make_dataset(cfg.dataset, cfg.data_root, cfg.train_split, crop=cfg.crop_size, augment=True,
                            resize=cfg.scale_base, seed=cfg.seed,
                            length=cfg.synthetic_length if synth else cfg.limit,
                            num_classes=(cfg.synthetic_classes or genotype_classes) if synth else None,
                            image_size=tuple(cfg.synthetic_size) if synth else None,  # type: ignore[arg-type]
                            scale_range=tuple(cfg.scale_range))  # type: ignore[arg-type]

    def protocol(self) -> dict[str, Any]:
        """What this run trains and validates on, resolved (written to the log's start record)."""
        cfg = self.cfg
        base = cfg.scale_base
        val = cfg.val_input
        notes = []
        if "val" in cfg.train_split.split("+") and cfg.val_split == "val":
            notes.append("the validation split is part of the training data: its mIoU is not a held-out score")
        return {"train_split": cfg.train_split, "train_items": len(self.train_ds),
                "scale_range": list(cfg.scale_range),
                "scale_base": "image size" if base is None else f"{base[0]}x{base[1]}",
                "crop": f"{cfg.crop_size[0]}x{cfg.crop_size[1]}", "val_split": cfg.val_split,
                "val_input": "as stored" if val is None else f"{val[0]}x{val[1]}", "notes": notes}

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        model = LGCNet(self.genotype.config, self.genotype.arch)
        self.init_report: MatchReport | None = None
        if cfg.init:
            self.init_report = load_init_weights(model, cfg.init)
        self._place(model, (32, 32))
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lambda(self.total_steps, cfg.poly_power))
        self.criterion = OhemCrossEntropy(cfg.ohem_thresh, cfg.ohem_min_kept,
                                          ignore_index=self.train_ds.ignore_index)
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []
        self.best = -math.inf

    def _best_miou(self) -> float | None:
        return None if math.isinf(self.best) else self.best

    def _payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "genotype": self.genotype.to_dict(),
            "genotype_source": self.genotype_source,
            "labels": labels_to_dict(self.train_ds.spec),
            **self._train_state(),
            "train_config": self.cfg.to_dict(),
            "trajectory": self.cfg.trajectory(),
            "history": self.history,
            "best_miou": self._best_miou(),
            "world_size": self.ctx.world_size,
        }

    def _resume(self, path: Path) -> None:
        from nas.train.checkpoint import read_checkpoint

        ck = read_checkpoint(path)
        check_same_architecture(self.genotype, ck.genotype, "--arch (with this run's data set and "
                                "--width-mult)", f"checkpoint {path}")
        self._check_trajectory(ck.raw, path, TRAJECTORY_DEFAULTS)
        self._restore(ck.raw, path)
        best = ck.raw.get("best_miou")
        self.best = -math.inf if best is None else float(best)

    # ------------------------------------------------------------------ run
    def _start(self, journal: Journal | None) -> None:
        cfg = self.cfg
        self._record(journal, {"event": "start", "config": cfg.to_dict(),
                               "protocol": self.protocol(),
                               "genotype": self.genotype_source, "world_size": self.ctx.world_size,
                               "device": self.ctx.device, "amp": self.amp,
                               "train_items": len(self.train_ds), "val_items": len(self.val_ds),
                               "steps_per_epoch": self.steps_per_epoch,
                               "total_steps": self.total_steps})
        for note in self.protocol()["notes"]:
            self.log(f"note: {note}")
        if self.init_report is not None:
            self._record(journal, {"event": "init", "path": cfg.init, **self.init_report.to_dict()})
            self.log(f"--init {cfg.init}: {self.init_report.summary()}")

    def _finish(self, finished: bool) -> TrainResult:
        return TrainResult(self.out, self.history, self.progress, finished, self.ctx.is_main)

    def _epoch_message(self, rec: dict[str, Any]) -> str:
        msg = f"epoch {rec['epoch']}/{self.cfg.epochs}  loss {rec['train_loss']:.4f}  lr {rec['lr']:.3g}"
        if rec.get("val_miou") is not None:
            msg += f"  val mIoU {100 * rec['val_miou']:.2f}%"
        return msg

    def _done_fields(self) -> dict[str, Any]:
        return {"best_miou": self._best_miou()}

    # ------------------------------------------------------------------ epoch
    def _count(self, loss: torch.Tensor, journal: Journal | None, advance: Callable[..., None]) -> None:
        value = float(loss)
        self.progress.loss_sum += value
        advance(1, loss=value)

    def _epoch_fields(self, seconds: float) -> dict[str, Any]:
        return {"val_miou": None}

    def _validate(self) -> dict[str, Any]:
        cfg = self.cfg
        cm = evaluate_split(self.model, self.val_ds, device=self.device, ctx=self.ctx,
                            batch_size=cfg.eval_batch_size, channels_last=self.channels_last,
                            show_progress=cfg.show_progress)
        miou = cm.miou()
        return {"val_miou": None if math.isnan(miou) else miou,
                "val_per_class": {n: (None if math.isnan(v) else v)
                                  for n, v in zip(self.val_ds.class_names, cm.iou().tolist())},
                "val_split": cfg.val_split,
                "val_resolution": None if cfg.val_input is None else list(cfg.val_input)}

    def _judge(self, rec: dict[str, Any]) -> None:
        rec["best"] = rec["val_miou"] is not None and rec["val_miou"] > self.best
        if rec["best"]:
            self.best = rec["val_miou"]


__all__ = ["DEFAULT_CROP", "Progress", "TrainConfig", "TrainResult", "poly_lambda", "read_log",
           "train_genotype"]
