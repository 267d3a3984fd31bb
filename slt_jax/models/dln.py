"""Deep linear networks (DLNs) as plain pytrees of weight matrices.

A DLN with widths ``(H_0, H_1, ..., H_L)`` has ``L`` weight matrices ``W_i`` of shape
``(H_i, H_{i+1})`` and no biases. It maps a row vector ``x`` of shape ``(H_0,)`` to

.. math::

    f(x; W) = x \\, W_0 W_1 \\cdots W_{L-1} \\in \\mathbb{R}^{H_L}.

The learning coefficient of a DLN at a teacher of product rank ``r`` is known in closed form
(Aoyagi 2024; docs/mathematics.md §7), which makes the DLN the standard LLC benchmark
(Furman & Lau, arXiv 2402.03698).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "count_parameters",
    "dln_apply",
    "dln_init",
    "dln_loss",
    "dln_product",
]


def _validate_widths(widths: Sequence[int], name: str = "widths") -> tuple[int, ...]:
    """Return ``widths`` as a tuple of Python ints, or raise a ``ValueError`` saying why not."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence | np.ndarray):
        raise ValueError(f"{name} must be a sequence of positive integers, got {widths!r}.")
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(
            f"{name} must have at least 2 entries (input and output width), got {widths!r}."
        )
    result = []
    for index, width in enumerate(widths):
        if isinstance(width, bool) or not isinstance(width, numbers.Integral):
            raise ValueError(
                f"{name}[{index}] must be an integer, got {width!r} of type {type(width).__name__}."
            )
        if int(width) < 1:
            raise ValueError(f"{name}[{index}] must be positive, got {int(width)}.")
        result.append(int(width))
    return tuple(result)


