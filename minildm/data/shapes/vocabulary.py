"""The words of the shapes data: shape, colour, size, position, background and relation names.

Everything a scene, a caption or a label is made of is a name from these tables:
:data:`SHAPE_NAMES` (7 shapes, with the caption synonyms of :data:`SHAPE_SYNONYMS`
and the irregular :data:`PLURALS`), :data:`COLOURS` (8 named sRGB colours),
:data:`SIZE_NAMES` with their radius ranges :data:`SIZE_RADII`, :data:`POSITION_NAMES`
(thirds of the image) with the caption phrases :data:`POSITION_PHRASES`,
:data:`BACKGROUND_NAMES` with the adjectives :data:`BACKGROUND_WORDS`, :data:`RELATIONS`
with :data:`RELATION_PHRASES`, :data:`COUNT_WORDS`, and the label kinds
:data:`LABEL_KINDS` with their class names (:func:`label_names`).

Notebook 04 conditions on the class labels and layouts built from these names;
notebook 05 fits its word tokenizer on the captions and phrase tables.
"""
from __future__ import annotations

SHAPE_NAMES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
#: Words a caption may use for each shape.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon",),
    "cross": ("cross", "plus sign"),
}
#: Irregular plurals of caption nouns (any other noun takes "s").
PLURALS: dict[str, str] = {"cross": "crosses", "plus sign": "plus signs", "rhombus": "rhombi"}

#: Named object colours (sRGB, 0..255): saturated and well apart in hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (222, 38, 38),
    "orange": (247, 134, 20),
    "yellow": (250, 222, 40),
    "green": (40, 176, 62),
    "cyan": (36, 208, 224),
    "blue": (36, 76, 226),
    "purple": (138, 56, 206),
    "pink": (250, 112, 196),
}
COLOUR_NAMES = tuple(COLOURS)

SIZE_NAMES = ("small", "medium", "large")
#: Object scale ("radius") as a fraction of the image side for each size word.
SIZE_RADII: dict[str, tuple[float, float]] = {
    "small": (0.085, 0.105),
    "medium": (0.125, 0.155),
    "large": (0.18, 0.22),
}

POSITION_NAMES = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
#: Caption phrases for each position word.
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "in the top left corner"),
    "top": ("at the top",),
    "top right": ("in the top right", "in the top right corner"),
    "left": ("on the left",),
    "centre": ("in the centre", "in the middle"),
    "right": ("on the right",),
    "bottom left": ("in the bottom left", "in the bottom left corner"),
    "bottom": ("at the bottom",),
    "bottom right": ("in the bottom right", "in the bottom right corner"),
}

BACKGROUND_NAMES = ("stripes", "checker", "dots", "grain", "waves")
#: Adjective used in captions for each background texture.
BACKGROUND_WORDS = {"stripes": "striped", "checker": "checkered", "dots": "dotted", "grain": "grainy",
                    "waves": "wavy"}

LABEL_KINDS = ("shape", "colour", "shape_colour", "count")
COUNT_WORDS = ("one", "two", "three")
RELATIONS = ("left of", "right of", "above", "below")
#: Caption phrases for each relation.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}


def label_names(kind: str = "shape") -> tuple[str, ...]:
    """Class names for a label kind: ``"shape"`` (7), ``"colour"`` (8), ``"shape_colour"`` (56, class
    shape_id * 8 + colour_id is "colour shape") or ``"count"`` (3, class = number of objects - 1)."""
    if kind == "shape":
        return SHAPE_NAMES
    if kind == "colour":
        return COLOUR_NAMES
    if kind == "shape_colour":
        return tuple(f"{c} {s}" for s in SHAPE_NAMES for c in COLOUR_NAMES)
    if kind == "count":
        return COUNT_WORDS
    raise ValueError(f"unknown label kind {kind!r}; allowed: {', '.join(LABEL_KINDS)}")
