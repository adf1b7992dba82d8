"""A content checker: does a generated image show what was asked?

Sample quality scores (FID and our FID-style score) say whether generated images *look like*
the data; they do not say whether a class-, layout- or text-conditional model drew *the
requested* content. For that we train a small network on the shapes data's ground truth and
read its predictions on generated images, the way the paper's layout-to-image and
class-conditional results are judged by eye. Because every shapes image comes with exact
labels, the checker's own accuracy on real validation images is measured too, so its verdict
on generated images can be trusted as far as that accuracy goes.

The network (:class:`ContentChecker`) has two kinds of outputs:

* global heads on pooled features: the main (largest) object's ``shape`` and ``colour``, and
  the number of objects ``count``;
* dense heads on a grid of stride 4: for every cell, the colour and the shape of the object
  covering it (or background). Colours within a shapes image are all different, so the cells
  of one colour locate one object: their bounding box is compared with a requested box, their
  majority shape with the requested shape.

Targets of the dense heads are the objects' exact coverage, rendered from the same signed
distance functions that draw the images (:func:`object_maps`).

Taught in notebook 04; judges the text-to-image models of notebook 05.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.nn.layers import Normalize

__all__ = ["CheckerConfig", "ContentChecker", "HEADS", "object_maps", "checker_targets", "shapes_targets",
           "box_iou", "position_name", "evaluate_checker", "score_class_samples", "score_layout_samples",
           "score_unconditional_samples",
           "score_prompt_samples", "score_semantic_samples", "shape_confusion"]

#: the global heads: the main object's shape and colour, the object count
HEADS: tuple[str, ...] = ("shape", "colour", "count")

#: stride of the dense heads' grid
STRIDE = 4


def _names() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    from ..data.shapes import COLOUR_NAMES, COUNT_WORDS, POSITION_NAMES, SHAPE_NAMES

    return SHAPE_NAMES, COLOUR_NAMES, COUNT_WORDS, POSITION_NAMES


@dataclass
class CheckerConfig:
    """Sizes of :class:`ContentChecker`: ``width`` channels at full resolution (×2, ×4, ×4 at
    strides 2, 4, 8)."""

    width: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CheckerConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), Normalize(cout, 8), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), Normalize(cout, 8), nn.SiLU())


class ContentChecker(nn.Module):
    """Classifier and locator of the shapes data's content.

    stem (3×3) -> stages at strides 2, 4, 8 -> (a) global average pool -> MLP -> heads
    ``shape`` (7), ``colour`` (8), ``count`` (3); (b) stride-8 features upsampled to stride 4,
    concatenated with the stride-4 ones -> conv -> per-cell ``colour_map`` (8 + background) and
    ``shape_map`` (7 + background) logits.

    Shapes: x (B, 3, H, W) in [-1, 1], H and W multiples of 8 -> dict of logits: ``shape``
    (B, 7), ``colour`` (B, 8), ``count`` (B, 3), ``colour_map`` (B, 9, H/4, W/4),
    ``shape_map`` (B, 8, H/4, W/4).
    """

    def __init__(self, config: CheckerConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = c = config or CheckerConfig(**kwargs)
        shapes, colours, counts, _ = _names()
        self.n_shapes, self.n_colours = len(shapes), len(colours)
        w = c.width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.SiLU())
        self.down1, self.down2, self.down3 = _stage(w, 2 * w, 2), _stage(2 * w, 4 * w, 2), _stage(4 * w, 4 * w, 2)
        self.fuse = nn.Sequential(nn.Conv2d(8 * w, 4 * w, 3, padding=1), Normalize(4 * w, 8), nn.SiLU())
        self.colour_map = nn.Conv2d(4 * w, self.n_colours + 1, 1)
        self.shape_map = nn.Conv2d(4 * w, self.n_shapes + 1, 1)
        self.global_proj = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.SiLU())
        self.heads = nn.ModuleDict({"shape": nn.Linear(4 * w, self.n_shapes),
                                    "colour": nn.Linear(4 * w, self.n_colours),
                                    "count": nn.Linear(4 * w, len(counts))})

    def _trunk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"{type(self).__name__} expects (B, 3, H, W) with H, W multiples of 8, "
                             f"got {tuple(x.shape)}")
        h2 = self.down2(self.down1(self.stem(x)))
        return h2, self.down3(h2)

    def features(self, x: Tensor) -> Tensor:
        """The pooled global features (B, 4·width) that the global heads read (and a Fréchet distance
        compares, :mod:`minildm.eval.fid`)."""
        return self.global_proj(self._trunk(x)[1].mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h2, h3 = self._trunk(x)
        g = self.global_proj(h3.mean(dim=(2, 3)))
        out = {k: head(g) for k, head in self.heads.items()}
        dense = self.fuse(torch.cat([h2, F.interpolate(h3, scale_factor=2.0, mode="nearest")], dim=1))
        out["colour_map"] = self.colour_map(dense)
        out["shape_map"] = self.shape_map(dense)
        return out


def object_maps(objects: Sequence[Mapping[str, Any]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense ground truth of one image on a (size × size) grid: (colour ids, shape ids), int64,
    background = n_colours / n_shapes. A cell belongs to an object when its centre lies within half
    a cell of the object's outline (so that small objects keep at least one cell); the main object
    (drawn last, on top) wins where objects overlap. ``objects``: dicts with ``shape``,
    ``colour`` and ``centre`` + ``radius`` or a ``box`` (see :func:`minildm.data.shapes.make_object`)."""
    from ..data.shapes import COLOUR_NAMES, SHAPE_NAMES, make_object, shape_sdf

    colour = np.full((size, size), len(COLOUR_NAMES), dtype=np.int64)
    shape = np.full((size, size), len(SHAPE_NAMES), dtype=np.int64)
    centres = (np.arange(size) + 0.5) / size
    gx, gy = np.meshgrid(centres, centres)
    for spec in reversed(list(objects)):  # main object last = on top, as in the renderer
        if "radius" in spec and "centre" in spec:
            spec = {"shape": spec["shape"], "colour": spec["colour"], "centre": spec["centre"], "radius": spec["radius"]}
        obj = make_object(spec)
        d_cells = shape_sdf(obj.shape, (gx - obj.cx) / obj.radius, (gy - obj.cy) / obj.radius) * obj.radius * size
        inside = d_cells <= 0.5
        colour[inside] = COLOUR_NAMES.index(obj.colour)
        shape[inside] = SHAPE_NAMES.index(obj.shape)
    return colour, shape


