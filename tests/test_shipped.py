"""Shipped weights: ship a cached artifact (fp16 + provenance), load it before training, refuse
corrupted or outdated weights with the retrain command, continue training from them (--init-from)."""
from __future__ import annotations

import gzip
import json

import pytest
import torch

from minildm.cli import main
from minildm.diffusion.process import GaussianDiffusion
from minildm.engine.checkpoint import load_weights
from minildm.recipes.presets import get_preset
from minildm.recipes.ship import compact_log, ship_artifact
from minildm.recipes.shipped import (SHIPPED_BUDGET_BYTES, init_state, learning_curve, load_shipped, shipped_dir, shipped_sizes,
                                    stale_shipped)
from minildm.recipes.store import artifact_dir, build_artifact, load_artifact, load_or_train

SMOKE2 = get_preset("smoke").with_ae(steps=2)


@pytest.fixture()
def weights(tmp_path, monkeypatch):
    """An empty shipped-weights folder and an empty cache."""
    monkeypatch.setenv("MINILDM_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("MINILDM_ARTIFACTS", str(tmp_path / "cache"))
    monkeypatch.delenv("MINILDM_TRAIN", raising=False)
    return tmp_path


@pytest.fixture()
def shipped(weights):
    """ae-kl-l2 (smoke, 2 steps) trained in a build cache and shipped."""
    build = weights / "build"
    art = build_artifact("ae-kl-l2", SMOKE2, device="cpu", progress=False, root=build)
    ship_artifact("ae-kl-l2", SMOKE2, root=build)
    return build, art


def test_ship_writes_fp16_weights_with_provenance(shipped):
    _, art = shipped
    folder = shipped_dir("ae-kl-l2", SMOKE2)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "log.json.gz", "metrics.json", "model.safetensors",
                                                         "provenance.json"]
    state, _ = load_weights(folder / "model.safetensors")
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["total_steps"] == 2 and len(prov["stretches"]) == 1
    stretch = prov["stretches"][0]
    assert stretch["command"] == art.metrics["command"] and stretch["threads"] >= 1
    assert {"code_version", "torch", "hardware", "date", "train_time_s"} <= set(stretch)
    assert shipped_sizes(SMOKE2)["ae-kl-l2"] == sum(p.stat().st_size for p in folder.iterdir())


def test_load_or_train_loads_shipped_weights_before_training(shipped, weights):
    _, art = shipped
    loaded = load_or_train("ae-kl-l2", SMOKE2, device="cpu")
    assert loaded.provenance is not None and loaded.path == shipped_dir("ae-kl-l2", SMOKE2)
    assert not artifact_dir("ae-kl-l2", SMOKE2).exists()  # nothing was trained
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = (m.decode(m.encode_latent(x)) for m in (art.model.cpu(), loaded.model))
    assert loaded.model.encoder.conv_in.weight.dtype == torch.float32
    assert (a - b).abs().max() < 2e-2  # fp16 rounding only


def test_train_env_and_retrain_skip_the_shipped_weights(shipped, weights, monkeypatch):
    """MINILDM_TRAIN=1 trains from scratch, and the recorded recipe reproduces the shipped model."""
    monkeypatch.setenv("MINILDM_TRAIN", "1")
    art = load_or_train("ae-kl-l2", SMOKE2, device="cpu", progress=False)
    assert art.provenance is None and art.path == artifact_dir("ae-kl-l2", SMOKE2)
    state, _ = load_weights(shipped_dir("ae-kl-l2", SMOKE2) / "model.safetensors")
    for k, v in art.model.state_dict().items():
        assert torch.equal(v.cpu().half(), state[k]), k


