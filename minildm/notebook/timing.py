"""How long a notebook takes: the training its shipped models cost (read from their provenance) and
the wall time of the run itself. Every notebook prints both (the first at its top, the second in its
last cell), so the times a reader sees are measured, not quoted.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..recipes.presets import Preset, get_preset
from ..recipes.shipped import read_provenance, shipped_dir, train_from_scratch

__all__ = ["Stopwatch", "training_cost"]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def training_cost(names: Sequence[str], preset: str | Preset | None = None) -> str:
    """A Markdown paragraph: which of ``names`` ship trained for ``preset`` and what training them from
    scratch took (steps, wall time, device and threads, from each ``provenance.json``)."""
    p = get_preset(preset)
    rows: list[str] = []
    total = 0.0
    missing = []
    for name in names:
        folder = shipped_dir(name, p)
        if not (folder / "provenance.json").is_file():
            missing.append(name)
            continue
        prov: dict[str, Any] = read_provenance(folder, name, p)
        last = prov["stretches"][-1]
        total += float(prov["total_train_time_s"])
        where = f"{last.get('hardware', '?')}, {last.get('threads', '?')} thread(s)"
        rows.append(f"| `{name}` | {prov['total_steps']:,} | {_minutes(prov['total_train_time_s'])} | "
                    f"{len(prov['stretches'])} | {where} |")
    out = []
    if rows:
        out += [f"**Shipped weights** (`data/weights/{p.name}/`): training them from scratch took "
                f"{_minutes(total)} in all.", "",
                "| model | steps | training time | stretches | trained on |", "|---|---|---|---|---|", *rows]
        if train_from_scratch():
            out += ["", "`MINILDM_TRAIN=1` is set: this run trains them instead of loading them."]
    if missing:
        out += ["", f"Not shipped for preset `{p.name}` (trained here on first use, then cached): "
                + ", ".join(f"`{n}`" for n in missing) + "."]
    return "\n".join(out)


class Stopwatch:
    """Wall time since construction: ``str(clock)`` gives e.g. ``"4.2 min"``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    def __str__(self) -> str:
        return _minutes(self.elapsed_s) if self.elapsed_s >= 60 else f"{self.elapsed_s:.0f} s"
