"""Artifact ``feature-net``: the network behind the FID-style score (:mod:`minildm.eval.fid`), trained on
shapes images to read the main object's shape and colour, the object count and each object's outline;
its pooled global features are what the Fréchet distance compares. It has the content checker's
architecture and training task (:class:`~minildm.recipes.checker.CheckerTask`) with its own sizes
(``preset.features``). Taught in notebooks 02 and 03.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..eval.checker import HEADS, CheckerConfig, shapes_targets
from ..eval.fid import FeatureNet
from .checker import CheckerTask
from .registry import register
from .supervised import SupervisedArtifact

__all__ = ["FeatureNetSpec"]


@register("feature-net")
class FeatureNetSpec(SupervisedArtifact):
    """Artifact ``feature-net``: :class:`FeatureNet` trained on shapes (artifact-spec interface of
    :mod:`minildm.recipes.store`); its metrics are the global heads' accuracies on the validation split."""

    name = "feature-net"
    description = "feature network of the FID-style score (shape / colour / count classifier and outline maps)"

    def _recipe(self, preset: Any, steps: int | None) -> dict[str, Any]:
        fp = preset.features
        return {"kind": "feature-net", "task": "checker", "lr": fp.lr, "weight_decay": 1e-4,
                "batch_size": fp.batch_size, "steps": steps if steps is not None else fp.steps, "seed": preset.seed,
                "data": {"name": "shapes", "split": "train", "image_size": fp.image_size,
                         "length": fp.n_train, "seed": preset.seed}}

    def identity(self, preset: Any, steps: int | None = None) -> dict[str, Any]:
        return {"model_class": "FeatureNet", "model": CheckerConfig(preset.features.width).to_dict(),
                "recipe": self._recipe(preset, steps), "preset": preset.name}

    def command(self, preset: Any, steps: int | None = None) -> str:
        return (f"python -m minildm train-features --preset {preset.name}"
                + (f" --steps {steps}" if steps is not None else ""))

    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        return FeatureNet(CheckerConfig.from_dict(identity["model"]))

    def task(self, net: nn.Module, recipe: Mapping[str, Any]) -> Any:
        return CheckerTask(net, recipe["lr"], recipe["weight_decay"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, preset: Any, device: torch.device) -> dict[str, Any]:
        from ..data import collate, load_dataset

        fp = preset.features
        val = load_dataset("shapes", "val", fp.image_size, length=fp.n_eval, seed=preset.seed)
        model = model.to(device).eval()
        correct = {k: 0 for k in HEADS}
        for start in range(0, len(val), fp.batch_size):
            batch = collate([val[i] for i in range(start, min(start + fp.batch_size, len(val)))])
            logits = model(batch["image"].to(device))
            targets = shapes_targets(batch["objects"], device=device)
            for k in HEADS:
                correct[k] += int((logits[k].argmax(1) == targets[k]).sum())
        return {f"acc_{k}": correct[k] / len(val) for k in HEADS} | {"n": len(val)}
