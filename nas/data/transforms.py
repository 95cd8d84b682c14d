"""Augmentation and normalisation (paper IV-A: random flip, random resize 0.5-2.0, random crop).

Every transform takes ``image uint8 [H, W, 3]`` (numpy, RGB) and ``label int [H, W]`` (numpy,
train ids, 255 = ignore) and returns ``image float32 [3, h, w]`` normalised with the ImageNet
mean/std and ``label int64 [h, w]``.

Training (:class:`TrainTransform`), in this order:

1. random scale ``s ~ U[scale_range]`` (default [0.5, 2.0]) of both sides — of the image's own
   size, or of ``base_size`` when one is set (e.g. 769x1537 for 1024x2048 Cityscapes frames;
   one interpolation does both) — rounded to whole pixels: image bilinear (``align_corners=False``, antialiased when shrinking), label
   ``nearest-exact`` (same pixel-centre convention as the bilinear image, so they stay aligned);
2. horizontal flip with probability ``flip_prob`` (default 0.5);
3. when a crop is set: pad bottom/right up to the crop size where the scaled image is smaller —
   image with the ImageNet mean (0 after normalisation), label with 255 — then a uniformly random
   crop window of exactly ``crop``.

Randomness comes only from the ``numpy.random.Generator`` passed in. Data sets build it from
``(seed, epoch, index)`` (:func:`sample_rng`), so an item's augmentation does not depend on the
worker that loads it or on what was loaded before: a resumed search sees the same pixels.

Evaluation (:class:`EvalTransform`): optional resize to a fixed ``(H, W)`` (image bilinear,
label nearest-exact, or the label left at full resolution with ``resize_label=False``), then an
optional central crop (padded like the training crop), no randomness.

Classification, for ImageNet pre-training (end of this module): :class:`RandomResizedCrop` (+ flip)
for training and :class:`ResizeCenterCrop` (256 → 224) for evaluation take Pillow images and
return ``uint8`` tensors; :func:`normalize_uint8` normalises the batch on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255

Size = tuple[int, int]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for item ``index`` in ``epoch`` of a run seeded with ``seed``.

    Independent of process / worker / load order (a ``SeedSequence`` over the three integers).
    """
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and index must be >= 0, got {(seed, epoch, index)}")
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def _check_size(size: Size | None, what: str) -> None:
    if size is None:
        return
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{what} must be two positive integers (H, W), got {size}")


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``uint8 [H, W, 3]``, ``int [H, W]`` → ``float32 [3, H, W]`` in [0, 1], ``int64 [H, W]``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got {image.shape}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label {label.shape} and image {image.shape[:2]} differ in size")
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    lab = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
    return img, lab


