"""Stable Diffusion's text encoder in an original single-file checkpoint <-> transformers' ``CLIPTextModel``
(taught in notebook 05, Stable Diffusion section).

An original (CompVis / Stability AI) checkpoint keeps the frozen text encoder τ under ``cond_stage_model.``,
SD 1.x as CompVis ``FrozenCLIPEmbedder`` (OpenAI CLIP ViT-L/14, itself a transformers ``CLIPTextModel``) and
SD 2.x as ``FrozenOpenCLIPEmbedder`` (OpenCLIP ViT-H/14); a diffusers folder keeps it in ``text_encoder/``
as a ``CLIPTextModel``. With L = ``encoder.layers.{i}.`` and R = ``transformer.resblocks.{i}.``:

=================================  ===============================================  =========================================  =================
``CLIPTextModel`` (transformers)   SD 1.x: ``cond_stage_model.transformer.`` +      SD 2.x: ``cond_stage_model.model.`` +      shape
=================================  ===============================================  =========================================  =================
embeddings.token_embedding.weight  text_model.embeddings.token_embedding.weight     token_embedding.weight                     (V, d)
embeddings.position_embedding.*    text_model.embeddings.position_embedding.weight  positional_embedding                       (77, d)
L.layer_norm1.{weight,bias}        text_model.L.layer_norm1.{weight,bias}           R.ln_1.{weight,bias}                       (d,)
L.self_attn.{q,k,v}_proj.weight    text_model.L.self_attn.{q,k,v}_proj.weight       R.attn.in_proj_weight (q; k; v stacked)    3 × (d, d); (3d, d)
L.self_attn.{q,k,v}_proj.bias      text_model.L.self_attn.{q,k,v}_proj.bias         R.attn.in_proj_bias (q; k; v stacked)      3 × (d,); (3d,)
L.self_attn.out_proj.*             text_model.L.self_attn.out_proj.*                R.attn.out_proj.*                          (d, d), (d,)
L.layer_norm2.*                    text_model.L.layer_norm2.*                       R.ln_2.*                                   (d,)
L.mlp.fc1.*                        text_model.L.mlp.fc1.*                           R.mlp.c_fc.*                               (4d, d), (4d,)
L.mlp.fc2.*                        text_model.L.mlp.fc2.*                           R.mlp.c_proj.*                             (d, 4d), (d,)
final_layer_norm.*                 text_model.final_layer_norm.*                    ln_final.*                                 (d,)
(a buffer, not saved)              text_model.embeddings.position_ids (dropped)     —                                          (1, 77)
—                                  —                                                text_projection (dropped: pooled output)   (d, p)
—                                  —                                                logit_scale (dropped: CLIP's temperature)  ()
=================================  ===============================================  =========================================  =================

V = 49408 tokens; SD 1.x: d = 768, 12 layers, 12 heads, ``quick_gelu``; SD 2.x: d = 1024, 24 layers, 16 heads,
``gelu``, p = 1024. Keys follow the installed transformers: version 5 keeps the layers at the top of
``CLIPTextModel`` (as above), 4.x under ``text_model.`` (the layout of the files ``save_pretrained`` writes,
in both). SD 2 conditions on the *penultimate* layer (through ``ln_final``); like diffusers' single-file
loader, the conversion drops the last resblock (23 of 24 layers), so that the converted model's
``last_hidden_state`` is SD 2's context (B, 77, 1024).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from .common import load_state_dict_exact

if TYPE_CHECKING:  # pragma: no cover
    import transformers

__all__ = ["CLIP_PREFIXES", "clip_text_config_from_state_dict", "clip_text_layout", "clip_text_model_from_original",
           "clip_text_state_dict_from_original", "clip_text_state_dict_to_original"]

Variant = Literal["v1", "v2"]
#: where each layout keeps the text encoder in an original checkpoint
CLIP_PREFIXES: dict[str, str] = {"v1": "cond_stage_model.transformer.", "v2": "cond_stage_model.model."}

#: OpenCLIP names outside the resblocks -> CLIPTextModel names
_OPENCLIP_TOP = {"token_embedding.weight": "embeddings.token_embedding.weight",
                 "positional_embedding": "embeddings.position_embedding.weight",
                 "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
#: OpenCLIP resblock module names -> CLIPTextModel encoder-layer module names (``attn.in_proj`` is split apart)
_OPENCLIP_BLOCK = {"ln_1": "layer_norm1", "attn.out_proj": "self_attn.out_proj", "ln_2": "layer_norm2",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
#: OpenCLIP tensors SD's context does not use: the pooled-output projection and CLIP's temperature
_OPENCLIP_UNUSED = ("text_projection", "logit_scale")
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_TOP_LEVEL = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
              "final_layer_norm.weight", "final_layer_norm.bias")


@functools.lru_cache(maxsize=None)
def _installed_prefix() -> str:
    """The prefix of the installed transformers' ``CLIPTextModel`` keys: "" (transformers 5) or "text_model."
    (4.x; also what is used without transformers, the layout of saved files)."""
    try:
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError:  # pragma: no cover - depends on the environment
        return "text_model."
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                             num_attention_heads=1))
    return "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""


def clip_text_layout(state_dict: Mapping[str, Tensor]) -> Variant:
    """``"v1"`` (keys ``cond_stage_model.transformer.*``: CLIP) or ``"v2"`` (``cond_stage_model.model.*``:
    OpenCLIP) for the state dict of an original checkpoint; one-line ValueError for anything else."""
    for variant, prefix in CLIP_PREFIXES.items():
        if any(k.startswith(prefix) for k in state_dict):
            return variant  # type: ignore[return-value]
    some = ", ".join(sorted(state_dict)[:3]) or "none"
    raise ValueError("not a Stable Diffusion text encoder state dict: expected keys cond_stage_model.transformer.* "
                     f"(SD 1.x, CLIP) or cond_stage_model.model.* (SD 2.x, OpenCLIP); its keys: {some}")


def _unknown(keys: list[str], what: str) -> None:
    if keys:
        raise ValueError(f"{len(keys)} unexpected keys in the {what}: {', '.join(sorted(keys)[:6])}"
                         + (" ..." if len(keys) > 6 else ""))


def _check_transformers_keys(state_dict: Mapping[str, Tensor], what: str) -> None:
    _unknown([k for k in state_dict if k not in _TOP_LEVEL and not _LAYER.fullmatch(k)], what)


def _transformers_layout(state_dict: Mapping[str, Tensor], copy: bool) -> tuple[Variant, dict[str, Tensor]]:
    """The variant and the CLIPTextModel weights (keys without ``text_model.``, all layers, unused tensors
    dropped) of an original checkpoint's text encoder. ``copy``: q, k, v as copies (else views of in_proj)."""
    variant = clip_text_layout(state_dict)
    prefix = CLIP_PREFIXES[variant]
    sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if variant == "v1":
        out = {k.removeprefix("text_model."): v for k, v in sub.items() if not k.endswith("position_ids")}
        _check_transformers_keys(out, "SD 1.x CLIP text encoder")
        return variant, out
    out, unknown = {}, []
    for key, value in sub.items():
        match = _RESBLOCK.fullmatch(key)
        if key in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[key]] = value
        elif match and match[2] in ("attn.in_proj_weight", "attn.in_proj_bias"):
            param = match[2].rsplit("_", 1)[1]
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"encoder.layers.{match[1]}.self_attn.{name}_proj.{param}"] = part.clone() if copy else part
        elif match and match[2].rpartition(".")[0] in _OPENCLIP_BLOCK:
            module, _, param = match[2].rpartition(".")
            out[f"encoder.layers.{match[1]}.{_OPENCLIP_BLOCK[module]}.{param}"] = value
        elif key not in _OPENCLIP_UNUSED:
            unknown.append(prefix + key)
    _unknown(unknown, "SD 2.x OpenCLIP text encoder")
    return variant, out


