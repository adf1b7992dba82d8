"""The conditional models' own first stage (minildm.first_stage, artifact ae-kl-f4-cond)."""
import pytest
import torch

from minildm.artifacts import list_artifacts, load_artifact
from minildm.cli import main
from minildm.first_stage import COND_FIRST_STAGE, ConditionalFirstStageSpec, conditional_first_stage, first_stage_preset
from minildm.presets import get_preset


def test_name_follows_the_preset():
    assert COND_FIRST_STAGE in list_artifacts()
    assert conditional_first_stage("smoke", 4) == "ae-kl-f4-cond"
    assert conditional_first_stage("cpu", 4) == "ae-kl-f4-cond"
    assert conditional_first_stage("smoke", 8) == "ae-kl-f8"  # defined for f = 4 only
    assert conditional_first_stage("gpu", 4) == "ae-kl-f4"  # gpu: the ablation's full-size autoencoder
    with pytest.raises(ValueError, match="no separate first stage"):
        first_stage_preset("gpu")


def test_identity_has_the_preset_sizes_and_differs_from_the_ablation():
    from minildm.artifacts import _spec

    p = get_preset("cpu")
    ident = ConditionalFirstStageSpec().identity(p)
    fs = p.cond_first_stage
    assert ident["model"]["ch"] == fs.ch and ident["model"]["z_channels"] == fs.z_channels == ident["model"]["embed_dim"]
    assert tuple(ident["model"]["ch_mult"]) == (1, 2, 4) and ident["model"]["resolution"] == p.ablation.image_size
    assert ident["recipe"]["steps"] == fs.steps and ident["recipe"]["lr"] == fs.lr
    assert ident["recipe"]["variant"] == p.ablation.variant
    assert ident != _spec("ae-kl-f4").identity(p)
    assert ConditionalFirstStageSpec().command(p) == "python -m minildm train-cond --preset cpu --first-stage-only"


def test_cli_builds_it_and_the_conditional_models_use_it(tmp_path, capsys):
    assert main(["train-cond", "--preset", "smoke", "--first-stage-only", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ae-kl-f4-cond (preset smoke)" in out and "PSNR" in out
    art = load_artifact(COND_FIRST_STAGE, "smoke", root=tmp_path)
    z = art.model.encode_latent(torch.zeros(1, 3, 64, 64))
    assert z.shape == (1, 4, 16, 16)
    assert art.metrics["latent_shape"] == [4, 16, 16]
    assert not (tmp_path / "smoke" / "ae-kl-f4").exists()
