"""Tests of minildm.eval.metrics: PSNR, SSIM (vs scikit-image), LPIPS distance, evaluation loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from minildm.eval.metrics import PSNR_MAX_DB, evaluate_reconstruction, gaussian_window, lpips_distance, psnr, ssim
from minildm.losses.lpips import get_lpips

torch.set_num_threads(min(2, torch.get_num_threads()))


def _photos(size: int = 48) -> torch.Tensor:
    """Two natural images from scikit-image, (2, 3, size, size) in [-1, 1]."""
    import skimage.data

    out = []
    for name in ("astronaut", "coffee"):
        img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 127.5 - 1
        side = min(img.shape[-2:])
        out.append(F.interpolate(img[None, :, :side, :side], size=(size, size), mode="bilinear",
                                 antialias=True, align_corners=False))
    return torch.cat(out)


def _sk_ssim(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    res = []
    for a, b in zip(x, y):
        a = ((a.double() + 1) / 2).permute(1, 2, 0).numpy()
        b = ((b.double() + 1) / 2).permute(1, 2, 0).numpy()
        res.append(structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1.0, channel_axis=2))
    return np.array(res)


# ---------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------

def test_psnr_closed_form() -> None:
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[0] += 0.2   # [0, 1] difference 0.1 everywhere -> MSE 0.01 -> 20 dB
    y[1, :, :4] += 0.2  # half the pixels differ by 0.1 -> MSE 0.005 -> 23.01 dB
    got = psnr(x, y)
    assert got.shape == (2,) and got.dtype == torch.float32
    assert got[0].item() == pytest.approx(20.0, abs=1e-5)
    assert got[1].item() == pytest.approx(10 * math.log10(1 / 0.005), abs=1e-5)


def test_psnr_identical_is_finite_maximum() -> None:
    x = _photos(16)
    assert PSNR_MAX_DB == pytest.approx(100.0)
    torch.testing.assert_close(psnr(x, x), torch.full((2,), 100.0))


def test_psnr_matches_skimage() -> None:
    torch.manual_seed(0)
    x = _photos(32)
    y = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    got = psnr(x, y)
    for i in range(2):
        ref = peak_signal_noise_ratio(((x[i] + 1) / 2).double().numpy(),
                                      ((y[i] + 1) / 2).double().numpy(), data_range=1.0)
        assert got[i].item() == pytest.approx(ref, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------

def test_gaussian_window() -> None:
    g = gaussian_window(11, 1.5)
    assert g.shape == (11,) and g.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(g, g.flip(0))
    assert (g[5] / g[6]).item() == pytest.approx(math.exp(1 / (2 * 1.5 ** 2)))


@pytest.mark.parametrize("kind", ["noise", "blur", "photo_pair", "random"])
def test_ssim_matches_skimage(kind: str) -> None:
    torch.manual_seed(1)
    x = _photos(40)
    if kind == "noise":
        y = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
    elif kind == "blur":
        y = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    elif kind == "photo_pair":
        y = x.flip(0)
    else:
        x = torch.rand(3, 3, 23, 37) * 2 - 1
        y = torch.rand(3, 3, 23, 37) * 2 - 1
    got = ssim(x, y)
    assert got.shape == (x.shape[0],)
    np.testing.assert_allclose(got.double().numpy(), _sk_ssim(x, y), atol=1e-4, rtol=0)


def test_ssim_single_channel_and_properties() -> None:
    torch.manual_seed(2)
    x = torch.rand(2, 1, 20, 20) * 2 - 1
    y = torch.rand(2, 1, 20, 20) * 2 - 1
    ref = [structural_similarity(((a[0] + 1) / 2).double().numpy(), ((b[0] + 1) / 2).double().numpy(),
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0) for a, b in zip(x, y)]
    np.testing.assert_allclose(ssim(x, y).double().numpy(), ref, atol=1e-4, rtol=0)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    torch.testing.assert_close(ssim(x, y), ssim(y, x))
    p = _photos(32)
    levels = [ssim(p, (p + s * torch.randn_like(p)).clamp(-1, 1)).mean().item() for s in (0.02, 0.1, 0.4)]
    assert levels[0] > levels[1] > levels[2]


def test_metric_input_validation() -> None:
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="H, W >= 11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, torch.zeros(1, 3, 16, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        psnr(x[0], x[0])
    with pytest.raises(ValueError, match="odd"):
        ssim(x, x, window_size=4)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        lpips_distance(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))


# ---------------------------------------------------------------------------------------------
# LPIPS distance and the evaluation loop
# ---------------------------------------------------------------------------------------------

def test_lpips_distance_uses_cached_network() -> None:
    x = _photos(32)
    d = lpips_distance(x, x.flip(0))
    net = get_lpips("alex", "cpu")
    torch.testing.assert_close(d, net(x, x.flip(0)))
    assert d.shape == (2,) and torch.all(d > 0.05)
    assert lpips_distance(x, x).abs().max().item() < 1e-6


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x, None  # tuple output, as AutoencoderKL.forward returns (x̂, posterior)


class _Noisy(nn.Module):
    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return self.scale * x + self.sigma * torch.randn(x.shape, generator=g)


class _LatentAE(nn.Module):
    """Has encode_latent/decode: these must be used instead of forward."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.seen_training: list[bool] = []

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_training.append(self.training)
        return F.avg_pool2d(x, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.interpolate(z, scale_factor=2, mode="nearest") * 1.5  # values outside [-1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("forward must not be used when encode_latent exists")


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int = 5, size: int = 32) -> None:
        torch.manual_seed(3)
        base = _photos(size)
        self.images = [base[i % 2].roll(i, dims=-1) for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "caption": "a photo", "label": 0}


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        base = _photos(32)
        i = 0
        while True:
            yield {"image": base[i % 2]}
            i += 1


