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

Processes, checkpoint files, RNG capture, data order and the progress bar are :mod:`nas.runtime`'s,
shared with ``nas train``; what is the search's own is here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latbench.errors import UserError
from latbench.files import FileLock, Journal, atomic_write_text, read_journal, truncate_journal
from nas.data.palette import IGNORE_INDEX
from nas.memory import check_network_fits
from nas.network import ArchWeights, LGCNet
from nas.ops import CELL_PRIMITIVES
from nas.runtime import (DistContext, EpochSampler, all_reduce_sum, capture_rng_state, init_distributed,
                         progress_bar, restore_rng_state, save_checkpoint, seed_everything,
                         teardown_distributed)
from nas.search.arch_params import ArchParams, entropy, gumbel_softmax, sample_gumbel
from nas.search.config import SearchConfig
from nas.search.derive import (CHECKPOINT_FORMAT, arch_probabilities, derive_architecture, load_checkpoint,
                               make_genotype)
from nas.search.ggm import GGM
from nas.search.latency import LatencyTable, load_latency_table

CHECKPOINT_VERSION = 2  # 2: every RNG under "rng" (nas.runtime.capture_rng_state); 1: "torch_rng"/"cuda_rng"


# ---------------------------------------------------------------------------------------------
# run-time options (not part of the search's identity)
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# the model: supernet + θ + GGM in one module (one DDP wrapper averages all their gradients)
# ---------------------------------------------------------------------------------------------
class SearchModel(nn.Module):
    def __init__(self, config: SearchConfig, arch_generator: torch.Generator):
        super().__init__()
        space = config.space
        # the supernet trains at the search width (init_channels, paper IV-A); config.space is the
        # deployed network's configuration, which the LUT prices and the genotype records
        self.supernet = LGCNet(space.search_config())
        self.arch = ArchParams(space, config.arch, generator=arch_generator)
        self.ggm = GGM(space.num_cells, space.num_edges(), len(CELL_PRIMITIVES), config.ggm)

    def logits(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(θ' ``[K, p, q]`` after the GGM, fusion logits)."""
        return self.ggm(self.arch.cell_logits()), self.arch.fusion_logits()

    def forward(self, x: torch.Tensor, tau: float, cell_g: torch.Tensor, fusion_g: Sequence[torch.Tensor]):
        theta, fusion = self.logits()
        cell_z = gumbel_softmax(theta, cell_g, tau)
        fusion_z = [gumbel_softmax(t, g, tau) for t, g in zip(fusion, fusion_g)]
        out = self.supernet(x, ArchWeights(cells=list(cell_z), fusion=fusion_z))
        return out, cell_z, fusion_z

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.supernet.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.parameters()) + list(self.ggm.parameters())


class SearchStep:
    """One single-level optimisation step (see the module docstring); shared by the search loop and
    ``benchmarks/search_throughput.py``."""

    def __init__(self, model: SearchModel, net: nn.Module, table: LatencyTable, config: SearchConfig,
                 opt_w: torch.optim.Optimizer, opt_a: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 gumbel_gen: torch.Generator, device: torch.device, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False):
        # The latency table on the step's device once (LatencyTable.lut_sum would otherwise copy
        # its CPU tensors to the GPU at every step); the caller's table (checkpoints) stays on the CPU.
        self.model, self.net, self.table, self.config = model, net, table_on(table, device), config
        self.opt_w, self.opt_a, self.scaler, self.gen = opt_w, opt_a, scaler, gumbel_gen
        self.device, self.amp_dtype, self.channels_last = device, amp_dtype, channels_last
        space = config.space
        self.cell_shape = (space.num_cells, space.num_edges(), len(CELL_PRIMITIVES))
        self.fusion_lens = [t.numel() for t in model.arch.fusion_logits()]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, tau: float, update_arch: bool = True):
        """``(ce, loss, LAT)`` of the step, after both optimisers stepped (α only if ``update_arch``)."""
        cfg, dev = self.config, self.device
        cell_g = sample_gumbel(self.cell_shape, self.gen, dev)
        fusion_g = [sample_gumbel((n,), self.gen, dev) for n in self.fusion_lens]
        images = images.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out, cell_z, fusion_z = self.net(images, tau, cell_g, fusion_g)
        ce = F.cross_entropy(out.float(), labels, ignore_index=IGNORE_INDEX)
        lat = self.table.latency(cell_z.float(), [z.float() for z in fusion_z])
        loss = ce + cfg.beta * torch.log(lat)
        self.opt_w.zero_grad(set_to_none=True)
        self.opt_a.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.optim.grad_clip:
            self.scaler.unscale_(self.opt_w)
            nn.utils.clip_grad_norm_(self.model.weight_parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.opt_w)
        if update_arch:
            self.scaler.step(self.opt_a)
        self.scaler.update()
        return ce, loss, lat