def _num_layers(weights: Mapping[str, Tensor]) -> int:
    return 1 + max((int(m[1]) for k in weights if (m := _LAYER.fullmatch(k))), default=-1)


def _penultimate(variant: Variant, penultimate: bool | None) -> bool:
    return variant == "v2" if penultimate is None else bool(penultimate)


def clip_text_state_dict_from_original(state_dict: Mapping[str, Tensor], penultimate: bool | None = None,
                                       prefix: str | None = None) -> dict[str, Tensor]:
    """The weights of a transformers ``CLIPTextModel`` from an original SD 1.x / 2.x checkpoint's state dict
    (the whole checkpoint or its ``cond_stage_model.*`` part; other keys are ignored).

    ``penultimate``: drop the last layer, so that ``last_hidden_state`` is the penultimate layer's state
    through ``final_layer_norm`` (default: True for SD 2.x, as SD 2 conditions on it; False for SD 1.x).
    ``prefix``: put before every key (default: the installed transformers' layout, "" in transformers 5;
    "text_model." for the layout of saved files). ``text_projection``, ``logit_scale`` and ``position_ids``
    are dropped. One-line ValueError for a state dict of neither layout or with unexpected keys."""
    variant, weights = _transformers_layout(state_dict, copy=True)
    if _penultimate(variant, penultimate):
        last = f"encoder.layers.{_num_layers(weights) - 1}."
        weights = {k: v for k, v in weights.items() if not k.startswith(last)}
    prefix = _installed_prefix() if prefix is None else prefix
    return {prefix + k: v for k, v in weights.items()}


