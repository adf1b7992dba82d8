"""The image-to-image commands of notebook 06: ``train-ldm --task sr|inpaint|semantic`` (training and its
report), ``upscale``, ``inpaint``, ``img2img`` and ``synthesize`` (applying the shipped models to files)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _fmt(row: dict[str, Any], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {row[k]:.3f}" for k in keys if k in row)


def print_i2i_metrics(name: str, m: dict[str, Any]) -> None:
    """The metrics of an image-to-image artifact, one line per method (and domain)."""
    if "sr" in m:
        sr = m["sr"]
        photos = f" ({sr['n_photos']} photo crops)" if sr["n_photos"] else ""
        print(f"x{sr['factor']} super-resolution of {sr['n']} val images{photos}, DDIM-{sr['ddim_steps']}:")
        for method in ("ldm", "bicubic"):
            row = sr[method]
            print(f"  {method:<10} {_fmt(row, ('psnr', 'ssim', 'lpips', 'fd'))}")
            for d in ("shapes", "photos"):
                if d in row:
                    print(f"    {d:<8} {_fmt(row[d], ('psnr', 'ssim', 'lpips', 'fd'))}")
    if "inpaint" in m:
        ip = m["inpaint"]
        photos = f" ({ip['n_photos']} photo crops)" if ip["n_photos"] else ""
        print(f"inpainting of {ip['n']} val images{photos}, holes cover {ip['hole_fraction']:.0%} of the pixels:")
        for method, row in ip.items():
            if isinstance(row, dict):
                print(f"  {method:<12} {_fmt(row, ('lpips', 'psnr_hole', 'fd'))}")
                for d in ("shapes", "photos"):
                    if d in row:
                        print(f"    {d:<10} {_fmt(row[d], ('lpips', 'psnr_hole', 'fd'))}")
    if "semantic" in m:
        for scale, row in m["semantic"].items():
            if isinstance(row, dict):
                print(f"  {scale}: {row['tiles']} tiles ({row['images']} images): shape right "
                      f"{row['acc_shape']:.1%} of {row['n_regions']} regions, IoU {row['iou']:.3f}, all right "
                      f"{row['all_correct']:.1%}, latent std {row['latent_std']:.2f}")


def train_i2i(args: argparse.Namespace) -> int:
    from ..recipes.image_to_image import i2i_name, with_image_folder
    from ..recipes.presets import get_preset
    from ..recipes.registry import get_spec
    from ..recipes.store import artifact_dir, build_artifact, load_artifact

    preset = get_preset(args.preset)
    folder = args.data == "image_folder"
    if folder:
        from ..data.image_folder import check_image_folder

        if not args.root:
            raise ValueError("--data image_folder needs --root PATH (a folder of images)")
        report = check_image_folder(args.root)
        if report.unreadable:
            raise ValueError(f"{args.root}: {report.report().splitlines()[0]} (python -m minildm check-data "
                             f"{args.root} lists them)")
        preset = with_image_folder(preset, args.root)
    elif args.root is not None:
        raise ValueError("--root goes with --data image_folder")
    name = i2i_name(args.task, args.pixel, folder)
    spec = get_spec(name)
    identity = spec.identity(preset, args.steps)
    unet = identity["model"]["unet"]
    c = unet["out_channels"]
    cc = unet["in_channels"] - c
    parts = {"low_resolution": f"the x{identity['recipe'].get('sr_factor', 4)}-downsampled image ({cc})",
             "masked_image": f"the hole mask (1) + the filled image's latent ({cc - 1})",
             "segmentation": (f"the segmentation map folded into channels, {k} classes x {cc // k} pixels per cell ({cc})"
                              if (k := identity["model"]["concat_stage"].get("num_classes", cc)) != cc
                              else f"the segmentation map, one channel per class ({cc})")}
    print(f"{name}: the UNet's input channels = z_t ({c}) + {parts[identity['model']['concat_stage']['type']]} "
          f"= {unet['in_channels']}")
    if args.retrain or args.resume or args.init_from or args.steps is not None \
            or not artifact_dir(name, preset, args.out).is_dir():
        art = build_artifact(name, preset, steps=args.steps, device=args.device, progress=not args.no_progress,
                             resume=args.resume, root=args.out, init_from=args.init_from,
                             options={"precision": args.precision})
    else:
        art = load_artifact(name, preset, device=args.device, root=args.out)
    m = art.metrics
    print(f"{name} (preset {preset.name}): {m['unet_params'] / 1e6:.2f} M UNet parameters, {m.get('steps', '?')} "
          f"steps in {m.get('train_time_s', float('nan')):.0f} s")
    print_i2i_metrics(name, m)
    print(f"saved to {art.path}")
    return 0


# ------------------------------------------------------------------------------- applying the models
#: the models' UNets halve the latent twice and f = 4: image sides must be multiples of this
SIDE_MULTIPLE = 16
#: the largest image side the commands accept (the memory of one CPU sample)
MAX_SIDE = 1024


def read_rgb(path: str, what: str = "image") -> "torch.Tensor":
    """An image file as (1, 3, H, W) in [-1, 1]; ValueError (one line) when it cannot be read."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    except FileNotFoundError:
        raise ValueError(f"{what} {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{what} {path!r} is not a readable image ({type(err).__name__})") from None
    return torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1


