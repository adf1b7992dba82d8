"""Exponential moving average of model weights (CompVis ``LitEma``), as a Trainer callback.

After every optimisation step n (counted from 0),

    θ_ema ← θ_ema − (1 − d_n) (θ_ema − θ),   d_n = min(decay, (1 + n) / (10 + n))

The warm-up term (1 + n)/(10 + n) lets the average follow the fast early changes of θ and
approaches ``decay`` (e.g. 0.9999) later. Sampling from θ_ema gives visibly cleaner samples than
from the last θ; the EMA state is part of every checkpoint, so resuming is exact.

Taught in notebook 05 (and used by the LDMs of notebooks 03–04).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA of ``model``'s floating-point parameters (buffers are copied as they are).

    Args:
        model: the model being trained.
        decay: the asymptotic decay d (0 <= d < 1).
        use_warmup: use d_n = min(decay, (1 + n)/(10 + n)) (CompVis); else d_n = decay.

    Use as a :class:`~minildm.engine.trainer.Trainer` callback (``after_step``), then
    ``ema.copy_to(model)`` or ``with ema.average_parameters(model): ...``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_warmup: bool = True) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.model = model
        self.decay = float(decay)
        self.use_warmup = bool(use_warmup)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {k: p.detach().clone() for k, p in model.named_parameters()
                                                if p.dtype.is_floating_point}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.use_warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """One EMA step towards the current weights of ``model`` (default: the tracked model)."""
        d = self.current_decay()
        shadows, params = [], []
        for k, p in (model or self.model).named_parameters():
            if k in self.shadow:
                s = self.shadow[k]
                if s.device != p.device:  # follow the model to its device (the Trainer moves it)
                    s = self.shadow[k] = s.to(p.device)
                shadows.append(s)
                params.append(p.detach().to(s.dtype))
        if shadows:  # s <- s - (1 - d)(s - p), one fused kernel per device and dtype
            torch._foreach_lerp_(shadows, params, 1.0 - d)
        self.num_updates += 1

    def after_step(self, trainer: Any, record: dict[str, Any]) -> None:
        self.update()
        record["ema_decay"] = self.current_decay()

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Write the averaged weights into ``model`` (default: the tracked model)."""
        for k, p in (model or self.model).named_parameters():
            if k in self.shadow:
                p.copy_(self.shadow[k])

    @contextlib.contextmanager
    def average_parameters(self, model: nn.Module | None = None) -> Iterator[nn.Module]:
        """Context in which ``model`` holds the EMA weights; the trained weights come back after."""
        model = model or self.model
        backup = {k: p.detach().clone() for k, p in model.named_parameters() if k in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, p in model.named_parameters():
                    if k in backup:
                        p.copy_(backup[k])

    def to(self, device: torch.device | str) -> "EMA":
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": torch.tensor(self.num_updates), "decay": torch.tensor(self.decay, dtype=torch.float64),
                **{f"shadow.{k}": v for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        keys = {k[len("shadow."):] for k in state if k.startswith("shadow.")}
        if keys != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - keys), sorted(keys - set(self.shadow))
            raise ValueError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        for k in self.shadow:
            v = state[f"shadow.{k}"]
            if v.shape != self.shadow[k].shape:
                raise ValueError(f"EMA state for {k}: shape {tuple(v.shape)} vs model {tuple(self.shadow[k].shape)}")
            self.shadow[k] = v.detach().clone().to(self.shadow[k].device, self.shadow[k].dtype)
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
