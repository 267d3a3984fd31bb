"""Test configuration shared by every test module.

Rank promotion raises (as in equinox's test suite): an implicit broadcast between arrays of
different ranks, e.g. ``(n,) + (n, 1)``, is almost always a bug in numerical code, so the
library and the tests must spell every broadcast out. 64-bit mode is left off: the library
is meant to run in float32.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
