"""The command line's shared arguments and the checks that run before any work: presets, positive
counts with a sanity bound, finite guidance scales, writable output files, the artifact root, and
errors as one line.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path


def preset_arg(value: str) -> str:
    from ..recipes.presets import PRESET_NAMES

    name = value.strip().lower()
    if name not in PRESET_NAMES:
        raise argparse.ArgumentTypeError(f"unknown preset {value!r} (choose from {', '.join(PRESET_NAMES)})")
    return name


#: the largest count any option takes (steps, samples, prompts per kind): bigger is a typo, not a plan
MAX_COUNT = 10_000_000


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if not 1 <= n <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a positive integer of at most {MAX_COUNT:,}, got {value!r}")
    return n


def guidance_scale(value: str) -> float:
    from ..checks import check_number

    try:
        number = float(value)
    except ValueError:
        number = value  # check_number names the argument and what it got
    try:
        return check_number("the guidance scale", number, minimum=0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} (0: unconditional, 1: no guidance)") from None


def check_output_file(path: str, suffixes: Sequence[str] = (".png", ".jpg", ".jpeg", ".webp")) -> Path:
    """The output file ``path`` if a run can write it at the end: ValueError (before any work) when its
    folder does not exist or is not a folder, when it names a folder, or when its extension is not an
    image format in ``suffixes``."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"--output {path!r}: the file name must end in {', '.join(suffixes)}")
    if out.is_dir():
        raise ValueError(f"--output {path!r} is a folder; give a file name such as {str(out / 'samples.png')!r}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--output {path!r}: the folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--output {path!r}: the folder {str(parent)!r} is not writable")
    return out


def check_output_folder(path: str) -> Path:
    """The folder ``path`` (created if missing, with its parents) if a run can write files into it;
    ValueError (before any work) when it is a file or not writable."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output-dir {path!r} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--output-dir {path!r} is not writable")
    return folder


def check_artifact_root(root: str | None) -> None:
    """ValueError (before any work) when ``--out`` names something that is not a folder."""
    if root is not None and Path(root).exists() and not Path(root).is_dir():
        raise ValueError(f"--out {root!r} is a file, not a folder: give the folder that holds (or will hold) "
                         "the artifacts")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", type=preset_arg, default=None,
                        help="smoke | cpu | gpu (default: $MINILDM_PRESET, else gpu with CUDA, else cpu)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps (default: $MINILDM_DEVICE, else cuda > mps > cpu)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="artifact root (default: $MINILDM_ARTIFACTS, else ./artifacts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_init_from(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init-from", default=None, metavar="SOURCE",
                        help="continue training from weights: 'shipped' (those under data/weights/) or an artifact "
                             "folder or its model.safetensors; a fresh optimizer with warm-up trains --steps more "
                             "steps (default: the preset's), and shipping the result adds up the steps and hours")


# ------------------------------------------------------------------------------------ ablate-f
def factor_arg(value: str) -> int:
    from ..models.encoder_decoder import check_downsampling_factor

    try:
        return check_downsampling_factor(int(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


#: the most images ``sample`` puts in one grid (4,096 64-pixel images make a grid of about 50 MB)
MAX_GRID = 4096


def one_line(err: BaseException) -> str:
    """The error as one line: an OSError as "<what>: <file>", anything else by its message."""
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename!s}" if err.filename is not None else ""
        return f"{err.strerror}{where}"
    return " ".join(str(err).split()) or type(err).__name__
