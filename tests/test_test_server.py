"""The paper's evaluation protocol and the Cityscapes test-server protocol: train on train+val,
evaluate at 769x1537 single scale by default (recorded in the result), write label-id PNGs under the
frames' own names, ready to zip."""

from __future__ import annotations

import json
import random
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nas.cli import cli
from nas.config import SpaceConfig
from nas.genotype import Architecture, Genotype
from nas.space import LGCNetSpace

SHORT = SpaceConfig(num_cells=5, reduction_cells=(1, 3), fusion_inputs=(0, 2, 4), init_channels=4,
                    head_channels=8, fusion_channels=8, num_classes=19)


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from data_trees import make_cityscapes_tree

    d = tmp_path_factory.mktemp("server")
    root = make_cityscapes_tree(d / "cs", n_train=2, n_val=1, n_test=2, size=(48, 96))
    arch = LGCNetSpace(SHORT).sample_architecture(random.Random(2))
    g = Genotype(Architecture.from_dict(arch), SHORT, {}).save(d / "g.json")
    out = d / "run"
    res = run(["train", "--arch", g, "--dataset", "cityscapes", "--data-root", root, "--train-split", "train+val",
               "--epochs", 1, "--batch-size", 3, "--crop", "32x32", "--workers", 0, "--out", out, "--quiet",
               "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return root, out


def test_train_plus_val_and_the_paper_resolutions_are_recorded(trained):
    root, out = trained
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    start = recs[0]
    assert start["train_items"] == 3                       # train (2) + val (1)
    p = start["protocol"]
    assert p["train_split"] == "train+val" and p["scale_base"] == "769x1537" and p["val_input"] == "769x1537"
    assert any("not a held-out score" in n for n in p["notes"])
    epoch = [r for r in recs if r.get("event") == "epoch"][-1]
    assert epoch["val_resolution"] == [769, 1537]


def test_eval_defaults_to_769x1537_single_scale_and_says_so(trained):
    root, out = trained
    res = run(["eval", "--checkpoint", out / "last.pt", "--dataset", "cityscapes", "--data-root", root,
               "--json", "--no-write", "--workers", 0, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output)
    assert rec["resolution"] == "769x1537"
    assert rec["protocol"]["scales"] == [1.0] and rec["protocol"]["flip"] is False
    assert rec["protocol"]["label_sizes"] == ["48x96"] and rec["protocol"]["paper_input"] == "769x1537"
    # the training log's last validation is this very evaluation (same input, same weights)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rec["miou"] == [r for r in logged if r.get("event") == "epoch"][-1]["val_miou"]
    res = run(["eval", "--checkpoint", out / "last.pt", "--dataset", "cityscapes", "--data-root", root,
               "--json", "--no-write", "--workers", 0, "--device", "cpu", "--resolution", "native"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["resolution"] == "48x96"


def test_predict_writes_label_ids_under_the_frames_names(trained, tmp_path):
    from cityscapesscripts.helpers.labels import trainId2label

    root, out = trained
    test_dir = root / "leftImg8bit" / "test"
    frames = sorted(test_dir.glob("*/*_leftImg8bit.png"))
    assert len(frames) == 2
    res = run(["predict", "--checkpoint", out / "last.pt", test_dir, "--format", "cityscapes",
               "--out", tmp_path / "results", "--zip", tmp_path / "submission.zip", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert written == sorted(f.name for f in frames)
    # the same frames predicted as train ids (visual format, same default resolution) ...
    res = run(["predict", "--checkpoint", out / "last.pt", *frames, "--out", tmp_path / "vis", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for f in frames:
        with Image.open(tmp_path / "results" / f.name) as im:
            assert im.mode == "L" and im.size == (96, 48)
            ids = np.asarray(im).astype(np.int64)
        train_ids = np.asarray(Image.open(tmp_path / "vis" / f"{f.stem}_labels.png")).astype(np.int64)
        # ... map to exactly these label ids through cityscapesscripts
        expect = np.vectorize(lambda t: trainId2label[int(t)].id)(train_ids)
        assert np.array_equal(ids, expect)
        assert set(np.unique(ids)) <= {trainId2label[t].id for t in range(19)}
    with zipfile.ZipFile(tmp_path / "submission.zip") as zf:
        assert sorted(zf.namelist()) == written
        with zf.open(written[0]) as fh:
            assert np.array_equal(np.asarray(Image.open(fh)), np.asarray(Image.open(tmp_path / "results" / written[0])))


def test_predict_cityscapes_format_refuses_what_the_server_cannot_take(trained, tmp_path):
    root, out = trained
    odd = tmp_path / "holiday.png"
    Image.fromarray(np.zeros((48, 96, 3), np.uint8)).save(odd)
    res = run(["predict", "--checkpoint", out / "last.pt", odd, "--format", "cityscapes", "--out", tmp_path / "r",
               "--device", "cpu"])
    assert res.exit_code == 2 and "not named like a Cityscapes frame" in res.output
    frame = next((root / "leftImg8bit" / "test").glob("*/*.png"))
    res = run(["predict", "--checkpoint", out / "last.pt", frame, "--zip", tmp_path / "x.zip", "--out", tmp_path / "r",
               "--device", "cpu"])
    assert res.exit_code == 2 and "--format cityscapes" in res.output
