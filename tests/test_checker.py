"""The content checker: dense targets, scoring logic (with an oracle), training, artifact and CLI."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minildm.data import load_dataset
from minildm.data.shapes import COLOUR_NAMES, SHAPE_NAMES
from minildm.eval.checker import (ContentChecker, box_iou, checker_targets, evaluate_checker, object_maps,
                                  position_name, reconstruction_ceiling, score_class_samples, score_layout_samples,
                                  score_unconditional_samples, shape_confusion)
from minildm.recipes.checker import CheckerTask


def _items(n=12, size=64):
    ds = load_dataset("shapes", "val", size, length=n)
    return [ds[i] for i in range(n)]


class Oracle(nn.Module):
    """Answers with the ground truth of the items it was given: perfect predictions."""

    def __init__(self, items, image_size=64):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.n_colours, self.n_shapes = len(COLOUR_NAMES), len(SHAPE_NAMES)
        self.t = checker_targets([it["objects"] for it in items], image_size)

    def forward(self, x):
        n = x.shape[0]
        sizes = {"shape": self.n_shapes, "colour": self.n_colours, "count": 3,
                 "colour_map": self.n_colours + 1, "shape_map": self.n_shapes + 1}
        out = {}
        for k, c in sizes.items():
            one_hot = F.one_hot(self.t[k][:n], c).float()
            out[k] = one_hot if one_hot.ndim == 2 else one_hot.permute(0, 3, 1, 2)
        return out


def test_object_maps_cover_every_object_with_the_main_one_on_top():
    for it in _items(20):
        colour, shape = object_maps(it["objects"], 16)
        present = set(colour.ravel().tolist()) - {len(COLOUR_NAMES)}
        assert present == {o["colour_id"] for o in it["objects"]}  # small objects keep >= 1 cell
        main = it["objects"][0]
        cx, cy = main["centre"]
        assert colour[int(cy * 16), int(cx * 16)] == main["colour_id"]
        assert shape[int(cy * 16), int(cx * 16)] == main["shape_id"]
        assert ((colour == len(COLOUR_NAMES)) == (shape == len(SHAPE_NAMES))).all()


class Scaled(nn.Module):
    """The oracle's one-hot answers as logits times ``scale`` (its confidence); ``blank`` paints every cell of
    the colour map with colour 0."""

    def __init__(self, oracle, scale, blank=False):
        super().__init__()
        self.oracle, self.scale, self.blank = oracle, scale, blank
        self.n_colours, self.n_shapes = oracle.n_colours, oracle.n_shapes

    def forward(self, x):
        out = {k: v * self.scale for k, v in self.oracle(x).items()}
        if self.blank:
            out["colour_map"] = torch.zeros_like(out["colour_map"])
            out["colour_map"][:, 0] = self.scale
        return out


def test_unconditional_score_asks_for_a_confident_object_sized_region():
    items = _items(8)
    images = torch.stack([it["image"] for it in items])
    oracle = Oracle(items)
    assert score_unconditional_samples(Scaled(oracle, 20.0), images) == {"objects": 1.0, "shapes": 1.0}
    # the same labels read with little confidence (as the checker reads noise) are no objects
    assert score_unconditional_samples(Scaled(oracle, 1.0), images) == {"objects": 0.0, "shapes": 0.0}
    # one colour over the whole image is a blank square, not an object
    assert score_unconditional_samples(Scaled(oracle, 20.0, blank=True), images)["objects"] == 0.0


def test_box_iou_and_position_names():
    a = torch.tensor([0.0, 0.0, 0.5, 0.5])
    assert box_iou(a, a) == 1.0 and box_iou(a, torch.tensor([0.5, 0.5, 1.0, 1.0])) == 0.0
    assert box_iou(a, torch.tensor([0.25, 0.0, 0.75, 0.5])).item() == pytest.approx(1 / 3)
    assert box_iou(a, torch.full((4,), float("nan"))) == 0.0
    assert position_name(0.1, 0.1) == "top left" and position_name(0.5, 0.5) == "centre"
    assert position_name(0.9, 0.5) == "right"


def test_scores_with_a_perfect_checker_and_with_wrong_requests():
    items = _items(12)
    oracle = Oracle(items)
    images = torch.stack([it["image"] for it in items])
    shapes = torch.tensor([it["objects"][0]["shape_id"] for it in items])
    colours = torch.tensor([it["objects"][0]["colour_id"] for it in items])
    right = score_class_samples(oracle, images, shapes, colours)
    assert right == {"acc_shape": 1.0, "acc_colour": 1.0, "acc_all": 1.0}
    wrong = score_class_samples(oracle, images, (shapes + 1) % 7, colours)
    assert wrong["acc_shape"] == 0.0 and wrong["acc_colour"] == 1.0 and wrong["acc_all"] == 0.0
    confusion = shape_confusion(oracle, images, (shapes + 1) % 7)
    assert confusion.sum() == len(items) and confusion.trace() == 0
    assert all(confusion[(s + 1) % 7, s] > 0 for s in shapes.tolist())
    assert torch.equal(shape_confusion(oracle, images, shapes).diagonal(), torch.bincount(shapes, minlength=7))
    layouts = [it["objects"] for it in items]
    good = score_layout_samples(oracle, images, layouts)
    assert good["found"] == 1.0 and good["acc_shape"] >= 0.95 and good["iou"] > 0.6
    assert good["centre_error"] < 0.07 and good["n_objects"] == sum(len(o) for o in layouts)
    shifted = [[{**o, "box": (min(o["box"][0] + 0.3, 0.6), o["box"][1], min(o["box"][2] + 0.3, 1.0), o["box"][3])}
                for o in objs] for objs in layouts]
    bad = score_layout_samples(oracle, images, shifted)
    assert bad["iou"] < good["iou"] - 0.2 and bad["centre_error"] > good["centre_error"]
    with pytest.raises(ValueError, match="12 images for 11 layouts"):
        score_layout_samples(oracle, images, layouts[:11])


class SharpOracle(Oracle):
    """The oracle, but blind to flat images: it answers class 0 everywhere for them."""

    def forward(self, x):
        out = super().forward(x)
        flat = x.flatten(2).std(2).amax(1) < 0.05
        for k, v in out.items():
            blind = torch.zeros_like(v)
            blind[:, 0] = 1.0
            out[k] = torch.where(flat.view(-1, *[1] * (v.ndim - 1)), blind, v)
        return out


class Flatten(nn.Module):
    """A first stage that loses everything: D(E(x)) is the image's mean colour."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode_latent(self, x):
        return x.mean((2, 3), keepdim=True)

    def decode_latent(self, z):
        return z.expand(-1, -1, 64, 64)


