"""Downsampling-factor ablation: configs per f, measured costs, artifacts ae-kl-f{f}, the table, the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from minildm.cli import main
from minildm.recipes.ablation import (ablation_table, compression_ratio, diffusion_cost, first_stage_config,
                                      format_ablation_table)
from minildm.recipes.presets import get_preset
from minildm.recipes.registry import list_artifacts
from minildm.recipes.store import artifact_dir, load_artifact

FACTORS = (1, 4, 32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    rows = ablation_table("smoke", factors=FACTORS, device="cpu", progress=False, root=root)
    return root, rows


def test_configs_per_factor():
    assert first_stage_config(8, "cpu") == {"ch_mult": (1, 2, 4, 4), "z_channels": 4, "embed_dim": 4}
    assert first_stage_config(32, "cpu")["z_channels"] == 64
    with pytest.raises(ValueError, match="power of two"):
        first_stage_config(3, "cpu")
    with pytest.raises(ValueError, match="not in the ablation"):
        first_stage_config(64, "cpu")
    assert compression_ratio((3, 64, 64), (4, 8, 8)) == 48
    for f in get_preset("cpu").ablation.factors:
        assert f"ae-kl-f{f}" in list_artifacts()


def test_diffusion_cost_is_measured_and_falls_with_the_grid():
    big = diffusion_cost((3, 16, 16), "smoke", "cpu", timing_steps=1)
    small = diffusion_cost((3, 4, 4), "smoke", "cpu", timing_steps=1)
    assert big["unet_params"] == small["unet_params"] > 0  # one fixed UNet
    assert big["unet_gflops"] > 10 * small["unet_gflops"] > 0  # 16× fewer positions
    assert big["unet_memory_mb"] > small["unet_memory_mb"] > 0
    assert big["unet_step_ms"] > 0
    with pytest.raises(ValueError, match="divisible"):
        diffusion_cost((3, 5, 5), "smoke", "cpu")


def test_table_rows(built):
    root, rows = built
    assert [r["f"] for r in rows] == list(FACTORS)
    pixel, f4, f32 = rows
    assert pixel["latent_shape"] == "3×64×64" and pixel["compression"] == 1
    assert pixel["psnr"] >= 99 and pixel["lpips"] == pytest.approx(0, abs=1e-6) and pixel["fid"] == pytest.approx(0, abs=1e-6)
    assert f4["latent_shape"] == "3×16×16" and f4["compression"] == 16
    assert f32["latent_shape"] == "64×2×2" and f32["compression"] == 48
    assert pixel["unet_gflops"] > f4["unet_gflops"] > f32["unet_gflops"]
    assert f4["psnr"] < pixel["psnr"] and f4["fid"] > 0
    saved = json.loads((root / "smoke" / "ablation-f.json").read_text())
    assert saved["rows"][1]["f"] == 4 and saved["command"].startswith("python -m minildm ablate-f")
    text = format_ablation_table(rows)
    assert "PSNR" in text and "3×16×16" in text


def test_artifact_round_trip_and_bad_artifacts(built):
    root, rows = built
    art = load_artifact("ae-kl-f4", "smoke", device="cpu", root=root)
    assert art.metrics["psnr"] == rows[1]["psnr"]
    assert art.command == "python -m minildm ablate-f --preset smoke --f 4"
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert art.model.encode_latent(x).shape == (2, 3, 16, 16)
    ident = load_artifact("ae-kl-f1", "smoke", device="cpu", root=root)
    assert torch.equal(ident.model.decode(ident.model.encode_latent(x)), x)
    # a preset with other ablation steps does not match the cached artifact
    other = get_preset("smoke")
    from dataclasses import replace

    other = replace(other, ablation=replace(other.ablation, steps=5))
    with pytest.raises(ValueError, match="mismatched"):
        load_artifact("ae-kl-f4", other, root=root)


def test_corrupted_artifact_names_the_command(tmp_path, built):
    import shutil

    root, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    path = artifact_dir("ae-kl-f32", "smoke", copy)
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="ablate-f --preset smoke --f 32"):
        load_artifact("ae-kl-f32", "smoke", root=copy)
    (path / "metrics.json").write_text("{broken")
    with pytest.raises(ValueError, match="corrupted"):
        load_artifact("ae-kl-f32", "smoke", root=copy)


def test_cli(built, capsys):
    root, _ = built
    assert main(["ablate-f", "--preset", "smoke", "--out", str(root), "--f", "1", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3×16×16" in out and "FD-feat" in out
    with pytest.raises(SystemExit) as exc:
        main(["ablate-f", "--f", "3"])
    assert exc.value.code == 2
    assert main(["ablate-f", "--preset", "smoke", "--out", str(root), "--f", "64"]) == 2
    assert "not in the ablation" in capsys.readouterr().err
