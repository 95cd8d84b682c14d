"""Colour-coded predictions and overlays of a trained network (the paper's Figure 6).

For every input image, :func:`write_prediction` writes into the output folder:

- ``<stem>_pred.png`` — the predicted classes in the data set's palette (Cityscapes: the official
  ``cityscapesscripts`` colours);
- ``<stem>_overlay.png`` — the palette colours blended over the image (``alpha``);
- ``<stem>_labels.png`` — the predicted class indices (train ids) as a single-channel PNG;
- ``<stem>_panel.png`` — image | prediction side by side, as in Fig. 6.

Predictions are made at the image's own size, or with the image resized to ``resolution`` for the
network and the logits upsampled back to the image's size.

For the Cityscapes test server (:func:`write_cityscapes_results`): one single-channel PNG per image
holding Cityscapes *label ids* (train ids mapped back with ``cityscapesscripts``' ``trainId2label``)
at the image's full 1024x2048, named like the input (``<city>_<seq>_<frame>_leftImg8bit.png``, the
name the server's evaluation script matches on), all in one flat folder and optionally one zip
file — what the server takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import os
import re
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from latbench.errors import UserError
from nas.data import colorize, image_to_tensor, overlay, read_image
from nas.data.palette import LabelSpec


@dataclass(frozen=True)
class PredictConfig:
    resolution: tuple[int, int] | None = None
    alpha: float = 0.5


@torch.no_grad()
def predict_image(model: nn.Module, image: np.ndarray, *, device: str | torch.device = "cpu",
                  resolution: tuple[int, int] | None = None) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB -> ``uint8 [H, W]`` predicted class per pixel (model in eval mode)."""
    model.eval()
    x = image_to_tensor(image, resolution)[None].to(device)
    logits = model(x).float()
    h, w = image.shape[:2]
    if tuple(logits.shape[-2:]) != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def write_prediction(out_dir: str | Path, stem: str, image: np.ndarray, pred: np.ndarray,
                     spec: LabelSpec, alpha: float = 0.5) -> dict[str, Path]:
    """Write the four PNGs of one image (see the module docstring); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colour = colorize(pred, spec)
    blend = overlay(image, pred, spec, alpha=alpha)
    gap = np.full((image.shape[0], max(4, image.shape[1] // 64), 3), 255, dtype=np.uint8)
    panel = np.concatenate([image, gap, colour], axis=1)
    paths = {"pred": out / f"{stem}_pred.png", "overlay": out / f"{stem}_overlay.png",
             "labels": out / f"{stem}_labels.png", "panel": out / f"{stem}_panel.png"}
    Image.fromarray(colour).save(paths["pred"])
    Image.fromarray(blend).save(paths["overlay"])
    Image.fromarray(pred.astype(np.uint8), mode="L").save(paths["labels"])
    Image.fromarray(panel).save(paths["panel"])
    return paths


def unique_stems(paths: list[Path]) -> list[str]:
    """File stems, made unique (``name``, ``name-2``, ...) when two inputs share one."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        s = p.stem
        seen[s] = seen.get(s, 0) + 1
        stems.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return stems


def predict_files(model: nn.Module, images: list[Path], out_dir: str | Path, spec: LabelSpec, *,
                  device: str | torch.device = "cpu", cfg: PredictConfig = PredictConfig()
                  ) -> list[dict[str, Path]]:
    """Predict every image file and write its PNGs; unreadable files raise UserError."""
    written = []
    for path, stem in zip(images, unique_stems(images)):
        image = read_image(path)
        pred = predict_image(model, image, device=device, resolution=cfg.resolution)
        written.append(write_prediction(out_dir, stem, image, pred, spec, cfg.alpha))
    return written


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
CITYSCAPES_NAME = re.compile(r"^(.+)_(\d{6})_(\d{6})_leftImg8bit$")


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Files as given; a folder stands for every image file under it (recursively, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise UserError(f"folder {p} holds no image files ({', '.join(IMAGE_EXTS)})")
            out += found
        else:
            out.append(p)
    return out


def cityscapes_result_name(path: Path) -> str:
    """The result file name for a Cityscapes frame: the input's own name (the server matches the
    ``<city>_<seq>_<frame>`` part). UserError for a name that is not a Cityscapes frame's."""
    if not CITYSCAPES_NAME.match(path.stem):
        raise UserError(f"{path} is not named like a Cityscapes frame (<city>_<seq>_<frame>_leftImg8bit.png); "
                        f"--format cityscapes writes results under the frames' own names")
    return path.stem + ".png"


def write_cityscapes_results(model: nn.Module, images: list[Path], out_dir: str | Path, *,
                             device: str | torch.device = "cpu", resolution: tuple[int, int] | None = None,
                             zip_path: str | Path | None = None, progress=None) -> list[Path]:
    """Predict every frame and write its label-id PNG under its own name (see the module
    docstring); with ``zip_path``, also one zip of them all (written atomically)."""
    from nas.data.cityscapes import train_id_to_label_id

    names = [cityscapes_result_name(p) for p in images]
    seen: dict[str, Path] = {}
    for n, p in zip(names, images):
        if n in seen:
            raise UserError(f"{p} and {seen[n]} would write the same result file {n}")
        seen[n] = p
    table = train_id_to_label_id()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, name in zip(images, names):
        pred = predict_image(model, read_image(path), device=device, resolution=resolution)
        target = out / name
        Image.fromarray(table[pred], mode="L").save(target)
        written.append(target)
        if progress is not None:
            progress(target)
    if zip_path is not None:
        z = Path(zip_path)
        tmp = z.with_name(z.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for w in written:
                zf.write(w, arcname=w.name)
        os.replace(tmp, z)
    return written


__all__ = ["PredictConfig", "cityscapes_result_name", "expand_inputs", "predict_files", "predict_image",
           "unique_stems", "write_cityscapes_results", "write_prediction"]
