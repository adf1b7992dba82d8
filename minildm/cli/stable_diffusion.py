"""``python -m minildm sd``: Stable Diffusion v1.x / v2.x weights (a diffusers folder or an original single file)
turned into a PNG by minildm's own modules (notebook 05, "Stable Diffusion in minildm's modules")."""
from __future__ import annotations

import argparse
import time

from .args import check_output_file, guidance_scale, positive_int

__all__ = ["sd", "sd_arguments"]

SD_SAMPLERS = ("ddim", "dpmpp-2m", "ddpm")
DTYPES = ("float32", "float16", "bfloat16")


def sd_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="a diffusers Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/, "
                             "tokenizer/, scheduler/) or an original .safetensors / .ckpt file")
    parser.add_argument("--prompt", nargs="+", required=True, help="one or more prompts (quote each)")
    parser.add_argument("--negative-prompt", default=None, help="what the image should not show (default: none)")
    parser.add_argument("--steps", type=positive_int, default=25, help="sampling steps (ddim, dpmpp-2m)")
    parser.add_argument("--sampler", choices=SD_SAMPLERS, default="dpmpp-2m",
                        help="dpmpp-2m (DPM-Solver++ 2M, the default), ddim, or ddpm (all 1000 steps)")
    parser.add_argument("--guidance", type=guidance_scale, default=7.5,
                        help="classifier-free guidance scale (> 1 guides; default 7.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=positive_int, default=None, help="image height (default: the model's size)")
    parser.add_argument("--width", type=positive_int, default=None, help="image width (default: the model's size)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' precision (default float32)")
    parser.add_argument("--variant", choices=("v1", "v2", "v2-v"), default=None,
                        help="a single file's Stable Diffusion version (default: read from its keys)")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="a single file's CLIP tokenizer folder (default: tokenizer/ beside the file)")
    parser.add_argument("--output", default="sd.png", help="the PNG to write (a grid for several prompts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def sd(args: argparse.Namespace) -> int:
    import torch
    from torchvision.utils import save_image

    from ..conditioning.text import check_prompts
    from ..interop.stable_diffusion import load_stable_diffusion

    prompts = check_prompts(args.prompt)
    output = check_output_file(args.output)
    t0 = time.perf_counter()
    pipe = load_stable_diffusion(args.model, device=args.device, dtype=getattr(torch, args.dtype),
                                 variant=args.variant, tokenizer=args.tokenizer)
    loaded = time.perf_counter() - t0
    generator = torch.Generator().manual_seed(args.seed)
    images = pipe(prompts, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, height=args.height, width=args.width, generator=generator,
                  sampler=args.sampler, progress=not args.no_progress)
    save_image(images, output, nrow=len(prompts), padding=0 if len(prompts) == 1 else 2)
    h, w = images.shape[-2:]
    print(f"{len(prompts)} image(s) {w}x{h} with {args.sampler}-{args.steps}, guidance {args.guidance:g}, seed "
          f"{args.seed} (loaded in {loaded:.1f} s, drawn in {time.perf_counter() - t0 - loaded:.1f} s on "
          f"{pipe.scale_factor.device}): {output}")
    return 0
