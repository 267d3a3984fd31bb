"""Execute every notebook's code cells so the notebooks cannot rot (no Jupyter kernel needed)."""

import json
import pathlib

import matplotlib
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # short CI-size runs may warn, as for users
def test_notebook_runs(path):
    matplotlib.use("Agg")
    notebook = json.loads(path.read_text())
    namespace = {"__name__": "__notebook__"}
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code_cells, f"{path.name} has no code"
    for index, cell in enumerate(code_cells):
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}[cell {index}]", "exec"), namespace)
