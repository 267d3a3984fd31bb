r"""Loss kernel and Bayesian influence function (docs/mathematics.md §3–4).

Both are covariances of per-example (or per-token) losses :math:`\ell_x(w)` over draws of the
localized tempered posterior
:math:`p(w) \propto \exp(-n\beta L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2)`.

**Loss kernel** (arXiv 2509.26537), on a query set of :math:`q` examples:

.. math::

    K(x, x') = \operatorname{Cov}_p\big(\ell_x(w), \ell_{x'}(w)\big), \qquad
    R(x, x') = \frac{K(x, x')}{\sqrt{K(x, x)\,K(x', x')}}

with :math:`R := 0` where a variance is 0. :math:`K` is positive semi-definite.

**Bayesian influence function** (arXiv 2509.26544). Upweighting training example :math:`i` by
:math:`\epsilon_i` in :math:`\exp(-\beta\sum_j (1+\epsilon_j)\ell_j(w) - \tfrac\gamma2\lVert
w - w^*\rVert^2)`, with :math:`\beta = n\beta/n`, moves the posterior mean of an observable
:math:`\phi` (usually a query example's loss) by

.. math::

    \mathrm{BIF}(z_i, \phi) = \frac{\partial\,\mathbb E_p[\phi]}{\partial \epsilon_i}\Big|_{0}
        = -\beta\,\operatorname{Cov}_p\big(\ell_i(w), \phi(w)\big).

Negative means helpful (upweighting :math:`i` lowers :math:`\phi`), as for classical influence
functions. The correlation form (``normalize=True``) is :math:`-R(z_i, \phi)`; it has no
:math:`\beta`. Per-token losses :math:`\ell_{i,s}` give a ``(n, T, q, T')`` array; covariance is
bilinear, so summing it over both token axes gives the sequence-level BIF of the token-summed
losses exactly.

Pooling across chains
---------------------
Draws of all chains are pooled (``ddof=1``), by :mod:`slt_jax.accumulators`:

* ``center="global"`` (default): every draw is centred on the mean over all chains, so the
  spread *between* chain means counts as posterior spread (what a multi-modal posterior, e.g.
  at a developmental transition, needs);
* ``center="chain"``: each chain is centred on its own mean and the within-chain products are
  pooled (divided by :math:`N - C`), removing chain-to-chain offsets.

The array forms (:func:`loss_kernel`, :func:`bif`) are built on
:func:`slt_jax.accumulators.cross_covariance_of_draws`; the streaming forms
(:func:`loss_kernel_accumulator`, :func:`bif_accumulator`) on
:func:`slt_jax.accumulators.cross_covariance` / :func:`~slt_jax.accumulators.covariance`, so
``slt.sample(..., accumulators={"bif": bif_accumulator("train", "query")}, store=("loss",))``
never holds the ``(chains, draws, n)`` losses. The normalized BIF also needs the per-example
variances of both streams; they are kept elementwise (``O(chains * (n + q))``), never as an
``(n, n)`` matrix.

Error bars
----------
``return_mcse=True`` (array and streaming forms) gives ``(values, mcse)``: a Monte Carlo
standard error of every entry by **batch means**. Each chain's draws are cut into batches of
``batch_size`` consecutive draws (default 128 = the sampler's default block; the streaming
forms continue a batch across the sampler's blocks, so any block length gives the same
batches). With :math:`P_b` the batch mean of
the products :math:`(\ell_x - \bar\ell_x)(\ell_{x'} - \bar\ell_{x'})` around the global means,
:math:`m_b` its number of draws, :math:`N = \sum_b m_b` and :math:`B` batches,

.. math::

    \mathrm{MCSE}(\hat K_{xx'})^2 = s^2 \frac{B}{B-1} \frac{1}{N^2} \sum_b m_b^2
        (P_b - \bar P)^2, \qquad s = \frac{N}{N - \mathrm{ddof}\cdot\mathrm{groups}}

(the BIF's is :math:`\beta` times it). Batch means see autocorrelation and slow drift (they
make the :math:`P_b` scatter), which the spread of per-chain estimates around a global mean
does not. The products are centred on the global means for both ``center`` modes (with
``"chain"`` the bar also counts offsets between chains: conservative). The correlation's MCSE is
the delta method, floored by its Gaussian-tailed value :math:`(1 - R^2)\,\mathrm{MCSE}(K)/
\sqrt{(1 + R^2)K_{xx}K_{x'x'}}` (:math:`\approx (1 - R^2)/\sqrt{N_\mathrm{eff}}`); the
diagonal of a normalized kernel has MCSE 0. The streaming form keeps a few sums over batches
(:func:`slt_jax.accumulators.batch_means`; derivation in
:func:`slt_jax.accumulators.batch_means_mcse`) and equals the array form on the same draws.
Drift that all chains share (they all start at :math:`w^*`) biases entries in a way reruns from
:math:`w^*` repeat; :func:`slt_jax.diagnostics.shared_drift` detects it and warns when it
dominates entries.

:func:`estimate_bif` is the one-call form with no hyperparameters: the calibrated run of
:func:`slt_jax.estimate_llc` at :math:`n\beta = n` (:math:`\beta = 1`), an L2 penalty sampled
but not attributed (``regularization=λ``), the chains continued until the BIF's relative MCSE
is at most 0.05, an error bar on every entry and the LLC of the same run.
"""

from __future__ import annotations

import collections
import math
import time
import warnings
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._checks import (
    check_draws_for_covariance,
    check_int,
    check_positive_number,
    check_same_structure,
    warn_nonfinite_entries,
)
from slt_jax.accumulators import DEFAULT_BATCH_SIZE as MCSE_BATCH_SIZE
from slt_jax.accumulators import (
    Accumulator,
    batch_means,
    batch_means_mcse,
    covariance,
    covariance_mcse_of_draws,
    cross_covariance,
    cross_covariance_of_draws,
    linear_trend,
)
from slt_jax.adapters import as_params
from slt_jax.calibration import DEFAULT_SAFETY_FACTOR
from slt_jax.diagnostics import shared_drift
from slt_jax.estimators.estimate import (
    DEFAULT_BATCH_SIZE,
    NOISE_RERUN,
    NOISE_WARNING,
    _BurnInThenDraws,
    _calibrated_setup,
    _control_noise_at_end,
    batch_raised_by,
    _sample_with_retries,
    _warnings_at_caller,
    reported_noise_bias,
    run_hyperparameters,
)
from slt_jax.estimators.llc import LLCResult, llc
from slt_jax.samplers import Sampler
from slt_jax.sampling import num_examples, sample

PyTree = Any

__all__ = [
    "BIFResult",
    "bif",
    "bif_accumulator",
    "estimate_bif",
    "loss_kernel",
    "loss_kernel_accumulator",
]

_CENTERS = ("global", "chain")
#: the ``ddof`` of every covariance here (unbiased for independent draws)
DDOF = 1
#: stream names :func:`estimate_bif` gives the training set and the query set
TRAIN_STREAM, QUERY_STREAM = "train", "query"


