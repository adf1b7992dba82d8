"""Bad input, tried as a hostile user would, at the command line and the Python API: every case gives a
clear one-line error (CLI: ``error: ...`` on stderr, exit status 2, no traceback; API: ValueError or
TypeError naming what was wrong) before any training or sampling starts."""
from __future__ import annotations

import math

import pytest
import torch

from minildm.cli import main

# ------------------------------------------------------------------ the command line
TRAINING = ["train-ae", "train-first-stage", "ablate-f", "train-features", "train-checker", "train-cond",
            "train-ldm", "evaluate", "scaling-study", "reevaluate ae-kl-l2"]
SAMPLE = ["sample", "--prompt", "a red star"]

CLI_CASES: list[list[str]] = []
for command in TRAINING + [" ".join(SAMPLE)]:
    base = command.split()
    CLI_CASES += [base + ["--preset", "huge"], base + ["--preset", ""], base + ["--device", "tpu"],
                  base + ["--device", "cuda:0"], base + ["--out", "{file}"], base + ["--bogus-flag"]]
for command in ["train-ae", "train-first-stage", "train-features", "train-checker", "train-cond", "train-ldm",
                "reevaluate ae-kl-l2"]:
    base = command.split()
    CLI_CASES += [base + ["--steps", v] for v in ("0", "-1", "1.5", "abc", "nan", "99999999999999999999999")]
CLI_CASES += [
    ["train-ae", "--variant", "l3"], ["train-ae", "--regularizer", "ae"], ["train-first-stage", "--f", "3"],
    ["train-first-stage", "--f", "1"], ["train-first-stage", "--f", "64"], ["ablate-f", "--f", "3"],
    ["ablate-f", "--f", "0"], ["ablate-f", "--f", "128"], ["ablate-f", "--f", "x"], ["train-cond", "--cond", "text"],
    ["train-cond", "--cond", "nope"], ["train-ldm", "--f", "3"], ["train-ldm", "--f", "32"],
    ["train-ldm", "--budget", "0"], ["train-ldm", "--budget", "-5"], ["train-ldm", "--budget", "inf"],
    ["train-ldm", "--data", "mnist"], ["train-ldm", "--cond", "class"], ["train-ldm", "--cond", "text", "--f", "4"],
    ["train-ldm", "--cond", "text", "--encoder", "clip"], ["train-ldm", "--cond", "text", "--size", "XXL"],
    ["train-ldm", "--cond", "text", "--precision", "fp8"], ["train-ldm", "--cond", "text", "--accumulate", "0"],
    ["train-ldm", "--cond", "text", "--budget", "60"], ["reevaluate", "nope"], ["reevaluate"],
    ["evaluate", "--model", "ae-kl-l2"], ["evaluate", "--model", "t2i-foo-M"], ["evaluate", "--scales", "nan"],
    ["evaluate", "--scales", "inf"], ["evaluate", "--scales", "-1"], ["evaluate", "--n-per-kind", "0"],
    ["evaluate", "--samples-per-prompt", "-2"], ["evaluate", "--steps", "0"], ["scaling-study", "--encoder", "x"],
    ["nope"], [], ["check-data"], ["check-data", "{missing}"], ["check-data", "{file}"],
    ["check-data", "{dir}", "--size", "0"], ["check-data", "{dir}", "--captions", "{missing}"],
]
CLI_CASES += [SAMPLE + ["--scale", v] for v in ("nan", "inf", "-inf", "1e309", "-1", "abc", "")]
CLI_CASES += [SAMPLE + ["--n", v] for v in ("0", "-3", "2.5", "99999999999999")]
CLI_CASES += [SAMPLE + ["--n", "10000"], SAMPLE + ["--steps", "0"], SAMPLE + ["--sampler", "euler"],
              SAMPLE + ["--seed", "x"], SAMPLE + ["--model", "ae-kl-l2"], SAMPLE + ["--model", "t2i-x-M"],
              SAMPLE + ["--output", "{missing}/x.png"], SAMPLE + ["--output", "{dir}"], SAMPLE + ["--output", "x.gif"],
              SAMPLE + ["--output", "noext"], SAMPLE + ["--output-dir", "{file}"],
              SAMPLE + ["--output", "a.png", "--output-dir", "{dir}"],
              ["sample", "--prompt", ""], ["sample", "--prompt", "   "], ["sample", "--prompt", "x" * 5000], ["sample"]]


def _fill(argv: list[str], tmp_path) -> list[str]:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-dir").mkdir(exist_ok=True)
    places = {"{file}": str(tmp_path / "a-file"), "{missing}": str(tmp_path / "missing"),
              "{dir}": str(tmp_path / "a-dir")}
    out = []
    for a in argv:
        for k, v in places.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@pytest.mark.parametrize("argv", CLI_CASES, ids=[" ".join(c)[:60] or "(none)" for c in CLI_CASES])
