"""The epoch-based training run shared by ``nas train`` (:mod:`nas.train.trainer`) and ``nas
pretrain`` (:mod:`nas.pretrain.trainer`): one implementation of what both do the same way.

:class:`EpochRun` owns the run folder (``last.pt``, ``best.pt``, ``log.jsonl``, ``genotype.json``),
the refusal to overwrite a run without ``--resume``, exact resume (model, optimiser, scheduler,
gradient scaler, every RNG, the position in the epoch; the log cut back to the checkpoint), the
epoch loop with ``stop_after`` and ``checkpoint_every``, the AMP + channels-last + gradient-scaler
step and the placement of the model on its device (SyncBatchNorm, DistributedDataParallel told
about parameters without gradient). The epoch's running loss is kept per process and summed over
processes whenever it is saved or reported.

A subclass sets ``train_ds``, ``genotype`` and ``genotype_source`` in its ``__init__`` (then calls
:meth:`EpochRun._count_steps`) and supplies what differs between the two commands:

- ``_build`` — the model (handed to :meth:`EpochRun._place`), optimiser, scheduler, criterion,
  a fresh ``progress`` (a :class:`Progress`, or a subclass with more counters), ``history`` and
  ``best``;
- ``_payload`` / ``_resume`` — the checkpoint's fields and their checks (the shared training state
  is :meth:`EpochRun._train_state` / :meth:`EpochRun._restore`);
- ``_start`` — the ``start`` record (and anything else a fresh run logs);
- ``_inputs`` — a training batch's images on the device (pretrain normalises uint8 there);
- ``_count`` / ``_settle`` — adding a step's loss to the running sums (and any step records);
- ``_epoch_fields`` / ``_validate`` / ``_judge`` — the epoch record: throughput and placeholder
  fields, the validation scores, the epoch-end bookkeeping (``rec["best"]``, ``self.best``);
- ``_epoch_message`` / ``_done_fields`` / ``_finish`` — the epoch's log line, the ``done`` record's
  best-score field and the run's return value.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from latbench.errors import UserError
from latbench.files import Journal, file_sha256, read_journal, truncate_journal
from nas.runtime import (DistContext, EpochSampler, all_reduce_sum, capture_rng_state, progress_bar,
                         restore_rng_state, save_checkpoint, unused_parameters)
from nas.train.checkpoint import load_exact


@dataclass
class Progress:
    epoch: int = 0            # the epoch in progress (== epochs when finished)
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0     # training loss summed over this epoch's steps so far (this rank)
    loss_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def genotype_source(path: str | None) -> dict[str, Any]:
    """Which genotype file a run started from (path and SHA-256; both None without a file)."""
    return {"path": None if path is None else str(path),
            "sha256": None if path is None else file_sha256(path)}


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl``."""
    return list(read_journal(path))


