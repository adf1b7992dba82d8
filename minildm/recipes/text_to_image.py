"""Text-to-image LDMs of notebook 05: training at scale, compositional evaluation, scaling study.

The paper's text-to-image model (Sec. 4.3.1) is an LDM whose τ_θ is a transformer trained from
scratch on the captions, jointly with the UNet (Eq. 3); Stable Diffusion keeps the same UNet and
reads a *frozen* pretrained text encoder instead. Artifacts ``t2i-{encoder}-{size}`` train both
kinds (encoder ``scratch`` or ``minilm``) at the sizes of ``preset.t2i.sizes`` on captioned shapes
images whose train split never shows the ``holdout`` (colour, shape) pairs.

Training uses the shared :class:`~minildm.engine.trainer.Trainer`: under ``torchrun`` it is data-parallel
(each rank renders, encodes and trains on its slice of the global batch), with gradient
accumulation, bf16/fp16 autocast, gradient checkpointing, EMA, checkpoints every
``checkpoint_every`` steps that resume exactly after a kill, and a log of throughput (images/s)
and model-FLOPs utilisation. At ``curve_points`` evenly spaced steps, the EMA model's validation
loss and compositional accuracy are measured (:class:`EvalCurve`), with a grid of validation
prompts saved as an image: the data of the scaling study (:func:`scaling_study`).

Evaluation (:func:`evaluate_t2i`, ``python -m minildm evaluate``): the fixed prompt set of
:mod:`minildm.eval.prompts`, samples judged by the checker of notebook 04 for colour, shape, count and
position, for seen and held-out combinations, at every guidance scale, plus the FID-style score.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .presets import Preset, get_preset
from .registry import register
from ..engine.batches import BatchRandom, LatentBatches, move_to_device
from ..engine.distributed import barrier, dist_info, is_main, local_only
from ..engine.ema import EMA
from ..engine.tasks import LatentDiffusionTask, lr_schedule
from ..engine.throughput import Throughput, count_flops, peak_flops
from ..engine.trainer import Trainer
from .first_stage import first_stage_name
from .latent_diffusion import LatentDiffusionRecipe, build_latent_diffusion, latent_channels
from .store import load_artifact, load_or_train

__all__ = ["TEXT_ENCODERS", "t2i_name", "parse_t2i_name", "T2ISpec", "build_t2i_ldm",
           "reference_scores", "evaluate_t2i", "EvalCurve", "ValidationGrid", "scaling_study", "generate", "VALIDATION_PROMPTS"]

#: text encoders of notebook 05: trained from scratch with the UNet (the paper), frozen pretrained (SD)
TEXT_ENCODERS = ("scratch", "minilm")
#: prompts of the validation grids saved during training (the last two hold held-out pairs)
VALIDATION_PROMPTS = ("a blue circle", "a green star in the top left", "two shapes: a yellow square and a pink cross",
                      "a purple hexagon at the bottom", "a red star", "two shapes: an orange circle and a cyan triangle")


def t2i_name(encoder: str = "scratch", size: str = "M") -> str:
    """Artifact name ``t2i-{encoder}-{size}``."""
    if encoder not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {encoder!r}: choose one of {', '.join(TEXT_ENCODERS)}")
    return f"t2i-{encoder}-{size}"


def parse_t2i_name(name: str) -> tuple[str, str]:
    """(encoder, size) of an artifact name ``t2i-{encoder}-{size}``."""
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != "t2i" or parts[1] not in TEXT_ENCODERS:
        raise ValueError(f"not a text-to-image artifact name: {name!r} (expected t2i-<encoder>-<size>)")
    return parts[1], parts[2]


@lru_cache(maxsize=4)
def _tokenizer_dict(max_length: int) -> dict[str, Any]:
    """The from-scratch encoder's vocabulary: the words of 2000 train captions and of every phrase
    the caption templates draw from (so that rare synonyms and plurals are in it too)."""
    from ..conditioning.text import WordTokenizer
    from ..data import shapes
    from ..data.shapes import caption_corpus

    phrases = [w for table in (shapes.SHAPE_SYNONYMS, shapes.POSITION_PHRASES, shapes.RELATION_PHRASES)
               for options in table.values() for w in options]
    phrases += list(shapes.PLURALS.values()) + list(shapes.BACKGROUND_WORDS.values()) + list(shapes.COUNT_WORDS)
    phrases += list(shapes.COLOUR_NAMES) + list(shapes.SIZE_NAMES)
    return WordTokenizer.fit(caption_corpus(2000) + phrases, max_length=max_length).to_dict()


def _conditioner_config(encoder: str, size: Any, tp: Any) -> dict[str, Any]:
    if encoder == "scratch":
        return {"type": "text", "tokenizer": _tokenizer_dict(tp.max_length), "embed_dim": size.context_dim,
                "depth": size.text_depth, "heads": max(1, size.context_dim // 32), "key": "caption"}
    return {"type": "hf-text", "source": {"kind": "minilm"}, "max_length": tp.max_length, "key": "caption"}


def build_t2i_ldm(identity: Mapping[str, Any]) -> nn.Module:
    """An (untrained) text-conditional :class:`~minildm.diffusion.ldm.LatentDiffusion` from its identity."""
    return build_latent_diffusion(identity)


def _dataset(preset: Preset, split: str = "train", n: int | None = None) -> Any:
    from ..data import load_dataset

    tp = preset.t2i
    holdout = list(tp.holdout) if split == "train" else None
    return load_dataset("shapes", split, tp.image_size, length=n or tp.n_train, seed=preset.seed, holdout=holdout)


# ------------------------------------------------------------------------------------------ sampling

@torch.no_grad()
def generate(ldm: nn.Module, prompts: Sequence[str], *, guidance_scale: float = 3.0, steps: int = 20,
             seed: int = 0, batch_size: int = 64, progress: bool = False, sampler: str = "ddim") -> torch.Tensor:
    """Images (N, 3, H, W) for ``prompts`` (one sample each; repeat a prompt for more), DDIM with
    classifier-free guidance. ValueError for an empty prompt list, an empty or over-long prompt, or
    ``guidance_scale`` < 0."""
    from ..conditioning.text import check_prompts

    prompts = check_prompts(prompts)
    if not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be a number >= 0 (0: unconditional, 1: no guidance), "
                         f"got {guidance_scale!r}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        out.append(ldm.sample(len(chunk), sampler=sampler, steps=steps, cond=chunk,
                              guidance_scale=float(guidance_scale), generator=g, progress=progress).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ evaluation

def _score_row(checker: nn.Module, images: torch.Tensor, requests: Sequence[Any], **labels: Any) -> dict[str, Any]:
    """One evaluation row: ``labels``, the checker's scores of ``images`` for ``requests``
    (:func:`~minildm.eval.checker.score_prompt_samples`), ``all_correct_<kind>`` per prompt kind, ``n``."""
    from ..eval.checker import score_prompt_samples

    score = score_prompt_samples(checker, images, requests)
    per_image = score.pop("per_image")
    row: dict[str, Any] = {**labels, **score, "n": len(requests)}
    for kind in sorted({r.kind for r in requests}):
        hits = [ok for ok, r in zip(per_image, requests) if r.kind == kind]
        row[f"all_correct_{kind}"] = sum(hits) / len(hits)
    return row


@torch.no_grad()
def evaluate_t2i(ldm: nn.Module, checker: nn.Module, preset: Preset | str | None = None, *,
                 scales: Sequence[float] | None = None, n_per_kind: int | None = None,
                 samples_per_prompt: int | None = None, steps: int | None = None, seed: int = 1,
                 feature_net: nn.Module | None = None, groups: Sequence[str] = ("seen", "held_out"),
                 progress: bool = False) -> list[dict[str, Any]]:
    """Compositional accuracy of ``ldm`` on the fixed prompt set, per group and guidance scale.

    Returns rows ``{"group", "scale", "acc_colour", "acc_shape", "acc_position", "acc_count",
    "all_correct", "all_correct_<kind>" for each kind, "n", and "fid"}`` (FID-style score of
    the group's samples against real validation images, with ``feature_net``).
    """
    from ..eval.fid import extract_features, fid_from_features
    from ..eval.prompts import prompt_set

    p = get_preset(preset)
    tp = p.t2i
    scales = list(tp.guidance_scales if scales is None else scales)
    if any(not s >= 0 for s in scales):
        raise ValueError(f"guidance scales must be >= 0, got {scales}")
    k = samples_per_prompt or tp.samples_per_prompt
    sets = prompt_set(n_per_kind or tp.n_eval_per_kind, tp.holdout, seed=p.seed)
    real_features = None
    if feature_net is not None:
        real = _dataset(p, "val", 256)
        real_features = extract_features(feature_net, torch.stack([real[i]["image"] for i in range(len(real))]))
    rows = []
    for group in groups:
        requests = [r for r in sets[group] for _ in range(k)]
        if not requests:
            continue
        for s in scales:
            images = generate(ldm, [r.prompt for r in requests], guidance_scale=s, steps=steps or tp.eval_ddim_steps,
                              seed=seed, progress=progress)
            row = _score_row(checker, images, requests, group=group, scale=float(s))
            if real_features is not None:
                row["fid"] = fid_from_features(real_features, extract_features(feature_net, images))
            rows.append(row)
    return rows


@torch.no_grad()
def reference_scores(checker: nn.Module, first_stage: nn.Module | None = None, preset: Preset | str | None = None, *,
                     n_per_kind: int | None = None, groups: Sequence[str] = ("seen", "held_out"),
                     batch_size: int = 64) -> list[dict[str, Any]]:
    """The evaluation's ceilings: the prompt set of :func:`evaluate_t2i` scored on the **real**
    validation scene each prompt was written from (``meta["scene"]``: a right answer, so this
    measures the checker) and, with a ``first_stage`` (anything with ``encode_latent`` and
    ``decode_latent``, e.g. ``ldm.first_stage_model``), on its reconstruction D(E(x)): a latent
    model draws only what the decoder can draw, so no training or guidance scores above that row
    by more than chance. Rows ``{"group", "source": "real" | "reconstructed", "acc_*",
    "all_correct", "all_correct_<kind>", "n"}``."""
    from ..data import load_dataset
    from ..eval.prompts import prompt_set

    p = get_preset(preset)
    tp = p.t2i
    sets = prompt_set(n_per_kind or tp.n_eval_per_kind, tp.holdout, seed=p.seed)
    device = next(checker.parameters()).device
    rows = []
    for group in groups:
        requests = sets[group]
        if not requests:
            continue
        ds = load_dataset("shapes", "val", tp.image_size, length=max(r.meta["scene"] for r in requests) + 1,
                          seed=p.seed, cache=False)
        images = torch.stack([ds[r.meta["scene"]]["image"] for r in requests])
        sources = {"real": images}
        if first_stage is not None:
            fs_device = next(first_stage.parameters(), torch.empty(0)).device
            sources["reconstructed"] = torch.cat([
                first_stage.decode_latent(first_stage.encode_latent(images[i:i + batch_size].to(fs_device)))
                .clamp(-1, 1).cpu() for i in range(0, len(images), batch_size)])
        rows += [_score_row(checker, x.to(device), requests, group=group, source=source)
                 for source, x in sources.items()]
    return rows


def best_scale(rows: Sequence[Mapping[str, Any]], group: str = "seen") -> float:
    """The guidance scale with the highest ``all_correct`` on ``group`` (smallest scale on ties)."""
    candidates = [r for r in rows if r["group"] == group]
    if not candidates:
        raise ValueError(f"no rows for group {group!r}")
    return max(candidates, key=lambda r: (r["all_correct"], -r["scale"]))["scale"]


# ------------------------------------------------------------------------------------------ callbacks

class EvalCurve:
    """Trainer callback: at ``points`` steps, the EMA model's validation loss (fixed latents, t and
    noise) and its all-correct rate on a few seen prompts, added to the log row as ``eval/loss``,
    ``eval/all_correct`` and ``eval/compute`` (model FLOPs of training so far). Rank 0 only."""

    def __init__(self, ldm: nn.Module, ema: Any, checker: nn.Module | None, preset: Preset, points: Sequence[int],
                 flops_per_step: float, grid: "ValidationGrid | None" = None, n_val: int = 128) -> None:
        from ..engine.distributed import dist_info

        self.ldm, self.ema, self.checker, self.preset = ldm, ema, checker, preset
        self.points, self.flops_per_step, self.grid = set(int(p) for p in points), float(flops_per_step), grid
        self.active = dist_info().rank == 0
        self._val: tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor] | None = None
        self.n_val = n_val

    @torch.no_grad()
    def _val_batch(self) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
        if self._val is None:
            ds = _dataset(self.preset, "val", self.n_val)
            items = [ds[i] for i in range(len(ds))]
            device = self.ldm.scale_factor.device
            z = torch.cat([self.ldm.encode_first_stage(torch.stack([it["image"] for it in items[i:i + 64]]).to(device))
                           for i in range(0, len(items), 64)])
            g = torch.Generator().manual_seed(12345)
            t = torch.randint(0, self.ldm.diffusion.num_timesteps, (len(items),), generator=g).to(device)
            noise = torch.randn(z.shape, generator=g).to(device)
            self._val = (z, [it["caption"] for it in items], t, noise)
        return self._val

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """Validation loss and seen-prompt accuracy of the current (EMA) weights."""
        from ..eval.checker import score_prompt_samples
        from ..eval.prompts import prompt_set

        tp = self.preset.t2i
        was_training = self.ldm.model.training
        self.ldm.eval()
        try:
            z, captions, t, noise = self._val_batch()
            losses = []
            for i in range(0, len(captions), 64):
                ctx, mask = self.ldm.get_learned_conditioning(captions[i:i + 64])
                kw = {"context_mask": mask} if mask is not None else {}
                losses.append(self.ldm.loss(z[i:i + 64], context=ctx, t=t[i:i + 64], noise=noise[i:i + 64], **kw)
                              * len(captions[i:i + 64]))
            out = {"eval/loss": float(sum(losses) / len(captions))}
            if self.checker is not None:
                requests = prompt_set(tp.curve_prompts, tp.holdout, seed=self.preset.seed)["seen"]
                images = generate(self.ldm, [r.prompt for r in requests], guidance_scale=tp.curve_scale,
                                  steps=max(2, tp.eval_ddim_steps // 2), seed=7)
                out["eval/all_correct"] = score_prompt_samples(self.checker, images, requests)["all_correct"]
        finally:
            self.ldm.train(was_training)
        return out

    def after_step(self, trainer: Any, record: dict[str, Any]) -> None:
        if trainer.step not in self.points:
            return
        record["eval/compute"] = trainer.step * self.flops_per_step
        if not self.active:
            return
        with self.ema.average_parameters():
            record.update(self.measure())
            if self.grid is not None:
                self.grid.save(trainer.step)


class ValidationGrid:
    """Saves a grid of samples for fixed validation prompts as ``<directory>/step_<k>.png``."""

    def __init__(self, ldm: nn.Module, directory: str | os.PathLike, prompts: Sequence[str] = VALIDATION_PROMPTS,
                 guidance_scale: float = 3.0, steps: int = 20, samples: int = 2) -> None:
        self.ldm, self.directory, self.prompts = ldm, Path(directory), list(prompts)
        self.guidance_scale, self.steps, self.samples = guidance_scale, steps, samples

    @torch.no_grad()
    def save(self, step: int) -> Path:
        from torchvision.utils import save_image

        prompts = [p for p in self.prompts for _ in range(self.samples)]
        was_training = self.ldm.model.training
        self.ldm.eval()
        try:
            images = generate(self.ldm, prompts, guidance_scale=self.guidance_scale, steps=self.steps, seed=3)
        finally:
            self.ldm.train(was_training)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{step:06d}.png"
        save_image((images + 1) / 2, path, nrow=self.samples * 2, padding=1)
        with open(self.directory / "prompts.json", "w") as f:
            json.dump({"prompts": self.prompts, "samples_per_prompt": self.samples,
                       "guidance_scale": self.guidance_scale}, f, indent=2)
        return path


# ------------------------------------------------------------------------------------------ artifact

@register("t2i-scratch-XS", encoder="scratch", size="XS")
@register("t2i-scratch-S", encoder="scratch", size="S")
@register("t2i-scratch-M", encoder="scratch", size="M")
@register("t2i-scratch-L", encoder="scratch", size="L")
@register("t2i-minilm-XS", encoder="minilm", size="XS")
@register("t2i-minilm-S", encoder="minilm", size="S")
@register("t2i-minilm-M", encoder="minilm", size="M")
@register("t2i-minilm-L", encoder="minilm", size="L")
class T2ISpec(LatentDiffusionRecipe):
    """Artifact ``t2i-{encoder}-{size}`` (artifact-spec interface of :mod:`minildm.recipes.store`).

    ``train`` accepts run options that do not change the model's identity: ``accumulate``
    (micro-batches per step), ``precision`` (``auto``, ``bf16``, ``fp16``, ``fp32``) and
    ``grad_checkpointing``.
    """

    def __init__(self, encoder: str, size: str) -> None:
        self.encoder, self.size = encoder, size
        self.name = t2i_name(encoder, size)
        enc = "a transformer trained from scratch" if encoder == "scratch" else "frozen all-MiniLM-L6-v2"
        self.description = f"text-to-image LDM, size {size}, text encoder: {enc}"

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        from .registry import get_spec

        tp = preset.t2i
        size = tp.get_size(self.size)
        fs = get_spec(self.first_stage_name(preset)).identity(preset)
        c = latent_channels(fs)
        cond = _conditioner_config(self.encoder, size, tp)
        context_dim = size.context_dim if self.encoder == "scratch" else 384
        unet = size.unet.config(c, context_dim=context_dim).to_dict()
        return {
            "model_class": "LatentDiffusion",
            "model": {"f": tp.f, "image_size": tp.image_size, "first_stage": fs, "unet": unet, "cond_stage": cond,
                      "diffusion": {"schedule": tp.schedule, "num_timesteps": tp.timesteps,
                                    "parameterization": tp.parameterization}},
            "recipe": {"kind": "t2i", "encoder": self.encoder, "size": self.size, "first_stage": first_stage_name(tp.f),
                       "batch_size": tp.batch_size, "lr": tp.lr, "ema_decay": tp.ema_decay, "p_uncond": tp.p_uncond,
                       "snr_gamma": tp.snr_gamma, "warmup_steps": tp.warmup_steps, "min_lr_ratio": tp.min_lr_ratio,
                       **({"loss_weighting": tp.loss_weighting} if tp.loss_weighting != "min_snr" else {}),
                       "n_train": tp.n_train, "holdout": list(tp.holdout), "seed": preset.seed,
                       "steps": steps if steps is not None else tp.steps, "curve_points": tp.curve_points,
                       "data": {"name": "shapes", "split": "train", "image_size": tp.image_size}},
            "preset": preset.name,
        }

    def command(self, preset: Preset, steps: int | None = None) -> str:
        return (f"python -m minildm train-ldm --cond text --encoder {self.encoder} --size {self.size} "
                f"--preset {preset.name}" + (f" --steps {steps}" if steps is not None else ""))

    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        return build_t2i_ldm(identity)

    def first_stage_name(self, preset: Preset) -> str:
        return first_stage_name(preset.t2i.f)

    def dependencies(self, preset: Preset, device: torch.device, progress: bool) -> dict[str, nn.Module]:
        """The first stage and the checker: built by rank 0 first, then loaded by every rank."""
        names = {"first_stage": self.first_stage_name(preset), "checker": "checker"}
        if is_main():
            with local_only():  # trained by rank 0 alone, not data-parallel
                for name in names.values():
                    load_or_train(name, preset, device=device, progress=progress)
        barrier()
        return {key: load_artifact(name, preset, device=device).model for key, name in names.items()}

    def prepare_model(self, ldm: nn.Module, recipe: Mapping[str, Any], *, grad_checkpointing: bool = False,
                      **options: Any) -> None:
        if grad_checkpointing:
            ldm.model.set_gradient_checkpointing(True)
        if hasattr(ldm.cond_stage_model, "cache_size"):  # a frozen encoder: keep the captions' encodings
            ldm.cond_stage_model.cache_size = min(recipe["n_train"], 20_000) + 16

    def latent_batches(self, ldm: nn.Module, preset: Preset, recipe: Mapping[str, Any],
                       progress: bool) -> LatentBatches:
        """The captioned training scenes (without the held-out pairs), encoded once; each rank encodes all."""
        train_set = _dataset(preset)
        ldm.compute_scale_factor(torch.stack([train_set[i]["image"] for i in range(min(1024, len(train_set)))]))
        return LatentBatches.encode_dataset(ldm, train_set, recipe["batch_size"], seed=recipe["seed"],
                                            cond_key="caption", progress=progress and dist_info().rank == 0)

    def task(self, ldm: nn.Module, recipe: Mapping[str, Any]) -> LatentDiffusionTask:
        return LatentDiffusionTask(ldm, recipe["lr"], p_uncond=recipe["p_uncond"], per_sample_rng=True,
                                   snr_gamma=recipe.get("snr_gamma"),
                                   loss_weighting=recipe.get("loss_weighting", "min_snr"), **lr_schedule(recipe))

    def trainer_settings(self, preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None, *,
                         accumulate: int = 1, precision: str = "auto", **options: Any) -> dict[str, Any]:
        """Checkpoints every ``checkpoint_every`` steps; a log row at every evaluation point."""
        tp = preset.t2i
        return {"max_steps": recipe["steps"], "accumulate": accumulate, "precision": precision,
                "checkpoint_every": tp.checkpoint_every if out_dir is not None else None,
                "log_every": math.gcd(10, self._curve_points(preset, recipe)[0])}

    @staticmethod
    def _curve_points(preset: Preset, recipe: Mapping[str, Any]) -> list[int]:
        n = preset.t2i.curve_points
        return sorted({max(1, round(recipe["steps"] * (i + 1) / n)) for i in range(n)})

    def add_callbacks(self, trainer: Trainer, ldm: nn.Module, ema: EMA, deps: Mapping[str, nn.Module],
                      preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None) -> dict[str, Any]:
        """Throughput (images/s, MFU) and the evaluation curve; the facts: model FLOPs per step (global
        batch, counted on one sample), the peak they are measured against, precision, world size."""
        task, data, dev = trainer.task, trainer.data, trainer.device
        probe = move_to_device(data.batch(0, part=(0, 1)), dev)
        probe["rng"] = BatchRandom(0, 0, 0, 1, 1, dev)
        if getattr(ldm.cond_stage_model, "cache_size", 0) > 0:
            # a frozen encoder runs once per caption, not per step: encode the probe's caption and the null
            # caption first, so that the count below reads them from the cache as training does
            captions = list(probe["cond"]) * 2
            with torch.no_grad():
                ldm.get_learned_conditioning(captions, drop=torch.arange(len(captions)) >= len(captions) // 2)
        flops_per_sample = count_flops(lambda: task.training_step(probe, 0, "unet")[0])
        ldm.model.zero_grad(set_to_none=True)
        ldm.cond_stage_model.zero_grad(set_to_none=True)
        flops_per_step = flops_per_sample * recipe["batch_size"]
        grid = ValidationGrid(ldm, Path(out_dir) / "samples", steps=preset.t2i.eval_ddim_steps) if out_dir is not None else None
        peak, peak_source = peak_flops(dev, trainer.dtype)
        world_size = dist_info().world_size
        trainer.callbacks += [Throughput(recipe["batch_size"], flops_per_step, peak, world_size),
                              EvalCurve(ldm, ema, deps["checker"], preset, self._curve_points(preset, recipe),
                                        flops_per_step, grid)]
        return {"flops_per_step": flops_per_step, "flops_per_sample": flops_per_sample, "peak_flops": peak,
                "peak_source": peak_source, "world_size": world_size, "accumulate": trainer.accumulate,
                "precision": str(trainer.dtype or torch.float32).removeprefix("torch."),
                "grad_checkpointing": bool(ldm.model.use_checkpoint)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        from .store import load_or_train

        model = model.to(device).eval()
        checker_art = load_or_train("checker", preset, device=device)
        feature_net = load_or_train("feature-net", preset, device=device).model
        rows = evaluate_t2i(model, checker_art.model, preset, feature_net=feature_net)
        return {"eval": rows, "best_scale": best_scale(rows),
                "reference": reference_scores(checker_art.model, model.first_stage_model, preset),
                "n_eval_per_kind": preset.t2i.n_eval_per_kind,
                "samples_per_prompt": preset.t2i.samples_per_prompt, "eval_ddim_steps": preset.t2i.eval_ddim_steps,
                "holdout": list(preset.t2i.holdout), "latent_shape": list(model.latent_shape),
                "scale_factor": float(model.scale_factor),
                "unet_params": sum(p.numel() for p in model.model.parameters()),
                "cond_params": sum(p.numel() for p in model.cond_stage_model.parameters()),
                "frozen_text_params": (sum(p.numel() for p in model.cond_stage_model.model.parameters())
                                       if hasattr(model.cond_stage_model, "model") else 0),
                "checker": {k: v for k, v in checker_art.metrics.items() if k.startswith("acc_")}}



# ------------------------------------------------------------------------------------------ scaling

def curve(log: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The evaluation points of a training log: ``step``, ``compute`` (FLOPs), ``loss``, ``all_correct``."""
    return [{"step": int(r["step"]) + 1, "compute": float(r["eval/compute"]), "loss": float(r["eval/loss"]),
             **({"all_correct": float(r["eval/all_correct"])} if "eval/all_correct" in r else {})}
            for r in log if "eval/loss" in r]



