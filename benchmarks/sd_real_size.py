"""minildm's UNet and VAE against diffusers' at Stable Diffusion's real size, measured in one run.

    python benchmarks/sd_real_size.py [--variant v1|v2|v2-v] [--device cpu|cuda|mps] [--repeats 5]
                                      [--precision auto|fp32|bf16|fp16] [--parts unet vae]
                                      [--image-size N] [--json FILE]

Random weights, nothing downloaded. diffusers' ``UNet2DConditionModel`` and ``AutoencoderKL`` are built
from the variant's real configuration (:mod:`minildm.interop.sd_variants`; SD 2's linear projections
included) and minildm's models take the same weights through :func:`~minildm.interop.unet_from_diffusers`
and :func:`~minildm.interop.autoencoder_from_diffusers`, so both compute the same function (the max |Δ|
of their outputs is printed). Measured in eval mode under ``torch.inference_mode``:

* UNet: one denoising step of a guided sampler at 512²: latent (2, 4, 64, 64), the conditional and
  unconditional halves of one image, t (2,), context (2, 77, 768 or 1024);
* VAE: the decode of one 512² image, latent (1, 4, 64, 64) -> (1, 3, 512, 512).

(``v2-v`` and ``--image-size`` change 512² and 64²: e.g. 768² -> latent 96².) Prints seconds per call
(the median of ``--repeats`` calls after one warm-up call each, made in up to three rounds that
alternate the two implementations) and the ratio diffusers / minildm seconds
(> 1: minildm is faster), plus peak memory on CUDA (the allocator's peak during the call, above the
weights; not measured on CPU or MPS).

``--precision auto``: fp16 autocast on CUDA and MPS, bf16 autocast on CPU (fast on CPUs with bf16
matrix units, e.g. AMX; choose fp32 on others). Not a test: numbers depend on the machine, and a
real-size UNet step takes seconds on a CPU, so ``--repeats 1`` is a quick run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _peak_mb(fn: Callable[[], torch.Tensor], device: torch.device) -> float | None:
    """CUDA: the allocator's peak during ``fn()`` above what was allocated before (MB); None elsewhere."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def compare(ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor], device: torch.device,
            repeats: int) -> dict:
    """Seconds per call of both, alternating; max |Δ| of their outputs; CUDA peak memory."""
    a, b = ours().float(), theirs().float()  # warm-up calls (allocations, kernel selection), kept for |Δ|
    synchronize(device)
    delta, scale = (a - b).abs().max().item(), b.abs().max().item()
    del a, b
    rounds = min(3, repeats)  # alternate, so that drifting machine load hits both alike
    t_ours: list[float] = []
    t_theirs: list[float] = []
    for i in range(rounds):
        n = repeats // rounds + (i < repeats % rounds)
        t_ours += _seconds(ours, device, n)
        t_theirs += _seconds(theirs, device, n)
    row = {"minildm_s": statistics.median(t_ours), "diffusers_s": statistics.median(t_theirs), "max_abs_diff": delta,
           "max_abs_output": scale}
    row["ratio"] = row["diffusers_s"] / row["minildm_s"]
    row["minildm_peak_mb"], row["diffusers_peak_mb"] = _peak_mb(ours, device), _peak_mb(theirs, device)
    return row


