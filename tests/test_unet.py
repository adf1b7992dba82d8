"""UNetModel: shapes, timestep embedding, zero-initialised output and residual paths, cross-attention, bad input."""
from __future__ import annotations

import math

import pytest
import torch

from minildm.models.nn.transformer import CrossAttention, SpatialTransformer
from minildm.models.unet import AttentionBlock, ResBlock, UNetConfig, UNetModel, pooled, timestep_embedding

SMALL = dict(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
             attention_resolutions=(2,), num_heads=2, num_groups=4)


def _randomize(module: torch.nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)


def test_timestep_embedding_values():
    t = torch.tensor([0, 3])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    assert torch.allclose(emb[1, :4], torch.cos(3 * freqs)) and torch.allclose(emb[1, 4:], torch.sin(3 * freqs))
    assert timestep_embedding(t, 7).shape == (2, 7)
    with pytest.raises(ValueError, match="shape"):
        timestep_embedding(torch.zeros(2, 1), 8)


def test_unet_shapes_and_zero_output_at_init():
    model = UNetModel(**SMALL)
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([1, 999]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised final convolution (ADM)
    assert model(x, 5).shape == x.shape  # a scalar t is broadcast


def test_unet_depends_on_t_and_x_once_trained_weights_are_nonzero():
    model = UNetModel(**SMALL)
    _randomize(model)
    x = torch.randn(2, 3, 8, 8)
    a, b = model(x, torch.tensor([1, 1])), model(x, torch.tensor([500, 500]))
    assert not torch.allclose(a, b)
    out = model(x, torch.tensor([3, 3]))
    loss = out.square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unet_skip_connections_per_level():
    model = UNetModel(**{**SMALL, "channel_mult": (1, 2, 2), "num_res_blocks": 2})
    # 1 stem + 3 levels × 2 blocks + 2 downsamples = 9 input blocks; 3 × 3 output blocks
    assert len(model.input_blocks) == 9 and len(model.output_blocks) == 9
    assert model(torch.randn(1, 3, 8, 8), 1).shape == (1, 3, 8, 8)


def test_resblock_starts_as_skip_and_scale_shift():
    block = ResBlock(8, 16, out_channels=8, num_groups=4)
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(block(x, torch.randn(2, 16)), x)
    block2 = ResBlock(8, 16, out_channels=8, use_scale_shift_norm=False, num_groups=4)
    assert block2.emb_layers[1].out_features == 8 and block.emb_layers[1].out_features == 16


def test_attention_block_is_identity_at_init_and_heads_check():
    att = AttentionBlock(16, num_heads=4, num_groups=4)
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(att(x), x)
    with pytest.raises(ValueError, match="divisible"):
        AttentionBlock(16, num_heads=3)
    assert AttentionBlock(16, num_head_channels=8).num_heads == 2


def test_cross_attention_mask_ignores_padded_tokens():
    torch.manual_seed(0)
    attn = CrossAttention(8, context_dim=6, heads=2, dim_head=4)
    x, ctx = torch.randn(1, 5, 8), torch.randn(1, 4, 6)
    mask = torch.tensor([[True, True, False, False]])
    out = attn(x, ctx, mask)
    ctx2 = ctx.clone()
    ctx2[:, 2:] = torch.randn(1, 2, 6) * 100  # change only the padded tokens
    assert torch.allclose(attn(x, ctx2, mask), out, atol=1e-6)
    assert torch.allclose(attn(x, ctx[:, :2]), out, atol=1e-6)
    with pytest.raises(ValueError, match="width"):
        attn(x, torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match="mask"):
        attn(x, ctx, torch.ones(1, 3, dtype=torch.bool))


def test_spatial_transformer_identity_at_init_and_uses_context():
    st = SpatialTransformer(8, n_heads=2, d_head=4, context_dim=6, num_groups=4)
    x = torch.randn(2, 8, 4, 4)
    ctx = torch.randn(2, 3, 6)
    assert torch.equal(st(x, ctx), x)
    _randomize(st)
    assert not torch.allclose(st(x, ctx), st(x, torch.randn(2, 3, 6)))


def test_unet_with_context():
    model = UNetModel(**{**SMALL, "context_dim": 6})
    _randomize(model)
    x = torch.randn(2, 3, 8, 8)
    ctx = torch.randn(2, 5, 6)
    out = model(x, torch.tensor([1, 2]), context=ctx)
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, torch.tensor([1, 2]), context=torch.randn(2, 5, 6)))
    with pytest.raises(ValueError, match="context"):
        model(x, 1)
    with pytest.raises(ValueError, match="context"):
        model(x, 1, context=torch.randn(2, 5, 7))


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(2, 4, 8, 8)), "shape"),
    (dict(x=torch.randn(2, 3, 9, 8)), "multiples"),
    (dict(t=torch.tensor([1, 2, 3])), "timesteps"),
])
def test_unet_bad_inputs(bad, match):
    model = UNetModel(**SMALL)
    x, t = bad.get("x", torch.randn(2, 3, 8, 8)), bad.get("t", torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=match):
        model(x, t)
    with pytest.raises(ValueError, match="context"):
        UNetModel(**SMALL)(torch.randn(2, 3, 8, 8), 1, context=torch.randn(2, 1, 4))