class BIFResult(NamedTuple):
    """What :func:`estimate_bif` returns.

    Attributes:
      bif: ``(n, q)`` (``(n, T, q, T')`` per token) Bayesian influence of each training example
        on each query example's loss; negative = helpful.
      llc: the :class:`slt_jax.LLCResult` of the same run (its ``hyperparameters`` filled).
      hyperparameters: what produced the run and why: sampler and its hyperparameters,
        ``beta`` and ``nbeta`` (with ``"nbeta_reason"``), ``localization`` (with
        ``"localization_reason"``), ``regularization``, the draws (``num_draws`` in total per
        chain, ``"draws_reason"``, ``relative_mcse`` reached against ``relative_mcse_target``),
        ``normalize``, ``center``, the calibration, the end-of-run gradient-noise check.
      trace: the :class:`slt_jax.Trace` of the whole run (continuations joined); its
        ``query_losses`` hold ``"train"`` and ``"query"`` only with ``store_losses=True``.
      mcse: the Monte Carlo standard error of each entry of ``bif`` (same shape);
        ``hyperparameters["mcse_method"]`` says how it was computed.
    """

    bif: jax.Array
    llc: LLCResult
    hyperparameters: dict
    trace: Any
    mcse: jax.Array | None = None


# ----------------------------------------------------------------------------------------------
# validation and shared algebra


def _check_center(center: str) -> None:
    if center not in _CENTERS:
        raise ValueError(f"center must be one of {_CENTERS}, got {center!r}")


def _check_beta(beta) -> float:
    return check_positive_number("beta", beta)  # finite and > 0, also in float32


def _check_event(name: str, shape: tuple, leading: str) -> None:
    """``shape`` is ``(*leading axes, q)`` or ``(*leading axes, q, T)``."""
    num_leading = len(leading.split(", "))
    if num_leading == 2:  # (num_chains, num_draws, ...): a covariance needs two draws
        check_draws_for_covariance(name, shape)
    if len(shape) not in (num_leading + 1, num_leading + 2):
        raise ValueError(
            f"{name} must have shape ({leading}, q) per example or ({leading}, q, T) per "
            f"token, got shape {tuple(shape)}"
        )


def _shifted(losses: jax.Array) -> jax.Array:
    """``losses`` minus its first draw. Covariances are shift invariant; a loss that is the same
    at every draw becomes exactly 0, so its variance is exactly 0, not a rounding residue that
    would make its correlations arbitrary."""
    if losses.shape[0] == 0 or losses.shape[1] == 0:
        return losses
    return losses - losses[:1, :1]


def _correlation(covariance: jax.Array, variance_a: jax.Array, variance_b: jax.Array):
    r""":math:`K_{ab}/\sqrt{V_a V_b}` for a flat ``(A, B)`` covariance, 0 where a variance is 0
    (``nan`` stays ``nan``: too few draws for a covariance)."""
    scale = variance_a[:, None] * variance_b[None, :]
    positive = scale > 0
    return jnp.where(positive, covariance / jnp.sqrt(jnp.where(positive, scale, 1)), 0 * covariance)


def _flat_correlation(covariance: jax.Array, variance_a: jax.Array, variance_b: jax.Array):
    """:func:`_correlation` of a ``(*event_a, *event_b)`` covariance, variances flat."""
    flat = covariance.reshape(variance_a.size, variance_b.size)
    return _correlation(flat, variance_a, variance_b).reshape(covariance.shape)


def _kernel_correlation(kernel: jax.Array) -> jax.Array:
    """The correlation of a ``(*event, *event)`` covariance, from its diagonal."""
    size = math.isqrt(kernel.size)
    variance = jnp.diagonal(kernel.reshape(size, size))
    return _flat_correlation(kernel, variance, variance)


# ----------------------------------------------------------------------------------------------
# array forms


def loss_kernel(
    losses,
    *,
    normalize: bool = False,
    center: str = "global",
    return_mcse: bool = False,
    batch_size: int | None = None,
):
    r"""The loss kernel of stored per-example (per-token) losses (arXiv 2509.26537).

    .. math::

        K(x, x') = \operatorname{Cov}_p(\ell_x, \ell_{x'}), \qquad
        R(x, x') = K(x, x') / \sqrt{K(x, x) K(x', x')} \ (0 \text{ where a variance is } 0)

    Draws of all chains are pooled with ``ddof=1`` (see the module docstring).

    Args:
      losses: ``(num_chains, num_draws, q)`` or ``(num_chains, num_draws, q, T)``, e.g.
        ``trace.query_losses["probe"]``.
      normalize: return the correlation :math:`R` instead of the covariance :math:`K`.
      center: ``"global"`` (all draws around the global mean) or ``"chain"`` (each chain
        around its own mean).
      return_mcse: also return the Monte Carlo standard error of every entry (batch means,
        see "Error bars" in the module docstring).
      batch_size: draws per batch and chain for the MCSE (default
        :data:`slt_jax.accumulators.DEFAULT_BATCH_SIZE`, the sampler's block).

    Returns:
      ``(q, q)`` or ``(q, T, q, T)``; with ``return_mcse=True`` a pair ``(values, mcse)`` of
      that shape.

    Example:
      >>> import jax, slt_jax.estimators.influence as influence
      >>> losses = jax.random.normal(jax.random.key(0), (2, 50, 3))
      >>> influence.loss_kernel(losses, normalize=True).shape
      (3, 3)
    """
    _check_center(center)
    _check_event("losses", jnp.shape(losses), "num_chains, num_draws")
    values = _loss_kernel(jnp.asarray(losses), normalize=bool(normalize), center=center)
    warn_nonfinite_entries(values, "loss kernel", "query", "query")
    if not return_mcse:
        return values
    losses = _shifted(jnp.asarray(losses))
    mcse = covariance_mcse_of_draws(losses, losses, center=center, ddof=DDOF,
                                    batch_size=batch_size, correlation=bool(normalize))
    return values, _zero_correlation_diagonal(mcse) if normalize else mcse


def _zero_correlation_diagonal(mcse: jax.Array) -> jax.Array:
    """A correlation kernel's diagonal is 1 (or 0) by construction: its MCSE is 0."""
    size = math.isqrt(mcse.size)
    flat = mcse.reshape(size, size)
    return jnp.where(jnp.eye(size, dtype=bool), 0, flat).reshape(mcse.shape)


@partial(jax.jit, static_argnames=("normalize", "center"))
def _loss_kernel(losses: jax.Array, *, normalize: bool, center: str) -> jax.Array:
    losses = _shifted(losses)
    kernel = cross_covariance_of_draws(losses, losses, center=center, ddof=DDOF)
    return _kernel_correlation(kernel) if normalize else kernel


def _variances_of_draws(losses: jax.Array, center: str) -> jax.Array:
    """Flat per-element variances of ``(C, D, *event)`` draws (no ``(A, A)`` matrix)."""
    flat = losses.reshape(losses.shape[0], losses.shape[1], -1)
    return jax.vmap(
        lambda draws: cross_covariance_of_draws(draws, draws, center=center, ddof=DDOF),
        in_axes=2,
    )(flat)