def build(variant: str, part: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(minildm model, diffusers model) of ``part`` ("unet" or "vae"): same weights, eval mode, on ``device``."""
    import diffusers

    from minildm.interop import (autoencoder_from_diffusers, diffusers_config_from_config, sd_autoencoder_config,
                                 sd_diffusers_unet_config, unet_from_diffusers)

    torch.manual_seed(0)
    if part == "unet":
        theirs = diffusers.UNet2DConditionModel(**sd_diffusers_unet_config(variant)).eval()
        ours = unet_from_diffusers(theirs)
    else:
        theirs = diffusers.AutoencoderKL(**diffusers_config_from_config(sd_autoencoder_config(variant))).eval()
        ours = autoencoder_from_diffusers(theirs)
    return ours.to(device), theirs.to(device)


def measure(variant: str, device_name: str | None, repeats: int, precision: str, image_size: int | None,
            parts: list[str]) -> dict:
    from minildm.engine.device import get_device
    from minildm.interop import sd_variant

    v = sd_variant(variant)
    device = get_device(device_name)
    auto = torch.bfloat16 if device.type == "cpu" else torch.float16
    dtype = auto if precision == "auto" else PRECISIONS[precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    size = image_size or v.image_size
    h = size // 8
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, h, h, generator=g).to(device)  # the guidance batch: one image, conditional + unconditional
    t = torch.full((2,), 500).to(device)
    ctx = torch.randn(2, 77, v.context_dim, generator=g).to(device)
    z_image = (torch.randn(1, 4, h, h, generator=g) / v.scale_factor).to(device)  # a sampler's output, unscaled

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.inference_mode(), autocast():
                return fn()
        return call

    res = {"variant": variant, "description": v.description, "device": str(device),
           "precision": str(dtype or torch.float32).removeprefix("torch."), "threads": torch.get_num_threads(),
           "image_size": size, "unet_latent": list(z.shape), "context": list(ctx.shape),
           "vae_latent": list(z_image.shape), "repeats": repeats, "rows": {}}

    def measure_part(part: str) -> dict:
        ours, theirs = build(variant, part, device)
        res[f"{part}_params"] = sum(p.numel() for p in ours.parameters())
        if part == "unet":
            return compare(run(lambda: ours(z, t, context=ctx)),
                           run(lambda: theirs(z, t, encoder_hidden_states=ctx).sample), device, repeats)
        return compare(run(lambda: ours.decode(z_image)), run(lambda: theirs.decode(z_image).sample), device, repeats)

    for part in parts:  # one pair of models in memory at a time
        res["rows"]["unet_step" if part == "unet" else "vae_decode"] = measure_part(part)
    return res


def main() -> None:
    from minildm.interop import SD_VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="v1", choices=list(SD_VARIANTS))
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: cuda > mps > cpu)")
    parser.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per implementation and measure")
    parser.add_argument("--image-size", type=int, default=None, help="default: the variant's (512 or 768)")
    parser.add_argument("--parts", nargs="+", default=["unet", "vae"], choices=["unet", "vae"],
                        help="what to measure (default: both)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.repeats < 1 or (args.image_size is not None and (args.image_size < 64 or args.image_size % 64)):
        parser.error("--repeats must be >= 1 and --image-size a multiple of 64")
    res = measure(args.variant, args.device, args.repeats, args.precision, args.image_size,
                  list(dict.fromkeys(args.parts)))
    print(f"SD {res['variant']} ({res['description']}), random weights: minildm vs diffusers on {res['device']} "
          f"({res['precision']}, {res['threads']} thread(s)), {res['repeats']} repeat(s)")
    shape = lambda key: "×".join(map(str, res[key]))  # noqa: E731
    if "unet_params" in res:
        print(f"UNet {res['unet_params'] / 1e6:.2f} M params: latent {shape('unet_latent')}, "
              f"context {shape('context')}")
    if "vae_params" in res:
        print(f"VAE {res['vae_params'] / 1e6:.2f} M params: decode {shape('vae_latent')} "
              f"-> 1×3×{res['image_size']}²")
    print(f"{'measure':<11} {'minildm':>10} {'diffusers':>10} {'ratio':>7} {'max|Δ|':>9} {'max|y|':>8}  "
          "peak MB (minildm / diffusers)")
    for name, r in res["rows"].items():
        peak = ("n/a" if r["minildm_peak_mb"] is None
                else f"{r['minildm_peak_mb']:.0f} / {r['diffusers_peak_mb']:.0f}")
        print(f"{name:<11} {r['minildm_s']:>8.3f} s {r['diffusers_s']:>8.3f} s {r['ratio']:>6.2f}x "
              f"{r['max_abs_diff']:>9.2e} {r['max_abs_output']:>8.2f}  {peak}")
    print("ratio = diffusers s / minildm s (> 1: minildm is faster); max|Δ| between the outputs y, "
          "0 where both ran the same kernels in the same order")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
