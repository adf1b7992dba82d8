"""An FID-style score on features of a network that minildm trains itself.

The Fréchet Inception Distance (Heusel et al., 2017) compares two image sets through the
Gaussian statistics (μ, Σ) of their features:

    FD = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}).

The paper reports it on Inception-v3 features (ImageNet-trained). Those weights cannot be
loaded offline here, and Inception features describe natural photos, not the shapes data. So
minildm trains its own feature network, :class:`FeatureNet`, on the shapes data's ground truth
(main object's shape and colour, object count, and each object's outline and colour per cell), and
takes its pooled global features as features. The score is a *Fréchet distance in that feature space*: 0 for identical sets,
growing as the distributions part. It ranks models on this data; its values are not
comparable with published FIDs (other features, other data, fewer images).

A score on features trained on the same data can be blind to what those features never needed, so
:class:`ImageNetFeatures` gives a second one beside it: the Fréchet distance on ImageNet features (the
pooled last convolution of AlexNet or VGG16, whose weights ship for LPIPS, see
:func:`minildm.losses.lpips.lpips_backbone_weights`), the kind of features the paper's FID uses.

Taught in notebooks 02 and 03.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checker import ContentChecker

__all__ = ["FeatureNet", "ImageNetFeatures", "frechet_distance", "feature_statistics", "fid_from_features",
           "extract_features", "get_imagenet_features"]


class FeatureNet(ContentChecker):
    """The network behind FD-feat: the content checker's architecture (:class:`~minildm.eval.checker.ContentChecker`:
    a stem and stages at strides 2, 4, 8, global heads on the pooled features and dense per-cell shape and colour
    heads), trained the same way on the shapes data's ground truth. The dense heads teach its features the
    objects' outlines, so the pooled features (``features(x)``: (B, 3, H, W) in [-1, 1], H and W multiples of 8
    -> (B, 4·width)) see the main object's shape, not only colours and counts."""


class ImageNetFeatures(nn.Module):
    """Features of an ImageNet-trained backbone for a Fréchet distance: AlexNet's conv1–5 (256 features) or
    VGG16's conv1_1–conv5_3 (512), the LPIPS backbones with their ImageNet weights, average-pooled after the
    last convolution and its ReLU. Frozen.

    Shapes: ``features(x)``: x (B, 3, H, W) in [-1, 1] -> (B, 256 | 512); the images are resized to
    ``resolution`` (bilinear, antialiased) and normalised with the ImageNet mean and std first.
    """

    def __init__(self, net: str = "alex", resolution: int = 224) -> None:
        super().__init__()
        import torchvision

        from ..losses.lpips import check_lpips_net, lpips_backbone_weights

        check_lpips_net(net)
        trunk = (torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16)(weights=None).features
        convs, self.weights_source = lpips_backbone_weights(net)
        layers = [m for m in trunk if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for layer, (weight, bias) in zip(layers, convs, strict=True):
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
        if isinstance(trunk[-1], nn.MaxPool2d):
            trunk = trunk[:-1]  # features of the last convolution, not of its pooling
        self.trunk = trunk.eval().requires_grad_(False)
        self.net = net
        self.resolution = int(resolution)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "ImageNetFeatures":
        return super().train(False)

    def features(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ImageNetFeatures expects (B, 3, H, W) images in [-1, 1], got {tuple(x.shape)}")
        x = F.interpolate(x.float(), size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                          align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        return self.trunk(x).mean(dim=(2, 3))


_IMAGENET_FEATURES: dict[tuple[str, str], ImageNetFeatures] = {}


def get_imagenet_features(net: str = "alex", device: str | torch.device = "cpu") -> ImageNetFeatures:
    """A shared, frozen :class:`ImageNetFeatures` per ``(net, device)`` (built once)."""
    key = (net, str(torch.device(device)))
    if key not in _IMAGENET_FEATURES:
        _IMAGENET_FEATURES[key] = ImageNetFeatures(net).to(device)
    return _IMAGENET_FEATURES[key]


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, Σ) of features (N, D) in float64: mean (D,) and unbiased covariance (D, D)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {tuple(features.shape)}")
    f = features.detach().double()
    mu = f.mean(0)
    fc = f - mu
    return mu, fc.T @ fc / (f.shape[0] - 1)


def _sqrtm_psd(a: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu_a: Tensor, sigma_a: Tensor, mu_b: Tensor, sigma_b: Tensor) -> float:
    """FD between N(μ_a, Σ_a) and N(μ_b, Σ_b) (see the module docstring).

    The trace of (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2} is computed from the eigenvalues of that
    symmetric PSD matrix, in float64, so the result is real and >= 0 up to rounding.
    """
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != (mu_a.numel(),) * 2:
        raise ValueError(f"mismatched statistics: μ {tuple(mu_a.shape)} / {tuple(mu_b.shape)}, "
                         f"Σ {tuple(sigma_a.shape)} / {tuple(sigma_b.shape)}")
    mu_a, mu_b, sigma_a, sigma_b = (t.double() for t in (mu_a, mu_b, sigma_a, sigma_b))
    root_a = _sqrtm_psd(sigma_a)
    covmean_trace = torch.linalg.eigvalsh(root_a @ sigma_b @ root_a).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + sigma_a.trace() + sigma_b.trace() - 2 * covmean_trace
    return max(float(fd), 0.0)


def fid_from_features(features_a: Tensor, features_b: Tensor) -> float:
    """FD between the Gaussian fits of two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


@torch.no_grad()
def extract_features(net: FeatureNet, images: Tensor | Iterable[Tensor], batch_size: int = 64) -> Tensor:
    """Features (N, D) of images (N, C, H, W) in [-1, 1] (or an iterable of batches), in eval mode."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    try:
        out = [net.features(b.to(device=device, dtype=torch.float32)).float().cpu() for b in batches]
    finally:
        net.train(was_training)
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out)


# ------------------------------------------------------------------------------------------
# the artifact "feature-net"
# ------------------------------------------------------------------------------------------

