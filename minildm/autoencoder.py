"""The first stage: perceptually compressing autoencoders (paper Sec. 3.1).

Given an image x ∈ R^{H×W×3} (here channels first: (B, 3, H, W) in [-1, 1]), the
encoder E maps it to a latent z = E(x) ∈ R^{h×w×c} and the decoder D reconstructs
x̃ = D(z) = D(E(x)). The encoder downsamples by a factor f = H/h = W/w = 2^m; in this
design m = len(ch_mult) − 1, one stride-2 :class:`~minildm.nn.Downsample` between
consecutive resolution levels.

Two regularisations keep the latent space well-behaved:

* **KL-reg.** (:class:`AutoencoderKL`): E outputs the mean μ and log-variance log σ²
  of a diagonal Gaussian q(z|x) = N(μ, σ²) (:class:`DiagonalGaussianDistribution`);
  a slight KL penalty towards N(0, I),
  KL = ½ Σ_{c,h,w} (μ² + σ² − 1 − log σ²), as in a VAE (weight ~1e-6 in the loss).
* **VQ-reg.** (:class:`VQModel`): a vector quantisation layer
  (:class:`~minildm.quantize.VectorQuantizer`) "within the decoder", as in VQGAN.

The module layout and parameter names follow CompVis'
``ldm/modules/diffusionmodules/model.py`` (``Encoder``, ``Decoder``) and
``ldm/models/autoencoder.py`` (``AutoencoderKL``, ``VQModel``), so Stable Diffusion's
``first_stage_model.*`` weights load by name:

``encoder.conv_in``, ``encoder.down[i].block[j]``, ``encoder.down[i].attn[j]``,
``encoder.down[i].downsample``, ``encoder.mid.{block_1, attn_1, block_2}``,
``encoder.norm_out``, ``encoder.conv_out``, ``quant_conv``, ``post_quant_conv``,
``decoder.conv_in``, ``decoder.mid.*``, ``decoder.up[i].block[j]`` (num_res_blocks + 1
blocks), ``decoder.up[i].attn[j]``, ``decoder.up[i].upsample``, ``decoder.norm_out``,
``decoder.conv_out``. As in CompVis, ``decoder.up[i]`` is indexed by *resolution level*
(``up[0]`` works at full resolution and runs last), so the loop runs over
``reversed(range(len(ch_mult)))``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import torch
from torch import nn

from .nn import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample, nonlinearity
from .quantize import QuantizerInfo, VectorQuantizer

__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "Decoder",
    "DiagonalGaussianDistribution",
    "Encoder",
    "IdentityConfig",
    "IdentityFirstStage",
    "VQModel",
    "check_downsampling_factor",
    "count_parameters",
]

#: ch_mult used by :meth:`AutoencoderConfig.for_factor`, after the LDM first-stage
#: configs (models/first_stage_models/{kl,vq}-f*/config.yaml).
_CH_MULT_FOR_FACTOR: dict[int, tuple[int, ...]] = {
    1: (1,),
    2: (1, 2),
    4: (1, 2, 4),
    8: (1, 2, 2, 4),
    16: (1, 1, 2, 2, 4),
    32: (1, 1, 2, 2, 4, 4),
}


def check_downsampling_factor(f: int) -> int:
    """Return ``f`` if it is a valid downsampling factor (1, 2, 4, 8, ...), else raise ValueError."""
    if not isinstance(f, int) or isinstance(f, bool) or f < 1 or (f & (f - 1)) != 0:
        raise ValueError(f"downsampling factor f must be a power of two >= 1 (1, 2, 4, 8, 16, 32, ...), got {f!r}")
    return f


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Sizes of a first-stage autoencoder (CompVis ``ddconfig`` + ``embed_dim``/``n_embed``).

    Defaults are Stable Diffusion's KL-f8 VAE (ch 128, ch_mult (1, 2, 4, 4), 2 res blocks, z 4).

    Attributes:
        resolution: nominal image size H = W; fixes where ``attn_resolutions`` apply. The
            networks are fully convolutional: any H, W divisible by f work.
        in_channels: image channels of x.
        out_ch: image channels of x̃.
        ch: base width; level i has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers, one per resolution level; f = 2 ** (len(ch_mult) − 1).
        num_res_blocks: ResnetBlocks per level in the encoder (decoder: one more).
        attn_resolutions: feature-map sizes (e.g. 32) at which an AttnBlock follows each
            ResnetBlock. Each must be ``resolution // 2**i`` for some level i.
        dropout: dropout inside ResnetBlocks.
        z_channels: channels of the encoder / decoder bottleneck (c of z ∈ R^{h×w×c}).
        embed_dim: channels of the latent after ``quant_conv`` (default: z_channels);
            for VQ the codebook vector size.
        double_z: encoder outputs 2·z_channels (mean and log-variance). ``None`` picks the
            model's need: True for :class:`AutoencoderKL`, False for :class:`VQModel`.
        n_embed: codebook size |Z| (VQ only).
        beta: commitment weight β of the quantiser (VQ only).
        legacy_vq: taming's original loss weighting in the quantiser (see :mod:`minildm.quantize`).
        mid_attn: AttnBlock in the middle of encoder and decoder (CompVis: always on).
        norm_num_groups: GroupNorm groups (32 in CompVis; fewer for channel counts 32 does
            not divide, see :func:`minildm.nn.group_count`).
        resamp_with_conv: learned convolutions in Down/Upsample (CompVis: True).
    """

    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    z_channels: int = 4
    embed_dim: int | None = None
    double_z: bool | None = None
    n_embed: int | None = None
    beta: float = 0.25
    legacy_vq: bool = False
    mid_attn: bool = True
    norm_num_groups: int = 32
    resamp_with_conv: bool = True

    def __post_init__(self) -> None:
        # accept lists (from JSON / YAML) and normalise to tuples
        for name in ("ch_mult", "attn_resolutions"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
            else:
                raise ValueError(f"{name} must be a tuple of ints, got {value!r}")
        if self.embed_dim is None:
            object.__setattr__(self, "embed_dim", self.z_channels)
        self.validate()

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first invalid field and what is allowed."""
        for name in ("resolution", "in_channels", "out_ch", "ch", "num_res_blocks", "z_channels",
                     "embed_dim", "norm_num_groups"):
            _positive_int(name, getattr(self, name))
        if len(self.ch_mult) == 0:
            raise ValueError("ch_mult must have at least one entry (f = 2 ** (len(ch_mult) - 1))")
        for m in self.ch_mult:
            _positive_int("every entry of ch_mult", m)
        f = check_downsampling_factor(2 ** (len(self.ch_mult) - 1))
        if self.resolution % f != 0:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling factor "
                             f"f = {f} (ch_mult of length {len(self.ch_mult)}); use a multiple of {f}")
        levels = self.level_resolutions
        for r in self.attn_resolutions:
            if not isinstance(r, int) or isinstance(r, bool) or r not in levels:
                raise ValueError(f"attn_resolutions entry {r!r} is not a feature-map size of this model; "
                                 f"allowed: {levels} (resolution // 2**level)")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.double_z not in (None, True, False):
            raise ValueError(f"double_z must be None, True or False, got {self.double_z!r}")
        if self.n_embed is not None:
            _positive_int("n_embed", self.n_embed)
        if not isinstance(self.beta, (int, float)) or not float(self.beta) >= 0.0:
            raise ValueError(f"beta must be a number >= 0, got {self.beta!r}")
        for name in ("legacy_vq", "mid_attn", "resamp_with_conv"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    # -- derived sizes ------------------------------------------------------------------
    @property
    def f(self) -> int:
        """Downsampling factor f = H / h = 2 ** (len(ch_mult) − 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def num_resolutions(self) -> int:
        """Number of resolution levels, len(ch_mult)."""
        return len(self.ch_mult)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level i: resolution // 2**i."""
        return tuple(self.resolution // 2**i for i in range(len(self.ch_mult)))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(embed_dim, resolution // f, resolution // f): the shape of z for one image."""
        r = self.resolution // self.f
        return (int(self.embed_dim), r, r)  # type: ignore[arg-type]

    # -- constructors -----------------------------------------------------------------
    def replace(self, **changes: Any) -> "AutoencoderConfig":
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AutoencoderConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a mapping of config fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AutoencoderConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(d))

    @classmethod
    def for_factor(cls, f: int, **kwargs: Any) -> "AutoencoderConfig":
        """Config with downsampling factor ``f`` (ch_mult of length log2(f) + 1).

        The multipliers follow the LDM first-stage configs: f1 (1,), f2 (1, 2), f4 (1, 2, 4),
        f8 (1, 2, 2, 4), f16 (1, 1, 2, 2, 4), f32 (1, 1, 2, 2, 4, 4); larger f prepend 1s.
        ``kwargs`` set the other fields (``ch_mult`` is not allowed here).
        """
        check_downsampling_factor(f)
        if "ch_mult" in kwargs:
            raise ValueError("for_factor chooses ch_mult from f; build AutoencoderConfig(ch_mult=...) directly instead")
        m = int(math.log2(f))
        ch_mult = _CH_MULT_FOR_FACTOR.get(f, (1,) * (m - 5) + _CH_MULT_FOR_FACTOR[32])
        if "resolution" not in kwargs:
            kwargs["resolution"] = max(256, f)
        return cls(ch_mult=ch_mult, **kwargs)

    @classmethod
    def from_preset(cls, preset: Any = None, **overrides: Any) -> "AutoencoderConfig":
        """Config from a :class:`minildm.presets.Preset` / ``AutoencoderPreset`` / preset name.

        Takes image_size -> resolution, ch, ch_mult, num_res_blocks, attn_resolutions,
        z_channels, norm_num_groups, n_embed; ``overrides`` change any field.
        """
        from .presets import AutoencoderPreset, get_preset

        ae = preset if isinstance(preset, AutoencoderPreset) else get_preset(preset).ae
        values: dict[str, Any] = dict(resolution=ae.image_size, ch=ae.ch, ch_mult=tuple(ae.ch_mult),
                                      num_res_blocks=ae.num_res_blocks,
                                      attn_resolutions=tuple(ae.attn_resolutions),
                                      z_channels=ae.z_channels, norm_num_groups=ae.norm_num_groups,
                                      n_embed=ae.n_embed)
        values.update(overrides)
        return cls(**values)


def _check_input(x: Any, channels: int, f: int, what: str, expected: str) -> None:
    """ValueError/TypeError for anything but a floating (B, channels, H, W) tensor with f | H, W."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} expects a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{what} expects a 4-D tensor of shape {expected}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what} expects a floating-point tensor, got dtype {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{what} expects {channels} channels (shape {expected}), got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    h, w = x.shape[-2:]
    if h % f or w % f or h == 0 or w == 0:
        raise ValueError(f"{what}: height and width must be positive multiples of the downsampling factor "
                         f"f = {f}, got H={h}, W={w}")


class Encoder(nn.Module):
    """E: x (B, in_channels, H, W) -> (B, 2·z_channels or z_channels, H/f, W/f).

    ``conv_in`` (3×3, -> ch), then for each level i = 0..L−1 ``num_res_blocks`` ResnetBlocks
    to ``ch·ch_mult[i]`` channels (each followed by an AttnBlock at ``attn_resolutions``) and,
    except at the last level, a Downsample; then ``mid`` (ResnetBlock, AttnBlock, ResnetBlock),
    ``norm_out``, SiLU and ``conv_out`` (3×3). With ``double_z`` the output holds
    [μ, log σ²] of q(z|x) stacked along channels.
    """

    def __init__(self, config: AutoencoderConfig, double_z: bool = True) -> None:
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"Encoder expects an AutoencoderConfig, got {type(config).__name__}")
        self.config = config
        self.double_z = double_z
        c = config
        g = c.norm_num_groups
        self.num_resolutions = c.num_resolutions
        self.num_res_blocks = c.num_res_blocks
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, kernel_size=3, stride=1, padding=1)

        in_ch_mult = (1,) + tuple(c.ch_mult)
        curr_res = c.resolution
        self.down = nn.ModuleList()
        block_in = c.ch
        for i_level in range(self.num_resolutions):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_in = c.ch * in_ch_mult[i_level]
            block_out = c.ch * c.ch_mult[i_level]
            for _ in range(c.num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, dropout=c.dropout, num_groups=g))
                block_in = block_out
                if curr_res in c.attn_resolutions:
                    attn.append(AttnBlock(block_in, num_groups=g))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, c.resamp_with_conv)
                curr_res //= 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout=c.dropout, num_groups=g)
        self.mid.attn_1 = AttnBlock(block_in, num_groups=g) if c.mid_attn else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout=c.dropout, num_groups=g)

        self.norm_out = Normalize(block_in, g)
        self.out_channels = 2 * c.z_channels if double_z else c.z_channels
        self.conv_out = nn.Conv2d(block_in, self.out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        _check_input(x, c.in_channels, c.f, "Encoder", f"(B, {c.in_channels}, H, W) with H, W multiples of {c.f}")
        h = self.conv_in(x)
        for i_level in range(self.num_resolutions):
            down = self.down[i_level]
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """D: z (B, z_channels, h, w) -> x̃ (B, out_ch, h·f, w·f).

    ``conv_in`` (-> ch·ch_mult[−1]), ``mid`` (ResnetBlock, AttnBlock, ResnetBlock), then for
    levels i = L−1..0 (module ``up[i]``) ``num_res_blocks + 1`` ResnetBlocks to
    ``ch·ch_mult[i]`` channels (AttnBlocks at ``attn_resolutions``) and, except at level 0,
    an Upsample; finally ``norm_out``, SiLU, ``conv_out``.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"Decoder expects an AutoencoderConfig, got {type(config).__name__}")
        self.config = config
        c = config
        g = c.norm_num_groups
        self.num_resolutions = c.num_resolutions
        self.num_res_blocks = c.num_res_blocks

        block_in = c.ch * c.ch_mult[-1]
        curr_res = c.resolution // c.f
        self.z_shape = (1, c.z_channels, curr_res, curr_res)
        self.conv_in = nn.Conv2d(c.z_channels, block_in, kernel_size=3, stride=1, padding=1)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout=c.dropout, num_groups=g)
        self.mid.attn_1 = AttnBlock(block_in, num_groups=g) if c.mid_attn else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout=c.dropout, num_groups=g)

        ups: list[nn.Module] = []
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = c.ch * c.ch_mult[i_level]
            for _ in range(c.num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, dropout=c.dropout, num_groups=g))
                block_in = block_out
                if curr_res in c.attn_resolutions:
                    attn.append(AttnBlock(block_in, num_groups=g))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in, c.resamp_with_conv)
                curr_res *= 2
            ups.insert(0, up)  # CompVis order: up[i] is resolution level i
        self.up = nn.ModuleList(ups)

        self.norm_out = Normalize(block_in, g)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        _check_input(z, c.z_channels, 1, "Decoder", f"(B, {c.z_channels}, h, w)")
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class DiagonalGaussianDistribution:
    """q(z|x) = N(μ, diag(σ²)), the KL-regularised encoder's posterior.

    Args:
        parameters: (B, 2c, h, w): μ = parameters[:, :c], log σ² = parameters[:, c:]. log σ² is
            clamped to [−30, 20] (as in CompVis) so that σ² neither underflows nor overflows.
        deterministic: σ = 0: ``sample()`` returns μ, ``kl()`` and ``nll()`` are 0.

    ``mean``, ``logvar``, ``std`` have shape (B, c, h, w) and the dtype of ``parameters``;
    ``kl`` and ``nll`` are computed in float32 (σ² = e^20 would overflow float16).
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False) -> None:
        if not isinstance(parameters, torch.Tensor) or parameters.ndim != 4 or parameters.shape[1] % 2:
            shape = tuple(parameters.shape) if isinstance(parameters, torch.Tensor) else type(parameters).__name__
            raise ValueError(f"parameters must be a (B, 2c, h, w) tensor holding [mean, logvar], got {shape}")
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = bool(deterministic)
        if self.deterministic:
            self.std = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        """σ² (float32; zeros if deterministic)."""
        if self.deterministic:
            return torch.zeros_like(self.mean, dtype=torch.float32)
        return torch.exp(self.logvar.float())

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample z = μ + σ ⊙ ε, ε ~ N(0, I); gradients flow to μ and σ.

        ``generator`` may live on another device than the parameters (e.g. a CPU generator
        for device-independent noise); ε is then drawn there and moved.
        """
        if self.deterministic:
            return self.mean
        gen_device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=gen_device, dtype=torch.float32)
        eps = eps.to(device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The mode (= mean) μ, (B, c, h, w)."""
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL(q ‖ p) summed over (c, h, w) -> (B,).

        p = N(0, I) by default: ½ Σ (μ² + σ² − 1 − log σ²);
        else ½ Σ ((μ − μ_p)²/σ_p² + σ²/σ_p² − 1 − log σ² + log σ_p²).
        """
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=torch.float32)
        mean, logvar, var = self.mean.float(), self.logvar.float(), self.var
        if other is None:
            return 0.5 * torch.sum(mean.pow(2) + var - 1.0 - logvar, dim=[1, 2, 3])
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"kl: shapes differ, {tuple(self.mean.shape)} vs {tuple(other.mean.shape)}")
        o_mean, o_logvar, o_var = other.mean.float(), other.logvar.float(), other.var
        return 0.5 * torch.sum((mean - o_mean).pow(2) / o_var + var / o_var - 1.0 - logvar + o_logvar,
                               dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
        """−log q(sample) = ½ Σ (log 2π + log σ² + (sample − μ)² / σ²) over ``dims`` -> (B,)."""
        if sample.shape != self.mean.shape:
            raise ValueError(f"nll: sample shape {tuple(sample.shape)} != distribution shape {tuple(self.mean.shape)}")
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=torch.float32)
        log_two_pi = math.log(2.0 * math.pi)
        logvar = self.logvar.float()
        return 0.5 * torch.sum(log_two_pi + logvar + (sample.float() - self.mean.float()).pow(2) / self.var,
                               dim=list(dims))

    def __repr__(self) -> str:
        return (f"DiagonalGaussianDistribution(shape={tuple(self.mean.shape)}, "
                f"deterministic={self.deterministic})")


