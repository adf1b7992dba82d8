"""The text-to-image commands of notebook 05: ``evaluate`` (compositional accuracy), ``sample``
(an image grid for prompts) and ``scaling-study``.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from .args import (
    MAX_GRID,
    add_common,
    check_output_file,
    check_output_folder,
    guidance_scale,
    positive_int,
)


# ------------------------------------------------------------------------------------ train-ldm
def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--model", default="t2i-scratch-M",
                        help="text-to-image artifact t2i-<scratch|minilm>-<size> (trained if missing)")
    parser.add_argument("--scales", type=guidance_scale, nargs="+", default=None, metavar="S",
                        help="guidance scales (default: the preset's); 0 = unconditional, 1 = no guidance")
    parser.add_argument("--n-per-kind", type=positive_int, default=None,
                        help="prompts per kind (single, position, two) and group (default: the preset's)")
    parser.add_argument("--samples-per-prompt", type=positive_int, default=None, help="default: the preset's")
    parser.add_argument("--steps", type=positive_int, default=None, help="DDIM steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed")


def evaluate(args: argparse.Namespace) -> int:
    from ..recipes.presets import get_preset
    from ..recipes.store import load_or_train
    from ..recipes.text_to_image import parse_t2i_name
    from ..recipes.text_to_image_eval import evaluate_t2i

    preset = get_preset(args.preset)
    parse_t2i_name(args.model)
    progress = not args.no_progress
    art = load_or_train(args.model, preset, device=args.device, progress=progress, root=args.out)
    checker = load_or_train("checker", preset, device=args.device, progress=progress, root=args.out).model
    features = load_or_train("feature-net", preset, device=args.device, progress=progress, root=args.out).model
    rows = evaluate_t2i(art.model, checker, preset, scales=args.scales, n_per_kind=args.n_per_kind,
                        samples_per_prompt=args.samples_per_prompt, steps=args.steps, seed=args.seed,
                        feature_net=features, progress=progress)
    print(f"{args.model} (preset {preset.name}): compositional accuracy read by the checker, "
          f"seen vs held-out (colour, shape) pairs {', '.join(preset.t2i.holdout)}")
    print_t2i_eval(rows)
    return 0


def sample_arguments(parser: argparse.ArgumentParser) -> None:
    from ..diffusion.samplers import SAMPLERS

    add_common(parser)
    parser.add_argument("--model", default="t2i-scratch-M", help="text-to-image artifact (trained if missing)")
    parser.add_argument("--prompt", nargs="+", required=True, help="one or more prompts (quote each)")
    parser.add_argument("--n", type=positive_int, default=4, help="samples per prompt")
    parser.add_argument("--scale", type=guidance_scale, default=None,
                        help="guidance scale (a number >= 0; default: the model's best, from its evaluation)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="ddim",
                        help="ddim (--steps steps), ddpm (all the diffusion's timesteps), or another registered one")
    parser.add_argument("--steps", type=positive_int, default=50,
                        help="sampling steps, for samplers that take them (ddim; ddpm runs all timesteps)")
    parser.add_argument("--seed", type=int, default=0)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", default="samples.png", help="image grid to write (one row per prompt)")
    where.add_argument("--output-dir", default=None, metavar="DIR",
                       help="write every sample as its own PNG into DIR (any --n; written as they are sampled)")


def sample(args: argparse.Namespace) -> int:
    from torchvision.utils import save_image

    from ..conditioning.text import check_prompts
    from ..diffusion.samplers import SAMPLERS
    from ..recipes.presets import get_preset
    from ..recipes.store import load_or_train
    from ..recipes.text_to_image import parse_t2i_name
    from ..recipes.text_to_image_eval import generate, generate_batches

    preset = get_preset(args.preset)
    parse_t2i_name(args.model)
    prompts = check_prompts(args.prompt)
    requests = [p for p in prompts for _ in range(args.n)]
    if args.output_dir is not None:
        folder = check_output_folder(args.output_dir)
    else:
        output = check_output_file(args.output)
        if len(requests) > MAX_GRID:
            raise ValueError(f"--n {args.n} x {len(prompts)} prompt(s) = {len(requests):,} images in one grid; a grid "
                             f"holds at most {MAX_GRID:,}: use --output-dir to write each sample as its own file")
    art = load_or_train(args.model, preset, device=args.device, progress=not args.no_progress, root=args.out)
    scale = args.scale if args.scale is not None else float(art.metrics["best_scale"])
    options = dict(guidance_scale=scale, steps=args.steps, seed=args.seed, progress=not args.no_progress,
                   sampler=args.sampler)
    if args.output_dir is not None:
        written = 0
        for batch in generate_batches(art.model, requests, **options):
            for image in batch:
                save_image((image + 1) / 2, folder / f"{written // args.n:03d}-{written % args.n:06d}.png")
                written += 1
        where, count = f"{folder} (prompt-sample.png)", written
    else:
        images = generate(art.model, requests, **options)
        save_image((images + 1) / 2, output, nrow=args.n, padding=1)
        where, count = args.output, len(images)
    takes_steps = "steps" in SAMPLERS[args.sampler].options
    how = f"{args.sampler.upper()}-{args.steps if takes_steps else art.model.diffusion.num_timesteps}"
    print(f"{count} samples of {args.model} ({preset.name}) for {len(prompts)} prompt(s), s = {scale:g}"
          f"{'' if args.scale is not None else ' (its best)'}, "
          f"{how}: {where}")
    return 0


def scaling_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--encoder", choices=["scratch", "minilm"], default="scratch")
    parser.add_argument("--sizes", nargs="+", default=None, help="model sizes (default: all of the preset's)")


def scaling(args: argparse.Namespace) -> int:
    from ..recipes.text_to_image import scaling_study

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


def print_t2i_eval(rows: Sequence[dict]) -> None:
    keys = ["acc_colour", "acc_shape", "acc_count", "acc_position", "all_correct"]
    kinds = sorted({k for r in rows for k in r if k.startswith("all_correct_")})
    print(f"{'group':<9} {'scale':>5} " + " ".join(f"{k.removeprefix('acc_'):>9}" for k in keys)
          + " " + " ".join(f"{'ok-' + k.removeprefix('all_correct_'):>11}" for k in kinds) + f" {'FD-feat':>8}")
    for r in rows:
        fid = f"{r['fid']:>8.1f}" if "fid" in r else f"{'–':>8}"
        print(f"{r['group']:<9} {r['scale']:>5g} " + " ".join(f"{r[k]:>9.3f}" for k in keys) + " "
              + " ".join(f"{r.get(k, float('nan')):>11.3f}" for k in kinds) + f" {fid}")
