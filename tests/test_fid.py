"""FID-style score: Fréchet distance identities, growth with noise, the feature network and its task."""
from __future__ import annotations

import pytest
import torch

from minildm.data import collate, load_dataset
from minildm.eval.fid import FeatureNet, extract_features, feature_statistics, fid_from_features, frechet_distance
from minildm.recipes.feature_net import FeatureNetTask


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
    net = FeatureNet(width=8, feature_dim=16)
    ds = load_dataset("shapes", "val", 32, length=64)
    x = torch.stack([ds[i]["image"] for i in range(64)])
    fx = extract_features(net, x, batch_size=16)
    assert fx.shape == (64, 16)
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
    with pytest.raises(ValueError, match="16"):
        FeatureNet(width=8, feature_dim=8).features(torch.zeros(1, 3, 8, 8))


def test_feature_net_task_learns():
    torch.manual_seed(0)
    net = FeatureNet(width=8, feature_dim=16)
    task = FeatureNetTask(net, lr=1e-2)
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
        FeatureNetTask(net, lr=0)
