"""An FID-style score on features of a network that minildm trains itself.

The Fréchet Inception Distance (Heusel et al., 2017) compares two image sets through the
Gaussian statistics (μ, Σ) of their features:

    FD = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}).

The paper reports it on Inception-v3 features (ImageNet-trained). Those weights cannot be
loaded offline here, and Inception features describe natural photos, not the shapes data. So
minildm trains its own feature network, :class:`FeatureNet`, on the shapes data's ground truth
(main object's shape and colour, object count), and takes its pooled penultimate activations
as features. The score is a *Fréchet distance in that feature space*: 0 for identical sets,
growing as the distributions part. It ranks models on this data; its values are not
comparable with published FIDs (other features, other data, fewer images).

Taught in notebooks 02 and 03.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.nn.layers import Normalize

__all__ = ["FeatureNet", "FeatureNetConfig", "HEADS", "frechet_distance", "feature_statistics",
           "fid_from_features", "extract_features", "shapes_targets"]


def _head_sizes() -> dict[str, int]:
    from ..data.shapes import COLOUR_NAMES, COUNT_WORDS, SHAPE_NAMES

    return {"shape": len(SHAPE_NAMES), "colour": len(COLOUR_NAMES), "count": len(COUNT_WORDS)}


#: the classification heads of the feature network: main object's shape and colour, object count
HEADS: tuple[str, ...] = ("shape", "colour", "count")


@dataclass
class FeatureNetConfig:
    """Sizes of :class:`FeatureNet`: ``width`` channels at full resolution, doubled per stage
    (4 stride-2 stages, capped at 4·width), ``feature_dim`` features."""

    in_channels: int = 3
    width: int = 32
    feature_dim: int = 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureNetConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class FeatureNet(nn.Module):
    """A small CNN classifier whose pooled penultimate layer gives the FID-style features.

    conv 3×3 -> 4 × [conv 3×3 stride 2, GroupNorm, SiLU] -> global average pool -> Linear to
    ``feature_dim`` -> heads (one Linear per entry of :data:`HEADS`).

    Shapes: x (B, C, H, W) in [-1, 1] (any H, W >= 16) -> ``features(x)`` (B, feature_dim);
    ``forward(x)`` -> dict head -> logits (B, n_classes).
    """

    def __init__(self, config: FeatureNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = c = config or FeatureNetConfig(**kwargs)
        w = c.width
        chans = [w, 2 * w, 4 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = [nn.Conv2d(c.in_channels, w, 3, padding=1)]
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), Normalize(cout, 8), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(chans[-1], c.feature_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(c.feature_dim, n) for k, n in _head_sizes().items()})

    def features(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"FeatureNet expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"FeatureNet needs images of at least 16×16, got {tuple(x.shape[-2:])}")
        return self.proj(self.body(x).mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = F.silu(self.features(x))
        return {k: head(h) for k, head in self.heads.items()}


def shapes_targets(objects: Iterable[list[Mapping[str, Any]]], device: torch.device | str | None = None
                   ) -> dict[str, Tensor]:
    """Ground truth of the heads from a batch's ``objects`` (see :mod:`minildm.data.shapes`):
    shape and colour ids of the main (first) object, and the number of objects − 1."""
    objs = list(objects)
    return {
        "shape": torch.tensor([o[0]["shape_id"] for o in objs], device=device),
        "colour": torch.tensor([o[0]["colour_id"] for o in objs], device=device),
        "count": torch.tensor([len(o) - 1 for o in objs], device=device),
    }


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

