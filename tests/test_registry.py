"""The artifact registry: every registered spec has the interface the store needs, and one artifact of
each spec class goes through build -> load -> reevaluate -> load under the smoke preset."""
import json

import pytest
import torch

from minildm.recipes import ARTIFACTS, get_spec, list_artifacts, register
from minildm.recipes.presets import get_preset
from minildm.recipes.registry import ArtifactSpec
from minildm.data.fashion_mnist import find_files
from minildm.recipes.store import load_artifact, load_or_train, reevaluate_artifact

PRESET = get_preset("smoke")


def test_every_spec_has_the_interface_and_a_consistent_identity():
    assert list_artifacts() == sorted(ARTIFACTS) and len(ARTIFACTS) >= 30
    for name, spec in ARTIFACTS.items():
        assert isinstance(spec, ArtifactSpec), name
        assert spec.name == name and spec.description
        if name in ("ldm-f1", "ldm-f2", "ldm-f16") and PRESET.ldm.factors != (1, 2, 4, 8, 16):
            continue
        if name.startswith("t2i-") and name.endswith("XS"):  # the smoke preset has no XS size
            with pytest.raises(ValueError, match="unknown model size"):
                spec.identity(PRESET)
            continue
        identity = spec.identity(PRESET)
        assert identity["preset"] == "smoke" and "model" in identity and "recipe" in identity, name
        json.dumps(identity)  # the identity is config.json
        assert spec.command(PRESET).startswith("python "), name
        model = spec.build_model(json.loads(json.dumps(identity)))
        assert isinstance(model, torch.nn.Module), name


def test_register_refuses_duplicates_and_wrong_names():
    with pytest.raises(ValueError, match="registered twice"):
        register("ldm-class", kind="class")(type(get_spec("ldm-class")))
    with pytest.raises(ValueError, match="registered as"):
        register("ldm-other", kind="class")(type(get_spec("ldm-class")))
    with pytest.raises(ValueError, match="unknown artifact 'nope'"):
        get_spec("nope")


# one artifact of every spec class; the dependencies that the first ones build (ae-kl-f4, feature-net,
# checker, kl-f4) come after them and are loaded, not trained again
ONE_PER_CLASS = ["ae-kl-l2", "ldm-f4", "ldm-class", "t2i-scratch-S", "ae-kl-f4", "feature-net", "checker", "kl-f4",
                 "ae-kl-fashion", "kl-f4-photos", "ldm-inpaint", "kl-f4-photos-asym"]


def test_the_cycle_below_covers_every_spec_class():
    assert {type(get_spec(n)).__name__ for n in ONE_PER_CLASS} == {type(s).__name__ for s in ARTIFACTS.values()}


@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_build_load_reevaluate_load(name, tmp_path_factory):
    if "fashion" in name and find_files() is None:
        pytest.skip("Fashion-MNIST is not installed (make data)")
    root = tmp_path_factory.getbasetemp() / "registry-cache"
    built = load_or_train(name, PRESET, device="cpu", progress=False, root=root)  # trains it unless a test before did
    loaded = load_artifact(name, PRESET, device="cpu", root=root)
    a, b = built.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)
    again = reevaluate_artifact(name, PRESET, device="cpu", root=root)
    # the evaluation's figures are measured again; what training recorded is all kept
    assert set(built.metrics) <= set(again.metrics), set(built.metrics) - set(again.metrics)
    for key in ("train_time_s", "params", "steps", "command", "device"):
        assert again.metrics.get(key) == built.metrics.get(key)
    assert again.metrics["evaluated_by"].startswith(f"python -m minildm reevaluate {name}")
    reloaded = load_artifact(name, PRESET, device="cpu", root=root)
    assert reloaded.metrics == json.loads((reloaded.path / "metrics.json").read_text())
    if name.startswith("t2i-"):
        assert reloaded.metrics["flops_per_step"] == built.metrics["flops_per_step"] > 0
