"""Whole Stable Diffusion pipelines: tiny SD-shaped diffusers pipelines saved locally, loaded with
:func:`load_stable_diffusion` (diffusers folder and original single file), must draw the images diffusers'
``StableDiffusionPipeline`` draws for the same latents, prompts and negative prompts."""
from __future__ import annotations

import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from minildm.diffusion.stable_diffusion import StableDiffusion  # noqa: E402
from minildm.interop import clip_text_state_dict_to_original  # noqa: E402
from minildm.interop.stable_diffusion import infer_variant, load_stable_diffusion  # noqa: E402
from minildm.interop.tiny_sd import write_tiny_stable_diffusion  # noqa: E402

PROMPTS = ["a red star", "a photo of a horse riding on the moon"]
NEGATIVE = ["blue", ""]
STEPS, GUIDANCE, TOL = 10, 7.5, 1e-4
#: what the tiny models' weights do not tell a single-file loader (SD's real sizes are the defaults)
SINGLE_FILE = {"v1": {"variant": "v1", "unet_config": {"num_heads": 4, "num_groups": 8}},
               "v2": {"variant": "v2-v", "unet_config": {"num_heads": 1, "num_head_channels": 16, "num_groups": 8}}}


@pytest.fixture(scope="module", params=["v1", "v2"])
def sd(request, tmp_path_factory):
    """(kind, folder, diffusers pipeline loaded from the folder as users load one)."""
    root = tmp_path_factory.mktemp(f"sd-{request.param}") / "model"
    write_tiny_stable_diffusion(root, request.param)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(root, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return request.param, root, pipe


def _latents() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def _theirs(pipe, sampler: str) -> torch.Tensor:
    if sampler == "dpmpp-2m":  # the way users switch a pipeline to DPM-Solver++
        dpm = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe = diffusers.StableDiffusionPipeline(**{**pipe.components, "scheduler": dpm})
        pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                latents=_latents(), height=16, width=16, output_type="pt").images


def _ours(model: StableDiffusion, sampler: str) -> torch.Tensor:
    return model(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                 latents=_latents(), height=16, width=16, sampler=sampler)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m"])
def test_folder_pipeline_draws_diffusers_images(sd, sampler):
    kind, root, pipe = sd
    model = load_stable_diffusion(root, device="cpu")
    assert isinstance(model, StableDiffusion) and model.diffusion.parameterization == ("v" if kind == "v2" else "eps")
    assert float(model.scale_factor) == pytest.approx(0.18215) and model.cond_stage_model.masks_padding is False
    ours, theirs = _ours(model, sampler), _theirs(pipe, sampler)
    assert ours.shape == theirs.shape == (2, 3, 16, 16) and 0 <= ours.min() and ours.max() <= 1
    assert theirs.std() > 0.05  # not a flat image: the comparison means something
    assert (ours - theirs).abs().max() <= TOL


def _original_state_dict(model: StableDiffusion, kind: str) -> dict[str, torch.Tensor]:
    """The model in the original (CompVis) single-file layout: v2 with linear proj_in / proj_out and an
    OpenCLIP text tower that still has the last layer SD 2 does not read (here a copy of the one before)."""
    linear = ("proj_in.weight", "proj_out.weight") if kind == "v2" else ()
    unet = {f"model.diffusion_model.{k}": v[:, :, 0, 0] if k.endswith(linear) else v
            for k, v in model.model.state_dict().items()}
    vae = {f"first_stage_model.{k}": v for k, v in model.first_stage_model.state_dict().items()}
    text = {k.removeprefix("text_model."): v for k, v in model.cond_stage_model.model.state_dict().items()}
    if kind == "v2":
        n = 1 + max(int(k.split(".")[2]) for k in text if k.startswith("encoder.layers."))
        text |= {k.replace(f"encoder.layers.{n - 1}.", f"encoder.layers.{n}."): v.clone()
                 for k, v in text.items() if k.startswith(f"encoder.layers.{n - 1}.")}
    return {**unet, **vae, **clip_text_state_dict_to_original(text, kind)}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_loads_to_the_same_images(sd, tmp_path, suffix):
    kind, root, pipe = sd
    folder_model = load_stable_diffusion(root, device="cpu")
    sd_original = {k: v.contiguous() for k, v in _original_state_dict(folder_model, kind).items()}
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(sd_original, str(path))
    else:
        torch.save({"state_dict": sd_original, "global_step": 1}, path)
    assert infer_variant(sd_original) == SINGLE_FILE[kind]["variant"]
    shutil.copytree(root / "tokenizer", tmp_path / "tokenizer")  # found beside the file
    model = load_stable_diffusion(path, device="cpu", text_head_dim=8, vae_config={"norm_num_groups": 8},
                                  **SINGLE_FILE[kind])
    assert model.image_size == (768 if kind == "v2" else 512)
    assert (_ours(model, "ddim") - _theirs(pipe, "ddim")).abs().max() <= TOL


