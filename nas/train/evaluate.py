"""mIoU of a network over a whole split (paper IV-A), and the result file ``nas report`` reads.

One :class:`~nas.metrics.ConfusionMatrix` is accumulated over every pixel of every image of the
split (not averaged per image), ignoring label 255; mIoU and per-class IoU come from it, with the
data set's official class list (Cityscapes: the 19 train ids of ``cityscapesscripts``).

``resolution``: the network sees the image resized to ``HxW`` and its logits are upsampled
(bilinear) to the label's own resolution, where the score is taken — the paper's protocol for
769x1537 inputs of 1024x2048 Cityscapes frames, single scale, no flip (IV-B). Without it the
network sees the image as stored. :func:`paper_resolution` is the paper's input per data set
(Cityscapes 769x1537, CamVid 720x960); ``nas eval`` and training validation use it by default.

Training validation and ``nas eval`` both call :func:`evaluate_split` with the same data set
construction (:func:`eval_dataset`), so ``nas eval`` on a checkpoint reproduces the mIoU its
training log reported for that checkpoint, exactly (same device type and batch size).

The result is a :class:`nas.report.MiouRecord` (format ``"nas-miou"``, defined by ``nas report``)
written to ``<reports>/miou/<name>.json``. ``genotype.sha`` is :func:`nas.fps.genotype_hash` of the
genotype that was evaluated — the one embedded in the checkpoint (the data set's class count and the
width multiplier included; ``nas train`` also writes it to ``RUN/genotype.json`` so that ``nas fps``
can time exactly that network). ``resolution`` is the network's input size (``--resolution``, or
the images' stored size, ``"native"`` if they differ). Extra fields: the checkpoint (path, sha256,
epoch, step), the genotype file training started from (path, sha256), pixel accuracy, counted
pixels and images, the device and the confusion matrix.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from latbench.errors import UserError
from latbench.files import file_sha256
from nas.data import make_dataset
from nas.data.base import SegDataset
from nas.metrics import ConfusionMatrix
from nas.report import MiouRecord
from nas.runtime import DistContext, progress_bar, shard_indices
from nas.train.checkpoint import ModelCheckpoint

SYNTHETIC_SIZE = (64, 128)


def paper_resolution(dataset: str) -> tuple[int, int] | None:
    """The paper's network input for ``dataset`` (IV-B, Table V); None for synthetic data."""
    from nas import paper

    return {"cityscapes": paper.CITYSCAPES_RESOLUTION, "camvid": paper.CAMVID_RESOLUTION}.get(dataset)


@dataclass(frozen=True)
class DataSource:
    """Which data set and where: enough to rebuild the same evaluation data anywhere."""

    name: str
    root: str | None = None
    synthetic_size: tuple[int, int] = SYNTHETIC_SIZE
    synthetic_length: int | None = None  # synthetic items per split (None: the data set's default)
    limit: int | None = None             # real data sets: keep only the first N items


def eval_dataset(source: DataSource, split: str, *, num_classes: int,
                 resolution: tuple[int, int] | None) -> SegDataset:
    """The deterministic evaluation data set: labels at their stored resolution, no crop.

    The synthetic data set's content is drawn with seed 0 for every run, so a split means the
    same images whatever seed trained the network.
    """
    synth = source.name == "synthetic"
    return make_dataset(source.name, source.root, split, crop=None, augment=False,
                        resize=resolution, resize_label=False, seed=0,
                        length=source.synthetic_length if synth else source.limit,
                        num_classes=num_classes if synth else None,
                        image_size=tuple(source.synthetic_size) if synth else None)


def _collate_one_size(batch: list[tuple[torch.Tensor, torch.Tensor]]):
    images, labels = zip(*batch)
    if len({tuple(i.shape) for i in images}) > 1 or len({tuple(lab.shape) for lab in labels}) > 1:
        raise UserError("images of one evaluation batch differ in size; use batch size 1")
    return torch.stack(images), torch.stack(labels)