def normalize(image01: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """``[3, H, W]`` (or ``[N, 3, H, W]``) in [0, 1] → normalised (new tensor)."""
    m = torch.tensor(mean, dtype=image01.dtype, device=image01.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image01.dtype, device=image01.device).view(-1, 1, 1)
    return (image01 - m) / s


def denormalize(image: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """Normalised ``[3, H, W]`` → ``uint8 [H, W, 3]`` (for drawing)."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    x = image.detach().float().cpu() * s + m
    return (x.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()


def image_to_tensor(image: np.ndarray, resize: Size | None = None) -> torch.Tensor:
    """A single ``uint8 [H, W, 3]`` image → normalised ``float32 [3, H', W']`` (for inference)."""
    _check_size(resize, "resize")
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if resize is not None and tuple(img.shape[1:]) != tuple(resize):
        img = resize_image(img, resize)
    return normalize(img)


def resize_image(image: torch.Tensor, size: Size) -> torch.Tensor:
    """Bilinear resize of ``[3, H, W]`` float; antialiased when shrinking."""
    h, w = image.shape[-2:]
    shrink = size[0] < h or size[1] < w
    return F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=shrink)[0]


def resize_label(label: torch.Tensor, size: Size) -> torch.Tensor:
    """Nearest-neighbour resize of ``[H, W]`` int64 (pixel-centre aligned with the image)."""
    out = F.interpolate(label[None, None].float(), size=tuple(size), mode="nearest-exact")
    return out[0, 0].round().long()


@dataclass(frozen=True)
class AugParams:
    """The random choices for one item: the scale, the flip and the crop window's corner."""

    scale: float
    flip: bool
    scaled_size: Size
    top: int
    left: int


@dataclass(frozen=True)
class TrainTransform:
    """Random scale, flip and (padded) crop, then ImageNet normalisation."""

    crop: Size | None
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5
    base_size: Size | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        _check_size(self.crop, "crop")
        _check_size(self.base_size, "base_size")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    def sample(self, rng: np.random.Generator, height: int, width: int) -> AugParams:
        lo, hi = self.scale_range
        scale = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        flip = bool(rng.random() < self.flip_prob)
        if self.base_size is not None:
            height, width = self.base_size
        sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
        top = left = 0
        if self.crop is not None:
            ch, cw = self.crop
            top = int(rng.integers(0, max(sh, ch) - ch + 1))
            left = int(rng.integers(0, max(sw, cw) - cw + 1))
        return AugParams(scale, flip, (sh, sw), top, left)

    def apply(self, image: np.ndarray, label: np.ndarray,
              p: AugParams) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = to_tensors(image, label)
        if p.scaled_size != tuple(img.shape[1:]):
            img = resize_image(img, p.scaled_size)
            lab = resize_label(lab, p.scaled_size)
        if p.flip:
            img, lab = img.flip(-1), lab.flip(-1)
        if self.crop is not None:
            ch, cw = self.crop
            sh, sw = p.scaled_size
            ph, pw = max(sh, ch), max(sw, cw)
            if (ph, pw) != (sh, sw):
                mean = torch.tensor(self.mean, dtype=img.dtype).view(3, 1, 1)
                padded = mean.expand(3, ph, pw).clone()
                padded[:, :sh, :sw] = img
                plab = torch.full((ph, pw), self.ignore_index, dtype=torch.int64)
                plab[:sh, :sw] = lab
                img, lab = padded, plab
            img = img[:, p.top:p.top + ch, p.left:p.left + cw]
            lab = lab[p.top:p.top + ch, p.left:p.left + cw]
        return normalize(img.contiguous(), self.mean, self.std), lab.contiguous()

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(image, label, self.sample(rng, image.shape[0], image.shape[1]))


@dataclass(frozen=True)
class EvalTransform:
    """Optional fixed-size resize, then ImageNet normalisation. No randomness.

    With ``resize_label=False`` the label keeps its original resolution (evaluate by upsampling
    the logits to it, as the paper does for 769x1537 inputs of 1024x2048 images).
    """

    resize: Size | None = None
    resize_label: bool = True
    crop: Size | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        _check_size(self.resize, "resize")
        _check_size(self.crop, "crop")
        if self.crop is not None and not self.resize_label:
            raise ValueError("crop needs resize_label=True (image and label must stay aligned)")

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = to_tensors(image, label)
        if self.resize is not None and tuple(img.shape[1:]) != tuple(self.resize):
            img = resize_image(img, self.resize)
            if self.resize_label:
                lab = resize_label(lab, self.resize)
        if self.crop is not None:
            img, lab = center_crop(img, lab, self.crop, self.mean, self.ignore_index)
        return normalize(img, self.mean, self.std), lab


def center_crop(img: torch.Tensor, lab: torch.Tensor, crop: Size,
                mean: tuple[float, ...] = IMAGENET_MEAN,
                ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Central ``crop`` window of an unnormalised ``[3, H, W]`` image and its label.

    Where the image is smaller it is padded (centred) with ``mean`` / ``ignore_index``.
    """
    ch, cw = crop
    h, w = img.shape[1:]
    out = torch.tensor(mean, dtype=img.dtype).view(3, 1, 1).expand(3, ch, cw).clone()
    olab = torch.full((ch, cw), ignore_index, dtype=torch.int64)
    # source window and destination offset along each axis
    sy, dy = max(0, (h - ch) // 2), max(0, (ch - h) // 2)
    sx, dx = max(0, (w - cw) // 2), max(0, (cw - w) // 2)
    hh, ww = min(h, ch), min(w, cw)
    out[:, dy:dy + hh, dx:dx + ww] = img[:, sy:sy + hh, sx:sx + ww]
    olab[dy:dy + hh, dx:dx + ww] = lab[sy:sy + hh, sx:sx + ww]
    return out, olab


# --------------------------------------------------------------------------- classification
# ImageNet pre-training (``nas pretrain``). These take a decoded Pillow image (RGB) and return an
# ``uint8 [3, h, w]`` tensor: the batch is normalised on the device (:func:`normalize_uint8`),
# which keeps the data workers' work and the host-to-device copy at one byte per value.
# Resampling is Pillow's bilinear filter (antialiased when shrinking), as torchvision's
# ``RandomResizedCrop`` / ``Resize`` do on Pillow images.


@dataclass(frozen=True)
class CropBox:
    """One draw of :class:`RandomResizedCrop`: the source window (in pixels) and the flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def pil_to_uint8(image) -> torch.Tensor:
    """A Pillow image → ``uint8 [3, H, W]`` (RGB; other modes are converted)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def normalize_uint8(images: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """``uint8 [N, 3, H, W]`` (any device) → float32 normalised with ``mean`` / ``std``."""
    return normalize(images.float().div_(255.0), mean, std)


@dataclass(frozen=True)
class RandomResizedCrop:
    """Classification training: a random crop of random area and aspect ratio, resized to ``size``,
    then a horizontal flip with probability ``flip_prob`` (Inception-style; torchvision's
    ``RandomResizedCrop`` + ``RandomHorizontalFlip``, same sampling rule: ten tries of area
    ``U(scale)`` × image area and log-uniform aspect ``ratio``, else the central crop clamped to
    ``ratio``). Randomness only from the generator passed in (see :func:`sample_rng`)."""

    size: Size
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        _check_size(self.size, "size")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    def sample(self, rng: np.random.Generator, height: int, width: int) -> CropBox:
        area = height * width
        log_lo, log_hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        box = None
        for _ in range(10):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = float(np.exp(rng.uniform(log_lo, log_hi)))
            w = int(round(np.sqrt(target * aspect)))
            h = int(round(np.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
                break
        if box is None:  # central crop with the aspect ratio clamped to ``ratio``
            in_ratio = width / height
            if in_ratio < self.ratio[0]:
                w, h = width, int(round(width / self.ratio[0]))
            elif in_ratio > self.ratio[1]:
                h, w = height, int(round(height * self.ratio[1]))
            else:
                w, h = width, height
            box = ((height - h) // 2, (width - w) // 2, h, w)
        flip = bool(rng.random() < self.flip_prob)
        return CropBox(*box, flip=flip)

    def apply(self, image, box: CropBox) -> torch.Tensor:
        from PIL import Image

        if image.mode != "RGB":
            image = image.convert("RGB")
        out = image.resize((self.size[1], self.size[0]), Image.BILINEAR,
                           box=(box.left, box.top, box.left + box.width, box.top + box.height))
        if box.flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return pil_to_uint8(out)

    def __call__(self, image, rng: np.random.Generator) -> torch.Tensor:
        return self.apply(image, self.sample(rng, image.height, image.width))


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Classification evaluation: shorter side resized to ``resize`` (aspect kept, the longer side
    truncated to whole pixels as torchvision's ``Resize(int)``), then the central ``crop``
    (torchvision's ``CenterCrop`` rounding). The standard 256 → 224. No randomness."""

    resize: int
    crop: Size

    def __post_init__(self) -> None:
        _check_size(self.crop, "crop")
        if self.resize < max(self.crop):
            raise ValueError(f"resize {self.resize} is smaller than the crop {self.crop}")

    def resized_size(self, height: int, width: int) -> Size:
        if height <= width:
            return self.resize, int(self.resize * width / height)
        return int(self.resize * height / width), self.resize

    def __call__(self, image, rng: np.random.Generator | None = None) -> torch.Tensor:
        from PIL import Image

        if image.mode != "RGB":
            image = image.convert("RGB")
        h, w = self.resized_size(image.height, image.width)
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), Image.BILINEAR)
        ch, cw = self.crop
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return pil_to_uint8(image.crop((left, top, left + cw, top + ch)))
