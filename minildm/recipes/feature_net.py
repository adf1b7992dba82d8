"""Artifact ``feature-net``: the network behind the FID-style score (:mod:`minildm.eval.fid`),
trained on shapes images to predict their attributes; its penultimate features are what the
Fréchet distance compares. Taught in notebooks 02 and 03.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..checks import check_number
from ..eval.fid import HEADS, FeatureNet, FeatureNetConfig, shapes_targets
from .registry import register
from .supervised import SupervisedArtifact

__all__ = ["FeatureNetSpec", "FeatureNetTask"]


class FeatureNetTask:
    """Train :class:`minildm.eval.fid.FeatureNet` on the shapes data's ground truth.

    Loss: the sum over heads (shape, colour, count) of the cross-entropy of the logits against
    :func:`minildm.eval.fid.shapes_targets` of ``batch["objects"]``; AdamW with weight decay 1e-4.
    Logs ``train/loss`` and ``train/acc_<head>``.
    """

    optimizer_names = ("net",)
    progress_keys = ("train/loss",)

    def __init__(self, net: nn.Module, lr: float, weight_decay: float = 1e-4) -> None:
        check_number("lr", lr, minimum=0, strict=True)
        self.net = net
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)}

    def training_step(self, batch: Any, step: int, name: str) -> tuple[torch.Tensor, dict[str, Any]]:
        import torch.nn.functional as F

        from ..eval.fid import shapes_targets

        x = batch["image"]
        targets = shapes_targets(batch["objects"], device=x.device)
        logits = self.net(x)
        loss = sum(F.cross_entropy(logits[k], targets[k]) for k in targets)
        logs: dict[str, Any] = {"train/loss": loss.detach()}
        for k in targets:
            logs[f"train/acc_{k}"] = (logits[k].argmax(1) == targets[k]).float().mean().detach()
        return loss, logs


@register("feature-net")
class FeatureNetSpec(SupervisedArtifact):
    """Artifact ``feature-net``: :class:`FeatureNet` trained on shapes (artifact-spec interface of
    :mod:`minildm.recipes.store`); its metrics are the heads' accuracies on the validation split."""

    name = "feature-net"
    description = "feature network of the FID-style score (shape / colour / count classifier)"

    def _recipe(self, preset: Any, steps: int | None) -> dict[str, Any]:
        fp = preset.features
        return {"kind": "feature-net", "lr": fp.lr, "weight_decay": 1e-4, "batch_size": fp.batch_size,
                "steps": steps if steps is not None else fp.steps, "seed": preset.seed,
                "data": {"name": "shapes", "split": "train", "image_size": fp.image_size,
                         "length": fp.n_train, "seed": preset.seed}}

    def identity(self, preset: Any, steps: int | None = None) -> dict[str, Any]:
        fp = preset.features
        return {"model_class": "FeatureNet", "model": FeatureNetConfig(3, fp.width, fp.feature_dim).to_dict(),
                "recipe": self._recipe(preset, steps), "preset": preset.name}

    def command(self, preset: Any, steps: int | None = None) -> str:
        return (f"python -m minildm train-features --preset {preset.name}"
                + (f" --steps {steps}" if steps is not None else ""))

    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        return FeatureNet(FeatureNetConfig.from_dict(identity["model"]))

    def task(self, net: nn.Module, recipe: Mapping[str, Any]) -> Any:
        from .feature_net import FeatureNetTask

        return FeatureNetTask(net, recipe["lr"], recipe["weight_decay"])

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
