"""Stable Diffusion's text encoder: :class:`FrozenCLIPEmbedder` against diffusers' ``encode_prompt``, loading from
a Stable Diffusion folder, and the single-file CLIP / OpenCLIP layouts <-> ``CLIPTextModel`` (tiny models and
tokenizers written here; nothing downloaded)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minildm.conditioning.base import build_conditioner  # noqa: E402
from minildm.conditioning.pretrained import FrozenCLIPEmbedder, frozen_clip  # noqa: E402
from minildm.interop import (clip_text_config_from_state_dict, clip_text_layout,  # noqa: E402
                             clip_text_model_from_original, clip_text_state_dict_from_original,
                             clip_text_state_dict_to_original)

from minildm.interop.tiny_sd import HEAD_DIM, PADS, WORDS  # noqa: E402
from minildm.interop.tiny_sd import tiny_clip_text_model as tiny_clip  # noqa: E402
from minildm.interop.tiny_sd import write_clip_tokenizer as write_tokenizer  # noqa: E402

PROMPTS = ["a red star", "a photo of a horse riding on the moon", "blue", "the moon, a blue circle!"]


@pytest.fixture(scope="module", params=sorted(PADS))
def sd_folder(request, tmp_path_factory):
    """A diffusers Stable Diffusion folder with only ``text_encoder/`` and ``tokenizer/``."""
    root = tmp_path_factory.mktemp(f"sd-{request.param}") / "sd"
    vocab_size = write_tokenizer(root / "tokenizer", PADS[request.param])
    tiny_clip(vocab_size).save_pretrained(root / "text_encoder")
    return root


def diffusers_encode_prompt(folder, prompts, use_attention_mask: bool = False):
    """(prompt_embeds, negative_prompt_embeds) of diffusers' ``StableDiffusionPipeline.encode_prompt`` with
    guidance, the text encoder and tokenizer loaded from ``folder`` as diffusers does (tiny UNet and VAE)."""
    diffusers = pytest.importorskip("diffusers")
    text_encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    text_encoder.config.use_attention_mask = use_attention_mask
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(8,), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4)
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), norm_num_groups=4)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet,
                                             scheduler=diffusers.DDIMScheduler(clip_sample=False), safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    with torch.no_grad():
        return pipe.encode_prompt(prompts, "cpu", 1, True)


def test_context_equals_diffusers_encode_prompt(sd_folder):
    enc = frozen_clip(sd_folder)
    pad = json.loads((sd_folder / "tokenizer" / "tokenizer_config.json").read_text())["pad_token"]
    assert isinstance(enc, FrozenCLIPEmbedder) and enc.tokenizer.pad_token == pad
    assert enc.max_length == 77 and enc.embed_dim == 32 and len(enc.state_dict()) == 0
    prompt_embeds, negative_embeds = diffusers_encode_prompt(sd_folder, PROMPTS)
    ctx, mask = enc(PROMPTS)
    assert mask is None and ctx.dtype == torch.float32 and ctx.shape == (4, 77, 32)
    assert (ctx - prompt_embeds).abs().max().item() == 0  # bit-identical
    null, null_mask = enc.null(len(PROMPTS))
    assert null_mask is None and torch.equal(null, negative_embeds)  # ∅ = the encoding of ""
    assert torch.equal(enc.encode_texts([""] + PROMPTS), torch.cat([negative_embeds[:1], prompt_embeds]))
    # conditioning dropout, the cache, precomputed encodings and the rebuilt encoder give the same tensors
    dropped, dmask = enc(PROMPTS, drop=torch.tensor([True, False, False, True]))
    assert dmask is None and torch.equal(dropped, torch.stack([null[0], ctx[1], ctx[2], null[0]]))
    enc.cache_size = 16
    assert torch.equal(enc(PROMPTS)[0], ctx) and torch.equal(enc(PROMPTS[::-1])[0], ctx.flip(0))
    pre = enc.precompute(PROMPTS)
    assert set(pre) == {"context"} and pre["context"].dtype == torch.float32
    assert torch.equal(enc(pre)[0], ctx) and torch.equal(enc(pre, drop=torch.tensor([1, 0, 0, 0]))[0][0], null[0])
    assert enc.config()["layer"] == "last" and enc.config()["dtype"] == "float32"
    assert torch.equal(build_conditioner(enc.config())(PROMPTS)[0], ctx)


def test_attention_mask_truncation_and_dtype(sd_folder):
    long = " ".join(WORDS * 8)  # 96 words: cut to 77 tokens
    ref, _ = frozen_clip(sd_folder)(PROMPTS)
    half = frozen_clip(sd_folder, dtype="float16")
    ctx16, _ = half(PROMPTS)
    assert ctx16.dtype == torch.float16 and half.config()["dtype"] == "float16"
    assert torch.allclose(ctx16.float(), ref, atol=2e-2)
    enc = frozen_clip(sd_folder / "text_encoder")
    # with use_attention_mask diffusers gives the text model the mask (padding states change), the context stays unmasked
    enc.model.config.use_attention_mask = True
    prompt_embeds, _ = diffusers_encode_prompt(sd_folder, PROMPTS + [long], use_attention_mask=True)
    with pytest.raises(ValueError, match="more than max_length=77"):
        enc([long])
    with pytest.warns(UserWarning, match=r"text 1 has \d+ tokens: the text encoder reads its first 77"):
        ctx = enc.encode_texts(PROMPTS[:1] + [long])
    assert torch.equal(ctx, prompt_embeds[[0, 4]]) and torch.equal(enc(PROMPTS)[0], prompt_embeds[:4])
    assert not torch.equal(prompt_embeds[:4], ref) and torch.equal(prompt_embeds[0, :5], ref[0, :5])  # causal
    with pytest.raises(ValueError, match="layer must be"):
        frozen_clip(sd_folder, layer="first")


def test_folders_and_missing_files(sd_folder, tmp_path):
    ref, _ = frozen_clip(sd_folder)(PROMPTS)
    by_text_encoder = frozen_clip(sd_folder / "text_encoder")
    assert torch.equal(by_text_encoder(PROMPTS)[0], ref)
    assert by_text_encoder.config()["source"] == {"kind": "clip", "path": str(sd_folder / "text_encoder")}
    explicit = frozen_clip(sd_folder / "text_encoder", tokenizer_path=sd_folder / "tokenizer")
    assert torch.equal(build_conditioner(explicit.config())(PROMPTS)[0], ref)
    lonely = tmp_path / "lonely"
    shutil.copytree(sd_folder / "text_encoder", lonely / "text_encoder")
    for path, first, second in ((lonely, lonely / "tokenizer", lonely / "text_encoder"),
                                (lonely / "text_encoder", lonely / "text_encoder", lonely / "tokenizer")):
        with pytest.raises(ValueError) as err:
            frozen_clip(path)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"no tokenizer found in {str(first)!r} or {str(second)!r}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no CLIP text model in .*empty.*nothing is downloaded"):
        frozen_clip(tmp_path / "empty")
    in_memory = FrozenCLIPEmbedder(by_text_encoder.model, by_text_encoder.tokenizer)
    assert torch.equal(in_memory(PROMPTS)[0], ref)
    with pytest.raises(ValueError, match="built from a model in memory"):
        in_memory.config()


def test_sd1_layout_round_trip():
    model = tiny_clip(60)
    sd = model.state_dict()
    original = clip_text_state_dict_to_original(sd, "v1")
    assert clip_text_layout(original) == "v1"
    assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in original)
    back = clip_text_state_dict_from_original(original)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    # older files: a position_ids buffer, or no text_model level; other parts of the checkpoint are ignored
    variants = [{**original, "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]},
                {k.replace("text_model.", ""): v for k, v in original.items()},
                {**original, "model.diffusion_model.out.2.bias": torch.zeros(4)}]
    for other in variants:
        again = clip_text_state_dict_from_original(other)
        assert again.keys() == sd.keys() and all(torch.equal(again[k], sd[k]) for k in sd)
    assert set(clip_text_state_dict_from_original(original, prefix="text_model.")) == {f"text_model.{k}" for k in sd}
    config = clip_text_config_from_state_dict(original, head_dim=HEAD_DIM)
    assert config == {"vocab_size": 60, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                      "projection_dim": 32}
    ids = torch.randint(0, 60, (2, 77))
    loaded = clip_text_model_from_original(original, head_dim=HEAD_DIM)
    assert torch.equal(loaded(ids).last_hidden_state, model(ids).last_hidden_state)


def test_sd2_openclip_layout_drops_the_last_layer(tmp_path):
    vocab_size = write_tokenizer(tmp_path / "tok", "!")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    full = tiny_clip(vocab_size, layers=3, act="gelu", seed=1)  # OpenCLIP's tower, all its layers
    original = clip_text_state_dict_to_original(full.state_dict(), "v2")
    p = "cond_stage_model.model."
    assert original[p + "transformer.resblocks.2.attn.in_proj_weight"].shape == (96, 32)
    assert original[p + "transformer.resblocks.0.mlp.c_fc.weight"].shape == (64, 32)
    assert {p + "token_embedding.weight", p + "positional_embedding", p + "ln_final.bias"} <= original.keys()
    original |= {p + "text_projection": torch.randn(32, 16), p + "logit_scale": torch.tensor(4.6)}
    assert clip_text_layout(original) == "v2"
    # without penultimate: the same model back, every tensor equal
    same = clip_text_state_dict_from_original(original, penultimate=False)
    assert same.keys() == full.state_dict().keys() and all(torch.equal(v, full.state_dict()[k]) for k, v in same.items())
    config = clip_text_config_from_state_dict(original, head_dim=HEAD_DIM)
    assert config["num_hidden_layers"] == 2 and config["hidden_act"] == "gelu" and config["projection_dim"] == 16
    sd2 = clip_text_model_from_original(original, head_dim=HEAD_DIM)  # SD 2's default: the penultimate layer
    assert sd2.config.num_hidden_layers == 2
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = full(ids, output_hidden_states=True).hidden_states[-2]
        expected = getattr(full, "text_model", full).final_layer_norm(hidden)
        got = sd2(ids).last_hidden_state
    assert (got - expected).abs().max().item() <= 1e-6
    penultimate, _ = FrozenCLIPEmbedder(full, tokenizer, layer="penultimate")(PROMPTS)
    assert (penultimate - expected).abs().max().item() <= 1e-6
    assert torch.allclose(FrozenCLIPEmbedder(sd2, tokenizer)(PROMPTS)[0], penultimate, atol=1e-6)
    # and back: OpenCLIP layout of the 2-layer model (text_projection and logit_scale are not in a CLIPTextModel)
    written = clip_text_state_dict_to_original(sd2.state_dict(), "v2")
    assert written.keys() == {k for k in original if ".resblocks.2." not in k and "logit_scale" not in k
                              and "text_projection" not in k}


def test_bad_state_dicts():
    with pytest.raises(ValueError, match="not a Stable Diffusion text encoder") as err:
        clip_text_layout({"model.diffusion_model.out.2.bias": torch.zeros(4)})
    assert "\n" not in str(err.value)
    original = clip_text_state_dict_to_original(tiny_clip(60).state_dict(), "v2")
    with pytest.raises(ValueError, match="1 unexpected keys in the SD 2.x OpenCLIP text encoder: .*resblocks.0.gate"):
        clip_text_state_dict_from_original({**original, "cond_stage_model.model.transformer.resblocks.0.gate": torch.ones(1)})
    with pytest.raises(ValueError, match="variant must be"):
        clip_text_state_dict_to_original({}, "xl")
    with pytest.raises(ValueError, match="not a multiple of head_dim=64"):
        clip_text_config_from_state_dict(original)
