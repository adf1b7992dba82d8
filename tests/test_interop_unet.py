"""Parity tests: minildm UNetModel <-> diffusers UNet2DConditionModel (small random models, nothing downloaded)."""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from test_interop import _randomise  # noqa: E402

from minildm.interop import (convert_unet_state_dict_from_diffusers, convert_unet_state_dict_to_diffusers,
                             diffusers_unet_config, unet_config_from_diffusers, unet_from_diffusers,
                             unet_to_diffusers)
from minildm.models.unet import UNetConfig, UNetModel  # noqa: E402

TOL = 1e-5

#: small minildm configs covering: attention at every level or some, scale-shift and additive time
#: embedding, heads by count or by width, transformer depth 2, 3 in/out channels
CONFIGS = {
    "2lvl-all-attn": dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                          num_heads=2, context_dim=24, num_groups=8),
    "3lvl-sd-like": dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(1, 2),
                         num_heads=4, context_dim=16, num_groups=8, use_scale_shift_norm=False),
    "3lvl-headdim-depth2": dict(model_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
                                attention_resolutions=(2, 4), num_head_channels=8, context_dim=12, num_groups=4,
                                transformer_depth=2, in_channels=3, out_channels=3),
}


def _inputs(config: UNetConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, config.in_channels, 16, 16, generator=g)
    t = torch.tensor([0, 417, 999])
    context = torch.randn(3, 5, config.context_dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return x, t, context, mask


def _ours(name: str, seed: int = 1) -> UNetModel:
    model = UNetModel(**CONFIGS[name])
    _randomise(model, seed)  # zero-initialised output layers would make any two models agree
    return model.eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_to_diffusers_parity_with_context_and_mask(name: str) -> None:
    model = _ours(name)
    theirs = unet_to_diffusers(model)
    assert isinstance(theirs, diffusers.UNet2DConditionModel) and not theirs.training
    x, t, context, mask = _inputs(model.config)
    with torch.no_grad():
        a = model(x, t, context=context, context_mask=mask)
        b = theirs(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
        unmasked = model(x, t, context=context)
    assert a.abs().mean() > 0.05  # a real signal, not the zero output of an untrained UNet
    assert (a - b).abs().max().item() < TOL
    assert (a - unmasked).abs().max() > 1e-3  # the mask matters, so parity above covers it


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_from_diffusers_parity(name: str) -> None:
    kwargs = diffusers_unet_config(UNetConfig(**CONFIGS[name]))
    theirs = diffusers.UNet2DConditionModel(**kwargs).eval()
    _randomise(theirs, 7)
    ours = unet_from_diffusers(theirs)
    x, t, context, mask = _inputs(ours.config, seed=3)
    with torch.no_grad():
        a = ours(x, t, context=context, context_mask=mask)
        b = theirs(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
    assert a.abs().mean() > 0.05 and (a - b).abs().max().item() < TOL


def test_a_wrong_weight_breaks_parity() -> None:
    """The parity test can fail: one swapped tensor gives a visible difference."""
    model = _ours("3lvl-sd-like")
    theirs = unet_to_diffusers(model)
    with torch.no_grad():
        w = theirs.down_blocks[1].resnets[0].conv1.weight
        w.copy_(w.flip(0))
    x, t, context, _ = _inputs(model.config)
    with torch.no_grad():
        diff = (model(x, t, context=context) - theirs(x, t, encoder_hidden_states=context).sample).abs().max()
    assert diff > 1e-2


def test_state_dict_round_trip_and_sd2_linear_projection() -> None:
    model = _ours("3lvl-sd-like")
    config = model.config
    sd = model.state_dict()
    back = convert_unet_state_dict_from_diffusers(convert_unet_state_dict_to_diffusers(sd, config), config)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    linear = convert_unet_state_dict_to_diffusers(sd, config, linear_projection=True)
    assert linear["mid_block.attentions.0.proj_in.weight"].ndim == 2  # SD 2's use_linear_projection layout
    kwargs = {**diffusers_unet_config(config), "use_linear_projection": True}
    theirs = diffusers.UNet2DConditionModel(**kwargs).eval()
    theirs.load_state_dict(linear, strict=True)
    ours = unet_from_diffusers(theirs)
    x, t, context, mask = _inputs(config)
    with torch.no_grad():
        assert (ours(x, t, context=context) - model(x, t, context=context)).abs().max() < TOL
        assert (theirs(x, t, encoder_hidden_states=context).sample - model(x, t, context=context)).abs().max() < TOL


def test_conversion_errors() -> None:
    with pytest.raises(ValueError, match="only UNets with cross-attention"):
        diffusers_unet_config(UNetConfig(model_channels=32, channel_mult=(1, 2), num_groups=8))
    with pytest.raises(ValueError, match="divisible by num_groups"):
        diffusers_unet_config(UNetConfig(model_channels=24, channel_mult=(1, 2), context_dim=8, num_heads=2))
    with pytest.raises(ValueError, match="pooled_context"):
        diffusers_unet_config(UNetConfig(model_channels=32, channel_mult=(1, 2), num_groups=8, context_dim=8,
                                         pooled_context=True))
    model = _ours("2lvl-all-attn")
    sd = dict(model.state_dict())
    sd["input_blocks.1.0.bogus.weight"] = torch.zeros(1)
    sd["not_a_module.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="2 key\\(s\\) are not part.*bogus.*not_a_module"):
        convert_unet_state_dict_to_diffusers(sd, model.config)
    cfg = dict(diffusers_unet_config(model.config), class_embed_type="timestep", dual_cross_attention=True)
    with pytest.raises(ValueError, match="dual_cross_attention=True.*class_embed_type"):
        unet_config_from_diffusers(cfg)
    cfg = dict(diffusers_unet_config(model.config), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(ValueError, match="do not mirror"):
        unet_config_from_diffusers(cfg)
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        unet_from_diffusers(torch.nn.Linear(2, 2))
