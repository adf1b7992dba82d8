"""One generic training loop: mixed precision, clipping, progress, atomic checkpoints, exact resume.

The :class:`Trainer` knows nothing about autoencoders or diffusion. It drives a *task*::

    task.modules()               -> dict[str, nn.Module]     everything with state to save
    task.configure_optimizers()  -> dict[str, Optimizer]     e.g. {"ae": ..., "disc": ...}
    task.optimizer_names         -> sequence of those names, in the order they step
    task.training_step(batch, step, optimizer_name) -> (loss: Tensor, logs: dict[str, float|Tensor])
                                                     or None to skip that optimizer at this step

and a *data source* with ``batch(step) -> batch`` that is a pure function of the step (see
:class:`DatasetBatches`). Per step, for each optimizer name in order (as CompVis' two-optimizer
``training_step(batch, batch_idx, optimizer_idx)`` under Lightning)::

    zero_grad -> loss = training_step(...) under autocast -> GradScaler.scale(loss).backward()
              -> (unscale, clip_grad_norm_) -> scaler.step(optimizer)

then ``scaler.update()``, the log record, the ``callbacks`` (``after_step``: EMA, schedules,
custom logging) and, every ``checkpoint_every`` steps, an atomic checkpoint.

Exact resume. A run of N steps equals k steps + checkpoint + resume + N − k steps, bit for bit
(on CPU; on GPU up to nondeterministic kernels), because everything that influences step s is
either a pure function of s (the batch) or saved in the checkpoint: module and optimizer states,
the GradScaler, the step, the log, the torch (CPU + CUDA/MPS), NumPy and Python RNG states (dropout,
posterior sampling), and callback states.

Scale. ``accumulate=A`` splits each step's batch into A micro-batches whose gradients are summed
(losses scaled by 1/A) before one optimizer step. Under ``torchrun`` (a process group of W ranks,
see :mod:`minildm.engine.distributed`) the data source's batch(step) is the **global** batch: rank r
loads only its contiguous slice (``batch(step, part=(lo, hi))`` when the source supports it) and
the task's modules are wrapped in ``DistributedDataParallel``, which averages the gradients over
ranks; micro-batches before the last skip that all-reduce (``no_sync``). Rank 0 alone writes
checkpoints and shows progress. A task with ``per_sample_rng = True`` gets ``batch["rng"]``, a
:class:`BatchRandom` whose draws for sample i of the global batch do not depend on W or A, so a
run on W processes with accumulation A equals a run on one process with the same global batch.

Saving and resuming live in :class:`~minildm.engine.trainer_state.TrainerState`, which the Trainer extends.

Extension points: ``callbacks`` with ``after_step(trainer, record)`` and optional
``state_dict()/load_state_dict()`` (EMA lives there); :meth:`Trainer.optimizer_step` is the single
place where one optimizer takes a step.

Taught in notebook 01 (and used by every notebook's training).
"""
from __future__ import annotations

import inspect
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..checks import check_number
from .batches import BatchRandom, batch_len, move_to_device, slice_batch
from .device import autocast_dtype, get_device
from .distributed import all_reduce_max, all_reduce_mean, dist_info, shard_bounds
from .trainer_state import TrainerState

