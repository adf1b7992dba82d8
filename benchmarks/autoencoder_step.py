"""What one first-stage training step costs, term by term, measured in one run.

    python benchmarks/autoencoder_step.py [--preset cpu] [--device cpu] [--repeats 5]

Times the autoencoder step of each loss variant of notebook 01 (L2; L1 + LPIPS; + PatchGAN, with
its discriminator step) at the preset's sizes, plus encode and decode alone, and prints each as a
ratio to the L2 step, so the price of the perceptual and adversarial terms can be read off on any
machine. Peak memory is reported on CUDA. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from minildm.engine.device import get_device

from minildm.engine.tasks import AutoencoderTask
from minildm.recipes.autoencoder import build_autoencoder
from minildm.recipes.presets import get_preset


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    device = get_device(args.device)
    ae = preset.ae
    x = torch.rand(ae.batch_size, 3, ae.image_size, ae.image_size, device=device) * 2 - 1
    batch = {"image": x}
    rows: dict[str, float] = {}
    peak: dict[str, float] = {}
    for variant in ("l2", "l1-lpips", "l1-lpips-gan"):
        model, loss = build_autoencoder(variant, "kl", preset)
        model.to(device).train()
        loss.to(device)
        task = AutoencoderTask(model, loss, lr=ae.lr)
        opts = task.configure_optimizers()
        step = ae.disc_start  # the discriminator is on from here

        def run_step() -> None:
            for name in task.optimizer_names:
                opts[name].zero_grad(set_to_none=True)
                out = task.training_step(batch, step, name)
                if out is None:
                    continue
                out[0].backward()
                opts[name].step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows[f"train step ({variant})"] = time_it(run_step, device, args.repeats)
        if device.type == "cuda":
            peak[variant] = torch.cuda.max_memory_allocated() / 2**20
        if variant == "l2":
            model.eval()
            with torch.no_grad():
                z = model.encode_latent(x)
                rows["encode (no grad)"] = time_it(lambda: model.encode_latent(x), device, args.repeats)
                rows["decode (no grad)"] = time_it(lambda: model.decode(z), device, args.repeats)
    base = rows["train step (l2)"]
    print(f"preset {preset.name}, device {device}, batch {ae.batch_size} × 3 × {ae.image_size}², "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'what':<28}{'seconds':>10}{'× L2 step':>12}")
    for name, sec in rows.items():
        print(f"{name:<28}{sec:>10.4f}{sec / base:>12.2f}")
    for variant, mib in peak.items():
        print(f"peak CUDA memory ({variant}): {mib:.0f} MiB")


if __name__ == "__main__":
    main()
