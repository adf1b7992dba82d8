"""The conditional latent diffusion models of notebook 04: class-conditional and layout-to-image.

Both are LDMs on the f = 4 first stage of notebook 02 whose UNet reads the condition through
cross-attention (paper Sec. 3.3, Eq. 3): τ_θ is a :class:`~minildm.conditioning.classes.ClassEmbedder`
over the 56 (shape, colour) classes of the main object (artifact ``ldm-class``) or a
:class:`~minildm.conditioning.layout.LayoutEmbedder` over the objects' boxes, shapes and colours
(artifact ``ldm-layout``). τ_θ and ε_θ are trained together, with conditioning dropout so that
the same network also predicts ε_θ(z_t, t, ∅) for classifier-free guidance.

Evaluation (the artifact's metrics, also :func:`guidance_sweep`): for each guidance scale s,
``n_eval`` samples for conditions taken from the validation split are judged by the content
checker (:mod:`minildm.eval.checker`), and their FID-style score against real validation images
(:mod:`minildm.eval.fid`) and their diversity (mean pairwise feature distance between samples of the
same condition) measure the other side of the trade-off: guidance buys accuracy with diversity.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .presets import Preset
from .registry import register
from ..engine.batches import LatentBatches
from .latent_diffusion import LatentDiffusionRecipe, build_latent_diffusion, latent_channels, schedule_ends

__all__ = ["CONDITIONINGS", "CondLDMSpec", "cond_name", "class_label", "build_cond_ldm", "conditions_from_items",
           "guidance_sweep", "SAMPLES_PER_CONDITION"]

#: the conditional models of notebook 04
CONDITIONINGS = ("class", "layout")
#: samples drawn per condition in the evaluation (their spread is the diversity)
SAMPLES_PER_CONDITION = 4


def cond_name(kind: str) -> str:
    """Artifact name of a conditional model: ``ldm-class`` or ``ldm-layout``."""
    if kind not in CONDITIONINGS:
        raise ValueError(f"unknown conditioning {kind!r}: choose one of {', '.join(CONDITIONINGS)}")
    return f"ldm-{kind}"


def _conditioner_config(kind: str, preset: Preset) -> dict[str, Any]:
    from ..data.shapes import COLOUR_NAMES, SHAPE_NAMES

    cp = preset.cond
    if kind == "class":
        return {"type": "class", "n_classes": len(SHAPE_NAMES) * len(COLOUR_NAMES), "embed_dim": cp.context_dim,
                "key": "label"}
    return {"type": "layout", "n_shapes": len(SHAPE_NAMES), "n_colours": len(COLOUR_NAMES),
            "embed_dim": cp.context_dim, "max_objects": 3, "depth": cp.layout_depth,
            "heads": max(1, cp.context_dim // 32), "n_freqs": 8, "key": "objects"}


def conditions_from_items(kind: str, items: Sequence[Mapping[str, Any]]) -> Any:
    """The conditions y of data items (shapes items with ``label="shape_colour"``): labels (N,) for
    ``class``; for ``layout``, the layout tensors of :func:`~minildm.conditioning.layout.layout_from_objects`."""
    from ..conditioning.layout import layout_from_objects

    if kind == "class":
        return torch.tensor([int(it["label"]) for it in items])
    return layout_from_objects([it["objects"] for it in items], 3)


def build_cond_ldm(identity: Mapping[str, Any]) -> nn.Module:
    """An (untrained) conditional :class:`~minildm.diffusion.ldm.LatentDiffusion` from its identity."""
    return build_latent_diffusion(identity)


def _items(split: str, n: int, preset: Preset, offset: int = 0) -> list[dict[str, Any]]:
    from ..data import load_dataset

    ds = load_dataset("shapes", split, preset.cond.image_size, length=offset + n, seed=preset.seed,
                      label="shape_colour")
    return [ds[i] for i in range(offset, offset + n)]


@torch.no_grad()
def guidance_sweep(ldm: nn.Module, kind: str, checker: nn.Module, feature_net: nn.Module, preset: Preset,
                   scales: Sequence[float] | None = None, n: int | None = None, steps: int | None = None,
                   seed: int = 0, progress: bool = False) -> list[dict[str, float]]:
    """Checker accuracy, FID-style score and diversity of conditional samples per guidance scale.

    ``n`` samples (default ``preset.cond.n_eval``) for ``n / 4`` conditions from the validation
    split, 4 samples each, DDIM with ``steps`` steps, the same seeds for every scale. Returns one
    row per scale: ``scale``, the checker's scores (``acc_shape``, ``acc_colour``, ``acc_all`` for
    class; ``found``, ``iou``, ``centre_error``, ``acc_shape``, ``acc_position``, ``all_correct``
    for layout), ``fid`` and ``diversity``.
    """
    from ..eval.checker import score_class_samples, score_layout_samples
    from ..eval.fid import extract_features, fid_from_features

    cp = preset.cond
    scales = list(cp.guidance_scales if scales is None else scales)
    n = n or cp.n_eval
    steps = steps or cp.eval_ddim_steps
    k = SAMPLES_PER_CONDITION
    n_cond = max(1, n // k)
    items = [it for it in _items("val", n_cond, preset) for _ in range(k)]
    real = torch.stack([it["image"] for it in _items("val", max(n, 2), preset, offset=n_cond)])
    real_features = extract_features(feature_net, real)
    cond = conditions_from_items(kind, items)
    rows = []
    for s in scales:
        g = torch.Generator().manual_seed(seed)
        images = []
        for start in range(0, len(items), 64):
            stop = min(start + 64, len(items))
            c = cond[start:stop] if kind == "class" else {key: v[start:stop] for key, v in cond.items()}
            images.append(ldm.sample(stop - start, steps=steps, cond=c, guidance_scale=float(s), generator=g,
                                     progress=progress).cpu())
        x = torch.cat(images)
        if kind == "class":
            score = score_class_samples(checker, x, torch.tensor([it["objects"][0]["shape_id"] for it in items]),
                                        torch.tensor([it["objects"][0]["colour_id"] for it in items]))
        else:
            score = score_layout_samples(checker, x, [it["objects"] for it in items])
            score.pop("n_objects")
        feats = extract_features(feature_net, x)
        groups = feats.reshape(n_cond, k, -1)
        diversity = torch.cdist(groups, groups).sum() / (n_cond * k * (k - 1))
        rows.append({"scale": float(s), **score, "fid": fid_from_features(real_features, feats),
                     "diversity": float(diversity)})
    return rows


@register("ldm-class", kind="class")
@register("ldm-layout", kind="layout")
class CondLDMSpec(LatentDiffusionRecipe):
    """Artifact ``ldm-class`` / ``ldm-layout`` (artifact-spec interface of :mod:`minildm.recipes.store`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = cond_name(kind)
        self.description = ("class-conditional LDM (main object's shape and colour)" if kind == "class"
                            else "layout-to-image LDM (boxes with shape and colour)")

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        from .registry import get_spec

        cp = preset.cond
        weighting = cp.loss_weighting_for(self.kind)
        fs = get_spec(self.first_stage_name(preset)).identity(preset)
        c = latent_channels(fs)
        unet = cp.unet.config(c, context_dim=cp.context_dim, pooled_context=cp.pooled_context).to_dict()
        return {
            "model_class": "LatentDiffusion",
            "model": {"f": cp.f, "image_size": cp.image_size, "first_stage": fs, "unet": unet,
                      "cond_stage": _conditioner_config(self.kind, preset),
                      "diffusion": {"schedule": cp.schedule, "num_timesteps": cp.timesteps,
                                    "parameterization": cp.parameterization_for(self.kind),
                                    **schedule_ends(cp.linear_start, cp.linear_end)}},
            "recipe": {"kind": f"ldm-{self.kind}", "first_stage": self.first_stage_name(preset), "batch_size": cp.batch_size,
                       "lr": cp.lr, "ema_decay": cp.ema_decay, "p_uncond": cp.p_uncond, "n_train": cp.n_train,
                       **({"snr_gamma": cp.snr_gamma} if cp.snr_gamma is not None else {}),
                       **({"loss_weighting": weighting} if weighting != "min_snr" else {}),
                       **({"warmup_steps": cp.warmup_steps} if cp.warmup_steps else {}),
                       **({"min_lr_ratio": cp.min_lr_ratio} if cp.min_lr_ratio is not None else {}),
                       "seed": preset.seed, "steps": steps if steps is not None else cp.steps_for(self.kind),
                       "data": {"name": "shapes", "split": "train", "image_size": cp.image_size,
                                "label": "shape_colour"}},
            "preset": preset.name,
        }

    def command(self, preset: Preset, steps: int | None = None) -> str:
        return (f"python -m minildm train-cond --preset {preset.name} --cond {self.kind}"
                + (f" --steps {steps}" if steps is not None else ""))

    def first_stage_name(self, preset: Preset) -> str:
        from .first_stage import first_stage_name

        return first_stage_name(preset.cond.f)

    def latent_batches(self, ldm: nn.Module, preset: Preset, recipe: Mapping[str, Any],
                       progress: bool) -> LatentBatches:
        """The first ``n_train`` training scenes with their conditions (labels or layouts)."""
        items = _items("train", recipe["n_train"], preset)
        images = torch.stack([it["image"] for it in items])
        ldm.compute_scale_factor(images[:1024])
        return LatentBatches.encode(ldm, images, recipe["batch_size"], seed=recipe["seed"],
                                    cond=conditions_from_items(self.kind, items))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        from .store import load_or_train

        model = model.to(device).eval()
        checker_art = load_or_train("checker", preset, device=device)
        checker = checker_art.model
        feature_net = load_or_train("feature-net", preset, device=device).model
        rows = guidance_sweep(model, self.kind, checker, feature_net, preset, seed=preset.seed + 1)
        best = max(rows, key=lambda row: best_scale_key(self.kind, row))
        return {"sweep": rows, "best_scale": best["scale"], "n_eval": preset.cond.n_eval,
                "eval_ddim_steps": preset.cond.eval_ddim_steps, "latent_shape": list(model.latent_shape),
                "scale_factor": float(model.scale_factor),
                "unet_params": sum(p.numel() for p in model.model.parameters()),
                "cond_params": sum(p.numel() for p in model.cond_stage_model.parameters()),
                "checker": {k: v for k, v in checker_art.metrics.items() if k.startswith(("acc_", "layout_"))}}


def best_scale_key(kind: str, row: Mapping[str, float]) -> tuple[float, ...]:
    """What "best guidance scale" maximises: the fraction of samples right in everything, then a
    finer measure (shape + colour accuracy for class; box IoU for layout), then the smaller scale."""
    if kind == "class":
        return (row["acc_all"], row["acc_shape"] + row["acc_colour"], -row["scale"])
    return (row["all_correct"], row["iou"], -row["scale"])




def class_label(shape: str | int, colour: str | int) -> int:
    """Class id of ``ldm-class`` for a (shape, colour) request: shape_id · 8 + colour_id, the shapes
    data's ``shape_colour`` label; names or ids."""
    from ..data.shapes import COLOUR_NAMES, SHAPE_NAMES

    s = SHAPE_NAMES.index(shape) if isinstance(shape, str) and shape in SHAPE_NAMES else shape
    c = COLOUR_NAMES.index(colour) if isinstance(colour, str) and colour in COLOUR_NAMES else colour
    if not isinstance(s, int) or not 0 <= s < len(SHAPE_NAMES):
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPE_NAMES)}")
    if not isinstance(c, int) or not 0 <= c < len(COLOUR_NAMES):
        raise ValueError(f"unknown colour {colour!r}; allowed: {', '.join(COLOUR_NAMES)}")
    return s * len(COLOUR_NAMES) + c