@torch.no_grad()
def evaluate_split(model: nn.Module, dataset: SegDataset, *, device: str | torch.device,
                   ctx: DistContext | None = None, batch_size: int = 1, workers: int = 0,
                   channels_last: bool = False, show_progress: bool = False,
                   input_sizes: set[tuple[int, int]] | None = None,
                   label_sizes: set[tuple[int, int]] | None = None) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over all of ``dataset`` (summed over ranks under torchrun).

    The model is put in eval mode (and left there). Logits are upsampled bilinearly to each
    label's size before the arg-max when the two differ. ``input_sizes`` (when given) collects
    the network input sizes seen on this rank.
    """
    ctx = ctx or DistContext(device=str(device))
    model.eval()
    cm = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index, device=device)
    part = Subset(dataset, shard_indices(len(dataset), ctx.rank, ctx.world_size))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate_one_size,
                        pin_memory=torch.device(device).type == "cuda")
    with progress_bar(len(loader), f"eval {dataset.split}", show_progress and ctx.is_main) as advance:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            if input_sizes is not None:
                input_sizes.add((int(images.shape[-2]), int(images.shape[-1])))
            if label_sizes is not None:
                label_sizes.add((int(labels.shape[-2]), int(labels.shape[-1])))
            logits = model(images).float()
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear",
                                       align_corners=False)
            cm.update(logits.argmax(1), labels)
            advance(1)
    return cm.all_reduce()


# --------------------------------------------------------------------------- result file

def format_resolution(res: tuple[int, int] | None) -> str | None:
    return None if res is None else f"{int(res[0])}x{int(res[1])}"


def default_report_name(ckpt: ModelCheckpoint, dataset: str, split: str,
                        resolution: tuple[int, int] | None) -> str:
    src = ckpt.genotype_source.get("path")
    stem = Path(src).stem if src else ckpt.path.stem
    res = format_resolution(resolution) or "native"
    return safe_name(f"{stem}-{dataset}-{split}-{res}")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "result"


def result_record(cm: ConfusionMatrix, ckpt: ModelCheckpoint, *, name: str, dataset: SegDataset,
                  resolution: str, device: str,
                  label_sizes: set[tuple[int, int]] | None = None) -> MiouRecord:
    """The ``nas-miou`` record ``nas report`` reads (see the module docstring)."""
    from nas.fps import genotype_hash

    d = cm.to_dict(dataset.class_names)
    if d["miou"] is None:
        raise UserError(f"the {dataset.name} {dataset.split} split has no labelled pixel (all 255): "
                        f"no mIoU to report")
    prog = ckpt.progress
    return MiouRecord(
        genotype_sha=genotype_hash(ckpt.genotype),
        genotype_path=ckpt.genotype_source.get("path"),
        dataset=dataset.name, split=dataset.split, resolution=resolution, miou=d["miou"],
        per_class=d["per_class_iou"],
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra={
            "name": name,
            "genotype_file_sha256": ckpt.genotype_source.get("sha256"),
            "checkpoint": {"path": str(ckpt.path), "sha256": file_sha256(ckpt.path),
                           "epoch": prog.get("epoch"), "global_step": prog.get("global_step")},
            "pixel_accuracy": d["pixel_accuracy"], "mean_accuracy": d["mean_accuracy"],
            "classes_counted": d["classes_counted"], "pixels": d["pixels"], "images": len(dataset),
            "ignore_index": d["ignore_index"], "device": device,
            "protocol": {"input": resolution, "scales": [1.0], "flip": False,
                         "scored_at": "label resolution (logits upsampled bilinearly)",
                         "label_sizes": sorted(f"{h}x{w}" for h, w in (label_sizes or ())),
                         "paper_input": format_resolution(paper_resolution(dataset.name))},
            "confusion_matrix": d["confusion_matrix"],
        })


def input_resolution(requested: tuple[int, int] | None, sizes: set[tuple[int, int]]) -> str:
    """The network input size to report: ``--resolution``, the one stored size, or ``native``."""
    if requested is not None:
        return f"{requested[0]}x{requested[1]}"
    if len(sizes) == 1:
        h, w = next(iter(sizes))
        return f"{h}x{w}"
    return "native"


def write_result(record: MiouRecord, reports_dir: str | Path) -> Path:
    """Write ``<reports_dir>/miou/<name>.json`` atomically; returns the path."""
    from nas.report import write_miou_record

    return write_miou_record(Path(reports_dir) / "miou" / f"{safe_name(record.extra['name'])}.json", record)


def format_table(record: MiouRecord) -> str:
    """Per-class IoU and mIoU as aligned text (percent)."""
    def pct(v: float | None) -> str:
        return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"

    names = list(record.per_class)
    width = max([len(n) for n in names] + [4])
    lines = [f"{'class':<{width}}  IoU (%)"]
    lines += [f"{n:<{width}}  {pct(v)}" for n, v in record.per_class.items()]
    lines.append(f"{'mIoU':<{width}}  {pct(record.miou)}   ({record.extra['classes_counted']} classes, "
                 f"{record.extra['images']} images, {record.dataset} {record.split}, "
                 f"input {record.resolution})")
    return "\n".join(lines)


__all__ = ["DataSource", "default_report_name", "input_resolution", "eval_dataset", "evaluate_split", "paper_resolution",
           "format_resolution", "format_table", "result_record", "write_result"]
