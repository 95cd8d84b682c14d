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

import dataclasses
import datetime as _dt
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nas.runtime import unused_parameters
from torch.utils.data import DataLoader, Subset

from latbench.errors import UserError
from latbench.fileio import Journal, file_sha256, read_journal, truncate_journal
from nas.data.transforms import RandomResizedCrop, ResizeCenterCrop, normalize_uint8
from nas.genotype import Genotype, write_json_atomic
from nas.pretrain import FORMAT, VERSION, is_backbone_key
from nas.pretrain.imagenet import ImageFolderDataset, ImageNetLayout, find_imagenet, worker_error
from nas.pretrain.model import LGCNetClassifier, parameter_counts
from nas.runtime import (DistContext, EpochSampler, all_reduce_sum, capture_rng_state, init_distributed,
                         load_checkpoint, progress_bar, restore_rng_state, save_checkpoint, seed_everything,
                         shard_indices, teardown_distributed)
from nas.train.checkpoint import check_same_architecture, load_exact

SCHEDULES = ("cosine", "step")
RESULT_FORMAT = "nas-pretrain-result"

# PretrainConfig fields that decide the trajectory of a run: a resumed run must keep them.
TRAJECTORY_FIELDS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                     "warmup_epochs", "min_lr", "milestones", "gamma", "label_smoothing", "crop", "val_resize",
                     "scale_min", "head_channels", "dropout", "width_mult", "seed")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything one pre-training run needs besides the genotype. Defaults: the recipe above."""

    data_root: str
    out_dir: str
    val_labels: str | None = None
    epochs: int = 150
    batch_size: int = 256                 # global (split over torchrun processes)
    lr: float | None = None               # None: 0.1 * batch_size / 256
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-5
    schedule: str = "cosine"
    warmup_epochs: float = 5.0
    min_lr: float = 0.0
    milestones: tuple[int, ...] | None = None   # step schedule; None: 1/3, 2/3, 8/9 of the epochs
    gamma: float = 0.1
    label_smoothing: float = 0.1
    crop: int = 224
    val_resize: int | None = None         # None: round(crop / 0.875)
    scale_min: float = 0.08
    head_channels: int = 1024
    dropout: float = 0.0
    width_mult: float | None = None       # None: the genotype's
    seed: int = 0
    device: str | None = None
    workers: int = 8
    amp: bool | None = None               # None: on for CUDA
    channels_last: bool | None = None     # None: on for CUDA
    val_every: int = 1
    eval_batch_size: int | None = None    # per process; None: the training batch per process
    checkpoint_every: int | None = None
    stop_after: int | None = None
    log_every: int = 100
    resume: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.milestones is not None:
            object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if self.epochs < 1 or self.batch_size < 1 or self.val_every < 1 or self.log_every < 1:
            raise UserError("--epochs, --batch-size, --val-every and --log-every must be >= 1")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown --schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not self.warmup_epochs >= 0:
            raise UserError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.min_lr < self.base_lr:
            raise UserError(f"--min-lr must lie in [0, lr={self.base_lr:g}), got {self.min_lr}")
        if self.milestones is not None and (list(self.milestones) != sorted(set(self.milestones))
                                            or not all(0 < m <= self.epochs for m in self.milestones)):
            raise UserError(f"--milestones must be increasing epochs in 1..{self.epochs}, got {list(self.milestones)}")
        if not 0 < self.gamma <= 1:
            raise UserError(f"--gamma must lie in (0, 1], got {self.gamma}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.crop < 16:
            raise UserError(f"--crop must be at least 16 pixels (the backbone has stride 16), got {self.crop}")
        if self.val_resize is not None and self.val_resize < self.crop:
            raise UserError(f"--val-resize {self.val_resize} is smaller than --crop {self.crop}")
        if not 0 < self.scale_min <= 1:
            raise UserError(f"--scale-min must lie in (0, 1], got {self.scale_min}")
        if self.head_channels < 0 or not 0 <= self.dropout < 1:
            raise UserError("--head-channels must be >= 0 and --dropout in [0, 1)")
        if self.stop_after is not None and self.stop_after < 1:
            raise UserError(f"--stop-after must be >= 1, got {self.stop_after}")

    @property
    def base_lr(self) -> float:
        return float(self.lr) if self.lr is not None else 0.1 * self.batch_size / 256

    @property
    def val_resize_size(self) -> int:
        return int(self.val_resize) if self.val_resize is not None else int(round(self.crop / 0.875))

    @property
    def milestone_epochs(self) -> tuple[int, ...]:
        if self.milestones is not None:
            return tuple(self.milestones)
        return tuple(sorted({max(1, round(self.epochs * f)) for f in (1 / 3, 2 / 3, 8 / 9)}))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def trajectory(self) -> dict[str, Any]:
        d = self.to_dict()
        d["lr"], d["val_resize"] = self.base_lr, self.val_resize_size
        d["milestones"] = list(self.milestone_epochs) if self.schedule == "step" else None
        return {k: d[k] for k in TRAJECTORY_FIELDS}


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
class Progress:
    epoch: int = 0            # the epoch in progress (== epochs when finished)
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0     # training loss summed over this epoch's steps so far
    loss_count: int = 0
    log_sum: float = 0.0      # this process's loss summed since the last step record
    log_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


@torch.no_grad()
def evaluate_topk(model: nn.Module, dataset: ImageFolderDataset, *, device: torch.device,
                  ctx: DistContext, batch_size: int, workers: int = 0, channels_last: bool = False,
                  amp: bool = False, show_progress: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 accuracy and mean cross-entropy over all of ``dataset`` (summed over ranks)."""
    model.eval()
    part = Subset(dataset, shard_indices(len(dataset), ctx.rank, ctx.world_size))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=_loader_generator())
    hit1 = hit5 = loss_sum = 0.0
    count = 0
    with progress_bar(len(loader), "eval val", show_progress and ctx.is_main) as advance:
        for images, labels in _batches(loader):
            x = normalize_uint8(images.to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(x)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            hit1 += float(hits[:, 0].sum())
            hit5 += float(hits.any(dim=1).sum())
            count += labels.numel()
            advance(1)
    hit1, hit5, loss_sum, total = all_reduce_sum([hit1, hit5, loss_sum, count], ctx)
    total = max(1.0, total)
    return {"top1": hit1 / total, "top5": hit5 / total, "loss": loss_sum / total, "count": int(total)}


def _loader_generator() -> torch.Generator:
    """A DataLoader draws its workers' base seed from its generator each time it is iterated — from
    the global torch RNG when it has none, which would make the global stream (dropout) depend on
    how many loaders a run created, i.e. on where it was resumed. Our items draw their randomness
    from ``(seed, epoch, index)`` instead, so a fixed private generator is enough."""
    return torch.Generator().manual_seed(0)


def _batches(loader: DataLoader):
    """Iterate ``loader``; an error in a worker process comes back as its own one-line message."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except UserError as exc:
            raise worker_error(exc) from None
        yield batch


class _Run:
    def __init__(self, genotype: Genotype, cfg: PretrainConfig, layout: ImageNetLayout,
                 genotype_path: str | None, ctx: DistContext, log: Callable[[str], None]):
        self.cfg, self.ctx, self.layout = cfg, ctx, layout
        self.log = log if ctx.is_main else (lambda s: None)
        self.out = Path(cfg.out_dir)
        self.device = torch.device(ctx.device)
        cuda = self.device.type == "cuda"
        self.amp = cuda if cfg.amp is None else bool(cfg.amp and cuda)
        self.channels_last = cuda if cfg.channels_last is None else bool(cfg.channels_last)
        if cfg.batch_size % ctx.world_size:
            raise UserError(f"--batch-size {cfg.batch_size} does not divide over {ctx.world_size} processes")
        self.rank_batch = cfg.batch_size // ctx.world_size
        size = (cfg.crop, cfg.crop)
        self.train_ds = ImageFolderDataset(layout.train, RandomResizedCrop(size, scale=(cfg.scale_min, 1.0)),
                                           seed=cfg.seed)
        self.val_ds = ImageFolderDataset(layout.val, ResizeCenterCrop(cfg.val_resize_size, size))
        config = genotype.config if cfg.width_mult is None else genotype.config.replace(width_mult=float(cfg.width_mult))
        self.genotype = Genotype(genotype.arch, config, dict(genotype.meta))
        self.genotype_source = {"path": None if genotype_path is None else str(genotype_path),
                                "sha256": None if genotype_path is None else file_sha256(genotype_path)}
        self.steps_per_epoch = EpochSampler.steps_per_epoch(len(self.train_ds), self.rank_batch, ctx.world_size)
        if self.steps_per_epoch < 1:
            raise UserError(f"the ImageNet train folder holds {len(self.train_ds)} images, fewer than one batch "
                            f"of {cfg.batch_size}; lower --batch-size")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = min(self.total_steps, int(round(cfg.warmup_epochs * self.steps_per_epoch)))

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        model = LGCNetClassifier(self.genotype.config, self.genotype.arch, self.layout.num_classes,
                                 head_channels=cfg.head_channels, dropout=cfg.dropout)
        self.params = parameter_counts(model)
        self.unused: list[str] = unused_parameters(model, cfg.crop) if self.ctx.distributed else []
        if self.ctx.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.net: nn.Module = model
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=bool(self.unused))
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
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
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
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "progress": self.progress.to_dict(),
            "config": self.cfg.to_dict(),
            "trajectory": self.cfg.trajectory(),
            "history": self.history,
            "best": dict(self.best),
            "world_size": self.ctx.world_size,
        }

    def _save(self, name: str = "last.pt") -> None:
        """Every rank calls this; rank 0 writes the epoch's running loss summed over ranks."""
        local = (self.progress.loss_sum, self.progress.loss_count)
        if self.ctx.distributed:
            s, n = all_reduce_sum([self.progress.loss_sum, self.progress.loss_count], self.ctx)
            self.progress.loss_sum, self.progress.loss_count = s, int(n)
        if self.ctx.is_main:
            save_checkpoint(self.out / name, self._payload())
        self.progress.loss_sum, self.progress.loss_count = local
        self.ctx.barrier()

    def _resume(self, path: Path) -> None:
        raw = load_checkpoint(path)
        if raw.get("format") != FORMAT:
            raise UserError(f"{path} is not a nas pretrain checkpoint (no \"format\": \"{FORMAT}\")")
        if raw.get("version") != VERSION:
            raise UserError(f"checkpoint {path} has format version {raw.get('version')}; this nas reads {VERSION}")
        found = Genotype.from_dict(raw.get("genotype", {}), source=f"the genotype inside checkpoint {path}")
        check_same_architecture(self.genotype, found, "--arch (with this run's --width-mult)", f"checkpoint {path}")
        old, new = raw.get("trajectory", {}), self.cfg.trajectory()
        changed = [f"{k}: {old.get(k)} -> {new[k]}" for k in new if old.get(k) != new[k]]
        if changed:
            raise UserError(f"cannot resume {path} with different training settings ({'; '.join(changed)}); "
                            f"use the original settings or a new --out")
        was, now = raw.get("data", {}), self.layout.describe()
        for k in ("classes_sha256", "train_items"):
            if was.get(k) != now[k]:
                what = "class list" if k == "classes_sha256" else "number of training images"
                raise UserError(f"cannot resume {path}: the ImageNet {what} changed since it was written "
                                f"({was.get('train_items')} -> {now['train_items']} images, "
                                f"{was.get('num_classes')} -> {now['num_classes']} classes)")
        if raw.get("world_size", 1) != self.ctx.world_size:
            raise UserError(f"checkpoint {path} was written by {raw.get('world_size')} processes, this run has "
                            f"{self.ctx.world_size}; resume with the same number")
        load_exact(self.model, raw["model"], f"checkpoint {path}")
        self.optimizer.load_state_dict(raw["optimizer"])
        self.scheduler.load_state_dict(raw["scheduler"])
        self.scaler.load_state_dict(raw["scaler"])
        restore_rng_state(raw["rng"])
        self.progress = Progress(**raw["progress"])
        if not self.ctx.is_main:  # the saved running loss is the sum over ranks; count it once
            self.progress.loss_sum, self.progress.loss_count = 0.0, 0
        self.history = list(raw.get("history", []))
        self.best = dict(raw.get("best", {"top1": None, "epoch": None}))

    # ------------------------------------------------------------------ loop
    def run(self) -> PretrainResult:
        cfg = self.cfg
        last = self.out / "last.pt"
        if last.exists() and not cfg.resume:
            raise UserError(f"{self.out} already holds a run ({last}); pass --resume to continue it "
                            f"or choose another --out")
        if cfg.resume and not last.exists():
            raise UserError(f"--resume: {last} does not exist; start the run without --resume")
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        journal = Journal(self.out / "log.jsonl") if self.ctx.is_main else None
        try:
            if cfg.resume:
                self._resume(last)
                if journal is not None:
                    journal = self._trim_log(journal)
                self._record(journal, {"event": "resume", "checkpoint": str(last), **self.progress.to_dict()})
                self.log(f"resumed {last} at epoch {self.progress.epoch + 1}, step "
                         f"{self.progress.step_in_epoch}/{self.steps_per_epoch}")
            else:
                if self.ctx.is_main:
                    self.genotype.save(self.out / "genotype.json")
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
            finished = self._loop(journal)
            result = None
            if finished:
                result = self._result()
                if self.ctx.is_main:
                    write_json_atomic(self.out / "result.json", result)
        finally:
            if journal is not None:
                journal.close()
        return PretrainResult(self.out, finished, self.progress, result, self.ctx.is_main)

    def _trim_log(self, journal: Journal) -> Journal:
        """Drop records written past the checkpoint (just before a kill); reopen the log."""
        journal.close()
        p = self.progress

        def keep(r: dict[str, Any]) -> bool:
            if r.get("event") == "epoch":
                return r.get("epoch", 0) <= p.epoch
            if r.get("event") == "step":
                return r.get("global_step", 0) <= p.global_step
            return True
        truncate_journal(journal.path, keep)
        return Journal(journal.path)

    def _record(self, journal: Journal | None, rec: dict[str, Any]) -> None:
        if journal is not None:
            journal.append({"time": time.time(), **rec})

    def _stop_due(self) -> bool:
        return self.cfg.stop_after is not None and self.progress.global_step >= self.cfg.stop_after

    def _eta(self) -> float | None:
        """Seconds left, from this process's mean time per training step so far (evaluation aside)."""
        done = self.progress.global_step - self._steps_at_start
        if done <= 0:
            return None
        return (time.time() - self._t_start) / done * (self.total_steps - self.progress.global_step)

    def _loop(self, journal: Journal | None) -> bool:
        cfg, p = self.cfg, self.progress
        self._t_start, self._steps_at_start = time.time(), p.global_step
        while p.epoch < cfg.epochs:
            t0 = time.time()
            if self._stop_due() or not self._train_epoch(journal):
                self._save()
                self._record(journal, {"event": "stopped", **p.to_dict()})
                self.log(f"stopped after {p.global_step} steps (--stop-after); continue with --resume")
                return False
            rec = self._end_epoch(time.time() - t0)
            self._record(journal, rec)  # logged before the checkpoint: a resume trims what it lacks
            self._save()
            if rec["best"] and self.ctx.is_main:
                tmp = self.out / ".best.pt.tmp"
                shutil.copyfile(self.out / "last.pt", tmp)
                tmp.replace(self.out / "best.pt")
            msg = f"epoch {rec['epoch']}/{cfg.epochs}  loss {rec['train_loss']:.4f}  lr {rec['lr']:.4g}"
            if rec.get("val_top1") is not None:
                msg += f"  val top-1 {100 * rec['val_top1']:.2f}%  top-5 {100 * rec['val_top5']:.2f}%"
            msg += f"  {rec['images_per_s']:.0f} img/s"
            if p.epoch < cfg.epochs:
                msg += f"  eta {format_duration(rec['eta_s'])}"
            self.log(msg)
        self._record(journal, {"event": "done", "global_step": p.global_step, "best": self.best})
        return True

    def _train_epoch(self, journal: Journal | None) -> bool:
        """Run the rest of the current epoch; False when ``stop_after`` cut it short."""
        cfg, p, ctx = self.cfg, self.progress, self.ctx
        sampler = EpochSampler(len(self.train_ds), self.rank_batch, seed=cfg.seed, epoch=p.epoch,
                               rank=ctx.rank, world_size=ctx.world_size, start_step=p.step_in_epoch)
        loader = DataLoader(self.train_ds, batch_size=self.rank_batch, sampler=sampler,
                            num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=False, drop_last=False, generator=_loader_generator())
        self.net.train()
        # running sums on the device: one host sync per log interval, not per step. The epoch's sum
        # continues from the checkpoint's, so a resumed run adds the same numbers in the same order.
        loss_acc = torch.tensor(p.loss_sum, dtype=torch.float64, device=self.device)
        interval_acc = torch.tensor(p.log_sum, dtype=torch.float64, device=self.device)
        t_log = time.time()
        plain_log = not sys.stderr.isatty() and cfg.show_progress
        remaining = self.steps_per_epoch - p.step_in_epoch
        self._epoch_steps = 0
        with progress_bar(remaining, f"epoch {p.epoch + 1}/{cfg.epochs}", cfg.show_progress and ctx.is_main) as advance:
            for images, labels in _batches(loader):
                loss = self._step(images, labels)
                loss_acc += loss
                interval_acc += loss
                p.log_count += 1
                self._epoch_steps += 1
                p.step_in_epoch += 1
                p.global_step += 1
                p.loss_count += 1
                at_end = p.step_in_epoch >= self.steps_per_epoch
                if p.global_step % cfg.log_every == 0:
                    mean = float(interval_acc) / p.log_count
                    now = time.time()
                    ips = min(p.log_count, self._epoch_steps) * cfg.batch_size / max(1e-9, now - t_log)
                    eta = self._eta()
                    lr = float(self.optimizer.param_groups[0]["lr"])
                    self._record(journal, {"event": "step", "epoch": p.epoch + 1, "global_step": p.global_step,
                                           "loss": mean, "lr": lr, "images_per_s": ips, "eta_s": eta})
                    if plain_log:
                        self.log(f"epoch {p.epoch + 1} step {p.step_in_epoch}/{self.steps_per_epoch}  loss {mean:.4f}  "
                                 f"lr {lr:.4g}  {ips:.0f} img/s  eta {format_duration(eta)}")
                    advance(1, loss=mean, eta=format_duration(eta))
                    interval_acc.zero_()
                    p.log_count, t_log = 0, now
                else:
                    advance(1)
                save_now = bool(cfg.checkpoint_every and p.global_step % cfg.checkpoint_every == 0)
                if at_end or self._stop_due() or save_now:
                    p.loss_sum, p.log_sum = float(loss_acc), float(interval_acc)
                if at_end:
                    break
                if self._stop_due():
                    return False
                if save_now:
                    self._save()
        return True

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = normalize_uint8(images.to(self.device, non_blocking=True))
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            logits = self.net(x)
        loss = self.criterion(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach().double()

    def _end_epoch(self, seconds: float) -> dict[str, Any]:
        cfg, p = self.cfg, self.progress
        loss_sum, loss_count = all_reduce_sum([p.loss_sum, p.loss_count], self.ctx)
        epoch = p.epoch + 1
        steps = self._epoch_steps  # fewer than an epoch when it was resumed mid-way
        rec: dict[str, Any] = {"event": "epoch", "epoch": epoch, "global_step": p.global_step,
                               "train_loss": loss_sum / max(1, loss_count),
                               "lr": float(self.optimizer.param_groups[0]["lr"]),
                               "seconds": round(seconds, 3),
                               "images_per_s": steps * cfg.batch_size / max(1e-9, seconds),
                               "val_top1": None, "val_top5": None, "val_loss": None}
        if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
            r = evaluate_topk(self.model, self.val_ds, device=self.device, ctx=self.ctx,
                              batch_size=cfg.eval_batch_size or self.rank_batch, workers=cfg.workers,
                              channels_last=self.channels_last, amp=self.amp,
                              show_progress=cfg.show_progress)
            rec.update(val_top1=r["top1"], val_top5=r["top5"], val_loss=r["loss"], val_items=r["count"])
        p.epoch, p.step_in_epoch, p.loss_sum, p.loss_count = epoch, 0, 0.0, 0
        rec["best"] = rec["val_top1"] is not None and (self.best["top1"] is None or rec["val_top1"] > self.best["top1"])
        if rec["best"]:
            self.best = {"top1": rec["val_top1"], "top5": rec["val_top5"], "epoch": epoch}
        rec["eta_s"] = self._eta() if epoch < cfg.epochs else 0.0
        self.history.append(rec)
        return rec

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


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl``."""
    return list(read_journal(path))


__all__ = ["PretrainConfig", "PretrainResult", "RESULT_FORMAT", "SCHEDULES", "evaluate_topk", "format_duration",
           "lr_lambda", "pretrain_genotype", "read_log", "unused_parameters"]