def test_cli_bad_input_is_one_line_status_2(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINILDM_ARTIFACTS", str(tmp_path / "cache"))
    from minildm.recipes.registry import ARTIFACTS

    def no_training(self, *args, **kwargs):  # a bad input must be refused before any training starts
        raise AssertionError("training started")

    for spec in {type(s) for s in ARTIFACTS.values()}:
        monkeypatch.setattr(spec, "train", no_training)
    try:
        status = main(_fill(argv, tmp_path))
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (status, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err


# ------------------------------------------------------------------ the Python API
def _api_cases() -> list[tuple[str, object]]:
    from minildm import (AutoencoderConfig, AutoencoderKL, GaussianDiffusion, UNetConfig, UNetModel, collate,
                         get_device, get_preset, load_dataset)
    from minildm.conditioning import ClassEmbedder, WordTokenizer, build_conditioner, layout_from_objects
    from minildm.conditioning.text import check_prompts
    from minildm.diffusion import DDIMSampler, get_sampler, guided_model
    from minildm.engine.tasks import LatentDiffusionTask
    from minildm.eval.metrics import psnr, ssim
    from minildm.losses import LPIPSWithDiscriminator
    from minildm.recipes import get_spec, load_artifact, load_or_train
    from minildm.recipes.text_to_image import parse_t2i_name

    ae = AutoencoderKL(AutoencoderConfig(resolution=32, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=2,
                                         embed_dim=2, norm_num_groups=4))
    unet = UNetModel(UNetConfig(in_channels=2, out_channels=2, model_channels=8, channel_mult=(1,), num_res_blocks=1,
                                attention_resolutions=(), num_heads=1, num_groups=4))
    diffusion = GaussianDiffusion("linear", 10)
    ddim = DDIMSampler(diffusion)
    eps = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    nan = math.nan
    cases = [
        ("load_dataset unknown name", lambda: load_dataset("imagenet")),
        ("load_dataset unknown split", lambda: load_dataset("shapes", "dev")),
        ("load_dataset unknown option", lambda: load_dataset("shapes", "val", 64, colour="red")),
        ("load_dataset size 0", lambda: load_dataset("shapes", "val", 0)),
        ("load_dataset size -64", lambda: load_dataset("shapes", "val", -64)),
        ("load_dataset size 100000", lambda: load_dataset("shapes", "val", 100000)),
        ("load_dataset length -1", lambda: load_dataset("shapes", "val", 64, length=-1)),
        ("load_dataset label kind", lambda: load_dataset("shapes", "val", 64, label="size_of_sky")),
        ("load_dataset channels 2", lambda: load_dataset("shapes", "val", 64, channels=2)),
        ("load_dataset holdout pair", lambda: load_dataset("shapes", "train", 64, holdout=["plaid star"])),
        ("image_folder without root", lambda: load_dataset("image_folder", "train", 64)),
        ("image_folder missing root", lambda: load_dataset("image_folder", "train", 64, root="/nonexistent/x")),
        ("photos split_by", lambda: load_dataset("photos", "train", 64, split_by="colour")),
        ("collate nothing", lambda: collate([])),
        ("get_preset", lambda: get_preset("huge")),
        ("get_device tpu", lambda: get_device("tpu")),
        ("get_device cuda", lambda: get_device("cuda:7")),
        ("AutoencoderConfig ch_mult ()", lambda: AutoencoderConfig(ch_mult=())),
        ("AutoencoderConfig ch 0", lambda: AutoencoderConfig(ch=0)),
        ("AutoencoderConfig resolution 33", lambda: AutoencoderConfig(resolution=33, ch_mult=(1, 2))),
        ("encode wrong channels", lambda: ae.encode(torch.zeros(1, 1, 32, 32))),
        ("encode 3-d tensor", lambda: ae.encode(torch.zeros(3, 32, 32))),
        ("encode odd size", lambda: ae.encode(torch.zeros(1, 3, 31, 31))),
        ("encode integers", lambda: ae.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))),
        ("decode wrong channels", lambda: ae.decode(torch.zeros(1, 5, 16, 16))),
        ("UNetConfig channels 0", lambda: UNetConfig(in_channels=0)),
        ("UNetConfig channel_mult ()", lambda: UNetConfig(channel_mult=())),
        ("UNet wrong input channels", lambda: unet(torch.zeros(1, 3, 8, 8), torch.zeros(1))),
        ("UNet timesteps batch", lambda: unet(torch.zeros(2, 2, 8, 8), torch.zeros(3))),
        ("GaussianDiffusion schedule", lambda: GaussianDiffusion("quadratic", 10)),
        ("GaussianDiffusion T 0", lambda: GaussianDiffusion("linear", 0)),
        ("GaussianDiffusion parameterization", lambda: GaussianDiffusion("linear", 10, "score")),
        ("q_sample t out of range", lambda: diffusion.q_sample(torch.zeros(1, 2, 4, 4), torch.tensor([10]))),
        ("DDIM eta nan", lambda: ddim.sample(eps, (1, 2, 4, 4), 5, nan)),
        ("DDIM eta inf", lambda: ddim.sample(eps, (1, 2, 4, 4), 5, math.inf)),
        ("DDIM eta -1", lambda: ddim.sample(eps, (1, 2, 4, 4), 5, -1.0)),
        ("DDIM steps 0", lambda: ddim.sample(eps, (1, 2, 4, 4), 0)),
        ("DDIM steps > T", lambda: ddim.sample(eps, (1, 2, 4, 4), 11)),
        ("DDIM mask without x0", lambda: ddim.sample(eps, (1, 2, 4, 4), 5, mask=torch.ones(1, 1, 4, 4))),
        ("DDIM mask of wrong shape", lambda: ddim.sample(eps, (1, 2, 4, 4), 5, mask=torch.ones(1, 1, 3, 3),
                                                         x0=torch.zeros(1, 2, 4, 4))),
        ("DDIM mask outside [0, 1]", lambda: ddim.sample(eps, (1, 2, 4, 4), 5, mask=torch.full((1, 1, 4, 4), 2.0),
                                                         x0=torch.zeros(1, 2, 4, 4))),
        ("DDIM x_T of wrong shape", lambda: ddim.sample(eps, (1, 2, 4, 4), 5, x_T=torch.zeros(1, 2, 5, 5))),
        ("get_sampler", lambda: get_sampler("euler", diffusion)),
        ("guidance nan", lambda: guided_model(eps, nan)),
        ("guidance inf", lambda: guided_model(eps, math.inf)),
        ("guidance -2", lambda: guided_model(eps, -2.0)),
        ("guidance string", lambda: guided_model(eps, "7.5")),
        ("task lr nan", lambda: LatentDiffusionTask(torch.nn.Linear(1, 1), nan)),
        ("task lr inf", lambda: LatentDiffusionTask(torch.nn.Linear(1, 1), math.inf)),
        ("task lr 0", lambda: LatentDiffusionTask(torch.nn.Linear(1, 1), 0.0)),
        ("task p_uncond 2", lambda: LatentDiffusionTask(torch.nn.Linear(1, 1), 1e-3, p_uncond=2.0)),
        ("task p_uncond nan", lambda: LatentDiffusionTask(torch.nn.Linear(1, 1), 1e-3, p_uncond=nan)),
        ("loss kl_weight nan", lambda: LPIPSWithDiscriminator(disc_start=0, kl_weight=nan)),
        ("loss disc_weight inf", lambda: LPIPSWithDiscriminator(disc_start=0, disc_weight=math.inf)),
        ("loss pixel_loss", lambda: LPIPSWithDiscriminator(disc_start=0, pixel_loss="l3")),
        ("loss disc_start -1", lambda: LPIPSWithDiscriminator(disc_start=-1)),
        ("psnr shapes differ", lambda: psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 9, 9))),
        ("ssim too small", lambda: ssim(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))),
        ("check_prompts empty list", lambda: check_prompts([])),
        ("check_prompts empty", lambda: check_prompts([""])),
        ("check_prompts not text", lambda: check_prompts([3])),
        ("tokenizer all unknown", lambda: WordTokenizer.fit(["a red star"], max_length=8).check_known(["xyzzy"])),
        ("class label out of range", lambda: ClassEmbedder(4, 8)(torch.tensor([7]))),
        ("class label negative", lambda: ClassEmbedder(4, 8)(torch.tensor([-1]))),
        ("conditioner type", lambda: build_conditioner({"type": "audio"})),
        ("layout too many objects", lambda: layout_from_objects([[{"box": [0, 0, 1, 1], "shape_id": 0,
                                                                    "colour_id": 0}] * 5], 3)),
        ("artifact unknown", lambda: get_spec("ae-kl-f3")),
        ("load_or_train unknown", lambda: load_or_train("sd-1.5", "smoke")),
        ("load_artifact missing", lambda: load_artifact("ae-kl-l2", "smoke", root="/nonexistent/artifacts")),
        ("t2i name", lambda: parse_t2i_name("t2i-clip-M")),
    ]
    return cases


API_CASES = _api_cases()


@pytest.mark.parametrize("case", API_CASES, ids=[name for name, _ in API_CASES])
def test_api_bad_input_is_a_clear_error(case):
    name, call = case
    with pytest.raises((ValueError, TypeError)) as err:
        call()
    message = str(err.value)
    assert message and "\n" not in message.strip() or len(message.splitlines()) <= 3, message


def test_there_are_at_least_150_cases():
    assert len(CLI_CASES) + len(API_CASES) >= 150, len(CLI_CASES) + len(API_CASES)