def clip_text_config_from_state_dict(state_dict: Mapping[str, Tensor], penultimate: bool | None = None,
                                     head_dim: int = 64) -> dict[str, Any]:
    """Keyword arguments of transformers' ``CLIPTextConfig`` for the model
    :func:`clip_text_state_dict_from_original` converts ``state_dict`` to: ``vocab_size``, ``hidden_size`` d,
    ``intermediate_size``, ``num_hidden_layers`` (less one with ``penultimate``), ``num_attention_heads``
    = d / ``head_dim`` (64 in every CLIP text tower SD uses; not stored in the weights),
    ``max_position_embeddings``, ``hidden_act`` ("quick_gelu": OpenAI CLIP, "gelu": OpenCLIP) and
    ``projection_dim`` (OpenCLIP's ``text_projection`` width, else d; the ``CLIPTextModel`` does not use it:
    SD 2's ``text_encoder/config.json`` says 512)."""
    variant, weights = _transformers_layout(state_dict, copy=False)
    missing = [k for k in (_TOP_LEVEL[0], _TOP_LEVEL[1], "encoder.layers.0.mlp.fc1.weight") if k not in weights]
    if missing:
        raise ValueError(f"the {variant} text encoder state dict has no {', '.join(missing)} (in the layout above)")
    vocab_size, hidden = weights["embeddings.token_embedding.weight"].shape
    if head_dim < 1 or hidden % head_dim:
        raise ValueError(f"the hidden size {hidden} is not a multiple of head_dim={head_dim}")
    projection = state_dict.get(CLIP_PREFIXES["v2"] + "text_projection") if variant == "v2" else None
    return {"vocab_size": int(vocab_size), "hidden_size": int(hidden),
            "intermediate_size": int(weights["encoder.layers.0.mlp.fc1.weight"].shape[0]),
            "num_hidden_layers": _num_layers(weights) - int(_penultimate(variant, penultimate)),
            "num_attention_heads": int(hidden) // head_dim,
            "max_position_embeddings": int(weights["embeddings.position_embedding.weight"].shape[0]),
            "hidden_act": "quick_gelu" if variant == "v1" else "gelu",
            "projection_dim": int(hidden if projection is None else projection.shape[1])}


def clip_text_state_dict_to_original(state_dict: Mapping[str, Tensor], variant: Variant) -> dict[str, Tensor]:
    """The original-checkpoint layout (table above) of a ``CLIPTextModel``'s weights (keys with or without
    ``text_model.``; ``position_ids`` dropped): ``variant`` "v1" (``cond_stage_model.transformer.text_model.*``)
    or "v2" (``cond_stage_model.model.*``, q, k, v stacked into ``in_proj``; a ``CLIPTextModelWithProjection``'s
    ``text_projection.weight`` (p, d) is written as ``text_projection`` (d, p)). Every layer is written: a
    model converted with ``penultimate`` has lost its last layer for good."""
    if variant not in CLIP_PREFIXES:
        raise ValueError(f"variant must be 'v1' (CLIP) or 'v2' (OpenCLIP), got {variant!r}")
    weights = {k.removeprefix("text_model."): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    prefix = CLIP_PREFIXES[variant]
    projection = weights.pop("text_projection.weight", None) if variant == "v2" else None
    _check_transformers_keys(weights, "CLIPTextModel state dict")
    if variant == "v1":
        return {f"{prefix}text_model.{k}": v for k, v in weights.items()}
    top = {v: k for k, v in _OPENCLIP_TOP.items()}
    block = {v: k for k, v in _OPENCLIP_BLOCK.items()}
    out: dict[str, Tensor] = {}
    for key, value in weights.items():
        match = _LAYER.fullmatch(key)
        if match is None:
            out[prefix + top[key]] = value
            continue
        i, module, param = match.groups()
        resblock = f"{prefix}transformer.resblocks.{i}."
        if module == "self_attn.q_proj":
            out[f"{resblock}attn.in_proj_{param}"] = torch.cat(
                [weights[f"encoder.layers.{i}.self_attn.{name}_proj.{param}"] for name in "qkv"])
        elif module in block:
            out[f"{resblock}{block[module]}.{param}"] = value
        elif module not in ("self_attn.k_proj", "self_attn.v_proj"):
            _unknown([key], "CLIPTextModel state dict")
    if projection is not None:
        out[prefix + "text_projection"] = projection.T.contiguous()
    return out


def clip_text_model_from_original(state_dict: Mapping[str, Tensor], penultimate: bool | None = None,
                                  head_dim: int = 64) -> "transformers.CLIPTextModel":
    """A transformers ``CLIPTextModel`` (eval mode) with the text encoder of an original SD 1.x / 2.x checkpoint:
    :func:`clip_text_config_from_state_dict` and :func:`clip_text_state_dict_from_original` (arguments as
    there), loaded with every key checked. Its ``last_hidden_state`` (B, 77, d) is SD's context."""
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig(**clip_text_config_from_state_dict(state_dict, penultimate, head_dim)))
    load_state_dict_exact(model, clip_text_state_dict_from_original(state_dict, penultimate))
    return model.eval()
