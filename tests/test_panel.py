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
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("ablate-f --preset smoke --f 8" in t for t in texts)
    plt.close(fig)
    with pytest.raises(ValueError, match="no model"):
        p.reconstructions(8, "val")
