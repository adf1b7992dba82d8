"""Tests for minildm.models.autoencoder: config, Encoder/Decoder, DiagonalGaussianDistribution, AutoencoderKL, VQModel."""
from __future__ import annotations

import json
import math

import pytest
import torch

from minildm.models.autoencoder import AutoencoderKL, VQModel
from minildm.models.distributions import DiagonalGaussianDistribution
from minildm.models.encoder_decoder import (AutoencoderConfig, Decoder, Encoder, check_downsampling_factor,
                                            count_parameters)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny(f: int = 4, **kw) -> AutoencoderConfig:
    """A few-thousand-parameter config with downsampling factor f."""
    m = int(math.log2(f))
    values = dict(resolution=max(16, 2 * f), ch=8, ch_mult=(1,) + (2,) * m, num_res_blocks=1, z_channels=3)
    values.update(kw)
    return AutoencoderConfig(**values)


# --- config -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ch_mult, f", [((1,), 1), ((1, 2), 2), ((1, 2, 4), 4), ((1, 2, 4, 4), 8),
                                         ((1, 1, 2, 2, 4), 16), ((1, 1, 2, 2, 4, 4), 32)])
def test_f_from_ch_mult(ch_mult: tuple[int, ...], f: int) -> None:
    cfg = AutoencoderConfig(resolution=64, ch=8, ch_mult=ch_mult, num_res_blocks=1, z_channels=4)
    assert cfg.f == f
    assert cfg.latent_shape == (4, 64 // f, 64 // f)
    assert cfg.level_resolutions == tuple(64 // 2**i for i in range(len(ch_mult)))


def test_latent_shape_uses_embed_dim() -> None:
    cfg = tiny(4, resolution=32, z_channels=3, embed_dim=5)
    assert cfg.latent_shape == (5, 8, 8)
    assert tiny(4).embed_dim == 3  # defaults to z_channels


@pytest.mark.parametrize("f", [1, 2, 4, 8, 16, 32, 64])
def test_for_factor(f: int) -> None:
    cfg = AutoencoderConfig.for_factor(f, ch=8, num_res_blocks=1, resolution=max(64, f))
    assert cfg.f == f and len(cfg.ch_mult) == int(math.log2(f)) + 1


@pytest.mark.parametrize("bad", [0, -2, 3, 6, 12, 2.0, True, "4"])
def test_check_downsampling_factor_rejects(bad) -> None:
    with pytest.raises(ValueError, match="power of two"):
        check_downsampling_factor(bad)


def test_check_downsampling_factor_accepts_powers_of_two() -> None:
    assert [check_downsampling_factor(2**k) for k in range(7)] == [1, 2, 4, 8, 16, 32, 64]
    with pytest.raises(ValueError):
        AutoencoderConfig.for_factor(12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(resolution=30), "divisible"),
    (dict(ch=0), "ch"),
    (dict(ch_mult=()), "ch_mult"),
    (dict(ch_mult=(1, 0)), "ch_mult"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(attn_resolutions=(5,)), "attn_resolutions"),
    (dict(dropout=1.5), "dropout"),
    (dict(z_channels=-1), "z_channels"),
    (dict(n_embed=0), "n_embed"),
    (dict(beta=-0.1), "beta"),
    (dict(in_channels=2.5), "in_channels"),
    (dict(mid_attn="yes"), "mid_attn"),
])
def test_config_validation(kwargs, match) -> None:
    base = dict(resolution=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        AutoencoderConfig(**base)


def test_config_dict_round_trip_through_json() -> None:
    cfg = AutoencoderConfig(resolution=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                            z_channels=4, embed_dim=3, n_embed=64, dropout=0.1, mid_attn=False)
    again = AutoencoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.ch_mult, tuple)
    with pytest.raises(ValueError, match="unknown"):
        AutoencoderConfig.from_dict({**cfg.to_dict(), "chmult": [1]})
    assert cfg.replace(ch=16).ch == 16
    with pytest.raises(ValueError):
        cfg.replace(resolution=31)


def test_config_from_preset() -> None:
    from minildm.recipes.presets import get_preset

    p = get_preset("smoke")
    cfg = get_preset("smoke").ae.model_config()
    assert (cfg.resolution, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.n_embed) == (
        p.ae.image_size, p.ae.ch, p.ae.ch_mult, p.ae.num_res_blocks, p.ae.z_channels, p.ae.n_embed)
    assert p.ae.model_config(ch=8).ch == 8


# --- architecture -------------------------------------------------------------------------------------------
def test_stable_diffusion_vae_parameter_count() -> None:
    """Default config = SD's kl-f8 VAE, whose checkpoint holds 83,653,863 parameters."""
    with torch.device("meta"):
        model = AutoencoderKL(AutoencoderConfig())
    assert count_parameters(model) == 83_653_863
    assert model.f == 8


