"""The paper's image-to-image LDMs by concatenated conditioning (notebook 06): artifacts ``ldm-sr``,
``ldm-inpaint``, ``ldm-semantic`` and the pixel-space ``pdm-inpaint``.

Each is the shared latent diffusion recipe (:mod:`minildm.recipes.latent_diffusion`) with a spatial
condition y concatenated to z_t (:mod:`minildm.conditioning.concat`):

=================  ================================  ==========================================  ===================
artifact           paper                             y -> c_concat                               data, first stage
=================  ================================  ==========================================  ===================
``ldm-sr``         Sec. 4.4, LDM-SR (×4)             bicubic ×4 image on the latent grid (3)     shapes+photos, kl-f4-photos
``ldm-inpaint``    Sec. 4.5, LDM-4 inpainting        [hole↓, s·E(masked image)] (1 + 4)          shapes+photos, kl-f4-photos
``ldm-semantic``   Sec. 4.3.2, semantic synthesis    one-hot map folded to the grid (8·16)       shapes, kl-f4
``pdm-inpaint``    Tab. 6/7, pixel-space DM          [hole, masked image] (1 + 3) on pixels      shapes+photos, identity
=================  ================================  ==========================================  ===================

The measures (the artifacts' metrics; :func:`evaluate_sr`, :func:`evaluate_inpainting`,
:func:`evaluate_semantic`, also called by the notebook) compare each model with the baselines of the
same run on the same validation images: bicubic upsampling for SR; biharmonic inpainting
(``skimage.restoration.inpaint_biharmonic``) and the sampling-time masking of the unconditional
``ldm-f4`` for inpainting. Semantic synthesis is judged by the content checker per region of the map,
at the training size and, the UNet being convolutional, at 2× and 4× the size (paper Fig. 9).

``python -m minildm train-ldm --task sr|inpaint|semantic [--pixel] --preset cpu`` builds one.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conditioning.concat import build_concat_conditioner
from ..data.degradations import MASK_KINDS, bicubic_downsample, bicubic_upsample, random_holes
from ..engine.batches import LatentBatches
from ..engine.ema import EMA
from ..engine.trainer import Trainer
from .latent_diffusion import LatentDiffusionRecipe, latent_channels, schedule_ends
from .presets import Preset
from .registry import register

__all__ = ["TASKS", "FOLDER_KEY", "I2ISpec", "i2i_name", "with_image_folder", "task_data", "concat_config", "eval_images", "eval_holes",
           "sample_sr", "sample_inpainting", "inpaint_biharmonic", "inpaint_by_masking", "evaluate_sr",
           "evaluate_inpainting", "semantic_tiles", "sample_semantic", "evaluate_semantic"]

#: the image-to-image tasks
TASKS = ("sr", "inpaint", "semantic")


#: where a preset's ``extra`` names the image folder of the ``*-folder`` artifacts
FOLDER_KEY = "image_folder"


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


def with_image_folder(preset: Preset, root: str) -> Preset:
    """``preset`` whose ``*-folder`` artifacts train on the images under ``root``."""
    import dataclasses
    from pathlib import Path as _Path

    return dataclasses.replace(preset, extra={**preset.extra, FOLDER_KEY: str(_Path(root).expanduser().resolve())})


def task_data(task: str, folder: bool = False) -> str:
    """The dataset a task trains and is measured on."""
    if folder:
        return "image_folder"
    return "shapes" if task == "semantic" else "shapes+photos"


def _folder_root(preset: Preset) -> str:
    root = preset.extra.get(FOLDER_KEY)
    if not root:
        raise ValueError("the *-folder models train on an image folder: give it with --data image_folder --root PATH "
                         "(or recipes.image_to_image.with_image_folder(preset, PATH))")
    return root


def concat_config(task: str, preset: Preset, f: int) -> dict[str, Any]:
    """The concat conditioner κ of a task (:mod:`minildm.conditioning.concat` config)."""
    from ..data.shapes import SEGMENTATION_CLASSES

    if task == "sr":
        return {"type": "low_resolution", "factor": preset.i2i.sr_factor}
    if task == "inpaint":
        return {"type": "masked_image"}
    return {"type": "segmentation", "num_classes": len(SEGMENTATION_CLASSES), "n_stages": int(math.log2(f)),
            "method": preset.i2i.semantic_rescaler, "out_channels": None}


def _items(task: str, split: str, n: int, preset: Preset, offset: int = 0, folder: bool = False
           ) -> list[dict[str, Any]]:
    """Items ``offset`` … ``offset + n − 1`` of the task's split (of an image folder: at most all it has)."""
    from ..data import load_dataset

    if folder:
        ds = load_dataset("image_folder", split, preset.i2i.image_size, root=_folder_root(preset))
        n = min(n, len(ds) - offset)
        return [{**ds[i], "domain": "folder"} for i in range(offset, offset + n)]
    ds = load_dataset(task_data(task), split, preset.i2i.image_size, length=offset + n, seed=preset.seed)
    return [ds[i] for i in range(offset, offset + n)]


