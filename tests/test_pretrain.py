"""``nas pretrain``: ImageNet layouts, transforms, learning synthetic classes, exact resume,
``nas train --init`` on its checkpoint, clear errors. The trees come from ``imagenet_tree``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imagenet_tree import LAYOUTS, make_imagenet_tree, wnid
from latbench.errors import UserError
from nas.cli import cli
from nas.config import SpaceConfig
from nas.genotype import Architecture, Genotype
from nas.space import LGCNetSpace

# The paper's topology (14 cells, cells 0/7/13 feed the fusion cell) at a CPU-sized width.
PAPER_TOPOLOGY_TINY = SpaceConfig(init_channels=4, head_channels=16, fusion_channels=16, num_classes=5)
# Fewer cells for the mechanics tests (resume, init), to keep them fast.
SHORT = SpaceConfig(num_cells=5, reduction_cells=(1, 3), fusion_inputs=(0, 2, 4), init_channels=4,
                    head_channels=8, fusion_channels=8, num_classes=5)


def write_genotype(path: Path, config: SpaceConfig, seed: int) -> Path:
    arch = LGCNetSpace(config).sample_architecture(random.Random(seed))
    Genotype(Architecture.from_dict(arch), config, {"test": True}).save(path)
    return path


def run(args: list):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


def log_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


def pretrain_args(g: Path, root: Path, out: Path, *extra) -> list:
    return ["pretrain", "--arch", g, "--data-root", root, "--out", out, "--crop", 32, "--head-channels", 32,
            "--workers", 0, "--device", "cpu", "--quiet", *extra]


# --------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_val_layout_reads_the_same_labels(layout, tmp_path):
    from nas.pretrain.imagenet import ImageFolderDataset, find_imagenet

    tree = make_imagenet_tree(tmp_path / layout, val_layout=layout, classes=3, n_train=2, n_val=2)
    # the Kaggle release is found from its download folder and from the CLS-LOC folder inside it
    roots = [tree.root] + ([tree.root / "ILSVRC" / "Data" / "CLS-LOC"] if layout == "kaggle" else [])
    for root in roots:
        found = find_imagenet(root)
        assert found.classes == tuple(tree.classes)
        assert found.val_layout == {"kaggle": "kaggle-csv"}.get(layout, layout)
        assert len(found.train) == 6 and len(found.val) == 6
        assert [found.classes[c] for c in found.train.labels] == [w for w in tree.classes for _ in range(2)]
        for i in range(len(found.val)):
            path = found.val.path(i)
            assert path.is_file()
            assert found.classes[found.val.labels[i]] == tree.val_truth[path.stem], path
        ds = ImageFolderDataset(found.val, lambda im, rng: torch.from_numpy(np.asarray(im).copy()))
        img, label = ds[(0, 0)]
        assert img.dtype == torch.uint8 and img.shape[-1] == 3 and label == found.val.labels[0]


def test_explicit_val_labels_and_devkit_ids_out_of_wnid_order(tmp_path):
    from nas.pretrain.imagenet import find_imagenet, read_devkit_meta

    tree = make_imagenet_tree(tmp_path / "dk", val_layout="devkit", classes=4, n_train=1, n_val=2)
    data = tree.root / "ILSVRC2012_devkit_t12" / "data"
    mapping = read_devkit_meta(data / "meta.mat")
    assert sorted(mapping.values()) == tree.classes            # the non-leaf synset is left out
    assert [mapping[i] for i in sorted(mapping)] != tree.classes  # IDs are not in wnid order
    moved = tmp_path / "elsewhere"
    (data).rename(moved)
    with pytest.raises(UserError, match="no ground-truth file was found"):
        find_imagenet(tree.root)
    found = find_imagenet(tree.root, val_labels=moved / "ILSVRC2012_validation_ground_truth.txt")
    assert found.val_layout == "devkit"
    assert all(found.classes[found.val.labels[i]] == tree.val_truth[found.val.path(i).stem]
               for i in range(len(found.val)))


# --------------------------------------------------------------------------- transforms

def test_random_resized_crop_draws_within_its_ranges_and_is_reproducible():
    from nas.data.transforms import RandomResizedCrop, sample_rng

    t = RandomResizedCrop((32, 32))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    flips = 0
    for i in range(200):
        box = t.sample(sample_rng(0, 0, i), 60, 90)
        area, aspect = box.height * box.width / (60 * 90), box.width / box.height
        assert 0.06 <= area <= 1.0 and 0.7 <= aspect <= 1.4
        assert 0 <= box.top <= 60 - box.height and 0 <= box.left <= 90 - box.width
        flips += box.flip
    assert 70 < flips < 130
    a, b = t(img, sample_rng(3, 1, 7)), t(img, sample_rng(3, 1, 7))
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32) and torch.equal(a, b)
    # the full-image crop without flip is exactly Pillow's bilinear resize
    from nas.data.transforms import CropBox
    full = t.apply(img, CropBox(0, 0, 60, 90, flip=False))
    ref = np.asarray(img.resize((32, 32), Image.BILINEAR))
    assert torch.equal(full, torch.from_numpy(ref.copy()).permute(2, 0, 1))
    assert torch.equal(t.apply(img, CropBox(0, 0, 60, 90, flip=True)), full.flip(-1))
    # an image too elongated for any draw falls back to the central crop clamped to 4/3
    box = RandomResizedCrop((8, 8), scale=(0.9, 1.0)).sample(np.random.default_rng(0), 10, 200)
    assert (box.height, box.width) == (10, 13) and box.left == (200 - 13) // 2


def test_resize_center_crop_is_the_standard_256_224():
    from nas.data.transforms import ResizeCenterCrop

    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    out = ResizeCenterCrop(256, (224, 224))(Image.fromarray(arr))
    ref = Image.fromarray(arr).resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240))
    assert out.shape == (3, 224, 224)
    assert torch.equal(out, torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1))
    portrait = ResizeCenterCrop(37, (32, 32))(Image.fromarray(arr.transpose(1, 0, 2).copy()))
    assert portrait.shape == (3, 32, 32)


# --------------------------------------------------------------------------- the network

def test_backbone_keys_and_shapes_are_the_segmentation_networks(tmp_path):
    from nas.network import LGCNet
    from nas.pretrain import HEAD_PREFIX, is_backbone_key
    from nas.pretrain.model import LGCNetClassifier

    g = Genotype.load(write_genotype(tmp_path / "g.json", PAPER_TOPOLOGY_TINY, seed=3))
    seg = {k: v.shape for k, v in LGCNet(g.config, g.arch).state_dict().items()}
    cls_net = LGCNetClassifier(g.config, g.arch, num_classes=7, head_channels=16)
    mine = {k: v.shape for k, v in cls_net.state_dict().items()}
    backbone = {k: s for k, s in mine.items() if is_backbone_key(k)}
    assert backbone == {k: s for k, s in seg.items() if is_backbone_key(k)}
    assert len(backbone) > 100
    assert all(k.startswith(HEAD_PREFIX) for k in set(mine) - set(backbone))
    assert not any(k.startswith(HEAD_PREFIX) for k in seg)
    assert cls_net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_learning_rate_schedules():
    from nas.pretrain.trainer import lr_lambda

    f = lr_lambda(total_steps=100, warmup_steps=10, schedule="cosine", milestone_steps=(), gamma=0.1, min_ratio=0.0)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(99) < 0.001
    g = lr_lambda(total_steps=90, warmup_steps=0, schedule="step", milestone_steps=(30, 60, 80), gamma=0.1,
                  min_ratio=0.0)
    assert [g(s) for s in (0, 29, 30, 59, 60, 80, 89)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])


# --------------------------------------------------------------------------- learning

@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    d = tmp_path_factory.mktemp("learned")
    tree = make_imagenet_tree(d / "imagenet", val_layout="kaggle", classes=4, n_train=16, n_val=6, seed=1)
    g = write_genotype(d / "genotype.json", PAPER_TOPOLOGY_TINY, seed=0)
    out = d / "run"
    # milder crops than ImageNet's 8 % for 36-52 pixel images (seeds 0, 2, 3 reached 1.0, 0.92, 0.92)
    res = run(pretrain_args(g, tree.root, out, "--epochs", 12, "--batch-size", 16, "--lr", 0.1, "--scale-min", 0.35,
                            "--warmup-epochs", 1, "--val-every", 4, "--json"))
    assert res.exit_code == 0, res.output
    return g, tree, out, json.loads(res.stdout)


def test_learns_synthetic_classes_far_above_chance(learned):
    g, tree, out, result = learned
    epochs = [r for r in log_records(out) if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, 13))
    assert [r["epoch"] for r in epochs if r["val_top1"] is not None] == [4, 8, 12]
    print(f"val top-1 by epoch: {[(r['epoch'], r['val_top1']) for r in epochs if r['val_top1'] is not None]}")
    assert result["top1"] >= 0.75                  # chance: 0.25
    assert result["top5"] == 1.0                   # 4 classes: top-k with k = 4
    assert epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"]
    assert result["data"]["val_layout"] == "kaggle-csv" and result["data"]["val_items"] == 24
    assert json.loads((out / "result.json").read_text()) == result
    assert result["best"]["top1"] >= result["top1"] and (out / "best.pt").is_file()
    assert epochs[-1]["lr"] < 1e-3                 # cosine to zero
    start = log_records(out)[0]
    assert start["event"] == "start" and start["steps_per_epoch"] == 4 and start["warmup_steps"] == 4
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["format"] == "lgcnet-pretrain-checkpoint" and ck["classes"] == tree.classes
    assert ck["optimizer"]["param_groups"][1]["weight_decay"] == 0.0   # BN and biases
    assert ck["optimizer"]["param_groups"][0]["weight_decay"] == 4e-5


def test_nas_train_init_reports_every_backbone_tensor_matched(learned, tmp_path):
    from nas.network import LGCNet
    from nas.pretrain import is_backbone_key
    from nas.train.checkpoint import load_init_weights

    g, _, out, _ = learned
    ck = torch.load(out / "last.pt", weights_only=True)["model"]
    n = sum(1 for k in ck if is_backbone_key(k))
    res = run(["train", "--arch", g, "--dataset", "synthetic", "--epochs", 1, "--batch-size", 2, "--crop", "32x32",
               "--workers", 0, "--out", tmp_path / "ft", "--quiet", "--device", "cpu", "--stop-after", 1,
               "--init", out / "last.pt"])
    assert res.exit_code == 0, res.output
    line = next(s for s in res.output.splitlines() if s.startswith("--init"))
    assert f"backbone: {n}/{n} tensors matched" in line, line
    assert "in the file unused (e.g. pretrain_head." in line    # the classifier is reported unused
    rec = next(r for r in log_records(tmp_path / "ft") if r["event"] == "init")
    assert rec["backbone"] == {"matched": n, "total": n} and rec["source_format"] == "lgcnet-pretrain-checkpoint"
    assert rec["fusion_and_head"]["matched"] == 0
    # the weights really land in the segmentation network, running statistics included
    genotype = Genotype.load(g)
    net = LGCNet(genotype.config, genotype.arch)
    load_init_weights(net, out / "last.pt")
    for k, v in net.state_dict().items():
        if is_backbone_key(k):
            assert torch.equal(v, ck[k]), k
    # another genotype's pre-training is refused, not copied piecemeal
    other = Genotype.load(write_genotype(tmp_path / "other.json", PAPER_TOPOLOGY_TINY, seed=5))
    with pytest.raises(UserError, match="nas pretrain checkpoint of another backbone"):
        load_init_weights(LGCNet(other.config, other.arch), out / "last.pt")


# --------------------------------------------------------------------------- resume

@pytest.fixture(scope="module")
def short(tmp_path_factory):
    d = tmp_path_factory.mktemp("short")
    tree = make_imagenet_tree(d / "imagenet", val_layout="folders", classes=3, n_train=8, n_val=2, seed=2)
    g = write_genotype(d / "g.json", SHORT, seed=1)
    res = run(pretrain_args(g, tree.root, d / "straight", "--epochs", 2, "--batch-size", 4, "--dropout", 0.2,
                            "--nesterov", "--log-every", 2))
    assert res.exit_code == 0, res.output
    return g, tree, d / "straight"


def test_resume_mid_epoch_ends_with_identical_weights(short, tmp_path):
    g, tree, straight = short
    out = tmp_path / "interrupted"
    args = pretrain_args(g, tree.root, out, "--epochs", 2, "--batch-size", 4, "--dropout", 0.2, "--nesterov",
                         "--log-every", 2)
    # 24 images / batch 4 = 6 steps per epoch: stop mid-epoch 1, then mid-epoch 2 (data workers this time)
    res = run(args + ["--stop-after", 3])
    assert res.exit_code == 0 and "stopped after 3 steps" in res.output, res.output
    # as if killed after logging records whose checkpoint never landed: the resume trims them
    with open(out / "log.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "step", "global_step": 4, "loss": 9.0}) + "\n")
        fh.write(json.dumps({"event": "epoch", "epoch": 1, "train_loss": 9.0}) + "\n")
    res = run(args + ["--resume", "--stop-after", 9, "--workers", 1])
    assert res.exit_code == 0, res.output
    assert torch.load(out / "last.pt", weights_only=True)["progress"]["global_step"] == 9
    res = run(args + ["--resume", "--json"])
    assert res.exit_code == 0, res.output

    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    keys = ("epoch", "train_loss", "lr", "val_top1", "val_top5", "val_loss")
    ea = [tuple(r[k] for k in keys) for r in log_records(straight) if r["event"] == "epoch"]
    eb = [tuple(r[k] for k in keys) for r in log_records(out) if r["event"] == "epoch"]
    assert ea == eb and len(ea) == 2
    sa = [(r["global_step"], r["loss"]) for r in log_records(straight) if r["event"] == "step"]
    sb = [(r["global_step"], r["loss"]) for r in log_records(out) if r["event"] == "step"]
    assert sa == sb and [s for s, _ in sa] == [2, 4, 6, 8, 10, 12]
    assert [r["event"] for r in log_records(out)].count("resume") == 2
    assert json.loads((out / "result.json").read_text())["top1"] == json.loads((straight / "result.json").read_text())["top1"]


def test_resume_and_rerun_refusals(short, tmp_path):
    g, tree, straight = short
    args = pretrain_args(g, tree.root, straight, "--epochs", 2, "--batch-size", 4, "--dropout", 0.2, "--nesterov",
                         "--log-every", 2)
    assert_user_error(run(args), "already holds a run", "--resume")
    more_dropout = [0.3 if a == 0.2 else a for a in args]
    assert_user_error(run(more_dropout + ["--resume"]), "different training settings", "dropout: 0.2 -> 0.3")
    changed = [a if a != "--nesterov" else "--no-nesterov" for a in args]
    assert_user_error(run(changed + ["--resume"]), "nesterov: True -> False")
    other = write_genotype(tmp_path / "other.json", SHORT, seed=7)
    assert_user_error(run(pretrain_args(other, tree.root, straight, "--epochs", 2, "--batch-size", 4, "--dropout", 0.2,
                                        "--nesterov", "--resume")), "different architecture")
    assert_user_error(run(pretrain_args(g, tree.root, tmp_path / "new", "--batch-size", 4, "--resume")), "does not exist")


# --------------------------------------------------------------------------- errors

def test_bad_trees_end_with_one_error_line(tmp_path):
    import shutil

    g = write_genotype(tmp_path / "g.json", SHORT, seed=1)

    def check(root, *fragments, extra=()):
        return assert_user_error(run(pretrain_args(g, root, tmp_path / "out", "--batch-size", 2, *extra)), *fragments)

    check(tmp_path / "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty", "no ImageNet train folder", "train/<wnid>")

    def fresh(name: str, layout: str = "folders"):
        return make_imagenet_tree(tmp_path / name, val_layout=layout, classes=2, n_train=2, n_val=1)

    t = fresh("noval")
    shutil.rmtree(t.root / "val")
    check(t.root, "no ImageNet val folder")

    t = fresh("emptyclass")
    (t.root / "train" / wnid(5)).mkdir()
    check(t.root, "holds no images", wnid(5))

    t = fresh("tars")
    shutil.rmtree(t.root / "train")
    (t.root / "train").mkdir()
    (t.root / "train" / f"{wnid(0)}.tar").write_bytes(b"")
    check(t.root, "extract each class archive")

    t = fresh("mismatch")
    (t.root / "val" / wnid(0)).rename(t.root / "val" / wnid(9))
    check(t.root, "train and val classes differ", f"only in val ({wnid(9)})", f"only in train ({wnid(0)})")

    t = fresh("nolabels", "kaggle")
    (t.root / "LOC_val_solution.csv").unlink()
    check(t.root, "no ground-truth file was found", "--val-labels")

    junk = tmp_path / "junk.txt"
    junk.write_text("cat\ndog\n")
    check(t.root, "unknown val label format", extra=("--val-labels", junk))

    t = fresh("partial", "wnid-list")
    next((t.root / "val").glob("*.JPEG")).unlink()
    check(t.root, "labels 2 val images but", "holds 1")

    t = fresh("csvmismatch", "kaggle")
    csv = t.root / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace(wnid(1), wnid(7)))
    check(t.root, "which has no train class folder", wnid(7))

    t = fresh("nometa", "devkit")
    (t.root / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    check(t.root, "meta.mat", "not beside it")

    t = fresh("mixed")
    shutil.copy(next((t.root / "val").glob("*/*.JPEG")), t.root / "val" / "loose.JPEG")
    check(t.root, "holds both class folders", "and loose images (loose.JPEG)")

    t = fresh("ok")
    check(t.root, "malformed --milestones", extra=("--schedule", "step", "--milestones", "3,x"))
    check(t.root, "--milestones must be increasing", extra=("--schedule", "step", "--milestones", "5,2"))
    check(t.root, "fewer than one batch", extra=("--batch-size", 64))


def test_unreadable_image_in_a_worker_is_one_error_line(tmp_path):
    g = write_genotype(tmp_path / "g.json", SHORT, seed=1)
    t = make_imagenet_tree(tmp_path / "t", classes=2, n_train=2, n_val=1)
    bad = t.root / "train" / wnid(1) / f"{wnid(1)}_0.JPEG"
    bad.write_bytes(b"not a jpeg")
    args = pretrain_args(g, t.root, tmp_path / "out", "--batch-size", 4, "--epochs", 1)
    # the last --workers wins: one data-loading process, whose error arrives wrapped in its traceback
    assert_user_error(run(args + ["--workers", 1]), "cannot read image", bad.name)


def test_help_explains_every_option():
    res = run(["pretrain", "--help"])
    assert res.exit_code == 0
    from nas.commands.pretrain import pretrain

    for p in pretrain.params:
        if p.name == "help":
            continue
        assert getattr(p, "help", None), f"--{p.name} has no help"
        assert p.opts[0] in res.output


# --------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_amp_channels_last_on_a_gpu_then_init(tmp_path):
    tree = make_imagenet_tree(tmp_path / "imagenet", classes=4, n_train=8, n_val=2)
    g = write_genotype(tmp_path / "g.json", PAPER_TOPOLOGY_TINY, seed=0)
    out = tmp_path / "run"
    res = run(["pretrain", "--arch", g, "--data-root", tree.root, "--out", out, "--crop", 32, "--epochs", 2,
               "--batch-size", 8, "--workers", 2, "--device", "cuda", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["amp"] is True and result["channels_last"] is True and result["device"].startswith("cuda")
    assert all(np.isfinite(r["train_loss"]) for r in log_records(out) if r["event"] == "epoch")
    res = run(["train", "--arch", g, "--dataset", "synthetic", "--epochs", 1, "--batch-size", 2, "--crop", "32x32",
               "--workers", 0, "--out", tmp_path / "ft", "--quiet", "--device", "cuda", "--stop-after", 1,
               "--init", out / "last.pt"])
    assert res.exit_code == 0, res.output
    line = next(s for s in res.output.splitlines() if s.startswith("--init"))
    n = result["backbone_tensors"]
    assert f"backbone: {n}/{n} tensors matched" in line


# --------------------------------------------------------------------------- torchrun

@pytest.mark.slow
def test_torchrun_two_cpu_processes_with_an_unused_cell_input(tmp_path):
    """Two gloo processes split the global batch and the val split; a cell input whose every edge
    chose ``zero`` has no gradient, and DDP is told so instead of hanging or failing."""
    import os
    import subprocess
    import sys

    arch = LGCNetSpace(SHORT).sample_architecture(random.Random(1))
    cells = [list(c) for c in arch["cells"]]
    cells[2][0] = cells[2][2] = "zero"          # cell 2's first input feeds nothing: pre0 is unused
    cells[2][1] = "conv_3x3"
    g = Genotype(Architecture(cells=cells, fusion=arch["fusion"]), SHORT, {}).save(tmp_path / "g.json")
    tree = make_imagenet_tree(tmp_path / "imagenet", classes=3, n_train=4, n_val=3)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "nas.cli", "pretrain", "--arch", str(g), "--data-root", str(tree.root), "--epochs", "1",
         "--batch-size", "4", "--crop", "32", "--head-channels", "16", "--workers", "0", "--out", str(out),
         "--quiet", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1
    start = log_records(out)[0]
    assert start["world_size"] == 2 and start["steps_per_epoch"] == 3
    assert any(n.startswith("cells.2.pre0.") for n in start["unused_parameters"])
    result = json.loads((out / "result.json").read_text())
    assert result["data"]["val_items"] == 9 and result["world_size"] == 2
    hist = [r for r in log_records(out) if r["event"] == "epoch"]
    assert hist[0]["val_items"] == 9                   # every val image once over the two ranks
    assert_user_error(run(pretrain_args(g, tree.root, out, "--epochs", 1, "--batch-size", 4, "--head-channels", 16,
                                        "--resume")), "written by 2 processes")
