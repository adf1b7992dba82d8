"""The training commands, one per notebook's models: ``train-ae`` (01), ``ablate-f``, ``train-features``
(02), ``train-ldm`` (03; 05 with ``--cond text``), ``train-checker``, ``train-first-stage``,
``train-cond`` (04), and ``reevaluate`` for any artifact.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .args import add_common, add_init_from, factor_arg, positive_int
from .text_to_image import print_t2i_eval

if TYPE_CHECKING:
    from ..recipes.presets import Preset


# ------------------------------------------------------------------------------------ train-ae
def train_ae_arguments(parser: argparse.ArgumentParser) -> None:
    from ..recipes.autoencoder import REGULARIZERS, VARIANTS

    add_common(parser)
    parser.add_argument("--variant", choices=list(VARIANTS), default="l1-lpips-gan",
                        help="reconstruction loss (default: l1-lpips-gan, the paper's)")
    parser.add_argument("--regularizer", choices=list(REGULARIZERS), default="kl",
                        help="latent regulariser: kl (AutoencoderKL) or vq (VQModel); default kl")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="training steps (default: the preset's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its checkpoint (<artifact>.partial/)")
    add_init_from(parser)


def train_ae(args: argparse.Namespace) -> int:
    from ..recipes.presets import get_preset
    from ..recipes.store import build_artifact, format_metrics

    preset = get_preset(args.preset)
    name = f"ae-{args.regularizer}-{args.variant}"
    artifact = build_artifact(name, preset, steps=args.steps, device=args.device,
                              progress=not args.no_progress, resume=args.resume, root=args.out, init_from=args.init_from)
    print(f"{name} (preset {preset.name}): reconstruction of {artifact.metrics.get('n', '?')} "
          "shapes val images")
    print(format_metrics(artifact.metrics))
    print(f"saved to {artifact.path}")
    print(f"rebuild with: {artifact.command}")
    return 0


# ------------------------------------------------------------------------------------ train-first-stage
def train_first_stage_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--f", type=factor_arg, default=None, metavar="F",
                        help="downsampling factor (default: the one of the preset's conditional LDMs)")
    parser.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its checkpoint (<artifact>.partial/)")
    add_init_from(parser)
    parser.add_argument("--data", choices=["shapes", "shapes+photos"], default="shapes",
                        help="shapes: kl-f{F}; shapes+photos: kl-f{F}-photos, kl-f{F} trained further on shapes and "
                             "photo crops (the first stage of notebook 06's super-resolution and inpainting)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="with --init-from: train the decoder alone, the encoder frozen, so the latents and every "
                             "LDM trained on them stay valid (as Stable Diffusion's VAE was refined)")
    parser.add_argument("--asymmetric", action="store_true",
                        help="kl-f4-photos-asym: kl-f4-photos' decoder continued with a branch that sees the known "
                             "pixels around an inpainting hole (Zhu et al. 2023; the encoder frozen)")


def train_first_stage(args: argparse.Namespace) -> int:
    from ..recipes.first_stage import FACTORS, first_stage_name, photo_first_stage_name
    from ..recipes.presets import get_preset
    from ..recipes.store import build_artifact, format_metrics

    preset = get_preset(args.preset)
    if args.asymmetric:
        return _train_asymmetric_decoder(args, preset)
    f = args.f or preset.cond.f
    if f not in FACTORS:
        raise ValueError(f"f={f}: the first stage has factors {' '.join(map(str, FACTORS))}")
    if args.decoder_only and not args.init_from:
        raise ValueError("--decoder-only refines a trained first stage: give --init-from (shipped or a path)")
    name = first_stage_name(f) if args.data == "shapes" else photo_first_stage_name(f)
    from ..recipes.registry import ARTIFACTS

    if name not in ARTIFACTS:
        raise ValueError(f"--data {args.data} has a first stage for f = 4 only (kl-f4-photos), not f = {f}")
    artifact = build_artifact(name, preset, steps=args.steps, device=args.device,
                              progress=not args.no_progress, resume=args.resume, root=args.out,
                              init_from=args.init_from,
                              options={"decoder_only": True} if args.decoder_only else None)
    ceiling = artifact.metrics.pop("ceiling", {})
    print(f"{artifact.name} (preset {preset.name}): reconstruction of {artifact.metrics.get('n', '?')} "
          "val images" + (" of shapes" if args.data == "shapes" else " of each kind"))
    for domain in ("shapes", "photos"):
        if isinstance(artifact.metrics.get(domain), dict):
            print(f"{domain}: " + format_metrics(artifact.metrics.pop(domain)))
    print(format_metrics(artifact.metrics))
    if ceiling:
        keys = ("acc_shape", "acc_colour", "acc_count", "acc_position")
        print("checker on the reconstructions: " + ", ".join(f"{k.removeprefix('acc_')} {ceiling[k]:.1%}" for k in keys))
    print(f"saved to {artifact.path}")
    print(f"rebuild with: {artifact.command}")
    return 0


def _train_asymmetric_decoder(args: argparse.Namespace, preset: "Preset") -> int:
    from ..recipes.asymmetric_decoder import ASYMMETRIC_DECODER
    from ..recipes.store import build_artifact

    if args.f not in (None, 4) or args.data != "shapes" or args.decoder_only:
        raise ValueError("--asymmetric builds kl-f4-photos-asym: it takes no --f, --data or --decoder-only")
    artifact = build_artifact(ASYMMETRIC_DECODER, preset, steps=args.steps, device=args.device,
                              progress=not args.no_progress, resume=args.resume, root=args.out,
                              init_from=args.init_from)
    m = artifact.metrics
    print(f"{artifact.name} (preset {preset.name}): LPIPS of the composited reconstruction on {m['n']} val images "
          "with the inpainting evaluation's holes")
    for name in ("plain", "asymmetric"):
        print(f"  {name} decoder: " + ", ".join(f"{k} {v:.4f}" for k, v in m[name].items()))
    print(f"saved to {artifact.path}")
    print(f"rebuild with: {artifact.command}")
    return 0


def ablate_f_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--f", type=factor_arg, nargs="+", default=None, metavar="F",
                        help="downsampling factors to build (default: all of the preset's, 1 2 4 8 16 32)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="training steps per autoencoder (default: the preset's)")
    parser.add_argument("--retrain", action="store_true", help="train again even where an artifact exists")
    add_init_from(parser)


def ablate_f(args: argparse.Namespace) -> int:
    from ..recipes.ablation import ablation_name, ablation_table, format_ablation_table
    from ..recipes.presets import get_preset
    from ..recipes.store import artifact_dir, build_artifact

    preset = get_preset(args.preset)
    factors = args.f or list(preset.ablation.factors)
    for f in factors:
        if f not in preset.ablation.factors:
            raise ValueError(f"f={f} is not in the ablation of preset {preset.name!r}: "
                             f"choose from {' '.join(map(str, preset.ablation.factors))}")
        if (args.retrain or args.steps is not None or args.init_from
                or not artifact_dir(ablation_name(f), preset, args.out).is_dir()):
            build_artifact(ablation_name(f), preset, steps=args.steps, device=args.device,
                           progress=not args.no_progress, root=args.out, init_from=args.init_from)
    if args.steps is None:
        rows = ablation_table(preset, factors=factors, train=False, device=args.device, root=args.out,
                              save=args.f is None)
        print(f"downsampling-factor ablation (preset {preset.name}, shapes val split)")
        print(format_ablation_table(rows))
    return 0


# ------------------------------------------------------------------------------- train-features
def train_features_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    add_init_from(parser)


def train_features(args: argparse.Namespace) -> int:
    from ..recipes.presets import get_preset
    from ..recipes.store import build_artifact

    preset = get_preset(args.preset)
    art = build_artifact("feature-net", preset, steps=args.steps, device=args.device,
                         progress=not args.no_progress, resume=args.resume, root=args.out, init_from=args.init_from)
    print(f"feature-net (preset {preset.name}), accuracy on {art.metrics['n']} shapes val images: "
          + ", ".join(f"{k[4:]} {v:.3f}" for k, v in art.metrics.items() if k.startswith("acc_")))
    print(f"saved to {art.path}")
    return 0


# -------------------------------------------------------------------------------- train-checker
def train_checker(args: argparse.Namespace) -> int:
    from ..recipes.presets import get_preset
    from ..recipes.store import build_artifact

    preset = get_preset(args.preset)
    art = build_artifact("checker", preset, steps=args.steps, device=args.device,
                         progress=not args.no_progress, resume=args.resume, root=args.out, init_from=args.init_from)
    m = art.metrics
    print(f"checker (preset {preset.name}) on {m['n']} shapes val images: main object shape {m['acc_shape']:.3f}, "
          f"colour {m['acc_colour']:.3f}, count {m['acc_count']:.3f}, position {m['acc_position']:.3f}; "
          f"objects found {m['layout_found']:.3f}, box IoU {m['layout_iou']:.3f}, "
          f"shape per object {m['layout_acc_shape']:.3f}")
    print(f"saved to {art.path}")
    return 0


# ----------------------------------------------------------------------------------- train-cond
def train_cond_arguments(parser: argparse.ArgumentParser) -> None:
    train_features_arguments(parser)
    parser.add_argument("--cond", choices=["class", "layout"], nargs="+", default=["class", "layout"],
                        help="which conditional model(s): class-conditional, layout-to-image (default: both)")


def train_cond(args: argparse.Namespace) -> int:
    from ..recipes.conditional import cond_name
    from ..recipes.presets import get_preset
    from ..recipes.store import artifact_dir, build_artifact, load_artifact

    preset = get_preset(args.preset)
    for kind in args.cond:
        name = cond_name(kind)
        if args.steps is not None or args.resume or args.init_from or not artifact_dir(name, preset, args.out).is_dir():
            art = build_artifact(name, preset, steps=args.steps, device=args.device, progress=not args.no_progress,
                                 resume=args.resume, root=args.out, init_from=args.init_from)
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


def train_ldm_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--f", type=factor_arg, nargs="+", default=None, metavar="F",
                        help="first stages ae-kl-f{F} to train on (default: all of the preset's, 1 = pixel space)")
    parser.add_argument("--data", choices=["shapes", "fashion_mnist", "image_folder"], default="shapes",
                        help="shapes: the pixel-vs-latent experiment (one model per f); fashion_mnist: one LDM "
                             "with f = 4 on Fashion-MNIST (its autoencoder is trained first); image_folder (with "
                             "--task sr or inpaint and --root): an image-to-image model on images of your own")
    parser.add_argument("--root", default=None, metavar="PATH", help="the image folder of --data image_folder")
    parser.add_argument("--budget", type=positive_int, default=None, metavar="SECONDS",
                        help="training time per model in seconds (default: the preset's)")
    parser.add_argument("--retrain", action="store_true", help="train again even where an artifact exists")
    add_init_from(parser)
    text = parser.add_argument_group("text-to-image (notebook 05; also under torchrun --nproc_per_node N)")
    text.add_argument("--cond", choices=["none", "text"], default="none",
                      help="none: the unconditional pixel-vs-latent experiment; text: a text-to-image LDM")
    text.add_argument("--encoder", choices=["scratch", "minilm"], default="scratch",
                      help="text encoder: a transformer trained from scratch (the paper) or frozen all-MiniLM-L6-v2")
    text.add_argument("--size", default=None, help="model size of the preset's scaling study (default: its main size)")
    text.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the preset's)")
    text.add_argument("--accumulate", type=positive_int, default=1,
                      help="micro-batches per step (gradient accumulation); the global batch stays the preset's")
    text.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                      help="autocast dtype (auto: bf16 on recent GPUs, fp16 on older ones, fp32 on CPU)")
    text.add_argument("--grad-checkpointing", action="store_true",
                      help="recompute UNet activations in backward (less memory, ~30%% more compute)")
    text.add_argument("--resume", action="store_true",
                      help="continue an interrupted run from its checkpoint (<artifact>.partial/)")
    i2i = parser.add_argument_group("image-to-image (notebook 06; --steps and --resume apply too)")
    i2i.add_argument("--task", choices=["sr", "inpaint", "semantic"], default=None,
                     help="an image-to-image LDM: x4 super-resolution, inpainting or semantic synthesis")
    i2i.add_argument("--pixel", action="store_true",
                     help="with --task inpaint: the pixel-space model of the same UNet at ldm-inpaint's compute")


def train_t2i(args: argparse.Namespace) -> int:
    from ..engine.distributed import cleanup, dist_info, init_distributed
    from ..recipes.presets import get_preset
    from ..recipes.store import artifact_dir, build_artifact, load_artifact
    from ..recipes.text_to_image import t2i_name

    preset = get_preset(args.preset)
    name = t2i_name(args.encoder, preset.t2i.get_size(args.size).name)
    cached = artifact_dir(name, preset, args.out).is_dir()
    if cached and not (args.retrain or args.resume or args.init_from or args.steps is not None):  # as train-cond: load, don't retrain
        if dist_info().rank != 0:  # under torchrun rank 0 alone reports
            return 0
        art = load_artifact(name, preset, device=args.device, root=args.out)
    else:
        _, device = init_distributed(args.device)
        try:
            art = build_artifact(name, preset, steps=args.steps, device=device,
                                 progress=not args.no_progress, resume=args.resume, root=args.out, init_from=args.init_from,
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
    print_t2i_eval(m["eval"])
    print(f"saved to {art.path}")
    return 0


def train_ldm(args: argparse.Namespace) -> int:
    from ..recipes.ldm import FASHION_LDM, eval_curve, ldm_name
    from ..recipes.presets import get_preset
    from ..recipes.store import artifact_dir, build_artifact, load_artifact

    if args.task is not None:
        from .image_to_image import train_i2i

        if args.f or args.cond != "none" or args.budget is not None or args.data == "fashion_mnist":
            raise ValueError("--f, --cond, --budget and --data fashion_mnist belong to the other experiments, "
                             "not to --task")
        return train_i2i(args)
    if args.data == "image_folder" or args.root is not None:
        raise ValueError("--data image_folder and --root train an image-to-image model: add --task sr or --task inpaint")
    if args.pixel:
        raise ValueError("--pixel goes with --task inpaint")
    if args.cond == "text":
        if args.f or args.data != "shapes" or args.budget is not None:
            raise ValueError("--f, --data and --budget belong to the unconditional experiment, not to --cond text")
        return train_t2i(args)
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
        if args.retrain or args.budget is not None or args.init_from or not artifact_dir(name, preset, args.out).is_dir():
            art = build_artifact(name, preset, steps=args.budget, device=args.device,
                                 progress=not args.no_progress, root=args.out, init_from=args.init_from)
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
def reevaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("name", help="name of a cached artifact, e.g. ldm-class")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="the training steps it was built with, if not the preset's")
    parser.add_argument("--shipped", action="store_true",
                        help="evaluate the shipped weights instead (e.g. after their first stage's decoder was "
                             "refined) and rewrite the shipped metrics.json")


def reevaluate(args: argparse.Namespace) -> int:
    from ..recipes.presets import get_preset
    from ..recipes.store import reevaluate_artifact

    preset = get_preset(args.preset)
    if args.shipped:
        from ..recipes.ship import reevaluate_shipped
        from ..recipes.shipped import shipped_dir

        if args.steps is not None:
            raise ValueError("--steps names a cached artifact's run; the shipped weights record their own")
        metrics, path = reevaluate_shipped(args.name, preset, device=args.device), shipped_dir(args.name, preset)
    else:
        art = reevaluate_artifact(args.name, preset, device=args.device, root=args.out, steps=args.steps)
        metrics, path = art.metrics, art.path
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(f"{args.name} (preset {preset.name}) evaluated again: "
          + ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    for row in metrics.get("sweep", []):
        print("  " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    print(f"metrics written to {path / 'metrics.json'}")
    return 0
