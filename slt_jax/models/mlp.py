"""Multilayer perceptrons as plain pytrees: a list of ``{"w": (H_i, H_{i+1}), "b": (H_{i+1},)}``.

Used for benchmarks (for example ``widths=[128, 256, 256, 10]``: 101,386 parameters).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from slt_jax.models.dln import _scaled_normal_matrices, _validate_widths

__all__ = [
    "mlp_apply",
    "mlp_classification_loss",
    "mlp_init",
    "mlp_loss",
]

_INITIALIZATION_GAINS = {"he": 2.0, "lecun": 1.0}


def mlp_init(
    key: jax.Array,
    widths: Sequence[int],
    initialization: str = "he",
    dtype: Any = None,
) -> list[dict[str, jax.Array]]:
    """Initialize a fully connected network.

    Layer ``i`` has weights ``w`` of shape ``(widths[i], widths[i+1])`` with i.i.d. entries
    ``N(0, gain / fan_in)`` and zero biases ``b`` of shape ``(widths[i+1],)``. ``gain = 2``
    for ``"he"`` (He et al. 2015, suited to ReLU; the default) and ``gain = 1`` for
    ``"lecun"`` (LeCun et al. 1998, suited to tanh-like activations).

    Args:
      key: a JAX PRNG key.
      widths: ``(H_0, ..., H_L)``, at least two positive integers.
      initialization: ``"he"`` or ``"lecun"``.
      dtype: float dtype of the parameters (default: JAX's default float dtype).

    Returns:
      A list of ``L`` dicts ``{"w": ..., "b": ...}``; ``count_parameters`` of it is
      ``sum_i (H_i + 1) H_{i+1}``.
    """
    widths = _validate_widths(widths)
    if initialization not in _INITIALIZATION_GAINS:
        raise ValueError(
            f"initialization must be one of {sorted(_INITIALIZATION_GAINS)}, got {initialization!r}."
        )
    gain = _INITIALIZATION_GAINS[initialization]
    if dtype is None:
        dtype = jnp.result_type(float)
    standard_deviations = [math.sqrt(gain / fan_in) for fan_in in widths[:-1]]
    shapes = tuple(zip(widths[:-1], widths[1:]))
    weights = _scaled_normal_matrices(key, jnp.asarray(standard_deviations, dtype), shapes, dtype)
    return [
        {"w": weight, "b": jnp.zeros((fan_out,), dtype=dtype)}
        for weight, fan_out in zip(weights, widths[1:])
    ]


def mlp_apply(
    params: Sequence[dict[str, jax.Array]],
    x: jax.typing.ArrayLike,
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
) -> jax.Array:
    """Evaluate the MLP: ``h_{i+1} = activation(h_i w_i + b_i)``, no activation after the last layer.

    Args:
      params: list of ``{"w": (H_i, H_{i+1}), "b": (H_{i+1},)}`` dicts.
      x: inputs of shape ``(..., H_0)``.
      activation: elementwise nonlinearity applied between layers (default ReLU).

    Returns:
      Outputs (logits for classification) of shape ``(..., H_L)``.
    """
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise ValueError("params must be a non-empty list of {'w': ..., 'b': ...} layer dicts.")
    for index, layer in enumerate(params):
        if not isinstance(layer, dict) or set(layer) != {"w", "b"}:
            raise ValueError(f"params[{index}] must be a dict with keys 'w' and 'b', got {layer!r}.")
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != params[0]["w"].shape[0]:
        raise ValueError(
            f"x must have shape (..., {params[0]['w'].shape[0]}) to match params[0]['w'] of shape "
            f"{tuple(params[0]['w'].shape)}, got {x.shape}."
        )
    return _mlp_apply(list(params), x, activation)


@functools.partial(jax.jit, static_argnames=("activation",))
def _mlp_apply(
    params: list[dict[str, jax.Array]],
    x: jax.Array,
    activation: Callable[[jax.Array], jax.Array],
) -> jax.Array:
    # Jitted so eager calls compile one program instead of one per operation.
    last = len(params) - 1
    for index, layer in enumerate(params):
        x = x @ layer["w"]
        x = x + jnp.broadcast_to(layer["b"], x.shape)
        if index < last:
            x = activation(x)
    return x


def mlp_loss(
    params: Sequence[dict[str, jax.Array]],
    batch: tuple[jax.Array, jax.Array],
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
) -> jax.Array:
    """Per-example squared loss ``ℓ_i = ½ ‖f(x_i) − y_i‖²`` of shape ``(b,)``.

    Args:
      params: MLP parameters from :func:`mlp_init`.
      batch: ``(x, y)`` with ``x.shape == (b, H_0)`` and ``y.shape == (b, H_L)``.
      activation: nonlinearity passed to :func:`mlp_apply`.
    """
    x, y = batch
    prediction = mlp_apply(params, x, activation)
    y = jnp.asarray(y)
    if y.shape != prediction.shape:
        raise ValueError(
            f"y must have shape {prediction.shape} to match the network output, got {y.shape}."
        )
    return _half_squared_error(prediction, y)


@jax.jit
def _half_squared_error(prediction: jax.Array, y: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum((prediction - y) ** 2, axis=-1)


def mlp_classification_loss(
    params: Sequence[dict[str, jax.Array]],
    batch: tuple[jax.Array, jax.Array],
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
) -> jax.Array:
    """Per-example softmax cross-entropy ``ℓ_i = −log softmax(f(x_i))[y_i]`` of shape ``(b,)``.

    Args:
      params: MLP parameters from :func:`mlp_init`.
      batch: ``(x, labels)`` with ``x.shape == (b, H_0)`` and integer ``labels`` of shape
        ``(b,)`` in ``[0, H_L)``.
      activation: nonlinearity passed to :func:`mlp_apply`.
    """
    x, labels = batch
    logits = mlp_apply(params, x, activation)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {logits.shape[:-1]} to match the logits {logits.shape}, "
            f"got {labels.shape}."
        )
    return _softmax_cross_entropy(logits, labels)


@jax.jit
def _softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    log_probabilities = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probabilities, labels[..., None], axis=-1)[..., 0]