def test_config_validation_and_round_trip():
    c = UNetConfig(**SMALL)
    assert UNetConfig.from_dict(c.to_dict()) == c
    assert c.downsampling == 2
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNetConfig(attention_resolutions=(3,))
    with pytest.raises(ValueError, match="model_channels"):
        UNetConfig(model_channels=0)
    with pytest.raises(ValueError, match="channel_mult"):
        UNetConfig(channel_mult=())


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=2, num_groups=4, context_dim=8)
    for p in unet.parameters():
        p.data.normal_(0, 0.05)
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([3, 700]), torch.randn(2, 5, 8)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        unet.zero_grad()
        out = unet(x, t, context=ctx)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in unet.parameters()]

    plain, grads = run()
    unet.set_gradient_checkpointing(True)
    ckpt, grads_ckpt = run()
    assert torch.allclose(plain, ckpt, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_ckpt))


def test_concat_conditioning_shapes_and_channel_check():
    """c_concat (B, C_c, H, W) is stacked onto x: in_channels = C_x + C_c, out_channels stay the latent's."""
    model = UNetModel(**{**SMALL, "in_channels": 5})
    _randomize(model)
    x, cc = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    out = model(x, torch.tensor([1, 2]), c_concat=cc)
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, torch.tensor([1, 2]), c_concat=torch.randn(2, 2, 8, 8)))
    assert torch.equal(out, model(torch.cat([x, cc], 1), torch.tensor([1, 2])))  # the same as stacking by hand
    with pytest.raises(ValueError, match=r"in_channels=5 input channels, got 3 channels of x \+ 1 of c_concat = 4"):
        model(x, 1, c_concat=torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"c_concat must have shape \(2, 2, 8, 8\)"):
        model(x, 1, c_concat=torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"c_concat must have shape \(2, 2, 8, 8\)"):
        model(x, 1, c_concat=torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(B, 5, H, W\)"):
        model(x, 1)  # the condition is missing
    c = UNetConfig(**{**SMALL, "in_channels": 5, "context_dim": 8})
    assert UNetConfig.from_dict(c.to_dict()) == c and set(c.to_dict()) == set(UNetConfig(**SMALL).to_dict())


def test_concat_unet_with_zero_extra_weights_is_the_plain_unet():
    """Parity: zero weights on the condition's input channels give exactly the UNet without them."""
    plain = UNetModel(**{**SMALL, "context_dim": 6})
    _randomize(plain)
    concat = UNetModel(**{**SMALL, "context_dim": 6, "in_channels": 3 + 4})
    sd = plain.state_dict()
    w = sd["input_blocks.0.0.weight"]
    sd["input_blocks.0.0.weight"] = torch.cat([w, torch.zeros(w.shape[0], 4, *w.shape[2:])], dim=1)
    concat.load_state_dict(sd)
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([5, 600]), torch.randn(2, 5, 6)
    with torch.no_grad():
        expected = plain(x, t, context=ctx)
        got = concat(x, t, context=ctx, c_concat=torch.randn(2, 4, 8, 8))
    # the zero terms leave the sums unchanged (bit-equal on CPU); a tolerance allows other conv kernels
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)


def test_pooled_is_the_mean_of_the_valid_tokens():
    ctx = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(pooled(ctx, torch.tensor([[True, True, False]])), torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(pooled(ctx), ctx.mean(1))
    assert torch.equal(pooled(ctx, torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="context_mask"):
        pooled(ctx, torch.ones(1, 2, dtype=torch.bool))


def test_pooled_context_embedding_starts_at_zero_reads_the_valid_tokens_and_round_trips():
    cfg = {**SMALL, "context_dim": 6}
    torch.manual_seed(0)
    plain = UNetModel(**cfg)
    torch.manual_seed(0)
    model = UNetModel(**cfg, pooled_context=True)
    _randomize(plain)
    _randomize(model)
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([3, 700]), torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        model.pooled_embed[-1].weight.zero_()
        model.pooled_embed[-1].bias.zero_()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("pooled_embed.")}
    plain.load_state_dict(state)
    assert torch.allclose(model(x, t, ctx, mask), plain(x, t, ctx, mask), atol=1e-6)  # a zero path adds nothing
    _randomize(model.pooled_embed)
    out = model(x, t, ctx, mask)
    assert not torch.allclose(out, plain(x, t, ctx, mask), atol=1e-4)
    ctx2 = ctx.clone()
    ctx2[1, 2:] = 50.0  # only padded tokens of the second row change
    assert torch.allclose(model(x, t, ctx2, mask), out, atol=1e-5)
    c = UNetConfig(**cfg, pooled_context=True)
    assert c.to_dict()["pooled_context"] is True and UNetConfig.from_dict(c.to_dict()) == c
    assert "pooled_context" not in UNetConfig(**cfg).to_dict()  # configs without it stay as they were
    with pytest.raises(ValueError, match="pooled_context"):
        UNetConfig(**SMALL, pooled_context=True)
