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
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = [
    "Accumulator",
    "CovarianceResult",
    "CrossCovarianceState",
    "MeanResult",
    "RunningMeanState",
    "covariance",
    "cross_covariance",
    "cross_covariance_of_draws",
    "mean_of_draws",
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
