"""Every notebook in notebooks/ runs top to bottom without an error, at the quick sizes (GPUCNN_SMALL=1).

The notebooks are found by glob, so a new one is tested without touching this file.
nbclient runs each in a fresh IPython kernel with this process's environment
(so NUMBA_ENABLE_CUDASIM, set by conftest.py on a machine without a GPU, holds there too);
any cell that raises fails the test with the cell and its traceback.
"""
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_the_notebooks_are_there():
    names = [p.stem for p in NOTEBOOKS]
    for stem in ("01_convolution_by_hand", "02_kernel_profiling", "03_training"):
        assert stem in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("GPUCNN_SMALL", "1")
    book = nbformat.read(path, as_version=4)
    assert any(c.cell_type == "code" for c in book.cells)
    client = NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
