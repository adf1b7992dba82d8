"""Reconstruction metrics: PSNR, SSIM and LPIPS, and an evaluation loop for autoencoders.

All functions take images in [-1, 1] (the range the models work in), shape (B, C, H, W), and
return one value per image, shape (B,). PSNR and SSIM are computed on the [0, 1] range
(data range 1), LPIPS on [-1, 1] as its authors define it.

Taught in notebooks 01 and 02.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.lpips import LPIPS_MIN_SIZE, check_image_pair, get_lpips

__all__ = ["psnr", "ssim", "lpips_distance", "evaluate_reconstruction", "diversity_ratio", "gaussian_window",
           "PSNR_MAX_DB"]

#: MSE is clamped at this value, so identical images give PSNR = 10·log10(1 / 1e-10) = 100 dB
#: instead of infinity (means over a data set stay finite).
MSE_FLOOR = 1e-10
PSNR_MAX_DB = 10.0 * math.log10(1.0 / MSE_FLOOR)


def _to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], in float64 (float32 on MPS, which has no float64)."""
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    return (x.to(dtype) + 1.0) / 2.0


def psnr(x: Tensor, y: Tensor) -> Tensor:
    r"""Peak signal-to-noise ratio per image, in dB, on the [0, 1] range.

    .. math:: \mathrm{PSNR} = 10 \log_{10} \frac{1}{\max(\mathrm{MSE}, 10^{-10})}

    with the MSE over all C·H·W values of an image (inputs in [-1, 1] are mapped to [0, 1]).
    The clamp makes identical images give 100 dB rather than infinity.

    Shapes: (B, C, H, W) x2 -> (B,) float32.
    """
    check_image_pair(x, y, channels=None, min_size=1, what="psnr")
    mse = (_to_unit(x) - _to_unit(y)).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))).float()


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64,
                    device: torch.device | str = "cpu") -> Tensor:
    """Normalised 1-D Gaussian window of ``size`` taps (SSIM uses the outer product of two)."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    r"""Structural similarity (Wang et al., IEEE TIP 2004) per image, on the [0, 1] range.

    .. math:: \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
              {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
              \quad C_1 = (K_1 L)^2,\ C_2 = (K_2 L)^2,\ L = 1

    with local means / variances / covariance weighted by an 11x11 Gaussian window (σ = 1.5,
    population statistics), evaluated at every position where the window fits inside the image
    ("valid" region), averaged over positions and then over channels. This equals scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1, channel_axis=...)``.

    Shapes: (B, C, H, W) x2 in [-1, 1], H, W >= window_size -> (B,) float32.
    """
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd int, got {window_size}")
    check_image_pair(x, y, channels=None, min_size=window_size, what="ssim")
    x, y = _to_unit(x), _to_unit(y)
    b, c, h, w = x.shape
    g = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    # Separable filtering, one channel at a time (groups=C): rows, then columns; no padding.
    wr = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wc = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, wr, groups=c), wc, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sigma_xx = filt(x * x) - mu_x ** 2
    sigma_yy = filt(y * y) - mu_y ** 2
    sigma_xy = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * 1.0) ** 2, (k2 * 1.0) ** 2
    s_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (sigma_xx + sigma_yy + c2))
    return s_map.mean(dim=(2, 3)).mean(dim=1).float()


def lpips_distance(x: Tensor, y: Tensor, net: str = "alex") -> Tensor:
    """LPIPS distance per image with a cached, frozen network on the inputs' device.

    Shapes: (B, 3, H, W) x2 in [-1, 1] -> (B,).
    """
    check_image_pair(x, y, channels=3, min_size=LPIPS_MIN_SIZE.get(net, 1), what="lpips_distance")
    return get_lpips(net, x.device)(x, y)


def diversity_ratio(x: Tensor, x_hat: Tensor) -> float:
    r"""How much of the inputs' variety the reconstructions keep: the mean pairwise L2 distance between the
    reconstructions divided by that between the inputs,

    .. math:: \frac{\operatorname{mean}_{i<j} \|\hat x_i - \hat x_j\|_2}{\operatorname{mean}_{i<j} \|x_i - x_j\|_2}.

    About 1 for a faithful autoencoder, near 0 for one that decodes every input to the same image
    (a collapsed first stage). Shapes: x, x_hat (N >= 2, C, H, W)."""
    if x.shape != x_hat.shape or x.ndim != 4 or x.shape[0] < 2:
        raise ValueError(f"diversity_ratio needs two (N >= 2, C, H, W) batches of one shape, got "
                         f"{tuple(x.shape)} and {tuple(x_hat.shape)}")
    a, b = x.flatten(1).double(), x_hat.flatten(1).double()
    mask = torch.triu(torch.ones(len(a), len(a), dtype=torch.bool), diagonal=1)
    return float(torch.cdist(b, b)[mask].mean() / torch.cdist(a, a)[mask].mean().clamp_min(1e-12))


def _first_items(dataset: Any, n: int) -> Iterable[Any]:
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        return itertools.islice(iter(dataset), n)
    return (dataset[i] for i in range(min(n, len(dataset))))


def _image_of(item: Any) -> Tensor:
    if isinstance(item, dict):
        if "image" not in item:
            raise ValueError(f"dataset items must have an 'image' entry, got keys {sorted(item)}")
        item = item["image"]
    elif isinstance(item, (tuple, list)):
        item = item[0]
    if not isinstance(item, Tensor) or item.ndim != 3:
        raise ValueError("dataset images must be tensors of shape (C, H, W) in [-1, 1], got "
                         f"{type(item).__name__} {tuple(getattr(item, 'shape', ()))}")
    return item


def _reconstruct(model: nn.Module, x: Tensor) -> Tensor:
    if hasattr(model, "encode_latent") and hasattr(model, "decode"):
        out = model.decode(model.encode_latent(x))
    else:
        out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


@torch.no_grad()
def evaluate_reconstruction(model: nn.Module, dataset: Any, n: int, batch_size: int,
                            device: str | torch.device | None = None,
                            lpips_net: str = "alex") -> dict[str, float]:
    """Mean PSNR, SSIM and LPIPS of ``model``'s reconstructions of the first ``n`` dataset items.

    The reconstruction is ``model.decode(model.encode_latent(x))`` when the model has
    ``encode_latent`` (the deterministic path a latent diffusion model sees), else ``model(x)``
    (its first output if a tuple), clamped to [-1, 1]. The model runs in eval mode without
    gradients, and its previous train/eval mode is restored afterwards. Items are dicts with an
    ``"image"`` (C, H, W) in [-1, 1] (tensors or tuples whose first entry is the image also work);
    map-style and iterable datasets are accepted. ``device`` defaults to the model's device.

    Returns ``{"psnr": dB, "ssim": ..., "lpips": ..., "n": number of images used}``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    params = list(itertools.islice(model.parameters(), 1))
    model_device = params[0].device if params else None
    if device is None:
        device = model_device if model_device is not None else torch.device("cpu")
    device = torch.device(device)
    if model_device is not None and model_device.type != device.type:
        raise ValueError(f"the model is on {model_device} but device={device} was requested; "
                         f"move the model with model.to({str(device)!r}) first")
    was_training = model.training
    model.eval()
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    count = 0
    try:
        items = iter(_first_items(dataset, n))
        while True:
            batch = [_image_of(item) for item in itertools.islice(items, batch_size)]
            if not batch:
                break
            x = torch.stack(batch).to(device=device, dtype=torch.float32)
            x_rec = _reconstruct(model, x).float().clamp(-1.0, 1.0)
            if x_rec.shape != x.shape:
                raise ValueError(f"the model returned shape {tuple(x_rec.shape)} for inputs "
                                 f"{tuple(x.shape)}")
            sums["psnr"] += psnr(x, x_rec).sum().item()
            sums["ssim"] += ssim(x, x_rec).sum().item()
            if x.shape[1] == 1:  # LPIPS is defined on RGB: grey images are repeated
                x, x_rec = x.expand(-1, 3, -1, -1), x_rec.expand(-1, 3, -1, -1)
            elif x.shape[1] != 3:
                raise ValueError(f"LPIPS needs images with 1 or 3 channels, got {x.shape[1]}")
            sums["lpips"] += lpips_distance(x, x_rec, net=lpips_net).sum().item()
            count += x.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the dataset yielded no items to evaluate")
    return {"psnr": sums["psnr"] / count, "ssim": sums["ssim"] / count,
            "lpips": sums["lpips"] / count, "n": count}
