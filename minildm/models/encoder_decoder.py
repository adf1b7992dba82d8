"""The convolutional encoder E and decoder D of the first stage (paper Sec. 3.1, App. G;
CompVis ``ldm/modules/diffusionmodules/model.py``) and their configuration.

E maps an image x ∈ R^{H×W×3} to z = E(x) ∈ R^{h×w×c} with h = H / f, w = W / f, where the
downsampling factor f = 2^(len(ch_mult) − 1); D maps z back to x̃ = D(z). Taught in notebooks 01
(the autoencoder) and 02 (the factor f).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .nn import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample, nonlinearity

__all__ = ["AutoencoderConfig", "Decoder", "Encoder", "check_downsampling_factor", "check_image_input", "count_parameters"]

#: ch_mult used by :meth:`AutoencoderConfig.for_factor`: those of the CompVis first-stage configs
#: (models/first_stage_models/kl-f*/config.yaml; f = 2 follows the pattern).
_CH_MULT_FOR_FACTOR: dict[int, tuple[int, ...]] = {
    1: (1,),
    2: (1, 2),
    4: (1, 2, 4),
    8: (1, 2, 4, 4),
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
        legacy_vq: taming's original loss weighting in the quantiser (see :mod:`minildm.models.quantize`).
        mid_attn: AttnBlock in the middle of encoder and decoder (CompVis: always on).
        norm_num_groups: GroupNorm groups (32 in CompVis; fewer for channel counts 32 does
            not divide, see :func:`minildm.models.nn.group_count`).
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
        f8 (1, 2, 4, 4), f16 (1, 1, 2, 2, 4), f32 (1, 1, 2, 2, 4, 4); larger f prepend 1s.
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



def check_image_input(x: Any, channels: int, f: int, what: str, expected: str) -> None:
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
        check_image_input(x, c.in_channels, c.f, "Encoder", f"(B, {c.in_channels}, H, W) with H, W multiples of {c.f}")
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

    def forward(self, z: torch.Tensor, added: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """x̃ = D(z). ``added[i]`` (B, ch·ch_mult[i], h·2^(L−1−i), …), if given, is added after level i's
        blocks (the hook of :class:`~minildm.models.asymmetric_decoder.AsymmetricDecoder`)."""
        c = self.config
        check_image_input(z, c.z_channels, 1, "Decoder", f"(B, {c.z_channels}, h, w)")
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if added is not None:
                h = h + added[i_level]
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))
