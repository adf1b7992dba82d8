"""The shared recipe of the supervised helper networks (the feature network, the content checker):
train a classifier on shapes images with the Trainer, evaluate it on the validation split.

Their artifacts are used from notebook 02 on.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..engine.batches import DatasetBatches
from ..engine.device import seed_everything
from ..engine.trainer import Trainer
from .registry import TrainResult, warm_start

__all__ = ["SupervisedArtifact", "fit_on_dataset"]


def fit_on_dataset(task: Any, identity: Mapping[str, Any], *, device: Any, out_dir: str | os.PathLike | None,
                   resume: bool, progress: bool, desc: str, warmup_steps: int = 0) -> Trainer:
    """Train ``task`` on the dataset its artifact recipe names, for the recipe's steps.

    ``identity["recipe"]`` gives ``data`` (``name``, ``split``, ``image_size``, ``length``, ``seed``),
    ``batch_size``, ``steps`` and ``seed``. Checkpoints go to ``out_dir`` ten times per run; with
    ``resume`` a checkpoint found there is continued exactly. Returns the finished Trainer.
    """
    from ..data import collate, load_dataset

    recipe = identity["recipe"]
    d = recipe["data"]
    data = DatasetBatches(load_dataset(d["name"], d["split"], d["image_size"], length=d["length"], seed=d["seed"]),
                          recipe["batch_size"], seed=recipe["seed"], collate_fn=collate)
    config = dict(identity)
    config["recipe"] = {k: v for k, v in recipe.items() if k != "steps"}
    trainer = Trainer(task, data, device=device, max_steps=recipe["steps"], seed=recipe["seed"], out_dir=out_dir,
                      checkpoint_every=max(50, recipe["steps"] // 10) if out_dir is not None else None,
                      progress=progress, desc=desc, config=config, warmup_steps=warmup_steps)
    trainer.resume_if_present(resume)
    trainer.fit()
    return trainer


class SupervisedArtifact(ABC):
    """Base of the artifact specs of networks trained with supervision on a dataset (the feature
    network, the content checker): a subclass gives ``name``, ``description``, ``identity``,
    ``command``, ``build_model``, ``evaluate`` and ``task(net, recipe)``; ``train`` follows the recipe."""

    name: str
    description: str

    @abstractmethod
    def identity(self, preset: Any, steps: int | None = None) -> dict[str, Any]:
        """config.json: ``model``, ``recipe`` (``data``, ``batch_size``, ``steps``, ``seed``, ...), ``preset``."""

    @abstractmethod
    def command(self, preset: Any, steps: int | None = None) -> str:
        """The CLI command that rebuilds the artifact."""

    @abstractmethod
    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        """An untrained network of that identity."""

    @abstractmethod
    def evaluate(self, model: nn.Module, preset: Any, device: Any) -> dict[str, Any]:
        """Its metrics on the validation split."""

    @abstractmethod
    def task(self, net: nn.Module, recipe: Mapping[str, Any]) -> Any:
        """The Trainer task that fits ``net`` with the recipe's settings."""

    def train(self, preset: Any, *, steps: int | None, device: Any, out_dir: Any, resume: bool,
              progress: bool, init_state: Mapping[str, Any] | None = None) -> TrainResult:
        identity = self.identity(preset, steps)
        seed_everything(preset.seed)
        net = self.build_model(identity)
        warmup = warm_start(net, init_state)
        trainer = fit_on_dataset(self.task(net, identity["recipe"]), identity, device=device, out_dir=out_dir,
                                 resume=resume, progress=progress, desc=f"{self.name} ({preset.name})",
                                 warmup_steps=warmup)
        return TrainResult(net.eval(), trainer.log, trainer.elapsed_s)
