"""Conditional LDMs of notebook 04: artifacts, guidance sweep, CLI, conditions and batches."""
from __future__ import annotations

import pytest
import torch

from minildm.cli import main
from minildm.data import load_dataset
from minildm.data.shapes import COLOUR_NAMES
from minildm.engine.batches import LatentBatches
from minildm.recipes.conditional import class_label, cond_name, conditions_from_items


def test_class_labels_and_names():
    assert class_label("circle", "red") == 0 and class_label("cross", "cyan") == 6 * 8 + COLOUR_NAMES.index("cyan")
    assert class_label(2, 3) == 19
    item = load_dataset("shapes", "val", 64, length=1, label="shape_colour")[0]
    main_obj = item["objects"][0]
    assert class_label(main_obj["shape"], main_obj["colour"]) == item["label"]
    with pytest.raises(ValueError, match="unknown shape"):
        class_label("blob", "red")
    with pytest.raises(ValueError, match="unknown colour"):
        class_label("circle", 8)
    with pytest.raises(ValueError, match="unknown conditioning"):
        cond_name("text")


def test_latent_batches_carry_their_conditions():
    ds = load_dataset("shapes", "train", 32, length=10, label="shape_colour")
    items = [ds[i] for i in range(10)]
    z = torch.arange(10.0)[:, None, None, None].expand(10, 1, 2, 2).clone()
    for kind in ("class", "layout"):
        cond = conditions_from_items(kind, items)
        batches = LatentBatches(z, 4, seed=0, cond=cond)
        b = batches.batch(3)
        idx = b["latent"][:, 0, 0, 0].long()
        if kind == "class":
            assert torch.equal(b["cond"], cond[idx])
        else:
            assert all(torch.equal(b["cond"][k], cond[k][idx]) for k in cond)
    with pytest.raises(ValueError, match="one condition per latent"):
        LatentBatches(z, 4, cond=torch.zeros(9))


def test_train_cond_smoke_artifacts_sweep_and_sampling(tmp_path, capsys):
    from minildm.recipes.store import load_artifact

    assert main(["train-cond", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ldm-class (preset smoke)" in out and "ldm-layout (preset smoke)" in out and "acc_all" in out
    art = load_artifact("ldm-class", "smoke", root=tmp_path)
    sweep = art.metrics["sweep"]
    assert [r["scale"] for r in sweep] == [1.0, 3.0] and art.metrics["best_scale"] in (1.0, 3.0)
    assert all(0 <= r["acc_all"] <= 1 and r["fid"] >= 0 and r["diversity"] >= 0 for r in sweep)
    ldm = art.model
    x = ldm.sample(2, steps=2, cond=torch.tensor([class_label("star", "red")] * 2), guidance_scale=2.0)
    assert x.shape == (2, 3, 64, 64)
    lay = load_artifact("ldm-layout", "smoke", root=tmp_path)
    assert {"found", "iou", "centre_error", "all_correct"} <= set(lay.metrics["sweep"][0])
    assert lay.config["model"]["cond_stage"]["type"] == "layout"
    assert (tmp_path / "smoke" / "checker").is_dir() and (tmp_path / "smoke" / "kl-f4").is_dir()
    # cached: a second call loads instead of training, and prints the same table
    assert main(["train-cond", "--preset", "smoke", "--cond", "class", "--out", str(tmp_path)]) == 0
    assert "ldm-class (preset smoke)" in capsys.readouterr().out


def test_parameterization_comes_from_the_preset():
    import dataclasses

    from minildm.recipes.conditional import CondLDMSpec, build_cond_ldm
    from minildm.recipes.presets import get_preset
    from minildm.recipes.text_to_image import T2ISpec

    p = get_preset("smoke")
    assert CondLDMSpec("class").identity(p)["model"]["diffusion"]["parameterization"] == p.cond.parameterization
    assert p.cond.parameterization == p.t2i.parameterization == "v"
    pe = dataclasses.replace(p, cond=dataclasses.replace(p.cond, parameterization="eps"),
                             t2i=dataclasses.replace(p.t2i, parameterization="eps"))
    identity = CondLDMSpec("layout").identity(pe)
    assert identity["model"]["diffusion"]["parameterization"] == "eps"
    assert build_cond_ldm(identity).diffusion.parameterization == "eps"
    assert T2ISpec("scratch", "M").identity(pe)["model"]["diffusion"]["parameterization"] == "eps"
    with pytest.raises(ValueError, match="unknown parameterization"):
        build_cond_ldm(CondLDMSpec("class").identity(
            dataclasses.replace(p, cond=dataclasses.replace(p.cond, parameterization="score"))))


def test_loss_weighting_comes_from_the_preset():
    import dataclasses

    from minildm.recipes.conditional import CondLDMSpec
    from minildm.recipes.presets import get_preset
    from minildm.recipes.text_to_image import T2ISpec

    p = get_preset("smoke")
    pc = dataclasses.replace(p, cond=dataclasses.replace(p.cond, snr_gamma=5.0, loss_weighting="min_snr"),
                             t2i=dataclasses.replace(p.t2i, snr_gamma=5.0, loss_weighting="min_snr"))
    assert "loss_weighting" not in CondLDMSpec("class").identity(pc)["recipe"]  # earlier identities unchanged
    assert "loss_weighting" not in T2ISpec("scratch", "M").identity(pc)["recipe"]
    pc = dataclasses.replace(p, cond=dataclasses.replace(p.cond, snr_gamma=5.0, loss_weighting="capped"),
                             t2i=dataclasses.replace(p.t2i, snr_gamma=5.0, loss_weighting="capped"))
    assert CondLDMSpec("layout").identity(pc)["recipe"]["loss_weighting"] == "capped"
    assert T2ISpec("scratch", "M").identity(pc)["recipe"]["loss_weighting"] == "capped"


def test_class_model_can_have_its_own_parameterization_and_weighting():
    import dataclasses

    from minildm.recipes.conditional import CondLDMSpec, build_cond_ldm
    from minildm.recipes.presets import get_preset

    p = get_preset("smoke")
    cp = dataclasses.replace(p.cond, snr_gamma=5.0, loss_weighting="capped",
                             class_parameterization="eps", class_loss_weighting="min_snr")
    pk = dataclasses.replace(p, cond=cp)
    cls, lay = CondLDMSpec("class").identity(pk), CondLDMSpec("layout").identity(pk)
    assert cls["model"]["diffusion"]["parameterization"] == "eps"
    assert "loss_weighting" not in cls["recipe"] and cls["recipe"]["snr_gamma"] == 5.0
    assert lay["model"]["diffusion"]["parameterization"] == "v"
    assert lay["recipe"]["loss_weighting"] == "capped" and lay["recipe"]["snr_gamma"] == 5.0
    assert build_cond_ldm(cls).diffusion.parameterization == "eps"
    # without the class fields both models follow the shared ones
    assert CondLDMSpec("class").identity(p)["model"]["diffusion"]["parameterization"] == p.cond.parameterization
    # the cpu preset: layout and class on capped v
    c = get_preset("cpu").cond
    assert (c.parameterization_for("layout"), c.loss_weighting_for("layout")) == ("v", "capped")
    assert (c.parameterization_for("class"), c.loss_weighting_for("class")) == ("v", "capped")
    with pytest.raises(ValueError, match="unknown parameterization"):
        build_cond_ldm(CondLDMSpec("class").identity(
            dataclasses.replace(p, cond=dataclasses.replace(p.cond, class_parameterization="score"))))
