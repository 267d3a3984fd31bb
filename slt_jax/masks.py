r"""Boolean mask pytrees from readable selectors, for weight-refined LLCs (docs/mathematics.md §2).

A *mask* has the tree structure of the parameters and one boolean leaf per parameter leaf:
either a scalar (the whole leaf is sampled or frozen) or an array of the leaf's shape (element
by element). ``True`` means *sampled*; ``False`` coordinates stay exactly at :math:`w^*`. Every
sampler takes one (``slt.samplers.sgld(..., mask=mask)``), and so does
``slt.estimate_llc(..., mask=mask)``, which gives the weight-refined LLC
:math:`\hat\lambda(w^*; V)` of the coordinates :math:`V` the mask selects (arXiv 2410.02984).
Masks are NumPy booleans built on the host: a new mask of the same shapes is data to the
compiled sampling program and compiles nothing.

Parameters are addressed by *paths*: the keys from the root to a leaf joined by ``/``, e.g.
``"blocks/0/attn/query/kernel"`` (dict keys, sequence indices and attribute names; a trailing
``.value`` of a Flax NNX ``Variable`` or of :class:`slt_jax.adapters.Frozen` is dropped, so
the paths of ``nnx.State`` and of :func:`slt_jax.adapters.from_nnx`'s params read like NNX
paths). :func:`paths` lists them. A *selector* is one of

* a string: a glob over paths, segment by segment: ``*`` matches within one segment (``?`` one
  character, ``[abc]`` a class), ``**`` matches any number of segments. A pattern that matches
  the first segments of a path selects the whole subtree, so ``"blocks/0/attn"`` selects every
  leaf under it and ``"blocks/*/attn/query"`` the query weights of every block. The exact
  ``jax.tree_util.keystr`` of a leaf (``"['blocks'][0]['attn']"``) is accepted too;
* a compiled regular expression (``re.compile(r"blocks/[01]/.*kernel")``): selects the leaves
  whose path or ``keystr`` it ``search``-es;
* a callable ``selector(path, leaf) -> bool`` (``path`` is the ``/`` string), in the style of
  ``eqx.filter``;
* a list or tuple of selectors: their union.

A selector that matches nothing, an index outside a leaf, or a head out of range raises a
``ValueError`` that lists the available paths with their shapes.

Example:
  >>> import numpy as np, slt_jax as slt
  >>> params = {"blocks": [{"attn": {"query": np.zeros((2, 4, 3)), "out": np.zeros((6, 4))},
  ...                       "mlp": {"kernel": np.zeros((4, 4))}}]}
  >>> slt.masks.paths(params)
  ['blocks/0/attn/out', 'blocks/0/attn/query', 'blocks/0/mlp/kernel']
  >>> attention = slt.masks.select(params, "blocks/0/attn")
  >>> head_1 = slt.masks.union(
  ...     slt.masks.head(params, "blocks/0/attn/query", head=1, axis=0),      # (heads, d, d_head)
  ...     slt.masks.head(params, "blocks/0/attn/out", head=1, num_heads=2, axis=0))  # (heads*d_head, d)
  >>> slt.masks.count(head_1, params), slt.masks.count(attention, params)
  (24, 48)
"""

from __future__ import annotations

import fnmatch
import functools
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np

from slt_jax._frozen import Frozen

PyTree = Any
Selector = Any  # str | re.Pattern | Callable[[str, Any], bool] | Sequence[Selector]

__all__ = [
    "complement",
    "count",
    "full",
    "head",
    "intersection",
    "path_string",
    "paths",
    "select",
    "select_elements",
    "trainable",
    "union",
]

