"""Tiny Stable Diffusion parts for the tests (nothing downloaded): a CLIP BPE tokenizer of a dozen words,
a 32-wide CLIP text model, and whole v1-like / v2-like diffusers pipelines saved with ``save_pretrained``."""
from __future__ import annotations

import json
import string

import torch

WORDS = ("a", "red", "star", "photo", "of", "horse", "riding", "blue", "circle", "on", "the", "moon")
PROMPTS = ["a red star", "a photo of a horse riding on the moon", "blue", "the moon, a blue circle!"]
#: the pad token of each tokenizer: SD 1.x pads with <|endoftext|>, SD 2.x (OpenCLIP) with "!"
PADS = {"v1": "<|endoftext|>", "v2": "!"}
HEAD_DIM = 8  # 32-wide tiny models with 4 heads


def write_tokenizer(folder, pad: str) -> int:
    """A CLIP BPE tokenizer (vocab.json, merges.txt) knowing ``WORDS``; returns its vocabulary size."""
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


def tiny_clip(vocab_size: int, layers: int = 2, act: str = "quick_gelu", seed: int = 0):
    """A 32-wide CLIPTextModel (4 heads, 77 positions), every weight perturbed (layer norms included)."""
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


def tiny_pipeline(root, kind: str = "v1", seed: int = 0):
    """A diffusers ``StableDiffusionPipeline`` shaped like SD ``kind`` at toy size, saved to ``root`` with
    ``save_pretrained`` and returned: "v1" (ε-prediction, 4 heads per level, CLIP's pad token) or "v2"
    (v-prediction, head width 16 per level, linear ``proj_in``/``proj_out``, OpenCLIP's pad token "!").
    UNet 32/64 channels on an 8 × 8 latent, a KL VAE with f = 2 (16 × 16 images), SD's DDIM scheduler config."""
    import diffusers

    v2 = kind == "v2"
    vocab_size = write_tokenizer(root / "tokenizer", PADS[kind])
    text_encoder = tiny_clip(vocab_size, act="gelu" if v2 else "quick_gelu", seed=seed)  # OpenCLIP: gelu
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
    tokenizer = __import__("transformers").CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    pipe = diffusers.StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer,
                                             unet=unet.eval(), scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root)
    return pipe