def bif(
    train_losses,
    query_losses,
    *,
    beta: float = 1.0,
    normalize: bool = False,
    center: str = "global",
    return_mcse: bool = False,
    batch_size: int | None = None,
):
    r"""Bayesian influence of training examples on query losses (arXiv 2509.26544).

    .. math::

        \mathrm{BIF}(z_i, x) = -\beta\,\operatorname{Cov}_p\big(\ell_{z_i}(w), \ell_x(w)\big)
        \qquad(\text{normalize: } -\operatorname{Corr}_p)

    Negative = helpful. With ``normalize=True`` the result is minus the Pearson correlation
    and ``beta`` is ignored. Draws of all chains are pooled with ``ddof=1`` (see the module
    docstring for ``center``); per-token losses give per-token influences.

    Args:
      train_losses: ``(num_chains, num_draws, n)`` or ``(num_chains, num_draws, n, T)``.
      query_losses: ``(num_chains, num_draws, q)`` or ``(num_chains, num_draws, q, T')``, at
        the same draws.
      beta: :math:`\beta = n\beta/n` of the posterior the draws come from (docs/mathematics.md §4).
      normalize: ``-Corr`` instead of ``-beta * Cov``.
      center: ``"global"`` or ``"chain"``.
      return_mcse: also return the Monte Carlo standard error of every entry (batch means,
        see "Error bars" in the module docstring).
      batch_size: draws per batch and chain for the MCSE (default
        :data:`slt_jax.accumulators.DEFAULT_BATCH_SIZE`, the sampler's block).

    Returns:
      ``(n[, T], q[, T'])``; with ``return_mcse=True`` a pair ``(values, mcse)`` of that shape.

    Example:
      >>> import jax, slt_jax.estimators.influence as influence
      >>> keys = jax.random.split(jax.random.key(0))
      >>> train = jax.random.normal(keys[0], (2, 50, 4))
      >>> query = jax.random.normal(keys[1], (2, 50, 3, 5))
      >>> influence.bif(train, query, beta=0.1).shape
      (4, 3, 5)
    """
    _check_center(center)
    beta = _check_beta(beta)
    train_shape, query_shape = jnp.shape(train_losses), jnp.shape(query_losses)
    _check_event("train_losses", train_shape, "num_chains, num_draws")
    _check_event("query_losses", query_shape, "num_chains, num_draws")
    if train_shape[:2] != query_shape[:2]:
        raise ValueError(
            "train_losses and query_losses must come from the same draws (same num_chains, "
            f"num_draws), got shapes {train_shape} and {query_shape}"
        )
    values = _bif(jnp.asarray(train_losses), jnp.asarray(query_losses), beta,
                  normalize=bool(normalize), center=center)
    warn_nonfinite_entries(values, "BIF", "train", "query", row_dims=len(train_shape) - 2)
    if not return_mcse:
        return values
    mcse = covariance_mcse_of_draws(
        _shifted(jnp.asarray(train_losses)), _shifted(jnp.asarray(query_losses)), center=center,
        ddof=DDOF, batch_size=batch_size, correlation=bool(normalize),
    )
    return values, mcse if normalize else beta * mcse


@partial(jax.jit, static_argnames=("normalize", "center"))
def _bif(train_losses, query_losses, beta, *, normalize: bool, center: str) -> jax.Array:
    train_losses, query_losses = _shifted(train_losses), _shifted(query_losses)
    cross = cross_covariance_of_draws(train_losses, query_losses, center=center, ddof=DDOF)
    if not normalize:
        return -beta * cross
    return -_flat_correlation(
        cross, _variances_of_draws(train_losses, center), _variances_of_draws(query_losses, center)
    )


# ----------------------------------------------------------------------------------------------
# streaming forms


def _checked_init(accumulator: Accumulator, name: str) -> Callable:
    """``accumulator.init`` after checking that its streams are ``(chains, q[, T])`` losses."""

    def init(shapes):
        for stream in accumulator.streams:
            if stream in shapes:
                _check_event(f"{name}: stream {stream!r}", tuple(shapes[stream].shape),
                             "num_chains")
        return accumulator.init(shapes)

    return init


def _elementwise_variance(stream: str, center: str) -> Accumulator:
    """Streaming variance of each element of ``stream``: :func:`covariance` of a scalar stream
    ``vmap``-ed over the flattened event, so the state is ``O(chains * A)``, not ``(A, A)``.
    ``finalize`` returns the flat ``(A,)`` variances."""
    scalar = covariance("element", center=center, ddof=DDOF)

    def init(shapes):
        shape = tuple(shapes[stream].shape)
        one = scalar.init({"element": jax.ShapeDtypeStruct(shape[:1], shapes[stream].dtype)})
        size = math.prod(shape[1:])
        return jax.tree.map(lambda leaf: jnp.tile(leaf[None], (size,) + (1,) * leaf.ndim), one)

    def update(state, block, weights):
        values = jnp.asarray(block[stream])
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        return jax.vmap(
            lambda element_state, element: scalar.update(element_state, {"element": element},
                                                         weights),
            in_axes=(0, 2),
        )(state, flat)

    def finalize(state):
        return jax.vmap(lambda element_state: scalar.finalize(element_state).covariance)(state)

    return Accumulator((stream,), init, update, finalize)


class LossKernelAccumulatorState(NamedTuple):
    """State of :func:`loss_kernel_accumulator` with ``return_mcse=True``.

    Attributes:
      covariance: the :func:`slt_jax.accumulators.covariance` state of the stream.
      batch_means: the :func:`slt_jax.accumulators.batch_means` state (for the MCSE).
    """

    covariance: Any
    batch_means: Any


def _warn_values_nonfinite(result, *names, **options):
    """:func:`warn_nonfinite_entries` of the values of ``values`` or ``(values, mcse)``."""
    if isinstance(result, tuple):
        return (warn_nonfinite_entries(result[0], *names, **options), result[1])
    return warn_nonfinite_entries(result, *names, **options)


def loss_kernel_accumulator(
    stream: str,
    *,
    normalize: bool = False,
    center: str = "global",
    return_mcse: bool = False,
    batch_size: int | None = MCSE_BATCH_SIZE,
) -> Accumulator:
    r"""Streaming :func:`loss_kernel` of a query stream, for ``slt.sample(accumulators=...)``.

    Wraps :func:`slt_jax.accumulators.covariance` (``ddof=1``); the state is
    ``O(chains * q + q^2)`` whatever the number of draws. ``finalize`` returns the ``(q, q)``
    (``(q, T, q, T)``) kernel, or its correlation with ``normalize=True``, equal to
    :func:`loss_kernel` of the same draws. With ``return_mcse=True`` it returns
    ``(values, mcse)``, equal to ``loss_kernel(..., return_mcse=True, batch_size=batch_size)``
    whatever the block length (``slt.sample``'s ``draws_per_block``, default 128, fewer where
    memory is short; default ``batch_size`` 128 draws, the array form's): a batch left open at
    the end of a block is continued by the next (``None``: one batch per block and chain
    instead). The state then also holds the
    batch-means sums (:func:`slt_jax.accumulators.batch_means`: 5 more ``(q, q)`` matrices, 10
    with ``normalize=True``, and each chain's open batch, ``(chains, q, q)``), still
    independent of the number of draws.

    Args:
      stream: the query set's name in ``slt.sample(query_data=...)``.
      normalize, center: as in :func:`loss_kernel`.
      return_mcse: finalize to ``(values, mcse)``.
      batch_size: draws per batch and chain for the MCSE (default 128, as the array form;
        ``None``: one batch per block and chain).

    Example:
      >>> import slt_jax.estimators.influence as influence
      >>> kernel = influence.loss_kernel_accumulator("probe", normalize=True)
      >>> kernel.streams
      ('probe',)
    """
    _check_center(center)
    inner = covariance(stream, center=center, ddof=DDOF)
    checked_init = _checked_init(inner, "loss_kernel_accumulator")
    if not return_mcse:

        def finalize(state):
            return warn_nonfinite_entries(
                _finalize_kernel(state, normalize=bool(normalize), center=center),
                "loss kernel", "query", "query")

        return Accumulator((stream,), checked_init, inner.update, finalize)
    errors = batch_means(stream, stream, batch_size=batch_size, correlation=bool(normalize))

    def init_with_errors(shapes):
        return LossKernelAccumulatorState(checked_init(shapes), errors.init(shapes))

    def update_with_errors(state, block, weights):
        return LossKernelAccumulatorState(inner.update(state.covariance, block, weights),
                                          errors.update(state.batch_means, block, weights))

    def finalize_with_errors(state):
        return _warn_values_nonfinite(
            _finalize_kernel_with_mcse(state, normalize=bool(normalize), center=center),
            "loss kernel", "query", "query")

    return Accumulator((stream,), init_with_errors, update_with_errors, finalize_with_errors)


