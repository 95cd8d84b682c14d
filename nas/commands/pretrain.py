"""``nas pretrain``: ImageNet pre-training of a searched network's backbone (paper IV-A: search →
ImageNet pre-training → fine-tuning). The recipe is ours; see docs/pretrain.md."""

from __future__ import annotations

import json
from typing import Any

import click

from latbench.errors import UserError


def parse_milestones(text: str | None) -> tuple[int, ...] | None:
    """``"30,60,80"`` -> ``(30, 60, 80)``; one-line error otherwise."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise UserError(f"malformed --milestones {text!r}: expected epochs separated by commas, e.g. 30,60,80")
    return tuple(int(p) for p in parts)


#: ``nas pretrain``'s options, in ``--help`` order (the command is made from them).
PRETRAIN_OPTIONS = [
    click.option("--arch", "arch_path", required=True, type=click.Path(dir_okay=False),
                 help="genotype.json written by nas search / nas derive / nas sample: the network whose stem and "
                      "cells are pre-trained."),
    click.option("--data-root", required=True, type=click.Path(),
                 help="ImageNet: the folder holding train/<wnid>/*.JPEG and val/, or the Kaggle download folder "
                      "(ILSVRC/Data/CLS-LOC/ below it). val/ may be sorted into class folders (val/<wnid>/) or flat "
                      "with LOC_val_solution.csv (Kaggle), ILSVRC2012_validation_ground_truth.txt + meta.mat (devkit) "
                      "or a one-wnid-per-line file, found next to the data or given with --val-labels."),
    click.option("--val-labels", default=None, type=click.Path(dir_okay=False),
                 help="The ground-truth file of a flat val/ folder, if it is not where the releases put it."),
    click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
                 help="Run folder. [default: runs/pretrain-<genotype>]"),
    click.option("--epochs", default=150, show_default=True, type=click.IntRange(min=1),
                 help="Passes over the training images."),
    click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
                 help="Global mini-batch, split evenly over torchrun processes."),
    click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
                 help="Peak learning rate (after warm-up). [default: 0.1 x batch-size / 256, the linear scaling rule]"),
    click.option("--momentum", default=0.9, show_default=True, type=click.FloatRange(min=0, max=1),
                 help="SGD momentum."),
    click.option("--nesterov/--no-nesterov", default=False, show_default=True, help="Nesterov momentum."),
    click.option("--weight-decay", default=4e-5, show_default=True, type=click.FloatRange(min=0),
                 help="L2 on convolution and linear weights (BatchNorm parameters and biases are not decayed)."),
    click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "step"]),
                 help="After the warm-up: cosine decay to --min-lr, or x --gamma at each of --milestones."),
    click.option("--warmup-epochs", default=5.0, show_default=True, type=click.FloatRange(min=0),
                 help="Linear warm-up length in epochs (per iteration, from lr/steps to lr; capped at --epochs); 0 turns it off."),
    click.option("--min-lr", default=0.0, show_default=True, type=click.FloatRange(min=0),
                 help="Cosine schedule: the learning rate at the end."),
    click.option("--milestones", default=None,
                 help="Step schedule: epochs at which the learning rate is multiplied by --gamma, e.g. 30,60,80. "
                      "[default: 1/3, 2/3 and 8/9 of --epochs]"),
    click.option("--gamma", default=0.1, show_default=True, type=float, help="Step schedule: the factor at each milestone."),
    click.option("--label-smoothing", default=0.1, show_default=True, type=float,
                 help="Label smoothing of the cross-entropy (training only; val loss is plain cross-entropy)."),
    click.option("--crop", default=224, show_default=True, type=click.IntRange(min=1),
                 help="Training crop (random-resized) and evaluation crop (central), square, in pixels."),
    click.option("--val-resize", default=None, type=click.IntRange(min=1),
                 help="Evaluation: the shorter side is resized to this before the central crop. [default: crop / 0.875, "
                      "256 for 224]"),
    click.option("--scale-min", default=0.08, show_default=True, type=float,
                 help="Random-resized crop: the smallest crop area as a fraction of the image (the largest is 1)."),
    click.option("--head-channels", default=1024, show_default=True, type=click.IntRange(min=0),
                 help="Classification head: 1x1 conv-BN-ReLU to this many channels before global pooling and the "
                      "linear layer (0: pool the last cell directly). The head is dropped at fine-tuning."),
    click.option("--dropout", default=0.0, show_default=True, type=float, help="Dropout before the linear layer."),
    click.option("--width-mult", default=None, type=click.FloatRange(min=0, min_open=True),
                 help="Channel width multiplier; fine-tune with the same one. [default: the genotype's]"),
    click.option("--seed", default=0, show_default=True, type=int,
                 help="Seeds the initialisation, the data order and every crop."),
    click.option("--device", default=None,
                 help="cpu, cuda or cuda:N (torchrun: each process takes cuda:LOCAL_RANK). [default: GPU if any]"),
    click.option("--workers", default=None, type=click.IntRange(min=0),
                 help="Data-loading processes per training process (JPEG decoding is the usual bottleneck). "
                      "[default: the CPU cores this process may use, shared among the torchrun processes of this "
                      "machine, at most 8]"),
    click.option("--amp/--no-amp", default=None, help="float16 mixed precision. [default: on for GPUs, off on the CPU]"),
    click.option("--channels-last/--no-channels-last", default=None,
                 help="channels-last memory format. [default: on for GPUs, off on the CPU]"),
    click.option("--val-every", default=1, show_default=True, type=click.IntRange(min=1),
                 help="Evaluate on val every N epochs (and after the last)."),
    click.option("--eval-batch-size", default=None, type=click.IntRange(min=1),
                 help="Evaluation batch per process. [default: the training batch per process]"),
    click.option("--checkpoint-every", default=None, type=click.IntRange(min=1),
                 help="Also save last.pt every N steps (it is always saved after each epoch)."),
    click.option("--stop-after", default=None, type=click.IntRange(min=1),
                 help="Stop (and save) after N optimiser steps in total; continue later with --resume."),
    click.option("--log-every", default=100, show_default=True, type=click.IntRange(min=1),
                 help="Write a step record (loss, lr, images/s, ETA) to log.jsonl every N steps."),
    click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt, exactly."),
    click.option("--json", "as_json", is_flag=True, help="Print the final result (result.json) as JSON on stdout."),
    click.option("--quiet", is_flag=True, help="No progress bar and no per-step lines."),
]


def _pretrain_options(f: Any) -> Any:
    for option in reversed(PRETRAIN_OPTIONS):
        f = option(f)
    return f


def _config(arch_path: str, out_dir: str | None, workers: int | None, milestones: str | None, as_json: bool,
            quiet: bool, recipe: dict[str, Any]):
    """The run's :class:`~nas.pretrain.config.PretrainConfig`: the options, with the defaults that
    depend on the machine (``--workers``) or the genotype's file (``--out``) filled in."""
    from pathlib import Path

    from nas.pretrain.config import PretrainConfig, default_workers

    if workers is None:
        workers = default_workers()
    if out_dir is None:
        out_dir = str(Path("runs") / f"pretrain-{Path(arch_path).stem}")
    return PretrainConfig(out_dir=out_dir, workers=workers, milestones=parse_milestones(milestones),
                          show_progress=not quiet and not as_json, **recipe)