def shapes_targets(objects: Iterable[Sequence[Mapping[str, Any]]], device: torch.device | str | None = None
                   ) -> dict[str, Tensor]:
    """Ground truth of the global heads from a batch's ``objects`` (see :mod:`minildm.data.shapes`):
    shape and colour ids of the main (first, largest) object, and the number of objects − 1."""
    objs = list(objects)
    return {
        "shape": torch.tensor([o[0]["shape_id"] for o in objs], device=device),
        "colour": torch.tensor([o[0]["colour_id"] for o in objs], device=device),
        "count": torch.tensor([len(o) - 1 for o in objs], device=device),
    }


def checker_targets(objects: Sequence[Sequence[Mapping[str, Any]]], image_size: int,
                    device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Targets of every head for a batch's ``objects``."""
    t = shapes_targets(objects, device=device)
    maps = [object_maps(o, image_size // STRIDE) for o in objects]
    t["colour_map"] = torch.from_numpy(np.stack([m[0] for m in maps])).to(device)
    t["shape_map"] = torch.from_numpy(np.stack([m[1] for m in maps])).to(device)
    return t


# ------------------------------------------------------------------------------------------ reading

def position_name(cx: float, cy: float) -> str:
    """Position word of a centre by thirds of the image (as the shapes data names positions)."""
    positions = _names()[3]
    col = 0 if cx < 1 / 3 else (2 if cx > 2 / 3 else 1)
    row = 0 if cy < 1 / 3 else (2 if cy > 2 / 3 else 1)
    return positions[3 * row + col]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes (..., 4) given as (x0, y0, x1, y1); 0 where either box is empty or NaN."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    iou = inter / (area(a) + area(b) - inter)
    return torch.nan_to_num(iou, nan=0.0)


@torch.no_grad()
def _predict(checker: ContentChecker, images: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
    checker.eval()
    device = next(checker.parameters()).device
    outs: dict[str, list[Tensor]] = {}
    for chunk in images.split(batch_size):
        logits = checker(chunk.to(device))
        for k, v in logits.items():
            outs.setdefault(k, []).append(v.argmax(1).cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


def _colour_regions(colour_map: Tensor, colour_ids: Tensor, min_cells: int = 2) -> Tensor:
    """Bounding boxes (B, 4) in [0, 1] of the cells predicted as each image's ``colour_ids``; NaN
    where fewer than ``min_cells`` cells have that colour (the object is missing)."""
    b, h, w = colour_map.shape
    boxes = torch.full((b, 4), float("nan"))
    for i in range(b):
        ys, xs = torch.nonzero(colour_map[i] == colour_ids[i], as_tuple=True)
        if len(ys) >= min_cells:
            boxes[i] = torch.tensor([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])
    return boxes


def _majority(values: Tensor, default: int) -> int:
    return int(values.mode().values) if values.numel() else default


@torch.no_grad()
def score_unconditional_samples(checker: ContentChecker, images: Tensor, min_cells: int = 4,
                                max_fraction: float = 0.4, confidence: float = 0.9) -> dict[str, float]:
    """Fractions of ``images`` (B, 3, H, W) that show an object as the checker reads objects of real images.

    The candidate object is the region of the most frequent object colour of the colour map (16 × 16 cells for
    64-pixel images; a small object covers about 7). It counts (``objects``) when it covers at least
    ``min_cells`` cells and at most ``max_fraction`` of the map (a blank or single-colour square is no object)
    and the checker's mean colour-map probability over it is at least ``confidence``; ``shapes`` also asks
    the same of the shape map (a definite outline, not a blob). Calibrated on 64 images each: real
    validation images score 100 % / 99 %, uniform or Gaussian noise 0 %, squares of one random colour 6 %
    (the checker, never shown noise, still labels noise cells with some colour, at probabilities around 0.7,
    which is why the probability and not the label decides). Taught in notebook 03."""
    checker.eval()
    device = next(checker.parameters()).device
    found, shaped = 0, 0
    for chunk in images.split(64):
        logits = checker(chunk.to(device))
        p_colour, colours = logits["colour_map"].softmax(1).max(1)
        p_shape, _ = logits["shape_map"].softmax(1).max(1)
        for i in range(len(chunk)):
            fg = colours[i] != checker.n_colours
            if int(fg.sum()) < min_cells:
                continue
            cells = colours[i] == colours[i][fg].mode().values
            n = int(cells.sum())
            if n < min_cells or n > max_fraction * cells.numel() or float(p_colour[i][cells].mean()) < confidence:
                continue
            found += 1
            shaped += int(float(p_shape[i][cells].mean()) >= confidence)
    n_images = max(1, len(images))
    return {"objects": found / n_images, "shapes": shaped / n_images}


@torch.no_grad()
def score_class_samples(checker: ContentChecker, images: Tensor, shape_ids: Tensor | None = None,
                        colour_ids: Tensor | None = None) -> dict[str, float]:
    """Fraction of ``images`` (B, 3, H, W) whose main object has the requested shape / colour (and
    both), as read by the checker. Requests are (B,) id tensors; None skips that attribute."""
    pred = _predict(checker, images)
    ok = torch.ones(len(images), dtype=torch.bool)
    out: dict[str, float] = {}
    for name, want in (("shape", shape_ids), ("colour", colour_ids)):
        if want is not None:
            hit = pred[name] == torch.as_tensor(want).cpu()
            out[f"acc_{name}"] = hit.float().mean().item()
            ok &= hit
    out["acc_all"] = ok.float().mean().item()
    return out


@torch.no_grad()
def shape_confusion(checker: ContentChecker, images: Tensor, shape_ids: Tensor) -> Tensor:
    """Where the shape errors of ``images`` (B, 3, H, W) go: a (n_shapes, n_shapes) count matrix, row = the
    requested shape (``shape_ids``, (B,)), column = the checker's reading of the main object. The diagonal is
    what :func:`score_class_samples` counts as right; notebook 04 shows which shapes a model confuses."""
    pred = _predict(checker, images)["shape"]
    want = torch.as_tensor(shape_ids).cpu()
    if want.shape != pred.shape:
        raise ValueError(f"shape_ids must have shape ({len(images)},), got {tuple(want.shape)}")
    n = checker.n_shapes
    return torch.bincount(want * n + pred, minlength=n * n).reshape(n, n)


@torch.no_grad()
def score_layout_samples(checker: ContentChecker, images: Tensor,
                         layouts: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """How well ``images`` follow their requested layouts (one list of objects with ``box``,
    ``shape_id``, ``colour_id`` per image), per requested object:

    * ``found``: the checker sees the requested colour (at least 2 cells);
    * ``iou``: mean IoU of that colour's region's box with the requested box (0 if missing);
    * ``centre_error``: mean distance between the centres (fraction of the image side; found only);
    * ``acc_shape``: the majority shape of that region is the requested one;
    * ``acc_position``: the region's centre is in the requested box's third (position word);
    * ``all_correct``: fraction of images with every object found, right shape, IoU >= 0.5.
    """
    if len(images) != len(layouts):
        raise ValueError(f"{len(images)} images for {len(layouts)} layouts")
    pred = _predict(checker, images)
    found, ious, errors, shapes, positions, image_ok = [], [], [], [], [], []
    for i, objs in enumerate(layouts):
        ok = True
        for o in objs:
            want = torch.tensor([float(v) for v in o["box"]])
            box = _colour_regions(pred["colour_map"][i:i + 1], torch.tensor([int(o["colour_id"])]))[0]
            hit = not torch.isnan(box).any()
            iou = float(box_iou(box, want)) if hit else 0.0
            found.append(hit)
            ious.append(iou)
            if hit:
                c_pred = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
                c_want = ((want[0] + want[2]) / 2, (want[1] + want[3]) / 2)
                errors.append(math.dist([float(v) for v in c_pred], [float(v) for v in c_want]))
                cells = pred["shape_map"][i][pred["colour_map"][i] == int(o["colour_id"])]
                shape_ok = _majority(cells, -1) == int(o["shape_id"])
                positions.append(position_name(*map(float, c_pred)) == position_name(*map(float, c_want)))
            else:
                shape_ok = False
                positions.append(False)
            shapes.append(shape_ok)
            ok &= hit and shape_ok and iou >= 0.5
        image_ok.append(ok)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"found": mean(found), "iou": mean(ious), "centre_error": mean(errors), "acc_shape": mean(shapes),
            "acc_position": mean(positions), "all_correct": mean(image_ok), "n_objects": len(found)}


@torch.no_grad()
def score_prompt_samples(checker: ContentChecker, images: Tensor, requests: Sequence[Any]) -> dict[str, Any]:
    """Compositional accuracy of ``images`` (B, 3, H, W) generated for ``requests`` (one
    :class:`minildm.eval.prompts.Request`, or list of object dicts with ``shape_id``, ``colour_id`` and
    optional ``position``, per image), as read by the checker:

    * ``acc_colour``: fraction of requested objects whose colour is present (at least 2 cells);
    * ``acc_shape``: ... present with the requested shape (majority of that colour's cells);
    * ``acc_position``: ... whose colour region's centre lies in the requested third (over the
      objects with a position);
    * ``acc_count``: fraction of images with the requested number of objects (count head);
    * ``all_correct``: fraction of images right in every requested attribute;
    * ``per_image``: the all-correct flag of each image (for grouping by kind).
    """
    if len(images) != len(requests):
        raise ValueError(f"{len(images)} images for {len(requests)} requests")
    pred = _predict(checker, images)
    colour_ok, shape_ok, pos_ok, count_ok, per_image = [], [], [], [], []
    for i, req in enumerate(requests):
        objs = list(getattr(req, "objects", req))
        ok = int(pred["count"][i]) + 1 == len(objs)
        count_ok.append(ok)
        for o in objs:
            box = _colour_regions(pred["colour_map"][i:i + 1], torch.tensor([int(o["colour_id"])]))[0]
            found = not torch.isnan(box).any()
            cells = pred["shape_map"][i][pred["colour_map"][i] == int(o["colour_id"])]
            right_shape = found and _majority(cells, -1) == int(o["shape_id"])
            colour_ok.append(found)
            shape_ok.append(right_shape)
            ok &= right_shape
            if o.get("position"):
                right_pos = found and position_name(float(box[0] + box[2]) / 2,
                                                    float(box[1] + box[3]) / 2) == o["position"]
                pos_ok.append(right_pos)
                ok &= right_pos
        per_image.append(bool(ok))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"acc_colour": mean(colour_ok), "acc_shape": mean(shape_ok), "acc_position": mean(pos_ok),
            "acc_count": mean(count_ok), "all_correct": mean(per_image), "per_image": per_image}


@torch.no_grad()
def evaluate_checker(checker: ContentChecker, dataset: Any, n: int, batch_size: int = 64) -> dict[str, float]:
    """The checker's accuracy on ``n`` real images with ground truth (e.g. the shapes val split):
    global heads (``acc_shape``, ``acc_colour``, ``acc_count``), dense cells (``acc_cells_colour``,
    ``acc_cells_shape``) and, through :func:`score_layout_samples` on the true layouts, how well it
    locates objects (``layout_iou``, ``layout_found``, ``layout_acc_shape``, ``layout_acc_position``)
    and the main object's position word (``acc_position``)."""
    items = [dataset[i] for i in range(n)]
    images = torch.stack([it["image"] for it in items])
    objects = [it["objects"] for it in items]
    pred = _predict(checker, images, batch_size)
    t = shapes_targets(objects)
    maps = checker_targets(objects, images.shape[-1])
    out = {f"acc_{k}": (pred[k] == t[k]).float().mean().item() for k in ("shape", "colour", "count")}
    for k, name in (("colour_map", "colour"), ("shape_map", "shape")):
        fg = maps["colour_map"] != checker.n_colours
        out[f"acc_cells_{name}"] = (pred[k][fg] == maps[k][fg]).float().mean().item()
    layout = score_layout_samples(checker, images, objects)
    out.update({f"layout_{k}": v for k, v in layout.items() if k != "n_objects"})
    main_boxes = _colour_regions(pred["colour_map"], t["colour"])
    pos = [not torch.isnan(b).any() and position_name(float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2) == o[0]["position"]
           for b, o in zip(main_boxes, objects)]
    out["acc_position"] = float(np.mean(pos))
    out["n"] = n
    return out


@torch.no_grad()
def reconstruction_ceiling(checker: ContentChecker, first_stage: nn.Module, dataset: Any, n: int,
                           batch_size: int = 64) -> dict[str, float]:
    """:func:`evaluate_checker` on first-stage reconstructions x̃ = D(E(x)) of ``n`` real images.

    A latent diffusion model draws only what its decoder D can draw, so these scores are the
    practical ceiling of what the checker can credit to samples of any LDM on this first stage:
    if a shape is lost in reconstruction, no amount of diffusion training or guidance brings it
    back. ``first_stage`` has ``encode_latent`` (B, 3, H, W) -> z and ``decode_latent``."""
    items = [dict(dataset[i]) for i in range(n)]
    device = next(first_stage.parameters(), torch.empty(0)).device
    images = torch.stack([it["image"] for it in items])
    recon = torch.cat([first_stage.decode_latent(first_stage.encode_latent(images[i:i + batch_size].to(device)))
                       .clamp(-1, 1).cpu() for i in range(0, n, batch_size)])
    for it, x in zip(items, recon):
        it["image"] = x
    return evaluate_checker(checker, items, n, batch_size)


# ------------------------------------------------------------------------------------------ artifact



@torch.no_grad()
def score_semantic_samples(checker: ContentChecker, images: Tensor,
                           layouts: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """How well images generated from segmentation maps follow them, per region (object) of the map.

    The map names each region's shape but no colour, so regions are located by their true cells T
    (:func:`object_maps` on the checker's grid) rather than by colour: ``acc_shape`` is the fraction of
    regions whose majority predicted shape over T is the map's class; ``iou`` the mean IoU of T with the
    predicted cells P of that shape within the region's box grown by a quarter of its side;
    ``all_correct`` the fraction of images with every region's shape right and IoU >= 0.5.
    ``layouts``: the objects of each image's map (dicts with ``shape``, ``colour``, ``box``).
    """
    if len(images) != len(layouts):
        raise ValueError(f"{len(images)} images for {len(layouts)} maps")
    from ..data.shapes import COLOUR_NAMES, SHAPE_NAMES

    pred = _predict(checker, images)["shape_map"]
    g = pred.shape[-1]
    shapes_ok, ious, image_ok = [], [], []
    for i, objs in enumerate(layouts):
        colour_true, _ = object_maps(objs, g)
        ok = True
        for o in objs:
            true = torch.from_numpy(colour_true == COLOUR_NAMES.index(o["colour"]))
            k = SHAPE_NAMES.index(o["shape"])
            shape_ok = bool(true.any()) and _majority(pred[i][true], -1) == k
            x0, y0, x1, y1 = (float(v) for v in o["box"])
            mx, my = (x1 - x0) / 4, (y1 - y0) / 4
            near = torch.zeros(g, g, dtype=torch.bool)
            near[max(0, int((y0 - my) * g)):int(math.ceil((y1 + my) * g)),
                 max(0, int((x0 - mx) * g)):int(math.ceil((x1 + mx) * g))] = True
            p = (pred[i] == k) & near
            union = int((p | true).sum())
            iou = int((p & true).sum()) / union if union else 0.0
            shapes_ok.append(shape_ok)
            ious.append(iou)
            ok &= shape_ok and iou >= 0.5
        image_ok.append(ok)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"acc_shape": mean(shapes_ok), "iou": mean(ious), "all_correct": mean(image_ok), "n_regions": len(ious)}