def eval_images(task: str, preset: Preset, n: int | None = None, folder: bool = False
                ) -> tuple[Tensor, list[str], list[Any]]:
    """The first ``n`` (default ``preset.i2i.n_eval``) validation images of a task: images (n, 3, H, W),
    their domains (``shapes`` / ``photos`` / ``folder``) and their objects."""
    items = _items(task, "val", n or preset.i2i.n_eval, preset, folder=folder)
    return (torch.stack([it["image"] for it in items]), [it.get("domain", "shapes") for it in items],
            [it["objects"] for it in items])


def eval_holes(n: int, size: int, seed: int = 0) -> Tensor:
    """The evaluation's holes (n, 1, size, size): the kinds of :data:`MASK_KINDS` in turn, seeded."""
    g = torch.Generator().manual_seed(seed + 77)
    return torch.cat([random_holes(1, size, (MASK_KINDS[i % len(MASK_KINDS)],), generator=g) for i in range(n)])


# ----------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def _batched(fn: Callable[[slice], Tensor], n: int, batch_size: int = 64) -> Tensor:
    return torch.cat([fn(slice(i, min(n, i + batch_size))).cpu() for i in range(0, n, batch_size)])


def sample_sr(model: nn.Module, lr: Tensor, steps: int = 20, seed: int = 0, progress: bool = False) -> Tensor:
    """LDM-SR: images (n, 3, H, W) from low-resolution inputs ``lr`` (n, 3, H/k, W/k), DDIM with ``steps`` steps."""
    g = torch.Generator().manual_seed(seed)
    return _batched(lambda s: model.sample(len(lr[s]), steps=steps, generator=g, concat={"lr": lr[s]},
                                           progress=progress), len(lr))


def sample_inpainting(model: nn.Module, images: Tensor, holes: Tensor, steps: int = 20, seed: int = 0,
                      progress: bool = False) -> Tensor:
    """The inpainting model's fill of ``holes`` (n, 1, H, W; 1 = fill) in ``images`` (n, 3, H, W), composited:
    the known pixels are the input's, the hole the model's."""
    g = torch.Generator().manual_seed(seed)
    out = _batched(lambda s: model.sample(len(images[s]), steps=steps, generator=g,
                                          concat={"image": images[s], "hole": holes[s]}, progress=progress),
                   len(images))
    return holes * out + (1 - holes) * images


def inpaint_biharmonic(images: Tensor, holes: Tensor) -> Tensor:
    """The classical baseline: ``skimage.restoration.inpaint_biharmonic`` per image (known pixels kept)."""
    from skimage.restoration import inpaint_biharmonic as biharmonic

    out = []
    for x, m in zip(images, holes):
        arr = biharmonic(x.permute(1, 2, 0).double().numpy(), m[0].bool().numpy(), channel_axis=-1)
        out.append(torch.from_numpy(arr).permute(2, 0, 1).float())
    return torch.stack(out).clamp(-1, 1)


def inpaint_by_masking(model: nn.Module, images: Tensor, holes: Tensor, steps: int = 20, seed: int = 0,
                       progress: bool = False, resample: int = 1) -> Tensor:
    """Inpainting with an *unconditional* LDM by masking in the sampler (CompVis ``mask``/``x0``): the latent
    cells touched by a hole are generated, the others kept at q(z_t | E(x)); then composited in pixels.
    ``resample`` > 1: RePaint's harmonising jumps (see :class:`~minildm.diffusion.samplers.ddim.DDIMSampler`)."""
    f = images.shape[-1] // model.latent_shape[-1]
    g = torch.Generator().manual_seed(seed)

    def run(s: slice) -> Tensor:
        x = images[s].to(model.scale_factor.device)
        keep = 1 - F.max_pool2d(holes[s].to(x.device), f)  # 1 = a latent cell with no missing pixel
        z0 = model.encode_first_stage(x)
        return model.sample(len(x), steps=steps, generator=g, mask=keep, x0=z0, progress=progress, resample=resample)

    out = _batched(run, len(images))
    return holes * out + (1 - holes) * images


