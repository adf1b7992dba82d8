"""The sections of a preset: one frozen dataclass per notebook's models (:mod:`minildm.recipes.presets`
holds the three presets built from them).

Each section lists sizes, step counts and recipe switches, never code paths. Taught in every notebook.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..models.encoder_decoder import AutoencoderConfig
    from ..models.unet import UNetConfig

__all__ = ["UNetSize", "AutoencoderPreset", "FeatureNetPreset", "AblationPreset", "FirstStagePreset", "LDMPreset",
           "CheckerPreset", "CondPreset", "I2IPreset", "T2ISize", "T2IPreset", "T2I_HOLDOUT", "Preset"]


@dataclass(frozen=True)
class UNetSize:
    """The size of a denoising UNet ε_θ (CompVis ``unet_config.params``), one section reused by every
    preset that builds one: base width ``model_channels``, its multipliers per level ``channel_mult``
    (the UNet downsamples len(channel_mult) − 1 times), ``num_res_blocks`` per level, attention at the
    downsampling rates in ``attention_resolutions`` with ``num_heads`` heads, and ``transformer_depth``
    transformer blocks per attention layer (with cross-attention when the model is conditional)."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    num_heads: int
    transformer_depth: int = 1

    def config(self, channels: int, context_dim: int | None = None, pooled_context: bool = False) -> "UNetConfig":
        """The :class:`~minildm.models.unet.UNetConfig` of this size on latents of ``channels`` channels
        (in = out), with cross-attention to a context of width ``context_dim`` if given, and the context's
        mean added to the timestep embedding if ``pooled_context``."""
        from ..models.unet import UNetConfig

        extra: dict[str, Any] = {"context_dim": context_dim, "transformer_depth": self.transformer_depth} if context_dim else {}
        if pooled_context:
            extra["pooled_context"] = True
        return UNetConfig(in_channels=channels, out_channels=channels, model_channels=self.model_channels,
                          channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks,
                          attention_resolutions=self.attention_resolutions, num_heads=self.num_heads, **extra)


@dataclass(frozen=True)
class AutoencoderPreset:
    """Sizes for the first stage (notebook 01, ``python -m minildm train-ae``).

    ``ch_mult`` fixes the downsampling factor: f = 2 ** (len(ch_mult) - 1). ``norm_num_groups``
    is the GroupNorm group count (at most; see :func:`minildm.models.nn.group_count`): small models
    keep several channels per group, since one channel per group (instance norm) slows learning.
    ``disc_weight_scale`` multiplies CompVis's adversarial weights (0.5 for KL, 0.75 for VQ): CompVis
    starts the discriminator on a converged decoder (after 50k steps); a short schedule starts it
    on one that is still learning, where a full-strength adversarial term costs PSNR.
    """

    image_size: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    z_channels: int
    norm_num_groups: int
    n_embed: int
    batch_size: int
    steps: int
    disc_start: int
    disc_ndf: int
    disc_weight_scale: float
    lr: float
    lpips_net: str
    n_train: int
    n_eval: int

    def model_config(self, **overrides: Any) -> "AutoencoderConfig":
        """The :class:`~minildm.models.encoder_decoder.AutoencoderConfig` of these sizes (image_size ->
        resolution, ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, norm_num_groups, n_embed);
        ``overrides`` change any field."""
        from ..models.encoder_decoder import AutoencoderConfig

        values: dict[str, Any] = dict(resolution=self.image_size, ch=self.ch, ch_mult=tuple(self.ch_mult),
                                      num_res_blocks=self.num_res_blocks, attn_resolutions=tuple(self.attn_resolutions),
                                      z_channels=self.z_channels, norm_num_groups=self.norm_num_groups,
                                      n_embed=self.n_embed)
        values.update(overrides)
        return AutoencoderConfig(**values)


@dataclass(frozen=True)
class FeatureNetPreset:
    """Sizes of the feature network behind the FID-style score (:mod:`minildm.eval.fid`: the content checker's
    architecture with ``width`` channels, 4·width features), trained on shapes images of ``image_size`` pixels."""

    image_size: int
    width: int
    batch_size: int
    steps: int
    lr: float
    n_train: int
    n_eval: int


