"""``nas predict``: PNGs that open and show each predicted class in the data set's palette colour."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from nas.cli import cli
from nas.config import SpaceConfig
from nas.data.palette import cityscapes_spec, synthetic_spec
from nas.genotype import Architecture, Genotype
from nas.space import LGCNetSpace

SHORT = SpaceConfig(num_cells=5, reduction_cells=(1, 3), fusion_inputs=(0, 2, 4), init_channels=4,
                    head_channels=8, fusion_channels=8, num_classes=5)


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from nas.data.synthetic import SyntheticConfig, generate

    d = tmp_path_factory.mktemp("pred")
    arch = LGCNetSpace(SHORT).sample_architecture(random.Random(5))
    g = Genotype(Architecture.from_dict(arch), SHORT, {}).save(d / "g.json")
    res = run(["train", "--arch", g, "--dataset", "synthetic", "--epochs", 10, "--batch-size", 8, "--lr", 0.1,
               "--workers", 0, "--out", d / "run", "--quiet", "--device", "cpu", "--val-every", 10])
    assert res.exit_code == 0, res.output
    images = []
    for i in range(2):
        img, _ = generate(SyntheticConfig(), 0, "val", i)
        images.append(d / f"frame{i}.png")
        Image.fromarray(img).save(images[-1])
    return d / "run" / "last.pt", images


def test_predictions_use_the_palette(setup, tmp_path):
    ck, images = setup
    res = run(["predict", "--checkpoint", ck, *images, "--out", tmp_path, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    spec = synthetic_spec(5)
    pal = spec.palette_array()
    for img_path in images:
        stem = img_path.stem
        image = np.asarray(Image.open(img_path).convert("RGB"))
        with Image.open(tmp_path / f"{stem}_labels.png") as im:
            assert im.mode == "L"
            labels = np.asarray(im).astype(np.int64)
        with Image.open(tmp_path / f"{stem}_pred.png") as im:
            assert im.mode == "RGB" and im.size == (image.shape[1], image.shape[0])
            colour = np.asarray(im)
        assert labels.max() < 5
        assert np.array_equal(colour, pal[labels])           # every pixel: its class's colour
        assert len(np.unique(labels)) >= 2                   # it shows several classes
        with Image.open(tmp_path / f"{stem}_overlay.png") as im:
            blend = np.asarray(im).astype(np.float64)
        expect = np.rint(0.5 * image + 0.5 * pal[labels])
        assert np.abs(blend - expect).max() <= 1
        with Image.open(tmp_path / f"{stem}_panel.png") as im:
            panel = np.asarray(im)
        assert panel.shape[0] == image.shape[0]
        assert np.array_equal(panel[:, : image.shape[1]], image)
        assert np.array_equal(panel[:, -image.shape[1]:], colour)


def test_prediction_matches_the_network_and_resolution_keeps_image_size(setup, tmp_path):
    from nas.data import image_to_tensor
    from nas.train.checkpoint import build_model, read_checkpoint

    ck, images = setup
    res = run(["predict", "--checkpoint", ck, images[0], "--out", tmp_path / "a", "--device", "cpu"])
    assert res.exit_code == 0
    model = build_model(read_checkpoint(ck))
    image = np.array(Image.open(images[0]).convert("RGB"))
    with torch.no_grad():
        expect = model(image_to_tensor(image)[None]).argmax(1)[0].numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / f"{images[0].stem}_labels.png")), expect)

    res = run(["predict", "--checkpoint", ck, images[0], "--out", tmp_path / "b", "--resolution", "32x64",
               "--device", "cpu"])
    assert res.exit_code == 0
    with Image.open(tmp_path / "b" / f"{images[0].stem}_pred.png") as im:
        assert im.size == (image.shape[1], image.shape[0])


def test_same_stem_twice_and_unreadable_image(setup, tmp_path):
    ck, images = setup
    other = tmp_path / "sub"
    other.mkdir()
    dup = other / images[0].name
    dup.write_bytes(images[0].read_bytes())
    res = run(["predict", "--checkpoint", ck, images[0], dup, "--out", tmp_path / "o", "--device", "cpu"])
    assert res.exit_code == 0
    assert (tmp_path / "o" / f"{images[0].stem}_pred.png").is_file()
    assert (tmp_path / "o" / f"{images[0].stem}-2_pred.png").is_file()
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    res = run(["predict", "--checkpoint", ck, bad, "--out", tmp_path / "p", "--device", "cpu"])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("Error: cannot read image")


def test_cityscapes_checkpoint_uses_official_colours(tmp_path):
    """A Cityscapes checkpoint's outputs are coloured with cityscapesscripts' train-id colours."""
    from data_trees import make_cityscapes_tree

    root = make_cityscapes_tree(tmp_path / "cs", n_train=2, n_val=1, size=(48, 96))
    arch = LGCNetSpace(SHORT).sample_architecture(random.Random(5))
    g = Genotype(Architecture.from_dict(arch), SHORT, {}).save(tmp_path / "g.json")
    res = run(["train", "--arch", g, "--dataset", "cityscapes", "--data-root", root, "--epochs", 1, "--batch-size", 2,
               "--crop", "32x32", "--workers", 0, "--out", tmp_path / "run", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    frame = next((root / "leftImg8bit" / "val").glob("*/*.png"))
    res = run(["predict", "--checkpoint", tmp_path / "run" / "last.pt", frame, "--out", tmp_path / "o",
               "--device", "cpu"])
    assert res.exit_code == 0, res.output
    stem = frame.stem
    labels = np.asarray(Image.open(tmp_path / "o" / f"{stem}_labels.png")).astype(np.int64)
    colour = np.asarray(Image.open(tmp_path / "o" / f"{stem}_pred.png"))
    assert labels.max() < 19
    assert np.array_equal(colour, cityscapes_spec().palette_array()[labels])
