"""Command line: ``python -m minildm <command> ...`` (also the ``minildm`` console script).

Each command is a :class:`Command` in :data:`COMMANDS`: a function that adds its arguments to a
subparser and a function that runs it. The commands follow the notebooks: ``train-ae`` (01),
``ablate-f`` and ``train-features`` (02), ``train-ldm`` (03, and 05 with ``--cond text``),
``train-checker``, ``train-first-stage`` and ``train-cond`` (04), ``evaluate``, ``sample`` and
``scaling-study`` (05), ``train-ldm --task``, ``upscale``, ``inpaint``, ``img2img`` and ``synthesize``
(06), ``sd`` (Stable Diffusion weights of one's own, 05), ``reevaluate`` (any artifact), ``check-data`` (an image folder of your own),
``ship`` (publish cached artifacts as shipped weights; ``--init-from shipped`` on a training command
continues from them).

Errors in the arguments exit with status 2 and argparse's usage message. Errors of the user or the
environment (a ValueError of the library: unknown preset, unusable checkpoint, non-finite number;
a FloatingPointError: training diverged; an OSError: a file that cannot be read or written) print one
line ``error: ...`` on stderr, also with status 2 and without a traceback (``--debug`` shows it).
Output paths, counts and scales are checked before any training or sampling starts. Warnings (e.g. a
``sample`` prompt made mostly of words the text encoder does not know) print one line ``warning: ...``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, TextIO

from .args import check_artifact_root, one_line
from .image_to_image import (img2img, img2img_arguments, inpaint, inpaint_arguments, synthesize,
                             synthesize_arguments, upscale, upscale_arguments)
from .data import check_data, check_data_arguments
from .stable_diffusion import sd, sd_arguments
from .weights import ship, ship_arguments
from .text_to_image import (
    evaluate,
    evaluate_arguments,
    sample,
    sample_arguments,
    scaling,
    scaling_arguments,
)
from .train import (
    ablate_f,
    ablate_f_arguments,
    reevaluate,
    reevaluate_arguments,
    train_ae,
    train_ae_arguments,
    train_checker,
    train_cond,
    train_cond_arguments,
    train_features,
    train_features_arguments,
    train_first_stage,
    train_first_stage_arguments,
    train_ldm,
    train_ldm_arguments,
)

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` and ``run(args) -> exit status``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "train-ae": Command("train-ae", "train a first-stage autoencoder (notebook 01) and cache it as an artifact",
                        train_ae_arguments, train_ae),
    "ablate-f": Command("ablate-f", "train and measure the downsampling-factor ablation (notebook 02)",
                        ablate_f_arguments, ablate_f),
    "train-first-stage": Command("train-first-stage", "train the first stage kl-f4 of the conditional LDMs "
                                 "(notebooks 04 and 05), or kl-f4-photos with --data shapes+photos (notebook 06)", train_first_stage_arguments, train_first_stage),
    "train-ldm": Command("train-ldm", "train latent DDPMs: unconditional on the first stages of notebook 02 (notebook 03), "
                         "text-to-image with --cond text (notebook 05), image-to-image with --task (notebook 06)",
                         train_ldm_arguments, train_ldm),
    "train-features": Command("train-features", "train the feature network of the FID-style score",
                              train_features_arguments, train_features),
    "train-checker": Command("train-checker", "train the content checker that scores conditional samples "
                             "(notebook 04)", train_features_arguments, train_checker),
    "evaluate": Command("evaluate", "compositional accuracy of a text-to-image LDM on the fixed prompt set "
                        "(notebook 05)", evaluate_arguments, evaluate),
    "sample": Command("sample", "draw images from prompts with a text-to-image LDM (notebook 05)",
                      sample_arguments, sample),
    "scaling-study": Command("scaling-study", "train text-to-image LDMs of several sizes and tabulate loss and "
                             "accuracy against training compute (notebook 05)", scaling_arguments, scaling),
    "reevaluate": Command("reevaluate", "evaluate a cached artifact again with the preset's current evaluation "
                          "settings and rewrite its metrics (the weights are kept)", reevaluate_arguments, reevaluate),
    "train-cond": Command("train-cond", "train the class-conditional and layout-to-image LDMs (notebook 04)",
                          train_cond_arguments, train_cond),
    "check-data": Command("check-data", "open every image of an image folder (and its captions file) once and "
                          "list the unreadable ones; exit status 2 if there are any", check_data_arguments,
                          check_data),
    "upscale": Command("upscale", "x4 super-resolution of an image with ldm-sr (notebook 06)", upscale_arguments,
                       upscale),
    "inpaint": Command("inpaint", "fill the white region of a mask in an image with ldm-inpaint (notebook 06)",
                       inpaint_arguments, inpaint),
    "img2img": Command("img2img", "edit an image towards a prompt with a text-to-image LDM (SDEdit, notebook 06)",
                       img2img_arguments, img2img),
    "synthesize": Command("synthesize", "draw an image from a segmentation map with ldm-semantic (notebook 06)",
                          synthesize_arguments, synthesize),
    "sd": Command("sd", "draw images from a prompt with Stable Diffusion v1 / v2 weights (a diffusers folder or an "
                  "original single file) in minildm's own modules (notebook 05)", sd_arguments, sd),
    "ship": Command("ship", "publish cached artifacts as the shipped weights under data/weights/ (fp16, with "
                    "provenance); --list shows them", ship_arguments, ship),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``error: ...`` with the ``--help`` to read, status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subparser per entry of :data:`COMMANDS`."""
    from ..engine.checkpoint import minildm_version

    parser = OneLineErrorParser(
        prog="python -m minildm",
        description="minildm: Latent Diffusion Models (Rombach et al., CVPR 2022), step by step.",
        epilog="Example: python -m minildm train-ae --preset cpu --variant l1-lpips-gan --regularizer kl")
    parser.add_argument("--version", action="version", version=f"minildm {minildm_version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` of the command line: one line ``warning: ...`` on stderr."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # bad arguments: SystemExit(2) with argparse's message
    try:
        check_artifact_root(getattr(args, "out", None))
        with warnings.catch_warnings():  # warnings as one line each
            warnings.showwarning = show_warning
            return int(args._run(args) or 0)
    except (ValueError, FloatingPointError, OSError) as err:  # the user's or the environment's, not a bug
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run again with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130


