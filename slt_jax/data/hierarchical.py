r"""Hierarchically structured data for deep linear networks (Saxe, McClelland & Ganguli 2019).

``P = 2^depth`` items are the leaves of a binary tree; the features are the tree's
``F = 2P - 1`` nodes, and item ``i`` has feature ``k`` exactly when node ``k`` lies on the path
from the root to leaf ``i``. Inputs are whitened one-hot codes :math:`x_i = \sqrt P\, e_i`
(so :math:`\Sigma_{xx} = \frac1P\sum_i x_i x_i^\top = I`), targets are the feature rows
:math:`y_i = Y_{i\cdot}`, and the input-output correlation is

.. math::

    \Sigma_{yx} = \frac1P \sum_i y_i x_i^\top = \frac{Y^\top}{\sqrt P}
                = \sum_\alpha s_\alpha u_\alpha v_\alpha^\top .

Its right singular vectors are Haar wavelets on the tree (the all-ones root mode, then one
"left minus right" vector per internal node), so the modes are known exactly. For four items
(``depth=2``): seven features and :math:`s = (\sqrt7/2, \sqrt3/2, \tfrac12, \tfrac12)`. A
2-layer linear network trained by gradient descent from small aligned weights learns mode
:math:`\alpha` on the sigmoid :func:`slt_jax.truth.saxe_mode_strength` (broad distinctions
first, docs/mathematics.md §6).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["HierarchicalData", "make_hierarchical_data"]


class HierarchicalData(NamedTuple):
    """Items on a binary tree and the exact modes of their input-output correlation.

    Attributes:
      data: ``{"x": (n, P), "y": (n, F)}`` (``float32`` JAX arrays), ``n = P * num_repeats``.
      items: ``(n,)`` the item (leaf) index of each row.
      features: ``(P, F)`` 0/1 feature matrix :math:`Y` (row = item, column = tree node,
        nodes in breadth-first order: root first).
      singular_values: ``(P,)`` :math:`s_\\alpha`, non-increasing (root mode first).
      input_modes: ``(P, P)`` columns :math:`v_\\alpha` (Haar vectors over the items).
      output_modes: ``(F, P)`` columns :math:`u_\\alpha = \\Sigma_{yx} v_\\alpha / s_\\alpha`.
      levels: ``(P,)`` tree level of each mode (0 = root, the first to be learned).
    """

    data: dict
    items: np.ndarray
    features: np.ndarray
    singular_values: np.ndarray
    input_modes: np.ndarray
    output_modes: np.ndarray
    levels: np.ndarray


def _tree_features(depth: int) -> np.ndarray:
    """``(P, F)``: item ``i`` has node ``k`` (heap order) when ``k`` is one of its ancestors."""
    num_items = 2**depth
    features = np.zeros((num_items, 2 * num_items - 1))
    for item in range(num_items):
        node = num_items - 1 + item  # heap index of the leaf
        while True:
            features[item, node] = 1.0
            if node == 0:
                break
            node = (node - 1) // 2
    return features


def _haar_modes(depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Root vector, then one normalized left-minus-right vector per internal node, by level."""
    num_items = 2**depth
    columns = [np.full(num_items, 1.0 / np.sqrt(num_items))]
    levels = [0]
    for level in range(depth):
        width = num_items >> level  # leaves under a node at this level
        for start in range(0, num_items, width):
            vector = np.zeros(num_items)
            vector[start:start + width // 2] = 1.0
            vector[start + width // 2:start + width] = -1.0
            columns.append(vector / np.sqrt(width))
            levels.append(level + 1)
    return np.stack(columns, axis=1), np.asarray(levels)


def make_hierarchical_data(depth: int = 2, num_repeats: int = 1, noise: float = 0.0,
                           key: jax.Array | None = None) -> HierarchicalData:
    r"""Items on a binary tree of ``depth`` levels; features = the tree's nodes.

    Returns :class:`HierarchicalData`: ``data = {"x": (n, P), "y": (n, F)}`` with whitened
    one-hot inputs :math:`x = \sqrt P\, e_i` and targets :math:`y = Y_{i\cdot} + \sigma\xi`
    (:math:`\xi\sim N(0, I)`, only when ``noise`` :math:`=\sigma > 0`), each item repeated
    ``num_repeats`` times, and the exact SVD :math:`\Sigma_{yx} = Y^\top/\sqrt P =
    \sum_\alpha s_\alpha u_\alpha v_\alpha^\top` of the noise-free data (Saxe, McClelland &
    Ganguli 2019, PNAS 116:11537; docs/mathematics.md §6). ``depth=2``: 4 items, 7 features,
    :math:`s = (\sqrt7/2, \sqrt3/2, \tfrac12, \tfrac12)`.

    >>> import numpy as np
    >>> h = make_hierarchical_data()
    >>> h.data["x"].shape, h.data["y"].shape
    ((4, 4), (4, 7))
    >>> bool(np.allclose(h.singular_values, [np.sqrt(7) / 2, np.sqrt(3) / 2, 0.5, 0.5]))
    True
    """
    if isinstance(depth, bool) or int(depth) != depth or not 1 <= int(depth) <= 12:
        raise ValueError(f"depth must be an integer in [1, 12], got {depth!r}")
    if isinstance(num_repeats, bool) or int(num_repeats) != num_repeats or num_repeats < 1:
        raise ValueError(f"num_repeats must be a positive integer, got {num_repeats!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a non-negative number, got {noise!r}")
    if noise > 0 and key is None:
        raise ValueError("noise > 0 needs a PRNG key: make_hierarchical_data(..., key=key)")
    depth = int(depth)
    features = _tree_features(depth)
    num_items = features.shape[0]
    correlation = features.T / np.sqrt(num_items)  # Σ_yx, (F, P)
    input_modes, levels = _haar_modes(depth)
    projected = correlation @ input_modes
    singular_values = np.linalg.norm(projected, axis=0)
    order = np.argsort(-singular_values, kind="stable")
    input_modes, levels = input_modes[:, order], levels[order]
    singular_values = singular_values[order]
    output_modes = projected[:, order] / singular_values[None, :]
    items = np.tile(np.arange(num_items), int(num_repeats))
    x = np.sqrt(num_items) * np.eye(num_items)[items]
    y = features[items]
    if noise > 0:
        y = y + noise * np.asarray(jax.random.normal(key, y.shape))
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    return HierarchicalData(data, items, features, singular_values, input_modes, output_modes,
                            levels)
