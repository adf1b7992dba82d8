"""Tests for minildm.models.quantize.VectorQuantizer."""
from __future__ import annotations

import pytest
import torch

from minildm.models.quantize import QuantizerInfo, VectorQuantizer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_codebook_init_uniform_like_taming() -> None:
    vq = VectorQuantizer(64, 4, restart_dead_codes=False)
    w = vq.embedding.weight.detach()
    assert w.shape == (64, 4)
    assert float(w.min()) >= -1 / 64 and float(w.max()) <= 1 / 64
    assert float(w.std()) > 0.25 / 64  # not constant


def test_nearest_code_matches_brute_force() -> None:
    vq = VectorQuantizer(37, 6, restart_dead_codes=False)
    with torch.no_grad():
        vq.embedding.weight.normal_()
    z = torch.randn(3, 6, 5, 7)
    z_q, _, info = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    expected = torch.cdist(flat.double(), vq.embedding.weight.double()).argmin(1).view(3, 5, 7)
    assert torch.equal(info.indices, expected)
    torch.testing.assert_close(z_q, vq.embedding.weight[expected].permute(0, 3, 1, 2))


def test_known_codes_are_recovered() -> None:
    vq = VectorQuantizer(4, 2, restart_dead_codes=False)
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    with torch.no_grad():
        vq.embedding.weight.copy_(codes)
    idx = torch.tensor([[[3, 0], [2, 1]]])  # (1, 2, 2)
    z = codes[idx].permute(0, 3, 1, 2) + 0.1 * torch.randn(1, 2, 2, 2)
    z_q, _, info = vq(z)
    assert torch.equal(info.indices, idx)
    torch.testing.assert_close(z_q, codes[idx].permute(0, 3, 1, 2))


def test_straight_through_gradient() -> None:
    vq = VectorQuantizer(8, 3, restart_dead_codes=False)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    z_q, _, _ = vq(z)
    w = torch.randn_like(z_q)
    (z_q * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # identity Jacobian through the quantiser
    assert vq.embedding.weight.grad is None  # the reconstruction path does not train the codebook


def test_gradient_reaches_encoder_through_quantiser() -> None:
    enc = torch.nn.Conv2d(3, 4, 3, padding=1)
    vq = VectorQuantizer(16, 4, restart_dead_codes=False)
    x = torch.randn(2, 3, 8, 8)
    z_q, _, _ = vq(enc(x))
    (z_q - 1.0).square().mean().backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("beta", [0.0, 0.25, 1.0])
def test_loss_terms_known_values(beta: float) -> None:
    vq = VectorQuantizer(1, 2, beta=beta, restart_dead_codes=False)
    with torch.no_grad():
        vq.embedding.weight.zero_()
    z = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).repeat(1, 1, 2, 3).requires_grad_(True)
    _, loss, info = vq(z)
    # both ||sg[z] - e||^2 and ||z - sg[e]||^2 are mean((1, 2)^2) = 2.5
    assert float(info.codebook_loss) == pytest.approx(2.5)
    assert float(info.commitment_loss) == pytest.approx(2.5)
    assert loss.item() == pytest.approx(2.5 * (1 + beta))
    loss.backward()
    # commitment term (weight beta) moves z: d/dz beta * mean((z - e)^2) = beta * 2 (z - e) / N
    n = z.numel()
    torch.testing.assert_close(z.grad, beta * 2 * z.detach() / n)
    # codebook term (weight 1) moves e: d/de mean((e - z)^2) summed over positions
    expected_e = (2 * (0 - z.detach()) / n).permute(0, 2, 3, 1).reshape(-1, 2).sum(0, keepdim=True)
    torch.testing.assert_close(vq.embedding.weight.grad, expected_e)


def test_legacy_weighting_puts_beta_on_codebook_term() -> None:
    vq = VectorQuantizer(1, 2, beta=0.0, legacy=True, restart_dead_codes=False)
    with torch.no_grad():
        vq.embedding.weight.zero_()
    z = torch.ones(1, 2, 2, 2, requires_grad=True)
    _, loss, _ = vq(z)
    assert loss.item() == pytest.approx(1.0)  # commitment term only
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert vq.embedding.weight.grad is None or vq.embedding.weight.grad.abs().sum() == 0


def _uniform_setup(n_e: int, used: list[int], per_code: int) -> tuple[VectorQuantizer, torch.Tensor]:
    vq = VectorQuantizer(n_e, n_e, restart_dead_codes=False)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.eye(n_e) * 10)
    idx = torch.tensor(used).repeat(per_code)
    z = vq.embedding.weight.detach()[idx].T.reshape(1, n_e, 1, -1)
    return vq, z


def test_perplexity_and_usage_uniform() -> None:
    vq, z = _uniform_setup(8, [0, 2, 5, 7], per_code=3)
    _, _, info = vq(z)
    assert float(info.perplexity) == pytest.approx(4.0, rel=1e-5)
    assert float(info.usage) == pytest.approx(0.5)


