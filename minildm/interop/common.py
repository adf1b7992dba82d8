"""Helpers shared by the VAE and UNet converters (:mod:`minildm.interop.vae`, :mod:`minildm.interop.unet`):
reading a diffusers config, importing diffusers lazily, loading a state dict with a full report."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["config_value", "import_diffusers", "load_state_dict_exact"]


def config_value(cfg: Any, name: str, default: Any) -> Any:
    """``cfg[name]`` for a mapping (a ``config.json`` read as a dict), ``cfg.name`` otherwise
    (a diffusers ``FrozenDict`` / config object); ``default`` when it is absent."""
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def import_diffusers() -> Any:
    """The ``diffusers`` module, or ImportError saying how to install it (a development extra)."""
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("diffusers is needed for this conversion: pip install diffusers "
                          "(or install minildm with the [dev] extra)") from err
    return diffusers


def load_state_dict_exact(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``module.load_state_dict(state_dict)`` that raises ValueError listing missing keys,
    unexpected keys and shape mismatches (all of them, not just the first)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(f"{k}: expected {tuple(own[k].shape)}, got {tuple(state_dict[k].shape)}"
                        for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", mismatched)):
            if items:
                parts.append(f"{what} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise ValueError(f"state dict does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(dict(state_dict), strict=True)
