"""The settings of one ``nas pretrain`` run: :class:`PretrainConfig` (the recipe's defaults, checked on
construction), the fields a resumed run must keep, and ``--workers``' default. The recipe itself
is described in :mod:`nas.pretrain.trainer`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from latbench.errors import UserError

SCHEDULES = ("cosine", "step")

# PretrainConfig fields that decide the trajectory of a run: a resumed run must keep them.
TRAJECTORY_FIELDS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                     "warmup_epochs", "min_lr", "milestones", "gamma", "label_smoothing", "crop", "val_resize",
                     "scale_min", "head_channels", "dropout", "width_mult", "seed")


#: The most data-loading processes ``nas pretrain`` starts per training process by default.
MAX_DEFAULT_WORKERS = 8


def default_workers(cpus: int | None = None, local_processes: int | None = None) -> int:
    """``--workers``' default: the CPU cores this process may run on (its affinity mask, else the
    machine's count), shared among the training processes torchrun starts on this machine
    (``LOCAL_WORLD_SIZE``), at most :data:`MAX_DEFAULT_WORKERS`. It never asks for more workers than
    cores, which is what makes PyTorch's DataLoader warn (and a small machine run out of memory)."""
    import os

    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    if local_processes is None:
        try:
            local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        except ValueError:
            local_processes = 1
    return max(0, min(MAX_DEFAULT_WORKERS, cpus // max(1, local_processes)))


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



__all__ = ["MAX_DEFAULT_WORKERS", "PretrainConfig", "SCHEDULES", "TRAJECTORY_FIELDS", "default_workers"]
