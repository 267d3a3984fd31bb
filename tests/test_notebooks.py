"""Execute every notebook's code cells so the notebooks cannot rot (no Jupyter kernel needed).

The committed notebooks hold their real-size outputs (``CI = False``,
``benchmarks/execute_notebooks.py``); here each size switch is flipped to ``CI = True`` so the
same cells run at small sizes."""

import json
import pathlib
import re

import matplotlib
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SWITCH = re.compile(r"^CI = (True|False)", re.MULTILINE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # short CI-size runs may warn, as for users
def test_notebook_runs(path):
    matplotlib.use("Agg")
    notebook = json.loads(path.read_text())
    namespace = {"__name__": "__notebook__"}
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code_cells, f"{path.name} has no code"
    for index, cell in enumerate(code_cells):
        source = SWITCH.sub("CI = True", "".join(cell["source"]))
        exec(compile(source, f"{path.name}[cell {index}]", "exec"), namespace)


def test_committed_notebooks_show_their_real_size():
    """A notebook with a size switch is committed at its real size (``CI = False``), so the
    saved outputs are the real-size ones."""
    for path in NOTEBOOKS:
        sources = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                   if c["cell_type"] == "code"]
        switches = [m.group(1) for s in sources for m in SWITCH.finditer(s)]
        assert all(value == "False" for value in switches), path.name
