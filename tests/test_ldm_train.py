"""Latent DDPM training: latent batches, exact resume with EMA, the ldm-f{f} artifacts and train-ldm."""
from __future__ import annotations

import pytest
import torch

from minildm.cli import main
from minildm.diffusion.ldm import LatentDiffusion
from minildm.diffusion.process import GaussianDiffusion
from minildm.engine.batches import LatentBatches
from minildm.engine.ema import EMA
from minildm.engine.tasks import LatentDiffusionTask, lr_at
from minildm.engine.trainer import Trainer
from minildm.models.autoencoder import IdentityConfig, IdentityFirstStage
from minildm.models.unet import UNetModel
from minildm.recipes.ldm import eval_curve


def _pixel_ldm():
    torch.manual_seed(0)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=1, num_groups=4)
    return LatentDiffusion(IdentityFirstStage(IdentityConfig(3, 8)), unet, GaussianDiffusion("linear", 100), 8)


def test_latent_batches_are_deterministic():
    ldm = _pixel_ldm()
    images = torch.rand(10, 3, 8, 8) * 2 - 1
    a = LatentBatches.encode(ldm, images, batch_size=4, seed=1)
    b = LatentBatches.encode(ldm, images, batch_size=4, seed=1)
    assert a.batch(3)["latent"].shape == (4, 3, 8, 8) and torch.equal(a.batch(3)["latent"], b.batch(3)["latent"])
    assert len(a) == 3
    with pytest.raises(ValueError, match="shape"):
        LatentBatches(torch.zeros(3, 8), 2)


def test_encode_dataset_streams_items_and_keeps_their_conditions():
    ldm = _pixel_ldm()
    images = torch.rand(10, 3, 8, 8) * 2 - 1
    dataset = [{"image": images[i], "caption": f"caption {i}"} for i in range(10)]
    a = LatentBatches.encode_dataset(ldm, dataset, batch_size=4, seed=1, cond_key="caption", encode_batch=3)
    b = LatentBatches.encode(ldm, images, batch_size=4, seed=1)
    assert torch.allclose(a.latents, b.latents, atol=1e-6) and a.latents.shape == (10, 3, 8, 8)
    for step in range(4):
        full = a.batch(step)
        assert torch.equal(full["latent"], b.batch(step)["latent"])
        # each latent travels with its own item's condition, also in one rank's slice
        for z, caption in zip(full["latent"], full["cond"]):
            assert torch.equal(z, a.latents[int(caption.split()[1])])
        part = a.batch(step, part=(1, 3))
        assert part["cond"] == full["cond"][1:3] and torch.equal(part["latent"], full["latent"][1:3])
    assert "cond" not in LatentBatches.encode_dataset(ldm, dataset, batch_size=4).batch(0)
    with pytest.raises(ValueError, match="empty"):
        LatentBatches.encode_dataset(ldm, [], batch_size=4)


def _trainer(out_dir, steps, **schedule):
    ldm = _pixel_ldm()
    data = LatentBatches(torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)), 4, seed=0)
    ema = EMA(ldm.model, decay=0.99)
    trainer = Trainer(LatentDiffusionTask(ldm, lr=1e-3, **schedule), data, device="cpu", max_steps=steps, out_dir=out_dir,
                      checkpoint_every=None, grad_clip=1.0, progress=False, callbacks=[ema])
    return trainer, ema, ldm


