"""Artifact ``checker``: the content checker of notebook 04 (:mod:`minildm.eval.checker`) trained on
shapes images to read each object's shape, colour, box and count.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_number
from ..eval.checker import (
    CheckerConfig,
    ContentChecker,
    checker_targets,
    evaluate_checker,
)
from .registry import register
from .supervised import SupervisedArtifact

__all__ = ["CheckerSpec", "CheckerTask"]


class CheckerTask:
    """Train :class:`ContentChecker`: the sum of the cross-entropies of all five heads (dense heads
    averaged over cells); AdamW. Logs ``train/loss`` and the global heads' accuracies."""

    optimizer_names = ("net",)
    progress_keys = ("train/loss",)

    def __init__(self, net: ContentChecker, lr: float, weight_decay: float = 1e-4) -> None:
        check_number("lr", lr, minimum=0, strict=True)
        self.net, self.lr, self.weight_decay = net, float(lr), float(weight_decay)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)}

    def training_step(self, batch: Any, step: int, name: str) -> tuple[Tensor, dict[str, Any]]:
        x = batch["image"]
        targets = checker_targets(batch["objects"], x.shape[-1], device=x.device)
        logits = self.net(x)
        loss = sum(F.cross_entropy(logits[k], targets[k]) for k in targets)
        logs: dict[str, Any] = {"train/loss": loss.detach()}
        for k in ("shape", "colour", "count"):
            logs[f"train/acc_{k}"] = (logits[k].argmax(1) == targets[k]).float().mean().detach()
        return loss, logs


@register("checker")
class CheckerSpec(SupervisedArtifact):
    """Artifact ``checker``: :class:`ContentChecker` trained on shapes (artifact-spec interface of
    :mod:`minildm.recipes.store`); its metrics are :func:`evaluate_checker` on the validation split."""

    name = "checker"
    description = "content checker: shape / colour / count classifier and colour-region locator"

    def identity(self, preset: Any, steps: int | None = None) -> dict[str, Any]:
        cp = preset.checker
        recipe = {"kind": "checker", "lr": cp.lr, "weight_decay": 1e-4, "batch_size": cp.batch_size,
                  "steps": steps if steps is not None else cp.steps, "seed": preset.seed,
                  "data": {"name": "shapes", "split": "train", "image_size": cp.image_size,
                           "length": cp.n_train, "seed": preset.seed}}
        return {"model_class": "ContentChecker", "model": CheckerConfig(cp.width).to_dict(), "recipe": recipe,
                "preset": preset.name}

    def command(self, preset: Any, steps: int | None = None) -> str:
        return (f"python -m minildm train-checker --preset {preset.name}"
                + (f" --steps {steps}" if steps is not None else ""))

    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        return ContentChecker(CheckerConfig.from_dict(identity["model"]))

    def task(self, net: nn.Module, recipe: Mapping[str, Any]) -> Any:
        return CheckerTask(net, recipe["lr"], recipe["weight_decay"])

    def evaluate(self, model: nn.Module, preset: Any, device: torch.device) -> dict[str, Any]:
        from ..data import load_dataset

        cp = preset.checker
        val = load_dataset("shapes", "val", cp.image_size, length=cp.n_eval, seed=preset.seed)
        return evaluate_checker(model.to(device), val, cp.n_eval, cp.batch_size)
