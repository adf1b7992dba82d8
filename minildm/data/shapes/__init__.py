"""Procedural captioned shapes: the embedded default dataset of notebooks 01 to 05.

Each image shows 1 to 3 flat, outlined objects (circle, square, triangle, star,
diamond, hexagon, cross) in 8 named colours and 3 sizes on a low-contrast,
fine-grained textured background (stripes, checkerboard, dot grid, grain, waves).
The objects carry the *semantics* (class, layout, caption) that the conditional
latent diffusion models of the later notebooks learn; the background carries
*high-frequency detail* of a few pixels' period, the part of an image that an
autoencoder trained with a pixel-wise L2 loss alone blurs away and a perceptual
(LPIPS) + adversarial loss keeps (Rombach et al. 2022, Sec. 3.1; Esser et al. 2021).

Where the notebooks use it: 01 (perceptual autoencoder: the textures), 02 (downsampling
factor ablation: reconstruction and FID on these images), 03 (latent DDPM), 04
(class- and layout-conditioning: labels, boxes, the checker's ground truth) and 05
(text-to-image: captions, held-out colour-shape pairs).

Modules, each with one job:

* :mod:`~minildm.data.shapes.vocabulary`: shape, colour, size, position, background
  and relation names, synonyms, plurals, caption phrase tables, label class names;
* :mod:`~minildm.data.shapes.geometry`: each shape's box extents and signed distance
  function in its unit frame;
* :mod:`~minildm.data.shapes.scene`: :class:`ShapeObject`, :class:`Background`,
  :class:`Scene`, the per-item random generator, random scenes, relations, held-out pairs;
* :mod:`~minildm.data.shapes.render`: backgrounds and anti-aliased objects -> uint8 images;
* :mod:`~minildm.data.shapes.captions`: captions and the phrase helpers;
* :mod:`~minildm.data.shapes.segmentation`: per-pixel class maps (background + shape kind);
* :mod:`~minildm.data.shapes.dataset`: items and labels, :class:`ShapesDataset`,
  :class:`ShapesStream`, :func:`render_scene`.

Ground truth per image
----------------------
* ``objects``: one dict per object, largest first: ``shape``, ``colour``, ``size``
  (``small``/``medium``/``large``), ``position`` (one of :data:`POSITION_NAMES`, by
  thirds of the image), ``box`` (x0, y0, x1, y1) and ``centre`` (cx, cy), both
  normalised to [0, 1] with (0, 0) the top-left corner, ``radius`` (the object's
  scale as a fraction of the image side) and integer ids ``shape_id``,
  ``colour_id``, ``size_id``.
* ``boxes``: the objects' boxes as a float32 tensor (N, 4).
* ``label``: by default the **shape kind of the main object**. The main object is
  ``objects[0]``; when there are several objects its size class is strictly larger
  than every other object's (a ``large`` object among ``medium``/``small`` ones, or a
  ``medium`` one among ``small`` ones), so "the largest object" is never ambiguous.
  Other label kinds (option ``label=``): ``"colour"`` (colour of the main object),
  ``"shape_colour"`` (shape_id * 8 + colour_id, 56 classes), ``"count"`` (number of
  objects - 1).
* ``caption``: an English sentence naming every object's colour and shape (with
  a few synonyms: disc, rhombus, plus sign), sometimes its size, position, the
  background texture and a spatial relation ("to the left of", "above", ...) that
  is used only where it is unambiguous (the boxes are separated along that axis
  and the centres are further apart along it than across it).
* ``image``: float32 (C, H, W) in [-1, 1], C = ``channels`` (3, or 1 for grey).

Held-out combinations (option ``holdout``): a list of "colour shape" pairs (e.g. ``["red star"]``)
that the **train** split never shows: train items whose scene has such an object are skipped
(item i is the i-th accepted scene, still a pure function of the arguments). The val and test
splits are unchanged, so they test whether a model composes attributes it saw only apart.

Placement rules make attributes easy to check: colours within an image are all
different, objects stay inside the image with a margin, and two boxes may overlap
by at most 10 % of the smaller box's area.

Determinism
-----------
Item ``i`` of split ``s`` is a pure function of (``seed``, ``s``, ``i``,
``image_size``): its random numbers come from ``numpy.random.SeedSequence([VERSION,
seed, crc32(split), i])``, a stable hash, so the data are identical across runs,
processes and machines, and the three splits draw from disjoint streams. The
scene (objects, colours, background kind, angle, phase) does not depend on
``image_size``: item ``i`` at 64 px and at 128 px shows the same scene. Texture
periods grow slowly with the image size (∝ sqrt(size / 64)) so that they stay a
few pixels wide at every resolution.

Rendering
---------
Vectorised NumPy over the pixel grid. Every object is drawn from its signed
distance function d(p) (in pixels, negative inside); the coverage of a pixel is
clip(0.5 - d, 0, 1), which gives anti-aliased edges without supersampling. The
outline is the band -w < d < 0. Images are quantised to 8 bits (like real
photographs) and mapped to [-1, 1] with x = u / 127.5 - 1.
"""
from __future__ import annotations

from .captions import article, caption_corpus, caption_scene, join_phrases
from .dataset import (DEFAULT_LENGTHS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, SPLITS, ShapesDataset, ShapesStream, generate,
                      render_scene, scene_label)
from .geometry import HALF_EXTENTS, shape_sdf
from .render import draw_object, outline_width, render, render_background
from .scene import (MARGIN, MAX_OVERLAP, VERSION, Background, Scene, ShapeObject, box_overlap, item_rng, make_object,
                    parse_holdout, relation, sample_background, sample_scene, scene_has, size_word, split_code)
from .segmentation import SEGMENTATION_CLASSES, segmentation_from_objects, segmentation_map
from .vocabulary import (BACKGROUND_NAMES, BACKGROUND_WORDS, COLOUR_NAMES, COLOURS, COUNT_WORDS, LABEL_KINDS,
                         PLURALS, POSITION_NAMES, POSITION_PHRASES, RELATION_PHRASES, RELATIONS, SHAPE_NAMES,
                         SHAPE_SYNONYMS, SIZE_NAMES, SIZE_RADII, label_names)

__all__ = [
    "BACKGROUND_NAMES", "BACKGROUND_WORDS", "COLOURS", "COLOUR_NAMES", "COUNT_WORDS", "DEFAULT_LENGTHS",
    "HALF_EXTENTS", "LABEL_KINDS", "MARGIN", "MAX_IMAGE_SIZE", "MAX_OVERLAP", "MIN_IMAGE_SIZE", "PLURALS",
    "POSITION_NAMES", "POSITION_PHRASES", "RELATIONS", "RELATION_PHRASES", "SEGMENTATION_CLASSES", "SHAPE_NAMES", "SHAPE_SYNONYMS",
    "SIZE_NAMES", "SIZE_RADII", "SPLITS", "VERSION", "Background", "Scene", "ShapeObject", "ShapesDataset",
    "ShapesStream", "article", "box_overlap", "caption_corpus", "caption_scene", "draw_object", "generate",
    "item_rng", "join_phrases", "label_names", "make_object", "outline_width", "parse_holdout", "relation",
    "render", "render_background", "render_scene", "sample_background", "sample_scene", "scene_has",
    "scene_label", "segmentation_from_objects", "segmentation_map", "shape_sdf", "size_word", "split_code",
]
