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
