"""Execute notebooks top to bottom and show where they are: ``make run`` (and ``make run NB=03``).

``python -m minildm.notebook.run notebooks/*.ipynb --out outputs [--only 03]`` runs each notebook in
its own kernel (working directory: the notebook's folder, as Jupyter does), prints one line as each
code cell starts and ends, with the time the cell took and the notebook's elapsed time, writes the
executed copy to ``--out``, and ends with each notebook's wall time. A failing cell stops the run with
one line naming the notebook and the cell (the executed copy up to there is still written), exit 1.
Used to produce the committed outputs of notebooks 01–05 (and their timings at the top of each).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "run_notebook", "select_notebooks"]


def select_notebooks(paths: Sequence[str | Path], only: Sequence[str] = ()) -> list[Path]:
    """``paths`` in order, or those whose file name starts with one of ``only`` (e.g. ``03``); ValueError
    if ``only`` matches none."""
    chosen = [Path(p) for p in paths if not only or any(Path(p).name.startswith(o) for o in only)]
    if not chosen:
        raise ValueError(f"no notebook matches {', '.join(only)}: choose from "
                         f"{', '.join(Path(p).name for p in paths)}")
    return chosen


def run_notebook(path: str | Path, out_dir: str | Path, *, timeout: float | None = None,
                 echo: Callable[[str], Any] = print) -> float:
    """Execute ``path``, write the executed copy into ``out_dir``, return the wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path, out_dir = Path(path), Path(out_dir)
    nb = nbformat.read(path, as_version=4)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    name = path.stem
    t0 = time.perf_counter()
    started: dict[int, float] = {}

    def position(index: int) -> str:
        return f"cell {code.index(index) + 1}/{len(code)}" if index in code else f"cell {index}"

    def on_start(cell: Any, cell_index: int, **_: Any) -> None:
        if cell.cell_type != "code":
            return
        started[cell_index] = time.perf_counter()
        echo(f"[{name}] {position(cell_index)} running (notebook at {time.perf_counter() - t0:.0f} s)")

    def on_complete(cell: Any, cell_index: int, **_: Any) -> None:
        if cell.cell_type != "code":
            return
        took = time.perf_counter() - started.get(cell_index, t0)
        echo(f"[{name}] {position(cell_index)} done in {took:.1f} s")

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}},
                            on_cell_start=on_start, on_cell_executed=on_complete)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        client.execute()
    except CellExecutionError as err:
        failed = next((i for i in reversed(sorted(started))), None)
        where = position(failed) if failed is not None else "a cell"
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"{path.name}: {where} failed: {last}") from None
    finally:
        nbformat.write(nb, out_dir / path.name)
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minildm.notebook.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", help="notebooks to execute, in order")
    parser.add_argument("--out", default="outputs", help="folder for the executed copies (default: outputs)")
    parser.add_argument("--only", nargs="*", default=(), metavar="NN",
                        help="only the notebooks whose name starts with these (e.g. 03)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: none)")
    args = parser.parse_args(argv)
    try:
        chosen = select_notebooks(args.notebooks, args.only)
        times = []
        for nb in chosen:
            print(f"== {nb.name}", flush=True)
            times.append((nb.name, run_notebook(nb, args.out, timeout=args.timeout,
                                                echo=lambda line: print(line, flush=True))))
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("wall time per notebook: " + ", ".join(f"{n} {t / 60:.1f} min" for n, t in times)
          + f"; all {sum(t for _, t in times) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
