"""``ship``: publish cached artifacts as the weights that come with minildm (``data/weights/``), and
list what is shipped (:mod:`minildm.recipes.shipped`, :mod:`minildm.recipes.ship`)."""
from __future__ import annotations

import argparse

from .args import add_common


def ship_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="cached artifacts to ship, first stages before the LDMs that use them")
    parser.add_argument("--list", action="store_true", help="list the shipped weights of the preset")


def ship(args: argparse.Namespace) -> int:
    from ..recipes.presets import get_preset
    from ..recipes.registry import get_spec
    from ..recipes.ship import ship_artifact
    from ..recipes.shipped import (SHIPPED_BUDGET_BYTES, read_provenance, shipped_dir, shipped_sizes, stale_shipped,
                                   weights_root)

    preset = get_preset(args.preset)
    if not args.names and not args.list:
        raise ValueError("name the artifacts to ship (e.g. `ship kl-f4 --preset cpu`) or pass --list")
    for name in args.names:
        get_spec(name)  # every name is checked before anything is written
    for name in args.names:
        dest = ship_artifact(name, preset, root=args.out)
        prov = read_provenance(dest, name, preset)
        print(f"shipped {name} ({prov['bytes'] / 1e6:.2f} MB, {prov['total_steps']} steps in "
              f"{prov['total_train_hours']:.2f} h over {len(prov['stretches'])} stretch(es)) to {dest}")
    if args.list:
        sizes = shipped_sizes(preset)
        stale = stale_shipped(preset)
        print(f"shipped weights of preset {preset.name} under {weights_root() / preset.name}:")
        print(f"  {'artifact':<22}{'MB':>7}{'steps':>9}{'hours':>8}  sha256")
        for name, size in sizes.items():
            prov = read_provenance(shipped_dir(name, preset), name, preset)
            print(f"  {name:<22}{size / 1e6:>7.2f}{prov['total_steps']:>9}{prov['total_train_hours']:>8.2f}  "
                  f"{prov['sha256'][:16]}" + ("  STALE: " + "; ".join(stale[name][:2]) if name in stale else ""))
        print(f"  {'total':<22}{sum(sizes.values()) / 1e6:>7.2f}  (budget {SHIPPED_BUDGET_BYTES / 1e6:.0f} MB)")
        if stale:
            print(f"  {len(stale)} stale (the code gives another recipe now): retrain them with their recorded "
                  f"command and ship them again")
    return 0
