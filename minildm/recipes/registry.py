"""The artifact registry: every trained model minildm can build, by name.

A recipe module defines a spec class (the :class:`ArtifactSpec` interface) and registers one
instance per artifact with the :func:`register` decorator::

    @register("ldm-class", kind="class")
    @register("ldm-layout", kind="layout")
    class CondLDMSpec(LatentDiffusionRecipe): ...

``register(name, **kwargs)`` builds ``cls(**kwargs)`` and files it under ``name``. Importing
:mod:`minildm.recipes` imports every recipe module, so the registry is complete whenever the store
(:mod:`minildm.recipes.store`) is importable; this module imports no recipe.

Every notebook loads its models through it (``load_or_train``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

__all__ = ["ARTIFACTS", "INIT_WARMUP_STEPS", "ArtifactSpec", "TrainResult", "get_spec", "list_artifacts", "register",
           "warm_start"]

#: learning-rate warm-up of a run continued from trained weights (``--init-from``): its optimizer is fresh
INIT_WARMUP_STEPS = 100


@dataclass
class TrainResult:
    """What one training run returns: the trained ``model`` (eval mode), its ``log`` (one dict per logged
    step), the training wall time ``elapsed_s`` and ``facts`` of the run that the artifact's metrics keep
    (e.g. FLOPs per step, precision, world size). Nothing about a run is kept on the spec itself."""

    model: nn.Module
    log: list[dict[str, Any]]
    elapsed_s: float
    facts: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ArtifactSpec(Protocol):
    """What the store needs of a named artifact (a first stage, a helper network, an LDM)."""

    name: str
    description: str

    def identity(self, preset: Any, steps: int | None = None) -> dict[str, Any]:
        """The artifact's config.json under ``preset`` (and a step count or budget): model, recipe, preset."""

    def command(self, preset: Any, steps: int | None = None) -> str:
        """The CLI command that rebuilds it."""

    def build_model(self, identity: dict[str, Any]) -> nn.Module:
        """An untrained model of that identity (weights are loaded into it)."""

    def train(self, preset: Any, *, steps: int | None, device: torch.device, out_dir: Path | None, resume: bool,
              progress: bool, init_state: Mapping[str, torch.Tensor] | None = None) -> TrainResult:
        """Train it; periodic checkpoints in ``out_dir``; continue from there with ``resume``. ``init_state``:
        weights to start from instead of a fresh init (``--init-from``; see :func:`warm_start`)."""

    def evaluate(self, model: nn.Module, preset: Any, device: torch.device) -> dict[str, Any]:
        """Its metrics (measured on the validation split)."""


#: artifact name -> spec
ARTIFACTS: dict[str, ArtifactSpec] = {}

S = TypeVar("S")


def register(name: str, /, **kwargs: Any) -> Callable[[type[S]], type[S]]:
    """Class decorator: file ``cls(**kwargs)`` under ``name`` (its ``name`` attribute must agree)."""
    def decorate(cls: type[S]) -> type[S]:
        spec = cls(**kwargs)
        if getattr(spec, "name", None) != name:
            raise ValueError(f"{cls.__name__}({kwargs}) is named {getattr(spec, 'name', None)!r}, registered as {name!r}")
        if name in ARTIFACTS:
            raise ValueError(f"artifact {name!r} is registered twice")
        ARTIFACTS[name] = spec  # type: ignore[assignment]
        return cls
    return decorate


def warm_start(model: nn.Module, init_state: Mapping[str, torch.Tensor] | None) -> int:
    """Load ``init_state`` (weights of the same model, ``--init-from``) into ``model`` if given; return the
    learning-rate warm-up steps the run then needs (:data:`INIT_WARMUP_STEPS`, else 0)."""
    if init_state is None:
        return 0
    from ..engine.checkpoint import load_module_state

    load_module_state(model, init_state, source="--init-from")
    return INIT_WARMUP_STEPS


def list_artifacts() -> list[str]:
    """Names that :func:`~minildm.recipes.store.load_or_train` knows."""
    return sorted(ARTIFACTS)


def get_spec(name: str) -> ArtifactSpec:
    """The spec registered as ``name``; ValueError listing the known names."""
    if name not in ARTIFACTS:
        raise ValueError(f"unknown artifact {name!r}: known names are {', '.join(list_artifacts())}")
    return ARTIFACTS[name]