__all__ = ["Trainer", "Callback", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.safetensors"
#: choices of ``Trainer(precision=...)``
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@runtime_checkable
class Callback(Protocol):
    """Called after every optimisation step; may carry state saved in checkpoints.

    ``after_step(trainer, record)`` sees the finished step (``trainer.step`` already counts it)
    and may add entries to ``record`` (the log row). Optional ``state_dict()`` and
    ``load_state_dict(state)`` make its state part of checkpoints (e.g. EMA weights).
    A plain function ``f(trainer, record)`` works too.
    """

    def after_step(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...


def _accepts_part(data: Any) -> bool:
    try:
        return "part" in inspect.signature(data.batch).parameters
    except (TypeError, ValueError):
        return False


class _TaskStep(nn.Module):
    """The task's training step as a module (what DistributedDataParallel wraps): its children are
    the task's modules (the same objects, so their state_dicts keep their names)."""

    def __init__(self, task: Any, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(dict(modules))
        object.__setattr__(self, "task", task)

    def forward(self, batch: Any, step: int, name: str) -> Any:
        return self.task.training_step(batch, step, name)


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item())
    return float(value)


class Trainer(TrainerState):
    """Train a task on a deterministic data source; checkpoint atomically; resume exactly.

    Args:
        task: see the module docstring.
        data: object with ``batch(step)``.
        device: torch device (default: :func:`minildm.engine.device.get_device`).
        max_steps: total steps of the run (``fit()`` trains up to here); None for a run bounded only
            by time (then every ``fit`` needs ``steps`` or ``time_budget_s``).
        seed: seeds the torch/NumPy/Python RNGs at construction (dropout, posterior sampling).
            The task's modules are built before, so seed before building them too.
        out_dir: directory for ``checkpoint.safetensors`` (periodic + final); None: no automatic saves.
        checkpoint_every: save every this many steps (needs ``out_dir``); None: only at the end of fit.
        grad_clip: max global grad norm per optimizer (``clip_grad_norm_``), None: no clipping.
        amp: use ``torch.autocast`` with :func:`minildm.engine.device.autocast_dtype` (None on CPU/MPS:
            fp32). fp16 gets a ``GradScaler``; bf16 does not need one.
        progress: show a tqdm progress bar (``tqdm.auto``: a widget in notebooks).
        desc: label of the progress bar.
        log_every: append a log row every this many steps (losses are checked every step).
        config: JSON-serialisable description of the run, stored in checkpoints; resuming with
            a different config raises ValueError.
        callbacks: objects with ``after_step(trainer, record)`` or functions ``f(trainer, record)``.
        accumulate: micro-batches per step (gradient accumulation); each rank's slice of the batch
            must split evenly into them.
        precision: autocast dtype when ``amp``: ``"auto"`` (:func:`minildm.engine.device.autocast_dtype`),
            ``"bf16"``, ``"fp16"`` (with a GradScaler on CUDA) or ``"fp32"`` (no autocast).
        warmup_steps: scale every learning rate by min(1, (step+1)/warmup_steps), on top of the task's own
            schedule (a run continued from trained weights with a fresh optimizer); 0: none.

    Under ``torchrun`` (an initialised process group) the Trainer trains data-parallel with
    DistributedDataParallel; see the module docstring. Attributes: ``step`` (steps done), ``log`` (list of dicts with "step" and float losses),
    ``optimizers``, ``scaler``, ``device``, ``dtype``.
    """

    def __init__(self, task: Any, data: Any, *, device: str | torch.device | None = None,
                 max_steps: int | None, seed: int = 0, out_dir: str | os.PathLike | None = None,
                 checkpoint_every: int | None = None, grad_clip: float | None = None,
                 amp: bool = True, progress: bool = True, desc: str | None = None, log_every: int = 1,
                 config: Mapping[str, Any] | None = None,
                 callbacks: Sequence[Callback | Callable[["Trainer", dict[str, Any]], None]] = (),
                 accumulate: int = 1, precision: str = "auto", warmup_steps: int = 0) -> None:
        checks = (("max_steps", max_steps, 0), ("log_every", log_every, 1), ("accumulate", accumulate, 1),
                  ("warmup_steps", warmup_steps, 0))
        for name, value, low in checks:
            if name == "max_steps" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if checkpoint_every is not None:
            if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
                raise ValueError(f"checkpoint_every must be a positive int or None, got {checkpoint_every!r}")
            if out_dir is None:
                raise ValueError("checkpoint_every needs out_dir (where to write the checkpoints)")
        if grad_clip is not None:
            check_number("grad_clip (or None)", grad_clip, minimum=0, strict=True)
        if not callable(getattr(data, "batch", None)):
            raise TypeError(f"data must have a batch(step) method (e.g. DatasetBatches), got {type(data).__name__}")
        for attr in ("modules", "configure_optimizers", "training_step", "optimizer_names"):
            if not hasattr(task, attr):
                raise TypeError(f"task {type(task).__name__} lacks {attr!r}; a task needs modules(), "
                                "configure_optimizers(), optimizer_names and training_step(batch, step, name)")

        self.task = task
        self.data = data
        self.device = get_device(device)
        self.max_steps = max_steps
        self.seed = int(seed)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.progress = progress
        self.desc = desc
        self.log_every = log_every
        self.config: dict[str, Any] = dict(config or {})
        self.callbacks = list(callbacks)
        self.accumulate = accumulate
        self.warmup_steps = warmup_steps
        self.dist = dist_info()
        self.per_sample_rng = bool(getattr(task, "per_sample_rng", False))

        self.modules: dict[str, nn.Module] = dict(task.modules())
        for module in self.modules.values():
            module.to(self.device)
        self._ddp: nn.Module | None = None
        if self.dist.distributed:
            if len(list(task.optimizer_names)) != 1:
                raise ValueError("data-parallel training supports tasks with one optimizer (diffusion models, "
                                 f"classifiers); {type(task).__name__} has {list(task.optimizer_names)}")
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(_TaskStep(task, self.modules), device_ids=ids)
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(task.configure_optimizers())
        self.optimizer_names: list[str] = list(task.optimizer_names)
        if set(self.optimizer_names) != set(self.optimizers):
            raise ValueError(f"task.optimizer_names {self.optimizer_names} do not match "
                             f"configure_optimizers() keys {sorted(self.optimizers)}")

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if not amp or precision == "fp32":
            self.dtype = None
        elif precision == "auto":
            self.dtype = autocast_dtype(self.device)
        else:
            self.dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        use_scaler = self.dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

        self.step = 0
        self.log: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self.elapsed_s = 0.0
        self._fit_start: float | None = None  # perf_counter() at the start of the running fit()
        self.last_step_s = float("nan")
        self.max_steps_from_checkpoint = False  # resume() takes max_steps from the file (from_checkpoint)
        self._seed_rngs(self.seed)

    # ---------------------------------------------------------------- internals
    def _seed_rngs(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)  # also seeds every CUDA/MPS device

    def autocast(self):
        """The autocast context of this run (``nullcontext`` in fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def default_checkpoint_path(self) -> Path:
        if self.out_dir is None:
            raise ValueError("no checkpoint path: pass path=... or build the Trainer with out_dir=...")
        return self.out_dir / CHECKPOINT_NAME

    def _params(self, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    # ---------------------------------------------------------------- one step
    def micro_batches(self, step: int) -> list[Any]:
        """This rank's micro-batches of step ``step`` (one batch without DDP and accumulation)."""
        if not (self.dist.distributed or self.accumulate > 1 or self.per_sample_rng):
            return [self.data.batch(step)]
        by_part = _accepts_part(self.data) and getattr(self.data, "batch_size", None) is not None
        full = None if by_part else self.data.batch(step)
        total = int(self.data.batch_size) if by_part else batch_len(full)
        lo, hi = shard_bounds(total, self.dist.rank, self.dist.world_size)
        if (hi - lo) % self.accumulate:
            raise ValueError(f"{hi - lo} samples per process do not split into accumulate={self.accumulate} "
                             "equal micro-batches: choose a batch size divisible by processes × accumulate")
        m = (hi - lo) // self.accumulate
        out = []
        for k in range(self.accumulate):
            a, b = lo + k * m, lo + (k + 1) * m
            batch = self.data.batch(step, part=(a, b)) if by_part else slice_batch(full, a, b)
            if self.per_sample_rng:
                if not isinstance(batch, dict):
                    raise TypeError("a task with per_sample_rng needs dict batches")
                batch = {**batch, "rng": BatchRandom(self.seed, step, a, b, total, self.device)}
            out.append(batch)
        return out

    def optimizer_step(self, name: str, batches: Any, step: int) -> dict[str, float] | None:
        """One update of optimizer ``name``: zero_grad, then per micro-batch loss and backward
        (gradients summed; DDP all-reduces them after the last), clip, step. Returns its logs.

        ``batches``: a list of micro-batches (or one batch). A task may return None from
        ``training_step`` to skip an optimizer at a step (no backward, no update); then this
        returns None.
        """
        if not isinstance(batches, list):
            batches = [batches]
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        n = len(batches)
        totals: dict[str, float] = {}
        for k, batch in enumerate(batches):
            sync = self._ddp is None or k == n - 1
            with (nullcontext() if sync else self._ddp.no_sync()):
                with self.autocast():
                    if self._ddp is not None:
                        out = self._ddp(batch, step, name)
                    else:
                        out = self.task.training_step(batch, step, name)
                if out is None:  # the task skips this optimizer at this step (e.g. before disc_start)
                    if k:
                        raise RuntimeError(f"training_step skipped optimizer {name!r} on micro-batch {k} only")
                    return None
                loss, logs = out
                value = float(loss.detach().float().item())
                if self.dist.distributed:  # every rank sees a NaN anywhere, so all stop together
                    value = all_reduce_mean(value, self.device)
                logs = {k2: _to_float(v) for k2, v in (logs or {}).items()}
                if not math.isfinite(value):
                    terms = ", ".join(f"{k2}={v:.4g}" for k2, v in logs.items()) or "no terms logged"
                    where = (f"the last checkpoint {str(self.last_checkpoint)!r} was left untouched"
                             if self.last_checkpoint else "no checkpoint was written")
                    raise FloatingPointError(
                        f"non-finite loss {value} at step {step} (optimizer {name!r}; {terms}); {where}. "
                        "Try a lower learning rate, grad_clip=1.0, or amp=False.")
                self.scaler.scale(loss / n if n > 1 else loss).backward()
            logs[f"loss/{name}"] = value
            for k2, v in logs.items():
                totals[k2] = totals.get(k2, 0.0) + v / n
        if self.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self._params(optimizer), self.grad_clip)
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        rates = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:  # warm-up on top of whatever rate the task set
            group["lr"] *= factor
        self.scaler.step(optimizer)
        for group, lr in zip(optimizer.param_groups, rates):
            group["lr"] = lr
        return totals

    def train_step(self) -> dict[str, Any]:
        """Run step ``self.step`` for every optimizer; returns the log record of the step."""
        step = self.step
        started = time.perf_counter()
        for module in self.modules.values():
            module.train()
        batches = [move_to_device(b, self.device) for b in self.micro_batches(step)]
        record: dict[str, Any] = {"step": step}
        stepped = False
        for name in self.optimizer_names:
            logs = self.optimizer_step(name, batches, step)
            if logs is not None:
                record.update(logs)
                stepped = True
        if stepped:
            self.scaler.update()
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_step_s = time.perf_counter() - started  # wall time of this step (throughput)
        for cb in self.callbacks:
            (cb.after_step if hasattr(cb, "after_step") else cb)(self, record)
        return record

    # ---------------------------------------------------------------- the loop
    def fit(self, steps: int | None = None, time_budget_s: float | None = None) -> list[dict[str, Any]]:
        """Train ``steps`` more steps (default: up to ``max_steps``); return the full log.

        With ``time_budget_s`` training also stops once this call has trained for that many seconds
        (wall clock; equal-compute comparisons). Every log row carries ``time_s``, the training time
        so far. Saves a checkpoint every ``checkpoint_every`` steps and at the end (when ``out_dir``
        is set). A non-finite loss raises FloatingPointError before anything is written.
        """
        if time_budget_s is not None:
            time_budget_s = check_number("time_budget_s (or None)", time_budget_s, minimum=0)
        if steps is not None:
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
                raise ValueError(f"steps must be an int >= 0, got {steps!r}")
            end: float = self.step + steps
            if self.max_steps is not None:
                self.max_steps = max(self.max_steps, int(end))
        elif self.max_steps is not None:
            end = self.max_steps
        elif time_budget_s is not None:
            end = math.inf  # a run bounded by time alone
        else:
            raise ValueError("this Trainer has max_steps=None (a run bounded by time): give fit() steps or "
                             "time_budget_s")
        enabled = self.progress and self.dist.rank == 0
        timed = time_budget_s is not None  # the bar counts training seconds, not a step count it cannot know
        t0 = self.training_time_s()
        bar = (_progress_bar(total=t0 + float(time_budget_s), initial=t0, enabled=enabled, desc=self.desc, unit="s")
               if timed else _progress_bar(total=end, initial=self.step, enabled=enabled, desc=self.desc))
        shown = 0.0
        record: dict[str, Any] = {}
        start = self._fit_start = time.perf_counter()
        try:
            while self.step < end:
                if time_budget_s is not None:
                    over = time.perf_counter() - start >= time_budget_s
                    if all_reduce_max(float(over), self.device) > 0:  # every rank stops at the same step
                        break
                with torch.enable_grad():  # also when called from an evaluation under no_grad
                    record = self.train_step()
                record["time_s"] = self.training_time_s()
                if (record["step"] % self.log_every == 0 or self.step == self.max_steps
                        or any(k.startswith("eval/") for k in record)):  # evaluations are always kept
                    self.log.append(record)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.step < end:
                    self.save()
                if bar is not None:
                    bar.update(min(record["time_s"], bar.total) - bar.n if timed else 1)
                    now = time.perf_counter()
                    if now - shown > 0.5 or self.step == end:
                        bar.set_postfix(({"step": str(self.step)} if timed else {}) | self._postfix(record),
                                        refresh=False)
                        shown = now
        finally:
            self.elapsed_s += time.perf_counter() - start
            self._fit_start = None
            if bar is not None:
                if timed:  # show the seconds trained and the step reached
                    bar.update(max(0.0, min(self.elapsed_s, bar.total) - bar.n))
                    bar.set_postfix({"step": str(self.step)} | (self._postfix(record) if record else {}),
                                    refresh=False)
                bar.close()
        if self.out_dir is not None and end > 0 and self.step > 0:
            self.save()
        return self.log

    def _postfix(self, record: Mapping[str, Any]) -> dict[str, str]:
        keys = [k for k in record if k.startswith("loss/")]
        keys += [k for k in getattr(self.task, "progress_keys", ()) if k in record and k not in keys]
        return {k.removeprefix("loss/"): f"{record[k]:.4g}" for k in keys}

    # ---------------------------------------------------------------- checkpoints
    def training_time_s(self) -> float:
        """Seconds spent in :meth:`fit` so far, over resumes, including the running call."""
        return self.elapsed_s + (time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0)

def _progress_bar(total: float, initial: float, enabled: bool, desc: str | None = None, unit: str = "step"):
    """A tqdm bar over ``total`` steps, or over ``total`` seconds of training for ``unit="s"``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    if unit == "s":
        return tqdm(total=total, initial=initial, unit="s", dynamic_ncols=True, mininterval=0.5, desc=desc,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of training [{elapsed}<{remaining}{postfix}]")
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=0.5, desc=desc)


