"""Weight conversion between minildm and the diffusers / Stable Diffusion VAE layout.

minildm's :class:`~minildm.models.autoencoder.AutoencoderKL` uses the CompVis parameter names,
so the ``first_stage_model.*`` part of an original Stable Diffusion checkpoint loads by
name (see :func:`first_stage_state_dict`). diffusers' ``AutoencoderKL`` stores the
same tensors under other names; this module maps them one to one:

======================================================  ==============================================
diffusers                                               minildm / CompVis
======================================================  ==============================================
``{enc,dec}.conv_in``, ``conv_out``                     same
``{enc,dec}.conv_norm_out``                             ``{enc,dec}.norm_out``
``encoder.down_blocks.i.resnets.j.*``                   ``encoder.down.i.block.j.*``
``encoder.down_blocks.i.attentions.j.*``                ``encoder.down.i.attn.j.*``
``encoder.down_blocks.i.downsamplers.0.conv``           ``encoder.down.i.downsample.conv``
``decoder.up_blocks.k.resnets.j.*``                     ``decoder.up.(L-1-k).block.j.*``
``decoder.up_blocks.k.attentions.j.*``                  ``decoder.up.(L-1-k).attn.j.*``
``decoder.up_blocks.k.upsamplers.0.conv``               ``decoder.up.(L-1-k).upsample.conv``
``{enc,dec}.mid_block.resnets.0 / .1``                  ``{enc,dec}.mid.block_1 / block_2``
``{enc,dec}.mid_block.attentions.0``                    ``{enc,dec}.mid.attn_1``
``*.resnets.j.conv_shortcut``                           ``*.block.j.nin_shortcut``
attention ``group_norm``                                ``norm``
attention ``to_q``/``to_k``/``to_v``/``to_out.0``       ``q``/``k``/``v``/``proj_out``
(older diffusers files: ``query``/``key``/``value``/``proj_attn``)
``quant_conv``, ``post_quant_conv``                     same
======================================================  ==============================================

diffusers' ``up_blocks`` run in execution order (k = 0 at the lowest resolution) while
CompVis' ``up[i]`` is indexed by resolution level i, hence ``i = L − 1 − k`` for L levels.
The attention projections are ``nn.Linear`` in diffusers, (C, C), and 1×1 convolutions in
CompVis, (C, C, 1, 1): the same numbers, reshaped.

The state-dict functions need neither diffusers nor a model; the model-level functions
import diffusers lazily (it is a development extra).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..models.autoencoder import AutoencoderKL
from ..models.encoder_decoder import AutoencoderConfig
from ..models.nn import group_count
from .common import config_value, import_diffusers, load_state_dict_exact

if TYPE_CHECKING:  # pragma: no cover
    import diffusers

__all__ = [
    "autoencoder_from_diffusers",
    "autoencoder_to_diffusers",
    "config_from_diffusers",
    "convert_vae_state_dict_from_diffusers",
    "convert_vae_state_dict_to_diffusers",
    "diffusers_config_from_config",
    "first_stage_state_dict",
    "load_state_dict_exact",
]

_RESNET_TO_COMPVIS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                      "conv_shortcut": "nin_shortcut"}
_RESNET_TO_DIFFUSERS = {v: k for k, v in _RESNET_TO_COMPVIS.items()}
_ATTN_TO_COMPVIS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                    # names used by diffusers files saved before v0.14
                    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_ATTN_TO_DIFFUSERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_PROJECTIONS = {"q", "k", "v", "proj_out"}

_SUB = r"(?P<sub>.+)\.(?P<param>weight|bias)"
_D_RES = re.compile(r"^(?P<part>encoder|decoder)\.(?P<blocks>down_blocks|up_blocks)\.(?P<i>\d+)\.resnets\.(?P<j>\d+)\." + _SUB + "$")
_D_ATT = re.compile(r"^(?P<part>encoder|decoder)\.(?P<blocks>down_blocks|up_blocks)\.(?P<i>\d+)\.attentions\.(?P<j>\d+)\." + _SUB + "$")
_D_DOWN = re.compile(r"^encoder\.down_blocks\.(?P<i>\d+)\.downsamplers\.0\.conv\.(?P<param>weight|bias)$")
_D_UP = re.compile(r"^decoder\.up_blocks\.(?P<i>\d+)\.upsamplers\.0\.conv\.(?P<param>weight|bias)$")
_D_MID_RES = re.compile(r"^(?P<part>encoder|decoder)\.mid_block\.resnets\.(?P<j>[01])\." + _SUB + "$")
_D_MID_ATT = re.compile(r"^(?P<part>encoder|decoder)\.mid_block\.attentions\.0\." + _SUB + "$")
_D_SAME = re.compile(r"^(?:(?:encoder|decoder)\.(?:conv_in|conv_out)|quant_conv|post_quant_conv)\.(?:weight|bias)$")
_D_NORM_OUT = re.compile(r"^(?P<part>encoder|decoder)\.conv_norm_out\.(?P<param>weight|bias)$")

_C_RES = re.compile(r"^(?P<part>encoder|decoder)\.(?P<blocks>down|up)\.(?P<i>\d+)\.block\.(?P<j>\d+)\." + _SUB + "$")
_C_ATT = re.compile(r"^(?P<part>encoder|decoder)\.(?P<blocks>down|up)\.(?P<i>\d+)\.attn\.(?P<j>\d+)\." + _SUB + "$")
_C_DOWN = re.compile(r"^encoder\.down\.(?P<i>\d+)\.downsample\.conv\.(?P<param>weight|bias)$")
_C_UP = re.compile(r"^decoder\.up\.(?P<i>\d+)\.upsample\.conv\.(?P<param>weight|bias)$")
_C_MID_RES = re.compile(r"^(?P<part>encoder|decoder)\.mid\.block_(?P<j>[12])\." + _SUB + "$")
_C_MID_ATT = re.compile(r"^(?P<part>encoder|decoder)\.mid\.attn_1\." + _SUB + "$")
_C_SAME = _D_SAME
_C_NORM_OUT = re.compile(r"^(?P<part>encoder|decoder)\.norm_out\.(?P<param>weight|bias)$")


def _num_levels(keys: list[str], pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    if not found:
        raise ValueError(f"cannot infer the number of resolution levels: no key matches {pattern!r}")
    return max(found) + 1


def _attn_weight_to_conv(value: torch.Tensor) -> torch.Tensor:
    return value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value


def _attn_weight_to_linear(value: torch.Tensor) -> torch.Tensor:
    if value.ndim == 4:
        if value.shape[-2:] != (1, 1):
            raise ValueError(f"attention projection weight must be a 1x1 convolution, got shape {tuple(value.shape)}")
        return value.reshape(value.shape[0], value.shape[1])
    return value


def _raise_unknown(unknown: list[str], direction: str) -> None:
    if unknown:
        shown = ", ".join(unknown[:20]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 20 else "")
        raise ValueError(f"{direction}: {len(unknown)} key(s) are not part of a KL autoencoder's layout: {shown}")


def convert_vae_state_dict_from_diffusers(state_dict: Mapping[str, torch.Tensor],
                                          num_levels: int | None = None) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` state dict -> minildm / CompVis state dict.

    Works on plain tensors (e.g. a ``diffusion_pytorch_model.safetensors`` read with
    ``safetensors.torch.load_file``), no diffusers needed. ``num_levels`` (len(ch_mult)) is
    inferred from the ``decoder.up_blocks.*`` keys if not given. Tensors are shared, not copied
    (attention projections are reshaped views).

    Raises:
        ValueError: listing every key that is not part of the diffusers VAE layout.
    """
    keys = list(state_dict)
    L = num_levels if num_levels is not None else _num_levels(keys, r"^decoder\.up_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key in keys:
        value = state_dict[key]
        new: str | None = None
        if _D_SAME.match(key):
            new = key
        elif m := _D_NORM_OUT.match(key):
            new = f"{m['part']}.norm_out.{m['param']}"
        elif m := _D_RES.match(key):
            sub = _RESNET_TO_COMPVIS.get(m["sub"])
            if sub is not None and (m["part"], m["blocks"]) in {("encoder", "down_blocks"), ("decoder", "up_blocks")}:
                i = int(m["i"]) if m["part"] == "encoder" else L - 1 - int(m["i"])
                new = f"{m['part']}.{'down' if m['part'] == 'encoder' else 'up'}.{i}.block.{m['j']}.{sub}.{m['param']}"
        elif m := _D_ATT.match(key):
            sub = _ATTN_TO_COMPVIS.get(m["sub"])
            if sub is not None and (m["part"], m["blocks"]) in {("encoder", "down_blocks"), ("decoder", "up_blocks")}:
                i = int(m["i"]) if m["part"] == "encoder" else L - 1 - int(m["i"])
                new = f"{m['part']}.{'down' if m['part'] == 'encoder' else 'up'}.{i}.attn.{m['j']}.{sub}.{m['param']}"
                if sub in _PROJECTIONS and m["param"] == "weight":
                    value = _attn_weight_to_conv(value)
        elif m := _D_DOWN.match(key):
            new = f"encoder.down.{m['i']}.downsample.conv.{m['param']}"
        elif m := _D_UP.match(key):
            new = f"decoder.up.{L - 1 - int(m['i'])}.upsample.conv.{m['param']}"
        elif m := _D_MID_RES.match(key):
            sub = _RESNET_TO_COMPVIS.get(m["sub"])
            if sub is not None:
                new = f"{m['part']}.mid.block_{int(m['j']) + 1}.{sub}.{m['param']}"
        elif m := _D_MID_ATT.match(key):
            sub = _ATTN_TO_COMPVIS.get(m["sub"])
            if sub is not None:
                new = f"{m['part']}.mid.attn_1.{sub}.{m['param']}"
                if sub in _PROJECTIONS and m["param"] == "weight":
                    value = _attn_weight_to_conv(value)
        if new is None or (new.startswith("decoder.up.") and int(new.split(".")[2]) < 0):
            unknown.append(key)
            continue
        if new in out:
            raise ValueError(f"two diffusers keys map to {new!r} (e.g. both old and new attention names); "
                             f"the second is {key!r}")
        out[new] = value
    _raise_unknown(unknown, "diffusers -> minildm")
    return out


def convert_vae_state_dict_to_diffusers(state_dict: Mapping[str, torch.Tensor],
                                        num_levels: int | None = None) -> dict[str, torch.Tensor]:
    """minildm / CompVis ``AutoencoderKL`` state dict -> diffusers ``AutoencoderKL`` state dict.

    Inverse of :func:`convert_vae_state_dict_from_diffusers` (writes the current diffusers
    attention names ``to_q``/``to_k``/``to_v``/``to_out.0``).

    Raises:
        ValueError: listing every key that is not part of the CompVis KL autoencoder layout
            (e.g. a VQModel's ``quantize.embedding.weight``).
    """
    keys = list(state_dict)
    L = num_levels if num_levels is not None else _num_levels(keys, r"^decoder\.up\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key in keys:
        value = state_dict[key]
        new: str | None = None
        if _C_SAME.match(key):
            new = key
        elif m := _C_NORM_OUT.match(key):
            new = f"{m['part']}.conv_norm_out.{m['param']}"
        elif m := _C_RES.match(key):
            sub = _RESNET_TO_DIFFUSERS.get(m["sub"])
            if sub is not None and (m["part"], m["blocks"]) in {("encoder", "down"), ("decoder", "up")}:
                enc = m["part"] == "encoder"
                i = int(m["i"]) if enc else L - 1 - int(m["i"])
                new = f"{m['part']}.{'down_blocks' if enc else 'up_blocks'}.{i}.resnets.{m['j']}.{sub}.{m['param']}"
        elif m := _C_ATT.match(key):
            sub = _ATTN_TO_DIFFUSERS.get(m["sub"])
            if sub is not None and (m["part"], m["blocks"]) in {("encoder", "down"), ("decoder", "up")}:
                enc = m["part"] == "encoder"
                i = int(m["i"]) if enc else L - 1 - int(m["i"])
                new = f"{m['part']}.{'down_blocks' if enc else 'up_blocks'}.{i}.attentions.{m['j']}.{sub}.{m['param']}"
                if m["sub"] in _PROJECTIONS and m["param"] == "weight":
                    value = _attn_weight_to_linear(value)
        elif m := _C_DOWN.match(key):
            new = f"encoder.down_blocks.{m['i']}.downsamplers.0.conv.{m['param']}"
        elif m := _C_UP.match(key):
            new = f"decoder.up_blocks.{L - 1 - int(m['i'])}.upsamplers.0.conv.{m['param']}"
        elif m := _C_MID_RES.match(key):
            sub = _RESNET_TO_DIFFUSERS.get(m["sub"])
            if sub is not None:
                new = f"{m['part']}.mid_block.resnets.{int(m['j']) - 1}.{sub}.{m['param']}"
        elif m := _C_MID_ATT.match(key):
            sub = _ATTN_TO_DIFFUSERS.get(m["sub"])
            if sub is not None:
                new = f"{m['part']}.mid_block.attentions.0.{sub}.{m['param']}"
                if m["sub"] in _PROJECTIONS and m["param"] == "weight":
                    value = _attn_weight_to_linear(value)
        if new is None or (".up_blocks." in new and int(new.split(".")[2]) < 0):
            unknown.append(key)
            continue
        out[new] = value
    _raise_unknown(unknown, "minildm -> diffusers")
    return out


def first_stage_state_dict(state_dict: Mapping[str, torch.Tensor],
                           prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    """The autoencoder part of an original (CompVis / Stable Diffusion) checkpoint.

    Keeps the keys under ``prefix`` with the prefix removed. A stand-alone first-stage
    checkpoint (keys ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ... and ``loss.*``) is
    returned without its training-loss keys. These keys already are minildm's names.
    """
    if any(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return {k: v for k, v in state_dict.items() if not k.startswith("loss.")}


def config_from_diffusers(cfg: Any, resolution: int | None = None) -> AutoencoderConfig:
    """minildm :class:`AutoencoderConfig` from a diffusers ``AutoencoderKL`` config.

    ``cfg`` is ``vae.config`` or the dict of its ``config.json``. ``block_out_channels`` gives
    ch = block_out_channels[0] and ch_mult = block_out_channels / ch; ``layers_per_block`` ->
    num_res_blocks; ``latent_channels`` -> z_channels = embed_dim; ``norm_num_groups``;
    ``sample_size`` -> resolution (or pass ``resolution``); ``Attn*`` block types ->
    attn_resolutions; ``mid_block_add_attention`` -> mid_attn.

    Raises:
        ValueError: for diffusers options this design cannot express (other activations or
            block types, missing quant convs, channel counts that are not multiples of the first).
    """
    boc = tuple(int(c) for c in config_value(cfg, "block_out_channels", (64,)))
    L = len(boc)
    ch = boc[0]
    if any(c % ch for c in boc):
        raise ValueError(f"block_out_channels {boc} must all be multiples of the first entry ({ch}) "
                         f"to be written as ch * ch_mult")
    ch_mult = tuple(c // ch for c in boc)
    act = config_value(cfg, "act_fn", "silu")
    if act != "silu":
        raise ValueError(f"act_fn {act!r} is not supported; the CompVis design uses 'silu'")
    for flag in ("use_quant_conv", "use_post_quant_conv"):
        if not config_value(cfg, flag, True):
            raise ValueError(f"{flag}=False is not supported; minildm's AutoencoderKL always has it")
    down_types = tuple(config_value(cfg, "down_block_types", ("DownEncoderBlock2D",)))
    up_types = tuple(config_value(cfg, "up_block_types", ("UpDecoderBlock2D",)))
    if len(down_types) != L or len(up_types) != L:
        raise ValueError(f"expected {L} down and up block types (one per block_out_channels entry), "
                         f"got {len(down_types)} and {len(up_types)}")
    allowed_down = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
    allowed_up = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
    for t in down_types:
        if t not in allowed_down:
            raise ValueError(f"down block type {t!r} is not supported; allowed: {sorted(allowed_down)}")
    for t in up_types:
        if t not in allowed_up:
            raise ValueError(f"up block type {t!r} is not supported; allowed: {sorted(allowed_up)}")
    enc_attn = [allowed_down[t] for t in down_types]
    dec_attn = [allowed_up[up_types[L - 1 - i]] for i in range(L)]
    if enc_attn != dec_attn:
        raise ValueError(f"encoder attention levels {enc_attn} differ from decoder attention levels {dec_attn}; "
                         f"minildm uses the same attn_resolutions for both")
    if resolution is None:
        size = config_value(cfg, "sample_size", 256)
        if isinstance(size, (list, tuple)):
            if len(set(size)) != 1:
                raise ValueError(f"non-square sample_size {tuple(size)}: pass resolution=... explicitly")
            size = size[0]
        resolution = int(size)
    f = 2 ** (L - 1)
    if resolution % f:
        raise ValueError(f"resolution/sample_size {resolution} is not divisible by f = {f}; "
                         f"pass resolution=<a multiple of {f}>")
    attn_resolutions = tuple(resolution // 2**i for i in range(L) if enc_attn[i])
    latent = int(config_value(cfg, "latent_channels", 4))
    return AutoencoderConfig(
        resolution=resolution,
        in_channels=int(config_value(cfg, "in_channels", 3)),
        out_ch=int(config_value(cfg, "out_channels", 3)),
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=int(config_value(cfg, "layers_per_block", 1)),
        attn_resolutions=attn_resolutions,
        z_channels=latent,
        embed_dim=latent,
        mid_attn=bool(config_value(cfg, "mid_block_add_attention", True)),
        norm_num_groups=int(config_value(cfg, "norm_num_groups", 32)),
    )


def diffusers_config_from_config(config: AutoencoderConfig) -> dict[str, Any]:
    """Keyword arguments for ``diffusers.AutoencoderKL`` equal to ``config``.

    Raises:
        ValueError: if diffusers cannot express the config: embed_dim != z_channels, no
            resampling convolutions, or GroupNorm group counts that differ between levels
            (diffusers uses one ``norm_num_groups`` for every channel count; e.g. ch 16 with
            ch_mult (1, 2) gives 16 and 32 groups in minildm).
    """
    if config.embed_dim != config.z_channels:
        raise ValueError(f"diffusers' AutoencoderKL needs embed_dim == z_channels, got {config.embed_dim} "
                         f"and {config.z_channels}")
    if not config.resamp_with_conv:
        raise ValueError("diffusers' AutoencoderKL always resamples with convolutions (resamp_with_conv=True)")
    if config.double_z is False:
        raise ValueError("diffusers' AutoencoderKL needs double_z=True")
    channels = sorted({config.ch * m for m in config.ch_mult} | {config.ch})
    groups = {c: group_count(c, config.norm_num_groups) for c in channels}
    if len(set(groups.values())) != 1:
        raise ValueError(f"GroupNorm groups differ between channel counts {groups}; diffusers uses one "
                         f"norm_num_groups for all. Choose ch and norm_num_groups so that norm_num_groups "
                         f"divides every ch * ch_mult[i]")
    levels = config.level_resolutions
    L = config.num_resolutions
    attn = [levels[i] in config.attn_resolutions for i in range(L)]
    return dict(
        in_channels=config.in_channels,
        out_channels=config.out_ch,
        down_block_types=tuple("AttnDownEncoderBlock2D" if attn[i] else "DownEncoderBlock2D" for i in range(L)),
        up_block_types=tuple("AttnUpDecoderBlock2D" if attn[L - 1 - k] else "UpDecoderBlock2D" for k in range(L)),
        block_out_channels=tuple(config.ch * m for m in config.ch_mult),
        layers_per_block=config.num_res_blocks,
        act_fn="silu",
        latent_channels=config.z_channels,
        norm_num_groups=next(iter(groups.values())),
        sample_size=config.resolution,
        mid_block_add_attention=config.mid_attn,
    )


def autoencoder_from_diffusers(vae: "diffusers.AutoencoderKL", resolution: int | None = None) -> AutoencoderKL:
    """minildm :class:`AutoencoderKL` with the weights of a diffusers ``AutoencoderKL``.

    The result has the same outputs (encode mean / log-variance, decode) up to float
    rounding, lives on the same device and dtype as ``vae`` and has its train/eval mode.
    Note diffusers' ``vae.config.scaling_factor`` (0.18215 for SD 1.x) belongs to the
    latent diffusion model, not to the autoencoder.
    """
    diffusers = import_diffusers()
    if not isinstance(vae, diffusers.AutoencoderKL):
        raise TypeError(f"expected a diffusers.AutoencoderKL, got {type(vae).__name__}")
    config = config_from_diffusers(vae.config, resolution=resolution)
    model = AutoencoderKL(config)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in vae.state_dict().items()}
    load_state_dict_exact(model, convert_vae_state_dict_from_diffusers(sd, num_levels=config.num_resolutions))
    p = next(vae.parameters())
    return model.to(device=p.device, dtype=p.dtype).train(vae.training)


def autoencoder_to_diffusers(ae: AutoencoderKL) -> "diffusers.AutoencoderKL":
    """diffusers ``AutoencoderKL`` with the weights of a minildm :class:`AutoencoderKL`.

    Same device, dtype and train/eval mode as ``ae``. Raises ValueError for configs
    diffusers cannot express (see :func:`diffusers_config_from_config`).
    """
    diffusers = import_diffusers()
    if not isinstance(ae, AutoencoderKL):
        raise TypeError(f"expected a minildm AutoencoderKL, got {type(ae).__name__}")
    vae = diffusers.AutoencoderKL(**diffusers_config_from_config(ae.config))
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in ae.state_dict().items()}
    load_state_dict_exact(vae, convert_vae_state_dict_to_diffusers(sd, num_levels=ae.config.num_resolutions))
    p = next(ae.parameters())
    vae = vae.to(device=p.device)
    if p.dtype != torch.float32:
        vae = vae.to(dtype=p.dtype)
    return vae.train(ae.training)
