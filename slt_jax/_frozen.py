"""``Frozen``: a parameter leaf carried as data but never sampled.

A small shared type on the ground floor (DESIGN principle 7): :mod:`slt_jax.adapters` makes
``Frozen`` leaves and :mod:`slt_jax.masks` reads them, so it imports nothing of the project.
"""

import jax

__all__ = ["Frozen"]


class Frozen:
    """A parameter leaf that is carried as data but never sampled (e.g. BatchNorm statistics).

    A pytree node with one child, ``value`` (its key path ends in ``.value``, which
    :mod:`slt_jax.masks` drops from paths). :func:`slt_jax.masks.trainable` gives the mask that
    freezes every ``Frozen`` leaf; :func:`slt_jax.estimate_llc` applies it by itself.
    """

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"Frozen({self.value!r})"


jax.tree_util.register_pytree_with_keys(
    Frozen,
    lambda node: (((jax.tree_util.GetAttrKey("value"), node.value),), None),
    lambda _, children: Frozen(children[0]),
    lambda node: ((node.value,), None),
)