class EpochRun:
    """One training run of ``cfg.epochs`` epochs in ``cfg.out_dir``; every process builds one."""

    #: what the refusals call a run in ``cfg.out_dir`` ("run", "search")
    kind = "run"
    #: the folder of ``last.pt`` / ``best.pt`` inside ``cfg.out_dir``
    checkpoint_dir = "."

    # set by subclasses (see the module's docstring; ``genotype`` None: none to save at the start)
    train_ds: Any
    genotype: Any
    genotype_source: dict[str, Any]
    progress: Progress
    history: list[dict[str, Any]]
    best: Any

    def __init__(self, cfg: Any, ctx: DistContext, log: Callable[[str], None]):
        self.cfg, self.ctx = cfg, ctx
        self.log = log if ctx.is_main else (lambda s: None)
        self.out = Path(cfg.out_dir)
        self.device = torch.device(ctx.device)
        cuda = self.device.type == "cuda"
        self.amp = cuda if cfg.amp is None else bool(cfg.amp and cuda)
        self.channels_last = cuda if cfg.channels_last is None else bool(cfg.channels_last)
        if cfg.batch_size % ctx.world_size:
            raise UserError(f"--batch-size {cfg.batch_size} does not divide over {ctx.world_size} processes")
        self.rank_batch = cfg.batch_size // ctx.world_size

    def _count_steps(self, training_data: str) -> None:
        """``steps_per_epoch`` and ``total_steps``; ``training_data`` says what the training split
        holds (e.g. "the synthetic training split has 3 items") when it is too small for a batch."""
        self.steps_per_epoch = EpochSampler.steps_per_epoch(len(self.train_ds), self.rank_batch, self.ctx.world_size)
        if self.steps_per_epoch < 1:
            raise UserError(f"{training_data}, fewer than one batch of {self.cfg.batch_size}; lower --batch-size")
        self.total_steps = self.steps_per_epoch * self.cfg.epochs

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        raise NotImplementedError

    def _place(self, model: nn.Module, probe_size: int | tuple[int, int]) -> None:
        """``model`` (built on the CPU) onto the device: SyncBatchNorm on multi-GPU runs,
        channels-last when on; ``self.model`` is it, ``self.net`` what training calls (under
        DDP its wrapper, told about the parameters one forward pass of a ``probe_size`` input
        leaves without gradient: ``self.unused``); and the AMP gradient scaler."""
        distributed = self.ctx.distributed
        self.unused: list[str] = unused_parameters(model, probe_size) if distributed else []
        if distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.net: nn.Module = model
        if distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=bool(self.unused))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    # ------------------------------------------------------------------ checkpoints
    def _payload(self) -> dict[str, Any]:
        raise NotImplementedError

    def _train_state(self) -> dict[str, Any]:
        """The checkpoint entries :meth:`_restore` reads back (in the checkpoint's order)."""
        return {"model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": capture_rng_state(),
                "progress": self.progress.to_dict()}

    def _save(self, name: str = "last.pt") -> None:
        """Every rank calls this; rank 0 writes. The epoch's running loss is summed over ranks first,
        so the file holds the global partial sum (restored on rank 0 only)."""
        local = (self.progress.loss_sum, self.progress.loss_count)
        if self.ctx.distributed:
            self.progress.loss_sum, self.progress.loss_count = self._global_loss()
        if self.ctx.is_main:
            save_checkpoint(self._checkpoint(name), self._payload())
        self.progress.loss_sum, self.progress.loss_count = local
        self.ctx.barrier()

    def _global_loss(self) -> tuple[float, int]:
        loss_sum, count = all_reduce_sum([self.progress.loss_sum, self.progress.loss_count], self.ctx)
        return loss_sum, int(count)

    def _resume(self, path: Path) -> None:
        raise NotImplementedError

    def _check_trajectory(self, raw: dict[str, Any], path: Path, defaults: dict[str, Any] | None = None) -> None:
        """Refuse to resume a checkpoint written with other trajectory settings; ``defaults``: what
        a field meant in checkpoints written before it existed."""
        defaults = defaults or {}
        old, new = raw.get("trajectory", {}), self.cfg.trajectory()
        changed = [f"{k}: {old.get(k, defaults.get(k))} -> {new[k]}" for k in new
                   if old.get(k, defaults.get(k)) != new[k]]
        if changed:
            raise UserError(f"cannot resume {path} with different training settings ({'; '.join(changed)}); "
                            f"use the original settings or a new --out")

    def _restore(self, raw: dict[str, Any], path: Path) -> None:
        """Load the training state of checkpoint ``raw`` (written by as many processes as this run has)."""
        if raw.get("world_size", 1) != self.ctx.world_size:
            raise UserError(f"checkpoint {path} was written by {raw.get('world_size')} processes, this run has "
                            f"{self.ctx.world_size}; resume with the same number")
        load_exact(self.model, raw["model"], f"checkpoint {path}")
        self.optimizer.load_state_dict(raw["optimizer"])
        self.scheduler.load_state_dict(raw["scheduler"])
        self.scaler.load_state_dict(raw["scaler"])
        restore_rng_state(raw["rng"])
        self.progress = type(self.progress)(**raw["progress"])
        if not self.ctx.is_main:  # the saved running loss is the sum over ranks; count it once
            self.progress.loss_sum, self.progress.loss_count = 0.0, 0
        self.history = list(raw.get("history", []))

    def _checkpoint(self, name: str) -> Path:
        return self.out / self.checkpoint_dir / name

    # ------------------------------------------------------------------ run
    def run(self) -> Any:
        cfg = self.cfg
        last = self._checkpoint("last.pt")
        if last.exists() and not cfg.resume:
            raise UserError(f"{self.out} already holds a {self.kind} ({last}); pass --resume to continue it "
                            f"or choose another --out")
        if cfg.resume and not last.exists():  # as nas search: a resume needs a run to continue
            raise UserError(f"--resume: {last} does not exist (no checkpoint at {self.out}); "
                            f"start a new run without --resume")
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        journal = Journal(self.out / "log.jsonl") if self.ctx.is_main else None
        try:
            if cfg.resume:
                self._resume(last)
                if journal is not None:
                    journal = self._trim_log(journal)
                self._record(journal, {"event": "resume", "checkpoint": str(last), **self.progress.to_dict()})
                self.log(self._resume_message(last))
            else:
                if self.ctx.is_main and self.genotype is not None:
                    self.genotype.save(self.out / "genotype.json")
                self._start(journal)
            return self._finish(self._loop(journal))
        finally:
            if journal is not None:
                journal.close()

    def _start(self, journal: Journal | None) -> None:
        """A fresh run's first records (``start``, ...) and log lines."""
        raise NotImplementedError

    def _finish(self, finished: bool) -> Any:
        """What :meth:`run` returns (after the loop; the log is still open)."""
        raise NotImplementedError

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

    def _loop(self, journal: Journal | None) -> bool:
        """Train to the end (True) or until ``stop_after`` (False, saved and logged)."""
        cfg, p = self.cfg, self.progress
        while p.epoch < cfg.epochs:
            t0 = time.time()
            if self._stop_due() or not self._train_epoch(journal):
                self._save()
                self._record(journal, {"event": "stopped", **p.to_dict()})
                message = self._stop_message()
                if message is not None:
                    self.log(message)
                return False
            rec = self._end_epoch(time.time() - t0)
            self._record(journal, rec)  # logged before the checkpoint: a resume trims what it lacks
            self._save()
            if rec.get("best") and self.ctx.is_main:
                tmp = self._checkpoint(".best.pt.tmp")
                shutil.copyfile(self._checkpoint("last.pt"), tmp)
                tmp.replace(self._checkpoint("best.pt"))
            message = self._epoch_message(rec)
            if message is not None:
                self.log(message)
        self._record(journal, {"event": "done", "global_step": p.global_step, **self._done_fields()})
        return True

    def _resume_message(self, last: Path) -> str:
        return f"resumed {last} at epoch {self.progress.epoch + 1}, step {self.progress.step_in_epoch}/" \
               f"{self.steps_per_epoch}"

    def _stop_message(self) -> str | None:
        """The log line of a run stopped by ``stop_after`` (None: none)."""
        return f"stopped after {self.progress.global_step} steps (--stop-after); continue with --resume"

    def _epoch_message(self, rec: dict[str, Any]) -> str | None:
        """The epoch's log line (None: none)."""
        raise NotImplementedError

    def _done_fields(self) -> dict[str, Any]:
        """The ``done`` record's best-score field."""
        raise NotImplementedError

    # ------------------------------------------------------------------ epoch
    def _loader_generator(self) -> torch.Generator | None:
        """The training DataLoader's generator (None: it draws from the global torch RNG)."""
        return None

    def _batches(self, sampler: EpochSampler) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This process's training batches of ``sampler``'s part of the epoch."""
        return DataLoader(self.train_ds, batch_size=self.rank_batch, sampler=sampler,
                          num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda",
                          drop_last=False, generator=self._loader_generator())

    def _train_epoch(self, journal: Journal | None) -> bool:
        """Run the rest of the current epoch; False when ``stop_after`` cut it short."""
        cfg, p, ctx = self.cfg, self.progress, self.ctx
        sampler = EpochSampler(len(self.train_ds), self.rank_batch, seed=cfg.seed, epoch=p.epoch,
                               rank=ctx.rank, world_size=ctx.world_size, start_step=p.step_in_epoch)
        batches = self._batches(sampler)
        self.net.train()
        self._begin_epoch()
        remaining = self.steps_per_epoch - p.step_in_epoch
        with progress_bar(remaining, f"epoch {p.epoch + 1}/{cfg.epochs}", cfg.show_progress and ctx.is_main) as advance:
            for images, labels in batches:
                loss = self._step(images, labels)
                p.step_in_epoch += 1
                p.global_step += 1
                p.loss_count += 1
                self._count(loss, journal, advance)
                at_end = p.step_in_epoch >= self.steps_per_epoch
                save_now = bool(cfg.checkpoint_every and p.global_step % cfg.checkpoint_every == 0)
                if at_end or self._stop_due() or save_now:
                    self._settle()
                if at_end:
                    break
                if self._stop_due():
                    return False
                if save_now:
                    self._save()
        return True

    def _begin_epoch(self) -> None:
        """Before the (rest of the) epoch's first step."""

    def _count(self, loss: torch.Tensor, journal: Journal | None, advance: Callable[..., None]) -> None:
        """Add a step's loss to the running sums (the step counters are already advanced) and
        advance the progress bar."""
        raise NotImplementedError

    def _settle(self) -> None:
        """Bring ``progress.loss_sum`` (and any other running sum) up to date before it is saved
        or reported."""

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A training batch's images as the network takes them, on the device."""
        return images.to(self.device, non_blocking=True)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimiser step (float16 autocast with gradient scaling when AMP is on); the loss."""
        x = self._inputs(images)
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
        return loss.detach()

    def _end_epoch(self, seconds: float) -> dict[str, Any]:
        """The epoch's record (validated every ``val_every`` epochs and after the last); the
        progress moves to the next epoch."""
        cfg, p = self.cfg, self.progress
        loss_sum, loss_count = self._global_loss()
        epoch = p.epoch + 1
        rec: dict[str, Any] = {"event": "epoch", "epoch": epoch, "global_step": p.global_step,
                               "train_loss": loss_sum / max(1, loss_count),
                               "lr": float(self.optimizer.param_groups[0]["lr"]),
                               "seconds": round(seconds, 3), **self._epoch_fields(seconds)}
        if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
            rec.update(self._validate())
        p.epoch, p.step_in_epoch, p.loss_sum, p.loss_count = epoch, 0, 0.0, 0
        self._judge(rec)
        self.history.append(rec)
        return rec

    def _epoch_fields(self, seconds: float) -> dict[str, Any]:
        """The epoch record's fields after ``seconds`` (the validation scores as None)."""
        raise NotImplementedError

    def _validate(self) -> dict[str, Any]:
        """The validation scores of the epoch record."""
        raise NotImplementedError

    def _judge(self, rec: dict[str, Any]) -> None:
        """Epoch-end bookkeeping: set ``rec["best"]`` (whether ``best.pt`` is replaced), update
        ``self.best``, add any late fields."""
        raise NotImplementedError


__all__ = ["EpochRun", "Progress", "genotype_source", "read_log"]
