"""Figures of notebook 04: boxes, attention overlays, checker colour maps."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minildm.data import load_dataset  # noqa: E402
from minildm.notebook import viz  # noqa: E402


def test_draw_boxes_one_patch_per_object():
    item = load_dataset("shapes", "val", 64, length=1)[0]
    fig, ax = plt.subplots()
    ax.imshow(viz.to_numpy_image(item["image"]))
    viz.draw_boxes(ax, item["objects"], 64)
    assert len(ax.patches) == len(item["objects"]) and len(ax.texts) == len(item["objects"])
    x0, y0, x1, y1 = item["objects"][0]["box"]
    assert ax.patches[0].get_width() == pytest.approx((x1 - x0) * 64)
    plt.close(fig)


def test_attention_overlay_and_colour_map():
    img = torch.zeros(3, 16, 16)
    a = torch.zeros(4, 4)
    a[0, 0] = 1.0
    out = viz.attention_overlay(img, a)
    assert out.shape == (16, 16, 3) and 0 <= out.min() and out.max() <= 1
    assert out[0, 0].sum() > out[15, 15].sum()  # the attended corner is brighter
    shared = viz.attention_overlay(img, a * 0.25, vmax=1.0)  # on a shared scale a weaker map is darker
    assert np.allclose(viz.attention_overlay(img, a * 0.25), out) and shared[0, 0].sum() < out[0, 0].sum()
    with pytest.raises(ValueError, match="one map"):
        viz.attention_overlay(img, torch.zeros(2, 4, 4))
    ids = torch.tensor([[0, 8], [3, 8]])
    rgb = viz.colour_map_image(ids)
    assert rgb.shape == (2, 2, 3) and (rgb[0, 1] == rgb[1, 1]).all() and not (rgb[0, 0] == rgb[1, 0]).all()
    with pytest.raises(ValueError, match="colour ids"):
        viz.colour_map_image(torch.tensor([[9]]))