def test_bad_models_get_one_line_errors(sd, tmp_path):
    kind, root, _ = sd
    cases = [(tmp_path, "no model_index.json"), (tmp_path / "missing.ckpt", "no such"),
             (root / "model_index.json", "not a Stable Diffusion model")]
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other))
    cases.append((other, r"not a Stable Diffusion checkpoint: no model\.diffusion_model"))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    cases.append((tmp_path / "junk.ckpt", "cannot read"))
    single = tmp_path / "lone" / "model.safetensors"
    single.parent.mkdir()
    model = load_stable_diffusion(root, device="cpu")
    save_file({k: v.contiguous() for k, v in _original_state_dict(model, kind).items()}, str(single))
    cases.append((single, "holds no tokenizer"))
    for path, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            load_stable_diffusion(path, device="cpu", **({"text_head_dim": 8} if path == single else {}))
        assert "\n" not in str(err.value)
    no_tokenizer = tmp_path / "copy"
    shutil.copytree(root, no_tokenizer)
    shutil.rmtree(no_tokenizer / "tokenizer")
    with pytest.raises(ValueError, match="no tokenizer found"):
        load_stable_diffusion(no_tokenizer, device="cpu")
    for kwargs, match in [({"height": 15}, "multiple of 2"), ({"guidance_scale": float("nan")}, "guidance_scale"),
                          ({"negative_prompt": ["a", "b", "c"]}, "one negative prompt or one per prompt"),
                          ({"latents": torch.zeros(1, 4, 8, 8)}, "latents must be a tensor of shape"),
                          ({"prompt": []}, "prompt must be"), ({"sampler": "euler"}, "unknown sampler")]:
        with pytest.raises(ValueError, match=match):
            model(**{"prompt": PROMPTS, "num_inference_steps": 2, "height": 16, "width": 16, **kwargs})


def test_sd_command_writes_a_png_and_refuses_bad_models(sd, tmp_path, capsys):
    from PIL import Image

    from minildm.cli import main

    kind, root, _ = sd
    out = tmp_path / "out.png"
    argv = ["sd", "--model", str(root), "--prompt", "a red star", "--negative-prompt", "blue", "--steps", "3",
            "--height", "16", "--width", "16", "--seed", "1", "--device", "cpu", "--output", str(out), "--no-progress"]
    assert main(argv) == 0 and Image.open(out).size == (16, 16)
    assert "dpmpp-2m-3" in capsys.readouterr().out
    other = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(other))
    no_tokenizer = tmp_path / "copy"
    shutil.copytree(root, no_tokenizer)
    shutil.rmtree(no_tokenizer / "tokenizer")
    for model, match in [(tmp_path, "no model_index.json"), (other, "not a Stable Diffusion checkpoint"),
                         (no_tokenizer, "no tokenizer found")]:
        assert main([*argv[:1], "--model", str(model), *argv[3:]]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
