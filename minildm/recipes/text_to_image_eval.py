"""How the text-to-image models of notebook 05 are judged: sampling with guidance, compositional accuracy
on the fixed prompt set (seen and held-out colour-shape pairs, judged by the content checker for colour,
shape, count and position), the evaluation's ceilings (real scenes and their first-stage
reconstructions), and the Trainer callbacks that measure a run as it trains (validation loss and
accuracy curve, sample grids). Taught in notebook 05."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import check_number
from .presets import Preset, get_preset

__all__ = ["EvalCurve", "VALIDATION_PROMPTS", "ValidationGrid", "best_scale", "evaluate_t2i", "generate", "generate_batches",
           "reference_scores", "t2i_dataset"]


#: prompts of the validation grids saved during training (the last two hold held-out pairs)
VALIDATION_PROMPTS = ("a blue circle", "a green star in the top left", "two shapes: a yellow square and a pink cross",
                      "a purple hexagon at the bottom", "a red star", "two shapes: an orange circle and a cyan triangle")


def t2i_dataset(preset: Preset, split: str = "train", n: int | None = None) -> Any:
    from ..data import load_dataset

    tp = preset.t2i
    holdout = list(tp.holdout) if split == "train" else None
    return load_dataset("shapes", split, tp.image_size, length=n or tp.n_train, seed=preset.seed, holdout=holdout)


def generate_batches(ldm: nn.Module, prompts: Sequence[str], *, guidance_scale: float = 3.0, steps: int = 20,
                     seed: int = 0, batch_size: int = 64, progress: bool = False,
                     sampler: str = "ddim") -> Iterator[torch.Tensor]:
    """:func:`generate`, one batch of ``batch_size`` images (B, 3, H, W) at a time, so that any number of
    samples can be written to disk as they come (the same images, in the same order, as ``generate``)."""
    from ..conditioning.text import check_prompts

    prompts = check_prompts(prompts)
    guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0)
    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        with torch.no_grad():
            yield ldm.sample(len(chunk), sampler=sampler, steps=steps, cond=chunk, guidance_scale=guidance_scale,
                             generator=g, progress=progress).cpu()


def generate(ldm: nn.Module, prompts: Sequence[str], *, guidance_scale: float = 3.0, steps: int = 20,
             seed: int = 0, batch_size: int = 64, progress: bool = False, sampler: str = "ddim") -> torch.Tensor:
    """Images (N, 3, H, W) for ``prompts`` (one sample each; repeat a prompt for more), DDIM with
    classifier-free guidance. ValueError for an empty prompt list, an empty or over-long prompt, or
    a ``guidance_scale`` that is not a finite number >= 0."""
    return torch.cat(list(generate_batches(ldm, prompts, guidance_scale=guidance_scale, steps=steps, seed=seed,
                                           batch_size=batch_size, progress=progress, sampler=sampler)))


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
    scales = [check_number("guidance scale", s, minimum=0) for s in scales]
    k = samples_per_prompt or tp.samples_per_prompt
    sets = prompt_set(n_per_kind or tp.n_eval_per_kind, tp.holdout, seed=p.seed)
    real_features = None
    if feature_net is not None:
        real = t2i_dataset(p, "val", 256)
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
    """The guidance scale with the highest ``all_correct`` on ``group``; ties (e.g. a model that gets no prompt
    entirely right) go to the highest mean accuracy over the attributes (colour, shape, count, position), then
    to the smallest scale."""
    candidates = [r for r in rows if r["group"] == group]
    if not candidates:
        raise ValueError(f"no rows for group {group!r}")
    attributes = ("acc_colour", "acc_shape", "acc_count", "acc_position")

    def mean_accuracy(r: Mapping[str, Any]) -> float:
        return sum(float(r.get(k, 0.0)) for k in attributes) / len(attributes)

    return max(candidates, key=lambda r: (r["all_correct"], mean_accuracy(r), -r["scale"]))["scale"]


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
            ds = t2i_dataset(self.preset, "val", self.n_val)
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
