"""Command line: ``python -m minildm <command> ...`` (also the ``minildm`` console script).

Each command is a :class:`Command` in :data:`COMMANDS`: a function that adds its arguments to a
subparser and a function that runs it. The commands follow the notebooks: ``train-ae`` (01),
``ablate-f`` and ``train-features`` (02), ``train-ldm`` (03, and 05 with ``--cond text``),
``train-checker``, ``train-first-stage`` and ``train-cond`` (04), ``evaluate``, ``sample`` and
``scaling-study`` (05), ``reevaluate`` (any artifact), ``check-data`` (an image folder of your own).

Errors in the arguments exit with status 2 and argparse's usage message; a ValueError raised by
the library (unknown preset, unusable checkpoint, ...) is printed as ``error: ...`` on stderr,
also with status 2 and without a traceback. Warnings (e.g. a ``sample`` prompt made mostly of words
the text encoder does not know) are printed as one line ``warning: ...`` on stderr.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` and ``run(args) -> exit status``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _preset_arg(value: str) -> str:
    from .recipes.presets import PRESET_NAMES

    name = value.strip().lower()
    if name not in PRESET_NAMES:
        raise argparse.ArgumentTypeError(f"unknown preset {value!r} (choose from {', '.join(PRESET_NAMES)})")
    return name


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", type=_preset_arg, default=None,
                        help="smoke | cpu | gpu (default: $MINILDM_PRESET, else gpu with CUDA, else cpu)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps (default: $MINILDM_DEVICE, else cuda > mps > cpu)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="artifact root (default: $MINILDM_ARTIFACTS, else ./artifacts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------ train-ae
def _train_ae_arguments(parser: argparse.ArgumentParser) -> None:
    from .recipes.autoencoder import REGULARIZERS, VARIANTS

    _add_common(parser)
    parser.add_argument("--variant", choices=list(VARIANTS), default="l1-lpips-gan",
                        help="reconstruction loss (default: l1-lpips-gan, the paper's)")
    parser.add_argument("--regularizer", choices=list(REGULARIZERS), default="kl",
                        help="latent regulariser: kl (AutoencoderKL) or vq (VQModel); default kl")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="training steps (default: the preset's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its checkpoint (<artifact>.partial/)")


def _train_ae(args: argparse.Namespace) -> int:
    from .recipes.presets import get_preset
    from .recipes.store import build_artifact, format_metrics

    preset = get_preset(args.preset)
    name = f"ae-{args.regularizer}-{args.variant}"
    artifact = build_artifact(name, preset, steps=args.steps, device=args.device,
                              progress=not args.no_progress, resume=args.resume, root=args.out)
    print(f"{name} (preset {preset.name}): reconstruction of {artifact.metrics.get('n', '?')} "
          "shapes val images")
    print(format_metrics(artifact.metrics))
    print(f"saved to {artifact.path}")
    print(f"rebuild with: {artifact.command}")
    return 0


# ------------------------------------------------------------------------------------ train-first-stage
def _train_first_stage_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--f", type=_factor_arg, default=None, metavar="F",
                        help="downsampling factor (default: the one of the preset's conditional LDMs)")
    parser.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its checkpoint (<artifact>.partial/)")


def _train_first_stage(args: argparse.Namespace) -> int:
    from .recipes.first_stage import FACTORS, first_stage_name
    from .recipes.presets import get_preset
    from .recipes.store import build_artifact, format_metrics

    preset = get_preset(args.preset)
    f = args.f or preset.cond.f
    if f not in FACTORS:
        raise ValueError(f"f={f}: the first stage has factors {' '.join(map(str, FACTORS))}")
    artifact = build_artifact(first_stage_name(f), preset, steps=args.steps, device=args.device,
                              progress=not args.no_progress, resume=args.resume, root=args.out)
    ceiling = artifact.metrics.pop("ceiling", {})
    print(f"{artifact.name} (preset {preset.name}): reconstruction of {artifact.metrics.get('n', '?')} "
          "shapes val images")
    print(format_metrics(artifact.metrics))
    if ceiling:
        keys = ("acc_shape", "acc_colour", "acc_count", "acc_position")
        print("checker on the reconstructions: " + ", ".join(f"{k.removeprefix('acc_')} {ceiling[k]:.1%}" for k in keys))
    print(f"saved to {artifact.path}")
    print(f"rebuild with: {artifact.command}")
    return 0


# ------------------------------------------------------------------------------------ ablate-f
def _factor_arg(value: str) -> int:
    from .models.encoder_decoder import check_downsampling_factor

    try:
        return check_downsampling_factor(int(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _ablate_f_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--f", type=_factor_arg, nargs="+", default=None, metavar="F",
                        help="downsampling factors to build (default: all of the preset's, 1 2 4 8 16 32)")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="training steps per autoencoder (default: the preset's)")
    parser.add_argument("--retrain", action="store_true", help="train again even where an artifact exists")


def _ablate_f(args: argparse.Namespace) -> int:
    from .recipes.ablation import ablation_name, ablation_table, format_ablation_table
    from .recipes.presets import get_preset
    from .recipes.store import artifact_dir, build_artifact

    preset = get_preset(args.preset)
    factors = args.f or list(preset.ablation.factors)
    for f in factors:
        if f not in preset.ablation.factors:
            raise ValueError(f"f={f} is not in the ablation of preset {preset.name!r}: "
                             f"choose from {' '.join(map(str, preset.ablation.factors))}")
        if args.retrain or args.steps is not None or not artifact_dir(ablation_name(f), preset, args.out).is_dir():
            build_artifact(ablation_name(f), preset, steps=args.steps, device=args.device,
                           progress=not args.no_progress, root=args.out)
    if args.steps is None:
        rows = ablation_table(preset, factors=factors, train=False, device=args.device, root=args.out,
                              save=args.f is None)
        print(f"downsampling-factor ablation (preset {preset.name}, shapes val split)")
        print(format_ablation_table(rows))
    return 0


# ------------------------------------------------------------------------------- train-features
def _train_features_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")


def _train_features(args: argparse.Namespace) -> int:
    from .recipes.presets import get_preset
    from .recipes.store import build_artifact

    preset = get_preset(args.preset)
    art = build_artifact("feature-net", preset, steps=args.steps, device=args.device,
                         progress=not args.no_progress, resume=args.resume, root=args.out)
    print(f"feature-net (preset {preset.name}), accuracy on {art.metrics['n']} shapes val images: "
          + ", ".join(f"{k[4:]} {v:.3f}" for k, v in art.metrics.items() if k.startswith("acc_")))
    print(f"saved to {art.path}")
    return 0


# -------------------------------------------------------------------------------- train-checker
def _train_checker(args: argparse.Namespace) -> int:
    from .recipes.presets import get_preset
    from .recipes.store import build_artifact

    preset = get_preset(args.preset)
    art = build_artifact("checker", preset, steps=args.steps, device=args.device,
                         progress=not args.no_progress, resume=args.resume, root=args.out)
    m = art.metrics
    print(f"checker (preset {preset.name}) on {m['n']} shapes val images: main object shape {m['acc_shape']:.3f}, "
          f"colour {m['acc_colour']:.3f}, count {m['acc_count']:.3f}, position {m['acc_position']:.3f}; "
          f"objects found {m['layout_found']:.3f}, box IoU {m['layout_iou']:.3f}, "
          f"shape per object {m['layout_acc_shape']:.3f}")
    print(f"saved to {art.path}")
    return 0


# ----------------------------------------------------------------------------------- train-cond
def _train_cond_arguments(parser: argparse.ArgumentParser) -> None:
    _train_features_arguments(parser)
    parser.add_argument("--cond", choices=["class", "layout"], nargs="+", default=["class", "layout"],
                        help="which conditional model(s): class-conditional, layout-to-image (default: both)")


def _train_cond(args: argparse.Namespace) -> int:
    from .recipes.conditional import cond_name
    from .recipes.presets import get_preset
    from .recipes.store import artifact_dir, build_artifact, load_artifact

    preset = get_preset(args.preset)
    for kind in args.cond:
        name = cond_name(kind)
        if args.steps is not None or args.resume or not artifact_dir(name, preset, args.out).is_dir():
            art = build_artifact(name, preset, steps=args.steps, device=args.device, progress=not args.no_progress,
                                 resume=args.resume, root=args.out)
        else:
            art = load_artifact(name, preset, device=args.device, root=args.out)
        m = art.metrics
        keys = [k for k in m["sweep"][0] if k != "scale"]
        print(f"{name} (preset {preset.name}): {m['n_eval']} DDIM-{m['eval_ddim_steps']} samples per guidance scale, "
              f"judged by the checker; best scale {m['best_scale']:g}")
        print("scale  " + " ".join(f"{k:>12}" for k in keys))
        for row in m["sweep"]:
            print(f"{row['scale']:5g}  " + " ".join(f"{row[k]:>12.3f}" for k in keys))
        print(f"saved to {art.path}")
    return 0


# ------------------------------------------------------------------------------------ train-ldm
def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--model", default="t2i-scratch-M",
                        help="text-to-image artifact t2i-<scratch|minilm>-<size> (trained if missing)")
    parser.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                        help="guidance scales (default: the preset's); 0 = unconditional, 1 = no guidance")
    parser.add_argument("--n-per-kind", type=_positive_int, default=None,
                        help="prompts per kind (single, position, two) and group (default: the preset's)")
    parser.add_argument("--samples-per-prompt", type=_positive_int, default=None, help="default: the preset's")
    parser.add_argument("--steps", type=_positive_int, default=None, help="DDIM steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed")


def _evaluate(args: argparse.Namespace) -> int:
    from .recipes.presets import get_preset
    from .recipes.store import load_or_train
    from .recipes.text_to_image_eval import evaluate_t2i
    from .recipes.text_to_image import parse_t2i_name

    preset = get_preset(args.preset)
    parse_t2i_name(args.model)
    if args.scales is not None and any(not s >= 0 for s in args.scales):
        raise ValueError(f"guidance scales must be >= 0, got {args.scales}")
    progress = not args.no_progress
    art = load_or_train(args.model, preset, device=args.device, progress=progress, root=args.out)
    checker = load_or_train("checker", preset, device=args.device, progress=progress, root=args.out).model
    features = load_or_train("feature-net", preset, device=args.device, progress=progress, root=args.out).model
    rows = evaluate_t2i(art.model, checker, preset, scales=args.scales, n_per_kind=args.n_per_kind,
                        samples_per_prompt=args.samples_per_prompt, steps=args.steps, seed=args.seed,
                        feature_net=features, progress=progress)
    print(f"{args.model} (preset {preset.name}): compositional accuracy read by the checker, "
          f"seen vs held-out (colour, shape) pairs {', '.join(preset.t2i.holdout)}")
    _print_t2i_eval(rows)
    return 0


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    from .diffusion.samplers import SAMPLERS

    _add_common(parser)
    parser.add_argument("--model", default="t2i-scratch-M", help="text-to-image artifact (trained if missing)")
    parser.add_argument("--prompt", nargs="+", required=True, help="one or more prompts (quote each)")
    parser.add_argument("--n", type=_positive_int, default=4, help="samples per prompt")
    parser.add_argument("--scale", type=float, default=3.0, help="guidance scale (>= 0)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="ddim",
                        help="ddim (--steps steps), ddpm (all the diffusion's timesteps), or another registered one")
    parser.add_argument("--steps", type=_positive_int, default=50,
                        help="sampling steps, for samplers that take them (ddim; ddpm runs all timesteps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="samples.png", help="image grid to write (one row per prompt)")


def _sample(args: argparse.Namespace) -> int:
    from torchvision.utils import save_image

    from .conditioning.text import check_prompts
    from .diffusion.samplers import SAMPLERS
    from .recipes.presets import get_preset
    from .recipes.store import load_or_train
    from .recipes.text_to_image_eval import generate
    from .recipes.text_to_image import parse_t2i_name

    preset = get_preset(args.preset)
    parse_t2i_name(args.model)
    prompts = check_prompts(args.prompt)
    if not args.scale >= 0:
        raise ValueError(f"--scale must be >= 0, got {args.scale}")
    art = load_or_train(args.model, preset, device=args.device, progress=not args.no_progress, root=args.out)
    images = generate(art.model, [p for p in prompts for _ in range(args.n)], guidance_scale=args.scale,
                      steps=args.steps, seed=args.seed, progress=not args.no_progress, sampler=args.sampler)
    save_image((images + 1) / 2, args.output, nrow=args.n, padding=1)
    takes_steps = "steps" in SAMPLERS[args.sampler].options
    how = f"{args.sampler.upper()}-{args.steps if takes_steps else art.model.diffusion.num_timesteps}"
    print(f"{len(images)} samples of {args.model} ({preset.name}) for {len(prompts)} prompt(s), s = {args.scale:g}, "
          f"{how}: {args.output}")
    return 0


def _scaling_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--encoder", choices=["scratch", "minilm"], default="scratch")
    parser.add_argument("--sizes", nargs="+", default=None, help="model sizes (default: all of the preset's)")


def _scaling(args: argparse.Namespace) -> int:
    from .recipes.text_to_image import scaling_study

    res = scaling_study(args.preset, sizes=args.sizes, encoder=args.encoder, device=args.device,
                        progress=not args.no_progress, root=args.out)
    print(f"scaling study ({res['preset']}, encoder {res['encoder']}): loss and seen-prompt accuracy vs compute")
    print(f"{'size':<5} {'params':>9} {'step':>6} {'PFLOP':>9} {'val loss':>9} {'all-correct':>12}")
    for m in res["models"]:
        for c in m["curve"]:
            print(f"{m['size']:<5} {m['params'] / 1e6:>8.2f}M {c['step']:>6} {c['compute'] / 1e15:>9.3f} "
                  f"{c['loss']:>9.4f} {c.get('all_correct', float('nan')):>12.3f}")
    print(f"saved to {res['path']}")
    return 0


def _train_ldm_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--f", type=_factor_arg, nargs="+", default=None, metavar="F",
                        help="first stages ae-kl-f{F} to train on (default: all of the preset's, 1 = pixel space)")
    parser.add_argument("--data", choices=["shapes", "fashion_mnist"], default="shapes",
                        help="shapes: the pixel-vs-latent experiment (one model per f); fashion_mnist: one LDM "
                             "with f = 4 on Fashion-MNIST (its autoencoder is trained first)")
    parser.add_argument("--budget", type=_positive_int, default=None, metavar="SECONDS",
                        help="training time per model in seconds (default: the preset's)")
    parser.add_argument("--retrain", action="store_true", help="train again even where an artifact exists")
    text = parser.add_argument_group("text-to-image (notebook 05; also under torchrun --nproc_per_node N)")
    text.add_argument("--cond", choices=["none", "text"], default="none",
                      help="none: the unconditional pixel-vs-latent experiment; text: a text-to-image LDM")
    text.add_argument("--encoder", choices=["scratch", "minilm"], default="scratch",
                      help="text encoder: a transformer trained from scratch (the paper) or frozen all-MiniLM-L6-v2")
    text.add_argument("--size", default=None, help="model size of the preset's scaling study (default: its main size)")
    text.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the preset's)")
    text.add_argument("--accumulate", type=_positive_int, default=1,
                      help="micro-batches per step (gradient accumulation); the global batch stays the preset's")
    text.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                      help="autocast dtype (auto: bf16 on recent GPUs, fp16 on older ones, fp32 on CPU)")
    text.add_argument("--grad-checkpointing", action="store_true",
                      help="recompute UNet activations in backward (less memory, ~30%% more compute)")
    text.add_argument("--resume", action="store_true",
                      help="continue an interrupted run from its checkpoint (<artifact>.partial/)")


def _print_t2i_eval(rows: Sequence[dict]) -> None:
    keys = ["acc_colour", "acc_shape", "acc_count", "acc_position", "all_correct"]
    kinds = sorted({k for r in rows for k in r if k.startswith("all_correct_")})
    print(f"{'group':<9} {'scale':>5} " + " ".join(f"{k.removeprefix('acc_'):>9}" for k in keys)
          + " " + " ".join(f"{'ok-' + k.removeprefix('all_correct_'):>11}" for k in kinds) + f" {'FD-feat':>8}")
    for r in rows:
        fid = f"{r['fid']:>8.1f}" if "fid" in r else f"{'–':>8}"
        print(f"{r['group']:<9} {r['scale']:>5g} " + " ".join(f"{r[k]:>9.3f}" for k in keys) + " "
              + " ".join(f"{r.get(k, float('nan')):>11.3f}" for k in kinds) + f" {fid}")


def _train_t2i(args: argparse.Namespace) -> int:
    from .engine.distributed import cleanup, dist_info, init_distributed
    from .recipes.presets import get_preset
    from .recipes.store import artifact_dir, build_artifact, load_artifact
    from .recipes.text_to_image import t2i_name

    preset = get_preset(args.preset)
    name = t2i_name(args.encoder, preset.t2i.get_size(args.size).name)
    cached = artifact_dir(name, preset, args.out).is_dir()
    if cached and not (args.retrain or args.resume or args.steps is not None):  # as train-cond: load, don't retrain
        if dist_info().rank != 0:  # under torchrun rank 0 alone reports
            return 0
        art = load_artifact(name, preset, device=args.device, root=args.out)
    else:
        _, device = init_distributed(args.device)
        try:
            art = build_artifact(name, preset, steps=args.steps, device=device,
                                 progress=not args.no_progress, resume=args.resume, root=args.out,
                                 options={"accumulate": args.accumulate, "precision": args.precision,
                                          "grad_checkpointing": args.grad_checkpointing})
        finally:
            cleanup()
    if art is None:  # ranks > 0
        return 0
    m = art.metrics
    speed = [r["images_per_s"] for r in art.log if "images_per_s" in r]
    mfu = [r["mfu"] for r in art.log if "mfu" in r]
    print(f"{art.name} (preset {preset.name}): {m['unet_params'] / 1e6:.2f} M UNet + {m['cond_params'] / 1e6:.2f} M "
          f"text encoder parameters, {m['steps']} steps on {m.get('world_size', 1)} process(es) in "
          f"{m['train_time_s']:.0f} s")
    if speed:
        speed.sort()
        print(f"throughput {speed[len(speed) // 2]:.1f} images/s (median), model FLOPs "
              f"{m['flops_per_step'] / 1e9:.1f} GFLOP/step, MFU {sorted(mfu)[len(mfu) // 2]:.1%} of the "
              f"{m['peak_source']}" if mfu else "")
    print(f"compositional accuracy ({m['n_eval_per_kind']} prompts per kind, {m['samples_per_prompt']} samples "
          f"each, DDIM-{m['eval_ddim_steps']}); best guidance scale {m['best_scale']:g}")
    _print_t2i_eval(m["eval"])
    print(f"saved to {art.path}")
    return 0


def _train_ldm(args: argparse.Namespace) -> int:
    from .recipes.ldm import FASHION_LDM, eval_curve, ldm_name
    from .recipes.presets import get_preset
    from .recipes.store import artifact_dir, build_artifact, load_artifact

    if args.cond == "text":
        if args.f or args.data != "shapes" or args.budget is not None:
            raise ValueError("--f, --data and --budget belong to the unconditional experiment, not to --cond text")
        return _train_t2i(args)
    preset = get_preset(args.preset)
    if args.data == "fashion_mnist":
        if args.f:
            raise ValueError("--f applies to the shapes experiment; the Fashion-MNIST LDM uses f = 4")
        names = [FASHION_LDM]
    else:
        factors = args.f or list(preset.ldm.factors)
        for f in factors:
            if f not in preset.ldm.factors:
                raise ValueError(f"f={f} is not in the LDM experiment of preset {preset.name!r}: "
                                 f"choose from {' '.join(map(str, preset.ldm.factors))}")
        names = [ldm_name(f) for f in factors]
    print(f"{'model':<12} {'latent':>10} {'steps':>7} {'train s':>8} {'FD-feat':>8} {'images/s':>9}")
    for name in names:
        if args.retrain or args.budget is not None or not artifact_dir(name, preset, args.out).is_dir():
            art = build_artifact(name, preset, steps=args.budget, device=args.device,
                                 progress=not args.no_progress, root=args.out)
        else:
            art = load_artifact(name, preset, device=args.device, root=args.out)
        m = art.metrics
        curve = eval_curve(art.log)
        steps = curve[-1]["step"] if curve else max((r["step"] for r in art.log), default=-1) + 1
        fid = f"{m['fid']:>8.2f}" if "fid" in m else f"{'–':>8}"
        print(f"{name:<12} {'×'.join(map(str, m['latent_shape'])):>10} {steps:>7} {m['train_time_s']:>8.0f} "
              f"{fid} {m['images_per_s']:>9.1f}")
    return 0


# ----------------------------------------------------------------------------------- reevaluate
def _reevaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("name", help="name of a cached artifact, e.g. ldm-class")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="the training steps it was built with, if not the preset's")


def _reevaluate(args: argparse.Namespace) -> int:
    from .recipes.presets import get_preset
    from .recipes.store import reevaluate_artifact

    preset = get_preset(args.preset)
    art = reevaluate_artifact(args.name, preset, device=args.device, root=args.out, steps=args.steps)
    scalars = {k: v for k, v in art.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(f"{args.name} (preset {preset.name}) evaluated again: "
          + ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    for row in art.metrics.get("sweep", []):
        print("  " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    print(f"metrics written to {art.path / 'metrics.json'}")
    return 0


# ----------------------------------------------------------------------------------- check-data
def _check_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="image folder (as for load_dataset('image_folder', root=PATH))")
    parser.add_argument("--captions", default=None, metavar="FILE",
                        help="captions file (default: captions.json, metadata.jsonl, ... in PATH if present)")
    parser.add_argument("--size", type=_positive_int, default=64, help="image size to decode to (default 64)")


def _check_data(args: argparse.Namespace) -> int:
    from .data.image_folder import check_image_folder

    result = check_image_folder(args.path, captions=args.captions, image_size=args.size)
    print(result.report())
    return 0 if result.ok else 2


COMMANDS: dict[str, Command] = {
    "train-ae": Command("train-ae", "train a first-stage autoencoder (notebook 01) and cache it as an artifact",
                        _train_ae_arguments, _train_ae),
    "ablate-f": Command("ablate-f", "train and measure the downsampling-factor ablation (notebook 02)",
                        _ablate_f_arguments, _ablate_f),
    "train-first-stage": Command("train-first-stage", "train the first stage kl-f4 of the conditional LDMs "
                                 "(notebooks 04 and 05)", _train_first_stage_arguments, _train_first_stage),
    "train-ldm": Command("train-ldm", "train latent DDPMs: unconditional on the first stages of notebook 02 (notebook 03), or text-to-image with --cond text (notebook 05)",
                         _train_ldm_arguments, _train_ldm),
    "train-features": Command("train-features", "train the feature network of the FID-style score",
                              _train_features_arguments, _train_features),
    "train-checker": Command("train-checker", "train the content checker that scores conditional samples "
                             "(notebook 04)", _train_features_arguments, _train_checker),
    "evaluate": Command("evaluate", "compositional accuracy of a text-to-image LDM on the fixed prompt set "
                        "(notebook 05)", _evaluate_arguments, _evaluate),
    "sample": Command("sample", "draw images from prompts with a text-to-image LDM (notebook 05)",
                      _sample_arguments, _sample),
    "scaling-study": Command("scaling-study", "train text-to-image LDMs of several sizes and tabulate loss and "
                             "accuracy against training compute (notebook 05)", _scaling_arguments, _scaling),
    "reevaluate": Command("reevaluate", "evaluate a cached artifact again with the preset's current evaluation "
                          "settings and rewrite its metrics (the weights are kept)", _reevaluate_arguments, _reevaluate),
    "train-cond": Command("train-cond", "train the class-conditional and layout-to-image LDMs (notebook 04)",
                          _train_cond_arguments, _train_cond),
    "check-data": Command("check-data", "open every image of an image folder (and its captions file) once and "
                          "list the unreadable ones; exit status 2 if there are any", _check_data_arguments,
                          _check_data),
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subparser per entry of :data:`COMMANDS`."""
    from .engine.checkpoint import minildm_version

    parser = argparse.ArgumentParser(
        prog="python -m minildm",
        description="minildm: Latent Diffusion Models (Rombach et al., CVPR 2022), step by step.",
        epilog="Example: python -m minildm train-ae --preset cpu --variant l1-lpips-gan --regularizer kl")
    parser.add_argument("--version", action="version", version=f"minildm {minildm_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # bad arguments: SystemExit(2) with argparse's message
    try:
        with warnings.catch_warnings():  # warnings as one line each: "warning: ..." on stderr
            warnings.showwarning = _show_warning
            return int(args._run(args) or 0)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run again with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
