"""FID-style score: Fréchet distance identities, growth with noise, the feature network and its task."""
from __future__ import annotations

import pytest
import torch

from minildm.data import collate, load_dataset
from minildm.eval.fid import FeatureNet, extract_features, feature_statistics, fid_from_features, frechet_distance
from minildm.recipes.checker import CheckerTask


def test_frechet_distance_of_gaussians_in_closed_form():
    mu_a, mu_b = torch.zeros(3), torch.tensor([1.0, 2.0, 0.0])
    sa, sb = torch.eye(3), 4 * torch.eye(3)
    # ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) = 5 + 3 + 12 − 2·6 = 8 (commuting covariances)
    assert frechet_distance(mu_a, sa, mu_b, sb) == pytest.approx(8.0, abs=1e-9)
    assert frechet_distance(mu_a, sa, mu_a, sa) == pytest.approx(0.0, abs=1e-9)


def test_fid_zero_for_identical_sets_and_grows_with_noise():
    torch.manual_seed(0)
    feats = torch.randn(400, 8) @ torch.randn(8, 8)
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    scores = [fid_from_features(feats, feats + s * torch.randn_like(feats)) for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_fid_on_images_through_the_feature_net_grows_with_noise():
    torch.manual_seed(0)
    net = FeatureNet(width=8)
    ds = load_dataset("shapes", "val", 32, length=64)
    x = torch.stack([ds[i]["image"] for i in range(64)])
    fx = extract_features(net, x, batch_size=16)
    assert fx.shape == (64, 32)
    noisy = [extract_features(net, (x + s * torch.randn_like(x)).clamp(-1, 1)) for s in (0.0, 0.3, 1.0)]
    scores = [fid_from_features(fx, f) for f in noisy]
    assert scores[0] == pytest.approx(0.0, abs=1e-6) and scores[0] < scores[1] < scores[2]


def test_statistics_and_bad_input():
    mu, sigma = feature_statistics(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.allclose(mu, torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(sigma, torch.full((2, 2), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="multiples of 8"):
        FeatureNet(width=8).features(torch.zeros(1, 3, 12, 12))


def test_feature_net_learns_with_the_checker_task():
    torch.manual_seed(0)
    net = FeatureNet(width=8)
    task = CheckerTask(net, lr=1e-2)
    opt = task.configure_optimizers()["net"]
    ds = load_dataset("shapes", "train", 32, length=32)
    batch = collate([ds[i] for i in range(32)])
    first = None
    for step in range(60):
        opt.zero_grad()
        loss, logs = task.training_step(batch, step, "net")
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert loss.item() < 0.5 * first  # memorises one batch
    assert set(logs) >= {"train/loss", "train/acc_shape", "train/acc_colour", "train/acc_count"}
    with pytest.raises(ValueError, match="lr"):
        CheckerTask(net, lr=0)


def test_imagenet_features_see_blur_that_equal_halves_do_not():
    """The FD on ImageNet (AlexNet) features: small between two halves of the real images, large against a
    blurred copy; the backbone holds the shipped ImageNet weights and is frozen."""
    from minildm.eval.fid import ImageNetFeatures
    from minildm.losses.lpips import lpips_backbone_weights

    net = ImageNetFeatures("alex", resolution=128)
    first_conv = next(m for m in net.trunk if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(first_conv.weight, lpips_backbone_weights("alex")[0][0][0])
    assert not any(p.requires_grad for p in net.parameters())
    ds = load_dataset("shapes", "val", 64, length=256, seed=0)
    x = torch.stack([ds[i]["image"] for i in range(256)])
    blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 4), scale_factor=4)
    f = extract_features(net, x)
    assert f.shape == (256, 256)
    halves = fid_from_features(f[:128], f[128:])
    blur = fid_from_features(f[:128], extract_features(net, blurred[128:]))
    assert blur > 3 * halves
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        net.features(torch.zeros(2, 1, 64, 64))
