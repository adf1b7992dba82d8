import pytest
import torch

from minildm.engine import device
from minildm.recipes import presets


def test_named_presets_and_env(monkeypatch):
    for name in presets.PRESET_NAMES:
        p = presets.get_preset(name)
        assert p.name == name
        assert p.ae.image_size % 2 ** (len(p.ae.ch_mult) - 1) == 0
    monkeypatch.setenv("MINILDM_PRESET", "smoke")
    assert presets.get_preset().name == "smoke"
    monkeypatch.setenv("MINILDM_PRESET", " CPU ")
    assert presets.get_preset().name == "cpu"
    monkeypatch.delenv("MINILDM_PRESET")
    assert presets.get_preset().name == ("gpu" if torch.cuda.is_available() else "cpu")


def test_presets_grow():
    s, c, g = (presets.get_preset(n).ae for n in ("smoke", "cpu", "gpu"))
    assert s.steps < c.steps < g.steps
    assert s.ch <= c.ch <= g.ch
    assert s.image_size <= c.image_size <= g.image_size


def test_unknown_preset(monkeypatch):
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        presets.get_preset("laptop")
    monkeypatch.setenv("MINILDM_PRESET", "tiny")
    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        presets.get_preset()


def test_with_ae_copy():
    p = presets.get_preset("smoke")
    q = p.with_ae(steps=3)
    assert q.ae.steps == 3 and p.ae.steps != 3 and q.ae.ch == p.ae.ch


def test_device_choice(monkeypatch):
    monkeypatch.delenv("MINILDM_DEVICE", raising=False)
    assert device.get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("MINILDM_DEVICE", "cpu")
    assert device.get_device() == torch.device("cpu")
    with pytest.raises(ValueError):
        device.get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            device.get_device("cuda")


def test_autocast_dtype_and_seed():
    assert device.autocast_dtype("cpu") is None
    g = device.seed_everything(5)
    a = torch.rand(3)
    b = torch.rand(3, generator=g)
    device.seed_everything(5)
    assert torch.equal(a, torch.rand(3))
    assert torch.equal(b, torch.rand(3, generator=torch.Generator().manual_seed(5)))


def test_cpu_precision_needs_bf16_units(monkeypatch):
    assert device.cpu_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="unknown CPU precision 'fp16'"):
        device.cpu_precision("fp16")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert device.cpu_precision("bf16") == "fp32"  # emulated bf16 would be slower than fp32
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert device.cpu_precision("bf16") == "bf16"


def test_the_inpainting_pair_shares_its_own_unet():
    from dataclasses import replace

    from minildm.recipes import ARTIFACTS
    from minildm.recipes.preset_sections import UNetSize

    p = presets.get_preset("smoke")
    assert p.i2i.unet_for("inpaint") == p.i2i.unet_for("sr") == p.i2i.unet
    wide = UNetSize(24, (1, 2), 1, (2,), 2)
    p = replace(p, i2i=replace(p.i2i, inpaint_unet=wide))
    assert p.i2i.unet_for("inpaint") == wide and p.i2i.unet_for("semantic") == p.i2i.unet
    widths = {name: ARTIFACTS[name].identity(p)["model"]["unet"]["model_channels"]
              for name in ("ldm-inpaint", "pdm-inpaint", "ldm-sr", "ldm-semantic")}
    assert widths == {"ldm-inpaint": 24, "pdm-inpaint": 24, "ldm-sr": p.i2i.unet.model_channels,
                      "ldm-semantic": p.i2i.unet.model_channels}


def test_image_to_image_training_precision_on_a_cpu(monkeypatch):
    from dataclasses import replace

    from minildm.recipes import ARTIFACTS

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    spec, p = ARTIFACTS["ldm-inpaint"], presets.get_preset("smoke")
    recipe = spec.identity(p)["recipe"]
    cpu = torch.device("cpu")
    assert spec.trainer_settings(p, recipe, None, device=cpu)["precision"] == p.i2i.cpu_precision
    p = replace(p, i2i=replace(p.i2i, cpu_precision="bf16"))
    assert spec.trainer_settings(p, recipe, None, device=cpu)["precision"] == "bf16"
    assert spec.trainer_settings(p, recipe, None, device=cpu, precision="fp32")["precision"] == "fp32"  # asked
    assert spec.trainer_settings(p, recipe, None, device=torch.device("cuda"))["precision"] == "auto"


def test_cond_steps_per_kind():
    from dataclasses import replace

    from minildm.recipes import ARTIFACTS

    cp = presets.get_preset("smoke").cond
    assert cp.layout_steps is None and cp.steps_for("class") == cp.steps_for("layout") == cp.steps
    p = replace(presets.get_preset("smoke"), cond=replace(cp, steps=7, layout_steps=3))
    assert (p.cond.steps_for("class"), p.cond.steps_for("layout")) == (7, 3)
    specs = ARTIFACTS
    assert specs["ldm-class"].identity(p)["recipe"]["steps"] == 7
    assert specs["ldm-layout"].identity(p)["recipe"]["steps"] == 3
    assert specs["ldm-layout"].identity(p, steps=5)["recipe"]["steps"] == 5
