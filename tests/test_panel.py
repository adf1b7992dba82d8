"""The instructor panel of notebook 02, headless: every option combination draws, widgets update."""
from __future__ import annotations

import itertools

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minildm.models.autoencoder import AutoencoderKL, IdentityConfig, IdentityFirstStage  # noqa: E402
from minildm.notebook.panel import SPLITS, VIEWS, FactorPanel  # noqa: E402
from minildm.recipes.ablation import first_stage_config  # noqa: E402
from minildm.recipes.autoencoder import autoencoder_model_config  # noqa: E402
from minildm.recipes.presets import get_preset  # noqa: E402

FACTORS = (1, 4)


@pytest.fixture(scope="module")
def panel():
    p = get_preset("smoke")
    models = {1: IdentityFirstStage(IdentityConfig(3, 64)),
              4: AutoencoderKL(autoencoder_model_config("kl", p.with_ae(image_size=64), first_stage_config(4, p)))}
    rows = {1: {"psnr": 100.0, "lpips": 0.0, "fid": 0.0, "unet_step_ms": 50.0},
            4: {"psnr": 20.0, "lpips": 0.2, "fid": 1.0, "unet_step_ms": 5.0}}
    return FactorPanel(p, factors=FACTORS, n_images=2, device="cpu", models=models, rows=rows)


def test_every_option_combination_renders(panel):
    for f, compare, index, split, view in itertools.product(FACTORS, ("none", *FACTORS), range(2), SPLITS, VIEWS):
        fig = panel.render(f, compare, index, split, view)
        assert len(fig.axes) == 1 + (1 if compare == "none" else 2) + 4
        plt.close(fig)


def test_bad_choices(panel):
    for kwargs, match in [(dict(f=8), "not offered"), (dict(f=4, compare=16), "compare"),
                          (dict(f=4, index=5), "index"), (dict(f=4, split="train"), "split"),
                          (dict(f=4, view="3d"), "view")]:
        with pytest.raises(ValueError, match=match):
            panel.render(**kwargs)


def test_widgets_drive_updates(panel):
    box = panel.widget()
    assert box is not None and len(panel.timings) == 1
    controls = panel.widgets()
    controls["compare"].value = 1
    controls["view"].value = "latent channels"
    controls["index"].value = 1
    assert len(panel.timings) == 4
    assert panel.value() == {"f": 4, "compare": 1, "index": 1, "split": "val", "view": "latent channels"}
    plt.close("all")


def test_missing_artifacts_name_their_command(tmp_path):
    p = FactorPanel("smoke", factors=(1, 8), n_images=1, device="cpu", root=tmp_path)
    assert set(p.missing) == {1, 8}
    assert p.command(8) == "python -m minildm ablate-f --preset smoke --f 8"
    fig = p.render(8, 1)  # draws the command instead of an image
    texts = [" ".join(t.get_text().split()) for ax in fig.axes for t in ax.texts]
    assert any("ablate-f --preset smoke --f 8" in t for t in texts)  # wrapped to fit its panel
    plt.close(fig)
    with pytest.raises(ValueError, match="no model"):
        p.reconstructions(8, "val")


def test_titles_give_the_shown_images_own_quality(panel):
    """Each reconstruction's title has that image's PSNR and LPIPS (not the dataset means of ``rows``), and the
    curves of FD-feat and step time have log axes."""
    from minildm.eval.metrics import psnr

    fig = panel.render(4, 1, index=1, split="val", view="reconstruction")
    x, rec = panel.images("val")[1:2], panel.reconstructions(4, "val")[0][1:2]
    titles = [ax.get_title() for ax in fig.axes]
    assert any(f"this image: PSNR {float(psnr(x, rec)):.1f} dB" in t for t in titles)
    assert any("this image: PSNR ∞ dB, LPIPS 0.000" in t for t in titles)  # f = 1 reconstructs exactly
    assert not any("PSNR 20.0 dB" in t for t in titles)
    scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes if "(log)" in ax.get_title()}
    assert len(scales) == 2 and set(scales.values()) == {"log"}
    plt.close(fig)
