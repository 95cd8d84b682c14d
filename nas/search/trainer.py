"""The search loop: single-level optimisation of the supernet's weights and α (paper eq. 10, IV-A).

Every step, on one batch:

1. λ = schedule(step); θ' = GGM(θ); one Gumbel sample G per edge (shared by the whole batch and,
   under DDP, by every process: one architecture sample per global step);
   Z = softmax((θ' + G)/λ);
2. logits = supernet(x, Z); loss = CE(logits, y; ignore 255) + β·log(LAT(Z)) (LAT from the LUT, µs);
3. one backward pass; SGD steps the weights (cosine lr, per step), Adam steps θ and the GGM's
   weights — both from the same batch (single-level, as the paper; not DARTS' bilevel split).

Mixed precision (bf16 autocast, or fp16 with a gradient scaler) and channels-last apply on CUDA
only. Multi-process training uses ``torchrun`` (DistributedDataParallel over the supernet, θ and the
GGM together; NCCL on GPUs, gloo on CPU processes); ``batch_size`` is the global batch.

**Exact resume.** A checkpoint (``OUT/checkpoints/last.pt``, written atomically at the end of every
epoch, every ``checkpoint_every`` steps and when a run is stopped) holds the supernet, θ, the GGM,
both optimisers, the lr scheduler, the gradient scaler, the Gumbel generator, every global RNG
(:func:`nas.runtime.capture_rng_state`), the epoch / step position and the running epoch
statistics. Data order is a pure function of (seed, epoch) (:class:`nas.runtime.EpochSampler`, the
same sampler as ``nas train``) and augmentation of (seed, epoch, index) (:mod:`nas.data`), so a
resumed run skips exactly the batches already seen and reproduces the uninterrupted run bit for bit
(same device, same thread count). The JSON-lines logs (:class:`latbench.files.Journal`) are
truncated to the checkpoint's position on resume.

The epoch loop is ``nas train``'s and ``nas pretrain``'s (:class:`nas.train.loop.EpochRun`: the
refusal to overwrite a run without ``--resume``, resume, journal trimming, progress, stop-after,
periodic checkpoints); processes, checkpoint files, RNG capture and data order are
:mod:`nas.runtime`'s; the step is :mod:`nas.search.step`'s. What is the search's own is here: its
checkpoint (format unchanged), its two logs (``steps.jsonl`` per step, ``log.jsonl`` per epoch),
its epoch record and the genotype it derives at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from latbench.errors import UserError
from latbench.files import FileLock, Journal, atomic_write_text, read_journal, truncate_journal
from nas.memory import check_network_fits
from nas.runtime import (DistContext, all_reduce_sum, capture_rng_state, init_distributed, restore_rng_state,
                         seed_everything, teardown_distributed)
from nas.search.arch_params import entropy
from nas.search.config import SearchConfig
from nas.search.derive import (CHECKPOINT_FORMAT, arch_probabilities, derive_architecture, load_checkpoint,
                               make_genotype)
from nas.search.latency import LatencyTable, load_latency_table
from nas.search.step import SearchModel, SearchStep, make_optimizers, resolve_amp, table_on
from nas.train.loop import EpochRun, Progress

CHECKPOINT_VERSION = 2  # 2: every RNG under "rng" (nas.runtime.capture_rng_state); 1: "torch_rng"/"cuda_rng"


@dataclass(frozen=True)
class RunOptions:
    out: str
    device: str | None = None          # None: cuda:LOCAL_RANK if available, else cpu
    workers: int = 0
    progress: bool = True
    resume: bool = False
    stop_after_steps: int | None = None  # stop (with a checkpoint) after this global step
    plots: bool = True
    log: Callable[[str], None] | None = None


@dataclass
class SearchResult:
    out: Path
    genotype_path: Path | None
    checkpoint: Path
    global_step: int
    epoch: int
    finished: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def build_dataset(config: SearchConfig):
    from nas.data import make_dataset

    res = config.lut.resolution
    assert res is not None
    crop = config.data.crop or res
    name = config.data.dataset
    # random scale 0.5–2.0 relative to the search resolution (the deployed input size, e.g. 769x1537
    # for 1024x2048 Cityscapes frames), flip, crop
    ds = make_dataset(name, config.data.root, "train", crop=crop, augment=True, seed=config.seed,
                      length=config.data.length, resize=res,
                      num_classes=config.space.num_classes if name == "synthetic" else None)
    if ds.num_classes != config.space.num_classes:
        raise UserError(f"{name} has {ds.num_classes} classes but the search space has "
                        f"num_classes={config.space.num_classes}")
    return ds


@dataclass(frozen=True)
class _LoopSettings:
    """What the shared epoch loop reads from ``cfg``, from the search's configuration and run options."""

    out_dir: str
    epochs: int
    batch_size: int
    seed: int
    checkpoint_every: int
    resume: bool
    workers: int
    show_progress: bool
    stop_after: int | None
    amp: Any = None
    channels_last: Any = None