def _validate_dln_params(params: Any) -> list[Any]:
    """Check that ``params`` is a non-empty sequence of chained 2-D matrices (shapes only)."""
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise ValueError(
            "params must be a non-empty list or tuple of weight matrices of shape "
            f"(H_i, H_(i+1)), got {type(params).__name__}."
        )
    for index, weight in enumerate(params):
        shape = getattr(weight, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(
                f"params[{index}] must be a 2-D weight matrix of shape (H_{index}, H_{index + 1}), "
                f"got shape {shape}."
            )
        if index > 0 and params[index - 1].shape[1] != shape[0]:
            raise ValueError(
                f"params[{index - 1}] has shape {tuple(params[index - 1].shape)} but params[{index}] "
                f"has shape {tuple(shape)}: the output width of one layer must equal the input "
                "width of the next."
            )
    return list(params)


def dln_init(
    key: jax.Array,
    widths: Sequence[int],
    scale: float | None = None,
    dtype: Any = None,
) -> list[jax.Array]:
    """Initialize a deep linear network.

    Each weight ``W_i`` has shape ``(widths[i], widths[i+1])`` and i.i.d. entries
    ``N(0, s_i²)``. By default ``s_i`` is the Xavier/Glorot-normal standard deviation
    ``sqrt(2 / (fan_in + fan_out)) = sqrt(2 / (H_i + H_{i+1}))`` (Glorot & Bengio 2010), the
    teacher initialization of Furman & Lau (arXiv 2402.03698).

    Args:
      key: a JAX PRNG key.
      widths: ``(H_0, ..., H_L)``, at least two positive integers; ``L = len(widths) - 1`` is the
        number of weight matrices.
      scale: if given, a positive standard deviation used for every layer instead of Xavier's.
      dtype: float dtype of the weights (default: JAX's default float dtype).

    Returns:
      A list of ``L`` arrays, ``params[i].shape == (widths[i], widths[i+1])``.
    """
    widths = _validate_widths(widths)
    if scale is not None and not (isinstance(scale, numbers.Real) and scale > 0):
        raise ValueError(f"scale must be a positive number or None, got {scale!r}.")
    if dtype is None:
        dtype = jnp.result_type(float)
    standard_deviations = [
        math.sqrt(2.0 / (fan_in + fan_out)) if scale is None else float(scale)
        for fan_in, fan_out in zip(widths[:-1], widths[1:])
    ]
    shapes = tuple(zip(widths[:-1], widths[1:]))
    return list(_scaled_normal_matrices(key, jnp.asarray(standard_deviations, dtype), shapes, dtype))


@functools.partial(jax.jit, static_argnames=("shapes", "dtype"))
def _scaled_normal_matrices(
    key: jax.Array, standard_deviations: jax.Array, shapes: tuple[tuple[int, int], ...], dtype: Any
) -> tuple[jax.Array, ...]:
    """Matrices of the given shapes with i.i.d. ``N(0, standard_deviations[i]²)`` entries.

    One normal draw of the total size, cut into matrices, in one compiled program per
    architecture (compiling a separate normal draw per layer costs far more on CPU).
    """
    sizes = [rows * columns for rows, columns in shapes]
    noise = jax.random.normal(key, (sum(sizes),), dtype=dtype)
    matrices = []
    offset = 0
    for index, ((rows, columns), size) in enumerate(zip(shapes, sizes)):
        matrices.append(standard_deviations[index] * noise[offset : offset + size].reshape(rows, columns))
        offset += size
    return tuple(matrices)


def dln_apply(params: Sequence[jax.Array], x: jax.typing.ArrayLike) -> jax.Array:
    """Evaluate a deep linear network, ``f(x) = x W_0 W_1 ... W_{L-1}``.

    The matrices are applied one after another (never forming the product), which is cheaper
    when a hidden layer is narrower than the input and output.

    Args:
      params: list of weight matrices, ``params[i].shape == (H_i, H_{i+1})``.
      x: inputs of shape ``(..., H_0)``.

    Returns:
      Outputs of shape ``(..., H_L)``.
    """
    params = _validate_dln_params(params)
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != params[0].shape[0]:
        raise ValueError(
            f"x must have shape (..., {params[0].shape[0]}) to match params[0] of shape "
            f"{tuple(params[0].shape)}, got {x.shape}."
        )
    return _dln_apply(params, x)


@jax.jit
def _dln_apply(params: list[jax.Array], x: jax.Array) -> jax.Array:
    # Jitted so eager calls compile one program instead of one per matmul.
    for weight in params:
        x = x @ weight
    return x


def dln_product(params: Sequence[jax.Array]) -> jax.Array:
    """The end-to-end matrix ``W = W_0 W_1 ... W_{L-1}`` of shape ``(H_0, H_L)``.

    ``dln_apply(params, x) == x @ dln_product(params)`` up to floating-point rounding.
    """
    params = _validate_dln_params(params)
    return _dln_product(params)


@jax.jit
def _dln_product(params: list[jax.Array]) -> jax.Array:
    product = params[0]
    for weight in params[1:]:
        product = product @ weight
    return product


def dln_loss(params: Sequence[jax.Array], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Per-example squared loss of a deep linear network.

    .. math::

        \\ell_i(W) = \\tfrac12 \\lVert f(x_i; W) - y_i \\rVert^2,

    the Gaussian negative log-likelihood with unit variance up to a constant (docs/mathematics.md §0).

    Args:
      params: list of weight matrices, ``params[i].shape == (H_i, H_{i+1})``.
      batch: ``(x, y)`` with ``x.shape == (b, H_0)`` and ``y.shape == (b, H_L)``.

    Returns:
      Per-example losses of shape ``(b,)``.
    """
    x, y = batch
    params = _validate_dln_params(params)
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 1 or x.shape[-1] != params[0].shape[0]:
        raise ValueError(
            f"x must have shape (..., {params[0].shape[0]}) to match params[0] of shape "
            f"{tuple(params[0].shape)}, got {x.shape}."
        )
    expected = (*x.shape[:-1], params[-1].shape[1])
    if y.shape != expected:
        raise ValueError(f"y must have shape {expected} to match the network output, got {y.shape}.")
    return _dln_loss(params, x, y)


@jax.jit
def _dln_loss(params: list[jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum((_dln_apply(params, x) - y) ** 2, axis=-1)


def count_parameters(params: Any) -> int:
    """Total number of scalar parameters in a pytree (the sum of the leaves' sizes).

    Works for any pytree of arrays, e.g. DLN weight lists and MLP layer dicts. For a DLN this
    is ``sum_i H_i H_{i+1}``; for an MLP ``sum_i (H_i + 1) H_{i+1}``.
    """
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))
