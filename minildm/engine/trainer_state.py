"""The checkpoint half of :class:`~minildm.engine.trainer.Trainer`: its state, atomic saving and exact resume.

A checkpoint holds everything that influences the next step: module and optimizer states, the GradScaler,
the step, the log, the torch (CPU + CUDA/MPS), NumPy and Python RNG states, and callback states (EMA); it is
a safetensors file written atomically by rank 0 (:func:`~minildm.engine.checkpoint.save_checkpoint`). A
resumed run equals an uninterrupted one bit for bit on CPU.

Taught in notebook 01 (and used by every notebook's training).
"""
from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import check_finite_weights, load_checkpoint, load_module_state, minildm_version, save_checkpoint
from .distributed import barrier

__all__ = ["TrainerState"]


class TrainerState:
    """State, :meth:`save` and :meth:`resume` of a Trainer (a mixin: the Trainer owns ``modules``,
    ``optimizers``, ``scaler``, ``callbacks``, ``step``, ``log``, ``config``, ``device`` and ``dist``)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: modules, optimizers, scaler, step, log, RNGs."""
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if self.device.type == "mps":
            rng["mps"] = torch.mps.get_rng_state()
        callbacks = {str(i): cb.state_dict() for i, cb in enumerate(self.callbacks)
                     if hasattr(cb, "state_dict")}
        return {
            "step": self.step,
            "seed": self.seed,
            "elapsed_s": self.training_time_s(),
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "log": self.log,
            "rng": rng,
            "callbacks": callbacks,
        }

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write a checkpoint atomically (default ``out_dir/checkpoint.safetensors``); return its path."""
        path = Path(path) if path is not None else self.default_checkpoint_path()
        for name, module in self.modules.items():
            where = (f"the last checkpoint {str(self.last_checkpoint)!r} was left untouched"
                     if self.last_checkpoint else "no checkpoint was written")
            try:
                check_finite_weights(module, f"after step {self.step}, {name!r}")
            except FloatingPointError as err:
                raise FloatingPointError(f"{err}; {where}. Try a lower learning rate or grad_clip=1.0.") from None
        metadata = {"config": self.config, "minildm_version": minildm_version(),
                    "task": type(self.task).__name__, "step": self.step, "max_steps": self.max_steps}
        if self.dist.rank == 0:  # the ranks hold identical states; one writes, the others wait
            save_checkpoint(path, self.state_dict(), metadata)
        barrier()
        self.last_checkpoint = path
        return path

    def load_state_dict(self, state: Mapping[str, Any], source: str | None = None) -> None:
        """Restore a :meth:`state_dict`; ValueError when it belongs to a different task/model."""
        where = f" in {source!r}" if source else ""
        try:
            modules, optimizers = state["modules"], state["optimizers"]
            if set(modules) != set(self.modules):
                raise ValueError(f"mismatched checkpoint{where}: it has modules {sorted(modules)}, "
                                 f"the task has {sorted(self.modules)}")
            if set(optimizers) != set(self.optimizers):
                raise ValueError(f"mismatched checkpoint{where}: it has optimizers {sorted(optimizers)}, "
                                 f"the task has {sorted(self.optimizers)}")
            for name, module in self.modules.items():
                load_module_state(module, modules[name], source=source)
            for name, optimizer in self.optimizers.items():
                try:
                    optimizer.load_state_dict(optimizers[name])
                except (ValueError, KeyError, RuntimeError) as err:
                    raise ValueError(f"mismatched checkpoint{where}: optimizer {name!r} state does not fit "
                                     f"({err})") from err
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            self.step = int(state["step"])
            self.elapsed_s = float(state.get("elapsed_s", 0.0))
            self.log = [dict(r) for r in state["log"]]
            rng = state["rng"]
        except KeyError as err:
            raise ValueError(f"checkpoint{where} is not a Trainer checkpoint (no {err})") from err
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(_as_python_rng_state(rng["python"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])
        if "mps" in rng and self.device.type == "mps":
            torch.mps.set_rng_state(rng["mps"].cpu())
        for i, cb in enumerate(self.callbacks):
            if hasattr(cb, "load_state_dict") and str(i) in state.get("callbacks", {}):
                cb.load_state_dict(state["callbacks"][str(i)])

    def resume(self, path: str | os.PathLike | None = None) -> "Trainer":
        """Continue from a checkpoint (default ``out_dir/checkpoint.safetensors``); returns self.

        ValueError if the file is unreadable, belongs to another task/model, or was written with
        a different ``config``.
        """
        path = Path(path) if path is not None else self.default_checkpoint_path()
        state, metadata = load_checkpoint(path)
        saved = metadata.get("config", {})
        if self.config and saved != self.config:
            diff = sorted(k for k in set(saved) | set(self.config) if saved.get(k) != self.config.get(k))
            raise ValueError(f"checkpoint {str(path)!r} was written with a different config "
                             f"(differs in: {', '.join(diff)}); resume with the same settings or "
                             "start a fresh run")
        if not self.config:
            self.config = dict(saved)
        self.load_state_dict(state, source=str(path))
        if self.max_steps_from_checkpoint:
            saved_max = metadata.get("max_steps", self.step)
            self.max_steps = None if saved_max is None else int(saved_max)
        if self.max_steps is not None:
            self.max_steps = max(self.max_steps, self.step)
        self.last_checkpoint = path
        return self

    def resume_if_present(self, resume: bool = True) -> bool:
        """With ``resume``, continue from ``out_dir``'s checkpoint if there is one (see :meth:`resume`),
        keeping this Trainer's ``max_steps`` (a run may be continued with more steps); return
        whether it resumed."""
        if not resume or self.out_dir is None or not self.default_checkpoint_path().is_file():
            return False
        max_steps = self.max_steps
        self.resume()
        self.max_steps = None if max_steps is None else max(max_steps, self.step)
        return True

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, task: Any, data: Any, **kwargs: Any) -> "Trainer":
        """Build a Trainer for ``task``/``data`` (same kwargs as ``__init__``) and resume from ``path``.

        Without ``max_steps`` the run's target is the one stored in the checkpoint.
        """
        trainer = cls(task, data, **{"max_steps": 0, **kwargs})
        trainer.max_steps_from_checkpoint = "max_steps" not in kwargs
        return trainer.resume(path)


def _as_python_rng_state(state: Any) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