class _FirstStage(nn.Module):
    """Shared plumbing of AutoencoderKL and VQModel."""

    config: AutoencoderConfig
    encoder: Encoder
    decoder: Decoder

    @property
    def f(self) -> int:
        """Downsampling factor f = H / h."""
        return self.config.f

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(embed_dim, resolution // f, resolution // f)."""
        return self.config.latent_shape

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last convolution (for the adaptive GAN weight λ)."""
        return self.decoder.conv_out.weight

    def num_parameters(self, trainable_only: bool = False) -> int:
        return count_parameters(self, trainable_only)

    def _check_latent(self, z: Any, what: str) -> None:
        e = int(self.config.embed_dim)  # type: ignore[arg-type]
        _check_input(z, e, 1, what, f"(B, {e}, h, w)")


class AutoencoderKL(_FirstStage):
    """KL-regularised autoencoder (CompVis ``AutoencoderKL``; Stable Diffusion's VAE).

    x (B, in_channels, H, W) --E--> [μ, log σ²] (B, 2·z_channels, h, w) --quant_conv (1×1)-->
    (B, 2·embed_dim, h, w) = q(z|x); z ~ q(z|x) (B, embed_dim, h, w) --post_quant_conv (1×1)-->
    (B, z_channels, h, w) --D--> x̃ (B, out_ch, H, W), with h = H/f, w = W/f.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"AutoencoderKL expects an AutoencoderConfig, got {type(config).__name__}")
        if config.double_z is False:
            raise ValueError("AutoencoderKL needs double_z=True (or None): the encoder outputs mean and log-variance")
        self.config = config
        self.encoder = Encoder(config, double_z=True)
        self.decoder = Decoder(config)
        e = int(config.embed_dim)  # type: ignore[arg-type]
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * e, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(e, config.z_channels, kernel_size=1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """q(z|x): x (B, in_channels, H, W) -> posterior over z (B, embed_dim, H/f, W/f)."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̃ = D(z): z (B, embed_dim, h, w) -> (B, out_ch, h·f, w·f)."""
        self._check_latent(z, "AutoencoderKL.decode")
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """(x̃, q(z|x)); z is sampled (training) or the mode (``sample_posterior=False``)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """z = mode of q(z|x), (B, embed_dim, H/f, W/f): what a latent diffusion model trains on."""
        return self.encode(x).mode()

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """x̃ = D(z), same as :meth:`decode` (the VQModel counterpart quantises first)."""
        return self.decode(z)


class VQModel(_FirstStage):
    """VQ-regularised autoencoder (CompVis ``VQModel``, VQGAN).

    x --E--> (B, z_channels, h, w) --quant_conv--> z_e (B, embed_dim, h, w) --quantize-->
    z_q (nearest of ``n_embed`` codes) --post_quant_conv--> (B, z_channels, h, w) --D--> x̃.

    For latent diffusion the quantiser belongs to the decoder (paper Sec. 3.1): a
    diffusion model's continuous output z is quantised in :meth:`decode_latent`.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"VQModel expects an AutoencoderConfig, got {type(config).__name__}")
        if config.double_z is True:
            raise ValueError("VQModel needs double_z=False (or None): its encoder outputs z_channels channels")
        if config.n_embed is None:
            raise ValueError("VQModel needs n_embed (codebook size), e.g. AutoencoderConfig(..., n_embed=8192)")
        self.config = config
        e = int(config.embed_dim)  # type: ignore[arg-type]
        self.encoder = Encoder(config, double_z=False)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, e, kernel_size=1)
        self.quantize = VectorQuantizer(config.n_embed, e, beta=config.beta, legacy=config.legacy_vq)
        self.post_quant_conv = nn.Conv2d(e, config.z_channels, kernel_size=1)

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        """z_e = quant_conv(E(x)) before quantisation, (B, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerInfo]:
        """x -> (z_q (B, embed_dim, h, w), codebook + commitment loss (scalar), info)."""
        return self.quantize(self.encode_to_prequant(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """x̃ = D(post_quant_conv(z_q)): (B, embed_dim, h, w) -> (B, out_ch, h·f, w·f)."""
        self._check_latent(quant, "VQModel.decode")
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode code indices (B, h, w) -> x̃ (B, out_ch, h·f, w·f)."""
        return self.decode(self.quantize.embed_code(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerInfo]:
        """(x̃, quantiser loss, info)."""
        quant, emb_loss, info = self.encode(x)
        return self.decode(quant), emb_loss, info

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Quantised latent z_q (B, embed_dim, H/f, W/f)."""
        return self.encode(x)[0]

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Quantise z (e.g. a diffusion sample) to the nearest codes, then decode ("VQ in the decoder")."""
        self._check_latent(z, "VQModel.decode_latent")
        return self.decode(self.quantize(z)[0])


class IdentityFirstStage(nn.Module):
    """The f = 1 "first stage" of pixel-space diffusion: z = x, x̃ = z (CompVis ``IdentityFirstStage``).

    It has the autoencoders' interface (``encode`` returns a posterior with ``mode()``, ``sample()``
    and ``kl() = 0``; ``encode_latent``, ``decode``, ``decode_latent``, ``f``, ``latent_shape``), so
    that a latent diffusion model with this first stage *is* a pixel-space diffusion model.
    Shapes: x (B, C, H, W) -> z (B, C, H, W) -> x̃ (B, C, H, W).
    """

    def __init__(self, config: "IdentityConfig | None" = None) -> None:
        super().__init__()
        self.config = config or IdentityConfig()

    @property
    def f(self) -> int:
        return 1

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_channels, c.resolution, c.resolution)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        _check_input(x, self.config.in_channels, 1, "IdentityFirstStage.encode", f"(B, {self.config.in_channels}, H, W)")
        return DiagonalGaussianDistribution(torch.cat([x, torch.zeros_like(x)], dim=1), deterministic=True)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x).mode()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        _check_input(z, self.config.in_channels, 1, "IdentityFirstStage.decode", f"(B, {self.config.in_channels}, h, w)")
        return z

    decode_latent = decode

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        posterior = self.encode(x)
        return self.decode(posterior.mode()), posterior

    def num_parameters(self, trainable_only: bool = False) -> int:
        return 0


@dataclass
class IdentityConfig:
    """Config of :class:`IdentityFirstStage`: image channels and nominal size."""

    in_channels: int = 3
    resolution: int = 256

    @property
    def f(self) -> int:
        return 1

    @property
    def embed_dim(self) -> int:
        return self.in_channels

    def to_dict(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "resolution": self.resolution}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IdentityConfig":
        return cls(**dict(d))
