"""Notebook 06's parts: segmentation maps, degradations and masks, the concat conditioners, the concat LDM
(shapes, channel counts, training step, sampling at other sizes), SDEdit, the data mixture, the semantic score
and the image-to-image commands' bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from minildm.cli import main
from minildm.conditioning.concat import (LowResolution, MaskedImage, SegmentationMap, SpatialRescaler,
                                         build_concat_conditioner, one_hot_map)
from minildm.data import load_dataset, render_scene
from minildm.data.degradations import (MASK_KINDS, bicubic_downsample, check_hole, degrade, pyramid_fill,
                                       random_hole, random_holes)
from minildm.data.shapes import COLOURS, SEGMENTATION_CLASSES, segmentation_from_objects
from minildm.diffusion.ldm import LatentDiffusion
from minildm.diffusion.process import GaussianDiffusion
from minildm.engine.batches import LatentBatches
from minildm.engine.tasks import LatentDiffusionTask
from minildm.models.autoencoder import AutoencoderKL, IdentityConfig, IdentityFirstStage
from minildm.models.encoder_decoder import AutoencoderConfig
from minildm.models.unet import UNetModel


def _ldm(concat, c=4, size=16, first_stage=None):
    torch.manual_seed(0)
    fs = first_stage or AutoencoderKL(AutoencoderConfig(resolution=size, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                                        z_channels=c, norm_num_groups=4))
    c_c = concat.channels(c)
    unet = UNetModel(in_channels=c + c_c, out_channels=c, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(), num_heads=2, num_groups=4)
    return LatentDiffusion(fs, unet, GaussianDiffusion("linear", 50), image_size=size, conditioning_key="concat",
                           concat_stage_model=concat)


# ------------------------------------------------------------------------------------------- data
def test_segmentation_map_matches_the_rendered_objects():
    objects = [{"shape": "hexagon", "colour": "red", "centre": (0.3, 0.4), "size": "large"},
               {"shape": "cross", "colour": "blue", "centre": (0.72, 0.72), "size": "medium"}]
    item = render_scene(objects, 64)
    seg = segmentation_from_objects(item["objects"], 64)
    assert seg.shape == (64, 64) and seg.dtype == torch.int64
    img = ((item["image"] + 1) * 127.5).permute(1, 2, 0)
    for obj, name in zip(objects, ("hexagon", "cross")):
        inside = seg == SEGMENTATION_CLASSES.index(name)
        assert inside.sum() > 10
        colour = torch.tensor(COLOURS[obj["colour"]], dtype=torch.float32)
        # pixels of the region show the object's colour (its body) or its darker outline, never the background
        dist = torch.minimum((img[inside] - colour).norm(dim=1), (img[inside] - 0.55 * colour).norm(dim=1))
        assert (dist < 30).float().mean() > 0.8  # the rest: anti-aliased edge pixels
    assert set(seg.unique().tolist()) == {0, SEGMENTATION_CLASSES.index("hexagon"), SEGMENTATION_CLASSES.index("cross")}
    # the same objects at 4x the size give the map at 4x (up to the edges)
    big = segmentation_from_objects(item["objects"], 256)
    small = torch.nn.functional.interpolate(big[None, None].float(), size=64, mode="nearest")[0, 0].long()
    assert (small == seg).float().mean() > 0.97


def test_degradations_and_masks():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert bicubic_downsample(x, 4).shape == (2, 3, 16, 16)
    assert degrade(x, 4, blur_sigma=1.0, noise_std=0.1, generator=torch.Generator().manual_seed(0)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="multiple"):
        bicubic_downsample(torch.zeros(1, 3, 30, 30), 4)
    with pytest.raises(ValueError, match="noise_std"):
        degrade(x, 4, noise_std=float("nan"))
    for kind in MASK_KINDS:
        h = random_hole(64, kind, torch.Generator().manual_seed(1))
        assert h.shape == (1, 64, 64) and set(h.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(h, random_hole(64, kind, torch.Generator().manual_seed(1)))  # a function of the seed
    assert random_holes(5, 32, generator=torch.Generator().manual_seed(0)).shape == (5, 1, 32, 32)
    with pytest.raises(ValueError, match="unknown mask kind"):
        random_hole(64, "circle")
    with pytest.raises(ValueError, match="binary"):
        check_hole(torch.full((64, 64), 0.5), x)
    with pytest.raises(ValueError, match="like the image"):
        check_hole(torch.ones(32, 32), x)
    assert check_hole(torch.ones(64, 64), x).shape == (2, 1, 64, 64)


def test_shapes_and_photos_alternate():
    ds = load_dataset("shapes+photos", "val", 32, length=6)
    assert [ds[i]["domain"] for i in range(6)] == ["shapes", "photos"] * 3
    assert ds[0]["objects"] and not ds[1]["objects"] and ds[1]["image"].shape == (3, 32, 32)
    assert torch.equal(ds[2]["image"], load_dataset("shapes", "val", 32, length=2)[1]["image"])


# ------------------------------------------------------------------------------------------- conditioners
def test_pyramid_fill_keeps_the_known_pixels_and_interpolates_the_hole():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    hole = random_holes(3, 64, generator=g)
    out = pyramid_fill(x, hole)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out * (1 - hole), x * (1 - hole))  # known pixels exactly
    const = torch.full((3, 3, 64, 64), 0.3)
    assert torch.allclose(pyramid_fill(const, hole), const, atol=1e-6)  # a flat image is filled flat
    ramp = torch.linspace(0, 1, 37).expand(1, 3, 37, 37).contiguous()  # odd size too
    box = torch.zeros(1, 1, 37, 37)
    box[..., 12:25, 12:25] = 1
    err = (pyramid_fill(ramp, box) - ramp).abs()[..., 12:25, 12:25]
    assert err.mean() < 0.1 < (ramp * (1 - box) - ramp).abs()[..., 12:25, 12:25].mean()  # better than a grey fill
    one = torch.ones(1, 1, 8, 8)
    one[..., 5, 2] = 0  # a single known pixel fills the whole image with its colour
    dot = torch.zeros(1, 3, 8, 8)
    dot[..., 5, 2] = torch.tensor([0.5, -0.2, 0.1])
    assert torch.allclose(pyramid_fill(dot, one), dot[..., 5:6, 2:3].expand(1, 3, 8, 8), atol=1e-6)
    with pytest.raises(ValueError, match="the hole must be"):
        pyramid_fill(x, hole[:2])


def test_masked_image_fills():
    enc = lambda x: x[..., ::4, ::4]  # noqa: E731  (a stand-in E on the 4x grid)
    x, hole = torch.full((1, 3, 16, 16), 0.8), torch.zeros(1, 1, 16, 16)
    hole[..., 4:8, 4:8] = 1
    zero = MaskedImage()({"image": x, "hole": hole}, (4, 4), enc)
    filled = MaskedImage("pyramid")({"image": x, "hole": hole}, (4, 4), enc)
    assert zero[0, 1:, 1, 1].eq(0).all() and torch.allclose(filled[0, 1:, 1, 1], torch.full((3,), 0.8))
    assert torch.equal(zero[:, :1], filled[:, :1])  # the same mask channel
    assert MaskedImage().config() == {"type": "masked_image"}  # configs written before ``fill`` read the same
    assert build_concat_conditioner(MaskedImage("pyramid").config()).fill == "pyramid"
    with pytest.raises(ValueError, match="unknown fill"):
        MaskedImage("telea")


def test_concat_conditioners_shapes_and_channels():
    enc = lambda x: x.mean(1, keepdim=True).expand(-1, 4, -1, -1)[..., ::4, ::4]  # noqa: E731  (a stand-in E)
    lr = torch.rand(2, 3, 16, 16)
    assert LowResolution(4)({"lr": lr}, (16, 16), enc).shape == (2, 3, 16, 16)
    assert LowResolution(4)({"lr": lr}, (32, 32), enc).shape == (2, 3, 32, 32)  # resized to the grid
    x, hole = torch.rand(2, 3, 64, 64), torch.zeros(2, 1, 64, 64)
    hole[:, :, :8, :8] = 1
    c = MaskedImage()({"image": x, "hole": hole}, (16, 16), enc)
    assert c.shape == (2, 5, 16, 16) and MaskedImage().channels(4) == 5
    assert c[:, 0, :2, :2].eq(1).all() and c[:, 0, 2:, 2:].eq(0).all()  # the mask first (Stable Diffusion's order)
    seg = torch.zeros(2, 64, 64, dtype=torch.long)
    seg[:, :32] = 3
    s = SegmentationMap(8, n_stages=2)({"segmentation": seg}, (16, 16), enc)
    assert s.shape == (2, 8, 16, 16) and torch.allclose(s.sum(1), torch.ones(2, 16, 16))  # class fractions
    assert s[:, 3, :8].eq(1).all() and s[:, 0, 8:].eq(1).all()
    with pytest.raises(ValueError, match="must be 4x the latent"):
        SegmentationMap(8, n_stages=2)({"segmentation": seg}, (8, 8), enc)
    with pytest.raises(ValueError, match="classes must lie"):
        one_hot_map(torch.full((1, 4, 4), 9), 8)
    with pytest.raises(ValueError, match="integer classes"):
        one_hot_map(torch.zeros(1, 4, 4), 8)
    with pytest.raises(ValueError, match="'lr'"):
        LowResolution(4)({"image": lr}, (16, 16), enc)
    assert SpatialRescaler(1, in_channels=8, out_channels=3)(torch.rand(1, 8, 8, 8)).shape == (1, 3, 4, 4)
    for k in (LowResolution(4), MaskedImage(), SegmentationMap(8, 2)):
        assert type(build_concat_conditioner(k.config())) is type(k)
    with pytest.raises(ValueError, match="unknown concat conditioner"):
        build_concat_conditioner({"type": "depth"})


def test_concat_ldm_channel_checks_and_training_step():
    ldm = _ldm(MaskedImage())
    assert ldm.concat_channels == 5 and ldm.model.config.in_channels == 9
    unet = UNetModel(in_channels=7, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(), num_heads=2, num_groups=4)
    with pytest.raises(ValueError, match="expected in_channels=9"):
        LatentDiffusion(ldm.first_stage_model, unet, GaussianDiffusion("linear", 50), 16, conditioning_key="concat",
                        concat_stage_model=MaskedImage())
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    holes = lambda c, g: {**c, "hole": random_holes(len(c["image"]), 16, generator=g)}  # noqa: E731
    data = LatentBatches(ldm.encode_first_stage(x), 2, seed=0, concat={"image": x}, augment=holes)
    b0, b0_again = data.batch(3), data.batch(3)
    assert torch.equal(b0["concat"]["hole"], b0_again["concat"]["hole"])  # a function of (seed, step)
    half = data.batch(3, part=(1, 2))  # one rank's slice of the same global batch
    assert torch.equal(half["concat"]["hole"], b0["concat"]["hole"][1:2])
    task = LatentDiffusionTask(ldm, 1e-3)
    task.configure_optimizers()
    loss, logs = task.training_step(b0, 0, "unet")
    loss.backward()
    assert torch.isfinite(loss) and ldm.model.input_blocks[0][0].weight.grad is not None


def test_sampling_with_a_condition_and_beyond_the_training_size():
    ldm = _ldm(SegmentationMap(8, n_stages=1), size=16).eval()  # f = 2 here
    seg = torch.randint(0, 8, (2, 16, 16))
    out = ldm.sample(2, steps=3, concat={"segmentation": seg}, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16)
    big = torch.randint(0, 8, (1, 32, 48))
    out = ldm.sample(1, steps=3, concat={"segmentation": big}, latent_size=(16, 24))
    assert out.shape == (1, 3, 32, 48)  # the convolutional UNet at another size (paper Fig. 9)
    with pytest.raises(ValueError, match="needs c_concat"):
        ldm.sample(1, steps=2)
    with pytest.raises(ValueError, match="either concat"):
        ldm.sample(2, steps=2, concat={"segmentation": seg}, c_concat=torch.zeros(2, 8, 8, 8))


def test_img2img_strength_ends():
    ldm = _ldm(LowResolution(2), size=16).eval()
    pix = _ldm(MaskedImage(), c=3, first_stage=IdentityFirstStage(IdentityConfig(3, 16))).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    lr = torch.rand(2, 3, 8, 8)
    rec = ldm.img2img(x, 0.0, steps=5, concat={"lr": lr})
    assert torch.allclose(rec, ldm.decode_first_stage(ldm.encode_first_stage(x)))
    full = ldm.img2img(x, 1.0, steps=5, concat={"lr": lr}, generator=torch.Generator().manual_seed(3))
    noise = ldm.sample(2, steps=5, concat={"lr": lr}, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(full, noise)
    mid = ldm.img2img(x, 0.4, steps=5, concat={"lr": lr}, generator=torch.Generator().manual_seed(3))
    assert mid.shape == x.shape and not torch.allclose(mid, noise)
    hole = torch.zeros(2, 1, 16, 16)
    assert pix.img2img(x, 0.0, steps=5, concat={"image": x, "hole": hole}).shape == x.shape
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            ldm.img2img(x, bad, concat={"lr": lr})


def test_ddim_skip_runs_the_last_steps():
    ldm = _ldm(LowResolution(2), size=16).eval()
    lr = torch.rand(1, 3, 8, 8)
    seen = []
    ldm.sample(1, steps=10, skip=6, concat={"lr": lr}, callback=lambda t, x, x0: seen.append(t))
    assert len(seen) == 4 and seen == sorted(seen, reverse=True)
    with pytest.raises(ValueError, match="skip"):
        ldm.sample(1, steps=10, skip=10, concat={"lr": lr})


def test_semantic_score_of_the_ground_truth_is_perfect_for_a_perfect_checker():
    from minildm.eval.checker import object_maps, score_semantic_samples

    objs = render_scene([{"shape": "star", "colour": "green", "centre": (0.5, 0.5), "size": "large"}], 64)["objects"]

    class Perfect(torch.nn.Module):  # predicts the true shape map
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            shape = torch.from_numpy(object_maps(objs, 16)[1])
            return {"shape_map": torch.nn.functional.one_hot(shape, 8).permute(2, 0, 1)[None].float().expand(len(x), -1, -1, -1)}

    score = score_semantic_samples(Perfect(), torch.zeros(2, 3, 64, 64), [objs, objs])
    assert score["acc_shape"] == 1.0 and score["iou"] == 1.0 and score["n_regions"] == 2


# ------------------------------------------------------------------------------------------- command line
def _png(path, array):
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("argv, match", [
    (["inpaint", "{img}", "{grey}", "{out}"], "black and white"),
    (["inpaint", "{img}", "{small}", "{out}"], "must match"),
    (["inpaint", "{img}", "{black}", "{out}"], "nothing to fill"),
    (["inpaint", "{odd}", "{grey}", "{out}"], "multiple of 16"),
    (["upscale", "{bad}", "{out}"], "not a readable image"),
    (["upscale", "{missing}", "{out}"], "does not exist"),
    (["synthesize", "{grey}", "{out}"], "class ids 0..7"),
    (["img2img", "{wide}", "{out}", "--prompt", "a red star"], "square"),
    (["img2img", "{img}", "{out}", "--prompt", ""], "empty"),
    (["upscale", "{small}", "{dir}"], "must end in"),
])
def test_commands_refuse_bad_inputs(argv, match, tmp_path, capsys):
    rng = np.random.default_rng(0)
    files = {"img": _png(tmp_path / "img.png", rng.integers(0, 255, (64, 64, 3))),
             "grey": _png(tmp_path / "grey.png", rng.integers(0, 255, (64, 64))),
             "small": _png(tmp_path / "small.png", rng.integers(0, 2, (16, 16)) * 255),
             "black": _png(tmp_path / "black.png", np.zeros((64, 64))),
             "odd": _png(tmp_path / "odd.png", rng.integers(0, 255, (40, 40, 3))),
             "wide": _png(tmp_path / "wide.png", rng.integers(0, 255, (64, 128, 3))),
             "bad": str(tmp_path / "bad.png"), "missing": str(tmp_path / "nope.png"),
             "out": str(tmp_path / "out.png"), "dir": str(tmp_path)}
    (tmp_path / "bad.png").write_text("not an image")
    code = main([a.format(**files) for a in argv] + ["--preset", "smoke", "--out", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "art").exists()  # nothing trained or written


def test_training_on_an_image_folder_prints_the_channel_layout(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(24):
        _png(tmp_path / "imgs" / f"{i}.png", rng.integers(0, 255, (48, 48, 3)))
    argv = ["train-ldm", "--task", "inpaint", "--data", "image_folder", "--root", str(tmp_path / "imgs"),
            "--preset", "smoke", "--out", str(tmp_path / "art"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "input channels = z_t (4) + the hole mask (1) + the filled image's latent (4) = 9" in out
    assert "biharmonic" in out and (tmp_path / "art" / "smoke" / "ldm-inpaint-folder" / "model.safetensors").is_file()
    cfg = (tmp_path / "art" / "smoke" / "ldm-inpaint-folder" / "config.json").read_text()
    assert str(tmp_path / "imgs") in cfg  # the folder is part of the model's identity
    assert main([a if a != "inpaint" else "semantic" for a in argv]) == 2
    assert "semantic synthesis needs maps" in capsys.readouterr().err


def test_repaint_resampling_keeps_the_known_region_and_needs_a_mask():
    from minildm.diffusion.samplers import DDIMSampler

    d = GaussianDiffusion("linear", 50)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x0 = torch.randn(2, 3, 8, 8)
    keep = torch.zeros(2, 1, 8, 8)
    keep[..., :4] = 1
    calls = []
    out = DDIMSampler(d).sample(lambda x, t: calls.append(1) or model(x, t), (2, 3, 8, 8), steps=5, resample=3,
                                mask=keep, x0=x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[..., :4], x0[..., :4]) and len(calls) == 4 * 3 + 1  # r passes per step, one at the end
    with pytest.raises(ValueError, match="needs mask and x0"):
        DDIMSampler(d).sample(model, (1, 3, 8, 8), steps=5, resample=2)
    with pytest.raises(ValueError, match="resample"):
        DDIMSampler(d).sample(model, (1, 3, 8, 8), steps=5, resample=0, mask=keep[:1], x0=x0[:1])


def test_space_to_depth_keeps_the_full_resolution_map():
    seg = torch.randint(0, 8, (2, 64, 64))
    k = SegmentationMap(8, n_stages=2, method="space_to_depth")
    c = k({"segmentation": seg}, (16, 16), None)
    assert c.shape == (2, 128, 16, 16) and k.channels(4) == 128
    back = torch.nn.functional.pixel_shuffle(c, 4).argmax(1)
    assert torch.equal(back, seg)  # nothing of the map is lost
    with pytest.raises(ValueError, match="no channel mapper"):
        SegmentationMap(8, 2, method="space_to_depth", out_channels=3)


def test_a_concat_stage_with_weights_trains_with_the_unet():
    k = SegmentationMap(8, n_stages=1, method="area", out_channels=3)
    ldm = _ldm(k, size=16)
    task = LatentDiffusionTask(ldm, 1e-3)
    assert "concat_stage" in task.modules()
    task.configure_optimizers()
    seg = torch.randint(0, 8, (2, 16, 16))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss, _ = task.training_step({"latent": ldm.encode_first_stage(x), "concat": {"segmentation": seg}}, 0, "unet")
    loss.backward()
    assert k.rescaler.channel_mapper.weight.grad is not None


def test_inpainting_evaluation_reports_each_mask_kind():
    from minildm.recipes import image_to_image as i2i
    from minildm.recipes.presets import get_preset

    preset = get_preset("smoke")
    out = i2i.evaluate_inpainting({"keep": lambda x, h: x, "grey": lambda x, h: x * (1 - h)}, preset, None, n=6)
    assert out["n"] == 6 and out["keep"]["lpips"] == pytest.approx(0.0, abs=1e-6)
    by_kind = out["grey"]["lpips_by_kind"]
    assert set(by_kind) == set(MASK_KINDS) and all(set(v) == {"shapes", "photos"} for v in by_kind.values())
    assert all(v > 0 for kinds in by_kind.values() for v in kinds.values())


def test_the_equal_compute_row_belongs_to_the_run_from_scratch(tmp_path):
    from minildm.recipes.store import build_artifact

    first = build_artifact("ldm-inpaint", "smoke", progress=False, root=tmp_path / "a")
    rows = [r for r in first.log if "eval/compare" in r]
    assert len(rows) == 1 and rows[0]["step"] == 2  # the smoke preset's compare_steps
    more = build_artifact("ldm-inpaint", "smoke", progress=False, root=tmp_path / "b", init_from=str(first.path))
    assert not any("eval/compare" in r for r in more.log)