@dataclass(frozen=True)
class AblationPreset:
    """The downsampling-factor ablation (notebook 02, ``python -m minildm ablate-f``).

    One KL autoencoder per f in ``factors`` (f = 1 is the identity: pixel space) with
    ``z_channels[f]`` latent channels, trained with the ``variant`` recipe for ``steps`` steps on
    ``image_size`` images at learning rate ``lr`` (None: the autoencoder preset's; other sizes from
    :class:`AutoencoderPreset`); its ``ch_mult`` is
    :meth:`~minildm.models.encoder_decoder.AutoencoderConfig.for_factor`'s for that f (log2(f) + 1 levels).

    The diffusion side is measured with one fixed UNet (``unet``) on each latent grid:
    ``unet_batch_size`` latents per training step, timed over ``timing_steps`` steps.
    """

    factors: tuple[int, ...]
    z_channels: tuple[tuple[int, int], ...]
    variant: str
    image_size: int
    steps: int
    unet: UNetSize
    unet_batch_size: int
    timing_steps: int
    lr: float | None = None

    def latent_channels(self, f: int) -> int:
        return dict(self.z_channels)[f]


@dataclass(frozen=True)
class FirstStagePreset:
    """The first stage of the conditional LDMs (notebooks 04 and 05, ``python -m minildm
    train-first-stage``): artifact ``kl-f{f}`` (CompVis names its pretrained first stages kl-f4,
    kl-f8, ...), the f-ablation's architecture for that f with ``z_channels`` latent channels,
    trained with the ``variant`` recipe for ``steps`` steps of ``batch_size`` at ``lr`` on
    ``image_size`` images (other sizes from :class:`AutoencoderPreset`). The ablation trains many
    autoencoders briefly to compare them; the models that draw content need one that keeps it."""

    variant: str
    image_size: int
    z_channels: int
    steps: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class LDMPreset:
    """The latent DDPM and the pixel-vs-latent experiment (notebook 03, ``python -m minildm train-ldm``).

    One :class:`~minildm.UNetModel` size (``unet``) is trained on the latents
    of each first stage ``ae-kl-f{f}`` of notebook 02 for f in ``factors`` (f = 1: pixel space), each
    for the same wall-clock ``budget_s``, with the FID-style score measured at ``eval_points``
    evenly spaced times on ``n_fid`` DDIM samples of ``eval_ddim_steps`` steps.
    """

    factors: tuple[int, ...]
    image_size: int
    unet: UNetSize
    schedule: str
    timesteps: int
    batch_size: int
    lr: float
    ema_decay: float
    budget_s: float
    eval_points: int
    n_fid: int
    eval_ddim_steps: int
    n_train: int
    #: β_1 and β_T (None: the schedule's defaults); the presets use the paper's LDM schedule, CompVis'
    #: "linear" (√β linear from 0.0015 to 0.0155, ᾱ_T = 6.7e-4): DDPM's (ᾱ_T = 4e-5) multiplies an ε error
    #: by √((1 − ᾱ_T)/ᾱ_T) = 157 in the first sampling step (notebook 03)
    linear_start: float | None = None
    linear_end: float | None = None


@dataclass(frozen=True)
class CheckerPreset:
    """The content checker of notebook 04 (:mod:`minildm.eval.checker`): a classifier and locator trained
    on shapes images of ``image_size`` pixels (that of the conditional models it judges)."""

    image_size: int
    width: int
    batch_size: int
    steps: int
    lr: float
    n_train: int
    n_eval: int


@dataclass(frozen=True)
class CondPreset:
    """The conditional LDMs of notebook 04 (``python -m minildm train-cond``): a UNet with
    cross-attention (``unet``, with ``context_dim``) on the latents of ``kl-f{f}``
    (:class:`FirstStagePreset`), predicting ``parameterization`` (ε, x_0 or v; v by default: under the ε
    loss a layout model never learns where to draw: see
    :meth:`~minildm.diffusion.process.GaussianDiffusion.training_losses`), trained for ``steps``
    (the layout model for ``layout_steps``, if given) with conditioning dropout ``p_uncond``,
    ``snr_gamma`` loss weighting unless None (``loss_weighting``: "min_snr" or "capped", see
    :meth:`~minildm.diffusion.process.GaussianDiffusion.training_losses`), ``warmup_steps`` of linear lr warm-up and a cosine
    lr decay to ``min_lr_ratio`` · lr by the last step unless None; then evaluated by the content
    checker on ``n_eval`` samples (DDIM, ``eval_ddim_steps``) per guidance scale in ``guidance_scales``.
    ``class_parameterization`` and ``class_loss_weighting``, if given, replace the two for the class
    model alone: the weighting that places boxes is not the one that draws shapes (notebook 04)."""

    f: int
    image_size: int
    unet: UNetSize
    context_dim: int
    layout_depth: int
    schedule: str
    timesteps: int
    batch_size: int
    lr: float
    ema_decay: float
    p_uncond: float
    steps: int
    n_train: int
    n_eval: int
    eval_ddim_steps: int
    guidance_scales: tuple[float, ...]
    snr_gamma: float | None = None
    warmup_steps: int = 0
    min_lr_ratio: float | None = None
    layout_steps: int | None = None
    parameterization: str = "v"
    loss_weighting: str = "min_snr"
    class_parameterization: str | None = None
    class_loss_weighting: str | None = None
    #: β_1 and β_T of ``schedule`` (None: its defaults), as :attr:`LDMPreset.linear_start`
    linear_start: float | None = None
    linear_end: float | None = None
    #: add the condition's pooled embedding to the timestep embedding (:class:`~minildm.models.unet.UNetConfig`):
    #: every ResBlock, also at full latent resolution, learns which class or objects it draws (ADM's class
    #: embedding), where cross-attention reaches only the attention resolutions
    pooled_context: bool = False

    def steps_for(self, kind: str) -> int:
        """Training steps of the ``kind`` ("class" or "layout") model."""
        return self.layout_steps if kind == "layout" and self.layout_steps is not None else self.steps

    def parameterization_for(self, kind: str) -> str:
        """What the ``kind`` model's UNet predicts: ``class_parameterization`` for the class model if
        given, else ``parameterization``."""
        if kind == "class" and self.class_parameterization is not None:
            return self.class_parameterization
        return self.parameterization

    def loss_weighting_for(self, kind: str) -> str:
        """How ``snr_gamma`` weighs the ``kind`` model's loss: ``class_loss_weighting`` for the class
        model if given, else ``loss_weighting``."""
        if kind == "class" and self.class_loss_weighting is not None:
            return self.class_loss_weighting
        return self.loss_weighting


