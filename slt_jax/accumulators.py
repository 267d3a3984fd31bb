r"""Streaming reductions of per-draw values, run inside a compiled sampling loop.

The protocol
------------
An :class:`Accumulator` is four things:

* ``streams``: the names of the per-draw values ("streams") it reads, e.g. ``("probe",)``;
* ``init(shapes)``: given ``{name: jax.ShapeDtypeStruct((num_chains, *event), dtype)}`` (at
  least its streams), the initial state: a pytree of concrete zero arrays, built eagerly;
* ``update(state, block, weights)``: folds one block of draws into the state. ``block`` maps
  each stream to an array ``(num_chains, block_len, *event)``, ``weights`` is
  ``(num_chains, block_len)`` (``1.`` for a recorded draw, ``0.`` for padding or an excluded
  draw). A draw of weight 0 is ignored entirely, even when its values are nan or inf (they are
  removed with :func:`jax.numpy.where`, never multiplied by zero). Pure ``jnp``/``lax``: it runs
  under ``jit``, ``vmap`` and ``lax.scan``, for any ``block_len``;
* ``finalize(state)``: the result (eagerly or under ``jit``).

Blocks and memory
-----------------
The sampling driver keeps the states in its loop carry and calls ``update`` at the end of each
block of draws. Nothing grows with the number of draws or blocks: a :func:`running_mean` state
is ``O(C * event)``, a :func:`cross_covariance` state is ``O(C * (A + B) + A * B)`` (``A``,
``B`` the flattened event sizes, one pooled ``(A, B)`` matrix, not one per chain), and an
update's temporaries are ``O(C * block_len * (A + B))`` plus one ``(A, B)`` product. The block
is reduced with matrix products over the flattened ``(chains * block_len)`` axis, never with a
loop over draws. :func:`streaming_reduce` does the same on stored traces.

Pooling across chains
---------------------
Means are pooled over all weighted draws of all chains. A covariance is either

* ``center="global"`` (default): the covariance of all draws pooled around the global mean,
  which contains the *between-chain* spread of the chain means. This is the posterior
  covariance when chains sit in different regions (e.g. different phases of a stagewise
  model), which attribution methods rely on;
* ``center="chain"``: each chain centred on its own mean and the within-chain products pooled,
  which removes the between-chain part (a chain-to-chain offset does not count as spread).

Both come from the same state: per-chain counts, per-chain means and one pooled within-chain
cross-product matrix; the between-chain part is added at finalization from the per-chain
means with one ``(A, C) @ (C, B)`` product.

Numerical stability
-------------------
Each chain's running mean is stored as ``origin + shifted_mean``: ``origin`` is the chain's
first weighted draw and ``shifted_mean`` the mean of ``values - origin``. Block values are
shifted by the running mean, ``(values - origin) - shifted_mean`` (the first difference is
exact in floating point for values close to the origin), before any product; blocks are merged
with the parallel update of Chan, Golub and LeVeque (1979); finalization works with
differences of chain means. A float32 running mean of :math:`10^4` alone would be quantised to
about :math:`10^{-3}` (one ulp) and bias a covariance of spread :math:`10^{-2}` by about 1%;
split this way, such a stream keeps its covariance well within :math:`10^{-3}` relative
error, where the naive :math:`\mathbb E[ab] - \mathbb E[a]\,\mathbb E[b]` loses every digit.
The matrix products use ``Precision.HIGHEST`` (no TF32/bf16 passes on accelerators).
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

__all__ = [
    "Accumulator",
    "BatchMeansState",
    "CovarianceResult",
    "CrossCovarianceState",
    "DEFAULT_BATCH_SIZE",
    "LinearTrendState",
    "MeanResult",
    "RunningMeanState",
    "batch_means",
    "batch_means_mcse",
    "cell_state",
    "covariance",
    "covariance_mcse_of_draws",
    "cross_covariance",
    "cross_covariance_of_draws",
    "linear_trend",
    "linear_trend_of_draws",
    "mean_of_draws",
    "per_cell",
    "running_mean",
    "streaming_reduce",
]

_HIGHEST = jax.lax.Precision.HIGHEST
_CENTERS = ("global", "chain")


class Accumulator(NamedTuple):
    """A streaming reduction: see the module docstring for the protocol."""

    streams: tuple[str, ...]
    init: Callable[[Mapping[str, jax.ShapeDtypeStruct]], PyTree]
    update: Callable[[PyTree, Mapping[str, jax.Array], jax.Array], PyTree]
    finalize: Callable[[PyTree], Any]


class MeanResult(NamedTuple):
    """Means of a stream.

    Attributes:
      mean: ``event``-shaped mean over all weighted draws of all chains.
      per_chain: ``(num_chains, *event)`` mean of each chain (``nan`` for a chain with no draw).
      count: ``(num_chains,)`` total weight (number of draws) of each chain.
    """

    mean: jax.Array
    per_chain: jax.Array
    count: jax.Array


class CovarianceResult(NamedTuple):
    """A (cross-)covariance of two streams.

    Attributes:
      covariance: ``(*event_a, *event_b)`` covariance.
      mean_a: ``event_a``-shaped mean of the first stream over all draws of all chains.
      mean_b: ``event_b``-shaped mean of the second stream.
      count: ``(num_chains,)`` total weight (number of draws) of each chain.
    """

    covariance: jax.Array
    mean_a: jax.Array
    mean_b: jax.Array
    count: jax.Array


class RunningMeanState(NamedTuple):
    """State of :func:`running_mean`; chain ``c``'s mean is ``origin[c] + shifted_mean[c]``.

    Attributes:
      count: ``(C,)`` total weight seen by each chain.
      origin: ``(C, *event)`` first weighted draw of each chain (0 before it).
      shifted_mean: ``(C, *event)`` mean of ``values - origin`` of each chain.
    """

    count: jax.Array
    origin: jax.Array
    shifted_mean: jax.Array


class CrossCovarianceState(NamedTuple):
    r"""State of :func:`cross_covariance`.

    Attributes:
      count: ``(C,)`` total weight seen by each chain.
      origin_a, origin_b: ``(C, *event_a)``, ``(C, *event_b)`` first weighted draw per chain.
      shifted_mean_a, shifted_mean_b: per-chain means of ``a - origin_a``, ``b - origin_b``.
      cross_product: ``(*event_a, *event_b)`` pooled within-chain sum
        :math:`\sum_c \sum_t w_{ct} (a_{ct} - \bar a_c)(b_{ct} - \bar b_c)^\top`.
    """

    count: jax.Array
    origin_a: jax.Array
    shifted_mean_a: jax.Array
    origin_b: jax.Array
    shifted_mean_b: jax.Array
    cross_product: jax.Array


# ----------------------------------------------------------------------------------------------
# shared helpers


def _accumulation_dtype(dtype) -> jnp.dtype:
    """float32 at least (bf16/int streams are accumulated in float32)."""
    return jax.dtypes.canonicalize_dtype(jnp.promote_types(dtype, jnp.float32))


def _stream_shape(shapes: Mapping[str, jax.ShapeDtypeStruct], name: str):
    if name not in shapes:
        raise ValueError(f"stream {name!r} is not among the streams {sorted(shapes)}")
    shape = tuple(shapes[name].shape)
    if len(shape) < 1:
        raise ValueError(f"stream {name!r} needs a leading chain axis, got shape {shape}")
    return shape, _accumulation_dtype(shapes[name].dtype)


def _flat_block(block: Mapping[str, jax.Array], name: str, origin: jax.Array, block_len: int):
    """The block of stream ``name`` as ``(C, block_len, A)`` in the state's dtype."""
    values = jnp.asarray(block[name])
    num_chains, event = origin.shape[0], origin.shape[1:]
    if values.shape != (num_chains, block_len, *event):
        raise ValueError(
            f"stream {name!r}: expected a block of shape {(num_chains, block_len, *event)} "
            f"(num_chains, block_len, *event), got {values.shape}"
        )
    return values.reshape(num_chains, block_len, -1).astype(origin.dtype)


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator`` where ``denominator > 0``, else 0 (no nan, no inf)."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0)


class _BlockMoments(NamedTuple):
    origin: jax.Array  # (C, A) origin after the block (set for chains starting in it)
    shifted_mean: jax.Array  # (C, A) running mean before the block, relative to origin
    block_mean: jax.Array  # (C, A) block mean minus the running mean
    centred: jax.Array  # (C, L, A) values minus block mean, 0 where the weight is 0


def _block_moments(
    origin: jax.Array,
    shifted_mean: jax.Array,
    count: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    weights: jax.Array,
    block_count: jax.Array,
) -> _BlockMoments:
    r"""Per-chain weighted mean and centred values of one block, shifted by the running mean.

    A chain with no draw yet takes its first weighted draw of the block as its origin. With
    :math:`s_c` the running mean, the block mean relative to it is
    :math:`\delta_c = \sum_t w_{ct} (x_{ct} - s_c) / m_c` and the centred values are
    :math:`x_{ct} - s_c - \delta_c` (0 where :math:`w_{ct} = 0`).
    """
    first_index = jnp.argmax(mask, axis=1)  # (C,)
    first = jnp.take_along_axis(values, first_index[:, None, None], axis=1)[:, 0, :]
    starts = ((count == 0) & (block_count > 0))[:, None]
    origin = jnp.where(starts, first, origin)
    shifted_mean = jnp.where(starts, jnp.zeros_like(shifted_mean), shifted_mean)
    mask3 = mask[:, :, None]
    shifted = jnp.where(mask3, (values - origin[:, None, :]) - shifted_mean[:, None, :], 0)
    weighted_sum = jnp.sum(weights[:, :, None] * shifted, axis=1)
    block_mean = _safe_divide(weighted_sum, block_count[:, None])
    centred = jnp.where(mask3, shifted - block_mean[:, None, :], 0)
    return _BlockMoments(origin, shifted_mean, block_mean, centred)


