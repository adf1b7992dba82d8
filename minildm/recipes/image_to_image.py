"""The paper's image-to-image LDMs by concatenated conditioning (notebook 06): artifacts ``ldm-sr``,
``ldm-inpaint``, ``ldm-semantic`` and the pixel-space ``pdm-inpaint``.

Each is the shared latent diffusion recipe (:mod:`minildm.recipes.latent_diffusion`) with a spatial
condition y concatenated to z_t (:mod:`minildm.conditioning.concat`):

=================  ================================  ==========================================  ===================
artifact           paper                             y -> c_concat                               data, first stage
=================  ================================  ==========================================  ===================
``ldm-sr``         Sec. 4.4, LDM-SR (×4)             bicubic ×4 image on the latent grid (3)     shapes+photos, kl-f4-photos
``ldm-inpaint``    Sec. 4.5, LDM-4 inpainting        [hole↓, s·E(filled image)] (1 + 4)          shapes+photos, kl-f4-photos
``ldm-semantic``   Sec. 4.3.2, semantic synthesis    one-hot map folded to the grid (8·16)       shapes, kl-f4
``pdm-inpaint``    Tab. 6/7, pixel-space DM          [hole, filled image] (1 + 3) on pixels      shapes+photos, identity
=================  ================================  ==========================================  ===================

The measures (the artifacts' metrics; :func:`evaluate_sr`, :func:`evaluate_inpainting`,
:func:`evaluate_semantic`, also called by the notebook) compare each model with the baselines of the
same run on the same validation images: bicubic upsampling for SR; biharmonic inpainting
(``skimage.restoration.inpaint_biharmonic``) and the sampling-time masking of the unconditional
``ldm-f4`` for inpainting. Semantic synthesis is judged by the content checker per region of the map,
at the training size and, the UNet being convolutional, at 2× and 4× the size (paper Fig. 9).
The inpainting models see the image with its hole pre-filled by push-pull interpolation (the preset's
``inpaint_fill``; Stable Diffusion fills it with grey), so they refine a smooth guess.

``python -m minildm train-ldm --task sr|inpaint|semantic [--pixel] --preset cpu`` builds one.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..conditioning.concat import build_concat_conditioner
from ..data.degradations import bicubic_downsample, random_holes
from ..engine.batches import LatentBatches
from ..engine.device import cpu_precision
from ..engine.ema import EMA
from ..engine.trainer import Trainer
from .asymmetric_decoder import ASYMMETRIC_DECODER
from .latent_diffusion import LatentDiffusionRecipe, latent_channels, schedule_ends
from .presets import Preset
from .registry import register
from .image_to_image_eval import (FOLDER_KEY, eval_holes, eval_images, evaluate_inpainting, evaluate_semantic,
                                  evaluate_sr, folder_root, inpaint_biharmonic, inpaint_by_masking, sample_inpainting,
                                  sample_semantic, sample_sr, semantic_tiles, task_data, task_items,
                                  with_image_folder)

__all__ = ["TASKS", "I2ISpec", "i2i_name", "concat_config",
           # the sampling and measuring of image_to_image_eval, so that the notebook imports one module
           "FOLDER_KEY", "with_image_folder", "task_data", "folder_root", "task_items", "eval_images", "eval_holes",
           "sample_sr", "sample_inpainting", "inpaint_biharmonic", "inpaint_by_masking", "evaluate_sr",
           "evaluate_inpainting", "semantic_tiles", "sample_semantic", "evaluate_semantic"]

#: the image-to-image tasks
TASKS = ("sr", "inpaint", "semantic")


def i2i_name(task: str, pixel: bool = False, folder: bool = False) -> str:
    """Artifact name: ``ldm-{task}``, ``pdm-inpaint`` for the pixel-space inpainting model, or
    ``ldm-{sr,inpaint}-folder`` for the models trained on an image folder of one's own."""
    if task not in TASKS:
        raise ValueError(f"unknown image-to-image task {task!r}: choose one of {', '.join(TASKS)}")
    if pixel and task != "inpaint":
        raise ValueError("the pixel-space comparison model exists for inpainting only (--task inpaint --pixel)")
    if folder and (pixel or task == "semantic"):
        raise ValueError("an image folder trains --task sr or --task inpaint (semantic synthesis needs maps)")
    return "pdm-inpaint" if pixel else f"ldm-{task}" + ("-folder" if folder else "")