def test_corrupted_shipped_weights_fail_the_sha256_check(shipped):
    weights_file = shipped_dir("ae-kl-l2", SMOKE2) / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[-1] ^= 0xFF
    weights_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256.*Retrain it with `python -m minildm train-ae"):
        load_or_train("ae-kl-l2", SMOKE2, device="cpu")


def test_shipped_weights_of_another_recipe_are_a_clear_error(shipped):
    config_file = shipped_dir("ae-kl-l2", SMOKE2) / "config.json"
    config = json.loads(config_file.read_text())
    config["recipe"]["lr"] = 0.5
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"another recipe than the code gives now \(recipe.lr: saved 0.5.*MINILDM_TRAIN=1"):
        load_or_train("ae-kl-l2", SMOKE2, device="cpu")


def test_the_step_count_alone_does_not_make_another_recipe(shipped):
    assert load_shipped("ae-kl-l2", get_preset("smoke").with_ae(steps=7), device="cpu") is not None


def test_init_from_shipped_adds_a_stretch(shipped, weights):
    build, first_art = shipped
    first = json.loads((shipped_dir("ae-kl-l2", SMOKE2) / "provenance.json").read_text())
    # a stretch shipped before stretches kept their metrics gets those of the metrics.json shipped with it
    first["stretches"][0].pop("metrics")
    (shipped_dir("ae-kl-l2", SMOKE2) / "provenance.json").write_text(json.dumps(first))
    art = build_artifact("ae-kl-l2", SMOKE2, steps=3, device="cpu", progress=False, root=build, init_from="shipped")
    assert art.metrics["init_from"]["sha256"] == first["sha256"] and art.metrics["init_from"]["steps"] == 2
    assert art.metrics["command"].endswith("--steps 3 --init-from shipped")
    ship_artifact("ae-kl-l2", SMOKE2, root=build)
    prov = json.loads((shipped_dir("ae-kl-l2", SMOKE2) / "provenance.json").read_text())
    assert len(prov["stretches"]) == 2 and prov["total_steps"] == 5
    metrics = json.loads((shipped_dir("ae-kl-l2", SMOKE2) / "metrics.json").read_text())
    assert metrics["steps"] == 5 and metrics["train_time_s"] == pytest.approx(prov["total_train_time_s"], abs=0.1)
    assert prov["stretches"][1]["init_from"]["sha256"] == first["sha256"]
    log = json.loads(gzip.decompress((shipped_dir("ae-kl-l2", SMOKE2) / "log.json.gz").read_bytes()))
    assert {"stretch": 1} in log
    assert [r["step"] for r in log if "step" in r] == [0, 1, 2, 3, 4]  # the second stretch counts on
    # one learning-curve point per stretch: accumulated steps and core-hours, and what was measured then
    curve = learning_curve("ae-kl-l2", SMOKE2)
    assert [p["steps"] for p in curve] == [2, 5]
    assert 0 < curve[0]["core_hours"] < curve[1]["core_hours"]
    assert curve[1]["metrics"]["psnr"] == pytest.approx(art.metrics["psnr"])
    assert curve[0]["metrics"]["psnr"] == pytest.approx(first_art.metrics["psnr"], abs=1e-3)
    assert "command" not in curve[1]["metrics"] and "init_from" not in curve[1]["metrics"]
    assert [p["trained"] for p in curve] == ["all", "all"]
    assert learning_curve("ae-kl-f8", SMOKE2) == []  # not shipped


def test_a_continued_stretch_in_the_cache_loads_whatever_its_length(shipped):
    build, _ = shipped
    art = build_artifact("ae-kl-l2", SMOKE2, steps=3, device="cpu", progress=False, root=build, init_from="shipped")
    again = load_or_train("ae-kl-l2", SMOKE2, device="cpu", root=build)  # the preset says 2 steps, the stretch ran 3
    assert again.metrics["init_from"] == art.metrics["init_from"]
    # a run from scratch of another length is still another artifact
    build_artifact("ae-kl-l2", SMOKE2, steps=3, device="cpu", progress=False, root=build)
    with pytest.raises(ValueError, match="recipe.steps: saved 3, expected 2"):
        load_artifact("ae-kl-l2", SMOKE2, device="cpu", root=build)


def test_a_checkpoint_resumes_only_under_the_switches_it_was_made_with(shipped, monkeypatch):
    from minildm.engine.trainer import Trainer
    from minildm.recipes.autoencoder import AutoencoderSpec

    build, _ = shipped
    run = dict(steps=2, device="cpu", progress=False, root=build, init_from="shipped")

    def interrupted(**switches):  # trains, then crashes in the evaluation: the checkpoint stays
        def failing_eval(self, model, preset, device):
            raise RuntimeError("evaluation crashed (simulated)")

        with monkeypatch.context() as m, pytest.raises(RuntimeError, match="simulated"):
            m.setattr(AutoencoderSpec, "evaluate", failing_eval)
            build_artifact("ae-kl-l2", SMOKE2, options=switches, **run)

    starts: list[int] = []
    original_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, steps=None: starts.append(self.step) or original_fit(self, steps))
    interrupted(decoder_only=True)
    build_artifact("ae-kl-l2", SMOKE2, options={"decoder_only": True}, **run)
    assert starts == [0, 2]  # the same switches: resumed where it stopped
    interrupted(decoder_only=True)
    with pytest.warns(UserWarning, match=r"made with other switches \(decoder_only\)"):
        art = build_artifact("ae-kl-l2", SMOKE2, **run)
    assert starts == [0, 2, 0, 0] and "trained" not in art.metrics  # the whole model, from the shipped weights


def test_init_from_starts_from_the_given_weights(shipped, weights):
    """One step at warm-up rate 1/100 from the shipped weights stays next to them; from scratch it does not."""
    build, _ = shipped
    start = load_shipped("ae-kl-l2", SMOKE2, device="cpu").model.state_dict()
    art = build_artifact("ae-kl-l2", SMOKE2, steps=1, device="cpu", progress=False, root=build, init_from="shipped")
    moved = max((art.model.state_dict()[k].cpu() - v).abs().max().item() for k, v in start.items())
    assert moved < 1e-3


def test_init_from_needs_weights_of_the_same_model(weights, shipped):
    build, _ = shipped
    other = build_artifact("ae-vq-l2", SMOKE2, device="cpu", progress=False, root=build)
    with pytest.raises(ValueError, match="model config differs"):
        build_artifact("ae-kl-l2", SMOKE2, steps=1, device="cpu", progress=False, root=build, init_from=other.path)
    with pytest.raises(ValueError, match="no shipped weights of 'ae-vq-l2'"):
        build_artifact("ae-vq-l2", SMOKE2, steps=1, device="cpu", progress=False, root=build, init_from="shipped")


def test_init_from_may_change_what_the_unet_predicts(weights):
    """ε weights continue as a v model (same network, new target): the stretch records the change; a shipped
    model of the old target is another recipe until then, and anything else still is."""
    import dataclasses

    smoke = get_preset("smoke")
    eps = dataclasses.replace(smoke, cond=dataclasses.replace(smoke.cond, snr_gamma=5.0, class_parameterization="eps",
                                                              class_loss_weighting="min_snr"))
    v = dataclasses.replace(smoke, cond=dataclasses.replace(smoke.cond, snr_gamma=5.0, loss_weighting="capped"))
    build = weights / "build"
    build_artifact("ldm-class", eps, device="cpu", progress=False, root=build)
    ship_artifact("kl-f4", eps, root=build)
    ship_artifact("ldm-class", eps, root=build)
    with pytest.raises(ValueError, match="another recipe than the code gives now.*parameterization: saved 'eps'"):
        load_shipped("ldm-class", v, device="cpu")
    art = build_artifact("ldm-class", v, steps=2, device="cpu", progress=False, root=build, init_from="shipped")
    assert art.model.diffusion.parameterization == "v"
    assert art.metrics["init_from"]["retargeted"] == [
        "model.diffusion.parameterization: saved 'eps', expected 'v'",
        "recipe.loss_weighting: saved None, expected 'capped'"]
    ship_artifact("ldm-class", v, root=build)
    prov = json.loads((shipped_dir("ldm-class", v) / "provenance.json").read_text())
    assert len(prov["stretches"]) == 2 and "retargeted" in prov["stretches"][1]["init_from"]
    assert load_shipped("ldm-class", v, device="cpu").model.diffusion.parameterization == "v"
    assert [p["retargeted"] for p in learning_curve("ldm-class", v)] == [[], art.metrics["init_from"]["retargeted"]]
    # the learning rate is not a target: continuing with another one is another recipe
    other = dataclasses.replace(v, cond=dataclasses.replace(v.cond, lr=v.cond.lr * 2))
    with pytest.raises(ValueError, match="another recipe.*recipe.lr"):
        build_artifact("ldm-class", other, steps=1, device="cpu", progress=False, root=build, init_from="shipped")


def test_init_from_may_change_the_noise_schedule(weights):
    """A model trained on DDPM's schedule continues on the paper's LDM schedule: the continued model samples
    with the new β_t, and the stretch records the change."""
    import dataclasses

    smoke = get_preset("smoke")
    assert smoke.cond.schedule == "scaled_linear" and smoke.cond.linear_start == 0.0015
    ddpm = dataclasses.replace(smoke, cond=dataclasses.replace(smoke.cond, schedule="linear", linear_start=None,
                                                               linear_end=None))
    build = weights / "build"
    old = build_artifact("ldm-class", ddpm, device="cpu", progress=False, root=build)
    assert "linear_start" not in old.config["model"]["diffusion"]
    ship_artifact("kl-f4", ddpm, root=build)
    ship_artifact("ldm-class", ddpm, root=build)
    with pytest.raises(ValueError, match="another recipe than the code gives now.*schedule: saved 'linear'"):
        load_shipped("ldm-class", smoke, device="cpu")
    art = build_artifact("ldm-class", smoke, steps=2, device="cpu", progress=False, root=build, init_from="shipped")
    assert art.metrics["init_from"]["retargeted"] == [
        "model.diffusion.linear_end: saved None, expected 0.0155",
        "model.diffusion.linear_start: saved None, expected 0.0015",
        "model.diffusion.schedule: saved 'linear', expected 'scaled_linear'"]
    expected = GaussianDiffusion("scaled_linear", 1000, "v", linear_start=0.0015, linear_end=0.0155)
    assert torch.allclose(art.model.diffusion.alphas_cumprod, expected.alphas_cumprod)


def test_init_from_may_train_on_more_images(weights):
    """A stretch may draw from more training images than the one it continues (as every Stable Diffusion release
    continued the last on more data); the stretch records the change, and a model from scratch on the new data
    size is still another recipe than the shipped one."""
    import dataclasses

    smoke = get_preset("smoke")
    more = dataclasses.replace(smoke, cond=dataclasses.replace(smoke.cond, n_train=smoke.cond.n_train * 2))
    build = weights / "build"
    build_artifact("ldm-class", smoke, device="cpu", progress=False, root=build)
    ship_artifact("kl-f4", smoke, root=build)
    ship_artifact("ldm-class", smoke, root=build)
    with pytest.raises(ValueError, match="another recipe than the code gives now.*n_train"):
        load_shipped("ldm-class", more, device="cpu")
    art = build_artifact("ldm-class", more, steps=2, device="cpu", progress=False, root=build, init_from="shipped")
    assert art.metrics["init_from"]["retargeted"] == [
        f"recipe.n_train: saved {smoke.cond.n_train}, expected {2 * smoke.cond.n_train}"]


def test_init_from_may_grow_the_unet(weights):
    """A continued run may add attention at a new resolution and the pooled condition: the grown model starts
    computing exactly what the shipped one did (zero-initialised branches), the stretch records the growth, and
    a UNet that loses a module is not a growth."""
    import dataclasses

    from minildm.recipes.registry import get_spec

    smoke = get_preset("smoke")

    def variant(attention: tuple[int, ...], pooled: bool):
        unet = dataclasses.replace(smoke.cond.unet, attention_resolutions=attention)
        return dataclasses.replace(smoke, cond=dataclasses.replace(smoke.cond, unet=unet, pooled_context=pooled))

    small, grown_preset = variant((2,), False), variant((1, 2), True)
    build = weights / "build"
    build_artifact("ldm-class", small, device="cpu", progress=False, root=build)
    ship_artifact("kl-f4", small, root=build)
    ship_artifact("ldm-class", small, root=build)
    state, info = init_state("ldm-class", grown_preset, "shipped")
    assert info["retargeted"] == ["model.unet.attention_resolutions: saved [2], expected [1, 2]",
                                  "model.unet.pooled_context: saved None, expected True"]
    assert "model.pooled_embed.2.weight" in state and "model.input_blocks.1.1.proj_out.weight" in state
    spec = get_spec("ldm-class")
    fresh = spec.build_model(spec.identity(grown_preset)).eval()
    fresh.load_state_dict(state)
    old = load_shipped("ldm-class", small, device="cpu").model
    z = torch.randn(2, *old.latent_shape)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        ctx, _ = old.get_learned_conditioning(torch.tensor([0, 5]))
        assert torch.allclose(fresh.model(z, t, context=ctx), old.model(z, t, context=ctx), atol=1e-6)
    grown = build_artifact("ldm-class", grown_preset, steps=1, device="cpu", progress=False, root=build,
                           init_from="shipped")
    assert grown.model.model.config.pooled_context and grown.metrics["init_from"]["retargeted"] == info["retargeted"]
    with pytest.raises(ValueError, match="not a growth of the saved one"):
        init_state("ldm-class", variant((), False), "shipped")


def test_ldm_ships_without_its_first_stage(weights):
    """An LDM's first stage is shipped once (with the first stage) and pinned by its sha256."""
    smoke = get_preset("smoke")
    build = weights / "build"
    ldm = build_artifact("ldm-f4", smoke, device="cpu", progress=False, root=build)
    with pytest.raises(ValueError, match="ship 'ae-kl-f4' before 'ldm-f4'"):
        ship_artifact("ldm-f4", smoke, root=build)
    ship_artifact("ae-kl-f4", smoke, root=build)
    ship_artifact("ldm-f4", smoke, root=build)
    state, _ = load_weights(shipped_dir("ldm-f4", smoke) / "model.safetensors")
    assert state and not any(k.startswith("first_stage_model.") for k in state)
    loaded = load_shipped("ldm-f4", smoke, device="cpu")
    for k, v in ldm.model.state_dict().items():
        assert torch.allclose(loaded.model.state_dict()[k], v.cpu().half().float()), k
    # its decoder trained further, the encoder frozen: the same latents, so the LDM loads and draws through it
    with pytest.raises(ValueError, match="continues a trained first stage"):
        build_artifact("ae-kl-f4", smoke, steps=1, device="cpu", progress=False, root=build,
                       options={"decoder_only": True})
    refined = build_artifact("ae-kl-f4", smoke, steps=2, device="cpu", progress=False, root=build,
                             init_from="shipped", options={"decoder_only": True})
    assert refined.metrics["trained"] == "decoder only (encoder frozen)"
    assert refined.metrics["command"].endswith("--init-from shipped --decoder-only")
    ship_artifact("ae-kl-f4", smoke, root=build)
    assert [p["trained"] for p in learning_curve("ae-kl-f4", smoke)] == ["all", "decoder only (encoder frozen)"]
    loaded = load_shipped("ldm-f4", smoke, device="cpu").model.first_stage_model.state_dict()
    before = ldm.model.first_stage_model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(loaded[k], v.cpu().half().float())}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), sorted(changed)[:4]
    # a first stage shipped again (another training) no longer matches the LDM trained on the old one
    build_artifact("ae-kl-f4", smoke, steps=1, device="cpu", progress=False, root=build)
    ship_artifact("ae-kl-f4", smoke, root=build)
    with pytest.raises(ValueError, match="was trained on 'ae-kl-f4' with sha256"):
        load_shipped("ldm-f4", smoke, device="cpu")


def test_ship_cli_ships_and_lists(weights, capsys):
    build = weights / "build"
    build_artifact("ae-kl-l2", SMOKE2, device="cpu", progress=False, root=build)
    assert main(["ship", "ae-kl-l2", "--list", "--preset", "smoke", "--out", str(build)]) == 0
    out = capsys.readouterr().out
    assert "shipped ae-kl-l2" in out and "2 steps" in out and "total" in out
    assert main(["ship", "ae-vq-l2", "--preset", "smoke", "--out", str(build)]) == 2
    assert "nothing to ship" in capsys.readouterr().err
    assert main(["ship", "no-such-model", "--preset", "smoke"]) == 2
    assert "unknown artifact 'no-such-model'" in capsys.readouterr().err


def test_shipped_logs_keep_every_evaluation_and_at_most_the_loss_rows_a_plot_needs():
    log = [{"step": i, "train/loss": 1.0 / (i + 1)} for i in range(5000)]
    log.insert(2500, {"stretch": 1})
    log += [{"step": i, "eval/fid": float(i)} for i in range(0, 5000, 500)]
    rows = json.loads(compact_log(log, max_loss_rows=1000))
    loss = [r for r in rows if "train/loss" in r]
    assert 900 <= len(loss) <= 1001 and loss[-1]["step"] == 4999 and loss[0]["step"] == 0
    assert {"stretch": 1} in rows and len([r for r in rows if "eval/fid" in r]) == 10
    assert len(json.loads(compact_log(log[:10]))) == 10  # a short log is kept whole


def test_the_shipped_cpu_weights_fit_the_budget(monkeypatch):
    monkeypatch.delenv("MINILDM_WEIGHTS", raising=False)
    sizes = shipped_sizes("cpu")
    assert sizes and sum(sizes.values()) <= SHIPPED_BUDGET_BYTES, f"{sum(sizes.values()) / 1e6:.2f} MB"


def test_every_shipped_cpu_model_is_the_one_the_code_builds(monkeypatch):
    """A preset change that the shipped weights do not follow would make a notebook train for hours."""
    monkeypatch.delenv("MINILDM_WEIGHTS", raising=False)
    assert stale_shipped("cpu") == {}


def test_reevaluate_shipped_rewrites_the_metrics_alone(shipped, capsys):
    """``reevaluate NAME --shipped`` measures the shipped weights again; weights and provenance stay."""
    from minildm.recipes.ship import reevaluate_shipped

    path = shipped_dir("ae-kl-l2", SMOKE2)
    before = {f: (path / f).read_bytes() for f in ("model.safetensors", "provenance.json")}
    metrics = reevaluate_shipped("ae-kl-l2", SMOKE2, device="cpu")
    assert metrics["evaluated_by"] == "python -m minildm reevaluate ae-kl-l2 --preset smoke --shipped"
    assert metrics["evaluated_with"] == {} and metrics["psnr"] > 0
    assert json.loads((path / "metrics.json").read_text()) == metrics
    assert {f: (path / f).read_bytes() for f in before} == before
    assert load_shipped("ae-kl-l2", SMOKE2).metrics == metrics
    with pytest.raises(ValueError, match="no shipped weights of 'ae-kl-l1-lpips'"):
        reevaluate_shipped("ae-kl-l1-lpips", SMOKE2)
