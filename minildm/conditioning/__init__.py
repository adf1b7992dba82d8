"""Conditioning mechanisms τ_θ(y) (paper Sec. 3.3): each maps a condition to tokens for cross-attention.

* :mod:`minildm.conditioning.base`: the interface and the registry (``build_conditioner``)
* :mod:`minildm.conditioning.classes`: class labels (notebook 04)
* :mod:`minildm.conditioning.layout`: boxes with attributes (notebook 04)
* :mod:`minildm.conditioning.text`: a word tokenizer and a transformer trained from scratch (notebook 05)
* :mod:`minildm.conditioning.pretrained`: frozen pretrained text encoders (notebook 05)
* :mod:`minildm.conditioning.concat`: spatial conditions concatenated to the latent (notebook 06)

Importing this package registers every conditioner with :func:`build_conditioner`.
"""
from .base import CONDITIONERS, Conditioning, build_conditioner, register_conditioner
from .classes import ClassEmbedder
from .concat import (CONCAT_CONDITIONERS, ConcatConditioner, LowResolution, MaskedImage, SegmentationMap,
                     SpatialRescaler, build_concat_conditioner)
from .layout import LayoutEmbedder, layout_from_objects
from .pretrained import FrozenCLIPEmbedder, FrozenHFTextEmbedder, frozen_clip, frozen_minilm
from .text import TransformerTextEmbedder, WordTokenizer

__all__ = ["CONCAT_CONDITIONERS", "CONDITIONERS", "ClassEmbedder", "ConcatConditioner", "LowResolution", "MaskedImage",
           "SegmentationMap", "SpatialRescaler", "build_concat_conditioner", "Conditioning", "FrozenCLIPEmbedder",
           "FrozenHFTextEmbedder", "LayoutEmbedder",
           "TransformerTextEmbedder", "WordTokenizer", "build_conditioner", "frozen_clip", "frozen_minilm",
           "layout_from_objects", "register_conditioner"]