def test_compvis_parameter_names() -> None:
    # ch 8, ch_mult (1, 2, 4): levels at 16, 8, 4 px with 8, 16, 32 channels; attention at 8 px
    cfg = AutoencoderConfig(resolution=16, ch=8, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(8,),
                            z_channels=4)
    keys = set(AutoencoderKL(cfg).state_dict())
    expected = {
        "encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.block.1.conv2.bias",
        "encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.1.attn.1.q.weight",
        "encoder.down.0.downsample.conv.weight", "encoder.down.1.downsample.conv.weight",
        "encoder.mid.block_1.conv1.weight", "encoder.mid.attn_1.proj_out.weight", "encoder.mid.block_2.norm2.bias",
        "encoder.norm_out.weight", "encoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.bias",
        "decoder.conv_in.weight", "decoder.mid.attn_1.k.weight", "decoder.up.2.block.2.conv1.weight",
        "decoder.up.1.block.0.nin_shortcut.weight", "decoder.up.1.attn.2.v.weight",
        "decoder.up.0.block.0.nin_shortcut.weight", "decoder.up.1.upsample.conv.weight",
        "decoder.up.2.upsample.conv.weight", "decoder.norm_out.bias", "decoder.conv_out.weight",
    }
    assert expected <= keys, sorted(expected - keys)
    absent = {
        "encoder.down.2.downsample.conv.weight",  # the last level does not downsample
        "decoder.up.0.upsample.conv.weight",  # level 0 (full resolution) does not upsample
        "decoder.up.2.block.0.nin_shortcut.weight",  # 32 -> 32 channels: identity shortcut
        "encoder.down.0.block.0.nin_shortcut.weight",
        "decoder.up.0.block.3.conv1.weight",  # num_res_blocks + 1 = 3 decoder blocks per level
    }
    assert not absent & keys, sorted(absent & keys)
    assert not any(k.startswith(("encoder.down.0.attn", "encoder.down.2.attn", "decoder.up.0.attn")) for k in keys)
    sd = AutoencoderKL(cfg).state_dict()
    assert sd["quant_conv.weight"].shape == (8, 8, 1, 1) and sd["encoder.conv_out.weight"].shape[0] == 8
    assert sd["encoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)


def test_decoder_up_runs_from_lowest_resolution() -> None:
    cfg = AutoencoderConfig(resolution=16, ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=2)
    dec = Decoder(cfg)
    assert dec.up[2].block[0].out_channels == 32 and dec.up[0].block[-1].out_channels == 8
    assert len(dec.up[0].block) == 2  # num_res_blocks + 1
    seen: list[int] = []
    hooks = [dec.up[i].block[0].register_forward_hook(lambda m, a, o, i=i: seen.append(i)) for i in range(3)]
    dec(torch.randn(1, 2, 4, 4))
    for h in hooks:
        h.remove()
    assert seen == [2, 1, 0]


@pytest.mark.parametrize("f", [1, 2, 4, 8, 16, 32])
def test_shapes_for_each_factor(f: int) -> None:
    cfg = tiny(f, ch=4 if f >= 16 else 8)
    model = AutoencoderKL(cfg)
    H, W = cfg.resolution, 2 * cfg.resolution
    x = torch.randn(2, 3, H, W)
    post = model.encode(x)
    assert post.mean.shape == post.logvar.shape == post.std.shape == (2, cfg.embed_dim, H // f, W // f)
    z = post.sample()
    assert model.decode(z).shape == x.shape
    assert model.encode_latent(x).shape == (2, *cfg.latent_shape[:1], H // f, W // f)
    assert Encoder(cfg)(x).shape == (2, 2 * cfg.z_channels, H // f, W // f)
    assert Encoder(cfg, double_z=False)(x).shape == (2, cfg.z_channels, H // f, W // f)
    assert Decoder(cfg)(torch.randn(1, cfg.z_channels, H // f, W // f)).shape == (1, 3, H, W)


def test_f1_has_no_resampling() -> None:
    model = AutoencoderKL(tiny(1))
    names = [n for n, _ in model.named_modules()]
    assert not any("downsample" in n or "upsample" in n for n in names)
    x = torch.randn(1, 3, 16, 16)
    assert model.encode_latent(x).shape == (1, 3, 16, 16)


def test_forward_and_mode() -> None:
    model = AutoencoderKL(tiny(4)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    xr, post = model(x, sample_posterior=False)
    torch.testing.assert_close(xr, model.decode(post.mode()))
    torch.testing.assert_close(model.encode_latent(x), post.mean)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(model(x, generator=g1)[0], model(x, generator=g2)[0])
    assert not torch.allclose(model(x)[0], xr)
    assert model.get_last_layer() is model.decoder.conv_out.weight
    torch.testing.assert_close(model.decode_latent(post.mean), xr)


def test_mid_attention_switch() -> None:
    model = AutoencoderKL(tiny(2, mid_attn=False))
    assert isinstance(model.encoder.mid.attn_1, torch.nn.Identity)
    assert not any("attn" in k for k in model.state_dict())
    assert model(torch.randn(1, 3, 16, 16))[0].shape == (1, 3, 16, 16)


@pytest.mark.parametrize("bad, err, match", [
    (torch.randn(1, 1, 16, 16), ValueError, "3 channels"),
    (torch.randn(1, 3, 18, 16), ValueError, "multiples"),
    (torch.randn(1, 3, 16, 20), ValueError, "multiples"),
    (torch.randn(3, 16, 16), ValueError, "4-D"),
    (torch.randn(1, 1, 3, 16, 16), ValueError, "4-D"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.long), TypeError, "floating"),
    ([[1.0]], TypeError, "Tensor"),
])
def test_bad_inputs(bad, err, match) -> None:
    model = AutoencoderKL(tiny(8))
    with pytest.raises(err, match=match):
        model.encode(bad)


def test_bad_latents() -> None:
    model = AutoencoderKL(tiny(4))
    with pytest.raises(ValueError, match="3 channels"):
        model.decode(torch.randn(1, 6, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        model.decode(torch.randn(3, 4, 4))
    with pytest.raises(TypeError):
        AutoencoderKL({"ch": 8})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL(tiny(4, double_z=False))


def test_gradients_reach_every_parameter_kl() -> None:
    cfg = tiny(4, num_res_blocks=1, attn_resolutions=(8,), embed_dim=2)
    model = AutoencoderKL(cfg)
    x = torch.randn(2, 3, 16, 16)
    xr, post = model(x)
    ((x - xr).abs().mean() + 1e-2 * post.kl().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradients_reach_every_parameter_vq() -> None:
    model = VQModel(tiny(4, n_embed=16, attn_resolutions=(8,)))
    x = torch.randn(2, 3, 16, 16)
    xr, emb_loss, _ = model(x)
    ((x - xr).abs().mean() + emb_loss).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- DiagonalGaussianDistribution ---------------------------------------------------------------------------
def test_kl_matches_torch_distributions() -> None:
    params = torch.randn(3, 8, 4, 5)
    post = DiagonalGaussianDistribution(params)
    q = torch.distributions.Normal(params[:, :4], torch.exp(0.5 * params[:, 4:]))
    p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3))
    assert post.kl().shape == (3,)
    torch.testing.assert_close(post.kl(), expected, atol=1e-4, rtol=1e-5)
    # closed form 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)
    mu, lv = params[:, :4], params[:, 4:]
    torch.testing.assert_close(post.kl(), 0.5 * (mu**2 + lv.exp() - 1 - lv).sum((1, 2, 3)))


def test_kl_between_two_posteriors() -> None:
    a, b = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 3, 3)
    qa, qb = DiagonalGaussianDistribution(a), DiagonalGaussianDistribution(b)
    na = torch.distributions.Normal(a[:, :3], torch.exp(0.5 * a[:, 3:]))
    nb = torch.distributions.Normal(b[:, :3], torch.exp(0.5 * b[:, 3:]))
    torch.testing.assert_close(qa.kl(qb), torch.distributions.kl_divergence(na, nb).sum((1, 2, 3)),
                               atol=1e-4, rtol=1e-5)


def test_kl_zero_for_standard_normal() -> None:
    post = DiagonalGaussianDistribution(torch.zeros(2, 8, 4, 4))
    assert torch.equal(post.kl(), torch.zeros(2))
    assert float(DiagonalGaussianDistribution(torch.cat([torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)], 1)).kl()) \
        == pytest.approx(0.5 * 16)


def test_logvar_clamped() -> None:
    params = torch.cat([torch.zeros(1, 2, 1, 1), torch.tensor([-100.0, 100.0]).view(1, 2, 1, 1)], dim=1)
    post = DiagonalGaussianDistribution(params)
    assert post.logvar.flatten().tolist() == [-30.0, 20.0]
    assert torch.isfinite(post.kl()).all()


def test_nll_matches_torch_distributions() -> None:
    params = torch.randn(2, 6, 3, 3)
    post = DiagonalGaussianDistribution(params)
    s = post.sample()
    normal = torch.distributions.Normal(post.mean, post.std)
    torch.testing.assert_close(post.nll(s), -normal.log_prob(s).sum((1, 2, 3)), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError):
        post.nll(s[:, :2])


def test_sample_statistics_and_mode() -> None:
    mu, logvar = 1.5, math.log(0.25)
    params = torch.cat([torch.full((1, 1, 200, 200), mu), torch.full((1, 1, 200, 200), logvar)], dim=1)
    post = DiagonalGaussianDistribution(params)
    s = post.sample(torch.Generator().manual_seed(0))
    assert abs(float(s.mean()) - mu) < 0.01
    assert abs(float(s.std()) - 0.5) < 0.01
    assert torch.equal(post.mode(), post.mean)
    torch.testing.assert_close(post.sample(torch.Generator().manual_seed(0)), s)


def test_sample_is_reparameterised() -> None:
    params = torch.randn(1, 4, 2, 2, requires_grad=True)
    DiagonalGaussianDistribution(params).sample().sum().backward()
    assert params.grad is not None and params.grad[:, :2].eq(1).all() and params.grad[:, 2:].abs().sum() > 0


def test_deterministic_flag() -> None:
    params = torch.randn(2, 4, 3, 3)
    post = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(post.sample(), post.mean)
    assert torch.equal(post.std, torch.zeros_like(post.mean))
    assert torch.equal(post.kl(), torch.zeros(2)) and torch.equal(post.nll(post.mean), torch.zeros(2))


def test_distribution_rejects_bad_parameters() -> None:
    for bad in (torch.randn(2, 3, 4, 4), torch.randn(4, 4), "x"):
        with pytest.raises(ValueError):
            DiagonalGaussianDistribution(bad)  # type: ignore[arg-type]


def test_kl_in_float32_for_half_inputs() -> None:
    params = torch.cat([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 15.0)], 1).half()
    kl = DiagonalGaussianDistribution(params).kl()
    assert kl.dtype == torch.float32 and torch.isfinite(kl).all()


# --- VQModel ----------------------------------------------------------------------------------------------------
def test_vq_model_shapes_and_codes() -> None:
    cfg = tiny(4, n_embed=32, embed_dim=5)
    model = VQModel(cfg).eval()
    x = torch.randn(2, 3, 16, 16)
    quant, emb_loss, info = model.encode(x)
    assert quant.shape == (2, 5, 4, 4) and emb_loss.ndim == 0
    assert info.indices.shape == (2, 4, 4) and info.indices.dtype == torch.long
    assert 1.0 <= float(info.perplexity) <= 32 and 0 < float(info.usage) <= 1
    xr, loss2, _ = model(x)
    assert xr.shape == x.shape
    torch.testing.assert_close(model.decode_code(info.indices), model.decode(quant))
    torch.testing.assert_close(model.encode_latent(x), quant)
    # VQ in the decoder: a slightly perturbed latent decodes to the same image after quantisation
    torch.testing.assert_close(model.decode_latent(quant + 1e-6 * torch.randn_like(quant)), model.decode(quant))
    assert model.encode_to_prequant(x).shape == (2, 5, 4, 4)
    assert model.get_last_layer() is model.decoder.conv_out.weight
    assert model.quantize.beta == cfg.beta


def test_vq_model_config_errors() -> None:
    with pytest.raises(ValueError, match="n_embed"):
        VQModel(tiny(4))
    with pytest.raises(ValueError, match="double_z"):
        VQModel(tiny(4, n_embed=8, double_z=True))
    with pytest.raises(ValueError, match="channels"):
        VQModel(tiny(4, n_embed=8)).decode(torch.randn(1, 7, 4, 4))


# --- learning ---------------------------------------------------------------------------------------------------
def _smooth_images(n: int = 4, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_autoencoder_learns_to_reconstruct(kind: str) -> None:
    """A few Adam steps on a fixed batch must cut the L1 reconstruction error substantially."""
    cfg = tiny(2, ch=16, n_embed=32, z_channels=4)
    model = AutoencoderKL(cfg) if kind == "kl" else VQModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = _smooth_images()

    def step() -> float:
        if kind == "kl":
            xr, post = model(x)
            rec = (x - xr).abs().mean()
            loss = rec + 1e-6 * post.kl().mean()
        else:
            xr, emb_loss, _ = model(x)
            rec = (x - xr).abs().mean()
            loss = rec + emb_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return rec.item()

    first = step()
    for _ in range(40):
        last = step()
    print(f"\n{kind}: L1 {first:.3f} -> {last:.3f}")
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("cls, extra", [(AutoencoderKL, {}), (VQModel, {"double_z": False, "n_embed": 16})])
def test_freeze_encoder_trains_the_decoder_alone(cls, extra) -> None:
    """After ``freeze_encoder`` a training step changes D (and post_quant_conv) but not z = E(x)."""
    torch.manual_seed(0)
    model = cls(AutoencoderConfig(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=2,
                                  embed_dim=2, norm_num_groups=4, **extra))
    model.freeze_encoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model(x)[0]
    (out - x).abs().mean().backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and not any(k.startswith(model.encoder_prefixes) for k in changed)
    assert any(k.startswith("decoder.") for k in changed)