# ----------------------------------------------------------------------------------------------- metrics
def _image_metrics(out: Tensor, ref: Tensor, feature_net: nn.Module | None, hole: Tensor | None = None
                   ) -> dict[str, float]:
    from ..eval.fid import extract_features, fid_from_features
    from ..eval.metrics import lpips_distance, psnr, ssim

    m: dict[str, float] = {"lpips": float(_batched(lambda s: lpips_distance(out[s], ref[s]), len(out)).mean())}
    if hole is None:
        m["psnr"] = float(psnr(out, ref).mean())
        m["ssim"] = float(ssim(out, ref).mean())
    else:  # PSNR of the hole's pixels alone
        mse = (((out - ref) / 2) ** 2 * hole).sum(dim=(1, 2, 3)) / (3 * hole.sum(dim=(1, 2, 3))).clamp_min(1)
        m["psnr_hole"] = float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())
    if feature_net is not None and len(out) >= 2:
        m["fd"] = fid_from_features(extract_features(feature_net, ref), extract_features(feature_net, out))
    return m


def _per_domain(out: Tensor, ref: Tensor, domains: Sequence[str], feature_net: nn.Module | None,
                hole: Tensor | None = None) -> dict[str, Any]:
    row: dict[str, Any] = _image_metrics(out, ref, feature_net, hole)
    for d in sorted(set(domains)):
        idx = torch.tensor([i for i, x in enumerate(domains) if x == d])
        row[d] = _image_metrics(out[idx], ref[idx], feature_net, None if hole is None else hole[idx])
    return row


@torch.no_grad()
def evaluate_sr(model: nn.Module, preset: Preset, feature_net: nn.Module | None, n: int | None = None,
                steps: int | None = None, seed: int = 0, folder: bool = False) -> dict[str, Any]:
    """PSNR, SSIM, LPIPS and FD-feat of LDM-SR and of bicubic upsampling on the same ``n`` validation images
    (all, and per domain), ×``sr_factor``; no FD-feat without a ``feature_net``."""
    ip = preset.i2i
    x, domains, _ = eval_images("sr", preset, n, folder)
    lr = bicubic_downsample(x, ip.sr_factor)
    t0 = time.perf_counter()
    ldm = sample_sr(model, lr, steps or ip.eval_ddim_steps, seed)
    seconds = time.perf_counter() - t0
    return {"n": len(x), "n_photos": domains.count("photos"), "ddim_steps": steps or ip.eval_ddim_steps,
            "factor": ip.sr_factor, "images_per_s": len(x) / seconds,
            "ldm": _per_domain(ldm, x, domains, feature_net),
            "bicubic": _per_domain(bicubic_upsample(lr, x.shape[-2:]), x, domains, feature_net)}


@torch.no_grad()
def evaluate_inpainting(methods: Mapping[str, Callable[[Tensor, Tensor], Tensor]], preset: Preset,
                        feature_net: nn.Module | None, n: int | None = None, seed: int = 0, folder: bool = False
                        ) -> dict[str, Any]:
    """For each inpainting method (name -> fn(images, holes) -> composited images): LPIPS of the result (only
    the hole differs from the original), PSNR of the hole's pixels and FD-feat of the results, on ``n``
    validation images with the holes of :func:`eval_holes` (all, and per domain)."""
    x, domains, _ = eval_images("inpaint", preset, n, folder)
    holes = eval_holes(len(x), x.shape[-1], seed)
    out: dict[str, Any] = {"n": len(x), "n_photos": domains.count("photos"),
                           "hole_fraction": float(holes.mean())}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        result = fn(x, holes)
        row = _per_domain(result, x, domains, feature_net, holes)
        row["seconds"] = time.perf_counter() - t0
        out[name] = row
    return out


def semantic_tiles(preset: Preset, n: int, scale: int, offset: int = 0) -> tuple[Tensor, list[list[Any]]]:
    """``n`` maps of ``scale``·H pixels, each ``scale`` × ``scale`` validation scenes side by side (objects at
    the training scale): maps (n, scale·H, scale·H) int64 and the objects of every tile, row by row."""
    from ..data.shapes import segmentation_from_objects

    size = preset.i2i.image_size
    items = _items("semantic", "val", n * scale * scale, preset, offset)
    maps, objects = [], []
    for i in range(n):
        tiles = items[i * scale * scale:(i + 1) * scale * scale]
        rows = [torch.cat([segmentation_from_objects(t["objects"], size) for t in tiles[r * scale:(r + 1) * scale]], 1)
                for r in range(scale)]
        maps.append(torch.cat(rows, 0))
        objects.append([t["objects"] for t in tiles])
    return torch.stack(maps), objects


