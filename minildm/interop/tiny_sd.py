"""Tiny random Stable Diffusion pipelines, SD-shaped, written locally (nothing downloaded): the tests' and
notebook 07's stand-in for real weights.

:func:`write_tiny_stable_diffusion` saves a diffusers ``StableDiffusionPipeline`` folder (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) like SD 1.x ("v1": ε-prediction, heads
per level, CLIP's pad token ``<|endoftext|>``, quick-GELU) or SD 2.x ("v2": v-prediction, one head width,
linear ``proj_in``/``proj_out``, OpenCLIP's pad token ``!``, GELU) at toy size: a UNet of 32/64 channels on an
8 × 8 latent, a KL VAE with f = 2 (16 × 16 images), a 32-wide 2-layer CLIP text model and a CLIP BPE tokenizer of
a dozen words (:func:`write_clip_tokenizer`), SD's DDIM scheduler config. Random weights draw random images:
what such a pipeline shows is that two implementations compute the same function. Needs diffusers and
transformers.
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

__all__ = ["HEAD_DIM", "PADS", "WORDS", "tiny_clip_text_model", "write_clip_tokenizer",
           "write_tiny_stable_diffusion"]

#: the words the tiny tokenizer knows (any other text is spelled letter by letter)
WORDS = ("a", "red", "star", "photo", "of", "horse", "riding", "blue", "circle", "on", "the", "moon")
#: the pad token of each tokenizer: SD 1.x pads with <|endoftext|>, SD 2.x (OpenCLIP) with "!"
PADS = {"v1": "<|endoftext|>", "v2": "!"}
#: the tiny text model is 32 wide with 4 heads of 8 channels
HEAD_DIM = 8


def write_clip_tokenizer(folder: Path, pad: str = PADS["v1"]) -> int:
    """A CLIP BPE tokenizer (vocab.json, merges.txt, tokenizer_config.json) in a new ``folder``, knowing
    :data:`WORDS` and every letter; ``pad``: the pad token. Returns its vocabulary size."""
    vocab = {"!": 0}
    for c in string.ascii_lowercase:
        vocab.setdefault(c, len(vocab))
    for c in string.ascii_lowercase + "!,":
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in WORDS:  # merged left to right: "r e" -> "re", "re d</w>" -> "red</w>"
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if f"{merged} {piece}" not in merges:
                merges.append(f"{merged} {piece}")
            merged += piece
            vocab.setdefault(merged, len(vocab))
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}))
    return len(vocab)


def tiny_clip_text_model(vocab_size: int, layers: int = 2, act: str = "quick_gelu", seed: int = 0) -> Any:
    """A random transformers ``CLIPTextModel``, 32 wide (4 heads, 77 positions), every weight perturbed (layer
    norms included) so that no part is an identity."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=32 // HEAD_DIM, max_position_embeddings=77, hidden_act=act,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def write_tiny_stable_diffusion(root: Path, kind: str = "v1", seed: int = 0) -> Any:
    """A diffusers ``StableDiffusionPipeline`` shaped like SD ``kind`` at toy size, saved to ``root`` with
    ``save_pretrained`` and returned: "v1" (ε-prediction, 4 heads per level, CLIP's pad token) or "v2"
    (v-prediction, head width 16 per level, linear ``proj_in``/``proj_out``, OpenCLIP's pad token "!").
    UNet 32/64 channels on an 8 × 8 latent, a KL VAE with f = 2 (16 × 16 images), SD's DDIM scheduler config."""
    import diffusers
    import transformers

    v2 = kind == "v2"
    if kind not in PADS:
        raise ValueError(f"kind must be 'v1' or 'v2', got {kind!r}")
    root = Path(root)
    vocab_size = write_clip_tokenizer(root / "tokenizer", PADS[kind])
    text_encoder = tiny_clip_text_model(vocab_size, act="gelu" if v2 else "quick_gelu", seed=seed)  # OpenCLIP: gelu
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4) if v2 else 4, use_linear_projection=v2, norm_num_groups=8)
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                                  sample_size=16)
    _perturb(unet)
    _perturb(vae)
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                        prediction_type="v_prediction" if v2 else "epsilon")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    pipe = diffusers.StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer,
                                             unet=unet.eval(), scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root)
    return pipe
