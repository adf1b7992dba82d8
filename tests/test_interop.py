"""Parity tests: minildm AutoencoderKL <-> diffusers AutoencoderKL (small random models, nothing downloaded)."""
from __future__ import annotations

import functools
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from minildm.interop import (autoencoder_from_diffusers, autoencoder_to_diffusers, config_from_diffusers,
                             convert_vae_state_dict_from_diffusers, convert_vae_state_dict_to_diffusers,
                             diffusers_config_from_config, first_stage_state_dict, load_state_dict_exact)
from minildm.models.autoencoder import AutoencoderKL  # noqa: E402
from minildm.models.encoder_decoder import AutoencoderConfig

TOL = 1e-5

CONFIGS = {
    "2lvl-lpb1-g32": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, sample_size=16),
    "3lvl-lpb2-g32-nomid": dict(block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=32,
                                sample_size=16, mid_block_add_attention=False),
    "3lvl-lpb1-g8-attn": dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=16,
                              latent_channels=3,
                              down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"),
                              up_block_types=("UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D")),
    "2lvl-lpb2-g4-gray": dict(block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4, sample_size=8,
                              in_channels=1, out_channels=1, latent_channels=2),
}


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter, norms included (diffusers starts them at 1 / 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:  # conv / linear weights, scaled by fan-in to keep activations O(1)
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight"):  # GroupNorm scale
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@functools.lru_cache(maxsize=None)
def _make_vae(name: str) -> "diffusers.AutoencoderKL":
    """Built once per config (and never modified by the tests)."""
    kwargs = dict(CONFIGS[name])
    n = len(kwargs["block_out_channels"])
    kwargs.setdefault("down_block_types", ("DownEncoderBlock2D",) * n)
    kwargs.setdefault("up_block_types", ("UpDecoderBlock2D",) * n)
    vae = diffusers.AutoencoderKL(**kwargs)
    _randomise(vae, seed=hash(name) % 1000)
    return vae.eval()


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_diffusers_parity(name: str) -> None:
    vae = _make_vae(name)
    ae = autoencoder_from_diffusers(vae)
    assert not ae.training
    cfg = ae.config
    assert cfg.ch == vae.config.block_out_channels[0]
    assert tuple(cfg.ch * m for m in cfg.ch_mult) == tuple(vae.config.block_out_channels)
    assert cfg.num_res_blocks == vae.config.layers_per_block
    assert cfg.z_channels == cfg.embed_dim == vae.config.latent_channels
    assert cfg.mid_attn == vae.config.mid_block_add_attention
    x = torch.rand(1, vae.config.in_channels, 16, 24) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(x).latent_dist
        post = ae.encode(x)
        z = ref.mean + 0.5 * torch.randn_like(ref.mean)
        dec_ref, dec = vae.decode(z).sample, ae.decode(z)
    errors = {"mean": _max_err(post.mean, ref.mean), "logvar": _max_err(post.logvar, ref.logvar),
              "decode": _max_err(dec, dec_ref)}
    print(f"\n{name}: max abs errors {errors}")
    assert dec.shape == x.shape and post.mean.shape == (1, cfg.embed_dim, 16 // cfg.f, 24 // cfg.f)
    assert dec_ref.abs().max() > 0.1  # a non-trivial output
    assert max(errors.values()) < TOL, errors


def test_forward_parity() -> None:
    vae = _make_vae("3lvl-lpb1-g8-attn")
    ae = autoencoder_from_diffusers(vae)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        err = _max_err(vae(x, sample_posterior=False).sample, ae(x, sample_posterior=False)[0])
    print(f"\nforward (mode) max abs error {err}")
    assert err < TOL


@pytest.mark.parametrize("name", ["2lvl-lpb1-g32", "3lvl-lpb1-g8-attn"])
def test_to_diffusers_parity(name: str) -> None:
    cfg = config_from_diffusers(_make_vae(name).config)
    ae = AutoencoderKL(cfg).eval()
    _randomise(ae, seed=7)
    vae = autoencoder_to_diffusers(ae)
    assert isinstance(vae, diffusers.AutoencoderKL) and not vae.training
    x = torch.rand(1, cfg.in_channels, 16, 16) * 2 - 1
    with torch.no_grad():
        ref, out = ae.encode(x), vae.encode(x).latent_dist
        z = torch.randn(1, *cfg.latent_shape)
        errors = {"mean": _max_err(out.mean, ref.mean), "logvar": _max_err(out.logvar, ref.logvar),
                  "decode": _max_err(vae.decode(z).sample, ae.decode(z))}
    print(f"\n{name} (to diffusers): max abs errors {errors}")
    assert max(errors.values()) < TOL, errors
    back = autoencoder_from_diffusers(vae)
    for k, v in ae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_state_dict_round_trip_is_exact() -> None:
    vae = _make_vae("3lvl-lpb1-g8-attn")
    sd = vae.state_dict()
    mine = convert_vae_state_dict_from_diffusers(sd)
    assert mine["decoder.up.2.block.0.conv1.weight"] is sd["decoder.up_blocks.0.resnets.0.conv1.weight"]
    assert mine["encoder.mid.attn_1.q.weight"].shape[-2:] == (1, 1)
    assert mine["encoder.down.1.attn.0.proj_out.weight"].shape[-2:] == (1, 1)
    assert "encoder.down.1.block.0.nin_shortcut.weight" in mine
    back = convert_vae_state_dict_to_diffusers(mine)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_legacy_attention_names_are_accepted() -> None:
    vae = _make_vae("2lvl-lpb1-g32")
    rename = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {}
    for k, v in vae.state_dict().items():
        for new, old in rename.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        sd[k] = v
    assert any(".query." in k for k in sd)
    model = AutoencoderKL(config_from_diffusers(vae.config)).eval()
    load_state_dict_exact(model, convert_vae_state_dict_from_diffusers(sd))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert _max_err(model.encode(x).mean, vae.encode(x).latent_dist.mean) < TOL


def test_unknown_and_missing_keys_are_listed() -> None:
    sd = dict(_make_vae("2lvl-lpb1-g32").state_dict())
    sd["encoder.down_blocks.0.resnets.0.time_emb_proj.weight"] = torch.zeros(1)
    sd["something.else"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"2 key\(s\).*time_emb_proj.*something\.else"):
        convert_vae_state_dict_from_diffusers(sd)
    del sd["something.else"], sd["encoder.down_blocks.0.resnets.0.time_emb_proj.weight"]
    mine = convert_vae_state_dict_from_diffusers(sd)
    del mine["decoder.conv_out.bias"]
    mine["decoder.conv_in.weight"] = torch.zeros(3, 3)
    model = AutoencoderKL(config_from_diffusers(_make_vae("2lvl-lpb1-g32").config))
    with pytest.raises(ValueError, match=r"missing keys \(1\): decoder\.conv_out\.bias.*shape mismatches.*conv_in"):
        load_state_dict_exact(model, mine)
    with pytest.raises(ValueError, match="quantize.embedding.weight"):
        convert_vae_state_dict_to_diffusers({**model.state_dict(), "quantize.embedding.weight": torch.zeros(2, 2)})


def test_stable_diffusion_layout_matches_diffusers() -> None:
    """The SD kl-f8 VAE: every minildm key maps to a diffusers key of the same size, and back."""
    sd_cfg = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with torch.device("meta"):
        vae = diffusers.AutoencoderKL(**sd_cfg)
        ours = AutoencoderKL(config_from_diffusers(vae.config))
    assert ours.config == AutoencoderConfig(resolution=512)
    theirs = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    converted = convert_vae_state_dict_to_diffusers(ours.state_dict())
    assert {k: tuple(v.shape) for k, v in converted.items()} == theirs
    assert diffusers_config_from_config(ours.config)["block_out_channels"] == (128, 256, 512, 512)
    # an original SD checkpoint's first-stage keys are minildm's own names
    ckpt = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    ckpt["model.diffusion_model.x.weight"] = torch.zeros(1)
    assert set(first_stage_state_dict(ckpt)) == set(ours.state_dict())
    assert set(first_stage_state_dict({**ours.state_dict(), "loss.logvar": torch.zeros(())})) == set(ours.state_dict())


def test_config_conversion_errors() -> None:
    base = _make_vae("2lvl-lpb1-g32").config
    with pytest.raises(ValueError, match="act_fn"):
        config_from_diffusers({**base, "act_fn": "relu"})
    with pytest.raises(ValueError, match="block type"):
        config_from_diffusers({**base, "down_block_types": ("DownBlock2D", "DownEncoderBlock2D")})
    with pytest.raises(ValueError, match="divisible"):
        config_from_diffusers({**base, "sample_size": 15})
    assert config_from_diffusers({**base, "sample_size": 15}, resolution=16).resolution == 16
    with pytest.raises(ValueError, match="multiples"):
        config_from_diffusers({**base, "block_out_channels": (32, 48)})
    with pytest.raises(ValueError, match="differ"):
        config_from_diffusers({**base, "down_block_types": ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")})
    with pytest.raises(ValueError, match="use_quant_conv"):
        config_from_diffusers({**base, "use_quant_conv": False})
    # minildm configs diffusers cannot express
    smoke = AutoencoderConfig(resolution=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4)
    with pytest.raises(ValueError, match="norm_num_groups"):
        diffusers_config_from_config(smoke)
    assert diffusers_config_from_config(smoke.replace(norm_num_groups=16))["norm_num_groups"] == 16
    with pytest.raises(ValueError, match="embed_dim"):
        diffusers_config_from_config(smoke.replace(norm_num_groups=16, embed_dim=3))
    with pytest.raises(TypeError):
        autoencoder_from_diffusers(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        autoencoder_to_diffusers(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_shared_helpers_are_public_and_reexported() -> None:
    """The converters' shared helpers live in minildm.interop.common; the old import paths still work."""
    from types import SimpleNamespace

    from minildm.interop import common, vae

    assert common.config_value({"a": 1}, "a", 0) == 1 and common.config_value({}, "a", 0) == 0
    assert common.config_value(SimpleNamespace(a=2), "a", 0) == 2
    assert common.config_value(SimpleNamespace(), "a", 0) == 0
    assert common.import_diffusers() is diffusers
    assert vae.load_state_dict_exact is common.load_state_dict_exact is load_state_dict_exact
