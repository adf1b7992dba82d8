"""Tests for minildm.models.asymmetric_decoder and its artifact kl-f4-photos-asym (notebook 06)."""
from __future__ import annotations

import pytest
import torch

from minildm.models.asymmetric_decoder import AsymmetricDecoderKL
from minildm.models.autoencoder import AutoencoderKL
from minildm.models.encoder_decoder import AutoencoderConfig

CONFIG = AutoencoderConfig(resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, norm_num_groups=4)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _pair() -> tuple[AutoencoderKL, AsymmetricDecoderKL]:
    ae = AutoencoderKL(CONFIG)
    asym = AsymmetricDecoderKL(CONFIG)
    missing, unexpected = asym.load_state_dict(ae.state_dict(), strict=False)
    assert all(k.startswith(("decoder.branch.", "decoder.fuse.")) for k in missing)
    assert all(k.startswith(("encoder.", "quant_conv.")) for k in unexpected)
    return ae, asym


def test_it_starts_as_the_plain_decoder_and_reads_its_weights():
    ae, asym = _pair()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    m = (torch.rand(2, 1, 16, 16) > 0.5).float()
    z = ae.encode(x).mode()
    assert torch.equal(asym.decode(z), ae.decode(z))
    assert torch.allclose(asym.decode(z, x * (1 - m), m), ae.decode(z), atol=1e-6)  # zero-initialised fusions


def test_the_known_pixels_change_the_output_once_trained():
    _, asym = _pair()
    for conv in asym.decoder.fuse:
        torch.nn.init.normal_(conv.weight, std=0.1)
    z = torch.randn(1, 4, 4, 4)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:12, 4:12] = 1
    a = asym.decode(z, -torch.ones(1, 3, 16, 16) * (1 - m), m)
    b = asym.decode(z, torch.ones(1, 3, 16, 16) * (1 - m), m)
    assert (a - b).abs().max() > 1e-3


def test_paste_keeps_the_known_pixels_exactly():
    _, asym = _pair()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    m = torch.zeros(2, 1, 16, 16)
    m[..., 2:9, 3:11] = 1
    out = asym.paste(torch.randn(2, 4, 4, 4), x, m)
    assert out.shape == x.shape and torch.equal(out[(1 - m).bool().expand_as(x)], x[(1 - m).bool().expand_as(x)])
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("masked, mask, match", [
    ((1, 3, 16, 16), None, "together"),
    ((1, 3, 8, 8), (1, 1, 8, 8), "must be"),
    ((1, 3, 16, 16), (1, 2, 16, 16), "must be"),
    ((2, 3, 16, 16), (2, 1, 16, 16), "must be"),
    ((1, 1, 16, 16), (1, 1, 16, 16), "masked image"),
])
def test_bad_inputs_get_one_clear_error(masked, mask, match):
    _, asym = _pair()
    with pytest.raises(ValueError, match=match):
        asym.decode(torch.randn(1, 4, 4, 4), torch.zeros(masked), None if mask is None else torch.zeros(mask))


def test_training_fits_the_hole_and_leaves_the_encoder_alone():
    from minildm.recipes.asymmetric_decoder import AsymmetricDecoderTask

    ae, asym = _pair()
    encoder_before = {k: v.clone() for k, v in ae.state_dict().items() if k.startswith("encoder.")}
    task = AsymmetricDecoderTask(asym, ae, lr=3e-3, lpips_net="alex", seed=0)
    opt = task.configure_optimizers()["decoder"]
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8) * 2 - 1, size=32, mode="bilinear")  # LPIPS needs 32
    losses = []
    for step in range(25):
        loss, logs = task.training_step({"image": x}, step % 2, "decoder")  # two fixed sets of holes
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert set(logs) == {"train/loss", "train/l1_hole", "train/lpips"}
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4])
    assert all(torch.equal(v, ae.state_dict()[k]) for k, v in encoder_before.items())
    assert any(conv.weight.abs().sum() > 0 for conv in asym.decoder.fuse)


def test_the_artifact_builds_measures_and_serves_inpainting(tmp_path):
    from minildm.recipes.image_to_image_eval import sample_inpainting
    from minildm.recipes.store import build_artifact, load_artifact, load_or_train

    art = build_artifact("kl-f4-photos-asym", "smoke", progress=False, root=tmp_path)
    m = art.metrics
    assert m["command"] == "python -m minildm train-first-stage --asymmetric --preset smoke"
    for name in ("plain", "asymmetric"):
        assert set(m[name]) == {"lpips", "photos", "shapes"} and all(v >= 0 for v in m[name].values())
    again = load_artifact("kl-f4-photos-asym", "smoke", root=tmp_path)
    assert isinstance(again.model, AsymmetricDecoderKL)
    ldm = load_or_train("ldm-inpaint", "smoke", root=tmp_path, progress=False).model
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    h = torch.zeros(2, 1, 64, 64)
    h[..., 8:40, 16:48] = 1
    out = sample_inpainting(ldm, x, h, steps=2, decoder=again.model)
    assert out.shape == x.shape and torch.equal(out * (1 - h), x * (1 - h))


def test_the_command_refuses_other_first_stages(capsys):
    from minildm.cli import main

    assert main(["train-first-stage", "--asymmetric", "--f", "8", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "--asymmetric builds kl-f4-photos-asym" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("decoder", ["asymmetric", "plain"])
def test_the_inpaint_command_keeps_the_known_pixels(tmp_path, capsys, decoder):
    import numpy as np
    from PIL import Image

    from minildm.cli import main

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 48, 3)).astype(np.uint8)
    mask = np.zeros((32, 48), np.uint8)
    mask[8:20, 10:30] = 255
    Image.fromarray(img).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    argv = ["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), str(tmp_path / "out.png"), "--steps", "2",
            "--decoder", decoder, "--preset", "smoke", "--out", str(tmp_path / "art"), "--no-progress"]
    assert main(argv) == 0
    assert f"{decoder} decoder" in capsys.readouterr().out
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == img.shape and np.array_equal(out[mask == 0], img[mask == 0])


def test_latent_noise_is_drawn_per_step_and_repeats_on_resume():
    from minildm.recipes.asymmetric_decoder import AsymmetricDecoderTask

    ae, asym = _pair()
    for conv in asym.decoder.fuse:
        torch.nn.init.normal_(conv.weight, std=0.1)
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8) * 2 - 1, size=32, mode="bilinear")
    exact = AsymmetricDecoderTask(asym, ae, lr=1e-3, lpips_net="alex", seed=0)
    noisy = AsymmetricDecoderTask(asym, ae, lr=1e-3, lpips_net="alex", seed=0, latent_noise=0.5)
    with torch.no_grad():
        a = noisy.training_step({"image": x}, 3, "decoder")[0]
        b = noisy.training_step({"image": x}, 3, "decoder")[0]
        c = exact.training_step({"image": x}, 3, "decoder")[0]
    assert a == b and a != c
    with pytest.raises(ValueError, match="latent_noise"):
        AsymmetricDecoderTask(asym, ae, lr=1e-3, lpips_net="alex", seed=0, latent_noise=-1)
