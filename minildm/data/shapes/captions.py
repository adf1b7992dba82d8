"""Captions: an English sentence per scene that names every object's colour and shape.

:func:`caption_scene` draws a template from the item's random generator: a plain
list ("a red circle and a small blue star"), counting ("three shapes: ..."), sizes,
positions ("in the top left"), synonyms (disc, rhombus, plus sign), the background
("on a striped background") and a spatial relation ("to the left of", "above", ...)
between the main object and another where :func:`~minildm.data.shapes.scene.relation`
finds it unambiguous. :func:`caption_corpus` lists the captions of a split without
rendering images. The phrase helpers :func:`article` and :func:`join_phrases` are
shared with the prompts of :mod:`minildm.eval.prompts`.

Notebook 05 trains its text encoder and text-to-image model on these captions.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .scene import Scene, ShapeObject, item_rng, relation, sample_scene
from .vocabulary import (BACKGROUND_WORDS, COUNT_WORDS, PLURALS, POSITION_PHRASES, RELATION_PHRASES, SHAPE_NAMES,
                         SHAPE_SYNONYMS)


def article(word: str) -> str:
    """The indefinite article for ``word``: "an" before a vowel, else "a"."""
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(obj: ShapeObject, rng: np.random.Generator, size: bool, position: bool) -> str:
    words = ([obj.size] if size else []) + [obj.colour, _pick(rng, SHAPE_SYNONYMS[obj.shape])]
    phrase = f"{article(words[0])} {' '.join(words)}"
    if position:
        phrase += " " + _pick(rng, POSITION_PHRASES[obj.position])
    return phrase


def join_phrases(parts: Sequence[str]) -> str:
    """["a", "b", "c"] -> "a, b and c" (one part is returned as it is)."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A caption that names every object's colour and shape, with varied templates.

    Templates choose among: a plain list ("a red circle and a small blue star"),
    counting ("three shapes: ..."), sizes, positions ("in the top left"), the
    background ("on a striped background") and one spatial relation between the
    main object and another when :func:`relation` finds it unambiguous.
    """
    objs = scene.objects
    bg = BACKGROUND_WORDS[scene.background.kind]
    backdrop = _pick(rng, ("background", "backdrop"))
    if not objs:
        return f"an empty {bg} {backdrop}"
    with_size = rng.random() < 0.5
    with_pos = rng.random() < 0.35
    nps = [_noun_phrase(o, rng, with_size, with_pos) for o in objs]
    n = len(objs)
    if n == 1:
        template = int(rng.integers(5))
        if template == 0:
            return nps[0]
        if template == 1:
            return f"{nps[0]} on a {bg} {backdrop}"
        if template == 2:
            return f"{_pick(rng, ('a picture', 'an image', 'a drawing'))} of {nps[0]}"
        if template == 3:
            return f"one {objs[0].colour} {_pick(rng, SHAPE_SYNONYMS[objs[0].shape])} " \
                   f"{_pick(rng, POSITION_PHRASES[objs[0].position])}"
        return f"a {bg} {backdrop} with {nps[0]}"
    rels = [(j, relation(objs[0], objs[j])) for j in range(1, n)]
    rels = [(j, r) for j, r in rels if r is not None]
    template = int(rng.integers(6))
    if template == 0 and rels:
        j, rel = rels[int(rng.integers(len(rels)))]
        text = f"{nps[0]} {_pick(rng, RELATION_PHRASES[rel])} {nps[j]}"
        rest = [nps[k] for k in range(1, n) if k != j]
        return text + (f", and {rest[0]}" if rest else "")
    if template == 1:
        return f"{COUNT_WORDS[n - 1]} {_pick(rng, ('shapes', 'objects'))}: {join_phrases(nps)}"
    if template == 2:
        return f"{join_phrases(nps)} on a {bg} {backdrop}"
    if template == 3:
        return (f"a {bg} {backdrop} with {COUNT_WORDS[n - 1]} {_pick(rng, ('shapes', 'objects'))}: "
                f"{join_phrases(nps)}")
    shapes = [o.shape for o in objs]
    repeated = [s for s in SHAPE_NAMES if shapes.count(s) >= 2]
    if template == 4 and repeated:
        s = repeated[0]
        same = [o for o in objs if o.shape == s]
        noun = SHAPE_SYNONYMS[s][0]
        plural = PLURALS.get(noun, noun + "s")
        text = f"{COUNT_WORDS[len(same) - 1]} {plural}, " + join_phrases([f"{article(o.colour)} {o.colour} one"
                                                                            for o in same])
        rest = [nps[k] for k, o in enumerate(objs) if o.shape != s]
        return text + (f", and {rest[0]}" if rest else "")
    return join_phrases(nps)


def caption_corpus(n: int, split: str = "train", seed: int = 0) -> list[str]:
    """The captions of the first ``n`` items of a shapes split (without rendering the images)."""
    out = []
    for i in range(n):
        rng = item_rng(seed, split, i)
        out.append(caption_scene(sample_scene(rng), rng))
    return out
