"""Test configuration shared by every test module.

Rank promotion raises (as in equinox's test suite): an implicit broadcast between arrays of
different ranks, e.g. ``(n,) + (n, 1)``, is almost always a bug in numerical code, so the
library and the tests must spell every broadcast out. 64-bit mode is left off: the library
is meant to run in float32.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402

#: modules of independent heavy tests, each compiling its own programs: left to xdist one test
#: at a time, so that they fill the two workers evenly at the end of the run
_UNGROUPED = {"test_notebooks.py", "test_reference.py", "test_statistical.py", "test_sharding.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks (--dist loadgroup)
def pytest_collection_modifyitems(config, items):
    """Run each other module on one worker: its tests share module-scoped fixtures and the
    programs they compile (eager NNX/JAX ops, samplers of the same shapes), which two workers
    would each build again. A test's own xdist_group mark wins."""
    for item in items:
        if item.path.name not in _UNGROUPED and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    if getattr(config.option, "loadgroup", False):  # an xdist worker under --dist loadgroup
        _suffix_group_names(items)


def _suffix_group_names(items):
    """Append ``@group`` to each grouped test's node id, as pytest-xdist's worker does: the
    controller schedules by that suffix. xdist 3.8 writes it to ``item._nodeid``, which
    pytest 9 no longer reads (the node id lives in ``item._id``, a ``NodeId``), so every
    module was split over both workers, each building the module's fixtures and programs
    again (``tests/test_bif_batch_policy.py``'s fixture ran twice)."""
    from _pytest.nodeid import NodeId

    for item in items:
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                        for mark in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid and isinstance(getattr(item, "_id", None), NodeId):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


def pytest_configure(config):
    # registered here too, so that a run without xdist (-p no:xdist) knows the mark
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one xdist worker")
