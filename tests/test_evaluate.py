"""``nas eval``: whole-split aggregation against a hand-computed confusion matrix, resolution
handling, sharding, the result file, and clear errors for unusable checkpoints."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from nas.cli import cli
from nas.config import SpaceConfig
from nas.data.base import SegDataset
from nas.data.palette import LabelSpec
from nas.genotype import Architecture, Genotype
from nas.runtime import DistContext
from nas.space import LGCNetSpace
from nas.train.evaluate import evaluate_split

SHORT = SpaceConfig(num_cells=5, reduction_cells=(1, 3), fusion_inputs=(0, 2, 4), init_channels=4,
                    head_channels=8, fusion_channels=8, num_classes=5)


# --------------------------------------------------------------------------- hand-computed

class FixedPairs(SegDataset):
    """Images whose first channel holds the class to predict; labels as given (255 = ignore)."""

    def __init__(self, preds: list[np.ndarray], labels: list[np.ndarray]):
        spec = LabelSpec("hand", ("a", "b", "c"), ((255, 0, 0), (0, 255, 0), (0, 0, 255)))
        super().__init__(spec, "val", None, self._to_tensors)
        self.preds, self.labels = preds, labels

    @staticmethod
    def _to_tensors(image, label, rng):
        return torch.from_numpy(image).permute(2, 0, 1).float(), torch.from_numpy(label)

    def __len__(self) -> int:
        return len(self.preds)

    def load(self, i: int):
        img = np.repeat(self.preds[i][..., None], 3, axis=2).astype(np.uint8)
        return img, self.labels[i].astype(np.int64)

    def describe(self, i: int) -> str:
        return f"hand:{i}"


class ReadsPrediction(nn.Module):
    """A network whose logits are one-hot in the class written in the image's first channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x[:, 0].round().long(), 3).permute(0, 3, 1, 2).float()


PREDS = [np.array([[0, 0, 1], [1, 2, 2]]), np.array([[2, 2, 2], [0, 1, 0]])]
LABELS = [np.array([[0, 1, 1], [1, 2, 255]]), np.array([[2, 255, 0], [0, 0, 0]])]
# Counted pixels (label != 255), rows = truth, cols = prediction:
#   image 0: (0,0) (1,0) (1,1) (1,1) (2,2)        [the (255 -> 2) pixel is ignored]
#   image 1: (2,2) (0,2) (0,0) (0,1) (0,0)        [the (255 -> 2) pixel is ignored]
HAND = np.array([[3, 1, 1],
                 [1, 2, 0],
                 [0, 0, 2]])
# IoU_c = TP / (row + col - TP): a 3/(5+4-3), b 2/(3+3-2), c 2/(2+3-2)
HAND_IOU = [3 / 6, 2 / 4, 2 / 3]


def test_whole_split_confusion_matrix_matches_hand_computation():
    ds = FixedPairs(PREDS, LABELS)
    for batch in (1, 2):
        cm = evaluate_split(ReadsPrediction(), ds, device="cpu", batch_size=batch)
        assert cm.matrix.tolist() == HAND.tolist()
        assert cm.iou().tolist() == pytest.approx(HAND_IOU)
        assert cm.miou() == pytest.approx(sum(HAND_IOU) / 3)
    # aggregation is over the split, not a mean of per-image mIoUs
    per_image = [evaluate_split(ReadsPrediction(), FixedPairs([p], [t]), device="cpu").miou()
                 for p, t in zip(PREDS, LABELS)]
    assert not math.isclose(sum(per_image) / 2, sum(HAND_IOU) / 3)


def test_shards_over_ranks_add_up_to_the_whole_split():
    preds = [np.random.default_rng(i).integers(0, 3, (4, 5)) for i in range(5)]
    labels = [np.where(np.random.default_rng(10 + i).random((4, 5)) < 0.2, 255,
                       np.random.default_rng(20 + i).integers(0, 3, (4, 5))) for i in range(5)]
    ds = FixedPairs(preds, labels)
    whole = evaluate_split(ReadsPrediction(), ds, device="cpu")
    parts = [evaluate_split(ReadsPrediction(), ds, device="cpu", ctx=DistContext(rank=r, world_size=3))
             for r in range(3)]
    total = parts[0]
    for p in parts[1:]:
        total.merge(p)
    assert torch.equal(total.matrix, whole.matrix)
    assert int(whole.matrix.sum()) == sum(int((t != 255).sum()) for t in labels)


def test_logits_are_upsampled_to_label_resolution():
    """With --resolution the network sees a resized image; scoring happens on every label pixel."""
    from nas.train.evaluate import DataSource, eval_dataset

    seen: set = set()
    ds = eval_dataset(DataSource("synthetic", synthetic_length=3), "val", num_classes=5, resolution=(32, 48))
    net = torch.nn.Conv2d(3, 5, 1)
    cm = evaluate_split(net, ds, device="cpu", input_sizes=seen)
    assert seen == {(32, 48)}
    native = eval_dataset(DataSource("synthetic", synthetic_length=3), "val", num_classes=5, resolution=None)
    labelled = sum(int((native[i][1] != 255).sum()) for i in range(3))
    assert native[0][1].shape == (64, 128)
    assert int(cm.matrix.sum()) == labelled


# --------------------------------------------------------------------------- checkpoints via the CLI

