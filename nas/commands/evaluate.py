"""``nas eval``: mIoU and per-class IoU of a checkpoint over a whole split."""

from __future__ import annotations

import json

import click

from latbench.errors import UserError
from nas.commands.train import parse_resolution_choice


@click.command("eval")
@click.option("--checkpoint", "ckpt_path", required=True, type=click.Path(dir_okay=False),
              help="A checkpoint written by nas train (last.pt / best.pt).")
@click.option("--dataset", required=True, type=click.Choice(["cityscapes", "camvid", "synthetic"]))
@click.option("--data-root", default=None, type=click.Path(file_okay=False))
@click.option("--split", default="val", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="Split to score (Cityscapes test labels are withheld: use nas predict --format cityscapes).")
@click.option("--resolution", default="paper", show_default=True,
              help="Network input: paper (Cityscapes 769x1537, CamVid 720x960, single scale, as in the paper), "
                   "native (the image as stored) or HxW. Scored at the label's resolution (logits upsampled).")
@click.option("--arch", "arch_path", default=None, type=click.Path(dir_okay=False),
              help="Check that the checkpoint holds this genotype's network (class count aside); errors name what differs.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N. [default: GPU if any]")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Only the first N items (real data sets).")
@click.option("--reports", "reports_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Reports folder: the result goes to REPORTS/miou/NAME.json, where nas report reads it.")
@click.option("--name", default=None, help="Result name. [default: <genotype>-<dataset>-<split>-<resolution>]")
@click.option("--no-write", is_flag=True, help="Do not write the result file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
def evaluate(ckpt_path, dataset, data_root, split, resolution, arch_path, device, batch_size, workers, limit,
             reports_dir, name, no_write, as_json) -> None:
    """Confusion matrix over the whole split (ignore label 255) -> mIoU and per-class IoU.

    Writes REPORTS/miou/<name>.json, where `nas report` meets it with FPS results.
    """
    from pathlib import Path

    import torch

    from latbench.device import resolve_device
    from latbench.files import check_outputs
    from nas.memory import check_network_fits
    from nas.runtime import init_distributed, teardown_distributed
    from nas.train.checkpoint import build_model
    from nas.train.evaluate import (DataSource, default_report_name, eval_dataset, evaluate_split,
                                    format_table, input_resolution, result_record, write_result)

    dev = resolve_device(device)
    check_outputs(folders={"--reports": None if no_write else Path(reports_dir) / "miou"})
    ckpt = _read_checkpoint(ckpt_path, dataset, data_root, arch_path)
    tc = ckpt.train_config
    source = DataSource(dataset, data_root,
                        tuple(tc.get("synthetic_size", (64, 128))),  # type: ignore[arg-type]
                        tc.get("synthetic_length"), limit)
    from nas.train.trainer import resolve_resolution

    res = resolve_resolution(parse_resolution_choice(resolution, "--resolution"), dataset)
    if res is not None:
        check_network_fits(ckpt.genotype.config, ckpt.genotype.arch, dev, batch=batch_size, resolution=res,
                           what="evaluating the network")
    ds = eval_dataset(source, split, num_classes=ckpt.genotype.config.num_classes, resolution=res)
    ctx = init_distributed(device)
    sizes: set[tuple[int, int]] = set()
    label_sizes: set[tuple[int, int]] = set()
    try:
        model = build_model(ckpt).to(ctx.device)
        # channels-last on GPUs, as in training's validation, so the numbers agree exactly
        cuda = ctx.device.startswith("cuda")
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        cm = evaluate_split(model, ds, device=ctx.device, ctx=ctx, batch_size=batch_size, workers=workers,
                            show_progress=not as_json, input_sizes=sizes, channels_last=cuda,
                            label_sizes=label_sizes)
    finally:
        teardown_distributed(ctx)
    if not ctx.is_main:
        return
    record = result_record(cm, ckpt, name=name or default_report_name(ckpt, dataset, split, res),
                           dataset=ds, resolution=input_resolution(res, sizes), device=ctx.device,
                           label_sizes=label_sizes)
    path = None if no_write else write_result(record, reports_dir)
    if as_json:
        click.echo(json.dumps({**record.to_dict(), "written_to": None if path is None else str(path)},
                              indent=2))
    else:
        click.echo(format_table(record))
        if path is not None:
            click.echo(f"wrote {path}")


def _read_checkpoint(ckpt_path: str, dataset: str, data_root: str | None, arch_path: str | None):
    """The checkpoint, after checking it against ``--arch`` (its network) and ``--dataset`` (the
    classes it was trained on), and that a real data set has its ``--data-root``."""
    from nas.genotype import Genotype
    from nas.train.checkpoint import check_same_architecture, read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    if arch_path is not None:
        check_same_architecture(Genotype.load(arch_path), ckpt.genotype, f"genotype {arch_path}",
                                f"checkpoint {ckpt_path}", ignore=("num_classes",))
    if ckpt.labels.name != dataset:
        raise UserError(f"checkpoint {ckpt_path} was trained on {ckpt.labels.name}, not {dataset}: "
                        f"its {ckpt.labels.num_classes} outputs mean that data set's classes")
    if dataset != "synthetic" and not data_root:
        raise UserError(f"--dataset {dataset} needs --data-root DIR")
    return ckpt