def test_perplexity_collapse_and_full_usage() -> None:
    vq, z = _uniform_setup(8, [3], per_code=10)
    _, _, info = vq(z)
    assert float(info.perplexity) == pytest.approx(1.0, rel=1e-5)
    assert float(info.usage) == pytest.approx(1 / 8)
    vq, z = _uniform_setup(8, list(range(8)), per_code=2)
    _, _, info = vq(z)
    assert float(info.perplexity) == pytest.approx(8.0, rel=1e-5) and float(info.usage) == 1.0


def test_perplexity_non_uniform() -> None:
    vq = VectorQuantizer(4, 2, restart_dead_codes=False)
    idx = torch.tensor([0, 0, 0, 1])
    perplexity, usage = vq.code_statistics(idx)
    p = torch.tensor([0.75, 0.25])
    assert float(perplexity) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)
    assert float(usage) == 0.5


def test_info_access() -> None:
    vq = VectorQuantizer(8, 3, restart_dead_codes=False)
    _, _, info = vq(torch.randn(2, 3, 2, 2))
    assert isinstance(info, QuantizerInfo)
    assert torch.equal(info["indices"], info.indices)
    with pytest.raises(KeyError):
        info["nope"]


def test_codebook_lookup() -> None:
    vq = VectorQuantizer(10, 3, restart_dead_codes=False)
    idx = torch.randint(0, 10, (2, 4, 5))
    z_q = vq.get_codebook_entry(idx.flatten(), (2, 4, 5, 3))
    assert z_q.shape == (2, 3, 4, 5)
    torch.testing.assert_close(z_q, vq.embed_code(idx))
    torch.testing.assert_close(z_q[1, :, 2, 3], vq.embedding.weight[idx[1, 2, 3]])
    torch.testing.assert_close(vq.get_codebook_entry(idx), z_q)
    _, _, info = vq(z_q)
    assert torch.equal(info.indices, idx)  # codebook vectors quantise to themselves


def test_quantizer_input_errors() -> None:
    vq = VectorQuantizer(10, 3, restart_dead_codes=False)
    with pytest.raises(ValueError, match="3 channels"):
        vq(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError):
        vq(torch.randn(3, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        vq.embed_code(torch.full((1, 2, 2), 10))
    with pytest.raises(TypeError):
        vq.embed_code(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError):
        vq.get_codebook_entry(torch.zeros(6, dtype=torch.long), (1, 2, 2, 3))
    with pytest.raises(ValueError):
        VectorQuantizer(0, 3, restart_dead_codes=False)
    with pytest.raises(ValueError):
        VectorQuantizer(4, 3, beta=-1.0, restart_dead_codes=False)


def test_autocast_keeps_assignment_in_float32() -> None:
    vq = VectorQuantizer(64, 8, restart_dead_codes=False)
    with torch.no_grad():
        vq.embedding.weight.normal_()
    z = torch.randn(2, 8, 6, 6)
    _, _, ref = vq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, _, info = vq(z)
    assert torch.equal(info.indices, ref.indices)
    assert z_q.dtype == z.dtype


def test_chunked_distances_give_the_same_codes() -> None:
    vq = VectorQuantizer(50, 4, restart_dead_codes=False)
    with torch.no_grad():
        vq.embedding.weight.normal_()
    z = torch.randn(3, 4, 7, 9)
    _, _, ref = vq(z)
    vq.max_distance_elements = 50 * 5  # 5 rows per chunk
    _, _, chunked = vq(z)
    assert torch.equal(chunked.indices, ref.indices)


def test_first_training_batch_initialises_codebook_from_data() -> None:
    vq = VectorQuantizer(16, 4)
    z = torch.randn(2, 4, 8, 8) * 3 + 5
    vq.eval()
    vq(z)
    assert not bool(vq.initialized)  # evaluation never changes the codebook
    vq.train()
    vq(z)
    assert bool(vq.initialized)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    # every code is now one of the encoder outputs
    d = torch.cdist(vq.embedding.weight.detach().double(), flat.double(), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert float(d.max()) < 1e-5


def test_dead_codes_are_restarted_and_collapse_is_avoided() -> None:
    vq = VectorQuantizer(8, 2)
    vq.initialized.fill_(True)
    with torch.no_grad():
        vq.embedding.weight.zero_()
        vq.embedding.weight[0] = torch.tensor([10.0, 10.0])  # one code near the data, seven far away
        vq.embedding.weight[1:] = -100.0
    z = torch.randn(4, 2, 4, 4) + 10.0
    _, _, first = vq(z)
    assert float(first.usage) == 1 / 8
    for _ in range(600):  # unused codes decay below 1% of uniform use, then restart on data
        _, _, info = vq(z)
    assert float(vq.embedding.weight.detach().min()) > 0  # no code left at -100
    assert float(info.usage) > 0.5


def test_no_restart_when_disabled() -> None:
    vq = VectorQuantizer(8, 2, restart_dead_codes=False)
    w0 = vq.embedding.weight.detach().clone()
    vq(torch.randn(2, 2, 4, 4) + 10.0)
    assert torch.equal(w0, vq.embedding.weight.detach())