def write_genotype(path: Path, config: SpaceConfig, seed: int) -> Path:
    arch = LGCNetSpace(config).sample_architecture(random.Random(seed))
    Genotype(Architecture.from_dict(arch), config, {}).save(path)
    return path


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ")
    for f in fragments:
        assert f in last, last
    return last


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    g = write_genotype(d / "g.json", SHORT, seed=3)
    res = run(["train", "--arch", g, "--dataset", "synthetic", "--epochs", 1, "--batch-size", 4,
               "--crop", "32x32", "--workers", 0, "--out", d / "run", "--quiet", "--device", "cpu",
               "--stop-after", 2])
    assert res.exit_code == 0, res.output
    return g, d / "run" / "last.pt"


def test_result_file_is_what_nas_report_reads(checkpoint, tmp_path):
    from nas.report import load_miou_records

    g, ck = checkpoint
    res = run(["eval", "--checkpoint", ck, "--dataset", "synthetic", "--resolution", "32x64",
               "--reports", tmp_path, "--workers", 0, "--device", "cpu", "--name", "tiny run"])
    assert res.exit_code == 0, res.output
    assert "mIoU" in res.output and "background" in res.output
    (rec,) = load_miou_records(tmp_path)
    assert (tmp_path / "miou" / "tiny_run.json").is_file()
    assert rec.resolution == "32x64" and rec.split == "val" and rec.dataset == "synthetic"
    assert list(rec.per_class) == ["background", "shape1", "shape2", "shape3", "shape4"]
    assert rec.extra["checkpoint"]["global_step"] == 2
    assert rec.extra["pixels"] == sum(rec.extra["confusion_matrix"][i][j] for i in range(5) for j in range(5))


def test_checkpoint_for_a_different_architecture(checkpoint, tmp_path):
    g, ck = checkpoint
    other = write_genotype(tmp_path / "other.json", SHORT, seed=11)
    last = assert_user_error(run(["eval", "--checkpoint", ck, "--dataset", "synthetic", "--arch", other,
                                  "--no-write", "--device", "cpu"]), "different architecture")
    assert "edge" in last and " vs " in last and "config num_classes" not in last
    assert "given as genotype vs checkpoint" in last
    # the searched genotype passes: its class count (19) is not the trained one (synthetic: 5) ...
    res = run(["eval", "--checkpoint", ck, "--dataset", "synthetic", "--arch", g, "--no-write",
               "--device", "cpu", "--workers", 0])
    assert res.exit_code == 0, res.output
    # ... but another width is another network
    wide = json.loads(g.read_text())
    wide["config"]["width_mult"] = 1.5
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    assert_user_error(run(["eval", "--checkpoint", ck, "--dataset", "synthetic", "--arch", tmp_path / "wide.json",
                           "--no-write", "--device", "cpu"]), "config width_mult: 1.5 vs 1.0")


def test_checkpoint_whose_weights_do_not_fit_its_genotype(checkpoint, tmp_path):
    g, ck = checkpoint
    raw = torch.load(ck, weights_only=True)
    other = Genotype.load(write_genotype(tmp_path / "other.json", SHORT.replace(num_classes=5), seed=11))
    raw["genotype"] = other.to_dict()
    torch.save(raw, tmp_path / "swapped.pt")
    assert_user_error(run(["eval", "--checkpoint", tmp_path / "swapped.pt", "--dataset", "synthetic",
                           "--no-write", "--device", "cpu"]), "does not fit the architecture", "tensors")


def test_unusable_checkpoint_files(checkpoint, tmp_path):
    g, ck = checkpoint
    # a genotype of another search-space version inside the checkpoint
    raw = torch.load(ck, weights_only=True)
    raw["genotype"]["space_version"] = 7
    torch.save(raw, tmp_path / "v7.pt")
    assert_user_error(run(["eval", "--checkpoint", tmp_path / "v7.pt", "--dataset", "synthetic", "--no-write"]),
                      "search-space version 7")
    # plain weights are not a training checkpoint
    torch.save(raw["model"], tmp_path / "weights.pt")
    assert_user_error(run(["eval", "--checkpoint", tmp_path / "weights.pt", "--dataset", "synthetic"]),
                      "not an LGCNet training checkpoint")
    # a pickle that needs code to load is refused, never executed
    torch.save({"x": FixedPairs}, tmp_path / "code.pt")
    assert_user_error(run(["eval", "--checkpoint", tmp_path / "code.pt", "--dataset", "synthetic"]),
                      "tensors-only")
    assert_user_error(run(["eval", "--checkpoint", tmp_path / "absent.pt", "--dataset", "synthetic"]),
                      "does not exist")
    assert_user_error(run(["eval", "--checkpoint", ck, "--dataset", "camvid", "--data-root", tmp_path]),
                      "trained on synthetic")


def test_eval_on_a_data_root_with_an_orphan_image(tmp_path, checkpoint):
    from data_trees import make_camvid_tree

    g, ck = checkpoint
    root = make_camvid_tree(tmp_path / "cv", n_train=2, n_val=2)
    out = tmp_path / "run"
    res = run(["train", "--arch", g, "--dataset", "camvid", "--data-root", root, "--epochs", 1,
               "--batch-size", 2, "--crop", "32x32", "--workers", 0, "--out", out, "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    orphan = sorted((root / "valannot").glob("*.png"))[0]
    orphan.unlink()
    assert_user_error(run(["eval", "--checkpoint", out / "last.pt", "--dataset", "camvid", "--data-root", root,
                           "--no-write", "--device", "cpu"]), "missing CamVid label file", orphan.name)