def test_lr_schedule_warmup_then_cosine():
    assert [lr_at(1.0, s, warmup_steps=4) for s in (0, 1, 3, 10)] == [0.25, 0.5, 1.0, 1.0]
    assert lr_at(1.0, 4, 4, decay_steps=14, min_lr_ratio=0.1) == pytest.approx(1.0)
    assert lr_at(1.0, 9, 4, decay_steps=14, min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_at(1.0, 14, 4, decay_steps=14, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(1.0, 99, 4, decay_steps=14, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(2e-3, 7) == 2e-3
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at(1.0, 0, warmup_steps=-1)
    with pytest.raises(ValueError, match="decay_steps"):
        lr_at(1.0, 0, warmup_steps=5, decay_steps=5)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        lr_at(1.0, 0, decay_steps=5, min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="decay_steps"):
        LatentDiffusionTask(_pixel_ldm(), lr=1e-3, decay_steps=0)


def test_the_schedule_sets_the_optimizer_lr(tmp_path):
    trainer, _, _ = _trainer(tmp_path, 3, warmup_steps=4)
    trainer.fit()
    assert trainer.optimizers["unet"].param_groups[0]["lr"] == pytest.approx(1e-3 * 3 / 4)


@pytest.mark.parametrize("schedule", [{}, {"warmup_steps": 2, "decay_steps": 5, "min_lr_ratio": 0.2}])
def test_exact_resume_with_ema(tmp_path, schedule):
    straight, ema_s, ldm_s = _trainer(tmp_path / "a", 6, **schedule)
    straight.fit()
    first, _, _ = _trainer(tmp_path / "b", 3, **schedule)
    first.fit()
    resumed, ema_r, ldm_r = _trainer(tmp_path / "b", 6, **schedule)
    resumed.resume(tmp_path / "b" / "checkpoint.safetensors")
    resumed.max_steps = 6
    resumed.fit()
    for k, v in ldm_s.model.state_dict().items():
        assert torch.equal(v, ldm_r.model.state_dict()[k]), k
    for k, v in ema_s.shadow.items():
        assert torch.equal(v, ema_r.shadow[k]), k
    assert ema_r.num_updates == 6


def test_ldm_artifacts_and_cli(tmp_path, capsys):
    root = tmp_path / "cache"
    assert main(["train-ldm", "--preset", "smoke", "--f", "1", "4", "--out", str(root), "--budget", "1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ldm-f1" in out and "ldm-f4" in out and "3×16×16" in out
    from minildm.recipes.store import load_artifact

    art = load_artifact("ldm-f4", "smoke", root=root, steps=1)
    curve = eval_curve(art.log)
    assert len(curve) == 2 and curve[-1]["time_s"] >= 1.0 and curve[-1]["fid"] >= 0
    assert art.metrics["images_per_s"] > 0 and art.metrics["scale_factor"] > 0
    assert art.command == "python -m minildm train-ldm --preset smoke --f 4 --budget 1"
    x = art.model.sample(2, steps=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 64, 64) and x.abs().max() <= 1
    assert main(["train-ldm", "--preset", "smoke", "--f", "32", "--out", str(root)]) == 2
    assert "not in the LDM experiment" in capsys.readouterr().err


def test_fashion_ldm(tmp_path, capsys):
    from minildm.data.fashion_mnist import find_files

    if find_files() is None:
        pytest.skip("Fashion-MNIST is not installed (dataset-fashion-mnist)")
    root = tmp_path / "cache"
    assert main(["train-ldm", "--preset", "smoke", "--data", "fashion_mnist", "--out", str(root), "--budget", "1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ldm-fashion" in out and "3×8×8" in out
    from minildm.recipes.store import load_artifact

    ae = load_artifact("ae-kl-fashion", "smoke", root=root)
    assert ae.config["recipe"]["data"]["name"] == "fashion_mnist" and ae.config["recipe"]["data"]["image_size"] == 32
    assert main(["train-ldm", "--preset", "smoke", "--data", "fashion_mnist", "--f", "4", "--out", str(root)]) == 2


def test_lr_schedule_from_a_recipe():
    from minildm.engine.tasks import lr_schedule

    assert lr_schedule({"steps": 10}) == {"warmup_steps": 0, "decay_steps": None, "min_lr_ratio": 0.0}
    assert lr_schedule({"steps": 10, "warmup_steps": 2, "min_lr_ratio": 0.1}) == {
        "warmup_steps": 2, "decay_steps": 10, "min_lr_ratio": 0.1}


def test_the_ldm_experiment_uses_the_papers_schedule_end_to_end():
    """The preset's β_1, β_T reach the identity and the built model (ᾱ_T of CompVis' 0.0015 → 0.0155)."""
    from minildm.recipes.latent_diffusion import build_latent_diffusion
    from minildm.recipes.presets import get_preset
    from minildm.recipes.registry import get_spec

    for preset in ("smoke", "cpu", "gpu"):
        p = get_preset(preset)
        identity = get_spec("ldm-f4").identity(p)
        d = identity["model"]["diffusion"]
        assert (d["linear_start"], d["linear_end"]) == (p.ldm.linear_start, p.ldm.linear_end) == (0.0015, 0.0155)
        built = build_latent_diffusion(identity).diffusion
        assert built.alphas_cumprod[-1].item() == pytest.approx(6.687e-4, rel=1e-3)
        assert built.alphas_cumprod[-1].item() > 10 * GaussianDiffusion("linear").alphas_cumprod[-1].item()
