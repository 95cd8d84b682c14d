"""``nas train``: fine-tune a searched architecture (paper IV-A) on Cityscapes, CamVid or synthetic data."""

from __future__ import annotations

import click

from latbench.errors import UserError


def parse_size(text: str | None, what: str) -> tuple[int, int] | None:
    """``"512x1024"`` -> ``(512, 1024)``; one-line error otherwise."""
    if text is None:
        return None
    parts = str(text).lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"malformed {what} {text!r}: expected HxW, e.g. 512x1024")
    return int(parts[0]), int(parts[1])


def parse_resolution_choice(text: str | None, what: str) -> tuple[int, int] | str:
    """``paper`` | ``native`` | ``HxW`` (one-line error otherwise)."""
    t = "paper" if text is None else str(text).strip().lower()
    if t in ("paper", "native"):
        return t
    return parse_size(text, what)  # type: ignore[return-value]


@click.command()
@click.option("--arch", "arch_path", required=True, type=click.Path(dir_okay=False),
              help="genotype.json written by nas search / nas derive.")
@click.option("--dataset", required=True, type=click.Choice(["cityscapes", "camvid", "synthetic"]))
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="Data set folder in its official layout (not needed for synthetic).")
@click.option("--epochs", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Global mini-batch (split over torchrun processes).")
@click.option("--crop", default=None, help="Training crop HxW. [default: cityscapes 768x768, camvid 720x960, synthetic 64x64]")
@click.option("--train-split", default="train", show_default=True,
              help="Training split(s), joined with '+': train+val trains on both (the test-server protocol, paper "
                   "IV-B); Cityscapes also train_extra (the coarse annotations, gtCoarse).")
@click.option("--lr", default=0.01, show_default=True, type=float, help="Initial learning rate of the poly schedule (to zero).")
@click.option("--weight-decay", default=5e-4, show_default=True, type=float)
@click.option("--width-mult", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Channel width multiplier. [default: the genotype's]")
@click.option("--init", "init_path", default=None, type=click.Path(dir_okay=False),
              help="Start from these weights (a nas pretrain checkpoint, an LGCNet checkpoint or a state dict); "
                   "reports how many backbone and fusion/head tensors matched.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Run folder. [default: runs/train-<genotype>-<dataset>]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt, exactly.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default=None, help="cpu, cuda or cuda:N (torchrun: each process takes cuda:LOCAL_RANK). [default: GPU if any]")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="Data-loading processes.")
@click.option("--val-every", default=1, show_default=True, type=click.IntRange(min=1), help="Validate every N epochs (and after the last).")
@click.option("--val-resolution", default="paper", show_default=True,
              help="Validation input: paper (Cityscapes 769x1537, CamVid 720x960), native (as stored) or HxW; "
                   "scored at the label's resolution.")
@click.option("--base-size", default="paper", show_default=True,
              help="Random scale 0.5-2.0 relative to: paper (its input size: Cityscapes 769x1537, CamVid 720x960), "
                   "native (each image's own size) or HxW.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision. [default: on for GPUs]")
@click.option("--ohem-thresh", default=0.7, show_default=True, type=float, help="OHEM: pixels with true-class probability below this are hard.")
@click.option("--ohem-min-kept", default=100_000, show_default=True, type=click.IntRange(min=0), help="OHEM: keep at least this many pixels per batch.")
@click.option("--checkpoint-every", default=None, type=click.IntRange(min=1), help="Also save last.pt every N steps.")
@click.option("--stop-after", default=None, type=click.IntRange(min=1), help="Stop after N steps in total (resume later with --resume).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Use only the first N items of each split (quick runs).")
@click.option("--num-classes", "synthetic_classes", default=None, type=click.IntRange(min=2),
              help="Classes of the synthetic data set. [default: the genotype's, as in nas search, so that "
                   "FPS and mIoU of the same network meet in nas report]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(arch_path, dataset, data_root, epochs, batch_size, crop, train_split, lr, weight_decay, width_mult, init_path,
          out_dir, resume, seed, device, workers, val_every, val_resolution, base_size, amp, ohem_thresh,
          ohem_min_kept, checkpoint_every, stop_after, limit, synthetic_classes, quiet) -> None:
    """Fine-tune the network of a genotype: SGD + poly lr, OHEM, flip / scale 0.5-2 / crop.

    Writes RUN/last.pt (resumable), RUN/best.pt, RUN/log.jsonl (per-epoch training loss and
    validation mIoU). Multi-GPU: `torchrun --nproc-per-node N -m nas.cli train ...`.
    """
    from pathlib import Path

    from nas.genotype import Genotype
    from nas.preflight import check_train_request
    from nas.train.trainer import TrainConfig, train_genotype

    genotype = Genotype.load(arch_path)
    if dataset != "synthetic" and not data_root:
        raise UserError(f"--dataset {dataset} needs --data-root DIR")
    if out_dir is None:
        out_dir = str(Path("runs") / f"train-{Path(arch_path).stem}-{dataset}")
    cfg = TrainConfig(
        dataset=dataset, out_dir=out_dir, data_root=data_root, epochs=epochs, batch_size=batch_size,
        crop=parse_size(crop, "--crop"), lr=lr, weight_decay=weight_decay, width_mult=width_mult,
        seed=seed, device=device, workers=workers, amp=amp, val_every=val_every,
        val_resolution=parse_resolution_choice(val_resolution, "--val-resolution"), train_split=train_split,
        base_size=parse_resolution_choice(base_size, "--base-size"), ohem_thresh=ohem_thresh,
        ohem_min_kept=ohem_min_kept, checkpoint_every=checkpoint_every, stop_after=stop_after,
        init=init_path, resume=resume, limit=limit, synthetic_classes=synthetic_classes,
        show_progress=not quiet)
    check_train_request(genotype, cfg)
    result = train_genotype(genotype, cfg, genotype_path=arch_path,
                            log=lambda s: click.echo(s, err=True))
    if result.finished and result.is_main:
        click.echo(f"done: {result.out_dir / 'last.pt'} (log {result.out_dir / 'log.jsonl'})")
