"""Training throughput (images/s) and model-FLOPs utilisation of the text-to-image LDM, measured in one run.

    python benchmarks/t2i_throughput.py [--preset gpu] [--size SIZE] [--device cuda]
                                        [--precision auto|bf16|fp16|fp32] [--steps 40] [--batch N ...]
                                        [--compile]

The speed of a training step does not depend on the weights, so this builds the preset's
text-to-image LDM (notebook 05) with random weights and trains it on random latents of the right
shape with real captions, through the recipe's own pieces: :class:`~minildm.engine.tasks.LatentDiffusionTask`
(ε/v loss, classifier-free dropout, min-SNR weighting) and :class:`~minildm.engine.trainer.Trainer`
(autocast, grad clipping, optimizer step), with the :class:`~minildm.engine.throughput.Throughput`
callback that the recipe logs. No first stage or checker is trained, so a fresh machine measures in
a minute what ``train-ldm --cond text --preset gpu`` would report after its first stretch.

Prints images/s (median over the steps after the first few), the model FLOPs per step (counted by
FlopCounterMode) and MFU against the device's peak (nominal bf16/fp16 tensor-core peak for known
GPUs, else a measured matmul peak), for each batch size given. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch


def measure(preset_name: str, size: str | None, device: str | None, precision: str, steps: int,
            batch: int | None, compile_unet: bool = False) -> dict:
    from minildm import get_device
    from minildm.data import load_dataset
    from minildm.engine.batches import BatchRandom, LatentBatches, move_to_device
    from minildm.engine.throughput import Throughput, count_flops, peak_flops
    from minildm.engine.trainer import Trainer
    from minildm.recipes.presets import get_preset
    from minildm.recipes.registry import get_spec
    from minildm.recipes.text_to_image import t2i_name

    preset = get_preset(preset_name)
    size = size or preset.t2i.size
    spec = get_spec(t2i_name("scratch", size))
    identity = spec.identity(preset)
    recipe = dict(identity["recipe"])
    if batch:
        recipe["batch_size"] = batch
    dev = get_device(device)
    torch.manual_seed(0)
    ldm = spec.build_model(identity).to(dev)
    m = identity["model"]
    c, side = m["unet"]["in_channels"], m["image_size"] // m["f"]
    n = max(recipe["batch_size"] * 4, 256)
    scenes = load_dataset("shapes", "train", 32, length=min(n, 512), seed=0)
    captions = [scenes[i % len(scenes)]["caption"] for i in range(n)]
    data = LatentBatches(torch.randn(n, c, side, side), recipe["batch_size"], seed=0, cond=captions)
    task = spec.task(ldm, {**recipe, "steps": steps})
    trainer = Trainer(task, data, device=dev, max_steps=steps, seed=0, grad_clip=1.0, progress=False,
                      precision=precision, log_every=1)
    probe = move_to_device(data.batch(0, part=(0, 1)), dev)
    probe["rng"] = BatchRandom(0, 0, 0, 1, 1, dev)
    flops_per_step = count_flops(lambda: task.training_step(probe, 0, "unet")[0]) * recipe["batch_size"]
    ldm.model.zero_grad(set_to_none=True)
    if compile_unet:  # torch.compile the UNet in place (its state_dict keys stay the same)
        ldm.model.compile()
    peak, source = peak_flops(dev, trainer.dtype)
    trainer.callbacks.append(Throughput(recipe["batch_size"], flops_per_step, peak))
    log = trainer.fit()
    rows = [r for r in log if "images_per_s" in r][min(5, steps // 4):]
    ips = statistics.median(r["images_per_s"] for r in rows)
    mfu = statistics.median(r["mfu"] for r in rows) if rows and "mfu" in rows[0] else None
    return {"preset": preset.name, "size": size, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
            "precision": str(trainer.dtype or torch.float32).removeprefix("torch."), "batch": recipe["batch_size"],
            "unet_params_M": sum(p.numel() for p in ldm.model.parameters()) / 1e6,
            "gflop_per_step": flops_per_step / 1e9, "images_per_s": ips, "mfu": mfu,
            "peak_tflops": peak / 1e12 if peak else None, "peak_source": source, "steps_timed": len(rows),
            "compiled": compile_unet,
            "max_memory_GB": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpu")
    parser.add_argument("--size", default=None, help="model size of the preset's scaling study (default: its main)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, nargs="+", default=[0], help="global batch sizes (0: the preset's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet first")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    results = []
    for b in args.batch:
        r = measure(args.preset, args.size, args.device, args.precision, args.steps, b or None, args.compile)
        results.append(r)
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{r['device_name']} {r['precision']}{' compiled' if r['compiled'] else ''} preset {r['preset']} size {r['size']} "
              f"({r['unet_params_M']:.1f} M UNet params) batch {r['batch']}: {r['images_per_s']:.0f} images/s, "
              f"{r['gflop_per_step']:.1f} GFLOP/step, MFU {mfu} of {r['peak_tflops'] or 0:.3g} TFLOP/s "
              f"({r['peak_source']}), {r['steps_timed']} steps timed"
              + (f", peak memory {r['max_memory_GB']:.1f} GB" if r["max_memory_GB"] is not None else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