_MAX_LISTED = 60


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def _entry_name(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def path_string(path: tuple) -> str:
    """A ``jax.tree_util`` key path as ``"a/0/b"`` (a final ``.value`` attribute dropped)."""
    entries = list(path)
    if entries and isinstance(entries[-1], jax.tree_util.GetAttrKey) and entries[-1].name == "value":
        entries = entries[:-1]
    return "/".join(_entry_name(entry) for entry in entries)


def _leaves(params: PyTree) -> list[tuple[str, str, Any]]:
    """``[(path, keystr, leaf), ...]`` in flattening order."""
    return [
        (path_string(path), jax.tree_util.keystr(path), leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    ]


def paths(params: PyTree) -> list[str]:
    """The ``/`` paths of every leaf of ``params``, in flattening order."""
    return [path for path, _, _ in _leaves(params)]


def _listing(params: PyTree) -> str:
    rows = [f"  {path or '<root>'} {tuple(np.shape(leaf))}" for path, _, leaf in _leaves(params)]
    if len(rows) > _MAX_LISTED:
        rows = rows[:_MAX_LISTED] + [f"  ... and {len(rows) - _MAX_LISTED} more"]
    return "available paths (shapes):\n" + "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------


def _glob_matches(pattern: list[str], segments: list[str]) -> bool:
    """Whether ``pattern`` matches ``segments`` or a prefix of them (a subtree)."""
    if not pattern:
        return True
    first, rest = pattern[0], pattern[1:]
    if first == "**":
        return any(_glob_matches(rest, segments[start:]) for start in range(len(segments) + 1))
    if not segments:
        return False
    return fnmatch.fnmatchcase(segments[0], first) and _glob_matches(rest, segments[1:])


def _matcher(selector: Selector) -> Callable[[str, str, Any], bool]:
    if isinstance(selector, str):
        pattern = [segment for segment in selector.strip("/").split("/") if segment != ""]

        def matches(path, keystr, leaf):
            return keystr == selector or _glob_matches(pattern, path.split("/") if path else [])

        return matches
    if isinstance(selector, re.Pattern):
        return lambda path, keystr, leaf: bool(selector.search(path) or selector.search(keystr))
    if isinstance(selector, (list, tuple)):
        matchers = [_matcher(item) for item in selector]
        return lambda path, keystr, leaf: any(match(path, keystr, leaf) for match in matchers)
    if callable(selector):
        return lambda path, keystr, leaf: bool(selector(path, leaf))
    raise TypeError(
        "a selector must be a glob string ('blocks/0/attn/*'), a compiled regular expression, a "
        f"callable (path, leaf) -> bool or a list of these; got {selector!r}"
    )


def _matched(params: PyTree, selector: Selector) -> list[bool]:
    """One bool per leaf; ``ValueError`` (listing the paths) when nothing matches."""
    match = _matcher(selector)
    found = [match(path, keystr, leaf) for path, keystr, leaf in _leaves(params)]
    if not any(found):
        raise ValueError(f"selector {selector!r} matches no parameter; {_listing(params)}")
    return found


def _as_bool(leaf) -> np.ndarray:
    return np.asarray(leaf, bool)


def _as_mask_leaf(value):
    """Python ``bool`` for a whole leaf, a NumPy bool array for element-level leaves."""
    return bool(value) if np.ndim(value) == 0 else np.asarray(value, bool)


def _from_leaves(params: PyTree, values: list) -> PyTree:
    return jax.tree.unflatten(jax.tree.structure(params), values)


# --------------------------------------------------------------------------------------------
# Building masks
# --------------------------------------------------------------------------------------------


def full(params: PyTree, value: bool = True) -> PyTree:
    """A leaf-level mask of ``params`` with every leaf ``value`` (``True``: sample everything)."""
    return jax.tree.map(lambda _: bool(value), params)


def select(params: PyTree, *selectors: Selector) -> PyTree:
    """A leaf-level mask: ``True`` on every leaf matched by any of ``selectors``.

    Each selector must match at least one leaf (else ``ValueError`` listing the paths).

    Example:
      >>> import numpy as np, slt_jax as slt
      >>> params = {"encoder": {"w": np.ones(3)}, "head": {"w": np.ones(2), "b": np.ones(1)}}
      >>> slt.masks.select(params, "head")
      {'encoder': {'w': False}, 'head': {'b': True, 'w': True}}
    """
    if not selectors:
        raise TypeError("select needs at least one selector, e.g. select(params, 'blocks/0/*')")
    chosen = np.zeros(len(jax.tree.leaves(params)), bool)
    for selector in selectors:
        chosen |= np.asarray(_matched(params, selector), bool)
    return _from_leaves(params, [bool(value) for value in chosen])


def select_elements(params: PyTree, selector: Selector, index) -> PyTree:
    """An element-level mask: ``True`` at ``leaf[index]`` of every leaf matched by ``selector``.

    ``index`` is a NumPy index (an int, a slice, a boolean array, or a tuple of these), applied
    to each matched leaf; e.g. ``select_elements(params, "w", np.s_[:2])`` samples the first two
    coordinates of ``w``. The other leaves are ``False``.
    """
    found = _matched(params, selector)
    values = []
    for (path, _, leaf), hit in zip(_leaves(params), found):
        if not hit:
            values.append(False)
            continue
        element_mask = np.zeros(np.shape(leaf), bool)
        try:
            element_mask[index] = True
        except (IndexError, TypeError, ValueError) as error:
            raise ValueError(
                f"index {index!r} does not apply to the leaf at {path} of shape "
                f"{np.shape(leaf)} ({error}); {_listing(params)}"
            ) from None
        values.append(element_mask)
    return _from_leaves(params, values)


def head(
    params: PyTree,
    selector: Selector,
    head: int,
    *,
    num_heads: int | None = None,
    axis: int | None = None,
    head_size: int | None = None,
) -> PyTree:
    r"""An element-level mask selecting one attention head's slice of the matched leaves.

    The axis ``axis`` (of length :math:`L`) of each matched leaf is read, in row-major order, as
    ``(L / (num_heads · head_size), num_heads, head_size)``; the mask selects the positions
    whose middle index is ``head``. This covers the usual layouts:

    * a per-head kernel ``(num_heads, d_model, d_head)`` or ``(num_heads, d_head, d_model)``
      (:mod:`slt_jax.models.zoo`): ``axis=0``, the default (``num_heads`` defaults to the axis
      length, ``head_size`` to 1);
    * a separate query/key/value kernel ``(d_model, num_heads * d_head)`` or an output projection
      ``(num_heads * d_head, d_model)``: ``num_heads=H`` and ``axis=-1`` resp. ``axis=0``
      (``head_size`` defaults to ``L / num_heads``);
    * a fused QKV kernel ``(d_model, 3 * num_heads * d_head)`` laid out as ``(3, heads, d_head)``:
      ``num_heads=H, head_size=d_head, axis=-1``; laid out as ``(heads, 3, d_head)``:
      ``num_heads=H, head_size=3 * d_head``.

    ``axis=None`` (the default) finds the head axis: without ``num_heads`` it is the leading
    axis (the per-head layout), and every matched leaf must then have the same leading length
    (else ``ValueError``: a ``(d_model, num_heads * d_head)`` kernel has no head axis of its
    own, pass ``num_heads`` and ``axis``); with ``num_heads`` it is the only axis of length
    ``num_heads``, or else the only axis whose length is a multiple of
    ``num_heads · head_size`` (``ValueError`` when that is ambiguous: pass ``axis``).

    Raises ``ValueError`` when ``head`` is not in ``[0, num_heads)``, the axis length is not a
    multiple of ``num_heads · head_size``, or ``selector`` matches nothing.
    """
    found = _matched(params, selector)
    matched = [(path, np.shape(leaf)) for (path, _, leaf), hit in zip(_leaves(params), found) if hit]
    if axis is None and num_heads is None:
        leading = {shape[0] if shape else None for _, shape in matched}
        if len(leading) > 1:
            listed = ", ".join(f"{path} {shape}" for path, shape in matched[:8])
            raise ValueError(
                f"head(): the leaves matched by {selector!r} have different leading lengths "
                f"({listed}), so the leading axis is not one head axis shared by all of them; "
                "pass num_heads= and axis= (e.g. axis=-1 for a (d_model, num_heads * d_head) "
                "kernel, axis=0 for a (num_heads * d_head, d_model) one)"
            )
    values = []
    for (path, _, leaf), hit in zip(_leaves(params), found):
        if not hit:
            values.append(False)
            continue
        leaf_axis = axis if axis is not None else _head_axis(
            path, np.shape(leaf), num_heads, head_size)
        values.append(
            _head_mask(path, np.shape(leaf), head, num_heads, leaf_axis, head_size, params))
    return _from_leaves(params, values)


def _head_axis(path, shape, num_heads, head_size) -> int:
    """The head axis of a leaf when ``axis`` is not given (see :func:`head`)."""
    if num_heads is None or not shape:
        return 0
    heads = int(num_heads)
    exact = [index for index, length in enumerate(shape) if length == heads]
    if len(exact) == 1:
        return exact[0]
    block = heads * (1 if head_size is None else int(head_size))
    multiples = [index for index, length in enumerate(shape) if block > 0 and length % block == 0]
    candidates = exact or multiples
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"cannot tell the head axis of the leaf at {path} of shape {shape} with "
        f"num_heads={num_heads}" + (f", head_size={head_size}" if head_size else "")
        + f": {'axes ' + str(candidates) + ' all fit' if candidates else 'no axis fits'}; "
        "pass axis= (e.g. axis=-1 for a (d_model, num_heads * d_head) kernel)"
    )


def _head_mask(path, shape, head_index, num_heads, axis, head_size, params):
    if not shape:
        raise ValueError(f"the leaf at {path} is a scalar and has no head axis; {_listing(params)}")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for the leaf at {path} of shape {shape}")
    length = shape[axis]
    heads = length if num_heads is None else int(num_heads)
    if heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    if head_size is None:
        if length % heads:
            raise ValueError(
                f"axis {axis} of the leaf at {path} has length {length}, not a multiple of "
                f"num_heads={heads}"
            )
        head_size = length // heads
    block = heads * int(head_size)
    if head_size <= 0 or length % block:
        raise ValueError(
            f"axis {axis} of the leaf at {path} has length {length}, not a multiple of "
            f"num_heads * head_size = {heads} * {head_size}"
        )
    if not (isinstance(head_index, (int, np.integer)) and 0 <= head_index < heads):
        raise ValueError(
            f"head {head_index!r} is out of range for the leaf at {path} (shape {shape}, axis "
            f"{axis}): expected an int in [0, {heads - 1}]"
        )
    along_axis = (np.arange(length) // int(head_size)) % heads == head_index
    view = [1] * len(shape)
    view[axis] = length
    return np.broadcast_to(along_axis.reshape(view), shape).copy()


# --------------------------------------------------------------------------------------------
# Combining masks
# --------------------------------------------------------------------------------------------


def _combine(operation, masks: Sequence[PyTree], name: str) -> PyTree:
    if not masks:
        raise TypeError(f"{name} needs at least one mask")
    structure = jax.tree.structure(masks[0])
    for mask in masks[1:]:
        if jax.tree.structure(mask) != structure:
            raise ValueError(
                f"{name}: masks must have the same tree structure; got {structure} and "
                f"{jax.tree.structure(mask)}"
            )
    return jax.tree.map(
        lambda *leaves: _as_mask_leaf(functools.reduce(operation, map(_as_bool, leaves))), *masks
    )


def union(*masks: PyTree) -> PyTree:
    """Coordinates sampled in any of ``masks`` (leaf-level and element-level leaves mix)."""
    return _combine(np.logical_or, masks, "union")


def intersection(*masks: PyTree) -> PyTree:
    """Coordinates sampled in every one of ``masks``."""
    return _combine(np.logical_and, masks, "intersection")


def complement(mask: PyTree) -> PyTree:
    """Coordinates not sampled in ``mask`` (e.g. everything but one head)."""
    return jax.tree.map(lambda x: _as_mask_leaf(np.logical_not(_as_bool(x))), mask)


def count(mask: PyTree, params: PyTree) -> int:
    """The number of coordinates ``mask`` samples in ``params`` (the dimension of :math:`V`)."""
    return int(sum(
        np.sum(np.broadcast_to(np.asarray(m, bool), np.shape(p)))
        for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(params))
    ))


def trainable(params: PyTree, mask: PyTree | None = None) -> PyTree | None:
    """``mask`` with every :class:`slt_jax.adapters.Frozen` leaf of ``params`` set to ``False``.

    The adapters (:mod:`slt_jax.adapters`) carry state that must not be sampled (BatchNorm
    statistics, ...) as ``Frozen`` leaves of the params; this is the mask a sampler needs for
    them (``slt.estimate_llc`` applies it by itself). Returns ``mask`` unchanged (``None``:
    sample everything) when ``params`` has no ``Frozen`` leaf.
    """
    is_frozen = lambda x: isinstance(x, Frozen)  # noqa: E731
    flags = [is_frozen(node) for node in jax.tree.leaves(params, is_leaf=is_frozen)]
    if not any(flags):
        return mask
    # one flag per array leaf (a Frozen node holds one leaf)
    frozen_leaves = [
        flag for node, flag in zip(jax.tree.leaves(params, is_leaf=is_frozen), flags)
        for _ in jax.tree.leaves(node)
    ]
    base = full(params, True) if mask is None else mask
    if jax.tree.structure(base) != jax.tree.structure(params):
        return base  # the sampler's own validation reports the mismatch
    leaves = [
        False if frozen else leaf
        for leaf, frozen in zip(jax.tree.leaves(base), frozen_leaves)
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)
