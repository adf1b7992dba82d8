"""The compositional prompt set and its scoring by the checker."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minildm.data import load_dataset
from minildm.data.shapes import COLOUR_NAMES, SHAPE_NAMES
from minildm.eval.checker import checker_targets, score_prompt_samples
from minildm.eval.prompts import parse_request, prompt_for, prompt_set
from minildm.recipes.presets import T2I_HOLDOUT


def test_prompt_set_groups_kinds_and_determinism():
    sets = prompt_set(4, T2I_HOLDOUT)
    assert {k: len(v) for k, v in sets.items()} == {"seen": 12, "held_out": 12}
    pairs = {tuple(p.split()) for p in T2I_HOLDOUT}
    for group, requests in sets.items():
        assert [r.kind for r in requests] == ["single"] * 4 + ["position"] * 4 + ["two"] * 4
        for r in requests:
            held = any((o["colour"], o["shape"]) in pairs for o in r.objects)
            assert held == (group == "held_out") == r.held_out
            assert r.count == (2 if r.kind == "two" else 1)
            assert all(o["position"] for o in r.objects) == (r.kind == "position")
    assert prompt_set(4, T2I_HOLDOUT) == sets
    assert prompt_set(3)["held_out"] == []


def test_prompt_phrasing_and_bad_requests():
    r = parse_request([("red", "star", "top left"), ("blue", "circle")])
    assert r.prompt == "two shapes: a red star in the top left and a blue circle" and r.kind == "two"
    assert parse_request([("red", "star")], holdout=["red star"]).held_out
    assert prompt_for([{"colour": "orange", "shape": "cross"}]) == "an orange cross"
    with pytest.raises(ValueError, match="unknown shape"):
        parse_request([("red", "blob")])
    with pytest.raises(ValueError, match="different colours"):
        parse_request([("red", "star"), ("red", "circle")])
    with pytest.raises(ValueError, match="at least one"):
        prompt_for([])
    with pytest.raises(ValueError, match="n_per_kind"):
        prompt_set(0)


class Oracle(nn.Module):
    """Perfect predictions for the given scenes' objects."""

    def __init__(self, objects, image_size=64):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.t = checker_targets(objects, image_size)

    def forward(self, x):
        sizes = {"shape": len(SHAPE_NAMES), "colour": len(COLOUR_NAMES), "count": 3,
                 "colour_map": len(COLOUR_NAMES) + 1, "shape_map": len(SHAPE_NAMES) + 1}
        out = {}
        for k, c in sizes.items():
            one_hot = F.one_hot(self.t[k][: x.shape[0]], c).float()
            out[k] = one_hot if one_hot.ndim == 2 else one_hot.permute(0, 3, 1, 2)
        return out


def test_scoring_with_a_perfect_checker_and_wrong_requests():
    requests = prompt_set(3)["seen"]
    ds = load_dataset("shapes", "val", 64, length=max(r.meta["scene"] for r in requests) + 1, cache=False)
    items = [ds[r.meta["scene"]] for r in requests]
    oracle = Oracle([it["objects"] for it in items])
    images = torch.zeros(len(items), 3, 64, 64)
    score = score_prompt_samples(oracle, images, requests)
    assert score["all_correct"] == 1.0 and score["acc_count"] == 1.0 and score["acc_position"] == 1.0
    # ask for another colour / shape / position / count: each is caught
    wrong = []
    for r in requests:
        objs = [dict(o) for o in r.objects]
        objs[0]["colour_id"] = (objs[0]["colour_id"] + 1) % len(COLOUR_NAMES)
        if all(o["colour_id"] != objs[0]["colour_id"] for o in objs[1:]):
            wrong.append(objs)
        else:
            wrong.append(objs[1:] + [dict(objs[0], colour_id=(objs[0]["colour_id"] + 2) % 8)])
    assert score_prompt_samples(oracle, images, wrong)["acc_colour"] < 1.0
    shapes = [[dict(o, shape_id=(o["shape_id"] + 1) % 7) for o in r.objects] for r in requests]
    assert score_prompt_samples(oracle, images, shapes)["acc_shape"] == 0.0
    far = {"top left": "bottom right", "bottom right": "top left"}
    moved = [[dict(o, position=far.get(o["position"], "top left") if o["position"] else None) for o in r.objects]
             for r in requests]
    assert score_prompt_samples(oracle, images, moved)["acc_position"] < 1.0
    extra = [list(r.objects) + [{"shape_id": 0, "colour_id": 7 - r.objects[0]["colour_id"], "position": None}]
             for r in requests]
    assert score_prompt_samples(oracle, images, extra)["acc_count"] == 0.0
    with pytest.raises(ValueError, match="images for"):
        score_prompt_samples(oracle, images[:2], requests)
