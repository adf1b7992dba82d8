"""Command line: train-ae end to end, --help, argument and library errors (exit status 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minildm.cli import COMMANDS, build_parser, main


def test_train_ae_end_to_end(tmp_path, capsys):
    status = main(["train-ae", "--preset", "smoke", "--steps", "2", "--out", str(tmp_path), "--device", "cpu",
                   "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    path = tmp_path / "smoke" / "ae-kl-l1-lpips-gan"  # the defaults: the paper's loss, KL
    assert f"saved to {path}" in out
    for label in ("PSNR (dB)", "SSIM", "LPIPS", "train time (s)", "parameters"):
        assert label in out
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["command"] == ("python -m minildm train-ae --preset smoke --variant l1-lpips-gan "
                                  "--regularizer kl --steps 2")
    assert f"{metrics['psnr']:.2f}" in out
    assert metrics["steps"] == 2 and metrics["preset"] == "smoke"
    config = json.loads((path / "config.json").read_text())
    assert config["recipe"]["disc_weight"] > 0 and config["model_class"] == "AutoencoderKL"

    # evaluate the cached artifact again: same weights, same figures, the training facts kept
    assert main(["reevaluate", "ae-kl-l1-lpips-gan", "--preset", "smoke", "--steps", "2", "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    again = json.loads((path / "metrics.json").read_text())
    assert f"metrics written to {path / 'metrics.json'}" in out and f"psnr {again['psnr']:.4g}" in out
    assert again["psnr"] == pytest.approx(metrics["psnr"], abs=1e-4) and again["command"] == metrics["command"]
    assert again["evaluated_by"] == "python -m minildm reevaluate ae-kl-l1-lpips-gan --preset smoke --steps 2"
    assert main(["reevaluate", "ae-vq-l2", "--preset", "smoke", "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "not found" in capsys.readouterr().err


def test_help_via_python_dash_m():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "minildm", "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0
    assert "train-ae" in res.stdout and "usage" in res.stdout
    res = subprocess.run([sys.executable, "-m", "minildm", "train-ae", "--preset", "huge"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "unknown preset 'huge'" in res.stderr and "smoke, cpu, gpu" in res.stderr


@pytest.mark.parametrize("argv, message", [
    (["train-ae", "--preset", "huge"], "unknown preset 'huge'"),
    (["train-ae", "--variant", "l3"], "invalid choice: 'l3'"),
    (["train-ae", "--regularizer", "gauss"], "invalid choice: 'gauss'"),
    (["train-ae", "--steps", "0"], "expected a positive integer"),
    (["train-ae", "--steps", "ten"], "expected a positive integer"),
    (["fly"], "invalid choice: 'fly'"),
    (["sample", "--prompt", "a red circle", "--sampler", "euler"], "invalid choice: 'euler'"),
    ([], "required: COMMAND"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_library_value_error_is_one_line_exit_2(tmp_path, capsys):
    status = main(["train-ae", "--preset", "smoke", "--steps", "1", "--device", "nonsense", "--out", str(tmp_path),
                   "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nonsense" in err and "Traceback" not in err
    assert not (tmp_path / "smoke").exists() or not any((tmp_path / "smoke").iterdir())


def test_commands_plug_in():
    assert "train-ae" in COMMANDS
    parser = build_parser()
    args = parser.parse_args(["train-ae", "--preset", "cpu", "--variant", "l2", "--regularizer", "vq", "--resume"])
    assert (args.preset, args.variant, args.regularizer, args.resume, args.steps) == ("cpu", "l2", "vq", True, None)


@pytest.mark.parametrize("sampler, label", [("ddim", "DDIM-7"), ("ddpm", "DDPM-30")])
def test_sample_sampler_option(sampler, label, tmp_path, capsys, monkeypatch):
    """sample --sampler picks the sampler of the generated images (the model and generation are stubbed)."""
    import types

    import torch

    import minildm.recipes.store as store
    import minildm.recipes.text_to_image_eval as t2i

    calls = {}

    def fake_generate(ldm, prompts, **kwargs):
        calls.update(kwargs)
        return torch.zeros(len(prompts), 3, 8, 8)

    model = types.SimpleNamespace(diffusion=types.SimpleNamespace(num_timesteps=30))
    monkeypatch.setattr(store, "load_or_train", lambda *a, **k: types.SimpleNamespace(model=model,
                                                                                      metrics={"best_scale": 4.5}))
    monkeypatch.setattr(t2i, "generate", fake_generate)
    out = tmp_path / "grid.png"
    argv = ["sample", "--prompt", "a red circle", "--n", "2", "--steps", "7", "--output", str(out), "--no-progress"]
    assert main(argv + ["--sampler", sampler]) == 0
    assert calls["sampler"] == sampler and calls["steps"] == 7 and out.exists()
    printed = capsys.readouterr().out
    assert f"{label}: {out}" in printed
    assert calls["guidance_scale"] == 4.5 and "s = 4.5 (its best)" in printed  # the model's best scale by default
    assert main(argv + ["--sampler", sampler, "--scale", "2"]) == 0 and calls["guidance_scale"] == 2.0
    assert build_parser().parse_args(["sample", "--prompt", "x"]).sampler == "ddim"


# ------------------------------------------------------------------ user and environment errors: one line, status 2
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("scale", ["inf", "nan", "1e309", "-1", "x"])
def test_sample_refuses_bad_guidance_scales_before_work(scale, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--prompt", "a red star", "--scale", scale, "--output", str(tmp_path / "x.png"),
              "--out", str(tmp_path / "cache"), "--preset", "smoke"])
    assert exit_.value.code == 2
    assert "guidance scale must be a finite number >= 0" in _one_line_error(capsys)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("output, message", [
    ("missing-dir/x.png", "does not exist"), ("x.txt", "must end in .png"), (".", "must end in"),
])
def test_sample_checks_the_output_before_any_training(output, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status = main(["sample", "--prompt", "a red star", "--output", output, "--out", str(tmp_path / "cache"),
                   "--preset", "smoke", "--no-progress"])
    assert status == 2 and message in _one_line_error(capsys)
    assert not (tmp_path / "cache").exists()  # nothing was trained


def test_sample_bounds_the_grid(tmp_path, capsys):
    status = main(["sample", "--prompt", "a red star", "--n", "10000000", "--output", str(tmp_path / "x.png"),
                   "--out", str(tmp_path / "cache"), "--preset", "smoke"])
    assert status == 2 and "a grid holds at most" in _one_line_error(capsys)


def test_absurd_step_counts_and_out_files_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train-ae", "--preset", "smoke", "--steps", "99999999999999999999999"])
    assert exit_.value.code == 2 and "at most 10,000,000" in _one_line_error(capsys)
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["train-ae", "--preset", "smoke", "--out", str(a_file)]) == 2
    assert "is a file, not a folder" in _one_line_error(capsys)


def test_diverged_training_and_unreadable_files_are_one_line(tmp_path, capsys, monkeypatch):
    from minildm.recipes.registry import ARTIFACTS

    def diverge(self, *args, **kwargs):
        raise FloatingPointError("non-finite loss nan at step 3 (optimizer 'ae'); no checkpoint was written.")

    monkeypatch.setattr(type(ARTIFACTS["ae-kl-l2"]), "train", diverge)
    argv = ["train-ae", "--preset", "smoke", "--variant", "l2", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 2 and "non-finite loss nan" in _one_line_error(capsys)
    with pytest.raises(FloatingPointError):
        main(["--debug", *argv])  # --debug shows the traceback
    monkeypatch.undo()

    def unreadable(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "smoke"))

    monkeypatch.setattr(type(ARTIFACTS["ae-kl-l2"]), "train", unreadable)
    assert main(argv) == 2
    assert _one_line_error(capsys) == f"error: Permission denied: {tmp_path / 'smoke'}"


def test_sample_streams_many_samples_to_a_folder(tmp_path, capsys, monkeypatch):
    """--output-dir writes every sample as it is drawn: any --n, no grid in memory (model stubbed)."""
    import types

    import torch

    import minildm.recipes.store as store
    import minildm.recipes.text_to_image_eval as t2i

    batches = []

    def fake_batches(ldm, prompts, **kwargs):
        for i in range(0, len(prompts), 3):
            batches.append(len(prompts[i:i + 3]))
            yield torch.zeros(len(prompts[i:i + 3]), 3, 8, 8)

    model = types.SimpleNamespace(diffusion=types.SimpleNamespace(num_timesteps=30))
    monkeypatch.setattr(store, "load_or_train", lambda *a, **k: types.SimpleNamespace(model=model,
                                                                                      metrics={"best_scale": 4.5}))
    monkeypatch.setattr(t2i, "generate_batches", fake_batches)
    folder = tmp_path / "many"
    argv = ["sample", "--prompt", "a red circle", "a blue star", "--n", "600", "--output-dir", str(folder),
            "--no-progress"]
    assert main(argv) == 0
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 1200 and files[0] == "000-000000.png" and files[-1] == "001-000599.png"
    assert max(batches) == 3 and "1200 samples" in capsys.readouterr().out


def test_check_data_lists_unreadable_images(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "cats").mkdir()
    for name in ("a.png", "b.jpg", "cats/c.png", "cats/d.png"):
        Image.fromarray(rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert main(["check-data", str(tmp_path), "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "4 images" in out and "all readable" in out

    data = (tmp_path / "cats" / "c.png").read_bytes()
    (tmp_path / "cats" / "c.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    assert main(["check-data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "2 of 4 images are readable, 2 are not" in out
    assert "  cats/c.png: image file is truncated" in out and "  b.jpg: cannot identify image file" in out

    captions = tmp_path / "caps.json"
    captions.write_text('{"a.png": "x",}')
    assert main(["check-data", str(tmp_path), "--captions", str(captions)]) == 2
    out = capsys.readouterr().out
    assert f"{captions}" in out and "line 1, column 15" in out
    captions.write_text('{"a.png": "a photo"}')
    (tmp_path / "b.jpg").unlink()
    (tmp_path / "cats" / "c.png").unlink()
    assert main(["check-data", str(tmp_path), "--captions", str(captions)]) == 0
    assert "1 caption" in capsys.readouterr().out
    assert main(["check-data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sample_warns_about_unknown_words_in_one_line(tmp_path, capsys, monkeypatch):
    """sample with a prompt the text encoder mostly cannot read: one line 'warning: ...' on stderr; with no
    known word at all: error, exit status 2 (a tiny untrained text-to-image model stands in for the artifact)."""
    import types

    import torch

    import minildm.recipes.store as store
    from minildm.conditioning.text import TransformerTextEmbedder, WordTokenizer
    from minildm.diffusion.ldm import LatentDiffusion
    from minildm.diffusion.process import GaussianDiffusion
    from minildm.models.autoencoder import IdentityConfig, IdentityFirstStage
    from minildm.models.unet import UNetModel

    torch.manual_seed(0)
    tok = WordTokenizer.fit(["a red circle", "a blue square on the left"], max_length=12)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1,), num_res_blocks=1,
                     attention_resolutions=(1,), num_heads=2, num_groups=4, context_dim=8)
    ldm = LatentDiffusion(IdentityFirstStage(IdentityConfig(3, 4)), unet, GaussianDiffusion("linear", 10),
                          image_size=4, cond_stage_model=TransformerTextEmbedder(tok, 8, depth=1, heads=2)).eval()
    monkeypatch.setattr(store, "load_or_train", lambda *a, **k: types.SimpleNamespace(model=ldm, metrics={"best_scale": 3.0}))
    out = tmp_path / "grid.png"
    argv = ["sample", "--n", "2", "--steps", "2", "--output", str(out), "--no-progress", "--prompt"]
    assert main(argv + ["a red circle", "a xyzzy plugh frobozz"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: prompt 'a xyzzy plugh frobozz': 3 of its 4 words")
    assert "vocabulary of 8 words" in err[0] and out.exists()
    assert main(argv + ["xyzzy plugh frobozz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: prompt 0 ('xyzzy plugh frobozz') has no word")
