"""Weight conversion between minildm's :class:`~minildm.models.unet.UNetModel` and diffusers'
``UNet2DConditionModel`` (the Stable Diffusion UNet layout).

minildm's UNet keeps the CompVis module names (``input_blocks``, ``middle_block``,
``output_blocks``, ``time_embed``, ``out``), so the ``model.diffusion_model.*`` part of an
original Stable Diffusion checkpoint loads by name. diffusers groups the same modules by
resolution level. With ``R = num_res_blocks`` and ``L = len(channel_mult)`` levels:

=================================================  ===============================================
minildm / CompVis                                  diffusers
=================================================  ===============================================
``time_embed.0`` / ``time_embed.2``                ``time_embedding.linear_1`` / ``linear_2``
``input_blocks.0.0``                               ``conv_in``
``input_blocks.{1 + i(R+1) + j}.0``                ``down_blocks.i.resnets.j``
``input_blocks.{1 + i(R+1) + j}.1``                ``down_blocks.i.attentions.j``
``input_blocks.{(i+1)(R+1)}.0.op``                 ``down_blocks.i.downsamplers.0.conv``
``middle_block.0`` / ``.1`` / ``.2``               ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``output_blocks.{k(R+1) + j}.0``                   ``up_blocks.k.resnets.j`` (j ≤ R)
``output_blocks.{k(R+1) + j}.1``                   ``up_blocks.k.attentions.j``
``output_blocks.{k(R+1) + R}.{1 or 2}.conv``       ``up_blocks.k.upsamplers.0.conv``
``out.0`` / ``out.2``                              ``conv_norm_out`` / ``conv_out``
ResBlock ``in_layers.0`` / ``in_layers.2``         resnet ``norm1`` / ``conv1``
ResBlock ``emb_layers.1``                          resnet ``time_emb_proj``
ResBlock ``out_layers.0`` / ``out_layers.3``       resnet ``norm2`` / ``conv2``
ResBlock ``skip_connection``                       resnet ``conv_shortcut``
SpatialTransformer ``*``                           Transformer2DModel ``*`` (same names)
=================================================  ===============================================

Level i has attention (``CrossAttnDownBlock2D``) when its downsampling rate 2^i is in
``attention_resolutions``; diffusers' up block k is level L − 1 − k. Stable Diffusion 2's
``use_linear_projection`` stores ``proj_in``/``proj_out`` as (C, C) linear weights where minildm
keeps 1×1 convolutions: the same numbers, reshaped. diffusers' ``attention_head_dim`` of SD 1.x
is, despite its name, the number of heads per block; it maps to minildm's heads per level.

Only UNets with cross-attention convert (``context_dim`` set): diffusers'
``UNet2DConditionModel`` has no plain self-attention block. The state-dict functions need
neither diffusers nor a model; the model-level functions import diffusers lazily.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..models.nn.layers import attention_heads
from ..models.unet import UNetConfig, UNetModel
from .common import config_value, import_diffusers, load_state_dict_exact

if TYPE_CHECKING:  # pragma: no cover
    import diffusers

__all__ = [
    "unet_from_diffusers",
    "unet_to_diffusers",
    "unet_config_from_diffusers",
    "diffusers_unet_config",
    "convert_unet_state_dict_from_diffusers",
    "convert_unet_state_dict_to_diffusers",
]

_RES_TO_DIFFUSERS = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                     "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RES_TO_COMPVIS = {v: k for k, v in _RES_TO_DIFFUSERS.items()}


def _level_has_attention(config: UNetConfig, level: int) -> bool:
    return 2 ** level in config.attention_resolutions


def _module_pairs(config: UNetConfig) -> list[tuple[str, str, str]]:
    """(minildm prefix, diffusers prefix, kind) for every module; kind: res | attn | plain."""
    R, L = config.num_res_blocks, len(config.channel_mult)
    pairs = [("time_embed.0", "time_embedding.linear_1", "plain"), ("time_embed.2", "time_embedding.linear_2", "plain"),
             ("input_blocks.0.0", "conv_in", "plain"), ("out.0", "conv_norm_out", "plain"),
             ("out.2", "conv_out", "plain"),
             ("middle_block.0", "mid_block.resnets.0", "res"), ("middle_block.1", "mid_block.attentions.0", "attn"),
             ("middle_block.2", "mid_block.resnets.1", "res")]
    for i in range(L):
        for j in range(R):
            idx = 1 + i * (R + 1) + j
            pairs.append((f"input_blocks.{idx}.0", f"down_blocks.{i}.resnets.{j}", "res"))
            if _level_has_attention(config, i):
                pairs.append((f"input_blocks.{idx}.1", f"down_blocks.{i}.attentions.{j}", "attn"))
        if i < L - 1:
            pairs.append((f"input_blocks.{(i + 1) * (R + 1)}.0.op", f"down_blocks.{i}.downsamplers.0.conv", "plain"))
    for k in range(L):
        attn = _level_has_attention(config, L - 1 - k)
        for j in range(R + 1):
            idx = k * (R + 1) + j
            pairs.append((f"output_blocks.{idx}.0", f"up_blocks.{k}.resnets.{j}", "res"))
            if attn:
                pairs.append((f"output_blocks.{idx}.1", f"up_blocks.{k}.attentions.{j}", "attn"))
        if k < L - 1:
            pairs.append((f"output_blocks.{k * (R + 1) + R}.{2 if attn else 1}.conv",
                          f"up_blocks.{k}.upsamplers.0.conv", "plain"))
    return pairs


def _convert(state_dict: Mapping[str, torch.Tensor], config: UNetConfig, to_diffusers: bool,
             linear_projection: bool) -> dict[str, torch.Tensor]:
    # longest source prefix first, so that e.g. "input_blocks.10" is not taken for "input_blocks.1"
    pairs = [(ours, theirs, kind) if to_diffusers else (theirs, ours, kind)
             for ours, theirs, kind in _module_pairs(config)]
    pairs.sort(key=lambda p: -len(p[0]))
    table = _RES_TO_DIFFUSERS if to_diffusers else _RES_TO_COMPVIS
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        src, dst, kind = next(((s, d, k) for s, d, k in pairs if key.startswith(s + ".")), ("", "", "unknown"))
        sub = key[len(src) + 1:]
        if kind == "res":
            module, _, param = sub.rpartition(".")
            if module not in table:
                unknown.append(key)
                continue
            sub = f"{table[module]}.{param}"
        elif kind == "attn" and sub in ("proj_in.weight", "proj_out.weight"):
            if to_diffusers and linear_projection:
                value = value.reshape(value.shape[0], value.shape[1])
            elif not to_diffusers and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
        elif kind == "unknown":
            unknown.append(key)
            continue
        out[f"{dst}.{sub}"] = value
    if unknown:
        shown = ", ".join(unknown[:20]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 20 else "")
        direction = "minildm -> diffusers" if to_diffusers else "diffusers -> minildm"
        raise ValueError(f"{direction}: {len(unknown)} key(s) are not part of this UNet's layout: {shown}")
    return out


def convert_unet_state_dict_to_diffusers(state_dict: Mapping[str, torch.Tensor], config: UNetConfig,
                                         linear_projection: bool = False) -> dict[str, torch.Tensor]:
    """minildm / CompVis UNet state dict -> diffusers ``UNet2DConditionModel`` state dict.

    ``linear_projection``: write ``proj_in``/``proj_out`` as linear weights (SD 2's
    ``use_linear_projection=True``). ValueError lists every key outside the layout.
    """
    return _convert(state_dict, config, True, linear_projection)


def convert_unet_state_dict_from_diffusers(state_dict: Mapping[str, torch.Tensor],
                                           config: UNetConfig) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` state dict -> minildm / CompVis UNet state dict
    (e.g. a ``unet/diffusion_pytorch_model.safetensors`` read with safetensors; no diffusers needed)."""
    return _convert(state_dict, config, False, False)


