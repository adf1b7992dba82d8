import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from minildm.notebook import viz


def test_to_numpy_image_range_and_layout():
    x = torch.linspace(-1, 1, 3 * 4 * 5).reshape(3, 4, 5)
    arr = viz.to_numpy_image(x)
    assert arr.shape == (4, 5, 3)
    assert arr.min() == 0.0 and arr.max() == 1.0
    assert viz.to_numpy_image(x[:1]).shape == (4, 5)
    with pytest.raises(ValueError):
        viz.to_numpy_image(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError):
        viz.to_numpy_image(torch.zeros(1, 3, 4, 4))


def test_error_map_and_zoom():
    x = torch.zeros(3, 8, 8)
    y = x.clone()
    y[:, 2, 3] = 1.0
    e = viz.error_map(x, y)
    assert e.shape == (8, 8) and e[2, 3] == 1.0 and e.sum() == 1.0
    z = viz.zoom(y, (2, 3, 2), scale=3)
    assert z.shape == (3, 6, 6) and torch.all(z[:, :3, :3] == 1.0) and torch.all(z[:, 3:, :] == 0.0)
    with pytest.raises(ValueError):
        viz.zoom(y, (7, 7, 4))
    with pytest.raises(ValueError):
        viz.error_map(x, torch.zeros(3, 4, 4))


def test_latent_channels_normalised_per_channel():
    z = torch.stack([torch.arange(16.0).reshape(4, 4), -5 * torch.arange(16.0).reshape(4, 4)])
    v = viz.latent_channels(z)
    assert torch.allclose(v.amin(dim=(1, 2)), torch.tensor([-1.0, -1.0]))
    assert torch.allclose(v.amax(dim=(1, 2)), torch.tensor([1.0, 1.0]))


def test_figures_and_save(tmp_path, monkeypatch):
    imgs = torch.rand(3, 3, 16, 16) * 2 - 1
    fig = viz.image_grid(list(imgs) + [viz.error_map(imgs[0], imgs[1])], titles=["a", "b", "c", "err"], ncols=2)
    assert len(fig.axes) == 4
    fig2 = viz.comparison_figure(imgs[:2], {"m1": imgs[:2], "m2": -imgs[:2]}, zoom_box=(0, 0, 8))
    assert len(fig2.axes) == 2 * 5
    assert viz.save_figure(fig, "grid") is None or "MINILDM_FIGURES" in __import__("os").environ
    monkeypatch.setenv("MINILDM_FIGURES", str(tmp_path))
    path = viz.save_figure(fig2, "cmp")
    assert path is not None and path.exists() and path.stat().st_size > 1000
    with pytest.raises(ValueError):
        viz.image_grid([])


def test_format_table():
    t = viz.format_table({"a": {"psnr": 30.123, "lpips": 0.1}, "b": {"psnr": 20.0, "lpips": 0.3}},
                         formats={"psnr": ".2f", "lpips": ".3f"})
    lines = t.splitlines()
    assert lines[0] == "| model | psnr | lpips |"
    assert lines[2] == "| a | 30.12 | 0.100 |"
    with pytest.raises(ValueError):
        viz.format_table({})
