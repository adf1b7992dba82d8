"""``python -m minildm ...``: the command line of :mod:`minildm.cli`, which follows the notebooks (01–05)."""
from __future__ import annotations

import sys

from .cli import main as _cli_main


def main() -> None:
    """Entry point of ``python -m minildm`` and the ``minildm`` console script."""
    sys.exit(_cli_main())


if __name__ == "__main__":
    main()
