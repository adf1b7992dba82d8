"""Tests for minildm.models.nn: Normalize, nonlinearity, ResnetBlock, AttnBlock, Down/Upsample."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minildm.models.nn import (GROUPNORM_EPS, AttnBlock, Downsample, Normalize, ResnetBlock, Upsample, group_count,
                               nonlinearity)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("channels, expected", [(32, 32), (64, 32), (128, 32), (512, 32), (16, 16), (8, 8),
                                                (48, 24), (96, 32), (3, 3), (1, 1), (36, 18)])
def test_group_count(channels: int, expected: int) -> None:
    g = group_count(channels)
    assert g == expected
    assert channels % g == 0


def test_group_count_custom_and_errors() -> None:
    assert group_count(64, 8) == 8
    assert group_count(12, 8) == 6
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError):
            group_count(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        group_count(32, 0)


def test_normalize_is_compvis_groupnorm() -> None:
    norm = Normalize(64)
    assert isinstance(norm, torch.nn.GroupNorm)
    assert norm.num_groups == 32 and norm.eps == GROUPNORM_EPS == 1e-6 and norm.affine
    x = torch.randn(2, 64, 5, 5)
    ref = F.group_norm(x, 32, norm.weight, norm.bias, eps=1e-6)
    torch.testing.assert_close(norm(x), ref)
    assert Normalize(16).num_groups == 16


def test_nonlinearity_is_swish() -> None:
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(nonlinearity(x), x * torch.sigmoid(x))


def test_resnet_block_shapes_and_shortcut() -> None:
    same = ResnetBlock(16, 16)
    assert not hasattr(same, "nin_shortcut")
    change = ResnetBlock(16, 32)
    assert change.nin_shortcut.kernel_size == (1, 1)
    conv = ResnetBlock(16, 32, conv_shortcut=True)
    assert conv.conv_shortcut.kernel_size == (3, 3) and not hasattr(conv, "nin_shortcut")
    x = torch.randn(2, 16, 8, 8)
    assert same(x).shape == (2, 16, 8, 8)
    assert change(x).shape == (2, 32, 8, 8)
    assert conv(x).shape == (2, 32, 8, 8)
    assert ResnetBlock(16).out_channels == 16


def test_resnet_block_residual_identity_when_branch_is_zero() -> None:
    block = ResnetBlock(16, 16)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(block(x), x)


def test_resnet_block_matches_manual_computation() -> None:
    block = ResnetBlock(8, 16, temb_channels=4).eval()
    x, temb = torch.randn(2, 8, 5, 5), torch.randn(2, 4)
    h = block.conv1(F.silu(block.norm1(x))) + block.temb_proj(F.silu(temb))[:, :, None, None]
    h = block.conv2(F.silu(block.norm2(h)))
    torch.testing.assert_close(block(x, temb), block.nin_shortcut(x) + h)


def test_resnet_block_temb_and_errors() -> None:
    with pytest.raises(ValueError, match="temb"):
        ResnetBlock(8, 8)(torch.randn(1, 8, 4, 4), torch.randn(1, 4))
    for kwargs in ({"in_channels": 0}, {"in_channels": 8, "out_channels": -1}, {"in_channels": 8, "dropout": 1.0},
                   {"in_channels": 8, "temb_channels": -1}):
        with pytest.raises(ValueError):
            ResnetBlock(**kwargs)  # type: ignore[arg-type]


def _reference_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """Explicit softmax(q k^T / sqrt(c)) v as written in CompVis' AttnBlock."""
    h_ = block.norm(x)
    q, k, v = block.q(h_), block.k(h_), block.v(h_)
    b, c, h, w = q.shape
    q = q.reshape(b, c, h * w).permute(0, 2, 1)  # b, hw, c
    k = k.reshape(b, c, h * w)  # b, c, hw
    w_ = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # b, hw(query), hw(key)
    v = v.reshape(b, c, h * w)
    out = torch.bmm(v, w_.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + block.proj_out(out)


def test_attn_block_matches_explicit_softmax() -> None:
    block = AttnBlock(32)
    x = torch.randn(2, 32, 6, 7)
    torch.testing.assert_close(block(x), _reference_attention(block, x), atol=1e-5, rtol=1e-5)
    assert [n for n, _ in block.named_children()] == ["norm", "q", "k", "v", "proj_out"]


def test_attn_block_mixes_positions_and_is_residual() -> None:
    block = AttnBlock(16)
    x = torch.randn(1, 16, 4, 4)
    y = block(x)
    x2 = x.clone()
    x2[..., 0, 0] += 5.0  # change one position: attention spreads it to the others
    y2 = block(x2)
    assert (y2 - y)[..., 3, 3].abs().max() > 1e-4
    with torch.no_grad():
        block.proj_out.weight.zero_()
        block.proj_out.bias.zero_()
    torch.testing.assert_close(block(x), x)


def test_downsample_asymmetric_padding() -> None:
    """Pad (0, 1, 0, 1) then stride-2 3x3 conv: tap (0, 0) reads x[2i, 2j], tap (2, 2) reads x[2i+2, 2j+2]."""
    down = Downsample(1, with_conv=True)
    x = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    with torch.no_grad():
        down.conv.bias.zero_()
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0
    torch.testing.assert_close(down(x), x[..., ::2, ::2])
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 2, 2] = 1.0
    expected = torch.zeros(1, 1, 3, 3)
    expected[..., :2, :2] = x[..., 2::2, 2::2]  # the last row/column reads the zero pad
    torch.testing.assert_close(down(x), expected)


def test_downsample_shapes_and_pooling() -> None:
    x = torch.randn(2, 8, 16, 12)
    assert Downsample(8, True)(x).shape == (2, 8, 8, 6)
    torch.testing.assert_close(Downsample(8, False)(x), F.avg_pool2d(x, 2))
    assert not any(True for _ in Downsample(8, False).parameters())


def test_upsample_nearest_and_conv() -> None:
    x = torch.randn(2, 8, 5, 3)
    up = Upsample(8, with_conv=False)
    y = up(x)
    assert y.shape == (2, 8, 10, 6)
    torch.testing.assert_close(y, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    upc = Upsample(8, with_conv=True)
    torch.testing.assert_close(upc(x), upc.conv(y))
    with pytest.raises(ValueError):
        Upsample(0, True)
    with pytest.raises(ValueError):
        Downsample(-1, True)


def test_gradients_reach_all_layer_parameters() -> None:
    mods = torch.nn.Sequential(ResnetBlock(8, 16), AttnBlock(16), Downsample(16, True), Upsample(16, True))
    mods(torch.randn(2, 8, 8, 8)).square().mean().backward()
    for name, p in mods.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert math.isfinite(sum(float(p.grad.sum()) for p in mods.parameters()))  # type: ignore[union-attr]