def _heads_per_level(config: UNetConfig) -> list[int]:
    return [attention_heads(config.model_channels * m, config.num_heads, config.num_head_channels) for m in config.channel_mult]


def diffusers_unet_config(config: UNetConfig, sample_size: int | None = None) -> dict[str, Any]:
    """Keyword arguments of diffusers' ``UNet2DConditionModel`` for a minildm :class:`UNetConfig`.

    Raises ValueError where diffusers cannot express the model: no cross-attention
    (``context_dim`` None), a pooled-context embedding (``pooled_context``: diffusers' text
    addition embedding pools by attention, not by the mean) or channel counts that ``num_groups``
    does not divide (minildm then uses fewer groups, diffusers cannot).
    """
    if config.context_dim is None:
        raise ValueError("only UNets with cross-attention (context_dim set) convert to diffusers' "
                         "UNet2DConditionModel, which has no plain self-attention block")
    if config.pooled_context:
        raise ValueError("a UNet with pooled_context does not convert: diffusers' UNet2DConditionModel "
                         "has no mean-pooled context embedding")
    chans = [config.model_channels * m for m in config.channel_mult]
    if any(c % config.num_groups for c in chans) or config.model_channels % config.num_groups:
        raise ValueError(f"diffusers needs every channel count divisible by num_groups={config.num_groups}, "
                         f"got {chans}")
    L = len(chans)
    down = ["CrossAttnDownBlock2D" if _level_has_attention(config, i) else "DownBlock2D" for i in range(L)]
    up = ["CrossAttnUpBlock2D" if _level_has_attention(config, L - 1 - k) else "UpBlock2D" for k in range(L)]
    return {
        "sample_size": sample_size or 8 * 2 ** (L - 1),
        "in_channels": config.in_channels, "out_channels": config.out_channels,
        "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": tuple(down), "mid_block_type": "UNetMidBlock2DCrossAttn", "up_block_types": tuple(up),
        "block_out_channels": tuple(chans), "layers_per_block": config.num_res_blocks,
        "downsample_padding": 1, "dropout": config.dropout, "act_fn": "silu",
        "norm_num_groups": config.num_groups, "norm_eps": 1e-5,
        "cross_attention_dim": config.context_dim, "transformer_layers_per_block": config.transformer_depth,
        "attention_head_dim": tuple(_heads_per_level(config)),
        "use_linear_projection": False,
        "resnet_time_scale_shift": "scale_shift" if config.use_scale_shift_norm else "default",
    }