def _mask_and_weights(weights: jax.Array, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(mask, weights with 0 off the mask, per-chain block count)``."""
    weights = jnp.asarray(weights)
    mask = weights > 0
    weights = jnp.where(mask, weights, 0).astype(dtype)
    return mask, weights, jnp.sum(weights, axis=1)


def _pooled_deviations(
    count: jax.Array, origin: jax.Array, shifted_mean: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""The global mean :math:`\bar x` (``(A,)``) and the chain deviations
    :math:`\bar x_c - \bar x` (``(C, A)``), computed relative to the origin of the chain with
    the most draws so that large common offsets cancel exactly."""
    reference = origin[jnp.argmax(count)]
    chain_offsets = (origin - reference[None, :]) + shifted_mean
    total = jnp.sum(count)
    global_offset = jnp.sum(count[:, None] * chain_offsets, axis=0) / total
    return reference + global_offset, chain_offsets - global_offset[None, :]


def _matmul_transposed(left: jax.Array, right: jax.Array) -> jax.Array:
    """``left.T @ right`` at full float32 precision."""
    return jnp.matmul(left.T, right, precision=_HIGHEST)


# ----------------------------------------------------------------------------------------------
# running mean


def running_mean(stream: str) -> Accumulator:
    r"""Streaming mean of ``stream``, per chain and pooled.

    .. math::

        \bar x_c = \frac{\sum_t w_{ct} x_{ct}}{\sum_t w_{ct}}, \qquad
        \bar x = \frac{\sum_{c,t} w_{ct} x_{ct}}{\sum_{c,t} w_{ct}}

    Blocks are merged as :math:`\bar x_c \leftarrow \bar x_c + \frac{m_c}{n_c + m_c}\delta_c`
    with :math:`\delta_c` the block mean minus the running mean (computed on shifted values).

    Args:
      stream: name of the stream to average.

    Returns:
      An :class:`Accumulator` whose ``finalize`` returns a :class:`MeanResult`.
    """

    def init(shapes: Mapping[str, jax.ShapeDtypeStruct]) -> RunningMeanState:
        shape, dtype = _stream_shape(shapes, stream)
        zeros = jnp.zeros(shape, dtype)
        return RunningMeanState(jnp.zeros(shape[:1], dtype), zeros, zeros)

    def update(state: RunningMeanState, block, weights) -> RunningMeanState:
        block_len = jnp.shape(weights)[1]
        if block_len == 0:
            return state
        num_chains, event = state.origin.shape[0], state.origin.shape[1:]
        values = _flat_block(block, stream, state.origin, block_len)
        mask, weights, block_count = _mask_and_weights(weights, state.count.dtype)
        moments = _block_moments(
            state.origin.reshape(num_chains, -1),
            state.shifted_mean.reshape(num_chains, -1),
            state.count,
            values,
            mask,
            weights,
            block_count,
        )
        count = state.count + block_count
        fraction = _safe_divide(block_count, count)
        shifted_mean = moments.shifted_mean + fraction[:, None] * moments.block_mean
        return RunningMeanState(
            count,
            moments.origin.reshape(num_chains, *event),
            shifted_mean.reshape(num_chains, *event),
        )

    def finalize(state: RunningMeanState) -> MeanResult:
        num_chains, event = state.origin.shape[0], state.origin.shape[1:]
        origin = state.origin.reshape(num_chains, -1)
        shifted_mean = state.shifted_mean.reshape(num_chains, -1)
        mean, _ = _pooled_deviations(state.count, origin, shifted_mean)
        per_chain = jnp.where((state.count > 0)[:, None], origin + shifted_mean, jnp.nan)
        return MeanResult(mean.reshape(event), per_chain.reshape(num_chains, *event), state.count)

    return Accumulator((stream,), init, update, finalize)


# ----------------------------------------------------------------------------------------------
# (cross-)covariance


def _cross_covariance_update(
    state: CrossCovarianceState, block, weights, stream_a: str, stream_b: str
) -> CrossCovarianceState:
    r"""One block of the Chan et al. merge (see :func:`cross_covariance`)."""
    block_len = jnp.shape(weights)[1]
    if block_len == 0:
        return state
    num_chains = state.count.shape[0]
    event_a, event_b = state.origin_a.shape[1:], state.origin_b.shape[1:]
    mask, weights, block_count = _mask_and_weights(weights, state.count.dtype)

    def moments_of(stream: str, origin: jax.Array, shifted_mean: jax.Array) -> _BlockMoments:
        values = _flat_block(block, stream, origin, block_len)
        flat_origin = origin.reshape(num_chains, -1)
        flat_mean = shifted_mean.reshape(num_chains, -1)
        return _block_moments(
            flat_origin, flat_mean, state.count, values, mask, weights, block_count
        )

    moments_a = moments_of(stream_a, state.origin_a, state.shifted_mean_a)
    if stream_b == stream_a:  # a covariance: both halves of the state evolve identically
        moments_b = moments_a
    else:
        moments_b = moments_of(stream_b, state.origin_b, state.shifted_mean_b)
    # within-block centred products of all chains: one (A, C*L) @ (C*L, B) product
    weighted_a = (weights[:, :, None] * moments_a.centred).reshape(num_chains * block_len, -1)
    centred_b = moments_b.centred.reshape(num_chains * block_len, -1)
    block_product = _matmul_transposed(weighted_a, centred_b)
    # between running mean and block mean: one (A, C) @ (C, B) product
    count = state.count + block_count
    merge_factor = _safe_divide(state.count * block_count, count)
    merge_product = _matmul_transposed(
        merge_factor[:, None] * moments_a.block_mean, moments_b.block_mean
    )
    cross_product = state.cross_product + (block_product + merge_product).reshape(
        state.cross_product.shape
    )
    fraction = _safe_divide(block_count, count)[:, None]
    return CrossCovarianceState(
        count,
        moments_a.origin.reshape(num_chains, *event_a),
        (moments_a.shifted_mean + fraction * moments_a.block_mean).reshape(num_chains, *event_a),
        moments_b.origin.reshape(num_chains, *event_b),
        (moments_b.shifted_mean + fraction * moments_b.block_mean).reshape(num_chains, *event_b),
        cross_product,
    )


def _cross_covariance_finalize(
    state: CrossCovarianceState, center: str, ddof: float
) -> CovarianceResult:
    """Within-chain products, plus the between-chain term for ``center="global"``."""
    num_chains = state.count.shape[0]
    event_a, event_b = state.origin_a.shape[1:], state.origin_b.shape[1:]
    mean_a, deviations_a = _pooled_deviations(
        state.count,
        state.origin_a.reshape(num_chains, -1),
        state.shifted_mean_a.reshape(num_chains, -1),
    )
    mean_b, deviations_b = _pooled_deviations(
        state.count,
        state.origin_b.reshape(num_chains, -1),
        state.shifted_mean_b.reshape(num_chains, -1),
    )
    product = state.cross_product.reshape(mean_a.shape[0], mean_b.shape[0])
    total = jnp.sum(state.count)
    if center == "global":
        product = product + _matmul_transposed(state.count[:, None] * deviations_a, deviations_b)
        denominator = total - ddof
    else:
        denominator = total - ddof * jnp.sum(state.count > 0)
    positive = denominator > 0
    covariance = jnp.where(positive, product / jnp.where(positive, denominator, 1), jnp.nan)
    return CovarianceResult(
        covariance.reshape(*event_a, *event_b),
        mean_a.reshape(event_a),
        mean_b.reshape(event_b),
        state.count,
    )


def _check_center(center: str) -> None:
    if center not in _CENTERS:
        raise ValueError(f"center must be one of {_CENTERS}, got {center!r}")


def cross_covariance(
    stream_a: str, stream_b: str, *, center: str = "global", ddof: float = 1
) -> Accumulator:
    r"""Streaming cross-covariance of two streams over the draws of all chains.

    With weights :math:`w_{ct}`, :math:`N = \sum_{c,t} w_{ct}` and :math:`C'` the number of
    chains with at least one draw:

    .. math::

        \text{global:}\quad \frac{\sum_{c,t} w_{ct}(a_{ct} - \bar a)(b_{ct} - \bar b)^\top}
            {N - \mathrm{ddof}}, \qquad
        \text{chain:}\quad \frac{\sum_{c,t} w_{ct}(a_{ct} - \bar a_c)(b_{ct} - \bar b_c)^\top}
            {N - \mathrm{ddof}\, C'}

    The state holds per-chain counts and means and one pooled within-chain matrix
    :math:`M = \sum_c \sum_t w_{ct}(a_{ct} - \bar a_c)(b_{ct} - \bar b_c)^\top`. A block with
    per-chain count :math:`m_c`, means :math:`\mu^{\mathrm{blk}}_c, \nu^{\mathrm{blk}}_c` and
    centred product :math:`C^{\mathrm{blk}}_c` is merged (Chan, Golub & LeVeque 1979) as

    .. math::

        M \leftarrow M + \sum_c \Big[C^{\mathrm{blk}}_c + \frac{n_c m_c}{n_c + m_c}
            (\mu^{\mathrm{blk}}_c - \mu_c)(\nu^{\mathrm{blk}}_c - \nu_c)^\top\Big]

    and ``"global"`` adds :math:`\sum_c n_c (\bar a_c - \bar a)(\bar b_c - \bar b)^\top` at
    finalization. Events of any rank are flattened internally (e.g. per-token losses ``(q, T)``).

    Args:
      stream_a: name of the first stream, events of shape ``event_a``.
      stream_b: name of the second stream, events of shape ``event_b`` (may equal ``stream_a``).
      center: ``"global"`` (pooled draws around the global mean, between-chain spread
        included) or ``"chain"`` (each chain around its own mean).
      ddof: delta degrees of freedom (per chain for ``"chain"``).

    Returns:
      An :class:`Accumulator` whose ``finalize`` returns a :class:`CovarianceResult` with a
      ``(*event_a, *event_b)`` covariance (``nan`` if the denominator is not positive).
    """
    _check_center(center)

    def init(shapes: Mapping[str, jax.ShapeDtypeStruct]) -> CrossCovarianceState:
        shape_a, dtype_a = _stream_shape(shapes, stream_a)
        shape_b, dtype_b = _stream_shape(shapes, stream_b)
        if shape_a[0] != shape_b[0]:
            raise ValueError(f"streams have different numbers of chains: {shape_a}, {shape_b}")
        dtype = jnp.promote_types(dtype_a, dtype_b)
        zeros_a, zeros_b = jnp.zeros(shape_a, dtype), jnp.zeros(shape_b, dtype)
        cross_product = jnp.zeros(shape_a[1:] + shape_b[1:], dtype)
        count = jnp.zeros(shape_a[:1], dtype)
        return CrossCovarianceState(count, zeros_a, zeros_a, zeros_b, zeros_b, cross_product)

    def update(state: CrossCovarianceState, block, weights) -> CrossCovarianceState:
        return _cross_covariance_update(state, block, weights, stream_a, stream_b)

    def finalize(state: CrossCovarianceState) -> CovarianceResult:
        return _cross_covariance_finalize(state, center, ddof)

    return Accumulator((stream_a, stream_b), init, update, finalize)


def covariance(stream: str, *, center: str = "global", ddof: float = 1) -> Accumulator:
    r"""Streaming covariance of ``stream`` with itself: :func:`cross_covariance` with
    ``stream_a = stream_b = stream``.

    .. math::

        \Sigma = \frac{\sum_{c,t} w_{ct}(x_{ct} - \bar x)(x_{ct} - \bar x)^\top}{N - \mathrm{ddof}}
        \quad (\text{"global"; "chain" centres on } \bar x_c,
        \text{ divides by } N - \mathrm{ddof}\,C')

    Args:
      stream: name of the stream, events of shape ``event``.
      center: ``"global"`` or ``"chain"`` (see :func:`cross_covariance`).
      ddof: delta degrees of freedom.

    Returns:
      An :class:`Accumulator` whose result has a ``(*event, *event)`` covariance.
    """
    return cross_covariance(stream, stream, center=center, ddof=ddof)


# ----------------------------------------------------------------------------------------------
# array (non-streaming) forms


def _flat_draws(draws) -> jax.Array:
    draws = jnp.asarray(draws)
    if draws.ndim < 2:
        raise ValueError(
            f"draws must have shape (num_chains, num_draws, *event), got {draws.shape}"
        )
    draws = draws.astype(_accumulation_dtype(draws.dtype))
    return draws.reshape(draws.shape[0], draws.shape[1], -1)


def mean_of_draws(draws) -> MeanResult:
    r"""Means of stored draws ``(num_chains, num_draws, *event)``, all weighted 1.

    .. math::

        \bar x_c = \frac1D \sum_t x_{ct}, \qquad \bar x = \frac1C \sum_c \bar x_c

    Computed on values shifted by each chain's first draw; compiled once per shape.

    Args:
      draws: ``(C, D, *event)`` array.

    Returns:
      :class:`MeanResult` with ``mean`` ``event``, ``per_chain`` ``(C, *event)``, ``count``
      ``(C,)`` (``D`` for every chain).

    Examples:
      >>> import jax.numpy as jnp
      >>> from slt_jax import accumulators
      >>> draws = jnp.array([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])      # 2 chains x 3 draws
      >>> result = accumulators.mean_of_draws(draws)
      >>> float(result.mean), result.per_chain.tolist(), result.count.tolist()
      (4.0, [2.0, 6.0], [3.0, 3.0])
    """
    return _mean_of_draws(jnp.asarray(draws))


@jax.jit
def _mean_of_draws(draws: jax.Array) -> MeanResult:
    event = jnp.shape(draws)[2:]
    flat = _flat_draws(draws)
    num_chains, num_draws = flat.shape[:2]
    first = flat[:, 0, :]
    per_chain = first + jnp.mean(flat - first[:, None, :], axis=1)
    reference = per_chain[0]
    mean = reference + jnp.mean(per_chain - reference[None, :], axis=0)
    count = jnp.full((num_chains,), num_draws, flat.dtype)
    return MeanResult(mean.reshape(event), per_chain.reshape(num_chains, *event), count)


def cross_covariance_of_draws(a, b, *, center: str = "global", ddof: float = 1) -> jax.Array:
    r"""Cross-covariance of stored draws, the array form of :func:`cross_covariance`.

    With :math:`N = CD` draws, all weighted 1:

    .. math::

        \text{global:}\ \frac{\sum_{c,t}(a_{ct} - \bar a)(b_{ct} - \bar b)^\top}{N - \mathrm{ddof}},
        \qquad
        \text{chain:}\ \frac{\sum_{c,t}(a_{ct} - \bar a_c)(b_{ct} - \bar b_c)^\top}
            {N - \mathrm{ddof}\,C}

    Computed in two passes with the shifted-data correction
    :math:`\sum d_a d_b^\top - (\sum d_a)(\sum d_b)^\top / n` (exact for any shift, so the
    rounding of the float32 mean does not bias the result); compiled once per shape.

    Args:
      a: ``(C, D, *event_a)`` draws of the first stream.
      b: ``(C, D, *event_b)`` draws of the second stream (same ``C``, ``D``).
      center: ``"global"`` or ``"chain"``.
      ddof: delta degrees of freedom (per chain for ``"chain"``).

    Returns:
      ``(*event_a, *event_b)`` covariance (``nan`` if the denominator is not positive).

    Examples:
      >>> import jax.numpy as jnp
      >>> from slt_jax import accumulators
      >>> a = jnp.array([[0.0, 2.0], [4.0, 6.0]])                    # 2 chains x 2 draws
      >>> round(float(accumulators.cross_covariance_of_draws(a, a)), 4)    # pooled around 3
      6.6667
      >>> float(accumulators.cross_covariance_of_draws(a, a, center="chain"))
      2.0
    """
    _check_center(center)
    return _cross_covariance_of_draws(jnp.asarray(a), jnp.asarray(b), center, ddof)


@partial(jax.jit, static_argnums=(2, 3))
def _cross_covariance_of_draws(a: jax.Array, b: jax.Array, center: str, ddof: float) -> jax.Array:
    event_a, event_b = jnp.shape(a)[2:], jnp.shape(b)[2:]
    flat_a, flat_b = _flat_draws(a), _flat_draws(b)
    if flat_a.shape[:2] != flat_b.shape[:2]:
        raise ValueError(
            f"a and b differ in (num_chains, num_draws): {jnp.shape(a)}, {jnp.shape(b)}"
        )
    num_chains, num_draws = flat_a.shape[:2]
    total = num_chains * num_draws
    # shift by one draw first (the covariance does not change): a constant stream is then
    # exactly zero instead of the rounding residue of subtracting its float mean
    flat_a, flat_b = flat_a - flat_a[:1, :1], flat_b - flat_b[:1, :1]
    axes = (0, 1) if center == "global" else (1,)
    shift_a = jnp.mean(flat_a, axis=axes, keepdims=True)
    shift_b = jnp.mean(flat_b, axis=axes, keepdims=True)
    deviation_a, deviation_b = flat_a - shift_a, flat_b - shift_b
    product = _matmul_transposed(
        deviation_a.reshape(total, -1), deviation_b.reshape(total, -1)
    )
    sums_a = jnp.sum(deviation_a, axis=axes).reshape(-1, flat_a.shape[2])
    sums_b = jnp.sum(deviation_b, axis=axes).reshape(-1, flat_b.shape[2])
    group_size = total if center == "global" else num_draws
    product = product - _matmul_transposed(sums_a, sums_b) / group_size
    denominator = total - ddof * (1 if center == "global" else num_chains)
    covariance = product / denominator if denominator > 0 else jnp.full_like(product, jnp.nan)
    return covariance.reshape(*event_a, *event_b)


# ----------------------------------------------------------------------------------------------
# stored traces


def _blocks_of(draws: jax.Array, num_blocks: int, block_size: int) -> jax.Array:
    """``(C, D, *event)`` -> ``(num_blocks, C, block_size, *event)``, zero-padded."""
    padding = num_blocks * block_size - draws.shape[1]
    draws = jnp.pad(draws, [(0, 0), (0, padding)] + [(0, 0)] * (draws.ndim - 2))
    blocks = draws.reshape(draws.shape[0], num_blocks, block_size, *draws.shape[2:])
    return jnp.moveaxis(blocks, 1, 0)


def _validated_inputs(
    draws: Mapping[str, Any], weights: Any
) -> tuple[dict[str, jax.Array], jax.Array]:
    """``draws`` as jax arrays sharing ``(num_chains, num_draws)``, and the weights."""
    draws = {name: jnp.asarray(values) for name, values in draws.items()}
    shapes = [values.shape for values in draws.values()]
    if not draws or any(len(shape) < 2 or shape[:2] != shapes[0][:2] for shape in shapes):
        raise ValueError(f"draws must share (num_chains, num_draws, ...); got shapes {shapes}")
    leading = shapes[0][:2]
    if weights is None:
        weights = jnp.ones(leading, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != leading:
        raise ValueError(f"weights must have shape {leading}, got {weights.shape}")
    return draws, weights


def per_cell(accumulator: Accumulator, num_cells: int, *, finalize_cells: bool = True
             ) -> Accumulator:
    r"""Run ``accumulator`` separately on each of ``num_cells`` equal groups of chains.

    A run of :func:`slt_jax.sample` whose chain axis stacks ``num_cells`` cells of ``c``
    chains each (cell-major: chains :math:`[k c, (k+1) c)` are cell :math:`k`, as
    :func:`slt_jax.llc_over_checkpoints`, :func:`slt_jax.bif_over_checkpoints` and
    :func:`slt_jax.estimate_susceptibilities` stack checkpoints or components) gets one state
    per cell: every stream is reshaped to ``(num_cells, c, ...)`` and the inner ``update`` is
    ``vmap``-ped over cells. Nothing mixes across cells, so cell :math:`k`'s state is exactly
    the state the inner accumulator reaches on that cell's chains alone. The initial state is
    stacked on the host (nothing is compiled for it).

    Args:
      accumulator: any :class:`Accumulator`.
      num_cells: the number of groups; the run's chain count must be a multiple of it.
      finalize_cells: ``finalize`` returns a tuple of the cells' finalized results (default),
        or, with ``False``, the raw stacked state (leading axis ``num_cells``: resume it, or
        finalize cell ``k`` with ``accumulator.finalize(cell_state(state, k))``).

    Example:
      >>> import slt_jax as slt
      >>> slt.accumulators.per_cell(slt.accumulators.running_mean("loss"), 3).streams
      ('loss',)
    """
    if isinstance(num_cells, bool) or int(num_cells) != num_cells or num_cells < 1:
        raise ValueError(f"num_cells must be a positive integer, got {num_cells!r}")
    num_cells = int(num_cells)
    inner_init, inner_update, inner_finalize = (
        accumulator.init, accumulator.update, accumulator.finalize)

    def init(shapes):
        chains = {s.shape[0] for s in jax.tree.leaves(shapes)}
        if any(count % num_cells for count in chains):
            raise ValueError(
                f"per_cell: the run's {sorted(chains)} chains cannot be split into {num_cells} "
                "equal cells"
            )
        cell_shapes = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct((s.shape[0] // num_cells,) + tuple(s.shape[1:]),
                                           s.dtype), shapes)
        state = inner_init(cell_shapes)
        # on the host: an eager jnp.repeat would compile one small program per leaf shape
        return jax.tree.map(lambda leaf: np.stack([np.asarray(leaf)] * num_cells), state)

    def update(state, block, weights):
        def split(values):
            return jnp.reshape(values, (num_cells, -1) + tuple(jnp.shape(values)[1:]))

        return jax.vmap(inner_update)(state, jax.tree.map(split, dict(block)), split(weights))

    def finalize(state):
        if not finalize_cells:
            return state
        return tuple(inner_finalize(cell_state(state, index)) for index in range(num_cells))

    return Accumulator(tuple(accumulator.streams), init, update, finalize)


def cell_state(state: PyTree, index: int) -> PyTree:
    """Cell ``index``'s state of a raw :func:`per_cell` state (sliced on the host: compiles
    nothing)."""
    return jax.tree.map(lambda leaf: np.asarray(leaf)[index], state)


def streaming_reduce(
    accumulators: Mapping[str, Accumulator],
    draws: Mapping[str, Any],
    block_size: int,
    *,
    weights: Any = None,
) -> dict[str, Any]:
    """Runs accumulators over stored draws in blocks of ``block_size``, as the sampler would.

    The draws are cut into blocks of ``min(block_size, num_draws)`` draws along axis 1, the last
    one padded with weight 0, and folded in with a ``lax.scan``; scan and finalization are
    compiled together, once per call.

    Args:
      accumulators: ``{result name: Accumulator}``.
      draws: ``{stream name: (num_chains, num_draws, *event) array}``; every stream has the
        same ``num_chains`` and ``num_draws``.
      block_size: number of draws per block (at least 1).
      weights: optional ``(num_chains, num_draws)`` weights in {0, 1} (default all 1); draws of
        weight 0 are ignored.

    Returns:
      ``{result name: accumulator.finalize(state)}``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from slt_jax import accumulators
      >>> draws = {"loss": jnp.arange(12.0).reshape(2, 6)}          # 2 chains x 6 draws
      >>> out = accumulators.streaming_reduce(
      ...     {"mean": accumulators.running_mean("loss")}, draws, block_size=4)
      >>> float(out["mean"].mean), out["mean"].per_chain.tolist()
      (5.5, [2.5, 8.5])
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    draws, weights = _validated_inputs(draws, weights)
    num_chains, num_draws = weights.shape
    shapes = {
        name: jax.ShapeDtypeStruct((num_chains, *values.shape[2:]), values.dtype)
        for name, values in draws.items()
    }
    states = {name: accumulator.init(shapes) for name, accumulator in accumulators.items()}

    def step(states, inputs):
        block, block_weights = inputs
        return {
            name: accumulator.update(
                states[name], {s: block[s] for s in accumulator.streams}, block_weights
            )
            for name, accumulator in accumulators.items()
        }, None

    def finalize(states):
        return {name: accumulators[name].finalize(state) for name, state in states.items()}

    if num_draws == 0:
        return finalize(states)
    block_size = min(block_size, num_draws)
    num_blocks = math.ceil(num_draws / block_size)

    @jax.jit
    def run(states, draws, weights):
        blocks = {name: _blocks_of(x, num_blocks, block_size) for name, x in draws.items()}
        inputs = (blocks, _blocks_of(weights, num_blocks, block_size))
        return finalize(jax.lax.scan(step, states, inputs)[0])

    return run(states, draws, weights)


# ----------------------------------------------------------------------------------------------
# Monte Carlo standard errors of (cross-)covariances and correlations: batch means

#: draws per chain in one batch of the batch-means MCSE when none is given: the sampler's
#: default block (``slt_jax.sampling.DEFAULT_DRAWS_PER_BLOCK``), so that the streaming form
#: inside :func:`slt_jax.sample` and the array forms cut the draws into the same batches
DEFAULT_BATCH_SIZE = 128


class BatchMeansState(NamedTuple):
    r"""State of :func:`batch_means`: sums over batches of per-batch sufficient statistics.

    A batch is ``batch_size`` consecutive draws of one chain (weight :math:`m_b`). With fixed
    references :math:`r, s` (the pooled mean of the first block) its features are
    :math:`u_b = \overline{(a - r)}_b` (``(A,)``), :math:`v_b = \overline{(b - s)}_b`,
    :math:`E_b = \overline{(a - r)(b - s)^\top}_b` (``(A, B)``) and, for a correlation,
    :math:`F_b = \overline{(a - r)^2}_b`, :math:`G_b = \overline{(b - s)^2}_b`.

    Attributes:
      reference_a, reference_b: ``(A,)``, ``(B,)`` the references :math:`r, s`.
      total: :math:`N = \sum_b m_b`.
      num_batches: number of batches with :math:`m_b > 0`.
      sum_squared_weights: :math:`\sum_b m_b^2`.
      vector_a: ``(k_a, A)``: :math:`\sum m u`, :math:`\sum m^2 u`, :math:`\sum m^2 u^2` (and
        :math:`\sum m F`, :math:`\sum m^2 F`, :math:`\sum m^2 uF`, :math:`\sum m^2 F^2`).
      vector_b: ``(k_b, B)``: the same for :math:`v, G`.
      matrix: ``(k, A, B)``: :math:`\sum m^2 E`, :math:`\sum m^2 E^2`, :math:`\sum m^2 E u`,
        :math:`\sum m^2 E v`, :math:`\sum m^2 u v` (and :math:`\sum m^2 EF`, :math:`\sum m^2
        EG`, :math:`\sum m^2 uG`, :math:`\sum m^2 Fv`, :math:`\sum m^2 FG`), elementwise.
      open_count: ``(C,)`` int: draws (of positive weight) in each chain's open batch, the one
        not yet full; it carries over to the next block, so batches do not depend on the
        block length. The sums above count closed batches only; :func:`close_batch_means`
        (called by ``finalize`` and :func:`batch_means_mcse`) closes the open ones.
      open_weight: ``(C,)`` the open batches' :math:`m` (this and the next three have 0 rows
        with ``batch_size=None``, which carries nothing over).
      open_a: ``(C, k'_a, A)``: their :math:`\sum w (a - r)` (and :math:`\sum w (a - r)^2`).
      open_b: ``(C, k'_b, B)``: the same for :math:`b - s`.
      open_matrix: ``(C, A, B)``: their :math:`\sum w (a - r)(b - s)^\top`.
    """

    reference_a: jax.Array
    reference_b: jax.Array
    total: jax.Array
    num_batches: jax.Array
    sum_squared_weights: jax.Array
    vector_a: jax.Array
    vector_b: jax.Array
    matrix: jax.Array
    open_count: jax.Array
    open_weight: jax.Array
    open_a: jax.Array
    open_b: jax.Array
    open_matrix: jax.Array


def _batches(values: jax.Array, batch_size: int) -> jax.Array:
    """``(C, L, ...)`` -> ``(C * ceil(L / batch_size), batch_size, ...)``, zero-padded."""
    num_chains, length = values.shape[:2]
    num_batches = -(-length // batch_size)
    padding = num_batches * batch_size - length
    values = jnp.pad(values, [(0, 0), (0, padding)] + [(0, 0)] * (values.ndim - 2))
    return values.reshape(num_chains * num_batches, batch_size, *values.shape[2:])


def _aligned_batches(arrays, mask, open_count, size: int, carry: bool):
    """Each chain's draws of positive weight, in order, cut into batches of ``size`` that
    continue the chain's open batch (``open_count`` draws already in it) when ``carry``.

    Returns ``(batches, total)``: each array as ``(C, nb, size, ...)`` (slot 0 continues the
    open batch; draws of weight 0 dropped, the rest zero-padded) and ``(C,)`` the draws counted
    from the open batch's start: slots ``j < total // size`` are full (closed), slot
    ``total // size`` is the new open batch (``total % size`` draws). Without ``carry``
    (``size`` the block length, ``open_count`` 0) all slots close.
    """
    num_chains, block_len = mask.shape
    start = open_count if carry else jnp.zeros_like(open_count)
    num_slots = -(-(block_len + size - 1) // size) if carry else -(-block_len // size)
    padded = num_slots * size
    rank = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
    target = jnp.where(mask, start[:, None] + rank, padded)
    rows = jnp.broadcast_to(jnp.arange(num_chains)[:, None], mask.shape)

    def aligned(values):
        buffer = jnp.zeros((num_chains, padded, *values.shape[2:]), values.dtype)
        buffer = buffer.at[rows, target].set(values, mode="drop")
        return buffer.reshape(num_chains, num_slots, size, *values.shape[2:])

    total = start + jnp.sum(mask, axis=1, dtype=jnp.int32)
    return [aligned(values) for values in arrays], total


def _raw_batch(delta_a, delta_b, weights, correlation: bool):
    """Weighted sums of one batch: ``(m, [Σw a (, Σw a²)], [Σw b (, Σw b²)], Σw a bᵀ)``."""
    weighted_a = weights[:, None] * delta_a
    rows_a = [jnp.sum(weighted_a, axis=0)]
    rows_b = [jnp.sum(weights[:, None] * delta_b, axis=0)]
    if correlation:
        rows_a.append(jnp.sum(weighted_a * delta_a, axis=0))
        rows_b.append(jnp.sum(weights[:, None] * delta_b * delta_b, axis=0))
    return (jnp.sum(weights), jnp.stack(rows_a), jnp.stack(rows_b),
            _matmul_transposed(weighted_a, delta_b))


def _closed_batch(sums, raw, correlation: bool):
    """``sums`` = (vector_a, vector_b, matrix, num_batches, Σm²) with the batch ``raw`` added."""
    count, rows_a, rows_b, product = raw
    inverse = _safe_divide(jnp.ones_like(count), count)
    f, g = (rows_a[1] * inverse, rows_b[1] * inverse) if correlation else (None, None)
    added = _batch_sums(count, rows_a[0] * inverse, rows_b[0] * inverse, product * inverse, f,
                        g, correlation)
    return (tuple(s + x for s, x in zip(sums[:3], added))
            + (sums[3] + (count > 0).astype(count.dtype), sums[4] + count * count))


def _continued_batch(state, old_open, delta_a, delta_b, weights, mask, size: int,
                     correlation: bool):
    """A block of at most ``size`` draws per chain: its draws before the chain's next batch
    boundary continue the open batch, which then closes if full, and the rest (if any) open
    the next one. Costs one ``(A, B)`` product of the block per chain, a second only in a block
    that crosses a boundary (the sampler's usual blocks of ``size`` draws cross none).
    Returns ``(sums, new open, open counts)``."""
    rank = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
    boundary = size - state.open_count  # rank of the block's first draw in the next batch
    counts = jnp.sum(mask, axis=1, dtype=jnp.int32)
    before = jnp.where(rank < boundary[:, None], weights, 0)
    after = weights - before

    def chain(sums, inputs):
        delta_a, delta_b, before, after, crossing, crossed, *opened = inputs
        merged = tuple(o + x for o, x in zip(opened, _raw_batch(delta_a, delta_b, before,
                                                                 correlation)))
        closed = _closed_batch(sums, merged, correlation)
        sums = tuple(jnp.where(crossed, x, y) for x, y in zip(closed, sums))
        rest = jax.lax.cond(crossing, lambda: _raw_batch(delta_a, delta_b, after, correlation),
                            lambda: tuple(jnp.zeros_like(x) for x in merged))
        return sums, tuple(jnp.where(crossed, x, y) for x, y in zip(rest, merged))

    initial = (state.vector_a, state.vector_b, state.matrix, state.num_batches,
               state.sum_squared_weights)
    total = state.open_count + counts
    sums, new_open = jax.lax.scan(chain, initial, (delta_a, delta_b, before, after,
                                                   counts > boundary, total >= size, *old_open))
    return sums, new_open, total % size


def close_batch_means(state: BatchMeansState) -> BatchMeansState:
    """``state`` with every chain's open (partial) batch closed, as at the end of the draws
    (the last batch of a chain may be shorter). Closing twice changes nothing."""
    correlation = state.vector_a.shape[0] > 3

    def close(sums, raw):
        return _closed_batch(sums, raw, correlation), None

    sums = (state.vector_a, state.vector_b, state.matrix, state.num_batches,
            state.sum_squared_weights)
    raws = (state.open_weight, state.open_a, state.open_b, state.open_matrix)
    (vector_a, vector_b, matrix, num_batches, squared), _ = jax.lax.scan(close, sums, raws)
    return state._replace(
        num_batches=num_batches, sum_squared_weights=squared, vector_a=vector_a,
        vector_b=vector_b, matrix=matrix, open_count=jnp.zeros_like(state.open_count),
        open_weight=jnp.zeros_like(state.open_weight), open_a=jnp.zeros_like(state.open_a),
        open_b=jnp.zeros_like(state.open_b), open_matrix=jnp.zeros_like(state.open_matrix))


def _batch_sums(count, u, v, product, f, g, correlation: bool):
    """The rows of ``vector_a``, ``vector_b``, ``matrix`` that one batch adds."""
    squared = count * count
    rows_a = [count * u, squared * u, squared * u * u]
    rows_b = [count * v, squared * v, squared * v * v]
    column_u, row_v = u[:, None], v[None, :]
    rows = [squared * product, squared * product * product, squared * product * column_u,
            squared * product * row_v, squared * column_u * row_v]
    if correlation:
        rows_a += [count * f, squared * f, squared * u * f, squared * f * f]
        rows_b += [count * g, squared * g, squared * v * g, squared * g * g]
        column_f, row_g = f[:, None], g[None, :]
        rows += [squared * product * column_f, squared * product * row_g,
                 squared * column_u * row_g, squared * column_f * row_v,
                 squared * column_f * row_g]
    return jnp.stack(rows_a), jnp.stack(rows_b), jnp.stack(rows)


def _batch_means_init(shapes: Mapping[str, jax.ShapeDtypeStruct], stream_a: str, stream_b: str,
                      batch_size: int | None, correlation: bool) -> BatchMeansState:
    """The empty :class:`BatchMeansState` of :func:`batch_means` for these stream shapes."""
    shape_a, dtype_a = _stream_shape(shapes, stream_a)
    shape_b, dtype_b = _stream_shape(shapes, stream_b)
    if shape_a[0] != shape_b[0]:
        raise ValueError(f"streams have different numbers of chains: {shape_a}, {shape_b}")
    dtype = jnp.promote_types(dtype_a, dtype_b)
    size_a, size_b = math.prod(shape_a[1:]), math.prod(shape_b[1:])
    rows = (7, 7, 10) if correlation else (3, 3, 5)
    open_rows = 2 if correlation else 1
    zero = jnp.zeros((), dtype)
    chains = shape_a[0] if batch_size is not None else 0  # None: no open batches
    return BatchMeansState(
        jnp.zeros((size_a,), dtype), jnp.zeros((size_b,), dtype), zero, zero, zero,
        jnp.zeros((rows[0], size_a), dtype), jnp.zeros((rows[1], size_b), dtype),
        jnp.zeros((rows[2], size_a, size_b), dtype), jnp.zeros(shape_a[:1], jnp.int32),
        jnp.zeros((chains,), dtype), jnp.zeros((chains, open_rows, size_a), dtype),
        jnp.zeros((chains, open_rows, size_b), dtype),
        jnp.zeros((chains, size_a, size_b), dtype),
    )


def _scanned_batches(state, old_open, delta_a, delta_b, weights, mask, size, carry, correlation,
                     reference_a, reference_b, block_total) -> BatchMeansState:
    """:func:`batch_means`' update for a block that may close several batches per chain: the
    block's draws are cut into batch slots (slot 0 continues each chain's open batch) and the
    closed ones are folded into the sums; the last, partial slot becomes the open batch."""
    dtype = state.total.dtype
    num_chains = mask.shape[0]
    (batches_a, batches_b, batch_weights), total = _aligned_batches(
        (delta_a, delta_b, weights), mask, state.open_count, size, carry)
    num_slots = batch_weights.shape[1]
    closed_slots = total // size if carry else jnp.full_like(total, num_slots)
    chain_index = jnp.repeat(jnp.arange(num_chains), num_slots)
    slot_index = jnp.tile(jnp.arange(num_slots), num_chains)

    def fold(sums, inputs):
        batch_a, batch_b, batch_w, chain, slot = inputs
        raw = _raw_batch(batch_a, batch_b, batch_w, correlation)
        if carry:  # slot 0 continues the chain's open batch
            continued = (slot == 0).astype(dtype)
            raw = tuple(x + continued * o[chain] for x, o in zip(raw, old_open))
        closed = (slot < closed_slots[chain]).astype(dtype)
        return _closed_batch(sums, tuple(closed * x for x in raw), correlation), None

    initial = (state.vector_a, state.vector_b, state.matrix, state.num_batches,
               state.sum_squared_weights)
    flat = lambda x: x.reshape(num_chains * num_slots, *x.shape[2:])  # noqa: E731
    (vector_a, vector_b, matrix, num_batches, squared), _ = jax.lax.scan(
        fold, initial,
        (flat(batches_a), flat(batches_b), flat(batch_weights), chain_index, slot_index),
    )
    if carry:  # each chain's new open batch: slot total // size, plus the old one in slot 0
        rows = jnp.arange(num_chains)
        new_open = jax.vmap(partial(_raw_batch, correlation=correlation))(
            batches_a[rows, closed_slots], batches_b[rows, closed_slots],
            batch_weights[rows, closed_slots])
        continued = (closed_slots == 0).astype(dtype)
        new_open = tuple(x + continued.reshape((-1,) + (1,) * (x.ndim - 1)) * o
                         for x, o in zip(new_open, old_open))
    else:
        new_open = old_open
    open_count = total % size if carry else jnp.zeros_like(total)
    return BatchMeansState(reference_a, reference_b, state.total + block_total, num_batches,
                           squared, vector_a, vector_b, matrix, open_count, *new_open)


def batch_means(
    stream_a: str, stream_b: str, *, batch_size: int | None = None, correlation: bool = False
) -> Accumulator:
    r"""Streaming sufficient statistics for the batch-means MCSE of a cross-covariance.

    Each chain's draws (those of positive weight) are cut into batches of ``batch_size``
    consecutive draws, counted from its first draw across blocks: a batch left open at the end
    of a block is continued by the next one, so the batches, and the error bars, are those of
    :func:`covariance_mcse_of_draws` with the same ``batch_size`` whatever the block length
    (the sampler shrinks its blocks to fit memory). Only sums over closed batches are kept
    (:class:`BatchMeansState`: ``5`` ``(A, B)`` matrices, ``10`` with ``correlation=True``,
    whatever the number of draws), plus each chain's open batch (``(C, A, B)``);
    :func:`batch_means_mcse` turns them into standard errors; see it for the algebra.

    Args:
      stream_a, stream_b: stream names (may be equal).
      batch_size: draws per batch and chain; ``None``: one batch per block and chain (nothing
        carried over).
      correlation: also keep the statistics a correlation's MCSE needs.

    Returns:
      An :class:`Accumulator` whose ``finalize`` returns the :class:`BatchMeansState`.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")

    init = partial(_batch_means_init, stream_a=stream_a, stream_b=stream_b,
                   batch_size=batch_size, correlation=correlation)

    def update(state: BatchMeansState, block, weights) -> BatchMeansState:
        block_len = jnp.shape(weights)[1]
        if block_len == 0:
            return state
        dtype = state.total.dtype
        mask, weights, block_count = _mask_and_weights(weights, dtype)
        num_chains = mask.shape[0]

        def flat(stream):
            values = jnp.asarray(block[stream]).astype(dtype)
            return values.reshape(num_chains, block_len, -1)

        values_a, values_b = flat(stream_a), flat(stream_b)
        block_total = jnp.sum(block_count)
        first = state.total == 0

        def reference(values, current):
            pooled = jnp.sum(jnp.where(mask[:, :, None], weights[:, :, None] * values, 0), (0, 1))
            return jnp.where(first, _safe_divide(pooled, block_total), current)

        reference_a = reference(values_a, state.reference_a)
        reference_b = reference(values_b, state.reference_b)
        mask3 = mask[:, :, None]
        delta_a = jnp.where(mask3, values_a - reference_a[None, None, :], 0)
        delta_b = jnp.where(mask3, values_b - reference_b[None, None, :], 0)
        carry = batch_size is not None
        size = int(batch_size) if carry else block_len
        old_open = (state.open_weight, state.open_a, state.open_b, state.open_matrix)
        if carry and block_len <= size:  # at most one batch boundary per chain in the block
            sums, new_open, open_count = _continued_batch(
                state, old_open, delta_a, delta_b, weights, mask, size, correlation)
            return BatchMeansState(reference_a, reference_b, state.total + block_total,
                                   sums[3], sums[4], sums[0], sums[1], sums[2], open_count,
                                   *new_open)
        return _scanned_batches(state, old_open, delta_a, delta_b, weights, mask, size, carry,
                                correlation, reference_a, reference_b, block_total)

    return Accumulator(tuple(dict.fromkeys((stream_a, stream_b))), init, update,
                       close_batch_means)


def batch_means_mcse(
    state: BatchMeansState,
    mean_product: jax.Array,
    *,
    scale: jax.Array | float = 1.0,
    correlation: jax.Array | None = None,
    variance_a: jax.Array | None = None,
    variance_b: jax.Array | None = None,
) -> jax.Array:
    r"""Batch-means MCSE of a covariance (or correlation) from a :class:`BatchMeansState`.

    **Covariance.** The pooled covariance is :math:`\hat K = s\,\bar P` with :math:`\bar P =
    \frac1N \sum_{c,t}(a_{ct} - \bar a)(b_{ct} - \bar b)^\top` (global means) and :math:`s` the
    ``ddof`` factor. Per batch :math:`b` (``m_b`` draws of one chain)
    :math:`P_b = \overline{(a - \bar a)(b - \bar b)^\top}_b`, so :math:`\bar P = \sum_b m_b P_b
    / N`. Batches much longer than the autocorrelation time are nearly independent, so
    (batch means, in its cluster-robust form for unequal :math:`m_b`)

    .. math::

        \mathrm{MCSE}(\hat K)^2 = s^2\,\frac{B}{B - 1}\,\frac{1}{N^2}\sum_b m_b^2
            (P_b - \bar P)^2 ,

    elementwise, :math:`B` the number of batches. Slow drift and autocorrelation longer than a
    draw make the :math:`P_b` scatter more, so they widen the error bar (a per-chain spread
    around the global mean does not see drift that all chains share).

    **Streaming with an unknown final mean.** :math:`\bar a` is known only at the end. With
    fixed references :math:`r, s` and the batch features :math:`u_b, v_b, E_b` of
    :class:`BatchMeansState`, :math:`\bar u = \bar a - r = \sum m_b u_b / N`,

    .. math::

        P_b = E_b - u_b \bar v^\top - \bar u v_b^\top + \bar u \bar v^\top, \qquad
        P_b - \bar P = (E_b - \bar E) - (u_b - \bar u)\bar v^\top - \bar u (v_b - \bar v)^\top

    exactly (:math:`\bar E = \bar P + \bar u \bar v^\top`). So :math:`P_b - \bar P = \sum_k c_k
    (f_{k,b} - \bar f_k)` is linear in the features :math:`f = (E, u, v)` with coefficients
    :math:`c = (1, -\bar v_j, -\bar u_i)` known at the end, and

    .. math::

        \sum_b m_b^2 (P_b - \bar P)^2 = \sum_{k,l} c_k c_l \Big[S_{kl} - \bar f_k S_l -
            \bar f_l S_k + \bar f_k \bar f_l S_0\Big], \quad S_{kl} = \sum_b m_b^2 f_k f_l,\
            S_k = \sum_b m_b^2 f_k,\ S_0 = \sum_b m_b^2 .

    These sums are what the state holds: ``O(A B)``, never ``O(draws)``. No approximation is
    made: centring at a reference instead (e.g. the first batch's mean) would add
    :math:`(\bar v_j - s_j)^2 \mathrm{Var}(u_b)`-type terms, first order in the distance of the
    reference from the final mean, which is not small under drift.

    **Correlation** (delta method). :math:`\hat R = \hat K_{ab}/\sqrt{\hat K_{aa}\hat K_{bb}}`
    moves by :math:`\delta R = x\,\delta P_{ab} + y\,\delta P_{aa} + z\,\delta P_{bb}` with
    :math:`x = s/\sqrt{K_{aa}K_{bb}}`, :math:`y = -R s/(2K_{aa})`, :math:`z = -R s/(2K_{bb})`;
    the same batch-means sum is taken of :math:`L_b = x P^{ab}_b + y P^{aa}_b + z P^{bb}_b`,
    with :math:`P^{aa}_b - \bar P^{aa} = (F_b - \bar F) - 2\bar u (u_b - \bar u)`: features
    :math:`(E, u, v, F, G)`, coefficients :math:`(x, -x\bar v - 2y\bar u, -x\bar u - 2z\bar v,
    y, z)`. The reported MCSE is the larger of this and :math:`(1 - \hat R^2)\,
    \mathrm{MCSE}(\hat K_{ab})/\sqrt{(1 + \hat R^2)\hat K_{aa}\hat K_{bb}}` (the delta
    method's value for Gaussian-tailed draws, :math:`\mathrm{Var}\,\hat R \approx
    (1 - R^2)^2/N`, since there :math:`\mathrm{Var}\,\hat K_{ab} \approx K_{aa}K_{bb}(1 +
    R^2)/N`): with heavy-tailed
    losses the :math:`y, z` terms make the delta method's error bar depend on the noise in
    :math:`\hat R` itself, and on a model whose cross-task correlations are exactly 0 it was too
    small where :math:`\hat R` happened to be large (mean :math:`z^2` 2.2 instead of 1.4 over 16
    reruns; kurtosis of the losses 10-25). Entries with a zero variance get MCSE 0 (their
    correlation is defined as 0).

    Args:
      state: the :func:`batch_means` state (open batches are closed here).
      mean_product: ``(A, B)`` :math:`\bar P` (global centring, ``ddof=0``).
      scale: :math:`s`, e.g. :math:`N/(N - \mathrm{ddof})`.
      correlation, variance_a, variance_b: for a correlation's MCSE: ``(A, B)`` :math:`\hat R`
        and the ``(A,)``, ``(B,)`` variances :math:`\hat K_{aa}, \hat K_{bb}` it was made from
        (``state`` must come from ``batch_means(..., correlation=True)``).

    Returns:
      ``(A, B)`` standard errors (``nan`` with fewer than 2 batches).
    """
    state = close_batch_means(state)
    total = state.total
    mean = lambda row: _safe_divide(row, total)  # noqa: E731
    u_bar, v_bar = mean(state.vector_a[0]), mean(state.vector_b[0])
    squared = state.sum_squared_weights
    column = lambda x: x[:, None]  # noqa: E731
    row = lambda x: x[None, :]  # noqa: E731
    means = {"E": mean_product + column(u_bar) * row(v_bar), "u": column(u_bar), "v": row(v_bar)}
    sums = {"E": state.matrix[0], "u": column(state.vector_a[1]), "v": row(state.vector_b[1])}
    pairs = {("E", "E"): state.matrix[1], ("E", "u"): state.matrix[2],
             ("E", "v"): state.matrix[3], ("u", "v"): state.matrix[4],
             ("u", "u"): column(state.vector_a[2]), ("v", "v"): row(state.vector_b[2])}
    if correlation is None:
        coefficients = {"E": jnp.ones_like(mean_product), "u": -row(v_bar), "v": -column(u_bar)}
    else:
        f_bar, g_bar = mean(state.vector_a[3]), mean(state.vector_b[3])
        means.update(F=column(f_bar), G=row(g_bar))
        sums.update(F=column(state.vector_a[4]), G=row(state.vector_b[4]))
        pairs.update({("u", "F"): column(state.vector_a[5]), ("F", "F"): column(state.vector_a[6]),
                      ("v", "G"): row(state.vector_b[5]), ("G", "G"): row(state.vector_b[6]),
                      ("E", "F"): state.matrix[5], ("E", "G"): state.matrix[6],
                      ("u", "G"): state.matrix[7], ("F", "v"): state.matrix[8],
                      ("F", "G"): state.matrix[9]})
        positive = column(variance_a) * row(variance_b) > 0
        safe_a = column(jnp.where(variance_a > 0, variance_a, 1))
        safe_b = row(jnp.where(variance_b > 0, variance_b, 1))
        x = jnp.where(positive, scale / jnp.sqrt(safe_a * safe_b), 0)
        y = jnp.where(positive, -correlation * scale / (2 * safe_a), 0)
        z = jnp.where(positive, -correlation * scale / (2 * safe_b), 0)
        coefficients = {"E": x, "u": -x * row(v_bar) - 2 * y * column(u_bar),
                        "v": -x * column(u_bar) - 2 * z * row(v_bar), "F": y, "G": z}
        null = {"E": x, "u": -x * row(v_bar), "v": -x * column(u_bar)}
        scale = 1.0
    batches = state.num_batches
    factor = jnp.where(batches > 1, batches / jnp.where(batches > 1, batches - 1, 1), jnp.nan)
    factor = factor * _safe_divide(jnp.ones_like(total), total * total)

    def standard_error(coefficients):
        names = list(coefficients)
        sum_of_squares = jnp.zeros_like(mean_product)
        for i, k in enumerate(names):
            for l in names[i:]:
                pair = pairs[(k, l)] if (k, l) in pairs else pairs[(l, k)]
                centred = (pair - means[k] * sums[l] - means[l] * sums[k]
                           + means[k] * means[l] * squared)
                weight = coefficients[k] * coefficients[l] * (1 if k == l else 2)
                sum_of_squares = sum_of_squares + weight * centred
        return jnp.sqrt(factor * jnp.maximum(sum_of_squares, 0))

    if correlation is None:
        return jnp.abs(scale) * standard_error(coefficients)
    # Gaussian draws: MCSE(K_ab)^2 ≈ K_aa K_bb (1 + R²)/N, Var R ≈ (1 - R²)²/N
    return jnp.maximum(standard_error(coefficients),
                       (1 - correlation**2) / jnp.sqrt(1 + correlation**2)
                       * standard_error(null))


def _ddof_scale(total, num_groups, center: str, ddof: float):
    """:math:`N / (N - \\mathrm{ddof})` (global) or :math:`N / (N - \\mathrm{ddof}\\,C')`."""
    groups = 1 if center == "global" else num_groups
    denominator = total - ddof * groups
    return jnp.where(denominator > 0, total / jnp.where(denominator > 0, denominator, 1), jnp.nan)


def covariance_mcse_of_draws(
    a, b, *, center: str = "global", ddof: float = 1, batch_size: int | None = None,
    correlation: bool = False,
) -> jax.Array:
    r"""Batch-means MCSE of :func:`cross_covariance_of_draws` (or of the correlation).

    The draws of each chain are cut into batches of ``batch_size`` consecutive draws
    (default :data:`DEFAULT_BATCH_SIZE`, at most the number of draws; the last batch may be
    shorter) and

    .. math::

        \mathrm{MCSE}(\hat K)^2 = s^2\,\frac{B}{B-1}\,\frac{1}{N^2}\sum_b m_b^2 (P_b - \bar P)^2,
        \qquad P_b = \overline{(a - \bar a)(b - \bar b)^\top}_b

    computed directly (two passes, one batch at a time: memory ``O(A B)``); see
    :func:`batch_means_mcse` for the correlation's delta method and for the streaming form,
    which gives the same numbers. The batch products are centred on the global means for both
    ``center`` modes (with ``center="chain"`` the error bar then also counts offsets between
    chains, which that estimator removes: conservative when chains sit apart).

    Args:
      a, b: ``(C, D, *event_a)``, ``(C, D, *event_b)`` draws.
      center, ddof: those of the covariance whose MCSE is wanted.
      batch_size: draws per batch and chain.
      correlation: the MCSE of the correlation :math:`K_{ab}/\sqrt{K_{aa}K_{bb}}` instead.

    Returns:
      ``(*event_a, *event_b)`` standard errors (``nan`` with fewer than 2 batches).

    Examples:
      >>> import jax
      >>> from slt_jax import accumulators
      >>> draws = jax.random.normal(jax.random.key(0), (4, 512, 2))    # independent draws
      >>> mcse = accumulators.covariance_mcse_of_draws(draws, draws, batch_size=64)
      >>> bool(0.01 < float(mcse[0, 1]) < 0.04)                       # about 1/sqrt(2048)
      True
    """
    _check_center(center)
    a, b = jnp.asarray(a), jnp.asarray(b)
    if jnp.shape(a)[:2] != jnp.shape(b)[:2] or a.ndim < 2:
        raise ValueError(
            f"a and b must share (num_chains, num_draws): {jnp.shape(a)}, {jnp.shape(b)}"
        )
    size = _resolved_batch_size(batch_size, a.shape[1])
    if a.shape[0] * math.ceil(a.shape[1] / size) < 2:
        warnings.warn(
            f"a Monte Carlo standard error needs at least 2 batches; {a.shape[0]} chain(s) of "
            f"{a.shape[1]} draws in batches of {size} give 1, so it is nan: pass a smaller "
            "batch_size (longer than the draws' autocorrelation) or run more chains",
            RuntimeWarning, stacklevel=3)
    event = jnp.shape(a)[2:] + jnp.shape(b)[2:]
    return _covariance_mcse_of_draws(a, b, center, float(ddof), size, bool(correlation)).reshape(
        event)


def _resolved_batch_size(batch_size, num_draws: int) -> int:
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return max(1, min(int(batch_size), num_draws))


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _covariance_mcse_of_draws(a, b, center: str, ddof: float, batch_size: int,
                              correlation: bool) -> jax.Array:
    flat_a, flat_b = _flat_draws(a), _flat_draws(b)
    num_chains, num_draws = flat_a.shape[:2]
    total = num_chains * num_draws

    def centred(flat):
        flat = flat - flat[:1, :1]
        flat = flat - jnp.mean(flat, axis=(0, 1), keepdims=True)
        return flat - jnp.mean(flat, axis=(0, 1), keepdims=True)

    delta_a, delta_b = centred(flat_a), centred(flat_b)
    scale = _ddof_scale(jnp.asarray(total, delta_a.dtype), num_chains, center, ddof)
    mean_product = _matmul_transposed(delta_a.reshape(total, -1), delta_b.reshape(total, -1))
    mean_product = mean_product / total
    weights = jnp.ones((num_chains, num_draws), delta_a.dtype)
    if correlation:
        covariance_ = cross_covariance_of_draws(a, b, center=center, ddof=ddof)
        covariance_ = covariance_.reshape(mean_product.shape)
        variance_a = _elementwise_variance_of_draws(flat_a, center, ddof)
        variance_b = _elementwise_variance_of_draws(flat_b, center, ddof)
        positive = variance_a[:, None] * variance_b[None, :] > 0
        safe_a = jnp.where(variance_a > 0, variance_a, 1)[:, None]
        safe_b = jnp.where(variance_b > 0, variance_b, 1)[None, :]
        value = jnp.where(positive, covariance_ / jnp.sqrt(safe_a * safe_b), 0)
        x = jnp.where(positive, scale / jnp.sqrt(safe_a * safe_b), 0)
        y = jnp.where(positive, -value * scale / (2 * safe_a), 0)
        z = jnp.where(positive, -value * scale / (2 * safe_b), 0)
        mean_a = jnp.mean(delta_a * delta_a, axis=(0, 1))[:, None]
        mean_b = jnp.mean(delta_b * delta_b, axis=(0, 1))[None, :]
        mean_linear = x * mean_product + y * mean_a + z * mean_b
    else:
        x, mean_linear, value = scale, scale * mean_product, None

    def fold(carry, batch):
        batch_a, batch_b, batch_weights = batch
        count = jnp.sum(batch_weights)
        inverse = _safe_divide(jnp.ones_like(count), count)
        product = x * _matmul_transposed(batch_weights[:, None] * batch_a, batch_b) * inverse
        linear = product
        if correlation:
            square_a = jnp.sum(batch_weights[:, None] * batch_a**2, 0) * inverse
            square_b = jnp.sum(batch_weights[:, None] * batch_b**2, 0) * inverse
            linear = linear + y * square_a[:, None] + z * square_b[None, :]
        sum_of_squares, null_sum_of_squares, batches = carry
        return (sum_of_squares + count**2 * (linear - mean_linear) ** 2,
                null_sum_of_squares + count**2 * (product - x * mean_product) ** 2,
                batches + (count > 0).astype(batches.dtype)), None

    zeros = jnp.zeros_like(mean_product)
    (sum_of_squares, null_sum_of_squares, batches), _ = jax.lax.scan(
        fold, (zeros, zeros, jnp.zeros((), delta_a.dtype)),
        (_batches(delta_a, batch_size), _batches(delta_b, batch_size),
         _batches(weights, batch_size)),
    )
    factor = jnp.where(batches > 1, batches / jnp.where(batches > 1, batches - 1, 1), jnp.nan)
    mcse = jnp.sqrt(factor * sum_of_squares) / total
    if not correlation:
        return mcse
    # the Gaussian-tailed delta method as a floor (see batch_means_mcse)
    return jnp.maximum(mcse, (1 - value**2) / jnp.sqrt(1 + value**2)
                       * jnp.sqrt(factor * null_sum_of_squares) / total)


def _elementwise_variance_of_draws(flat: jax.Array, center: str, ddof: float) -> jax.Array:
    """``(A,)`` variances of ``(C, D, A)`` draws with the given centring (no ``(A, A)``)."""
    num_chains, num_draws = flat.shape[:2]
    flat = flat - flat[:1, :1]
    axes = (0, 1) if center == "global" else (1,)
    deviation = flat - jnp.mean(flat, axis=axes, keepdims=True)
    sums = jnp.sum(deviation, axis=axes, keepdims=True)
    group = num_chains * num_draws if center == "global" else num_draws
    squares = jnp.sum(deviation**2, axis=(0, 1)) - jnp.sum(sums**2, axis=(0, 1)) / group
    groups = 1 if center == "global" else num_chains
    denominator = num_chains * num_draws - ddof * groups
    return squares / denominator if denominator > 0 else jnp.full_like(squares, jnp.nan)


# ----------------------------------------------------------------------------------------------
# drift of per-element means over a run (for slt_jax.diagnostics.shared_drift)

#: time unit of :func:`linear_trend` (draws): keeps the powers of the time small in float32
_TIME_UNIT = 1024.0


class LinearTrendState(NamedTuple):
    r"""State of :func:`linear_trend`: sums over batches (weight :math:`m_b`, time
    :math:`\tau_b` = the batch's middle draw within its chain, in units of 1024 draws, feature
    :math:`u_b = \overline{(x - r)}_b`, :math:`F_b = \overline{(x - r)^2}_b`).

    Attributes:
      reference: ``(A,)`` the reference :math:`r` (pooled mean of the first block).
      count: ``(C,)`` weighted draws seen per chain (the time of the next draw).
      num_batches: number of batches with :math:`m_b > 0`.
      time: ``(8,)`` :math:`\sum m\tau^k` for ``k = 0, 1, 2`` and :math:`\sum m^2 \tau^k` for
        ``k = 0..4``: ``[Σm, Σmτ, Σmτ², Σm², Σm²τ, Σm²τ², Σm²τ³, Σm²τ⁴]``.
      first: ``(3, A)``: :math:`\sum m u`, :math:`\sum m \tau u`, :math:`\sum m F`.
      second: ``(7, A)``: :math:`\sum m^2 \tau^k u` (``k = 0..3``), :math:`\sum m^2 \tau^k u^2`
        (``k = 0..2``).
      open_count: ``(C,)`` int: draws (of positive weight) in each chain's open batch, which
        carries over to the next block; the sums above (except ``count`` and the linear
        :math:`\sum m u`, :math:`\sum m F`) count closed batches only, and
        :func:`close_linear_trend` (``finalize``) closes the open ones.
      open_weight: ``(C,)`` their :math:`m`.
      open_start: ``(C,)`` the weighted draws of the chain before its open batch.
      open_sum: ``(C, A)`` their :math:`\sum w (x - r)`.
    """

    reference: jax.Array
    count: jax.Array
    num_batches: jax.Array
    time: jax.Array
    first: jax.Array
    second: jax.Array
    open_count: jax.Array
    open_weight: jax.Array
    open_start: jax.Array
    open_sum: jax.Array


def _trend_sums(count, start, sums):
    """``(num_batches, time (8,), Σ m τ u (A,), second (7, A))`` added by batches of weights
    ``count`` (``(C, K)``), starting after ``start`` weighted draws, with ``Σ w (x - r)``
    ``sums`` (``(C, K, A)``)."""
    count, start, sums = count.reshape(-1), start.reshape(-1), sums.reshape(-1, sums.shape[-1])
    time = (start + count / 2) / _TIME_UNIT
    mean = sums * _safe_divide(jnp.ones_like(count), count)[:, None]
    squared = count * count
    powers = jnp.stack([time**k for k in range(5)])  # (5, K)
    time_sums = jnp.concatenate([powers[:3] @ count, powers @ squared])
    second = jnp.concatenate([
        (powers[:4] * squared[None, :]) @ mean,
        (powers[:3] * squared[None, :]) @ (mean * mean),
    ])
    return (jnp.sum(count > 0).astype(count.dtype), time_sums,
            jnp.sum((count * time)[:, None] * mean, 0), second)


@jax.jit  # one program per shape (eagerly it compiled ~25 small ones)
def close_linear_trend(state: LinearTrendState) -> LinearTrendState:
    """``state`` with every chain's open (partial) batch closed, as at the end of the draws.
    Closing twice changes nothing."""
    batches, time, moment, second = _trend_sums(
        state.open_weight[:, None], state.open_start[:, None], state.open_sum[:, None])
    return state._replace(
        num_batches=state.num_batches + batches, time=state.time + time,
        first=state.first.at[1].add(moment), second=state.second + second,
        open_count=jnp.zeros_like(state.open_count),
        open_weight=jnp.zeros_like(state.open_weight),
        open_start=state.count, open_sum=jnp.zeros_like(state.open_sum))


def linear_trend(stream: str, *, batch_size: int | None = None) -> Accumulator:
    r"""Streaming sums for the linear trend of each element's mean over a run.

    Batches are cut as in :func:`batch_means` (``batch_size`` draws per chain, continued across
    blocks, so the block length does not matter; the whole block when ``None``); each batch
    has a time :math:`\tau_b` (its middle draw, counted per chain from the first recorded
    draw: chains that start together share the time axis). The state
    (:class:`LinearTrendState`, ``O(A)``) holds the weighted sums from which
    :func:`slt_jax.diagnostics.shared_drift` fits :math:`u_b \approx \bar u + \beta (\tau_b
    - \bar\tau)` by weighted least squares and gets the slope's batch-means (cluster-robust)
    standard error, the posterior SD and the effective sample size of each element's mean.

    Args:
      stream: the stream (e.g. per-example losses ``(chains, q[, T])``).
      batch_size: draws per batch and chain; ``None``: one batch per block and chain.

    Returns:
      An :class:`Accumulator` whose ``finalize`` returns the :class:`LinearTrendState`.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")

    def init(shapes: Mapping[str, jax.ShapeDtypeStruct]) -> LinearTrendState:
        shape, dtype = _stream_shape(shapes, stream)
        size = math.prod(shape[1:])
        zero = jnp.zeros((), dtype)
        chains = jnp.zeros(shape[:1], dtype)
        return LinearTrendState(jnp.zeros((size,), dtype), chains, zero,
                                jnp.zeros((8,), dtype), jnp.zeros((3, size), dtype),
                                jnp.zeros((7, size), dtype), jnp.zeros(shape[:1], jnp.int32),
                                chains, chains, jnp.zeros((shape[0], size), dtype))

    def update(state: LinearTrendState, block, weights) -> LinearTrendState:
        block_len = jnp.shape(weights)[1]
        if block_len == 0:
            return state
        dtype = state.count.dtype
        mask, weights, block_count = _mask_and_weights(weights, dtype)
        num_chains = mask.shape[0]
        values = jnp.asarray(block[stream]).astype(dtype).reshape(num_chains, block_len, -1)
        block_total = jnp.sum(block_count)
        pooled = jnp.sum(jnp.where(mask[:, :, None], weights[:, :, None] * values, 0), (0, 1))
        first_block = jnp.sum(state.count) == 0
        reference = jnp.where(first_block, _safe_divide(pooled, block_total), state.reference)
        delta = jnp.where(mask[:, :, None], values - reference[None, None, :], 0)
        carry = batch_size is not None
        size = int(batch_size) if carry else block_len
        (batch_weighted, batch_weights), total = _aligned_batches(
            (weights[:, :, None] * delta, weights), mask, state.open_count, size, carry)
        count = jnp.sum(batch_weights, axis=2)  # (C, nb)
        sums = jnp.sum(batch_weighted, axis=2)  # (C, nb, A)
        num_slots = count.shape[1]
        if carry:  # slot 0 continues the chain's open batch
            count = count.at[:, 0].add(state.open_weight)
            sums = sums.at[:, 0].add(state.open_sum)
            before = state.open_start
        else:
            before = state.count
        start = before[:, None] + jnp.cumsum(count, axis=1) - count
        slots = jnp.arange(num_slots)[None, :]
        closed_slots = total // size if carry else jnp.full_like(total, num_slots)
        closed = slots < closed_slots[:, None]
        batches, time_sums, moment, second = _trend_sums(
            jnp.where(closed, count, 0), start, jnp.where(closed[:, :, None], sums, 0))
        linear = jnp.stack([jnp.sum(weights[:, :, None] * delta, (0, 1)), moment,
                            jnp.sum(weights[:, :, None] * delta**2, (0, 1))])
        if carry:
            is_open = (slots == closed_slots[:, None]).astype(dtype)
            open_weight = jnp.sum(is_open * count, 1)
            open_start = jnp.sum(is_open * start, 1)
            open_sum = jnp.sum(is_open[:, :, None] * sums, 1)
            open_count = total % size
        else:
            open_weight, open_sum = state.open_weight, state.open_sum
            open_start, open_count = state.count + block_count, state.open_count
        return LinearTrendState(
            reference, state.count + block_count, state.num_batches + batches,
            state.time + time_sums, state.first + linear, state.second + second, open_count,
            open_weight, open_start, open_sum,
        )

    return Accumulator((stream,), init, update, close_linear_trend)


def linear_trend_of_draws(draws, *, batch_size: int | None = None) -> LinearTrendState:
    """:func:`linear_trend` of stored draws ``(C, D, *event)`` with batches of ``batch_size``
    draws (default :data:`DEFAULT_BATCH_SIZE`): the same sums as the streaming form inside
    :func:`slt_jax.sample` with the same ``batch_size``, whatever its block length."""
    draws = jnp.asarray(draws)
    if draws.ndim < 2 or draws.shape[0] == 0 or draws.shape[1] == 0:
        raise ValueError(f"draws must have shape (num_chains, num_draws, *event), got "
                         f"{draws.shape}")
    return _linear_trend_of_draws(draws, _resolved_batch_size(batch_size, draws.shape[1]))


@partial(jax.jit, static_argnums=(1,))
def _linear_trend_of_draws(draws: jax.Array, batch_size: int) -> LinearTrendState:
    """One compiled program per shape and batch size (``streaming_reduce`` compiles per call)."""
    trend = linear_trend("x", batch_size=batch_size)
    num_chains, num_draws = draws.shape[:2]
    num_blocks = math.ceil(num_draws / batch_size)
    weights = jnp.ones((num_chains, num_draws), _accumulation_dtype(draws.dtype))
    state = trend.init({"x": jax.ShapeDtypeStruct((num_chains, *draws.shape[2:]), draws.dtype)})

    def step(state, inputs):
        values, block_weights = inputs
        return trend.update(state, {"x": values}, block_weights), None

    inputs = (_blocks_of(draws, num_blocks, batch_size),
              _blocks_of(weights, num_blocks, batch_size))
    return trend.finalize(jax.lax.scan(step, state, inputs)[0])
