"""Documentation checks: every public callable has a docstring, and the docstrings' examples run.

The examples (``>>>`` lines) of every ``slt_jax`` module are run here with :mod:`doctest`, so
the README's test command (``python -m pytest``) runs them without extra options.
"""

import doctest
import importlib
import inspect
import io
import pkgutil

import pytest

import slt_jax

# modules whose names users reach through ``slt_jax.<name>``; each must declare ``__all__``
PUBLIC_MODULES = [
    "slt_jax",
    "slt_jax.accumulators",
    "slt_jax.benchmark",
    "slt_jax.calibration",
    "slt_jax.cli",
    "slt_jax.compilation_cache",
    "slt_jax.compression",
    "slt_jax.data",
    "slt_jax.diagnostics",
    "slt_jax.estimators",
    "slt_jax.evaluation",
    "slt_jax.models",
    "slt_jax.plotting",
    "slt_jax.reference",
    "slt_jax.samplers",
    "slt_jax.sampling",
    "slt_jax.truth",
]


def _all_module_names():
    names = ["slt_jax"]
    for info in pkgutil.walk_packages(slt_jax.__path__, prefix="slt_jax."):
        names.append(info.name)
    return sorted(names)


ALL_MODULES = _all_module_names()


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_declare_all(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), (list, tuple)), f"{name} has no __all__"
    missing = [item for item in module.__all__ if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


def _public_callables():
    seen = {}
    for name in ALL_MODULES:
        module = importlib.import_module(name)
        for item in getattr(module, "__all__", ()):
            value = getattr(module, item, None)
            if callable(value) and not inspect.ismodule(value):
                seen.setdefault(id(value), (f"{name}.{item}", value))
    return sorted(seen.values(), key=lambda pair: pair[0])


def test_every_public_callable_has_a_docstring():
    undocumented = [
        name for name, value in _public_callables() if not (inspect.getdoc(value) or "").strip()
    ]
    assert not undocumented, f"public callables without a docstring: {undocumented}"


def _doctests(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module, name) if test.examples]


MODULES_WITH_EXAMPLES = [name for name in ALL_MODULES if _doctests(name)]


def test_examples_are_collected():
    # a guard against the finder silently returning nothing
    for name in ("slt_jax.truth", "slt_jax.diagnostics", "slt_jax.accumulators"):
        assert name in MODULES_WITH_EXAMPLES


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples(name):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    output = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=flags)
    for test in _doctests(name):
        runner.run(test, out=output.write)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, output.getvalue()


def test_mathematics_references_point_at_existing_sections():
    """The code and docs cite ``docs/mathematics.md §N``: the page exists in the repository,
    every cited section is one of its headings, and nothing cites the old page outside the
    repository (MATH dot md)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    page = root / "docs" / "mathematics.md"
    sections = set(re.findall(r"^## §(\d+)", page.read_text(encoding="utf-8"), re.MULTILINE))
    assert sections >= {str(i) for i in range(8)}, sections
    cited, stale = set(), []
    files = [root / "README.md", *(root / "docs").glob("*.md")]
    for folder, pattern in (("slt_jax", "*.py"), ("tests", "*.py"), ("notebooks", "*.ipynb"),
                            ("benchmarks", "*.py")):
        files.extend((root / folder).rglob(pattern))
    for path in files:
        text = path.read_text(encoding="utf-8")
        if "MATH" + ".md" in text:  # (spelt in two parts so this file does not match)
            stale.append(str(path.relative_to(root)))
        cited |= set(re.findall(r"mathematics\.md\)?\s*(?:§|\\u00a7|section )(\d+)", text))
    assert not stale, f"cite docs/mathematics.md instead of the old page: {stale}"
    assert cited and cited <= sections, cited - sections