def test_evaluate_reconstruction_identity_and_noise() -> None:
    data = _Items(5)
    ident = evaluate_reconstruction(_Identity(), data, n=5, batch_size=2, device="cpu")
    assert ident["n"] == 5
    assert ident["psnr"] == pytest.approx(PSNR_MAX_DB)
    assert ident["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert ident["lpips"] == pytest.approx(0.0, abs=1e-6)
    noisy = evaluate_reconstruction(_Noisy(0.2), data, n=4, batch_size=3, device="cpu")
    assert noisy["n"] == 4
    assert noisy["psnr"] < 30 and noisy["ssim"] < 0.9 and noisy["lpips"] > 0.005
    noisier = evaluate_reconstruction(_Noisy(0.5), data, n=4, batch_size=3)
    assert noisier["psnr"] < noisy["psnr"] and noisier["lpips"] > noisy["lpips"]


def test_evaluate_reconstruction_latent_path_eval_mode_and_clamp() -> None:
    model = _LatentAE().train()
    data = _Items(3)
    res = evaluate_reconstruction(model, data, n=10, batch_size=2, device="cpu")
    assert res["n"] == 3  # a shorter dataset is used whole
    assert model.calls == 2 and model.seen_training == [False, False]
    assert model.training  # mode restored
    # manual computation with the clamp to [-1, 1]
    x = torch.stack([data[i]["image"] for i in range(3)])
    x_rec = model.decode(model.encode_latent(x)).clamp(-1, 1)
    assert res["psnr"] == pytest.approx(psnr(x, x_rec).mean().item(), rel=1e-5)
    assert res["ssim"] == pytest.approx(ssim(x, x_rec).mean().item(), rel=1e-5)
    assert res["lpips"] == pytest.approx(lpips_distance(x, x_rec).mean().item(), rel=1e-5)


def test_evaluate_reconstruction_iterable_and_validation() -> None:
    res = evaluate_reconstruction(_Identity(), _Stream(), n=3, batch_size=2)
    assert res["n"] == 3
    with pytest.raises(ValueError, match="positive"):
        evaluate_reconstruction(_Identity(), _Items(2), n=0, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_reconstruction(_Identity(), _Items(2), n=2, batch_size=0)
    with pytest.raises(ValueError, match="'image'"):
        evaluate_reconstruction(_Identity(), [{"img": torch.zeros(3, 32, 32)}], n=1, batch_size=1)


def test_diversity_ratio_is_one_for_identity_and_zero_for_collapse() -> None:
    from minildm.eval.metrics import diversity_ratio

    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    assert diversity_ratio(x, x) == pytest.approx(1.0)
    assert diversity_ratio(x, x.mean(0, keepdim=True).expand_as(x).clone()) == pytest.approx(0.0, abs=1e-9)
    assert diversity_ratio(x, 0.5 * x) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="N >= 2"):
        diversity_ratio(x[:1], x[:1])