def _report(res: Any, as_json: bool) -> None:
    """Print the run's outcome on stdout: the result (or where it stopped) as JSON, or one line."""
    if as_json:
        out = res.result if res.finished else {"finished": False, "checkpoint": str(res.out_dir / "last.pt"),
                                               **res.progress.to_dict()}
        click.echo(json.dumps(out, indent=2))
    elif res.finished and res.result is not None:
        r = res.result
        top = "" if r["top1"] is None else f"val top-1 {100 * r['top1']:.2f}%, top-5 {100 * r['top5']:.2f}%; "
        click.echo(f"done: {top}{res.out_dir / 'last.pt'} (result {res.out_dir / 'result.json'}); "
                   f"fine-tune with nas train --arch {res.out_dir / 'genotype.json'} --init {res.out_dir / 'last.pt'}")


@click.command()
@_pretrain_options
def pretrain(arch_path: str, out_dir: str | None, workers: int | None, milestones: str | None, as_json: bool,
             quiet: bool, **recipe: Any) -> None:
    """Pre-train a genotype's backbone (stem + cells) on ImageNet with a classification head.

    Recipe (ours; the paper only says it pre-trains on ImageNet): SGD momentum 0.9, linear warm-up
    then cosine (or step) decay, label smoothing 0.1, random-resized crop + flip, resize + central
    crop for top-1 / top-5; AMP and channels-last on GPUs. Writes RUN/last.pt (resumable),
    RUN/best.pt, RUN/log.jsonl and, at the end, RUN/result.json. Fine-tune with
    `nas train --arch GENOTYPE --init RUN/last.pt ...`: the backbone's tensors carry the
    segmentation network's names. Multi-GPU: `torchrun --nproc-per-node N -m nas.cli pretrain ...`.
    """
    from nas.genotype import Genotype
    from nas.pretrain.trainer import pretrain_genotype

    genotype = Genotype.load(arch_path)
    cfg = _config(arch_path, out_dir, workers, milestones, as_json, quiet, recipe)
    res = pretrain_genotype(genotype, cfg, genotype_path=arch_path, log=lambda s: click.echo(s, err=True))
    if res.is_main:
        _report(res, as_json)
