"""A fixed prompt set for compositional evaluation of text-to-image models.

Each *request* is a list of objects (shape, colour and optionally the position word) taken from a
scene of the shapes **validation** split, phrased with the captions' own templates
(:func:`prompt_for`): "a red star", "a red star in the top left",
"two shapes: a red star and a small blue circle". The checker (:mod:`minildm.eval.checker`) then reads
the generated image: is every object's colour there, with the right shape, in the right third
of the image, and is the number of objects right (:func:`minildm.eval.checker.score_prompt_samples`)?

Requests are grouped by kind (``single``: one object; ``position``: one object at a named
position; ``two``: two objects) and split into **seen** requests, whose (colour, shape) pairs
all occur in training, and **held-out** ones, with at least one pair the train split never shows
(``holdout`` of :mod:`minildm.data.shapes`): can the model compose a colour and a shape it has
only seen apart?

Taught in notebook 05.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Request", "prompt_for", "prompt_set", "PROMPT_KINDS", "parse_request"]

#: kinds of requests in :func:`prompt_set`, in the order they are drawn
PROMPT_KINDS = ("single", "position", "two")


@dataclass(frozen=True)
class Request:
    """What a prompt asks for: ``objects`` (dicts with ``shape``, ``colour``, ``shape_id``,
    ``colour_id`` and ``position`` or None), its ``kind``, whether it is ``held_out``, and the
    ``prompt`` text."""

    prompt: str
    objects: tuple[Mapping[str, Any], ...]
    kind: str
    held_out: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def count(self) -> int:
        return len(self.objects)


def _phrase(obj: Mapping[str, Any]) -> str:
    from ..data.shapes import POSITION_PHRASES, article

    text = f"{article(obj['colour'])} {obj['colour']} {obj['shape']}"
    if obj.get("position"):
        text += " " + POSITION_PHRASES[obj["position"]][0]
    return text


def prompt_for(objects: Sequence[Mapping[str, Any]]) -> str:
    """The caption of a request in the training captions' templates: one object alone, several
    as "N shapes: a …, a … and a …"."""
    from ..data.shapes import COUNT_WORDS, join_phrases

    if not objects:
        raise ValueError("a request needs at least one object")
    if len(objects) > len(COUNT_WORDS):
        raise ValueError(f"a request has at most {len(COUNT_WORDS)} objects, got {len(objects)}")
    phrases = [_phrase(o) for o in objects]
    if len(objects) == 1:
        return phrases[0]
    return f"{COUNT_WORDS[len(objects) - 1]} shapes: {join_phrases(phrases)}"


def _obj(shape: str, colour: str, position: str | None) -> dict[str, Any]:
    from ..data.shapes import COLOUR_NAMES, POSITION_NAMES, SHAPE_NAMES

    if shape not in SHAPE_NAMES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPE_NAMES)}")
    if colour not in COLOUR_NAMES:
        raise ValueError(f"unknown colour {colour!r}; allowed: {', '.join(COLOUR_NAMES)}")
    if position is not None and position not in POSITION_NAMES:
        raise ValueError(f"unknown position {position!r}; allowed: {', '.join(POSITION_NAMES)}")
    return {"shape": shape, "colour": colour, "shape_id": SHAPE_NAMES.index(shape),
            "colour_id": COLOUR_NAMES.index(colour), "position": position}


def parse_request(objects: Sequence[Mapping[str, Any] | tuple], holdout: Sequence[str] = ()) -> Request:
    """A :class:`Request` from hand-written objects: dicts with ``shape``, ``colour`` (and
    ``position``), or tuples (colour, shape[, position])."""
    from ..data.shapes import parse_holdout

    objs = []
    for o in objects:
        if isinstance(o, Mapping):
            objs.append(_obj(o["shape"], o["colour"], o.get("position")))
        else:
            objs.append(_obj(o[1], o[0], o[2] if len(o) > 2 else None))
    if len({o["colour"] for o in objs}) != len(objs):
        raise ValueError("the objects of a request must have different colours (as in the shapes data)")
    pairs = parse_holdout(holdout)
    kind = "two" if len(objs) > 1 else ("position" if objs[0]["position"] else "single")
    return Request(prompt_for(objs), tuple(objs), kind, any((o["colour"], o["shape"]) in pairs for o in objs))


def prompt_set(n_per_kind: int, holdout: Sequence[str] = (), seed: int = 0, split: str = "val",
               kinds: Sequence[str] = PROMPT_KINDS) -> dict[str, list[Request]]:
    """``{"seen": [...], "held_out": [...]}``: ``n_per_kind`` requests of every kind in each group,
    from the scenes of ``split`` in order (a pure function of the arguments) that the request
    describes completely: ``single`` and ``position`` from one-object scenes, ``two`` from
    two-object scenes (so the real image of a request, ``meta["scene"]``, is a reference answer). A request is held out when one of its (colour, shape) pairs is in ``holdout``;
    without a holdout the held-out group is empty."""
    from ..data.shapes import item_rng, parse_holdout, sample_scene

    if n_per_kind < 1:
        raise ValueError(f"n_per_kind must be >= 1, got {n_per_kind}")
    unknown = [k for k in kinds if k not in PROMPT_KINDS]
    if unknown:
        raise ValueError(f"unknown prompt kind(s) {unknown}; allowed: {', '.join(PROMPT_KINDS)}")
    pairs = parse_holdout(holdout)
    groups = ("seen", "held_out") if pairs else ("seen",)
    out: dict[str, list[Request]] = {"seen": [], "held_out": []}
    for kind in kinds:
        need = {g: n_per_kind for g in groups}
        index = 0
        while any(need.values()):
            if index > 200_000:  # pragma: no cover - only with an absurd holdout
                raise ValueError(f"could not find {n_per_kind} {kind} requests in the {split} split")
            scene = sample_scene(item_rng(seed, split, index))
            index += 1
            objs = list(scene.objects)
            if len(objs) != (2 if kind == "two" else 1):
                continue
            request = [_obj(o.shape, o.colour, o.position if kind == "position" else None) for o in objs]
            held = any((o["colour"], o["shape"]) in pairs for o in request)
            group = "held_out" if held else "seen"
            if need.get(group, 0) <= 0:
                continue
            need[group] -= 1
            out[group].append(Request(prompt_for(request), tuple(request), kind, held, {"scene": index - 1}))
    return out