def sample_semantic(model: nn.Module, maps: Tensor, steps: int = 20, seed: int = 0, decode: bool = True,
                    progress: bool = False) -> Tensor:
    """Images (n, 3, H', W') drawn from segmentation maps (n, H', W') of any size that is a multiple of
    the training size's f: the latent is sampled at (H'/f, W'/f) (paper Fig. 9)."""
    f = model.image_size // model.latent_shape[-1]
    g = torch.Generator().manual_seed(seed)
    hw = (maps.shape[-2] // f, maps.shape[-1] // f)
    bs = max(1, 64 * model.latent_shape[-1] ** 2 // (hw[0] * hw[1]))
    return _batched(lambda s: model.sample(len(maps[s]), steps=steps, generator=g, decode=decode, latent_size=hw,
                                           concat={"segmentation": maps[s]}, progress=progress), len(maps), bs)


@torch.no_grad()
def evaluate_semantic(model: nn.Module, checker: nn.Module, preset: Preset, scales: Sequence[int] = (1, 2, 4),
                      n_regions_images: int | None = None, steps: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Agreement of generated images with their maps, per scale s: ``n_eval`` tiles of the training size in
    all (``n_eval / s²`` maps of s × s tiles), each tile judged by the checker against its objects
    (:func:`~minildm.eval.checker.score_semantic_samples`), and the sampled latents' standard deviation
    (the scale factor was fitted at 1×; the paper's caveat for other sizes)."""
    from ..eval.checker import score_semantic_samples

    ip = preset.i2i
    n_tiles = n_regions_images or ip.n_eval
    size = ip.image_size
    out: dict[str, Any] = {"ddim_steps": steps or ip.eval_ddim_steps}
    for s in scales:
        n = max(1, n_tiles // (s * s))
        maps, objects = semantic_tiles(preset, n, s)
        z = sample_semantic(model, maps, steps or ip.eval_ddim_steps, seed, decode=False)
        x = _batched(lambda sl: model.decode_first_stage(z[sl].to(model.scale_factor.device)), len(z), 16)
        tiles = x.unfold(2, size, size).unfold(3, size, size)  # (n, 3, s, s, size, size)
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, size, size)
        score = score_semantic_samples(checker, tiles, [o for per in objects for o in per])
        out[f"{s}x"] = {**score, "images": n, "tiles": len(tiles), "latent_std": float(z.std())}
    return out


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
                             "inpaint": "inpainting LDM: masked image's latent and mask concatenated",
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
        unet = ip.unet.config(c).to_dict()
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

        items = _items(self.task_name, "train", recipe["n_train"], preset, folder=self.folder)
        images = torch.stack([it["image"] for it in items])
        ldm.compute_scale_factor(images[:1024])
        z = LatentBatches.encode(ldm, images, recipe["batch_size"]).latents
        size = images.shape[-1]
        augment = None
        if self.task_name == "sr":
            concat = {"lr": bicubic_downsample(images, recipe["sr_factor"])}
        elif self.task_name == "inpaint":
            concat = {"image": images}

            def augment(c: dict[str, Tensor], g: torch.Generator) -> dict[str, Tensor]:
                return {**c, "hole": random_holes(len(c["image"]), size, generator=g)}
        else:
            concat = {"segmentation": torch.stack([segmentation_from_objects(it["objects"], size).to(torch.uint8)
                                                   for it in items])}
        return LatentBatches(z, recipe["batch_size"], seed=recipe["seed"], concat=concat, augment=augment)

    def trainer_settings(self, preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None,
                         **options: Any) -> dict[str, Any]:
        """Checkpoints every 5 % of the run (the pixel-space model's steps are slow)."""
        return {"max_steps": recipe["steps"], "log_every": 10,
                "checkpoint_every": max(10, recipe["steps"] // 20) if out_dir is not None else None}

    def dependencies(self, preset: Preset, device: torch.device, progress: bool) -> dict[str, nn.Module]:
        from .store import load_or_train

        deps = super().dependencies(preset, device, progress)
        if self.task_name == "inpaint" and not (self.pixel or self.folder):  # the equal-compute measure
            deps["feature_net"] = load_or_train("feature-net", preset, device=device, progress=progress).model
        return deps

    def fit(self, trainer: Trainer, ldm: nn.Module, ema: EMA, deps: Mapping[str, nn.Module],
            preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None) -> None:
        """Train; ``ldm-inpaint`` measures its EMA weights at ``compare_steps`` (the pixel model's compute)
        on the evaluation's images, kept in the log (a resumed run past that step keeps the row)."""
        compare = recipe.get("compare_steps")
        if self.pixel or self.folder or compare is None or compare >= recipe["steps"] or any("eval/compare" in r for r in trainer.log):
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
            uncond = load_or_train("ldm-f4", preset, device=device).model
            methods["masking"] = lambda x, h: inpaint_by_masking(uncond, x, h, steps, seed)
        out["inpaint"] = evaluate_inpainting(methods, preset, feature_net, seed=seed, folder=self.folder)
        if not self.folder:
            out["step_flops"] = _step_flops(self.name, preset.name)
        return out
