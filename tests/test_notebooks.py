"""The notebooks run top to bottom with the tiny setting (KFSR_TINY=1), so they never rot."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

NB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


@pytest.mark.parametrize("name", ["quickstart", "embed_kernel_estimator", "benchmark"])
def test_notebook_executes(name, monkeypatch):
    monkeypatch.setenv("KFSR_TINY", "1")
    nb = nbformat.read(os.path.join(NB_DIR, name + ".ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": NB_DIR}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
