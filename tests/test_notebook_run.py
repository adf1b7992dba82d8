"""make run's notebook runner: one line per cell with its time, the executed copy, wall times, NB=03."""
import json

import nbformat
import pytest

from minildm.notebook.run import main, select_notebooks


def _notebook(path, sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = ([nbformat.v4.new_markdown_cell("# title")] + [nbformat.v4.new_code_cell(s) for s in sources]
                + [nbformat.v4.new_markdown_cell("the end")])
    nbformat.write(nb, path)
    return path


def test_runs_cells_with_progress_and_writes_the_executed_copy(tmp_path, capsys):
    nb = _notebook(tmp_path / "01_first.ipynb", ["x = 20", "print(x + 22)"])
    assert main([str(nb), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "[01_first] cell 1/2 running" in out and "[01_first] cell 2/2 done in" in out
    assert "wall time per notebook: 01_first.ipynb" in out and "cell 3" not in out and "cell 0" not in out
    executed = json.loads((tmp_path / "out" / "01_first.ipynb").read_text())
    assert "".join(executed["cells"][2]["outputs"][0]["text"]) == "42\n"


def test_a_cells_time_is_measured_until_it_finishes(tmp_path, capsys):
    nb = _notebook(tmp_path / "01_slow.ipynb", ["import time; time.sleep(0.6)"])
    assert main([str(nb), "--out", str(tmp_path / "out")]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if "done in" in s)
    assert float(line.split("done in ")[1].split(" s")[0]) >= 0.5


def test_a_failing_cell_is_one_line_naming_it(tmp_path, capsys):
    nb = _notebook(tmp_path / "02_bad.ipynb", ["y = 1", "raise ValueError('broken on purpose')"])
    assert main([str(nb), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 02_bad.ipynb: cell 2/2 failed") and "broken on purpose" in err[0]
    assert (tmp_path / "out" / "02_bad.ipynb").exists()


def test_select_notebooks():
    names = ["notebooks/01_a.ipynb", "notebooks/03_c.ipynb"]
    assert [p.name for p in select_notebooks(names, ["03"])] == ["03_c.ipynb"]
    assert len(select_notebooks(names)) == 2
    with pytest.raises(ValueError, match="no notebook matches 07"):
        select_notebooks(names, ["07"])