@dataclass(frozen=True)
class T2ISize:
    """One model size of the text-to-image scaling study: the UNet (``unet``) and, for the encoder trained
    from scratch, its width ``context_dim`` and ``text_depth`` (a frozen encoder has its own width)."""

    name: str
    unet: UNetSize
    context_dim: int
    text_depth: int


@dataclass(frozen=True)
class T2IPreset:
    """The text-to-image LDMs of notebook 05 (``python -m minildm train-ldm --cond text``): on the
    latents of ``kl-f{f}`` (:class:`FirstStagePreset`), captions of ``n_train`` train images without
    the ``holdout`` (colour, shape) pairs, ``sizes`` for the scaling study (``size`` is the default model),
    prompts of at most ``max_length`` tokens. Evaluation: ``n_eval_per_kind`` prompts per kind
    and group (seen / held-out), ``samples_per_prompt`` each, DDIM ``eval_ddim_steps``, at
    ``guidance_scales``; the scaling curve is measured at ``curve_points`` evenly spaced steps on
    ``curve_prompts`` prompts per kind at guidance ``curve_scale``. Training: AdamW at ``lr`` with
    ``warmup_steps`` of warm-up and, unless ``min_lr_ratio`` is None, a cosine decay to
    ``min_lr_ratio`` · lr by the last step; ``snr_gamma`` weighting (``loss_weighting``) unless None; the UNet
    predicts ``parameterization`` (ε, x_0 or v) and, if ``pooled_context``, adds the caption's mean token
    vector to its timestep embedding beside cross-attention (:class:`~minildm.models.unet.UNetConfig`)."""

    f: int
    image_size: int
    sizes: tuple[T2ISize, ...]
    size: str
    max_length: int
    schedule: str
    timesteps: int
    batch_size: int
    lr: float
    ema_decay: float
    p_uncond: float
    steps: int
    n_train: int
    holdout: tuple[str, ...]
    n_eval_per_kind: int
    samples_per_prompt: int
    eval_ddim_steps: int
    guidance_scales: tuple[float, ...]
    curve_points: int
    curve_prompts: int
    curve_scale: float
    checkpoint_every: int
    snr_gamma: float | None = None
    warmup_steps: int = 0
    min_lr_ratio: float | None = None
    parameterization: str = "v"
    loss_weighting: str = "min_snr"
    pooled_context: bool = False
    #: β_1 and β_T of ``schedule`` (None: its defaults), as :attr:`LDMPreset.linear_start`
    linear_start: float | None = None
    linear_end: float | None = None

    def get_size(self, name: str | None = None) -> T2ISize:
        """The :class:`T2ISize` called ``name`` (default: ``size``); ValueError naming the choices."""
        name = name or self.size
        for s in self.sizes:
            if s.name == name:
                return s
        raise ValueError(f"unknown model size {name!r}: choose one of {', '.join(s.name for s in self.sizes)}")


#: (colour, shape) pairs the text-to-image models never see in training: one per shape, each with
#: another colour, so that every colour and every shape is still seen with others
T2I_HOLDOUT = ("red star", "orange circle", "yellow cross", "green square", "cyan hexagon", "blue triangle",
               "purple diamond")


