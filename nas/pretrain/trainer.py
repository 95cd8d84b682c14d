"""ImageNet pre-training of a derived LGCNet backbone (``nas pretrain``).

The paper (IV-A) says only that the searched network is pre-trained on ImageNet before it is
fine-tuned; every choice below is ours, a standard recipe for small ImageNet networks
(Goyal et al. 2017 for the warm-up and the linear scaling rule; Szegedy et al. 2016 for label
smoothing and the random-resized crop; the cosine schedule of Loshchilov & Hutter 2017):

- SGD, momentum 0.9 (Nesterov optional), weight decay 4e-5 on convolution and linear weights only
  (BatchNorm parameters and biases are not decayed);
- learning rate ``0.1 × global batch / 256`` unless given, per-iteration linear warm-up over the
  first 5 epochs (from ``lr / warm-up steps`` to ``lr``), then cosine to ``min_lr`` (0) — or, with
  ``schedule="step"``, ×``gamma`` (0.1) at the milestone epochs (default 1/3, 2/3 and 8/9 of the
  run: 30, 60, 80 of 90);
- cross-entropy with label smoothing 0.1; 150 epochs; global batch 256;
- training crops: random-resized crop (area 8–100 %, aspect 3/4–4/3) to 224, horizontal flip;
  evaluation: shorter side resized to 256 (``crop / 0.875``), central 224 crop; top-1 / top-5 over
  the whole val split (top-k with k = min(5, classes));
- float16 autocast with gradient scaling and channels-last memory on GPUs, plain float32 on the CPU;
  under ``torchrun`` one process per GPU (DDP; SyncBatchNorm on GPUs), the global batch split evenly.

A run folder holds ``last.pt`` (the resume point, written atomically after every epoch and every
``checkpoint_every`` steps), ``best.pt`` (best val top-1), ``log.jsonl`` (records ``start``,
``resume``, ``step`` every ``log_every`` steps, ``epoch``, ``stopped``, ``done``), a copy of the
genotype as trained (width applied) and, when the run finishes, ``result.json``. Resuming restores
the model, optimiser, scheduler, gradient scaler, every RNG and the position in the epoch (the data
order is a function of ``(seed, epoch)``, each crop a function of ``(seed, epoch, index)``), so an
interrupted run ends with the same weights as an uninterrupted one (bit for bit on the CPU).
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from latbench.errors import UserError
from latbench.files import Journal
from nas.data.transforms import RandomResizedCrop, ResizeCenterCrop, normalize_uint8
from nas.genotype import Genotype, write_json_atomic
from nas.pretrain import FORMAT, VERSION, is_backbone_key
from nas.pretrain.config import PretrainConfig
from nas.pretrain.evaluate import batches_of, evaluate_topk, loader_generator
from nas.pretrain.imagenet import ImageFolderDataset, ImageNetLayout, find_imagenet
from nas.pretrain.model import LGCNetClassifier, parameter_counts
from nas.runtime import (DistContext, EpochSampler, init_distributed, load_checkpoint, seed_everything,
                         teardown_distributed, unused_parameters)
from nas.train.checkpoint import check_same_architecture
from nas.train.loop import EpochRun, genotype_source, read_log
from nas.train.loop import Progress as BaseProgress

RESULT_FORMAT = "nas-pretrain-result"


def lr_lambda(*, total_steps: int, warmup_steps: int, schedule: str, milestone_steps: tuple[int, ...],
              gamma: float, min_ratio: float) -> Callable[[int], float]:
    """The factor on the base learning rate at optimiser step ``step`` (0-based)."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
        return gamma ** sum(1 for m in milestone_steps if step >= m)
    return f


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


@dataclass
class Progress(BaseProgress):
    log_sum: float = 0.0      # this process's loss summed since the last step record
    log_count: int = 0


@dataclass
class PretrainResult:
    out_dir: Path
    finished: bool
    progress: Progress
    result: dict[str, Any] | None
    is_main: bool = True


def pretrain_genotype(genotype: Genotype, cfg: PretrainConfig, genotype_path: str | None = None,
                      log: Callable[[str], None] = print) -> PretrainResult:
    """Pre-train ``genotype``'s backbone on ImageNet; under ``torchrun`` every process calls this."""
    layout = find_imagenet(cfg.data_root, cfg.val_labels)
    ctx = init_distributed(cfg.device)
    try:
        return _Run(genotype, cfg, layout, genotype_path, ctx, log).run()
    finally:
        teardown_distributed(ctx)



