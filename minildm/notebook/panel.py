"""The instructor panel of the downsampling-factor ablation (notebook 02).

:class:`FactorPanel` shows one f, or two side by side, on the same validation or test image:
the reconstruction, its error map, a zoomed crop or the latent channels, next to the metric curves
(PSNR, LPIPS, FID-style score, UNet step time against f) with the chosen factors marked.

The models come from the artifact cache (``ae-kl-f{f}``); a factor whose artifact is missing is
listed with the exact command that builds it, and the panel's *train* button builds it in place
(with a progress bar). Reconstructions are computed once per (f, split) and cached, so after the
first view every change of a widget only redraws (well under a second on a laptop CPU).

Headless use (tests, scripts): ``panel.render(f=4, compare=16, index=0, split="val",
view="error map")`` returns the matplotlib Figure without any widget.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..engine.device import get_device
from ..recipes.ablation import ablation_name
from ..recipes.presets import Preset, get_preset

__all__ = ["FactorPanel", "VIEWS", "SPLITS"]

VIEWS: tuple[str, ...] = ("reconstruction", "error map", "zoomed crop", "latent channels")
SPLITS: tuple[str, ...] = ("val", "test")
_NONE = "none"
#: the metric curves beside the images (dataset averages from each artifact's metrics): key, title, log y-axis
_CURVES = (("psnr", "PSNR (dB) ↑, val mean", False), ("lpips", "LPIPS ↓, val mean", False),
           ("fid", "FD-feat ↓ (log)", True), ("unet_step_ms", "UNet training step, ms ↓ (log)", True))


class FactorPanel:
    """Compare downsampling factors live. See the module docstring.

    Args:
        preset: preset whose artifacts are shown (default ``$MINILDM_PRESET``).
        factors: the factors offered (default: the preset's ablation factors).
        n_images: images per split to choose from.
        device: where the autoencoders run.
        root: artifact root (default ``$MINILDM_ARTIFACTS``, else ``./artifacts``).
        models: ``{f: first stage}`` to show instead of cached artifacts (tests, own models);
            ``rows`` then gives their metrics ``{f: {"psnr": ..., ...}}``.
    """

    def __init__(self, preset: str | Preset | None = None, *, factors: Sequence[int] | None = None,
                 n_images: int = 8, device: str | torch.device | None = None, root: Any = None,
                 models: dict[int, torch.nn.Module] | None = None,
                 rows: dict[int, dict[str, Any]] | None = None) -> None:
        from ..recipes.ablation import ablation_preset

        self.preset = get_preset(preset)
        self.factors = tuple(factors) if factors is not None else tuple(self.preset.ablation.factors)
        if not self.factors:
            raise ValueError("FactorPanel needs at least one factor")
        if not isinstance(n_images, int) or n_images < 1:
            raise ValueError(f"n_images must be a positive int, got {n_images!r}")
        self.n_images = n_images
        self.device = get_device(device)
        self.root = root
        self.image_size = ablation_preset(self.preset).ae.image_size
        self.models: dict[int, torch.nn.Module] = {}
        self.rows: dict[int, dict[str, Any]] = dict(rows or {})
        self.missing: dict[int, str] = {}
        if models is not None:
            self.models = {f: m.to(self.device).eval() for f, m in models.items()}
            self.missing = {f: "no model given" for f in self.factors if f not in self.models}
        else:
            for f in self.factors:
                self._load(f)
        self._images: dict[str, torch.Tensor] = {}
        self._cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._metrics: dict[tuple[int, str, int], dict[str, float]] = {}
        self.timings: list[float] = []
        self._widgets: dict[str, Any] | None = None
        self._out: Any = None

    # -- models and data ------------------------------------------------------------------
    def command(self, f: int) -> str:
        """The command that builds the artifact of factor ``f``."""
        from ..recipes.registry import get_spec

        return get_spec(ablation_name(f)).command(self.preset)

    def _load(self, f: int) -> None:
        from ..recipes.store import load_trained

        try:
            art = load_trained(ablation_name(f), self.preset, device=self.device, root=self.root)
        except ValueError as err:
            self.missing[f] = str(err)
            return
        self.models[f] = art.model.eval()
        self.rows[f] = art.metrics
        self.missing.pop(f, None)

    def train_missing(self, factors: Sequence[int] | None = None) -> None:
        """Build the missing artifacts (progress bar) and load them."""
        from ..recipes.store import load_or_train

        for f in factors if factors is not None else list(self.missing):
            load_or_train(ablation_name(f), self.preset, device=self.device, root=self.root)
            self._load(f)

    def images(self, split: str) -> torch.Tensor:
        """The first ``n_images`` images of ``split`` (N, 3, H, W) in [-1, 1]."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        if split not in self._images:
            from ..data import load_dataset

            ds = load_dataset("shapes", split, self.image_size, length=self.n_images, seed=self.preset.seed)
            self._images[split] = torch.stack([ds[i]["image"] for i in range(self.n_images)])
        return self._images[split]

    @torch.no_grad()
    def reconstructions(self, f: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstructions (N, 3, H, W), latents (N, c, H/f, W/f)) of factor f on ``split``, cached."""
        key = (f, split)
        if key not in self._cache:
            if f not in self.models:
                raise ValueError(f"no model for f={f}: {self.missing.get(f, 'unknown factor')}")
            x = self.images(split).to(self.device)
            model = self.models[f]
            z = model.encode_latent(x)
            self._cache[key] = (model.decode(z).clamp(-1, 1).cpu(), z.float().cpu())
        return self._cache[key]

    # -- drawing --------------------------------------------------------------------------
    def _check(self, f: int, compare: int | str | None, index: int, split: str, view: str) -> None:
        if f not in self.factors:
            raise ValueError(f"f={f} is not offered: choose one of {self.factors}")
        if compare not in (None, _NONE) and compare not in self.factors:
            raise ValueError(f"compare={compare!r} is not offered: choose 'none' or one of {self.factors}")
        if not 0 <= index < self.n_images:
            raise ValueError(f"index must be in [0, {self.n_images}), got {index}")
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}: choose one of {', '.join(VIEWS)}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")

    def _zoom_box(self) -> tuple[int, int, int]:
        size = max(8, self.image_size // 4)
        c = self.image_size // 2 - size // 2
        return (c, c, size)

    def _draw_view(self, ax: Any, f: int, index: int, split: str, view: str) -> None:
        from . import viz

        ax.set_xticks([])
        ax.set_yticks([])
        if f not in self.models:
            import textwrap

            command = "\n".join(textwrap.wrap(self.command(f), 26, break_on_hyphens=False))
            ax.text(0.5, 0.5, f"f = {f}: not built yet\n\n{command}", ha="center", va="center", fontsize=7,
                    family="monospace", transform=ax.transAxes)
            return
        x = self.images(split)[index]
        rec, z = self.reconstructions(f, split)
        rec = rec[index]
        title = f"f = {f}, latent {'×'.join(map(str, z.shape[1:]))}"
        if view == "reconstruction":
            ax.imshow(viz.to_numpy_image(rec))
        elif view == "error map":
            ax.imshow(viz.error_map(x, rec).numpy(), cmap="magma", vmin=0, vmax=1)
            title += f"\nmean |x − x̂| = {viz.error_map(x, rec).mean():.3f}"
        elif view == "zoomed crop":
            ax.imshow(viz.to_numpy_image(viz.zoom(rec, self._zoom_box(), scale=4)))
        else:
            ch = viz.latent_channels(z[index])
            n = min(ch.shape[0], 16)
            cols = math.ceil(math.sqrt(n))
            rows_ = math.ceil(n / cols)
            h, w = ch.shape[-2:]
            grid = torch.full((rows_ * (h + 1), cols * (w + 1)), float("nan"))
            for i in range(n):
                r, c = divmod(i, cols)
                grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = (ch[i] + 1) / 2
            ax.imshow(grid.numpy(), cmap="viridis", vmin=0, vmax=1)
            title += f"\n{n} of {ch.shape[0]} channels"
        if view != "latent channels":
            quality = self.image_metrics(f, split, index)
            psnr = "∞" if math.isinf(quality["psnr"]) or quality["psnr"] >= 99 else f"{quality['psnr']:.1f}"
            title += f"\nthis image: PSNR {psnr} dB, LPIPS {quality['lpips']:.3f}"
        ax.set_title(title, fontsize=9)

    @torch.no_grad()
    def image_metrics(self, f: int, split: str, index: int) -> dict[str, float]:
        """PSNR and LPIPS of factor ``f``'s reconstruction of image ``index`` of ``split`` (cached)."""
        key = (f, split, index)
        if key not in self._metrics:
            from ..eval.metrics import psnr
            from ..losses.lpips import get_lpips

            x = self.images(split)[index:index + 1]
            rec = self.reconstructions(f, split)[0][index:index + 1]
            self._metrics[key] = {"psnr": float(psnr(x, rec)), "lpips": float(get_lpips("alex")(x, rec))}
        return self._metrics[key]

    def render(self, f: int, compare: int | str | None = None, index: int = 0, split: str = "val",
               view: str = "reconstruction"):
        """The panel's figure for one choice of widgets (no widgets needed); returns the Figure."""
        import matplotlib.pyplot as plt

        from . import viz

        self._check(f, compare, index, split, view)
        chosen = [f] + ([compare] if compare not in (None, _NONE) else [])
        fig = plt.figure(figsize=(3.0 * (1 + len(chosen)) + 6.0, 4.2), layout="constrained")
        grid = fig.add_gridspec(2, 1 + len(chosen) + 2)
        ax = fig.add_subplot(grid[:, 0])
        x = self.images(split)[index]
        shown = viz.zoom(x, self._zoom_box(), scale=4) if view == "zoomed crop" else x
        ax.imshow(viz.to_numpy_image(shown))
        ax.set_title(f"original ({split} #{index})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for i, g in enumerate(chosen):
            self._draw_view(fig.add_subplot(grid[:, 1 + i]), int(g), index, split, view)
        for k, (key, label, log_y) in enumerate(_CURVES):
            ax = fig.add_subplot(grid[k // 2, 1 + len(chosen) + k % 2])
            pts = sorted((g, r[key]) for g, r in self.rows.items() if r.get(key) is not None
                         and g in self.factors and math.isfinite(r[key]) and not (key == "psnr" and r[key] >= 99))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="0.4", ms=4)
            for g, colour in zip(chosen, ("tab:red", "tab:blue")):
                ax.axvline(g, color=colour, lw=1.5, alpha=0.7)
            ax.set_xscale("log", base=2)
            if log_y:
                ax.set_yscale("log")
            ax.set_xticks(list(self.factors), [str(g) for g in self.factors])
            ax.set_title(label, fontsize=9)
            ax.tick_params(labelsize=8)
        return fig

    # -- widgets --------------------------------------------------------------------------
    def widgets(self) -> dict[str, Any]:
        """The ipywidgets controls (created once): f, compare, index, split, view."""
        if self._widgets is None:
            import ipywidgets as w

            self._widgets = {
                "f": w.Dropdown(options=list(self.factors), value=4 if 4 in self.factors else self.factors[0],
                                description="f"),
                "compare": w.Dropdown(options=[_NONE, *self.factors], value=_NONE, description="compare with"),
                "index": w.IntSlider(value=0, min=0, max=self.n_images - 1, description="image"),
                "split": w.ToggleButtons(options=list(SPLITS), value="val", description="split"),
                "view": w.ToggleButtons(options=list(VIEWS), value="reconstruction", description="view"),
            }
        return self._widgets

    def value(self) -> dict[str, Any]:
        """The current choice of the widgets as :meth:`render` arguments."""
        return {k: v.value for k, v in self.widgets().items()}

    def update(self, change: Any = None) -> float:
        """Redraw for the widgets' current values into the output area; returns the seconds it took."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        t0 = time.perf_counter()
        out = self.output()
        with out:
            out.clear_output(wait=True)
            fig = self.render(**self.value())
            display(fig)
            plt.close(fig)
        elapsed = time.perf_counter() - t0
        self.timings.append(elapsed)
        return elapsed

    def output(self) -> Any:
        if self._out is None:
            import ipywidgets as w

            self._out = w.Output()
        return self._out

    def widget(self) -> Any:
        """The whole panel as one ipywidgets box (display it in a notebook)."""
        import ipywidgets as w

        controls = self.widgets()
        for c in controls.values():
            c.observe(self.update, names="value")
        items: list[Any] = [w.HBox([controls["f"], controls["compare"], controls["index"]]),
                            controls["split"], controls["view"]]
        if self.missing:
            text = "<br>".join(f"f = {f}: <code>{self.command(f)}</code>" for f in sorted(self.missing))
            button = w.Button(description="train missing", icon="play")

            def _train(_: Any) -> None:
                with self.output():
                    self.train_missing()
                self.update()

            button.on_click(_train)
            items.append(w.VBox([w.HTML(f"<b>Not built yet</b> (the button trains them):<br>{text}"), button]))
        items.append(self.output())
        self.update()
        return w.VBox(items)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget())