def concat_config(task: str, preset: Preset, f: int) -> dict[str, Any]:
    """The concat conditioner κ of a task (:mod:`minildm.conditioning.concat` config)."""
    from ..data.shapes import SEGMENTATION_CLASSES

    if task == "sr":
        return {"type": "low_resolution", "factor": preset.i2i.sr_factor}
    if task == "inpaint":
        fill = preset.i2i.inpaint_fill
        return {"type": "masked_image"} if fill == "zero" else {"type": "masked_image", "fill": fill}
    return {"type": "segmentation", "num_classes": len(SEGMENTATION_CLASSES), "n_stages": int(math.log2(f)),
            "method": preset.i2i.semantic_rescaler, "out_channels": None}


# ----------------------------------------------------------------------------------------------- the recipe
@lru_cache(maxsize=8)
def _step_flops(name: str, preset_name: str) -> int:
    """FLOPs of one training step (forward and backward, first-stage encoding included) of artifact ``name``
    with random weights, counted on a batch of the preset's size."""
    from ..engine.throughput import count_flops
    from .presets import get_preset
    from .registry import get_spec

    preset = get_preset(preset_name)
    spec = get_spec(name)
    identity = spec.identity(preset, steps=1)  # the step count does not change a step's FLOPs
    ldm = spec.build_model(identity)
    recipe = identity["recipe"]
    b, size = 2, preset.i2i.image_size
    x = torch.zeros(b, 3, size, size)
    batch = {"latent": ldm.encode_first_stage(x), "concat": {"image": x, "hole": torch.ones(b, 1, size, size)}}
    task = spec.task(ldm, recipe)
    with torch.enable_grad():  # also when called from an evaluation under no_grad
        return count_flops(lambda: task.training_step(batch, 0, "unet")[0]) * recipe["batch_size"] // b