def test_reconstruction_ceiling():
    from minildm.models.autoencoder import IdentityConfig, IdentityFirstStage

    items = _items(12)
    checker = SharpOracle(items)
    real = evaluate_checker(checker, items, 12)
    assert reconstruction_ceiling(checker, IdentityFirstStage(IdentityConfig(3, 64)), items, 12) == real
    lost = reconstruction_ceiling(checker, Flatten(), items, 12)
    assert real["acc_colour"] == 1.0 and lost["acc_colour"] < 0.5 and lost["layout_iou"] < real["layout_iou"]
    assert torch.equal(items[0]["image"], _items(1)[0]["image"])  # the dataset's items are untouched


def test_checker_shapes_learns_and_rejects_bad_input():
    torch.manual_seed(0)
    net = ContentChecker(width=8)
    items = _items(8, 32)
    batch = {"image": torch.stack([it["image"] for it in items]), "objects": [it["objects"] for it in items]}
    out = net(batch["image"])
    assert out["colour_map"].shape == (8, 9, 8, 8) and out["shape"].shape == (8, 7) and out["count"].shape == (8, 3)
    task = CheckerTask(net, lr=3e-3)
    opt = task.configure_optimizers()["net"]
    losses = []
    for step in range(40):  # over-fit one batch
        loss, logs = task.training_step(batch, step, "net")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match="lr"):
        CheckerTask(net, lr=0)


def test_checker_artifact_and_cli(tmp_path, capsys):
    from minildm.cli import main
    from minildm.recipes.store import load_artifact

    assert main(["train-checker", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "checker (preset smoke) on 32 shapes val images" in out
    art = load_artifact("checker", "smoke", root=tmp_path)
    assert {"acc_shape", "acc_colour", "acc_count", "acc_position", "layout_iou", "layout_found"} <= set(art.metrics)
    assert art.metrics["command"] == "python -m minildm train-checker --preset smoke"
