"""Figures for the notebooks: image grids, error maps, zoomed crops, latent channels, tables.

Images are tensors in [-1, 1], shaped (C, H, W) or (B, C, H, W), as everywhere in minildm.
Figures are matplotlib; :func:`save_figure` also writes a PNG to ``$MINILDM_FIGURES`` when
that variable is set (``make run`` sets it to ``outputs/figures``).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

FIGURES_ENV = "MINILDM_FIGURES"


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor in [-1, 1] -> (H, W, 3) or (H, W) float array in [0, 1] for ``imshow``."""
    if x.ndim != 3:
        raise ValueError(f"expected an image of shape (C, H, W), got {tuple(x.shape)}")
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    if x.shape[0] == 1:
        return x[0]
    if x.shape[0] != 3:
        raise ValueError(f"expected 1 or 3 channels to display, got {x.shape[0]}")
    return x.transpose(1, 2, 0)


def error_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel absolute error |x − y| averaged over channels: (C, H, W) x2 -> (H, W) in [0, 2]."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    return (x.detach().float() - y.detach().float()).abs().mean(dim=-3).cpu()


def zoom(x: torch.Tensor, box: tuple[int, int, int], scale: int = 4) -> torch.Tensor:
    """Crop ``box = (top, left, size)`` from (C, H, W) and enlarge it ``scale``× (nearest, no smoothing)."""
    top, left, size = box
    _, h, w = x.shape
    if not (0 <= top and 0 <= left and size > 0 and top + size <= h and left + size <= w):
        raise ValueError(f"zoom box {box} does not fit in an image of {h}×{w}")
    crop = x[:, top:top + size, left:left + size]
    return crop.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def latent_channels(z: torch.Tensor) -> torch.Tensor:
    """(C, h, w) latent -> (C, h, w) with each channel min-max normalised to [-1, 1] for viewing."""
    z = z.detach().float().cpu()
    lo = z.amin(dim=(-2, -1), keepdim=True)
    hi = z.amax(dim=(-2, -1), keepdim=True)
    return (z - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1


def image_grid(images: Sequence[torch.Tensor] | torch.Tensor, *, titles: Sequence[str] | None = None,
               ncols: int | None = None, size: float = 2.0, cmap: str | None = None,
               suptitle: str | None = None):
    """Show images in a grid; returns the matplotlib Figure.

    ``images``: a (B, C, H, W) tensor or a list of (C, H, W) / (H, W) tensors (2-D ones, e.g. error
    maps, are drawn with ``cmap``, default "magma").
    """
    import matplotlib.pyplot as plt

    items = list(images)
    if not items:
        raise ValueError("image_grid needs at least one image")
    n = len(items)
    ncols = ncols or min(n, 8)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        img = items[i]
        if img.ndim == 2:
            ax.imshow(img.detach().float().cpu().numpy(), cmap=cmap or "magma", interpolation="nearest")
        else:
            arr = to_numpy_image(img)
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def comparison_figure(originals: torch.Tensor, reconstructions: Mapping[str, torch.Tensor], *,
                      zoom_box: tuple[int, int, int] | None = None, show_error: bool = True,
                      size: float = 1.8):
    """Rows = images; columns = original, then each model's reconstruction (and its error map).

    ``originals``: (B, C, H, W); ``reconstructions``: name -> (B, C, H, W). With ``zoom_box``
    (top, left, size) every panel shows that crop enlarged, which is where blur and lost texture show.
    """
    import matplotlib.pyplot as plt

    names = list(reconstructions)
    cols_per = 2 if show_error else 1
    ncols = 1 + cols_per * len(names)
    b = originals.shape[0]
    fig, axes = plt.subplots(b, ncols, figsize=(size * ncols, size * b), squeeze=False)
    view = (lambda t: zoom(t, zoom_box, scale=1)) if zoom_box else (lambda t: t)
    vmax = 0.5
    for r in range(b):
        panels: list[tuple[str, torch.Tensor]] = [("original", view(originals[r]))]
        for name in names:
            rec = reconstructions[name][r]
            panels.append((name, view(rec)))
            if show_error:
                panels.append((f"|error| {name}", error_map(view(originals[r]), view(rec))))
        for c, (title, img) in enumerate(panels):
            ax = axes[r, c]
            ax.set_axis_off()
            if img.ndim == 2:
                ax.imshow(img.numpy(), cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
            else:
                arr = to_numpy_image(img)
                ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def format_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str] | None = None,
                 formats: Mapping[str, str] | None = None) -> str:
    """A Markdown table: one row per name, one column per metric (``formats`` e.g. {"psnr": ".2f"})."""
    if not rows:
        raise ValueError("format_table needs at least one row")
    columns = list(columns or next(iter(rows.values())).keys())
    formats = dict(formats or {})
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in rows.items():
        cells = []
        for c in columns:
            v = row.get(c, float("nan"))
            cells.append(format(v, formats.get(c, ".4g")) if isinstance(v, (int, float)) else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_figure(fig, name: str, directory: str | os.PathLike | None = None) -> Path | None:
    """Save ``fig`` as ``<directory>/<name>.png`` (directory default: ``$MINILDM_FIGURES``; none: no-op)."""
    directory = directory or os.environ.get(FIGURES_ENV)
    if not directory:
        return None
    path = Path(directory) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def draw_boxes(ax, objects: Sequence[Mapping], image_size: int, *, labels: bool = True,
               linestyle: str = "--") -> None:
    """Outline each object's ``box`` (normalised x0, y0, x1, y1) on ``ax`` in the object's own colour
    (shapes data ``colour`` name), with its "colour shape" label."""
    from matplotlib.patches import Rectangle

    from ..data.shapes import COLOUR_NAMES, COLOURS, SHAPE_NAMES

    for o in objects:
        colour = o.get("colour") or COLOUR_NAMES[int(o["colour_id"])]
        shape = o.get("shape") or SHAPE_NAMES[int(o["shape_id"])]
        rgb = np.asarray(COLOURS[colour], dtype=float) / 255.0
        x0, y0, x1, y1 = (float(v) * image_size - 0.5 for v in o["box"])
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=rgb, linewidth=1.5,
                               linestyle=linestyle))
        if labels:
            ax.text(x0, y0 - 1, f"{colour} {shape}", color=rgb, fontsize=7, va="bottom",
                    bbox={"facecolor": "white", "alpha": 0.6, "pad": 0.5, "linewidth": 0})


