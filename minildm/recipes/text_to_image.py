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

Evaluation (:mod:`minildm.recipes.text_to_image_eval`, ``python -m minildm evaluate``): the fixed prompt set of
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
from .latent_diffusion import LatentDiffusionRecipe, build_latent_diffusion, latent_channels, schedule_ends
from .store import load_or_train, load_trained
from .text_to_image_eval import EvalCurve
from .text_to_image_eval import ValidationGrid
from .text_to_image_eval import best_scale
from .text_to_image_eval import evaluate_t2i
from .text_to_image_eval import reference_scores
from .text_to_image_eval import t2i_dataset

__all__ = ["TEXT_ENCODERS", "t2i_name", "parse_t2i_name", "T2ISpec", "build_t2i_ldm", "curve", "learning_curve_t2i",
           "objective_start", "scaling_study"]

#: text encoders of notebook 05: trained from scratch with the UNet (the paper), frozen pretrained (SD)
TEXT_ENCODERS = ("scratch", "minilm")


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

    def shipped_grids(self, preset: Preset) -> str:
        """Which validation grids ship with the weights: ``"all"`` for the preset's main model (the scratch encoder at
        the main size: notebook 05 shows how its samples change during training), ``"last"`` for the others (the
        frozen encoder's model and the scaling study's other sizes)."""
        return "all" if (self.encoder, self.size) == ("scratch", preset.t2i.size) else "last"

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        from .registry import get_spec

        tp = preset.t2i
        size = tp.get_size(self.size)
        fs = get_spec(self.first_stage_name(preset)).identity(preset)
        c = latent_channels(fs)
        cond = _conditioner_config(self.encoder, size, tp)
        context_dim = size.context_dim if self.encoder == "scratch" else 384
        unet = size.unet.config(c, context_dim=context_dim, pooled_context=tp.pooled_context).to_dict()
        return {
            "model_class": "LatentDiffusion",
            "model": {"f": tp.f, "image_size": tp.image_size, "first_stage": fs, "unet": unet, "cond_stage": cond,
                      "diffusion": {"schedule": tp.schedule, "num_timesteps": tp.timesteps,
                                    "parameterization": tp.parameterization,
                                    **schedule_ends(tp.linear_start, tp.linear_end)}},
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
        return {key: load_trained(name, preset, device=device).model for key, name in names.items()}

    def prepare_model(self, ldm: nn.Module, recipe: Mapping[str, Any], *, grad_checkpointing: bool = False,
                      **options: Any) -> None:
        if grad_checkpointing:
            ldm.model.set_gradient_checkpointing(True)
        if hasattr(ldm.cond_stage_model, "cache_size"):  # a frozen encoder: keep the captions' encodings
            ldm.cond_stage_model.cache_size = min(recipe["n_train"], 50_000) + 16

    def latent_batches(self, ldm: nn.Module, preset: Preset, recipe: Mapping[str, Any],
                       progress: bool) -> LatentBatches:
        """The captioned training scenes (without the held-out pairs), encoded once; each rank encodes all."""
        train_set = t2i_dataset(preset)
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
             **({"all_correct": float(r["eval/all_correct"])} if "eval/all_correct" in r else {}),
             **({"time_s": float(r["time_s"])} if "time_s" in r else {})}
            for r in log if "eval/loss" in r]


def objective_start(art: Any) -> int:
    """The step after which ``art``'s training log measures the loss it is trained on now: the steps of its
    stretches before the last one that changed the target (ε to v, the schedule: see
    :data:`~minildm.recipes.shipped.RETARGET_KEYS`), read from its provenance if it has one (a shipped model);
    0 if none did. Validation losses of different targets are not comparable (an ε-MSE is not a v-MSE)."""
    from .shipped import read_provenance

    if not (Path(art.path) / "provenance.json").is_file():
        return 0
    start, steps = 0, 0
    for s in read_provenance(Path(art.path), art.name, get_preset(art.config.get("preset")))["stretches"]:
        if (s.get("init_from") or {}).get("retargeted"):
            start = steps
        steps += int(s.get("steps") or 0)
    return start


def learning_curve_t2i(name: str, preset: Preset | str | None = None,
                       log: Sequence[Mapping[str, Any]] = ()) -> dict[str, list[dict[str, float]]]:
    """All-correct against training core-hours of the shipped text-to-image model ``name``, over every stretch
    of its training (notebook 05). ``stretches``: one point per stretch from its full evaluation, the best
    guidance scale of each group (``seen``, ``held_out``, with ``scale_seen``, ``scale_held_out``), at the
    ``steps`` and ``core_hours`` accumulated by then. ``checkpoints``: the evaluation points within training in
    ``log`` (the shipped log, whose steps and times count on over the stretches): ``seen`` at the preset's
    ``curve_scale`` on ``curve_prompts`` prompts per kind, fewer samples than a stretch's evaluation. Both are
    empty if ``name`` is not shipped; stretches shipped before their evaluation was recorded are left out."""
    from .shipped import learning_curve

    points = learning_curve(name, preset)
    stretches = []
    for pt in points:
        rows = pt["metrics"].get("eval") or []
        best = {g: max((r for r in rows if r["group"] == g), key=lambda r: r["all_correct"], default=None)
                for g in ("seen", "held_out")}
        if best["seen"] is None or best["held_out"] is None:
            continue
        stretches.append({"steps": pt["steps"], "core_hours": pt["core_hours"],
                          **{g: r["all_correct"] for g, r in best.items()},
                          **{f"scale_{g}": r["scale"] for g, r in best.items()}})
    # a checkpoint's core-hours: those before its stretch plus its wall time into the stretch times the threads
    checkpoints = []
    for c in curve(log) if points else []:
        if "all_correct" not in c or "time_s" not in c:
            continue
        before = {"steps": 0, "train_time_s": 0.0, "core_hours": 0.0}
        for pt in points:
            if c["step"] <= pt["steps"] or pt is points[-1]:
                hours = before["core_hours"] + (c["time_s"] - before["train_time_s"]) * pt["threads"] / 3600
                break
            before = pt
        checkpoints.append({"step": c["step"], "core_hours": hours, "seen": c["all_correct"]})
    return {"stretches": stretches, "checkpoints": checkpoints}


def scaling_study(preset: Preset | str | None = None, sizes: Sequence[str] | None = None, encoder: str = "scratch",
                  device: Any = None, progress: bool = True, root: Any = None,
                  out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train (or load) ``t2i-{encoder}-{size}`` for every size and collect loss and compositional
    accuracy against training compute: each model's ``curve`` from ``curve_from_step`` on
    (:func:`objective_start`: a shipped model continued on another target keeps only the points measured on
    the one it is trained on now; its compute still counts from its first step). Writes
    ``scaling-{encoder}.json`` (curves, parameters, the command) beside the artifacts (or to ``out``) and
    returns its content."""
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
        start = objective_start(art)
        result["models"].append({
            "size": size, "params": art.metrics["unet_params"] + art.metrics["cond_params"],
            "unet_params": art.metrics["unet_params"], "flops_per_step": art.metrics.get("flops_per_step"),
            "steps": art.metrics["steps"], "curve_from_step": start,
            "curve": [c for c in curve(art.log) if c["step"] > start],
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