def _ddof_scale(count: jax.Array, center: str) -> jax.Array:
    r""":math:`N/(N - 1)` (``"global"``) or :math:`N/(N - C')` (``"chain"``): the factor from
    the ``ddof=0`` global covariance the batch means are taken of to the reported one."""
    total = jnp.sum(count)
    denominator = total - DDOF * (1 if center == "global" else jnp.sum(count > 0))
    return jnp.where(denominator > 0, total / jnp.where(denominator > 0, denominator, 1), jnp.nan)


@partial(jax.jit, static_argnames=("normalize", "center"))
def _finalize_kernel_with_mcse(state: LossKernelAccumulatorState, *, normalize: bool,
                               center: str):
    kernel = covariance("stream", center=center, ddof=DDOF).finalize(state.covariance).covariance
    mean_product = covariance("stream", center="global", ddof=0).finalize(
        state.covariance).covariance
    size = math.isqrt(kernel.size)
    flat, mean_product = kernel.reshape(size, size), mean_product.reshape(size, size)
    scale = _ddof_scale(state.covariance.count, center)
    if not normalize:
        return kernel, batch_means_mcse(state.batch_means, mean_product,
                                        scale=scale).reshape(kernel.shape)
    variance = jnp.diagonal(flat)
    correlation = _correlation(flat, variance, variance)
    mcse = batch_means_mcse(state.batch_means, mean_product, scale=scale,
                            correlation=correlation, variance_a=variance, variance_b=variance)
    return (correlation.reshape(kernel.shape),
            _zero_correlation_diagonal(mcse.reshape(kernel.shape)))


@partial(jax.jit, static_argnames=("normalize", "center"))
def _finalize_kernel(state, *, normalize: bool, center: str) -> jax.Array:
    """One compiled program per shape (finalization runs on the host after sampling)."""
    kernel = covariance("stream", center=center, ddof=DDOF).finalize(state).covariance
    return _kernel_correlation(kernel) if normalize else kernel


class BIFAccumulatorState(NamedTuple):
    """State of :func:`bif_accumulator`.

    Attributes:
      cross: the :func:`slt_jax.accumulators.cross_covariance` state of (train, query).
      variances: ``()``, or with ``normalize=True`` the elementwise variance states of the
        train and the query stream.
      batch_means: ``()``, or with ``return_mcse=True`` a 1-tuple holding the
        :func:`slt_jax.accumulators.batch_means` state of (train, query).
    """

    cross: Any
    variances: tuple
    batch_means: Any = ()


def bif_accumulator(
    train_stream: str,
    query_stream: str,
    *,
    beta: float = 1.0,
    normalize: bool = False,
    center: str = "global",
    return_mcse: bool = False,
    batch_size: int | None = MCSE_BATCH_SIZE,
) -> Accumulator:
    r"""Streaming :func:`bif` of two query streams, for ``slt.sample(accumulators=...)``.

    .. math::

        \mathrm{BIF} = -\beta\,\operatorname{Cov}_p(\ell_{\text{train}}, \ell_{\text{query}})
        \qquad(\text{normalize: } -\operatorname{Corr}_p,\ \beta \text{ ignored})

    Wraps :func:`slt_jax.accumulators.cross_covariance` (``ddof=1``): the state is
    ``O(chains * (n + q) + n q)`` whatever the number of draws (with ``normalize=True`` plus
    elementwise variances, ``O(chains * (n + q))``), so
    ``slt.sample(..., query_data={"train": train, "query": query},
    accumulators={"bif": bif_accumulator("train", "query", beta=beta)}, store=("loss",))``
    gives ``trace.accumulators["bif"]`` (``(n[, T], q[, T'])``, equal to :func:`bif` of the
    same draws) without holding ``(chains, draws, n)``. ``beta`` is only used by ``finalize``
    (which runs after the compiled program), so a new ``beta`` recompiles nothing.

    With ``return_mcse=True`` ``finalize`` returns ``(values, mcse)``, equal to
    ``bif(..., return_mcse=True, batch_size=batch_size)`` whatever the block length
    (``slt.sample``'s ``draws_per_block``, default 128, fewer where memory is short): a batch
    left open at the end of a block is continued by the next (default ``batch_size`` 128 draws,
    the array form's; ``None``: one batch per block and chain instead). The state then also
    holds the batch-means sums of :func:`slt_jax.accumulators.batch_means`: 5 more ``(n, q)``
    matrices (10 with ``normalize=True``) and each chain's open batch (``(chains, n, q)``),
    independent of the number of draws.

    Args:
      train_stream, query_stream: query-set names in ``slt.sample(query_data=...)``.
      beta, normalize, center: as in :func:`bif`.
      return_mcse: finalize to ``(values, mcse)`` (see "Error bars" in the module docstring).
      batch_size: draws per batch and chain for the MCSE (default 128, as the array form;
        ``None``: one batch per block and chain).

    Example:
      >>> import slt_jax.estimators.influence as influence
      >>> influence.bif_accumulator("train", "query", beta=0.05).streams
      ('train', 'query')
    """
    _check_center(center)
    beta = _check_beta(beta)
    cross = cross_covariance(train_stream, query_stream, center=center, ddof=DDOF)
    variances = (
        (_elementwise_variance(train_stream, center), _elementwise_variance(query_stream, center))
        if normalize else ()
    )
    errors = (batch_means(train_stream, query_stream, batch_size=batch_size,
                          correlation=bool(normalize)),) if return_mcse else ()
    checked_init = _checked_init(cross, "bif_accumulator")

    def init(shapes):
        return BIFAccumulatorState(checked_init(shapes), tuple(v.init(shapes) for v in variances),
                                   tuple(e.init(shapes) for e in errors))

    def update(state, block, weights):
        return BIFAccumulatorState(
            cross.update(state.cross, block, weights),
            tuple(v.update(s, block, weights) for v, s in zip(variances, state.variances)),
            tuple(e.update(s, block, weights) for e, s in zip(errors, state.batch_means)),
        )

    def finalize(state):
        return _warn_values_nonfinite(
            _finalize_bif(state, beta, normalize=bool(normalize), center=center,
                          return_mcse=bool(return_mcse)),
            "BIF", "train", "query")

    return Accumulator(tuple(dict.fromkeys(cross.streams)), init, update, finalize)


@partial(jax.jit, static_argnames=("normalize", "center", "return_mcse"))
def _finalize_bif(state: BIFAccumulatorState, beta, *, normalize: bool, center: str,
                  return_mcse: bool = False):
    """One compiled program per shape (finalization runs on the host after sampling)."""
    cross = cross_covariance("train", "query", center=center, ddof=DDOF)
    covariance_ = cross.finalize(state.cross).covariance
    if normalize:
        variance = _elementwise_variance("stream", center)
        variance_train, variance_query = (variance.finalize(s) for s in state.variances)
        correlation = _flat_correlation(covariance_, variance_train, variance_query)
        values = -correlation
    else:
        values = -beta * covariance_
    if not return_mcse:
        return values
    errors = state.batch_means[0]
    mean_product = cross_covariance("train", "query", center="global", ddof=0).finalize(
        state.cross).covariance.reshape(errors.reference_a.size, errors.reference_b.size)
    scale = _ddof_scale(state.cross.count, center)
    if normalize:
        mcse = batch_means_mcse(errors, mean_product, scale=scale,
                                correlation=correlation.reshape(mean_product.shape),
                                variance_a=variance_train, variance_b=variance_query)
    else:
        mcse = beta * batch_means_mcse(errors, mean_product, scale=scale)
    return values, mcse.reshape(values.shape)


