"""``check-data``: open every image of an image folder of your own (and its captions file) once before a
long run, and list the unreadable ones (exit status 2 if there are any)."""
from __future__ import annotations

import argparse

from .args import positive_int

__all__ = ["check_data", "check_data_arguments"]


def check_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="image folder (as for load_dataset('image_folder', root=PATH))")
    parser.add_argument("--captions", default=None, metavar="FILE",
                        help="captions file (default: captions.json, metadata.jsonl, ... in PATH if present)")
    parser.add_argument("--size", type=positive_int, default=64, help="image size to decode to (default 64)")


def check_data(args: argparse.Namespace) -> int:
    from ..data.image_folder import check_image_folder

    result = check_image_folder(args.path, captions=args.captions, image_size=args.size)
    print(result.report())
    return 0 if result.ok else 2