@register("ldm-sr", task="sr")
@register("ldm-inpaint", task="inpaint")
@register("ldm-semantic", task="semantic")
@register("pdm-inpaint", task="inpaint", pixel=True)
@register("ldm-sr-folder", task="sr", folder=True)
@register("ldm-inpaint-folder", task="inpaint", folder=True)
class I2ISpec(LatentDiffusionRecipe):
    """Artifacts ``ldm-sr``, ``ldm-inpaint``, ``ldm-semantic``, ``pdm-inpaint`` (see the module docstring), and
    ``ldm-sr-folder`` / ``ldm-inpaint-folder``: the same recipes on an image folder of one's own (named by
    the preset's ``extra["image_folder"]``, :func:`with_image_folder`; the CLI's ``--data image_folder
    --root PATH``), continuing the shipped models' first stage ``kl-f4-photos``."""

    def __init__(self, task: str, pixel: bool = False, folder: bool = False) -> None:
        self.task_name, self.pixel, self.folder = task, pixel, folder
        self.name = i2i_name(task, pixel, folder)
        self.description = {"sr": "LDM-SR: x4 super-resolution, low-resolution image concatenated",
                             "inpaint": "inpainting LDM: hole-filled image's latent and mask concatenated",
                             "semantic": "semantic synthesis LDM: segmentation map concatenated"}[task]
        if pixel:
            self.description = "pixel-space inpainting DM (same UNet), trained for ldm-inpaint's FLOPs"
        if folder:
            self.description += ", trained on an image folder"

    def first_stage_name(self, preset: Preset) -> str:
        from .ablation import ablation_name
        from .first_stage import first_stage_name, photo_first_stage_name

        if self.pixel:
            return ablation_name(1)
        f = preset.i2i.f
        return first_stage_name(f) if self.task_name == "semantic" else photo_first_stage_name(f)

    def default_steps(self, preset: Preset) -> int:
        """The preset's steps; for ``pdm-inpaint`` those of equal training FLOPs to ``compare_steps`` steps of
        ``ldm-inpaint``."""
        ip = preset.i2i
        if not self.pixel:
            return ip.steps_for(self.task_name)
        ratio = _step_flops("ldm-inpaint", preset.name) / _step_flops(self.name, preset.name)
        return max(1, round(ip.compare_steps * ratio))

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        from .registry import get_spec

        ip = preset.i2i
        fs = get_spec(self.first_stage_name(preset)).identity(preset)
        c = latent_channels(fs)
        f = 1 if self.pixel else ip.f
        concat = concat_config(self.task_name, preset, f)
        unet = ip.unet_for(self.task_name).config(c).to_dict()
        unet["in_channels"] = c + build_concat_conditioner(concat).channels(c)
        return {
            "model_class": "LatentDiffusion",
            "model": {"f": f, "image_size": ip.image_size, "first_stage": fs, "unet": unet, "concat_stage": concat,
                      "diffusion": {"schedule": ip.schedule, "num_timesteps": ip.timesteps,
                                    "parameterization": ip.parameterization,
                                    **schedule_ends(ip.linear_start, ip.linear_end)}},
            "recipe": {"kind": self.name, "task": self.task_name, "first_stage": self.first_stage_name(preset),
                       "batch_size": ip.batch_size, "lr": ip.lr, "ema_decay": ip.ema_decay, "n_train": ip.n_train,
                       "p_uncond": 0.0, "loss_weighting": ip.loss_weighting,
                       **({"snr_gamma": ip.snr_gamma} if ip.snr_gamma is not None else {}),
                       **({"warmup_steps": ip.warmup_steps} if ip.warmup_steps else {}),
                       **({"min_lr_ratio": ip.min_lr_ratio} if ip.min_lr_ratio is not None else {}),
                       **({"compare_steps": ip.compare_steps} if self.task_name == "inpaint" else {}),
                       **({"sr_factor": ip.sr_factor} if self.task_name == "sr" else {}),
                       "seed": preset.seed, "steps": steps if steps is not None else self.default_steps(preset),
                       "data": {"name": task_data(self.task_name, self.folder), "split": "train",
                                "image_size": ip.image_size,
                                **({"root": preset.extra.get(FOLDER_KEY)} if self.folder else {})}},
            "preset": preset.name,
        }

    def command(self, preset: Preset, steps: int | None = None) -> str:
        folder = f" --data image_folder --root {preset.extra.get(FOLDER_KEY) or 'PATH'}" if self.folder else ""
        return (f"python -m minildm train-ldm --task {self.task_name}{' --pixel' if self.pixel else ''}{folder} "
                f"--preset {preset.name}" + (f" --steps {steps}" if steps is not None else ""))

    def latent_batches(self, ldm: nn.Module, preset: Preset, recipe: Mapping[str, Any],
                       progress: bool) -> LatentBatches:
        """The first ``n_train`` training images, encoded once, with their conditions: the ×k images (SR), the
        images themselves with holes drawn per batch (inpainting), the segmentation maps (semantic)."""
        from ..data.shapes import segmentation_from_objects

        items = task_items(self.task_name, "train", recipe["n_train"], preset, folder=self.folder)
        images = torch.stack([it["image"] for it in items])
        ldm.compute_scale_factor(images[:1024])
        z = LatentBatches.encode(ldm, images, recipe["batch_size"]).latents
        size = images.shape[-1]
        def add_holes(c: dict[str, Tensor], g: torch.Generator) -> dict[str, Tensor]:
            return {**c, "hole": random_holes(len(c["image"]), size, generator=g)}

        augment = None
        if self.task_name == "sr":
            concat = {"lr": bicubic_downsample(images, recipe["sr_factor"])}
        elif self.task_name == "inpaint":
            concat, augment = {"image": images}, add_holes
        else:
            concat = {"segmentation": torch.stack([segmentation_from_objects(it["objects"], size).to(torch.uint8)
                                                   for it in items])}
        return LatentBatches(z, recipe["batch_size"], seed=recipe["seed"], concat=concat, augment=augment)

    def trainer_settings(self, preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None, *,
                         precision: str = "auto", device: torch.device | None = None, **options: Any) -> dict[str, Any]:
        """Checkpoints every 5 % of the run (the pixel-space model's steps are slow); on a CPU, the preset's
        ``cpu_precision`` unless ``precision`` names one."""
        if precision == "auto" and device is not None and device.type == "cpu":
            precision = cpu_precision(preset.i2i.cpu_precision)
        return {"max_steps": recipe["steps"], "log_every": 10, "precision": precision,
                "checkpoint_every": max(10, recipe["steps"] // 20) if out_dir is not None else None}

    def add_callbacks(self, trainer: Trainer, ldm: nn.Module, ema: EMA, deps: Mapping[str, nn.Module],
                      preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None) -> dict[str, Any]:
        """The run fact kept in the metrics: the autocast precision."""
        return {"precision": str(trainer.dtype or torch.float32).removeprefix("torch.")}

    def dependencies(self, preset: Preset, device: torch.device, progress: bool) -> dict[str, nn.Module]:
        from .store import load_or_train

        deps = super().dependencies(preset, device, progress)
        if self.task_name == "inpaint" and not (self.pixel or self.folder):  # the equal-compute measure
            deps["feature_net"] = load_or_train("feature-net", preset, device=device, progress=progress).model
        return deps

    _continued = False

    def train(self, preset: Preset, *, init_state: Mapping[str, Tensor] | None = None, **kwargs: Any) -> Any:
        """As the shared recipe; a run continued from trained weights (``--init-from``) is not measured at
        ``compare_steps`` (the equal-compute row belongs to the run from scratch)."""
        self._continued = init_state is not None
        try:
            return super().train(preset, init_state=init_state, **kwargs)
        finally:
            self._continued = False

    def fit(self, trainer: Trainer, ldm: nn.Module, ema: EMA, deps: Mapping[str, nn.Module],
            preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None) -> None:
        """Train; ``ldm-inpaint`` measures its EMA weights at ``compare_steps`` (the pixel model's compute)
        on the evaluation's images, kept in the log (a resumed run past that step keeps the row)."""
        compare = recipe.get("compare_steps")
        if self.pixel or self.folder or self._continued or compare is None or compare >= recipe["steps"] \
                or any("eval/compare" in r for r in trainer.log):
            trainer.fit()
            return
        if trainer.step < compare:
            trainer.fit(steps=compare - trainer.step)
        with ema.average_parameters():
            row = evaluate_inpainting({"ldm": lambda x, h: sample_inpainting(ldm, x, h, preset.i2i.eval_ddim_steps,
                                                                             preset.seed)},
                                      preset, deps["feature_net"], seed=preset.seed)["ldm"]
        trainer.log.append({"step": trainer.step, "time_s": trainer.elapsed_s, "eval/compare": row})
        if out_dir is not None:
            trainer.save()
        trainer.fit()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        from .store import load_or_train

        model = model.to(device).eval()
        ip = preset.i2i
        out: dict[str, Any] = {"latent_shape": list(model.latent_shape), "scale_factor": float(model.scale_factor),
                               "unet_params": sum(p.numel() for p in model.model.parameters()),
                               "concat_channels": model.concat_channels, "eval_ddim_steps": ip.eval_ddim_steps}
        if self.task_name == "semantic":
            checker = load_or_train("checker", preset, device=device).model
            out["semantic"] = evaluate_semantic(model, checker, preset, seed=preset.seed)
            return out
        # FD-feat's features know the shapes data: not measured on a folder of one's own
        feature_net = None if self.folder else load_or_train("feature-net", preset, device=device).model
        if self.task_name == "sr":
            out["sr"] = evaluate_sr(model, preset, feature_net, seed=preset.seed, folder=self.folder)
            return out
        steps, seed = ip.eval_ddim_steps, preset.seed
        methods: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
            self.name: lambda x, h: sample_inpainting(model, x, h, steps, seed)}
        if not self.pixel:
            methods["biharmonic"] = inpaint_biharmonic
        if not (self.pixel or self.folder):
            asym = load_or_train(ASYMMETRIC_DECODER, preset, device=device).model.to(device).eval()
            methods[f"{self.name} + {ASYMMETRIC_DECODER}"] = lambda x, h: sample_inpainting(model, x, h, steps, seed,
                                                                                           decoder=asym)
            uncond = load_or_train("ldm-f4", preset, device=device).model
            methods["masking"] = lambda x, h: inpaint_by_masking(uncond, x, h, steps, seed)
        out["inpaint"] = evaluate_inpainting(methods, preset, feature_net, seed=seed, folder=self.folder)
        if not self.folder:
            out["step_flops"] = _step_flops(self.name, preset.name)
        return out