_REQUIRED = {"center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
             "mid_block_type": "UNetMidBlock2DCrossAttn", "downsample_padding": 1, "dual_cross_attention": False,
             "only_cross_attention": False, "class_embed_type": None, "addition_embed_type": None,
             "encoder_hid_dim": None, "time_embedding_type": "positional", "time_embedding_dim": None,
             "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
             "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "mid_block_scale_factor": 1,
             "num_class_embeds": None, "attention_type": "default", "cross_attention_norm": None,
             "norm_eps": 1e-5}


def unet_config_from_diffusers(cfg: Any) -> UNetConfig:
    """minildm :class:`UNetConfig` for a diffusers ``UNet2DConditionModel`` config (object or dict).

    Raises ValueError naming every setting minildm's UNet does not implement (class or
    addition embeddings, dual or cross-only attention, per-block layer counts, ...).
    """
    problems = [f"{k}={config_value(cfg, k, v)!r} (minildm: {v!r})" for k, v in _REQUIRED.items()
                if config_value(cfg, k, v) != v]
    chans = [int(c) for c in config_value(cfg, "block_out_channels", ())]
    if not chans:
        raise ValueError("config has no block_out_channels")
    L, ch = len(chans), chans[0]
    if any(c % ch for c in chans):
        problems.append(f"block_out_channels={chans} are not multiples of the first")
    down = list(config_value(cfg, "down_block_types", ()))
    up = list(config_value(cfg, "up_block_types", ()))
    attn = [t == "CrossAttnDownBlock2D" for t in down]
    if len(down) != L or any(t not in ("CrossAttnDownBlock2D", "DownBlock2D") for t in down):
        problems.append(f"down_block_types={down}")
    if up != ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]]:
        problems.append(f"up_block_types={up} do not mirror down_block_types={down}")
    layers = config_value(cfg, "layers_per_block", 2)
    depth = config_value(cfg, "transformer_layers_per_block", 1)
    context_dim = config_value(cfg, "cross_attention_dim", None)
    for name, value in (("layers_per_block", layers), ("transformer_layers_per_block", depth),
                        ("cross_attention_dim", context_dim)):
        if not isinstance(value, int):
            problems.append(f"{name}={value!r} (minildm: one int for all blocks)")
    if config_value(cfg, "num_attention_heads", None) is not None:
        problems.append("num_attention_heads is set (diffusers reads attention_head_dim as the head count)")
    heads = config_value(cfg, "attention_head_dim", 8)
    heads = [int(heads)] * L if isinstance(heads, int) else [int(h) for h in heads]
    shift = config_value(cfg, "resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        problems.append(f"resnet_time_scale_shift={shift!r}")
    if problems:
        raise ValueError("this diffusers UNet does not map onto minildm's UNetModel: " + "; ".join(problems))
    used = [h for h, a in zip(heads, attn) if a] + [heads[-1]]  # the middle block uses the last level's heads
    if len(set(used)) == 1:
        num_heads, head_channels = used[0], -1
    else:
        dims = {chans[i] // heads[i] for i in range(L) if attn[i]} | {chans[-1] // heads[-1]}
        if len(dims) != 1:
            raise ValueError(f"attention_head_dim={heads}: minildm needs one head count or one head width for all "
                             "attention blocks")
        num_heads, head_channels = 1, dims.pop()
    return UNetConfig(in_channels=int(config_value(cfg, "in_channels", 4)),
                      out_channels=int(config_value(cfg, "out_channels", 4)),
                      model_channels=ch, num_res_blocks=int(layers),
                      attention_resolutions=tuple(2 ** i for i in range(L) if attn[i]),
                      channel_mult=tuple(c // ch for c in chans), num_heads=num_heads,
                      num_head_channels=head_channels, dropout=float(config_value(cfg, "dropout", 0.0)),
                      use_scale_shift_norm=shift == "scale_shift", context_dim=int(context_dim),
                      transformer_depth=int(depth), num_groups=int(config_value(cfg, "norm_num_groups", 32)))


def _check_groups(model: nn.Module, num_groups: int) -> None:
    odd = sorted({m.num_channels for m in model.modules() if isinstance(m, nn.GroupNorm) and m.num_groups != num_groups})
    if odd:
        raise ValueError(f"diffusers uses {num_groups} GroupNorm groups everywhere; this model has fewer for "
                         f"{odd} channels: choose channel counts divisible by num_groups")


def unet_from_diffusers(unet: "diffusers.UNet2DConditionModel") -> UNetModel:
    """minildm :class:`UNetModel` with the weights of a diffusers ``UNet2DConditionModel``.

    Same outputs ``model(x, t, context, context_mask)`` as ``unet(x, t, encoder_hidden_states=context,
    encoder_attention_mask=context_mask).sample`` up to float rounding; same device, dtype and mode.
    """
    diffusers = import_diffusers()
    if not isinstance(unet, diffusers.UNet2DConditionModel):
        raise TypeError(f"expected a diffusers.UNet2DConditionModel, got {type(unet).__name__}")
    config = unet_config_from_diffusers(unet.config)
    model = UNetModel(config)
    _check_groups(model, config.num_groups)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in unet.state_dict().items()}
    load_state_dict_exact(model, convert_unet_state_dict_from_diffusers(sd, config))
    p = next(unet.parameters())
    return model.to(device=p.device, dtype=p.dtype).train(unet.training)


def unet_to_diffusers(model: UNetModel, sample_size: int | None = None) -> "diffusers.UNet2DConditionModel":
    """diffusers ``UNet2DConditionModel`` with the weights of a minildm :class:`UNetModel` (with
    cross-attention); same device, dtype and mode. ValueError where diffusers cannot express it."""
    diffusers = import_diffusers()
    if not isinstance(model, UNetModel):
        raise TypeError(f"expected a minildm UNetModel, got {type(model).__name__}")
    kwargs = diffusers_unet_config(model.config, sample_size)
    _check_groups(model, model.config.num_groups)
    unet = diffusers.UNet2DConditionModel(**kwargs)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    load_state_dict_exact(unet, convert_unet_state_dict_to_diffusers(sd, model.config))
    p = next(model.parameters())
    unet = unet.to(device=p.device)
    if p.dtype != torch.float32:
        unet = unet.to(dtype=p.dtype)
    return unet.train(model.training)