class SearchRun:
    """One search (fresh or resumed) in ``run.out``; call :meth:`run`."""

    def __init__(self, config: SearchConfig, run: RunOptions, table: LatencyTable | None = None,
                 lut_identity: dict[str, Any] | None = None):
        self.config = config
        self.opts = run
        self.out = Path(run.out)
        self.ckpt_path = self.out / "checkpoints" / "last.pt"
        self.table = table
        self.lut_identity = lut_identity

    def run(self) -> SearchResult:
        d = init_distributed(self.opts.device)
        lock = None
        try:
            if d.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                lock = FileLock(self.out / ".search.lock", purpose="a search")
                lock.acquire()
            epochs = _SearchEpochs(self, d)
            try:
                return epochs.run()
            finally:
                epochs.close_steps_log()
        finally:
            if lock is not None:
                lock.release()
            teardown_distributed(d)


class _SearchEpochs(EpochRun):
    """The search on the shared epoch loop: what differs from training is the model and step
    (:mod:`nas.search.step`), the checkpoint's content, the two logs and the end (a genotype)."""

    kind = "search"
    checkpoint_dir = "checkpoints"
    genotype = None  # derived at the end, not given at the start

    def __init__(self, search: SearchRun, ctx: DistContext):
        o = search.opts
        c = search.config
        settings = _LoopSettings(out_dir=str(search.out), epochs=c.epochs, batch_size=c.batch_size, seed=c.seed,
                                 checkpoint_every=c.checkpoint_every, resume=o.resume, workers=o.workers,
                                 show_progress=o.progress, stop_after=o.stop_after_steps)
        if c.batch_size % ctx.world_size:
            raise UserError(f"batch size {c.batch_size} does not split evenly over {ctx.world_size} processes")
        super().__init__(settings, ctx, o.log or (lambda msg: print(msg, file=sys.stderr)))
        self.search = search
        self.config = c
        self.progress = Progress()
        self.acc = _new_acc()
        self.history = []
        self.best = None
        self.steps_log: Journal | None = None

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        """The latency table (a resumed search's own), the data, the model and its optimisers."""
        s, ctx, device = self.search, self.ctx, self.device
        self.raw = load_checkpoint(s.ckpt_path, resume=True) if self.cfg.resume else None
        if self.raw is not None:
            s.table = LatencyTable.from_state_dict(self.raw["latency"])
            s.lut_identity = dict(self.raw.get("lut") or {})
        elif s.table is None:
            s.table, s.lut_identity = load_latency_table(s.config.lut, s.config.space)
        if s.config.lut.resolution is None:  # the LUT's only resolution, chosen by the loader
            s.config = s.config.replace(lut=dataclasses.replace(s.config.lut, resolution=s.table.resolution))
        cfg = self.config = s.config
        check_network_fits(cfg.space.search_config(), None, ctx.device, batch=self.rank_batch,
                           resolution=cfg.data.crop or cfg.lut.resolution, training=True,
                           what="training the supernet")  # before any allocation
        self.train_ds = build_dataset(cfg)
        self._count_steps(f"the training set has {len(self.train_ds)} items")
        seed_everything(cfg.seed)  # model and optimisers: the same on every process
        self.model = SearchModel(cfg, torch.Generator().manual_seed(cfg.seed + 1))
        self.gumbel_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.amp_dtype = resolve_amp(cfg, device)
        self.channels_last = device.type == "cuda" if cfg.channels_last == "auto" else cfg.channels_last == "on"
        self.model.to(device)
        if self.channels_last:
            self.model.supernet.to(memory_format=torch.channels_last)
        self.opt_w, self.opt_a, self.scheduler = make_optimizers(self.model, cfg, self.total_steps)
        self.optimizer = self.opt_w  # what the shared loop reports the learning rate of
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _place_and_describe(self) -> None:
        """DDP over the whole search model, the step, and ``config.json`` (every run, fresh or resumed)."""
        ctx, device, cfg, s = self.ctx, self.device, self.config, self.search
        self.net: nn.Module = self.model
        if ctx.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.step_fn = SearchStep(self.model, self.net, s.table, cfg, self.opt_w, self.opt_a, self.scaler,
                                  self.gumbel_gen, device, self.amp_dtype, self.channels_last)
        if ctx.is_main:
            atomic_write_text(self.out / "config.json", json.dumps(
                {"search": cfg.to_dict(), "lut": s.lut_identity, "dataset": self.train_ds.info.to_dict(),
                 "world_size": ctx.world_size, "device": str(device),
                 "amp": str(self.amp_dtype) if self.amp_dtype else "off", "channels_last": self.channels_last},
                indent=2) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def _payload(self) -> dict[str, Any]:
        m, p, s = self.model, self.progress, self.search
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(), "lut": s.lut_identity, "latency": s.table.state_dict(),
            "dataset": self.train_ds.info.to_dict(),
            "model": m.supernet.state_dict(), "arch": m.arch.state_dict(), "ggm": m.ggm.state_dict(),
            "opt_w": self.opt_w.state_dict(), "opt_a": self.opt_a.state_dict(), "sched_w": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "gumbel_rng": self.gumbel_gen.get_state(), "rng": capture_rng_state(),
            "epoch": p.epoch, "step_in_epoch": p.step_in_epoch, "global_step": p.global_step,
            "steps_per_epoch": self.steps_per_epoch, "acc": dict(self.acc),
        }

    def _resume(self, path: Path) -> None:
        raw, m = self.raw, self.model
        try:  # a checkpoint is a file from anywhere: what does not fit is one line, not a traceback
            m.supernet.load_state_dict(raw["model"])
            m.arch.load_state_dict(raw["arch"])
            m.ggm.load_state_dict(raw["ggm"])
            self.opt_w.load_state_dict(raw["opt_w"])
            self.opt_a.load_state_dict(raw["opt_a"])
            self.scheduler.load_state_dict(raw["sched_w"])
            self.scaler.load_state_dict(raw["scaler"])
            self.gumbel_gen.set_state(raw["gumbel_rng"])
            restore_rng_state(raw["rng"] if "rng" in raw else {"torch": raw["torch_rng"]})
            self.progress = Progress(epoch=int(raw["epoch"]), step_in_epoch=int(raw["step_in_epoch"]),
                                     global_step=int(raw["global_step"]))
            self.acc = dict(raw["acc"])
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(f"checkpoint {path} cannot be resumed: its training state does not "
                            f"fit its own configuration ({first})") from None
        self.raw = None
        self._place_and_describe()

    def _trim_log(self, journal: Journal) -> Journal:
        """Both logs cut back to the checkpoint (records written just before a kill go)."""
        journal.close()
        p = self.progress
        truncate_journal(self.out / "steps.jsonl", lambda r: int(r.get("step", 0)) <= p.global_step)
        truncate_journal(journal.path, lambda r: int(r.get("epoch", 0)) <= p.epoch)
        self._open_logs()
        return Journal(journal.path)

    def _start(self, journal: Journal | None) -> None:
        self._place_and_describe()
        if self.ctx.is_main:
            self._open_logs()

    def _open_logs(self) -> None:
        self.steps_log = Journal(self.out / "steps.jsonl")
        self.history = list(read_journal(self.out / "log.jsonl"))

    def close_steps_log(self) -> None:
        if self.steps_log is not None:
            self.steps_log.close()
            self.steps_log = None

    def _record(self, journal: Journal | None, rec: dict[str, Any]) -> None:
        """``log.jsonl`` holds the epoch records alone, as the search always wrote it."""
        if journal is not None and rec.get("event") is None:
            journal.append(rec)

    # ------------------------------------------------------------------ steps
    def _stop_due(self) -> bool:
        return self.cfg.stop_after is not None and self.progress.global_step >= self.cfg.stop_after

    def _begin_epoch(self) -> None:
        self.arch_frozen = self.progress.epoch < self.config.optim.arch_warmup_epochs
        self.t0 = time.perf_counter()

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg, p = self.config, self.progress
        tau = cfg.temperature.at(p.global_step, self.total_steps)
        lr_now = self.scheduler.get_last_lr()[0]
        ce, loss, lat = self.step_fn(images, labels, tau, update_arch=not self.arch_frozen)
        self.scheduler.step()
        ce_v, loss_v = [v / self.ctx.world_size for v in  # mean over processes
                        all_reduce_sum([float(ce.detach()), float(loss.detach())], self.ctx)]
        lat_v = float(lat.detach())
        if not (math.isfinite(ce_v) and math.isfinite(loss_v)):
            raise UserError(f"the loss became {loss_v} at step {p.global_step}: lower the learning rates "
                            f"or switch mixed precision off (--amp off)")
        self.last = {"ce": ce_v, "loss": loss_v, "latency_us": lat_v, "tau": tau, "lr_w": lr_now}
        return loss.detach()

    def _count(self, loss: torch.Tensor, journal: Journal | None, advance: Callable[..., None]) -> None:
        a, p, last = self.acc, self.progress, self.last
        a["ce"] += last["ce"]
        a["loss"] += last["loss"]
        a["lat"] += last["latency_us"]
        a["steps"] += 1
        a["images"] += self.config.batch_size
        if self.steps_log is not None:
            self.steps_log.append({"step": p.global_step, "epoch": p.epoch + 1, **last})
        advance(1, loss=last["loss"], CE=last["ce"], LAT_us=last["latency_us"], tau=last["tau"])

    def _settle(self) -> None:
        now = time.perf_counter()
        self.acc["seconds"] += now - self.t0
        self.t0 = now

    def _end_epoch(self, seconds: float) -> dict[str, Any]:
        p = self.progress
        rec = self._epoch_record()
        self.history.append(rec)
        p.epoch, p.step_in_epoch = p.epoch + 1, 0
        self.acc = _new_acc()
        return rec

    def _resume_message(self, last: Path) -> str:
        p = self.progress
        return f"resuming {self.out} at epoch {p.epoch + 1}, step {p.step_in_epoch} of {self.steps_per_epoch} " \
               f"(global step {p.global_step})"

    def _stop_message(self) -> str | None:
        return None  # nas search says where it stopped and how to continue

    def _epoch_message(self, rec: dict[str, Any]) -> str | None:
        return None

    def _done_fields(self) -> dict[str, Any]:
        return {}

    # --- per-epoch record -----------------------------------------------------------------------
    @torch.no_grad()
    def _epoch_record(self) -> dict[str, Any]:
        cfg, table, acc = self.config, self.search.table, self.acc
        epoch, global_step, total_steps = self.progress.epoch, self.progress.global_step, self.total_steps
        theta, fusion = self.model.logits()
        theta, fusion = theta.detach().cpu().float(), [t.detach().cpu().float() for t in fusion]
        arch = derive_architecture(theta, fusion, cfg.space)
        p_cells = torch.softmax(theta, -1)
        p_fusion = [torch.softmax(t, -1) for t in fusion]
        n = max(1, acc["steps"])
        return {
            "epoch": epoch + 1,
            "step": global_step,
            "ce": acc["ce"] / n,
            "loss": acc["loss"] / n,
            "sampled_latency_us": acc["lat"] / n,
            "expected_latency_us": float(table.latency(p_cells, p_fusion)),
            "derived_latency_us": table.architecture_latency(arch),
            "temperature": cfg.temperature.at(max(0, global_step - 1), total_steps),
            "lr_w": self.opt_w.param_groups[0]["lr"],
            "alpha_entropy": [float(entropy(theta[k]).mean()) for k in range(theta.shape[0])],
            "fusion_entropy": float(torch.stack([entropy(t) for t in fusion]).mean()) if fusion else None,
            "images_per_s": acc["images"] / acc["seconds"] if acc["seconds"] > 0 else None,
            "arch": arch.to_dict(),
        }

    # --- outputs ---------------------------------------------------------------------------------
    def _finish(self, finished: bool) -> SearchResult:
        """After the loop: on a finished search, the genotype (and plots) from the final α."""
        self.ctx.barrier()
        s, p = self.search, self.progress
        geno_path = self._write_genotype() if self.ctx.is_main and finished else None
        return SearchResult(s.out, geno_path, s.ckpt_path, p.global_step, p.epoch, finished, self.history)

    def _write_genotype(self) -> Path:
        cfg, s, table = self.config, self.search, self.search.table
        with torch.no_grad():
            theta, fusion = self.model.logits()
            theta, fusion = theta.detach().cpu().float(), [t.detach().cpu().float() for t in fusion]
        arch = derive_architecture(theta, fusion, cfg.space)
        geno = make_genotype(arch, cfg.space, search=cfg.to_dict(), lut=dict(s.lut_identity or {}),
                             lut_sum_us=table.architecture_lut_sum(arch),
                             latency_us=table.architecture_latency(arch),
                             probabilities=arch_probabilities(theta, fusion),
                             extra={"dataset": self.train_ds.info.to_dict(), "epochs_completed": cfg.epochs,
                                    "global_step": self.progress.global_step,
                                    "checkpoint": {"path": str(s.ckpt_path.resolve())}})
        path = geno.save(self.out / "genotype.json")
        if s.opts.plots:
            from nas.search.plots import make_all_plots

            make_all_plots(self.out / "plots", cfg.space, theta, fusion, arch, self.history,
                           list(read_journal(self.out / "steps.jsonl")), title=f"β={cfg.beta:g}")
        return path


def _new_acc() -> dict[str, float]:
    return {"ce": 0.0, "loss": 0.0, "lat": 0.0, "steps": 0, "images": 0, "seconds": 0.0}


__all__ = ["CHECKPOINT_VERSION", "RunOptions", "SearchModel", "SearchResult", "SearchRun", "SearchStep",
           "build_dataset", "make_optimizers", "resolve_amp", "table_on"]
