"""Structural identity of callables, so that rebuilt closures reuse a compiled program.

``jax.jit`` keys static arguments by ``__hash__``/``__eq__``, and a function compares by
identity: ``optax.chain(optax.clip_by_global_norm(1.0), sgld(1e-4, ...))`` and the same chain
built again with ``sgld(2e-4, ...)`` are different objects, so a jit keyed on the transform
would recompile for every new step size. :class:`StructuralKey` compares callables by what a
trace of them depends on instead: the code object, default arguments, the globals the code
reads and, recursively, the closure's contents. slt_jax's samplers keep their numeric
hyperparameters and masks in their state (data), so their closures hold none.

What is keyed how (a key may only ever recompile more, never reuse a program wrongly):

* numbers, strings, ``None``: by type and exact value (floats by ``float.hex``, so ``-0.0``
  differs from ``0.0``); NumPy arrays and scalars by dtype, shape and bytes (they are baked
  into a trace as constants);
* tuples/lists/dicts (in insertion order), ``functools.partial``, functions (code, defaults,
  closure cells, and the globals named by the code: values as above, anything else by
  identity), bound methods: recursively;
* JAX arrays, modules, classes and builtins: by identity (JAX arrays are immutable);
* a :class:`~slt_jax.samplers.Sampler` inside a wrapper (``optax.multi_transform``, ...): by its
  ``update`` only — ``sample`` runs ``init`` eagerly, outside the program;
* any other object (a config namespace, a Flax ``GraphDef``, ...): the object could be mutated
  in place, so the *whole* callable being keyed falls back to identity (as ``jax.jit`` does).
"""

from __future__ import annotations

import functools
import hashlib
import types
from typing import Any

import jax
import numpy as np

_MAX_DEPTH = 64
_ATOMS = (type(None), bool, int, str, bytes, type(Ellipsis))


class _Opaque(Exception):
    """Raised when the key reaches an object it cannot compare by content."""


class _Identity:
    """Compares by ``is`` and keeps the object alive (so its ``id`` is never reused)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.value is self.value

    def __hash__(self):
        return id(self.value)


def _numpy_key(value):
    array = np.asarray(value)
    if array.dtype == object:
        raise _Opaque(value)
    digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()
    return ("numpy", array.shape, str(array.dtype), digest)


def _code_names(code: types.CodeType) -> set:
    """Names a code object (and the code objects nested in it) may read from its globals."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _code_names(constant)
    return names


def _global_key(value, seen, depth):
    """Globals: values by value, functions/modules/classes/JAX arrays by identity (a redefined
    global is a new object), anything else as in :func:`_key`."""
    if isinstance(value, (types.FunctionType, types.ModuleType, type, types.BuiltinFunctionType)):
        return ("identity", _Identity(value))
    return _key(value, seen, depth)


def _function_key(function, seen, depth):
    cells = []
    for cell in function.__closure__ or ():
        try:
            cells.append(_key(cell.cell_contents, seen, depth + 1))
        except ValueError:  # an empty cell (a variable assigned later)
            cells.append(("empty-cell",))
    namespace = function.__globals__
    global_values = tuple(
        (name, _global_key(namespace[name], seen, depth + 1))
        for name in sorted(_code_names(function.__code__))
        if name in namespace
    )
    return (
        "function", function.__code__, _key(function.__defaults__, seen, depth + 1),
        _key(function.__kwdefaults__, seen, depth + 1), tuple(cells), global_values,
    )


def _container_key(value, seen, depth):
    if isinstance(value, dict):
        return ("dict", tuple((_key(k, seen, depth + 1), _key(v, seen, depth + 1))
                              for k, v in value.items()))
    # tuples and lists, NamedTuples included: their type is part of the key
    return (type(value), tuple(_key(item, seen, depth + 1) for item in value))


def _key(value, seen, depth):
    from slt_jax.samplers._base import Sampler  # a late import: samplers import this module

    if isinstance(value, _ATOMS):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", float.hex(value))
    if isinstance(value, complex):
        return ("complex", float.hex(value.real), float.hex(value.imag))
    if isinstance(value, jax.Array) or isinstance(value, jax.core.Tracer):
        return ("identity", _Identity(value))
    if isinstance(value, (np.ndarray, np.generic)):
        return _numpy_key(value)
    if isinstance(value, (types.ModuleType, types.BuiltinFunctionType, type)):
        return ("identity", _Identity(value))
    if depth > _MAX_DEPTH or id(value) in seen:
        raise _Opaque(value)
    seen = seen | {id(value)}
    if isinstance(value, Sampler):
        return ("sampler", _key(value.update, seen, depth + 1))
    if isinstance(value, (tuple, list, dict)):
        return _container_key(value, seen, depth)
    if isinstance(value, functools.partial):
        return ("partial",) + tuple(
            _key(part, seen, depth + 1) for part in (value.func, value.args, value.keywords)
        )
    if isinstance(value, types.FunctionType):
        return _function_key(value, seen, depth)
    if isinstance(value, types.MethodType):
        return ("method", _key(value.__func__, seen, depth + 1), _key(value.__self__, seen, depth + 1))
    raise _Opaque(value)


class StructuralKey:
    """A hashable stand-in for ``value`` that is equal for structurally identical callables.

    ``StructuralKey(f) == StructuralKey(g)`` when ``f`` and ``g`` would trace to the same
    program (see the module docstring for the rules); when ``value`` holds an object that can
    only be compared by identity, the key is ``value``'s identity. ``key.value`` is the wrapped
    object (the first one seen is the one traced).
    """

    __slots__ = ("value", "_key", "_hash")

    def __init__(self, value: Any):
        self.value = value
        try:
            self._key = _key(value, frozenset(), 0)
        except _Opaque:
            self._key = ("identity", _Identity(value))
        self._hash = hash(self._key)

    def __eq__(self, other):
        return isinstance(other, StructuralKey) and self._key == other._key

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"StructuralKey({self.value!r})"