@dataclass(frozen=True)
class I2IPreset:
    """The image-to-image LDMs of notebook 06 (``python -m minildm train-ldm --task sr|inpaint|semantic``):
    one UNet size ``unet`` for all three, on the latents of ``kl-f{f}`` (semantic synthesis, shapes) or of
    ``kl-f{f}-photos`` (super-resolution and inpainting, shapes and photo crops; ``kl-f{f}`` trained
    ``photo_first_stage_steps`` more steps on both), with a spatial condition concatenated to z_t. Each
    trains ``{sr,inpaint,semantic}_steps`` steps on ``n_train`` images (v-prediction with the capped x̂₀
    weight as in notebook 04) and is measured on ``n_eval`` validation images (DDIM, ``eval_ddim_steps``).
    ``sr_factor``: the upscaling factor (4 in the paper). The pixel-space inpainting model ``pdm-inpaint``
    (the same UNet on pixels) trains for the FLOPs of ``compare_steps`` steps of ``ldm-inpaint``, whose
    EMA weights are measured at that step too (paper Tab. 6/7: LDM vs pixel DM at equal compute)."""

    f: int
    image_size: int
    unet: UNetSize
    schedule: str
    timesteps: int
    batch_size: int
    lr: float
    ema_decay: float
    n_train: int
    n_eval: int
    eval_ddim_steps: int
    sr_steps: int
    inpaint_steps: int
    semantic_steps: int
    compare_steps: int
    photo_first_stage_steps: int
    sr_factor: int = 4
    #: how the segmentation map reaches the latent grid (:class:`~minildm.conditioning.concat.SegmentationMap`):
    #: "space_to_depth" (the full-resolution map folded into channels) or "area" (class fractions per cell)
    semantic_rescaler: str = "space_to_depth"
    #: how the inpainting condition fills the hole before encoding (:class:`~minildm.conditioning.concat.MaskedImage`):
    #: "pyramid" (push-pull interpolation) or "zero" (mid grey, Stable Diffusion's convention)
    inpaint_fill: str = "pyramid"
    #: the UNet of the inpainting pair ``ldm-inpaint`` / ``pdm-inpaint`` (None: ``unet``): photo crops
    #: ask for more capacity than super-resolution and semantic synthesis
    inpaint_unet: UNetSize | None = None
    #: autocast dtype of training on a CPU: "fp32", or "bf16" (used where the CPU has bfloat16 units,
    #: which train UNets of these widths faster; fp32 elsewhere). GPUs use the trainer's "auto".
    cpu_precision: str = "fp32"
    #: steps, batch size and learning rate of the asymmetric decoder ``kl-f4-photos-asym`` (the decoder of
    #: ``kl-f{f}-photos`` continued with a branch that sees the known pixels; notebook 06)
    asym_steps: int = 2000
    asym_batch_size: int = 16
    asym_lr: float = 4e-4
    #: the largest noise added to its latents in training, as a fraction of their standard deviation: an LDM's
    #: sampled latents are not E(x) (measured on ldm-inpaint: 0.07 std RMS in the cells no hole touches), and a
    #: decoder that has seen only exact latents trusts them over the known pixels
    asym_latent_noise: float = 0.15
    parameterization: str = "v"
    loss_weighting: str = "capped"
    snr_gamma: float | None = 5.0
    linear_start: float | None = None
    linear_end: float | None = None
    warmup_steps: int = 0
    min_lr_ratio: float | None = None

    def steps_for(self, task: str) -> int:
        """Training steps of the ``task`` ("sr", "inpaint" or "semantic") model."""
        return {"sr": self.sr_steps, "inpaint": self.inpaint_steps, "semantic": self.semantic_steps}[task]

    def unet_for(self, task: str) -> UNetSize:
        """The UNet size of the ``task`` models: ``inpaint_unet`` for inpainting where set, else ``unet``."""
        return self.inpaint_unet if task == "inpaint" and self.inpaint_unet is not None else self.unet


@dataclass(frozen=True)
class Preset:
    """All sizes of one preset. Sections are added as the notebooks grow."""

    name: str
    seed: int
    num_workers: int
    ae: AutoencoderPreset
    features: FeatureNetPreset
    ablation: AblationPreset
    ldm: LDMPreset
    checker: CheckerPreset
    cond: CondPreset
    t2i: T2IPreset
    first_stage: FirstStagePreset
    i2i: I2IPreset
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_ae(self, **changes: Any) -> "Preset":
        """A copy with some autoencoder sizes changed (e.g. ``steps=10`` for a quick try)."""
        return replace(self, ae=replace(self.ae, **changes))
