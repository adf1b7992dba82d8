"""The conditional LDMs' first stage kl-f{f}: identity, command, build, use by the conditional LDMs."""
from __future__ import annotations

import pytest
import torch

from minildm.cli import main
from minildm.recipes.first_stage import FirstStageSpec, first_stage_name, first_stage_preset
from minildm.recipes.presets import get_preset
from minildm.recipes.registry import list_artifacts
from minildm.recipes.store import build_artifact, load_artifact

PRESET = get_preset("smoke")


def test_identity_follows_the_first_stage_preset():
    assert first_stage_name(4) == "kl-f4" and "kl-f4" in list_artifacts()
    fs = PRESET.first_stage
    ident = FirstStageSpec(4).identity(PRESET)
    assert ident["model_class"] == "AutoencoderKL"
    assert ident["model"]["z_channels"] == ident["model"]["embed_dim"] == fs.z_channels
    assert len(ident["model"]["ch_mult"]) == 3  # f = 4: two downsamplings
    assert FirstStageSpec(8).identity(PRESET)["model"]["ch_mult"] != ident["model"]["ch_mult"]
    r = ident["recipe"]
    assert (r["steps"], r["batch_size"], r["lr"], r["variant"]) == (fs.steps, fs.batch_size, fs.lr, fs.variant)
    assert FirstStageSpec(4).identity(PRESET, steps=3)["recipe"]["steps"] == 3
    assert first_stage_preset(PRESET).ae.image_size == fs.image_size
    assert FirstStageSpec(4).command(PRESET) == "python -m minildm train-first-stage --preset smoke --f 4"
    with pytest.raises(ValueError, match="power of two"):
        FirstStageSpec(3).identity(PRESET)


def test_build_evaluates_reconstruction_and_its_ceiling(tmp_path, capsys):
    assert main(["train-first-stage", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "checker on the reconstructions: shape" in out and "train-first-stage --preset smoke --f 4" in out
    art = load_artifact("kl-f4", PRESET, root=tmp_path)
    z = art.model.encode_latent(torch.zeros(1, 3, 64, 64))
    assert z.shape == (1, PRESET.first_stage.z_channels, 16, 16) and art.metrics["psnr"] > 0
    assert {"acc_shape", "acc_colour", "acc_position"} <= set(art.metrics["ceiling"])
    with pytest.raises(SystemExit):
        main(["train-first-stage", "--preset", "smoke", "--f", "3", "--out", str(tmp_path)])
    assert "power of two" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mismatched"):
        load_artifact("kl-f4", PRESET, root=tmp_path, steps=2)
    assert build_artifact("kl-f4", PRESET, root=tmp_path, steps=2, progress=False).metrics["steps"] == 2