def read_grey(path: str, what: str) -> "torch.Tensor":
    """A single-channel image file as an integer array (H, W) of its values 0..255."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "P", "1", "I") else im)
    except FileNotFoundError:
        raise ValueError(f"{what} {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{what} {path!r} is not a readable image ({type(err).__name__})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return torch.from_numpy(arr.astype(np.int64))


def check_side(h: int, w: int, what: str, multiple: int = SIDE_MULTIPLE, scale: int = 1) -> None:
    """ValueError unless both sides are multiples of ``multiple`` within [multiple, MAX_SIDE / scale]."""
    top = MAX_SIDE // scale
    if h % multiple or w % multiple or not (multiple <= h <= top and multiple <= w <= top):
        raise ValueError(f"{what} is {w}x{h} pixels: each side must be a multiple of {multiple} between "
                         f"{multiple} and {top}")


def write_image(x: "torch.Tensor", path: str) -> None:
    from torchvision.utils import save_image

    save_image((x.clamp(-1, 1) + 1) / 2, path)


def _model(name: str, args: argparse.Namespace) -> Any:
    from ..recipes.presets import get_preset
    from ..recipes.store import load_or_train

    return load_or_train(name, get_preset(args.preset), device=args.device, progress=not args.no_progress,
                         root=args.out).model


def _draw(model: Any, args: argparse.Namespace, concat: dict[str, "torch.Tensor"], latent_hw: tuple[int, int]
          ) -> "torch.Tensor":
    """One sample of a concat model for ``concat`` on a latent grid ``latent_hw``, with the command's DDIM steps
    and seed: (1, 3, f·h, f·w) on the CPU."""
    return _sample(model, args, concat, latent_hw, decode=True).cpu()


def _sample(model: Any, args: argparse.Namespace, concat: dict[str, "torch.Tensor"], latent_hw: tuple[int, int],
            decode: bool) -> "torch.Tensor":
    import torch

    g = torch.Generator().manual_seed(args.seed)
    return model.sample(1, steps=args.steps, generator=g, concat=concat, latent_size=latent_hw,
                        progress=not args.no_progress, decode=decode)


def _common(parser: argparse.ArgumentParser) -> None:
    from .args import add_common

    add_common(parser)
    parser.add_argument("--steps", type=_steps, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")


def _steps(value: str) -> int:
    from .args import positive_int

    n = positive_int(value)
    if n > 1000:
        raise argparse.ArgumentTypeError(f"at most 1000 steps (the diffusion's T), got {n}")
    return n


def upscale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="the low-resolution image (sides: multiples of 4, up to 256)")
    parser.add_argument("output", help="the x4 image to write (.png, .jpg, .webp)")
    _common(parser)


def upscale(args: argparse.Namespace) -> int:
    """x4 super-resolution with ldm-sr (the model is convolutional: any size it can take)."""
    from .args import check_output_file

    check_output_file(args.output)
    lr = read_rgb(args.input, "input")
    check_side(lr.shape[2], lr.shape[3], "the input", multiple=SIDE_MULTIPLE // 4, scale=4)
    model = _model("ldm-sr", args)
    hw = tuple(lr.shape[-2:])  # the latent grid of the x4 image is the input's size (f = 4)
    x = _draw(model, args, {"lr": lr}, hw)
    write_image(x[0], args.output)
    print(f"upscaled {args.input} ({hw[1]}x{hw[0]}) x4 to {args.output} ({x.shape[-1]}x{x.shape[-2]}) "
          f"with ldm-sr, DDIM-{args.steps}")
    return 0


def inpaint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="the image (sides: multiples of 16)")
    parser.add_argument("mask", help="a black-and-white image of the same size: white = fill, black = keep")
    parser.add_argument("output", help="the inpainted image to write (.png, .jpg, .webp)")
    _common(parser)
    parser.add_argument("--decoder", choices=["asymmetric", "plain"], default="asymmetric",
                        help="asymmetric (default): kl-f4-photos-asym draws the latent seeing the known pixels; "
                             "plain: the first stage's decoder")


def read_mask(path: str, image: "torch.Tensor") -> "torch.Tensor":
    """The hole (1, 1, H, W) of a mask file: white (255, or 1 in a 1-bit image) = fill, black (0) = keep.
    ValueError when it is not binary or not the image's size."""
    from ..data.degradations import check_hole

    m = read_grey(path, "mask")
    if tuple(m.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"the mask is {m.shape[1]}x{m.shape[0]} pixels, the image {image.shape[-1]}x"
                         f"{image.shape[-2]}: they must match")
    values = set(m.unique().tolist())
    if not values <= {0, 255} and not values <= {0, 1}:
        raise ValueError(f"the mask must be black and white (0 = keep, 255 = fill), it has {len(values)} grey "
                         f"levels; threshold it first")
    return check_hole((m > 0).float(), image)


