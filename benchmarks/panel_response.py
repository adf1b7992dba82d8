"""How quickly the f-ablation panel of notebook 02 answers a change of a widget, measured in one run.

    python benchmarks/panel_response.py [--preset cpu] [--device cpu] [--changes 24]

Uses the cached ``ae-kl-f{f}`` artifacts of the preset (``python -m minildm ablate-f --preset P``
builds them); where one is missing, an untrained autoencoder of the same configuration stands in
(the drawing cost is the same). Applies a fixed sequence of widget changes, as an instructor would,
and prints the median and maximum time per change, and the ratio of the median to the one-second
target. Each time includes drawing the figure and rendering it to PNG (what the notebook's inline
backend does), and the first view of each split computes its reconstructions once.
Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import io
import itertools
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from minildm.engine.device import get_device

from minildm.models.autoencoder import AutoencoderKL, IdentityConfig, IdentityFirstStage  # noqa: E402
from minildm.notebook.panel import SPLITS, VIEWS, FactorPanel  # noqa: E402
from minildm.recipes.ablation import ablation_name, ablation_preset, first_stage_config  # noqa: E402
from minildm.recipes.autoencoder import autoencoder_model_config
from minildm.recipes.presets import get_preset  # noqa: E402
from minildm.recipes.registry import list_artifacts
from minildm.recipes.store import load_artifact  # noqa: E402


def models_for(preset, device):
    """Cached models where they exist, untrained stand-ins elsewhere; returns (models, rows, n_cached)."""
    list_artifacts()
    models, rows, cached = {}, {}, 0
    for f in preset.ablation.factors:
        try:
            art = load_artifact(ablation_name(f), preset, device=device)
            models[f], rows[f] = art.model, art.metrics
            cached += 1
        except ValueError:
            if f == 1:
                models[f] = IdentityFirstStage(IdentityConfig(3, preset.ablation.image_size))
            else:
                models[f] = AutoencoderKL(autoencoder_model_config("kl", ablation_preset(preset), first_stage_config(f, preset)))
    return models, rows, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--changes", type=int, default=24)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    device = get_device(args.device)
    models, rows, cached = models_for(preset, device)
    panel = FactorPanel(preset, device=device, models=models, rows=rows)
    controls = panel.widgets()  # not observed: each change is drawn below, as the notebook's inline backend does
    values = {"f": list(panel.factors), "compare": ["none", *panel.factors], "index": list(range(panel.n_images)),
              "split": list(SPLITS), "view": list(VIEWS)}
    t: list[float] = []
    names = itertools.cycle(["f", "view", "index", "compare", "split"])
    for i, name in zip(range(args.changes), names):
        options = values[name]
        current = controls[name].value
        new = options[(options.index(current) + 1 + i) % len(options)]
        controls[name].value = new if new != current else options[0]
        t0 = time.perf_counter()
        fig = panel.render(**panel.value())
        fig.savefig(io.BytesIO(), format="png")  # what the inline backend sends to the browser
        plt.close(fig)
        t.append(time.perf_counter() - t0)
    print(f"preset {preset.name}, {device}, {cached}/{len(models)} cached artifacts, {len(t)} changes")
    print(f"median {statistics.median(t) * 1000:.0f} ms per change, max {max(t) * 1000:.0f} ms; "
          f"median / 1 s target = {statistics.median(t):.2f}")


if __name__ == "__main__":
    main()
