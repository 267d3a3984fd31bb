"""Execute the notebooks at their real size and save them with their outputs.

Each notebook's size switch reads ``CI = False`` in the committed file (the real size, whose
outputs are saved); ``tests/test_notebooks.py`` runs the same cells with ``CI = True`` (small
sizes). Notebooks without a switch run as they are.

Needs a Jupyter kernel: ``pip install -e '.[notebooks]'`` (nbclient, ipykernel).

Usage::

    python benchmarks/execute_notebooks.py                      # every notebook
    python benchmarks/execute_notebooks.py notebooks/bif.ipynb  # some of them

Prints the wall time of each notebook and writes ``benchmarks/results/notebooks.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: the size switch of a notebook: the real size is committed, CI flips it
SWITCH = re.compile(r"^CI = (True|False)", re.MULTILINE)


def real_size(notebook) -> bool:
    """Set every ``CI = True`` switch to ``CI = False``; return whether the notebook has one."""
    found = False
    for cell in notebook.cells:
        if cell.cell_type == "code" and SWITCH.search(cell.source):
            cell.source = SWITCH.sub("CI = False", cell.source)
            found = True
    return found


def main(argv=None) -> int:
    import nbclient
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    arguments = parser.parse_args(argv)
    paths = arguments.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    timings = {}
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        _, notebook = nbformat.validator.normalize(notebook)  # cell ids (nbformat 4.5)
        notebook = nbformat.from_dict(notebook)
        switched = real_size(notebook)
        start = time.perf_counter()
        nbclient.NotebookClient(
            notebook, timeout=arguments.timeout, kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
        seconds = time.perf_counter() - start
        nbformat.write(notebook, path)
        timings[path.name] = {"seconds": round(seconds, 1), "real_size_switch": switched}
        print(f"{path.name}: {seconds:.0f} s", flush=True)
    output = ROOT / "benchmarks" / "results" / "notebooks.json"
    previous = json.loads(output.read_text()) if output.exists() else {}
    previous.update(timings)
    previous["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}, python {sys.version.split()[0]}"
    output.write_text(json.dumps(previous, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