class _Run(EpochRun):
    def __init__(self, genotype: Genotype, cfg: PretrainConfig, layout: ImageNetLayout,
                 genotype_path: str | None, ctx: DistContext, log: Callable[[str], None]):
        super().__init__(cfg, ctx, log)
        self.layout = layout
        size = (cfg.crop, cfg.crop)
        self.train_ds = ImageFolderDataset(layout.train, RandomResizedCrop(size, scale=(cfg.scale_min, 1.0)),
                                           seed=cfg.seed)
        self.val_ds = ImageFolderDataset(layout.val, ResizeCenterCrop(cfg.val_resize_size, size))
        config = genotype.config if cfg.width_mult is None else genotype.config.replace(width_mult=float(cfg.width_mult))
        self.genotype = Genotype(genotype.arch, config, dict(genotype.meta))
        self.genotype_source = genotype_source(genotype_path)
        self._count_steps(f"the ImageNet train folder holds {len(self.train_ds)} images")
        self.warmup_steps = min(self.total_steps, int(round(cfg.warmup_epochs * self.steps_per_epoch)))

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        model = LGCNetClassifier(self.genotype.config, self.genotype.arch, self.layout.num_classes,
                                 head_channels=cfg.head_channels, dropout=cfg.dropout)
        self.params = parameter_counts(model)
        self._place(model, cfg.crop)
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.base_lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        spe = self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(
            total_steps=self.total_steps, warmup_steps=self.warmup_steps, schedule=cfg.schedule,
            milestone_steps=tuple(m * spe for m in cfg.milestone_epochs), gamma=cfg.gamma,
            min_ratio=cfg.min_lr / cfg.base_lr))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"top1": None, "epoch": None}

    def _payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "genotype": self.genotype.to_dict(),
            "genotype_source": self.genotype_source,
            "classes": list(self.layout.classes),
            "data": self.layout.describe(),
            "head": {"channels": self.cfg.head_channels, "dropout": self.cfg.dropout,
                     "num_classes": self.layout.num_classes},
            **self._train_state(),
            "config": self.cfg.to_dict(),
            "trajectory": self.cfg.trajectory(),
            "history": self.history,
            "best": dict(self.best),
            "world_size": self.ctx.world_size,
        }

    def _resume(self, path: Path) -> None:
        raw = load_checkpoint(path)
        if raw.get("format") != FORMAT:
            raise UserError(f"{path} is not a nas pretrain checkpoint (no \"format\": \"{FORMAT}\")")
        if raw.get("version") != VERSION:
            raise UserError(f"checkpoint {path} has format version {raw.get('version')}; this nas reads {VERSION}")
        found = Genotype.from_dict(raw.get("genotype", {}), source=f"the genotype inside checkpoint {path}")
        check_same_architecture(self.genotype, found, "--arch (with this run's --width-mult)", f"checkpoint {path}")
        self._check_trajectory(raw, path)
        was, now = raw.get("data", {}), self.layout.describe()
        for k in ("classes_sha256", "train_items"):
            if was.get(k) != now[k]:
                what = "class list" if k == "classes_sha256" else "number of training images"
                raise UserError(f"cannot resume {path}: the ImageNet {what} changed since it was written "
                                f"({was.get('train_items')} -> {now['train_items']} images, "
                                f"{was.get('num_classes')} -> {now['num_classes']} classes)")
        self._restore(raw, path)
        self.best = dict(raw.get("best", {"top1": None, "epoch": None}))

    # ------------------------------------------------------------------ run
    def _start(self, journal: Journal | None) -> None:
        cfg = self.cfg
        self._record(journal, {
            "event": "start", "config": cfg.to_dict(), "trajectory": cfg.trajectory(),
            "genotype": self.genotype_source, "data": self.layout.describe(),
            "world_size": self.ctx.world_size, "device": self.ctx.device, "amp": self.amp,
            "channels_last": self.channels_last, "params": self.params,
            "unused_parameters": self.unused, "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps, "warmup_steps": self.warmup_steps})
        d = self.layout.describe()
        self.log(f"ImageNet: {d['train_items']} training images in {d['num_classes']} classes, "
                 f"{d['val_items']} val images ({d['val_layout']}); {self.steps_per_epoch} steps/epoch "
                 f"of {cfg.batch_size} on {self.ctx.world_size} process(es), {self.ctx.device}"
                 f"{', AMP' if self.amp else ''}{', channels-last' if self.channels_last else ''}")

    def _finish(self, finished: bool) -> PretrainResult:
        result = None
        if finished:
            result = self._result()
            if self.ctx.is_main:
                write_json_atomic(self.out / "result.json", result)
        return PretrainResult(self.out, finished, self.progress, result, self.ctx.is_main)

    def _eta(self) -> float | None:
        """Seconds left, from this process's mean time per training step so far (evaluation aside)."""
        done = self.progress.global_step - self._steps_at_start
        if done <= 0:
            return None
        return (time.time() - self._t_start) / done * (self.total_steps - self.progress.global_step)

    def _loop(self, journal: Journal | None) -> bool:
        self._t_start, self._steps_at_start = time.time(), self.progress.global_step
        return super()._loop(journal)

    def _epoch_message(self, rec: dict[str, Any]) -> str:
        cfg = self.cfg
        msg = f"epoch {rec['epoch']}/{cfg.epochs}  loss {rec['train_loss']:.4f}  lr {rec['lr']:.4g}"
        if rec.get("val_top1") is not None:
            msg += f"  val top-1 {100 * rec['val_top1']:.2f}%  top-5 {100 * rec['val_top5']:.2f}%"
        msg += f"  {rec['images_per_s']:.0f} img/s"
        if self.progress.epoch < cfg.epochs:
            msg += f"  eta {format_duration(rec['eta_s'])}"
        return msg

    def _done_fields(self) -> dict[str, Any]:
        return {"best": self.best}

    # ------------------------------------------------------------------ epoch
    def _loader_generator(self) -> torch.Generator:
        return loader_generator()

    def _batches(self, sampler: EpochSampler):
        return batches_of(super()._batches(sampler))

    def _begin_epoch(self) -> None:
        p = self.progress
        # running sums on the device: one host sync per log interval, not per step. The epoch's sum
        # continues from the checkpoint's, so a resumed run adds the same numbers in the same order.
        self._loss_acc = torch.tensor(p.loss_sum, dtype=torch.float64, device=self.device)
        self._interval_acc = torch.tensor(p.log_sum, dtype=torch.float64, device=self.device)
        self._t_log = time.time()
        self._plain_log = not sys.stderr.isatty() and self.cfg.show_progress
        self._epoch_steps = 0

    def _count(self, loss: torch.Tensor, journal: Journal | None, advance: Callable[..., None]) -> None:
        cfg, p = self.cfg, self.progress
        loss = loss.double()
        self._loss_acc += loss
        self._interval_acc += loss
        p.log_count += 1
        self._epoch_steps += 1
        if p.global_step % cfg.log_every == 0:
            mean = float(self._interval_acc) / p.log_count
            now = time.time()
            ips = min(p.log_count, self._epoch_steps) * cfg.batch_size / max(1e-9, now - self._t_log)
            eta = self._eta()
            lr = float(self.optimizer.param_groups[0]["lr"])
            self._record(journal, {"event": "step", "epoch": p.epoch + 1, "global_step": p.global_step,
                                   "loss": mean, "lr": lr, "images_per_s": ips, "eta_s": eta})
            if self._plain_log:
                self.log(f"epoch {p.epoch + 1} step {p.step_in_epoch}/{self.steps_per_epoch}  loss {mean:.4f}  "
                         f"lr {lr:.4g}  {ips:.0f} img/s  eta {format_duration(eta)}")
            advance(1, loss=mean, eta=format_duration(eta))
            self._interval_acc.zero_()
            p.log_count, self._t_log = 0, now
        else:
            advance(1)

    def _settle(self) -> None:
        p = self.progress
        p.loss_sum, p.log_sum = float(self._loss_acc), float(self._interval_acc)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_uint8(super()._inputs(images))

    def _epoch_fields(self, seconds: float) -> dict[str, Any]:
        # fewer steps than an epoch's when it was resumed mid-way
        return {"images_per_s": self._epoch_steps * self.cfg.batch_size / max(1e-9, seconds),
                "val_top1": None, "val_top5": None, "val_loss": None}

    def _validate(self) -> dict[str, Any]:
        cfg = self.cfg
        r = evaluate_topk(self.model, self.val_ds, device=self.device, ctx=self.ctx,
                          batch_size=cfg.eval_batch_size or self.rank_batch, workers=cfg.workers,
                          channels_last=self.channels_last, amp=self.amp, show_progress=cfg.show_progress)
        return {"val_top1": r["top1"], "val_top5": r["top5"], "val_loss": r["loss"], "val_items": r["count"]}

    def _judge(self, rec: dict[str, Any]) -> None:
        epoch = rec["epoch"]
        rec["best"] = rec["val_top1"] is not None and (self.best["top1"] is None or rec["val_top1"] > self.best["top1"])
        if rec["best"]:
            self.best = {"top1": rec["val_top1"], "top5": rec["val_top5"], "epoch": epoch}
        rec["eta_s"] = self._eta() if epoch < self.cfg.epochs else 0.0

    def _result(self) -> dict[str, Any]:
        from nas.fps import genotype_hash

        last = next((r for r in reversed(self.history) if r.get("val_top1") is not None), {})
        n_backbone = sum(1 for k in self.model.state_dict() if is_backbone_key(k))
        return {
            "format": RESULT_FORMAT, "version": 1,
            "top1": last.get("val_top1"), "top5": last.get("val_top5"), "val_loss": last.get("val_loss"),
            "epoch": last.get("epoch"), "best": self.best,
            "checkpoint": str(self.out / "last.pt"), "best_checkpoint": str(self.out / "best.pt"),
            "genotype": {**self.genotype_source, "hash": genotype_hash(self.genotype),
                         "width_mult": self.genotype.config.width_mult},
            "backbone_tensors": n_backbone, "params": self.params,
            "data": self.layout.describe(), "config": self.cfg.to_dict(), "trajectory": self.cfg.trajectory(),
            "global_step": self.progress.global_step, "world_size": self.ctx.world_size,
            "device": self.ctx.device, "amp": self.amp, "channels_last": self.channels_last,
            "torch": torch.__version__,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "history": [{k: r.get(k) for k in ("epoch", "train_loss", "lr", "val_top1", "val_top5")}
                        for r in self.history],
        }


__all__ = ["PretrainConfig", "PretrainResult", "RESULT_FORMAT", "evaluate_topk", "format_duration",
           "lr_lambda", "pretrain_genotype", "read_log", "unused_parameters"]