def inpaint(args: argparse.Namespace) -> int:
    """Fill the white region of MASK in INPUT with ldm-inpaint."""
    import torch

    from .args import check_output_file

    check_output_file(args.output)
    x = read_rgb(args.input, "input")
    check_side(x.shape[2], x.shape[3], "the input")
    hole = read_mask(args.mask, x)
    if not hole.any():
        raise ValueError("the mask has no white pixel: nothing to fill")
    model = _model("ldm-inpaint", args)
    hw = (x.shape[2] // 4, x.shape[3] // 4)
    if args.decoder == "plain":
        out = _draw(model, args, {"image": x, "hole": hole}, hw)
        out = hole * out + (1 - hole) * x
    else:
        from ..recipes.asymmetric_decoder import ASYMMETRIC_DECODER

        decoder = _model(ASYMMETRIC_DECODER, args)
        z = _sample(model, args, {"image": x, "hole": hole}, hw, decode=False)
        with torch.no_grad():
            out = decoder.paste(z / model.scale_factor, x.to(z.device), hole.to(z.device)).cpu()
    write_image(out[0], args.output)
    print(f"filled {hole.mean():.0%} of {args.input} with ldm-inpaint, DDIM-{args.steps}, {args.decoder} decoder: "
          f"{args.output}")
    return 0


def synthesize_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.shapes import SEGMENTATION_CLASSES

    parser.add_argument("map", help="a segmentation map: a greyscale PNG whose values are class ids "
                        + ", ".join(f"{i} {n}" for i, n in enumerate(SEGMENTATION_CLASSES))
                        + " (sides: multiples of 16; larger than 64 px samples beyond the training size)")
    parser.add_argument("output", help="the image to write (.png, .jpg, .webp)")
    _common(parser)


def synthesize(args: argparse.Namespace) -> int:
    """An image from a segmentation map with ldm-semantic, at the map's size."""
    from ..data.shapes import SEGMENTATION_CLASSES
    from .args import check_output_file

    check_output_file(args.output)
    seg = read_grey(args.map, "map")
    check_side(seg.shape[0], seg.shape[1], "the map")
    if int(seg.max()) >= len(SEGMENTATION_CLASSES):
        raise ValueError(f"the map's values must be class ids 0..{len(SEGMENTATION_CLASSES) - 1} "
                         f"({', '.join(SEGMENTATION_CLASSES)}), it has {int(seg.max())}")
    model = _model("ldm-semantic", args)
    x = _draw(model, args, {"segmentation": seg[None]}, (seg.shape[0] // 4, seg.shape[1] // 4))
    write_image(x[0], args.output)
    print(f"synthesized {args.output} ({seg.shape[1]}x{seg.shape[0]}) from {args.map} with ldm-semantic, "
          f"DDIM-{args.steps}")
    return 0


def img2img_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="the image to edit (square; resized to the model's size)")
    parser.add_argument("output", help="the edited image to write (.png, .jpg, .webp)")
    parser.add_argument("--prompt", required=True, help="what the edited image should show")
    parser.add_argument("--strength", type=_strength, default=0.6,
                        help="0: the input's reconstruction, 1: a new sample for the prompt (default 0.6)")
    parser.add_argument("--model", default="t2i-scratch-M", help="a text-to-image artifact (default t2i-scratch-M)")
    parser.add_argument("--scale", type=_scale, default=None, help="guidance scale (default: the model's best)")
    _common(parser)


def _strength(value: str) -> float:
    from ..checks import check_number

    try:
        v = check_number("--strength", float(value) if value.strip().lower() not in ("nan", "inf") else value,
                         minimum=0, maximum=1)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return v


def _scale(value: str) -> float:
    from .args import guidance_scale

    return guidance_scale(value)


def img2img(args: argparse.Namespace) -> int:
    """SDEdit with a text-to-image model: noise the input to the strength's timestep and denoise it
    towards the prompt."""
    import torch
    import torch.nn.functional as F

    from ..conditioning.text import check_prompts
    from ..recipes.presets import get_preset
    from ..recipes.store import load_or_train
    from ..recipes.text_to_image import parse_t2i_name
    from .args import check_output_file

    check_output_file(args.output)
    parse_t2i_name(args.model)
    prompt = check_prompts([args.prompt])
    x = read_rgb(args.input, "input")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"the input is {x.shape[3]}x{x.shape[2]} pixels: img2img takes a square image")
    art = load_or_train(args.model, get_preset(args.preset), device=args.device, progress=not args.no_progress,
                        root=args.out)
    model = art.model
    x = F.interpolate(x, size=model.image_size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    scale = args.scale if args.scale is not None else float(art.metrics.get("best_scale", 3.0))
    g = torch.Generator().manual_seed(args.seed)
    out = model.img2img(x, args.strength, steps=args.steps, generator=g, cond=prompt, guidance_scale=scale,
                        progress=not args.no_progress)
    write_image(out[0], args.output)
    print(f"edited {args.input} towards {args.prompt!r} at strength {args.strength:g} with {args.model}, s = "
          f"{scale:g}, DDIM-{args.steps}: {args.output}")
    return 0
