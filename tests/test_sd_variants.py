"""The Stable Diffusion variants as minildm configs: equal to the conversion of SD's real diffusers
configs (their config.json values, written out here), and of the published sizes (counted on meta)."""
from __future__ import annotations

import pytest
import torch

from minildm.diffusion.process import GaussianDiffusion
from minildm.interop import (SD_VARIANTS, config_from_diffusers, diffusers_unet_config, parameter_counts,
                             sd_autoencoder_config, sd_diffusers_unet_config, sd_schedule, sd_text_config,
                             sd_unet_config, sd_variant, unet_config_from_diffusers)
from minildm.models.autoencoder import AutoencoderKL
from minildm.models.unet import UNetModel

_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
_UNET_COMMON = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "down_block_types": _DOWN, "downsample_padding": 1, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
    "norm_num_groups": 32, "out_channels": 4, "up_block_types": _UP,
}
#: unet/config.json of runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-base and -2 (768-v)
SD_UNET = {
    "v1": {**_UNET_COMMON, "attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64},
    "v2": {**_UNET_COMMON, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "sample_size": 64,
           "dual_cross_attention": False, "num_class_embeds": None, "only_cross_attention": False,
           "use_linear_projection": True},
    "v2-v": {**_UNET_COMMON, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "sample_size": 96,
             "dual_cross_attention": False, "num_class_embeds": None, "only_cross_attention": False,
             "use_linear_projection": True},
}
#: vae/config.json (the same network in every variant; sample_size 768 for the 768-v model)
SD_VAE = {name: {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
                 "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
                 "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": size,
                 "up_block_types": ["UpDecoderBlock2D"] * 4}
          for name, size in (("v1", 512), ("v2", 512), ("v2-v", 768))}
#: text_encoder/config.json: CLIP ViT-L/14 (v1), OpenCLIP ViT-H/14 less its last layer (v2)
SD_TEXT = {
    "v1": {"hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
           "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768},
    "v2": {"hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
           "num_hidden_layers": 23, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 512},
}
SD_TEXT["v2-v"] = SD_TEXT["v2"]
#: scheduler/scheduler_config.json (prediction_type absent in SD 1.5's file: diffusers' default "epsilon")
SD_SCHEDULER = {name: {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "num_train_timesteps": 1000, "prediction_type": pred}
                for name, pred in (("v1", "epsilon"), ("v2", "epsilon"), ("v2-v", "v_prediction"))}

#: published parameter counts (SD 1.5 / SD 2 model cards and diffusers' models)
PUBLISHED = {"v1": {"unet": 859.5e6, "vae": 83.65e6, "text_encoder": 123.06e6},
             "v2": {"unet": 865.9e6, "vae": 83.65e6, "text_encoder": 340e6}}


def test_variant_names() -> None:
    assert set(SD_VARIANTS) == {"v1", "v2", "v2-v"}
    with pytest.raises(ValueError, match="v1, v2, v2-v"):
        sd_variant("xl")
    assert sd_variant("v1").latent_shape == (4, 64, 64) and sd_variant("v2-v").latent_shape == (4, 96, 96)
    assert {v.scale_factor for v in SD_VARIANTS.values()} == {0.18215}


@pytest.mark.parametrize("name", sorted(SD_VARIANTS))
def test_configs_equal_conversions_of_the_real_diffusers_configs(name: str) -> None:
    assert sd_unet_config(name) == unet_config_from_diffusers(SD_UNET[name])
    assert sd_autoencoder_config(name) == config_from_diffusers(SD_VAE[name])
    text = sd_text_config(name)
    assert {k: text[k] for k in SD_TEXT[name]} == SD_TEXT[name]
    sched = sd_schedule(name)
    ref = SD_SCHEDULER[name]
    assert (sched["schedule"], sched["linear_start"], sched["linear_end"], sched["num_timesteps"]) == \
        (ref["beta_schedule"], ref["beta_start"], ref["beta_end"], ref["num_train_timesteps"])
    assert {"eps": "epsilon", "v": "v_prediction"}[sched["parameterization"]] == ref["prediction_type"]
    GaussianDiffusion(**sched)  # valid keyword arguments


@pytest.mark.parametrize("name", sorted(SD_VARIANTS))
def test_diffusers_kwargs_match_the_real_config(name: str) -> None:
    kwargs = sd_diffusers_unet_config(name)
    real = SD_UNET[name]
    heads = real["attention_head_dim"]
    assert list(kwargs["attention_head_dim"]) == (heads if isinstance(heads, list) else [heads] * 4)
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        assert list(kwargs[key]) == real[key]
    for key in ("cross_attention_dim", "layers_per_block", "sample_size", "in_channels", "out_channels",
                "norm_num_groups", "norm_eps", "flip_sin_to_cos", "freq_shift", "downsample_padding", "act_fn"):
        assert kwargs[key] == real[key], key
    assert kwargs["use_linear_projection"] == real.get("use_linear_projection", False)
    # the rest is diffusers_unet_config's, nothing redone
    assert kwargs == {**diffusers_unet_config(sd_unet_config(name), sample_size=real["sample_size"]),
                      "use_linear_projection": real.get("use_linear_projection", False)}


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_parameter_counts_match_published_sizes(name: str) -> None:
    pytest.importorskip("transformers")
    counts = parameter_counts(name)
    for part, published in PUBLISHED[name].items():
        assert abs(counts[part] - published) / published < 0.005, (part, counts[part], published)
    assert counts["total"] == counts["unet"] + counts["vae"] + counts["text_encoder"]
    assert parameter_counts(f"{name}-v" if name == "v2" else name)["unet"] == counts["unet"]


def test_meta_build_allocates_nothing() -> None:
    with torch.device("meta"):
        unet, vae = UNetModel(sd_unet_config("v2")), AutoencoderKL(sd_autoencoder_config("v1"))
    for model in (unet, vae):
        assert {p.device.type for p in model.parameters()} == {"meta"}
        assert {b.device.type for b in model.buffers()} <= {"meta"}