def table_on(table: LatencyTable, device: torch.device) -> LatencyTable:
    """A copy of ``table`` whose tensors live on ``device`` in float32 (the dtype the step prices
    in); every other field is kept as it is."""
    import dataclasses

    if not dataclasses.is_dataclass(table):  # an unknown table type: leave it (priced where it is)
        return table
    moved = {f.name: getattr(table, f.name) for f in dataclasses.fields(table) if f.init}
    for name, value in moved.items():
        if isinstance(value, torch.Tensor):
            moved[name] = value.to(device=device, dtype=torch.float32)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            moved[name] = type(value)(v.to(device=device, dtype=torch.float32) for v in value)
    return dataclasses.replace(table, **moved)


def make_optimizers(model: SearchModel, config: SearchConfig, total_steps: int):
    """(SGD for the weights, Adam for θ and the GGM, cosine lr scheduler for the weights)."""
    o = config.optim
    opt_w = torch.optim.SGD(model.weight_parameters(), lr=o.lr_w, momentum=o.momentum, weight_decay=o.wd_w)
    opt_a = torch.optim.Adam(model.arch_parameters(), lr=o.lr_a, betas=o.betas, weight_decay=o.wd_a)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_w, T_max=max(1, total_steps), eta_min=o.lr_w_min)
    return opt_w, opt_a, sched


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def resolve_amp(config: SearchConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off":
        return None
    if device.type != "cuda":
        if config.amp == "auto":
            return None
        raise UserError(f"--amp {config.amp} needs a CUDA device (this run uses {device})")
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


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
        self._log = run.log or (lambda msg: print(msg, file=sys.stderr))

    # --- setup ------------------------------------------------------------------------------
    def _prepare_tables(self, resume_ckpt: dict[str, Any] | None) -> None:
        if resume_ckpt is not None:
            self.table = LatencyTable.from_state_dict(resume_ckpt["latency"])
            self.lut_identity = dict(resume_ckpt.get("lut") or {})
        elif self.table is None:
            self.table, self.lut_identity = load_latency_table(self.config.lut, self.config.space)
        if self.config.lut.resolution is None:  # the LUT's only resolution, chosen by the loader
            res = self.table.resolution
            self.config = self.config.replace(lut=dataclasses.replace(self.config.lut, resolution=res))

    def run(self) -> SearchResult:
        d = init_distributed(self.opts.device)
        lock = None
        try:
            if d.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                lock = FileLock(self.out / ".search.lock", purpose="a search")
                lock.acquire()
            return self._run(d)
        finally:
            if lock is not None:
                lock.release()
            teardown_distributed(d)

    def _run(self, d: DistContext) -> SearchResult:
        device = torch.device(d.device)
        resume_ckpt = None
        if self.opts.resume:
            if not self.ckpt_path.exists():
                raise UserError(f"--resume: no checkpoint at {self.ckpt_path}")
            resume_ckpt = load_checkpoint(self.ckpt_path, resume=True)
        elif d.is_main and self.ckpt_path.exists():
            raise UserError(f"{self.out} already holds a search ({self.ckpt_path}); pass --resume to continue "
                            f"it or choose another --out")
        self._prepare_tables(resume_ckpt)
        cfg = self.config
        assert self.table is not None
        if cfg.batch_size % d.world_size:
            raise UserError(f"batch size {cfg.batch_size} does not split evenly over {d.world_size} processes")
        rank_batch = cfg.batch_size // d.world_size
        check_network_fits(cfg.space.search_config(), None, d.device, batch=rank_batch, resolution=cfg.data.crop or cfg.lut.resolution,
                           training=True, what="training the supernet")  # before any allocation
        dataset = build_dataset(cfg)
        steps_per_epoch = EpochSampler.steps_per_epoch(len(dataset), rank_batch, d.world_size)
        if steps_per_epoch < 1:
            raise UserError(f"the training set has {len(dataset)} items, fewer than one batch of {cfg.batch_size}")
        total_steps = steps_per_epoch * cfg.epochs

        # model, optimisers (seeded: the same on every process)
        seed_everything(cfg.seed)
        arch_gen = torch.Generator().manual_seed(cfg.seed + 1)
        model = SearchModel(cfg, arch_gen)
        gumbel_gen = torch.Generator().manual_seed(cfg.seed + 2)
        amp_dtype = resolve_amp(cfg, device)
        channels_last = device.type == "cuda" if cfg.channels_last == "auto" else cfg.channels_last == "on"
        model.to(device)
        if channels_last:
            model.supernet.to(memory_format=torch.channels_last)
        opt_w, opt_a, sched = make_optimizers(model, cfg, total_steps)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

        epoch, start_step, global_step = 0, 0, 0
        acc = _new_acc()
        if resume_ckpt is not None:
            try:  # a checkpoint is a file from anywhere: what does not fit is one line, not a traceback
                model.supernet.load_state_dict(resume_ckpt["model"])
                model.arch.load_state_dict(resume_ckpt["arch"])
                model.ggm.load_state_dict(resume_ckpt["ggm"])
                opt_w.load_state_dict(resume_ckpt["opt_w"])
                opt_a.load_state_dict(resume_ckpt["opt_a"])
                sched.load_state_dict(resume_ckpt["sched_w"])
                scaler.load_state_dict(resume_ckpt["scaler"])
                gumbel_gen.set_state(resume_ckpt["gumbel_rng"])
                restore_rng_state(resume_ckpt["rng"] if "rng" in resume_ckpt else {"torch": resume_ckpt["torch_rng"]})
                epoch = int(resume_ckpt["epoch"])
                start_step = int(resume_ckpt["step_in_epoch"])
                global_step = int(resume_ckpt["global_step"])
                acc = dict(resume_ckpt["acc"])
            except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise UserError(f"checkpoint {self.ckpt_path} cannot be resumed: its training state does not "
                                f"fit its own configuration ({first})") from None
            if d.is_main:
                truncate_journal(self.out / "steps.jsonl", lambda r: int(r.get("step", 0)) <= global_step)
                truncate_journal(self.out / "log.jsonl", lambda r: int(r.get("epoch", 0)) <= epoch)
                self._log(f"resuming {self.out} at epoch {epoch + 1}, step {start_step} of {steps_per_epoch} "
                          f"(global step {global_step})")
        net: nn.Module = model
        if d.distributed:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        step_fn = SearchStep(model, net, self.table, cfg, opt_w, opt_a, scaler, gumbel_gen, device, amp_dtype,
                             channels_last)
        if d.is_main:
            atomic_write_text(self.out / "config.json", json.dumps(
                {"search": cfg.to_dict(), "lut": self.lut_identity, "dataset": dataset.info.to_dict(),
                 "world_size": d.world_size, "device": str(device), "amp": str(amp_dtype) if amp_dtype else "off",
                 "channels_last": channels_last}, indent=2) + "\n")
        history = list(read_journal(self.out / "log.jsonl")) if d.is_main else []
        stopped = False

        def save(ep: int, step_in_epoch: int) -> None:
            if not d.is_main:
                return
            state = {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "config": cfg.to_dict(), "lut": self.lut_identity, "latency": self.table.state_dict(),
                "dataset": dataset.info.to_dict(),
                "model": model.supernet.state_dict(), "arch": model.arch.state_dict(), "ggm": model.ggm.state_dict(),
                "opt_w": opt_w.state_dict(), "opt_a": opt_a.state_dict(), "sched_w": sched.state_dict(),
                "scaler": scaler.state_dict(), "gumbel_rng": gumbel_gen.get_state(), "rng": capture_rng_state(),
                "epoch": ep, "step_in_epoch": step_in_epoch, "global_step": global_step,
                "steps_per_epoch": steps_per_epoch, "acc": dict(acc),
            }
            save_checkpoint(self.ckpt_path, state)

        with contextlib.ExitStack() as stack:
            steps_log = stack.enter_context(Journal(self.out / "steps.jsonl")) if d.is_main else None
            epoch_log = stack.enter_context(Journal(self.out / "log.jsonl")) if d.is_main else None
            advance = stack.enter_context(progress_bar(total_steps, "search", self.opts.progress and d.is_main,
                                                       completed=global_step, transient=False))
            while epoch < cfg.epochs and not stopped:
                sampler = EpochSampler(len(dataset), rank_batch, seed=cfg.seed, epoch=epoch, rank=d.rank,
                                       world_size=d.world_size, start_step=start_step)
                loader = torch.utils.data.DataLoader(dataset, batch_size=rank_batch, sampler=sampler,
                                                     num_workers=self.opts.workers,
                                                     pin_memory=device.type == "cuda")
                arch_frozen = epoch < cfg.optim.arch_warmup_epochs
                t0 = time.perf_counter()
                step_in_epoch = start_step
                for images, labels in loader:
                    tau = cfg.temperature.at(global_step, total_steps)
                    lr_now = sched.get_last_lr()[0]
                    ce, loss, lat = step_fn(images, labels, tau, update_arch=not arch_frozen)
                    sched.step()
                    ce_v, loss_v = [v / d.world_size for v in  # mean over processes
                                    all_reduce_sum([float(ce.detach()), float(loss.detach())], d)]
                    lat_v = float(lat.detach())
                    if not (math.isfinite(ce_v) and math.isfinite(loss_v)):
                        raise UserError(f"the loss became {loss_v} at step {global_step}: lower the learning rates "
                                        f"or switch mixed precision off (--amp off)")
                    acc["ce"] += ce_v
                    acc["loss"] += loss_v
                    acc["lat"] += lat_v
                    acc["steps"] += 1
                    acc["images"] += cfg.batch_size
                    global_step += 1
                    step_in_epoch += 1
                    if steps_log is not None:
                        steps_log.append({"step": global_step, "epoch": epoch + 1, "ce": ce_v, "loss": loss_v,
                                          "latency_us": lat_v, "tau": tau, "lr_w": lr_now})
                    advance(1, epoch=f"{epoch + 1}/{cfg.epochs}", loss=loss_v, CE=ce_v, LAT_us=lat_v, tau=tau)
                    if self.opts.stop_after_steps is not None and global_step >= self.opts.stop_after_steps:
                        stopped = True
                    elif cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 \
                            and step_in_epoch < steps_per_epoch:
                        save(epoch, step_in_epoch)
                    if stopped:
                        break
                acc["seconds"] += time.perf_counter() - t0
                if stopped and step_in_epoch < steps_per_epoch:
                    save(epoch, step_in_epoch)
                    break
                rec = self._epoch_record(model, epoch, acc, global_step, total_steps, opt_w)
                history.append(rec)
                if epoch_log is not None:
                    epoch_log.append(rec)
                epoch += 1
                start_step = 0
                acc = _new_acc()
                save(epoch, 0)
                d.barrier()

        d.barrier()
        finished = epoch >= cfg.epochs
        geno_path = None
        if d.is_main and finished:
            geno_path = self._finish(model, dataset, history, global_step)
        return SearchResult(self.out, geno_path, self.ckpt_path, global_step, epoch, finished, history)

    # --- per-epoch record -----------------------------------------------------------------------
    @torch.no_grad()
    def _epoch_record(self, model: SearchModel, epoch: int, acc: dict[str, float], global_step: int,
                      total_steps: int, opt_w: torch.optim.Optimizer) -> dict[str, Any]:
        cfg = self.config
        assert self.table is not None
        theta, fusion = model.logits()
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
            "expected_latency_us": float(self.table.latency(p_cells, p_fusion)),
            "derived_latency_us": self.table.architecture_latency(arch),
            "temperature": cfg.temperature.at(max(0, global_step - 1), total_steps),
            "lr_w": opt_w.param_groups[0]["lr"],
            "alpha_entropy": [float(entropy(theta[k]).mean()) for k in range(theta.shape[0])],
            "fusion_entropy": float(torch.stack([entropy(t) for t in fusion]).mean()) if fusion else None,
            "images_per_s": acc["images"] / acc["seconds"] if acc["seconds"] > 0 else None,
            "arch": arch.to_dict(),
        }

    # --- outputs ---------------------------------------------------------------------------------
    def _finish(self, model: SearchModel, dataset: Any, history: list[dict[str, Any]], global_step: int) -> Path:
        cfg = self.config
        assert self.table is not None
        with torch.no_grad():
            theta, fusion = model.logits()
            theta, fusion = theta.detach().cpu().float(), [t.detach().cpu().float() for t in fusion]
        arch = derive_architecture(theta, fusion, cfg.space)
        geno = make_genotype(arch, cfg.space, search=cfg.to_dict(), lut=dict(self.lut_identity or {}),
                             lut_sum_us=self.table.architecture_lut_sum(arch),
                             latency_us=self.table.architecture_latency(arch),
                             probabilities=arch_probabilities(theta, fusion),
                             extra={"dataset": dataset.info.to_dict(), "epochs_completed": cfg.epochs,
                                    "global_step": global_step,
                                    "checkpoint": {"path": str(self.ckpt_path.resolve())}})
        path = geno.save(self.out / "genotype.json")
        if self.opts.plots:
            from nas.search.plots import make_all_plots

            make_all_plots(self.out / "plots", cfg.space, theta, fusion, arch, history,
                           list(read_journal(self.out / "steps.jsonl")), title=f"β={cfg.beta:g}")
        return path


def _new_acc() -> dict[str, float]:
    return {"ce": 0.0, "loss": 0.0, "lat": 0.0, "steps": 0, "images": 0, "seconds": 0.0}
