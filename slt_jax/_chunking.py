"""One helper for evaluating a function over a data pytree in fixed-size chunks.

Every full-data pass in slt_jax (the loss :math:`L_n(w^*)`, Hessian-vector products, gradient
variances, per-example losses on query sets at each draw) runs ``fn`` on chunks of
``chunk_size`` examples with ``lax.map``, so memory is bounded by one chunk whatever ``n`` is.
The last chunk is padded by repeating the last example; ``fn`` receives a ``valid`` mask.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any


def leading_size(data: PyTree) -> int:
    """The leading-axis length of the (first leaf of) ``data``."""
    return jax.tree.leaves(data)[0].shape[0]


def map_chunks(
    fn: Callable[[PyTree, jax.Array], PyTree], data: PyTree, chunk_size: int
) -> PyTree:
    """``fn(chunk, valid)`` on consecutive chunks of ``data``, outputs stacked on a new axis.

    ``chunk`` has leading size ``chunk_size`` (``min(chunk_size, n)``), ``valid`` is a
    ``(chunk_size,)`` boolean mask that is False on the padding of the last chunk. Returns the
    outputs with a leading ``num_chunks`` axis. Works under ``jit`` and ``vmap``.
    """
    n = leading_size(data)
    chunk_size = min(chunk_size, n)
    num_chunks = math.ceil(n / chunk_size)
    if num_chunks == 1:
        return jax.tree.map(lambda x: x[None], fn(data, jnp.ones((n,), bool)))
    indices = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)

    def one_chunk(chunk_indices):
        batch = jax.tree.map(
            lambda x: jnp.take(x, jnp.minimum(chunk_indices, n - 1), axis=0), data
        )
        return fn(batch, chunk_indices < n)

    return jax.lax.map(one_chunk, indices)


def losses_in_chunks(loss_fn: Callable, params: PyTree, data: PyTree, chunk_size: int):
    """Per-example (per-token) losses ``loss_fn(params, data)`` of every example, ``(n[, T])``,
    computed ``chunk_size`` examples at a time."""
    n = leading_size(data)
    stacked = map_chunks(lambda batch, valid: loss_fn(params, batch), data, chunk_size)
    flat = stacked.reshape((-1,) + stacked.shape[2:])
    return flat[:n]


def mean_loss_in_chunks(loss_fn: Callable, params: PyTree, data: PyTree, chunk_size: int):
    """:math:`L_n(w)`: the mean over all examples and tokens, ``chunk_size`` examples at a time."""

    def sums(batch, valid):
        losses = loss_fn(params, batch)
        weights = valid.reshape((-1,) + (1,) * (losses.ndim - 1)).astype(losses.dtype)
        weights = jnp.broadcast_to(weights, losses.shape)
        return jnp.sum(losses * weights), jnp.sum(weights)

    totals, counts = map_chunks(sums, data, chunk_size)
    return jnp.sum(totals) / jnp.sum(counts)


def mean_loss_and_finite_in_chunks(loss_fn: Callable, params: PyTree, data: PyTree,
                                   chunk_size: int):
    """:math:`L_n(w)` as :func:`mean_loss_in_chunks` and, from the same pass, an ``(n,)``
    boolean mask of the examples whose losses are all finite."""

    def sums(batch, valid):
        losses = loss_fn(params, batch)
        finite = jnp.all(jnp.isfinite(losses.reshape(losses.shape[0], -1)), axis=1)
        weights = valid.reshape((-1,) + (1,) * (losses.ndim - 1)).astype(losses.dtype)
        weights = jnp.broadcast_to(weights, losses.shape)
        return jnp.sum(losses * weights), jnp.sum(weights), finite | ~valid

    totals, counts, finite = map_chunks(sums, data, chunk_size)
    return jnp.sum(totals) / jnp.sum(counts), finite.reshape(-1)[: leading_size(data)]


def flat_mean_gradient(loss_fn, unravel, data, chunk_size):
    """``w -> ∇L(w)`` of the mean per-example loss over ``data``, in chunks."""
    n = leading_size(data)

    def gradient(flat_params):
        def chunk_gradient(batch, valid):
            def weighted_sum(p):
                losses = loss_fn(unravel(p), batch)
                per_example = losses.reshape(losses.shape[0], -1).mean(axis=1)
                return jnp.sum(jnp.where(valid, per_example, 0.0))

            return jax.grad(weighted_sum)(flat_params)

        return jnp.sum(map_chunks(chunk_gradient, data, chunk_size), axis=0) / n

    return gradient
