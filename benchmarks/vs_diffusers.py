"""minildm's UNet and autoencoder against diffusers' at matched configurations, measured in one run.

    python benchmarks/vs_diffusers.py [--preset cpu] [--device cpu] [--size M] [--repeats 10]
                                      [--precision auto|bf16|fp16|fp32]

The diffusers models are built *from* minildm's through :mod:`minildm.interop` (same configuration,
same weights; the parity tests show they compute the same function), so the comparison is of the
implementations alone. Measured for each pair, at the text-to-image preset's size and batch:

* UNet training step: forward with a text context, ε-MSE, backward, AdamW step (images/s);
* UNet sampling: one guided denoising step, i.e. a forward on a doubled batch (images/s);
* autoencoder: encode and decode of a batch (images/s);
* memory of the training step (CUDA: the allocator's peak; CPU: the bytes autograd saves for
  backward plus weights, gradients and Adam moments, the same count for both).

Prints minildm / diffusers ratios (> 1: minildm is faster). Not a test: numbers depend on the
machine; run both in one process, one after the other, alternating, so that both see the same
conditions.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(preset_name: str, size: str, device: torch.device):
    """(minildm UNet, diffusers UNet, minildm AE, diffusers AE, batch, latent shape, context shape)."""
    from minildm.interop import autoencoder_to_diffusers, unet_to_diffusers
    from minildm.recipes.presets import get_preset
    from minildm.recipes.registry import get_spec
    from minildm.recipes.text_to_image import T2ISpec, build_t2i_ldm

    preset = get_preset(preset_name)
    torch.manual_seed(0)
    identity = T2ISpec("scratch", size).identity(preset)
    ldm = build_t2i_ldm(identity)
    unet = ldm.model
    for p in unet.parameters():  # non-zero weights everywhere (the zero-initialised outputs too)
        p.data.normal_(0, 0.02)
    ae = ldm.first_stage_model
    get_spec(identity["recipe"]["first_stage"])
    d_unet = unet_to_diffusers(unet, sample_size=ldm.latent_shape[-1])
    d_ae = autoencoder_to_diffusers(ae)
    tp = preset.t2i
    context = (tp.batch_size, tp.max_length, unet.config.context_dim)
    return (unet.to(device), d_unet.to(device), ae.to(device), d_ae.to(device), tp.batch_size,
            ldm.latent_shape, context, tp.image_size)


def measure(preset_name: str, size: str, device_name: str | None, repeats: int, precision: str) -> dict:
    from minildm.engine.device import autocast_dtype, get_device

    device = get_device(device_name)
    unet, d_unet, ae, d_ae, b, latent, ctx_shape, image_size = build(preset_name, size, device)
    dtype = {"auto": autocast_dtype(device), "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    g = torch.Generator().manual_seed(1)
    z = torch.randn(b, *latent, generator=g).to(device)
    eps = torch.randn(b, *latent, generator=g).to(device)
    t = torch.randint(0, 1000, (b,), generator=g).to(device)
    ctx = torch.randn(*ctx_shape, generator=g).to(device)
    x = torch.rand(b, 3, image_size, image_size, generator=g).to(device) * 2 - 1
    minildm_fwd = lambda zz, tt, cc: unet(zz, tt, context=cc)  # noqa: E731
    diffusers_fwd = lambda zz, tt, cc: d_unet(zz, tt, encoder_hidden_states=cc).sample  # noqa: E731

    def train_step(fwd, model, opt):
        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.mse_loss(fwd(z, t, ctx).float(), eps)
            loss.backward()
            opt.step()
        return step

    def sample_step(fwd):
        z2, t2, c2 = torch.cat([z, z]), torch.cat([t, t]), torch.cat([ctx, torch.zeros_like(ctx)])

        @torch.no_grad()
        def step():
            with autocast():
                e = fwd(z2, t2, c2)
            e_c, e_u = e.chunk(2)
            return e_u + 3.0 * (e_c - e_u)
        return step

    @torch.no_grad()
    def codec(encode, decode):
        def step():
            with autocast():
                decode(encode(x))
        return step

    pairs = {
        "unet_train": (train_step(minildm_fwd, unet, torch.optim.AdamW(unet.parameters(), 1e-4)),
                       train_step(diffusers_fwd, d_unet, torch.optim.AdamW(d_unet.parameters(), 1e-4))),
        "unet_sample": (sample_step(minildm_fwd), sample_step(diffusers_fwd)),
        "ae_codec": (codec(lambda v: ae.encode(v).mode(), ae.decode),
                     codec(lambda v: d_ae.encode(v).latent_dist.mode(), lambda v: d_ae.decode(v).sample)),
    }
    unet.train(), d_unet.train()
    rows = {}
    for name, (ours, theirs) in pairs.items():
        # alternate the two, several rounds, so drifting machine load hits both alike
        t_ours, t_theirs = [], []
        for _ in range(3):
            t_ours.append(_time(ours, device, max(1, repeats // 3)))
            t_theirs.append(_time(theirs, device, max(1, repeats // 3)))
        rows[name] = {"minildm_s": min(t_ours), "diffusers_s": min(t_theirs)}
    if device.type != "cuda":
        rows["unet_train_memory"] = {"minildm_mb": _saved_bytes(minildm_fwd, unet, z, t, ctx),
                                     "diffusers_mb": _saved_bytes(diffusers_fwd, d_unet, z, t, ctx),
                                     "method": "autograd-saved activations + weights, gradients, Adam moments"}
    else:
        for label, step in (("minildm", pairs["unet_train"][0]), ("diffusers", pairs["unet_train"][1])):
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            rows.setdefault("unet_train_memory", {})[f"{label}_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return {"device": str(device), "precision": str(dtype or torch.float32).removeprefix("torch."), "batch": b,
            "latent": list(latent), "context": list(ctx_shape), "image_size": image_size,
            "unet_params": sum(p.numel() for p in unet.parameters()), "rows": rows}


def _saved_bytes(fwd, model, z, t, ctx) -> float:
    """MB of a training step's memory without an allocator to ask (CPU): the tensors autograd saves
    for backward plus weights, gradients and the two Adam moments."""
    total = 0

    def pack(x):
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = F.mse_loss(fwd(z, t, ctx).float(), z)
    del loss
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return (total + 4 * params) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--size", default="M")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    res = measure(args.preset, args.size, args.device, args.repeats, args.precision)
    b = res["batch"]
    print(f"minildm vs diffusers on {res['device']} ({res['precision']}), preset {args.preset} size {args.size}: "
          f"UNet {res['unet_params'] / 1e6:.2f} M params, batch {b}, latent {'×'.join(map(str, res['latent']))}, "
          f"context {'×'.join(map(str, res['context'][1:]))}")
    print(f"{'measure':<14} {'minildm':>14} {'diffusers':>14} {'ratio':>7}")
    for name in ("unet_train", "unet_sample", "ae_codec"):
        r = res["rows"][name]
        ours, theirs = b / r["minildm_s"], b / r["diffusers_s"]
        r["ratio"] = ours / theirs
        print(f"{name:<14} {ours:>10.1f} im/s {theirs:>10.1f} im/s {r['ratio']:>6.2f}x")
    mem = res["rows"]["unet_train_memory"]
    mem["ratio"] = mem["diffusers_mb"] / mem["minildm_mb"]
    print(f"{'train memory':<14} {mem['minildm_mb']:>11.0f} MB {mem['diffusers_mb']:>11.0f} MB {mem['ratio']:>6.2f}x "
          "(diffusers / minildm)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
