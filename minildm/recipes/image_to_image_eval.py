"""Sampling and measuring the image-to-image LDMs of notebook 06 (:mod:`minildm.recipes.image_to_image`):
the evaluation images and holes, each model's sampling (SR, inpainting, semantic synthesis at any size), the
baselines (bicubic, biharmonic inpainting, masking an unconditional LDM in the sampler) and the metrics of
the same run: PSNR, SSIM, LPIPS and FD-feat (all, and per domain: shapes scenes, photo crops, a folder), and
the checker's agreement with segmentation maps per region.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.degradations import MASK_KINDS, bicubic_downsample, bicubic_upsample, random_holes
from .presets import Preset

__all__ = ["FOLDER_KEY", "with_image_folder", "task_data", "folder_root", "task_items", "eval_images", "eval_holes",
           "sample_sr", "sample_inpainting", "inpaint_biharmonic", "inpaint_by_masking", "evaluate_sr",
           "evaluate_inpainting", "semantic_tiles", "sample_semantic", "evaluate_semantic"]

#: where a preset's ``extra`` names the image folder of the ``*-folder`` artifacts
FOLDER_KEY = "image_folder"


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


def folder_root(preset: Preset) -> str:
    """The image folder of the ``*-folder`` artifacts (the preset's ``extra``); ValueError without one."""
    root = preset.extra.get(FOLDER_KEY)
    if not root:
        raise ValueError("the *-folder models train on an image folder: give it with --data image_folder --root PATH "
                         "(or recipes.image_to_image.with_image_folder(preset, PATH))")
    return root


def task_items(task: str, split: str, n: int, preset: Preset, offset: int = 0, folder: bool = False
               ) -> list[dict[str, Any]]:
    """Items ``offset`` … ``offset + n − 1`` of the task's split (of an image folder: at most all it has)."""
    from ..data import load_dataset

    if folder:
        ds = load_dataset("image_folder", split, preset.i2i.image_size, root=folder_root(preset))
        n = min(n, len(ds) - offset)
        return [{**ds[i], "domain": "folder"} for i in range(offset, offset + n)]
    ds = load_dataset(task_data(task), split, preset.i2i.image_size, length=offset + n, seed=preset.seed)
    return [ds[i] for i in range(offset, offset + n)]


def eval_images(task: str, preset: Preset, n: int | None = None, folder: bool = False
                ) -> tuple[Tensor, list[str], list[Any]]:
    """The first ``n`` (default ``preset.i2i.n_eval``) validation images of a task: images (n, 3, H, W),
    their domains (``shapes`` / ``photos`` / ``folder``) and their objects."""
    items = task_items(task, "val", n or preset.i2i.n_eval, preset, folder=folder)
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
                      progress: bool = False, decoder: nn.Module | None = None) -> Tensor:
    """The inpainting model's fill of ``holes`` (n, 1, H, W; 1 = fill) in ``images`` (n, 3, H, W), composited:
    the known pixels are the input's, the hole the model's. ``decoder``: an asymmetric decoder
    (``kl-f4-photos-asym``, :mod:`minildm.models.asymmetric_decoder`) that draws the sampled latents seeing
    the known pixels, in place of the first stage's D."""
    g = torch.Generator().manual_seed(seed)

    def run(s: slice) -> Tensor:
        z = model.sample(len(images[s]), steps=steps, generator=g, concat={"image": images[s], "hole": holes[s]},
                         progress=progress, decode=decoder is None)
        if decoder is None:
            return z
        x, h = images[s].to(z.device), holes[s].to(z.device)
        return decoder.paste(z / model.scale_factor.to(z.dtype), x, h).to(images.device)

    out = _batched(run, len(images))
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
    validation images with the holes of :func:`eval_holes` (all, and per domain); ``lpips_by_kind``: the LPIPS
    per mask kind and domain (the holes take the kinds in turn)."""
    from ..eval.metrics import lpips_distance

    x, domains, _ = eval_images("inpaint", preset, n, folder)
    holes = eval_holes(len(x), x.shape[-1], seed)
    out: dict[str, Any] = {"n": len(x), "n_photos": domains.count("photos"),
                           "hole_fraction": float(holes.mean())}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        result = fn(x, holes)
        row = _per_domain(result, x, domains, feature_net, holes)
        row["seconds"] = time.perf_counter() - t0
        per_image = _batched(lambda s: lpips_distance(result[s], x[s]), len(x))
        row["lpips_by_kind"] = {
            kind: {d: float(per_image[idx].mean()) for d in sorted(set(domains))
                   if len(idx := torch.tensor([i for i in range(k, len(x), len(MASK_KINDS)) if domains[i] == d],
                                              dtype=torch.long))}
            for k, kind in enumerate(MASK_KINDS)}
        out[name] = row
    return out


def semantic_tiles(preset: Preset, n: int, scale: int, offset: int = 0) -> tuple[Tensor, list[list[Any]]]:
    """``n`` maps of ``scale``·H pixels, each ``scale`` × ``scale`` validation scenes side by side (objects at
    the training scale): maps (n, scale·H, scale·H) int64 and the objects of every tile, row by row."""
    from ..data.shapes import segmentation_from_objects

    size = preset.i2i.image_size
    items = task_items("semantic", "val", n * scale * scale, preset, offset)
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