# ----------------------------------------------------------------------------------------------
# one call


#: relative MCSE of the BIF (:func:`_relative_mcse`) at which :func:`estimate_bif` stops drawing
DEFAULT_RELATIVE_MCSE = 0.05
#: draws per chain of :func:`estimate_bif`'s first run (continued while the MCSE is too large)
INITIAL_DRAWS = 1024
#: the most draws per chain :func:`estimate_bif` takes by itself
DEFAULT_MAX_DRAWS = 32000
#: a continuation asks for this factor more draws than the MCSE's 1/√draws law predicts
_EXTENSION_MARGIN = 1.2
#: continuations add whole blocks of the sampling program (``slt.sample``'s default
#: ``draws_per_block``), so every batch of the batch-means MCSE has the same length
_MIN_EXTENSION = 128


def _relative_mcse(values, mcse) -> float:
    r"""The size of a BIF's Monte Carlo error relative to its signal, one number.

    .. math::

        r = \frac{\lVert \mathrm{MCSE} \rVert_F}
                 {\lVert \mathrm{BIF} - \overline{\mathrm{BIF}} \rVert_F}

    where :math:`\overline{\mathrm{BIF}}` is the mean over training examples (axis 0) for each
    query entry: a constant per query does not change which training examples influence it
    (nor any rank correlation such as the LDS), so only the spread over training examples is
    signal. Independent entry errors of relative size :math:`r` lower the correlation of the
    scores with their noise-free values by about :math:`r^2/2` (0.5% at ``r = 0.1``).
    ``0`` when both are 0, ``inf`` when the BIF does not vary but its error is not 0.
    """
    values = np.asarray(values, np.float64)
    values = values.reshape(values.shape[0], -1)
    spread = float(np.linalg.norm(values - values.mean(axis=0, keepdims=True)))
    error = float(np.linalg.norm(np.asarray(mcse, np.float64)))
    if spread > 0:
        return error / spread
    return 0.0 if error == 0 else float("inf")


def _squared_norm(params) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(params))


def _penalized_loss(loss_fn, params, batch):
    r""":math:`\ell_i(w) + \tfrac{\lambda_i}{2}\lVert w\rVert^2`, :math:`\lambda_i` =
    ``batch["penalty"]`` (λ on the sampled training set, 0 on the streamed losses; data, so a
    new λ recompiles nothing). Per-token losses get it on every token, so their mean
    :math:`L_n` gets it once."""
    losses = loss_fn(params, batch["examples"])
    norm = _squared_norm(params)
    penalty = (0.5 * batch["penalty"].astype(norm.dtype) * norm).astype(losses.dtype)
    return losses + penalty.reshape(penalty.shape + (1,) * (losses.ndim - 1))


def _with_penalty(loss_fn, train_data, query_data, regularization: float):
    """``(sampled loss_fn, sampled data, train stream, query stream)``: without a penalty the
    user's own; with one, :func:`_penalized_loss` and data ``{"examples", "penalty"}`` whose
    flag is λ for the sampled data and 0 for both streams."""
    if regularization == 0:
        return loss_fn, train_data, train_data, query_data

    def flagged(data, value):
        return {"examples": data, "penalty": jnp.full((num_examples(data),), value)}

    return (_penalized(loss_fn), flagged(train_data, regularization),
            flagged(train_data, 0.0), flagged(query_data, 0.0))


#: the penalized wrapper of each recent ``loss_fn``: the same object for the same ``loss_fn``,
#: so the calibration's ``jax.jit`` programs (static ``loss_fn``, compared by identity) are
#: reused by the next call
_PENALIZED: "collections.OrderedDict[Any, Callable]" = collections.OrderedDict()
_PENALIZED_CACHE_SIZE = 128


def _penalized(loss_fn) -> Callable:
    try:
        wrapped = _PENALIZED.pop(loss_fn)
    except TypeError:  # an unhashable callable: a new wrapper (and new programs) every call
        return partial(_penalized_loss, loss_fn)
    except KeyError:
        wrapped = partial(_penalized_loss, loss_fn)
    _PENALIZED[loss_fn] = wrapped
    while len(_PENALIZED) > _PENALIZED_CACHE_SIZE:
        _PENALIZED.popitem(last=False)
    return wrapped


def _resumable(accumulator: Accumulator, state=None) -> Accumulator:
    """``accumulator`` whose ``init`` returns ``state`` (the raw state of a run whose chains are
    being continued, so both runs' draws are reduced as one run) and whose ``finalize`` returns
    the raw state. Its ``update`` is ``accumulator``'s own, so continuing compiles nothing."""

    def init(shapes):
        return accumulator.init(shapes) if state is None else state

    def finalize(raw_state):
        return raw_state

    return Accumulator(accumulator.streams, init, accumulator.update, finalize)


def _bif_with_error_bars(beta, normalize, center):
    """``(accumulator, finalize(raw_state) -> (bif, mcse), method)``: :func:`bif_accumulator`
    with ``return_mcse=True`` (batch means, batches of ``MCSE_BATCH_SIZE`` draws per chain
    continued across blocks and continuations, whatever block length the sampler chose)."""
    accumulator = bif_accumulator(TRAIN_STREAM, QUERY_STREAM, beta=beta, normalize=normalize,
                                  center=center, return_mcse=True, batch_size=MCSE_BATCH_SIZE)
    method = (f"batch means (bif_accumulator(return_mcse=True, batch_size={MCSE_BATCH_SIZE}): "
              f"batches of {MCSE_BATCH_SIZE} consecutive draws per chain)")
    return accumulator, accumulator.finalize, method


def _joined(traces: list):
    """One :class:`~slt_jax.Trace` of a run and its continuations (draws joined)."""
    if len(traces) == 1:
        return traces[0]

    def joined(arrays):  # on the host: a jnp.concatenate would compile for every new length
        if arrays[0] is None:
            return None
        return jax.device_put(np.concatenate([np.asarray(a) for a in arrays], axis=1))

    last = traces[-1]
    return last._replace(
        loss=joined([t.loss for t in traces]),
        center_loss=joined([t.center_loss for t in traces]),
        observables={k: joined([t.observables[k] for t in traces]) for k in last.observables},
        query_losses={k: joined([t.query_losses[k] for t in traces])
                      for k in last.query_losses},
        hyperparameters=traces[0].hyperparameters,
    )


