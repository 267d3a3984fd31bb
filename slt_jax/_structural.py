"""Structural identity of callables, so that rebuilt closures reuse a compiled program.

``jax.jit`` keys static arguments by ``__hash__``/``__eq__``, and a function compares by
identity: ``optax.chain(optax.clip_by_global_norm(1.0), sgld(1e-4, ...))`` and the same chain
built again with ``sgld(2e-4, ...)`` are different objects, so a jit keyed on the transform
would recompile for every new step size. :class:`StructuralKey` compares callables by what
their compiled program depends on instead: the code object, default arguments and, recursively,
the closure's contents. Numbers, strings and arrays in a closure are baked into a trace as
constants, so they are part of the key by *value*; slt_jax's samplers keep their numeric
hyperparameters in their state (data), so their closures hold none. Objects the key does not
know how to look inside compare by identity, which is always safe (it can only recompile more).
"""

from __future__ import annotations

import functools
import hashlib
import types
from typing import Any

import jax
import numpy as np

_MAX_DEPTH = 64
_ATOMS = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))


class _Identity:
    """Compares by ``is`` and keeps the object alive (so its ``id`` is never reused)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.value is self.value

    def __hash__(self):
        return id(self.value)


def _array_key(value):
    array = np.asarray(value)
    digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()
    return ("array", array.shape, str(array.dtype), digest)


def _function_key(function, seen, depth):
    cells = []
    for cell in function.__closure__ or ():
        try:
            cells.append(_key(cell.cell_contents, seen, depth + 1))
        except ValueError:  # an empty cell (a variable assigned later)
            cells.append(("empty-cell",))
    return (
        "function",
        function.__code__,
        _key(function.__defaults__, seen, depth + 1),
        _key(function.__kwdefaults__, seen, depth + 1),
        tuple(cells),
    )


def _key(value, seen, depth):
    if isinstance(value, _ATOMS):
        return (type(value).__name__, value)
    if depth > _MAX_DEPTH or id(value) in seen:
        return ("identity", _Identity(value))
    if isinstance(value, jax.core.Tracer):
        return ("identity", _Identity(value))
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return _array_key(value)
    seen = seen | {id(value)}
    if isinstance(value, (tuple, list)):  # NamedTuples included: their type is part of the key
        return (type(value), tuple(_key(item, seen, depth + 1) for item in value))
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: repr(item[0]))
        return ("dict", tuple((repr(k), _key(v, seen, depth + 1)) for k, v in items))
    if isinstance(value, functools.partial):
        return ("partial",) + tuple(
            _key(part, seen, depth + 1) for part in (value.func, value.args, value.keywords)
        )
    if isinstance(value, types.FunctionType):
        return _function_key(value, seen, depth)
    if isinstance(value, types.MethodType):
        return ("method", _key(value.__func__, seen, depth + 1), _key(value.__self__, seen, depth + 1))
    if isinstance(value, (types.ModuleType, types.BuiltinFunctionType, type)):
        return ("identity", _Identity(value))
    return ("identity", _Identity(value))


class StructuralKey:
    """A hashable stand-in for ``value`` that is equal for structurally identical callables.

    ``StructuralKey(f) == StructuralKey(g)`` when ``f`` and ``g`` would trace to the same
    program: same code, and closures with equal numbers/strings/arrays and structurally equal
    functions. ``key.value`` is the wrapped object (the first one seen is the one traced).
    """

    __slots__ = ("value", "_key", "_hash")

    def __init__(self, value: Any):
        self.value = value
        self._key = _key(value, frozenset(), 0)
        self._hash = hash(self._key)

    def __eq__(self, other):
        return isinstance(other, StructuralKey) and self._key == other._key

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"StructuralKey({self.value!r})"