def attention_overlay(image: torch.Tensor, attention: torch.Tensor, alpha: float = 0.6,
                      vmax: float | None = None) -> np.ndarray:
    """An image (3, H, W) in [-1, 1] in grey with an attention map (h, w) on top (magma colours,
    the map upsampled bilinearly and divided by ``vmax``, default its own maximum; pass one ``vmax`` to
    compare several maps on one colour bar): (H, W, 3) in [0, 1] for ``imshow``."""
    import matplotlib

    if attention.ndim != 2:
        raise ValueError(f"attention must be one map of shape (h, w), got {tuple(attention.shape)}")
    base = to_numpy_image(image)
    grey = base.mean(-1, keepdims=True).repeat(3, -1) if base.ndim == 3 else np.repeat(base[..., None], 3, -1)
    a = torch.nn.functional.interpolate(attention[None, None].float().cpu(), size=grey.shape[:2], mode="bilinear",
                                        align_corners=False)[0, 0]
    top = a.max().clamp(min=1e-8) if vmax is None else torch.tensor(float(vmax)).clamp(min=1e-8)
    a = (a / top).clamp(0.0, 1.0).numpy()
    heat = matplotlib.colormaps["magma"](a)[..., :3]
    return np.clip((1 - alpha) * grey + alpha * heat, 0.0, 1.0)


def colour_map_image(ids: torch.Tensor) -> np.ndarray:
    """A map of shapes colour ids (h, w) (8 = background) as an RGB image (h, w, 3) in [0, 1]: each
    cell painted in its colour, background light grey (e.g. the checker's ``colour_map``)."""
    from ..data.shapes import COLOUR_NAMES, COLOURS

    palette = np.asarray([COLOURS[n] for n in COLOUR_NAMES] + [(235, 235, 235)], dtype=float) / 255.0
    ids = ids.detach().cpu().long().numpy()
    if ids.ndim != 2 or ids.min() < 0 or ids.max() > len(COLOUR_NAMES):
        raise ValueError(f"expected colour ids (h, w) in 0 … {len(COLOUR_NAMES)}")
    return palette[ids]