def _check_regularization(regularization) -> float:
    try:
        value = float(regularization)
    except (TypeError, ValueError):
        raise TypeError(f"regularization must be a number >= 0, got {regularization!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"regularization must be a finite number >= 0, got {regularization!r}")
    return value


def _check_relative_mcse(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"relative_mcse must be a number in (0, 1], got {value!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"relative_mcse must be in (0, 1], got {value!r}")
    return value


def _nbeta_reason(sampler, nbeta, n) -> str:
    if isinstance(sampler, Sampler):
        return "the given sampler's nbeta"
    if nbeta is not None:
        return "given"
    return (
        f"nβ = n = {n} (β = 1), the BIF paper's temperature: with the L2 penalty in the sampled "
        "loss the posterior is the Bayesian one of the training objective, and its BIF tends "
        "to (1/n)·Koh–Liang's influence with damping γ/nβ (Laplace limit); a hotter posterior "
        "adds higher-order terms (ridge n = 100: LDS 0.74 at nβ = n/log n, the LLC's default, "
        "0.87 at nβ = n, exact IF 0.89)"
    )


def _localization_reason(localization, nbeta, given) -> str:
    if given:
        return "given"
    return (
        f"γ = {localization:g}, the shared default of estimate_llc: it keeps the chains near w* "
        f"along flat directions, and adds only γ/nβ = {localization / nbeta:.3g} to the damping "
        "of the Koh–Liang limit"
    )


def _checked_bif_options(train_data, query_data, regularization, relative_mcse_target,
                         max_draws, num_draws):
    """``(regularization, target, max_draws, num_draws, n)``, each checked (clear errors
    before anything is compiled)."""
    regularization = _check_regularization(regularization)
    target = _check_relative_mcse(relative_mcse_target)
    max_draws = check_int("max_draws", max_draws, 1)
    if num_draws is not None:
        num_draws = check_int("num_draws", num_draws, 2)
    for name, data in (("train_data", train_data), ("query_data", query_data)):
        try:
            num_examples(data)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    return regularization, target, max_draws, num_draws, num_examples(train_data)


def _batch_reason(batch_size, n: int) -> str:
    """Why the run has its batch size (``estimate_llc``'s shared default, which
    :func:`slt_jax.estimators.estimate._calibrated_setup` applies)."""
    if batch_size == "auto" and n <= DEFAULT_BATCH_SIZE:
        return (f"full batch: n = {n} ≤ {DEFAULT_BATCH_SIZE}, and a minibatch of n drawn with "
                "replacement is not the full batch (its gradient noise heated the posterior: "
                "ridge n = 100 LDS 0.81 instead of 0.88)")
    if batch_size == "auto":
        return (f"{DEFAULT_BATCH_SIZE} (estimate_llc's), checked after the burn-in (raised "
                "before the draws where the gradient noise predicts a bias) and where the "
                "chains ended")
    return "given"


def _default_beta(beta, setup, loss_fn, params, train_data):
    r"""``(β, why)``: :math:`n\beta/n` per example; per token :math:`n\beta/(nT)`, since
    :math:`L_n` is the mean over examples *and* tokens, so the posterior is
    :math:`e^{-\frac{n\beta}{nT}\sum_{i,s}\ell_{i,s}}` and upweighting token :math:`(i, s)`
    moves :math:`\mathbb E[\phi]` by :math:`-\frac{n\beta}{nT}\operatorname{Cov}(\ell_{i,s},
    \phi)`."""
    if beta is not None:
        return beta, "given"
    first = jax.tree.map(lambda leaf: leaf[:1], train_data)
    tokens = math.prod(jax.eval_shape(loss_fn, params, first).shape[1:])
    beta = setup.nbeta / (setup.num_examples * tokens)
    if tokens == 1:
        return beta, "nβ/n: the upweighting of one example in exp(−β Σ_i ℓ_i)"
    return beta, (f"nβ/(n·T) with T = {tokens} tokens per example: L_n is the mean over "
                  "examples and tokens, so each token's loss enters as exp(−β Σ ℓ_(i,s))")


def _resumed(streaming: dict, states: dict | None = None) -> dict:
    """The accumulators of a run, each resuming from ``states`` (a continued run's raw states)."""
    return {name: _resumable(streamed, None if states is None else states[name])
            for name, streamed in streaming.items()}


def _draw_until_resolved(continue_sampling, run, trace, streaming, finalize, target, max_draws):
    """Continue the chains of ``trace`` (``initial_state=trace.state``, no burn-in, the
    accumulators resumed) until the BIF's relative MCSE is at most ``target`` or the chains
    have ``max_draws`` draws. Each continuation asks for the draws the :math:`1/\\sqrt N` law
    predicts (times ``_EXTENSION_MARGIN``), in whole blocks. Returns ``(traces, bif, mcse,
    relative MCSE)``."""
    traces, total = [trace], run["num_draws"]
    values, mcse = finalize(trace.accumulators["bif"])
    reached = _relative_mcse(values, mcse)
    while reached > target and total < max_draws and not np.all(trace.diverged):
        wanted = total * (_EXTENSION_MARGIN * (reached / target) ** 2 - 1)
        more = min(max_draws - total, _MIN_EXTENSION * max(1, math.ceil(wanted / _MIN_EXTENSION)))
        trace = continue_sampling(**{**run, "num_draws": more, "num_burnin": 0,
                                     "accumulators": _resumed(streaming, trace.accumulators)},
                                  initial_state=trace.state)
        traces.append(trace)
        total += more
        values, mcse = finalize(trace.accumulators["bif"])
        reached = _relative_mcse(values, mcse)
    return traces, values, mcse, reached


def _draws_reason(num_draws, reached, target, total, max_draws, runs) -> str:
    """Why the run has ``total`` draws per chain; warns where the cap stopped it first."""
    if num_draws is not None:
        return f"given: num_draws={num_draws}"
    if reached <= target:
        return (f"continued the chains until the BIF's relative MCSE (‖MCSE‖_F over the spread "
                f"of the BIF across training examples) was ≤ {target:g}: {reached:.3g} after "
                f"{total} draws per chain ({runs} run(s))")
    warnings.warn(
        f"estimate_bif: after {total} draws per chain the BIF's relative MCSE is {reached:.3g} "
        f"(target {target:g}): entries with |bif| < 2·mcse are not resolved. Raise max_draws "
        "or num_chains, or check that the chains mix (result.llc.rhat).",
        RuntimeWarning, stacklevel=3,
    )
    return (f"stopped at max_draws={max_draws} draws per chain with the relative MCSE at "
            f"{reached:.3g} > {target:g}")


class _MainRun(NamedTuple):
    """What :func:`_main_run` ran: the trace, the sampler it ran with (after any step-size
    halvings), the run's ``sample`` arguments (with the chosen batch), the key its chains
    continue with, and the gradient-noise evidence."""

    trace: Any
    sampler: Sampler
    retries: int
    run: dict
    key: jax.Array
    bias_after_burnin: float | None
    bias_at_end: float | None
    raised_from: int | None


def _main_run(loss_fn, params, data, setup, run, auto_batch, max_retries) -> _MainRun:
    """``estimate_llc``'s main-run policy (:class:`~slt_jax.estimators.estimate._BurnInThenDraws`):
    the burn-in without the BIF's streams, the batch chosen where the chains stand after it,
    the draws on the same chains (with the streams), divergence retries at half the step, and
    the end-of-run check, which reruns fresh chains only above
    :data:`~slt_jax.estimators.estimate.NOISE_WARNING` after that check (above
    :data:`~slt_jax.estimators.estimate.NOISE_RERUN` without it: full batch, a given batch,
    a burn-in under 64 steps)."""
    main = _BurnInThenDraws(loss_fn, params, data, setup, run, auto_batch)
    ran, chosen, retries = _sample_with_retries(
        loss_fn, params, data, setup.sampler, setup.sampling_key, run, max_retries,
        run_once=main if main.checks else None,
    )
    trace, run, bias_at_end, raised_from = _control_noise_at_end(
        loss_fn, params, data, setup, chosen, ran, main.run, auto_batch=auto_batch,
        rerun_above=NOISE_WARNING if main.checks else NOISE_RERUN,
        after_burnin=main.bias_after_burnin, raised_from=main.raised_from,
    )
    # a rerun's fresh chains ran on their own key; the main run's continue on the run's key
    key = (setup.sampling_key if trace is ran
           else jax.random.fold_in(setup.sampling_key, 11))
    return _MainRun(trace, chosen, retries, run, key, main.bias_after_burnin, bias_at_end,
                    raised_from)


def estimate_bif(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    train_data: PyTree,
    query_data: PyTree,
    *,
    key: jax.Array,
    regularization: float = 0.0,
    beta: float | None = None,
    normalize: bool = False,
    center: str = "global",
    sampler: str | Sampler | None = None,
    nbeta: float | None = None,
    localization: float | None = None,
    step_size: float | None = None,
    sampler_options: dict | None = None,
    num_chains: int = 4,
    num_draws: int | None = None,
    max_draws: int = DEFAULT_MAX_DRAWS,
    relative_mcse_target: float = DEFAULT_RELATIVE_MCSE,
    num_burnin: int | None = None,
    steps_per_draw: int = 1,
    batch_size: int | None | str = "auto",
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    max_retries: int = 3,
    mask: PyTree | None = None,
    store_losses: bool = False,
    progress: bool = False,
) -> BIFResult:
    r"""Bayesian influence of every training example on every query example, in one call.

    .. math::

        \mathrm{BIF}(z_i, x) = -\beta\,\operatorname{Cov}_p\big(\ell_{z_i}(w), \ell_x(w)\big),
        \qquad p(w) \propto e^{-n\beta\,[L_n(w) + \frac\lambda2\lVert w\rVert^2]
            - \frac\gamma2 \lVert w - w^*\rVert^2},
        \qquad \beta = n\beta / n

    (Bayesian influence functions, arXiv 2509.26544; docs/mathematics.md §4). :math:`\ell` is
    ``loss_fn`` without the penalty: upweighting example :math:`i` changes the data term, and
    the query's loss is what retraining measures.

    **Defaults, chosen from the data** (each with its reason in ``result.hyperparameters``):

    * :math:`n\beta = n` (:math:`\beta = 1`), the BIF paper's temperature: the Bayesian
      posterior of the training objective. Hotter posteriors (the LLC's :math:`n/\log n`) add
      higher-order terms: on the README's ridge regression the LDS was 0.74 at
      :math:`n/\log n` and 0.87 at :math:`n` (exact IF 0.89).
    * :math:`\gamma = 1` (``estimate_llc``'s), i.e. a damping :math:`\gamma/n\beta = 1/n`.
    * Draws: the chains run ``INITIAL_DRAWS`` (1024) draws after ``num_draws // 2`` burn-in
      steps and are then **continued** (same chains, ``sample(initial_state=...)``, nothing
      recompiles, the streamed BIF state carries on) until the BIF's relative MCSE
      :math:`\lVert\mathrm{MCSE}\rVert_F / \lVert\mathrm{BIF} - \overline{\mathrm{BIF}}
      \rVert_F` (the bar: the mean over training examples per query, which no ranking sees)
      is at most ``relative_mcse_target``, at most ``max_draws`` (32000) per chain (then a
      warning). Why 0.05: independent entry errors of relative size :math:`r` lower the
      correlation with any reference by about :math:`r^2/2` (0.1%), but errors shared by many
      entries (the posterior covariance estimated from finitely many draws) move a regression
      slope by about :math:`r/3`: at 0.1 the slope against Koh–Liang spread ±3% over keys,
      at 0.05 ±1.5%. On the README's cases this took 2.5k–30k draws per chain (seconds).
    * Sampler, step size, friction, batch size, divergence retries and the gradient-noise
      checks are the calibrated-run policy of :func:`slt_jax.estimate_llc` (SGHMC, BAOAB,
      step from the top Hessian eigenvalue), except that ``batch_size="auto"`` is the full
      batch for :math:`n \le 500` (a batch of :math:`n` drawn with replacement is not the
      full batch: its gradient noise heated the ridge posterior and lowered its LDS from 0.88
      to 0.81). Above 500 the batch is chosen **before the draws**, by ``estimate_llc``'s
      main run (:class:`~slt_jax.estimators.estimate._BurnInThenDraws`): the burn-in runs
      without the BIF's streams (its recorded last quarter measures the noise and enters
      nothing), the gradient-noise bias is predicted where the chains stand after it
      (``hyperparameters["gradient_noise_bias_after_burnin"]``), where 1.5 times it exceeds
      2% the batch is raised (``batch_size_raised_from``), and the draws continue the same
      chains with the streams (no new chains; a second call compiles nothing). Only where
      the prediction where the chains ended still exceeds 3% are the draws repeated with
      fresh chains at a larger batch (2% without the check after the burn-in). It used to
      run the draws first and repeat them above 2%: on a regression with n = 4000 at batch
      500 (nβ = 200, a given SGHMC step) that was a second run at batch 1500 with fresh
      chains; now the batch is 2000–2500 from the start
      and the BIF is the Gaussian posterior's within its error bars
      (``tests/test_bif_batch_policy.py``).
    * Checks: :func:`slt_jax.diagnostics.shared_drift` on the streamed trends of both streams'
      means warns when drift shared by all chains dominates entries
      (``hyperparameters["shared_drift_dominated_fraction"]``); ``result.mcse`` is the batch-means
      error bar of every entry.

    **An L2 penalty (a Gaussian prior)** belongs in ``regularization=λ``, not in ``loss_fn``:
    the chains then sample :math:`L_n + \frac\lambda2\lVert w\rVert^2` (prior
    :math:`N(0, (n\beta\lambda)^{-1} I)`) while the BIF is the covariance of the plain losses,
    the objective ``slt.evaluation.retrain_on_subsets(regularization=λ)`` retrains. Internally
    each example carries a penalty flag (λ for the sampled data, 0 for the streamed losses).
    Folding the penalty into ``loss_fn`` would add :math:`\frac\lambda2\lVert w\rVert^2` to
    every query "loss" too. The localization is *not* a substitute: it is centred at
    :math:`w^*`, an L2 prior at 0; they agree only where :math:`\nabla L_n(w^*) = 0`, and at a
    minimizer of the penalized objective :math:`\nabla L_n(w^*) = -\lambda w^* \ne 0`, so
    without the penalty the chains drift away from :math:`w^*`, held only by :math:`\gamma`.

    **Relation to Koh & Liang.** On a regular model at a minimizer :math:`w^*` of
    :math:`L_n + \frac\lambda2\lVert w\rVert^2` (Laplace limit, :math:`\Sigma =
    (n\beta(H + \lambda I) + \gamma I)^{-1}`, :math:`H = \nabla^2 L_n(w^*)`)

    .. math::

        -\beta\operatorname{Cov}_p(\ell_i, \ell_q) \approx -\frac1n\,\nabla\ell_q^\top
            \Big(H + \lambda I + \frac{\gamma}{n\beta} I\Big)^{-1}\nabla\ell_i,

    i.e. :math:`\frac1n` times Koh–Liang's :math:`\mathcal I_{\text{up,loss}}` damped by
    :math:`\lambda + \gamma/n\beta` (``slt.evaluation.exact_influence(loss_fn, ..., damping=λ +
    γ/nβ) / n``; the first-order term does not depend on :math:`\beta`, the next ones grow as
    :math:`1/n\beta`). Measured at the defaults (``benchmarks/results/bif_defaults.json``, 3
    keys): L2 logistic regression n = 400, 4 parameters: slope 0.992–1.013, Pearson 0.999;
    n = 100, 6 parameters: slope 1.050–1.068, Pearson 0.998, the posterior's own higher-order
    terms (0.997–1.020 at :math:`n\beta = 10n`).

    Mapping to devinterp: devinterp 2.x returns :math:`+\operatorname{Cov}` (no minus sign),
    defaults to the Pearson correlation, and its ``"stack"`` pooling does not centre chains
    separately. Here the default is :math:`-\beta\operatorname{Cov}`; ``normalize=True`` gives
    :math:`-\operatorname{Corr}` (minus devinterp's default); ``center="global"`` pools all
    draws around the global mean, ``center="chain"`` centres each chain on its own mean.

    Cost per draw: ``loss_fn`` on all ``n`` training and ``q`` query examples (in chunks) and
    an ``(n, q)`` cross-product update; memory ``O(chains * (n + q) + n q)``, plus each
    chain's open batch of the error bars (``(chains, n, q)``: batches of 128 draws continue
    across the sampler's blocks, which it shrinks for large ``n q``). The LLC of the same run (of
    the sampled, penalized objective) comes with it.

    Args:
      loss_fn: ``loss_fn(params, batch) -> (b,)`` or ``(b, T)`` per-example (per-token)
        losses, without any penalty.
      params: :math:`w^*` (a minimizer of the training objective, penalty included).
      train_data: the training set (sampled on, and the rows of the BIF); leading axis ``n``.
      query_data: the query set (the columns); leading axis ``q``.
      key: a ``jax.random.key``.
      regularization: :math:`\lambda \ge 0`, the L2 penalty of the training objective
        :math:`L_n + \frac\lambda2\lVert w\rVert^2` (every parameter leaf), sampled but not
        attributed (see above).
      beta: default :math:`n\beta/n` (per token :math:`n\beta/(nT)`, :math:`L_n` being the
        mean over examples and tokens); ignored with ``normalize=True``.
      normalize: ``-Corr`` instead of ``-beta * Cov``.
      center: ``"global"`` or ``"chain"``.
      sampler, step_size, sampler_options, num_chains, num_burnin, steps_per_draw, batch_size,
        safety_factor, max_retries, mask, progress: as in :func:`slt_jax.estimate_llc`
        (``mask``: only those coordinates are sampled, the BIF of the restricted posterior).
      nbeta: default ``n`` (see above).
      localization: :math:`\gamma`, default 1.
      num_draws: ``None`` (default): draw until the relative-MCSE target; an int:
        exactly that many draws per chain.
      max_draws: the most draws per chain with ``num_draws=None`` (default 32000).
      relative_mcse_target: the stopping rule's target (default 0.05).
      store_losses: keep the ``"train"`` and ``"query"`` losses in ``result.trace``.

    Returns:
      :class:`BIFResult` ``(bif, llc, hyperparameters, trace, mcse)``; ``bif`` and ``mcse``
      are ``(n, q)`` (``(n, T, q, T')`` per token).

    Example (a second or two, so not a doctest; ``tests/test_bif_defaults.py``)::

        result = slt.estimate_bif(loss_fn, w_star, train, query, key=jax.random.key(0),
                                  regularization=0.01)
        result.bif, result.mcse, result.hyperparameters["draws_reason"]
    """
    start = time.perf_counter()
    params = as_params(loss_fn, params)  # TrainResult, nnx.State, ... for adapters' loss_fns
    _check_center(center)
    check_same_structure(train_data, query_data, "query_data", "train_data")
    beta = None if beta is None else _check_beta(beta)
    regularization, target, max_draws, num_draws, n = _checked_bif_options(
        train_data, query_data, regularization, relative_mcse_target, max_draws, num_draws)
    ready = isinstance(sampler, Sampler)
    localization_given = localization is not None
    localization = 1.0 if localization is None else localization
    sampled_loss, sampled_data, train_stream, query_stream = _with_penalty(
        loss_fn, train_data, query_data, regularization)
    adaptive = num_draws is None
    first_draws = min(INITIAL_DRAWS, max_draws) if adaptive else num_draws
    batch_reason = _batch_reason(batch_size, n)
    setup = _calibrated_setup(
        sampled_loss, params, sampled_data, key=key, sampler=sampler,
        nbeta=nbeta if ready or nbeta is not None else float(n), localization=localization,
        step_size=step_size, sampler_options=sampler_options, safety_factor=safety_factor,
        num_chains=num_chains, num_draws=first_draws, num_burnin=num_burnin,
        batch_size=batch_size, init_loss=None, progress=progress, mask=mask,
    )
    beta, beta_reason = _default_beta(beta, setup, loss_fn, params, train_data)
    accumulator, finalize, mcse_method = _bif_with_error_bars(beta, bool(normalize), center)
    # the BIF with its error bars, and the trends of both streams' means (shared drift)
    streaming = {"bif": accumulator,
                 "train_trend": linear_trend(TRAIN_STREAM, batch_size=MCSE_BATCH_SIZE),
                 "query_trend": linear_trend(QUERY_STREAM, batch_size=MCSE_BATCH_SIZE)}
    run = dict(
        setup.lengths, steps_per_draw=steps_per_draw, progress=progress,
        query_data={TRAIN_STREAM: train_stream, QUERY_STREAM: query_stream},
        accumulators=_resumed(streaming),
        store=("loss", TRAIN_STREAM, QUERY_STREAM) if store_losses else ("loss",),
    )
    main = _main_run(sampled_loss, params, sampled_data, setup, run, batch_size == "auto",
                     max_retries if setup.calibration else 0)
    trace, chosen, retries, run = main.trace, main.sampler, main.retries, main.run
    # continue the same chains (and the same key: one long run) while the BIF is too noisy
    traces, values, mcse, reached = _draw_until_resolved(
        partial(sample, sampled_loss, params, sampled_data, chosen, key=main.key), run, trace,
        streaming, finalize, target if adaptive else float("inf"), max_draws,
    )
    total = sum(int(part.loss.shape[1]) for part in traces)  # draws per chain
    drift = _warnings_at_caller(shared_drift, traces[-1].accumulators["train_trend"],
                                traces[-1].accumulators["query_trend"])
    trace = _joined(traces)._replace(accumulators={"bif": values})
    draws_reason = _draws_reason(num_draws, reached, target, total, max_draws, len(traces))
    llc_result = _warnings_at_caller(llc, trace, nbeta=setup.nbeta, init_loss=setup.init_loss)
    hyperparameters = run_hyperparameters(
        setup, chosen, retries, start, steps_per_draw=steps_per_draw, beta=beta,
        beta_reason=beta_reason, nbeta_reason=_nbeta_reason(sampler, nbeta, n),
        localization_reason=("the given sampler's" if ready else
                             _localization_reason(localization, setup.nbeta, localization_given)),
        regularization=regularization, normalize=normalize, center=center,
        num_draws=total, initial_num_draws=first_draws, continuations=len(traces) - 1,
        max_draws=max_draws if adaptive else None, draws_reason=draws_reason,
        relative_mcse=reached, relative_mcse_target=target if adaptive else None,
        mcse_method=mcse_method, num_query_examples=num_examples(query_data),
        shared_drift_dominated_fraction=drift.dominated_fraction,
        gradient_noise_bias_at_end=main.bias_at_end,
        gradient_noise_bias=reported_noise_bias(main.bias_at_end, run["batch_size"], setup),
        gradient_noise_bias_after_burnin=main.bias_after_burnin,
        batch_size=run["batch_size"], batch_size_reason=batch_reason,
        batch_size_raised_from=batch_raised_by(setup, batch_size, main.raised_from),
    )
    llc_result = llc_result._replace(hyperparameters=hyperparameters)
    return BIFResult(values, llc_result, hyperparameters, trace, mcse)