def scaling_study(preset: Preset | str | None = None, sizes: Sequence[str] | None = None, encoder: str = "scratch",
                  device: Any = None, progress: bool = True, root: Any = None,
                  out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train (or load) ``t2i-{encoder}-{size}`` for every size and collect loss and compositional
    accuracy against training compute. Writes ``scaling-{encoder}.json`` (curves, parameters, the
    command) beside the artifacts (or to ``out``) and returns its content."""
    from .store import artifact_root, load_or_train

    p = get_preset(preset)
    sizes = list(sizes or [s.name for s in p.t2i.sizes])
    result: dict[str, Any] = {"preset": p.name, "encoder": encoder,
                              "command": f"python -m minildm scaling-study --preset {p.name} --encoder {encoder}"
                                         + (f" --sizes {' '.join(sizes)}" if sizes != [s.name for s in p.t2i.sizes] else ""),
                              "models": []}
    for size in sizes:
        art = load_or_train(t2i_name(encoder, size), p, device=device, progress=progress, root=root)
        seen = [r for r in art.metrics["eval"] if r["group"] == "seen"]
        held = [r for r in art.metrics["eval"] if r["group"] == "held_out"]
        result["models"].append({
            "size": size, "params": art.metrics["unet_params"] + art.metrics["cond_params"],
            "unet_params": art.metrics["unet_params"], "flops_per_step": art.metrics.get("flops_per_step"),
            "steps": art.metrics["steps"], "curve": curve(art.log),
            "final_all_correct_seen": max(r["all_correct"] for r in seen) if seen else None,
            "final_all_correct_held_out": max(r["all_correct"] for r in held) if held else None,
            "artifact": art.name})
    path = Path(out) if out is not None else artifact_root(root) / p.name / f"scaling-{encoder}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    result["path"] = str(path)
    return result
