r"""Loss kernel and Bayesian influence function (MATH.md §3–4).

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

:func:`estimate_bif` is the one-call form: calibrated like :func:`slt_jax.estimate_llc`, with
the LLC of the same run.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from slt_jax.accumulators import (
    Accumulator,
    covariance,
    cross_covariance,
    cross_covariance_of_draws,
)
from slt_jax.calibration import DEFAULT_SAFETY_FACTOR
from slt_jax.estimators.estimate import (
    _calibrated_setup,
    _sample_with_retries,
    _warnings_at_caller,
    run_hyperparameters,
)
from slt_jax.estimators.llc import LLCResult, llc
from slt_jax.samplers import Sampler
from slt_jax.sampling import num_examples

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
      hyperparameters: what produced the run: sampler and its hyperparameters, ``beta``,
        ``normalize``, ``center``, run lengths, the calibration.
      trace: the :class:`slt_jax.Trace`; its ``query_losses`` hold ``"train"`` and ``"query"``
        only with ``store_losses=True``.
    """

    bif: jax.Array
    llc: LLCResult
    hyperparameters: dict
    trace: Any


# ----------------------------------------------------------------------------------------------
# validation and shared algebra


def _check_center(center: str) -> None:
    if center not in _CENTERS:
        raise ValueError(f"center must be one of {_CENTERS}, got {center!r}")


def _check_beta(beta) -> float:
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise TypeError(f"beta must be a number, got {beta!r}") from None
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")
    return beta


def _check_event(name: str, shape: tuple, leading: str) -> None:
    """``shape`` is ``(*leading axes, q)`` or ``(*leading axes, q, T)``."""
    num_leading = len(leading.split(", "))
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


def loss_kernel(losses, *, normalize: bool = False, center: str = "global") -> jax.Array:
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

    Returns:
      ``(q, q)`` or ``(q, T, q, T)``.

    Example:
      >>> import jax, slt_jax.estimators.influence as influence
      >>> losses = jax.random.normal(jax.random.key(0), (2, 50, 3))
      >>> influence.loss_kernel(losses, normalize=True).shape
      (3, 3)
    """
    _check_center(center)
    _check_event("losses", jnp.shape(losses), "num_chains, num_draws")
    return _loss_kernel(jnp.asarray(losses), normalize=bool(normalize), center=center)


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
) -> jax.Array:
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
      beta: :math:`\beta = n\beta/n` of the posterior the draws come from (MATH.md §4).
      normalize: ``-Corr`` instead of ``-beta * Cov``.
      center: ``"global"`` or ``"chain"``.

    Returns:
      ``(n[, T], q[, T'])``.

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
    return _bif(jnp.asarray(train_losses), jnp.asarray(query_losses), beta,
                normalize=bool(normalize), center=center)


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


def loss_kernel_accumulator(
    stream: str, *, normalize: bool = False, center: str = "global"
) -> Accumulator:
    r"""Streaming :func:`loss_kernel` of a query stream, for ``slt.sample(accumulators=...)``.

    Wraps :func:`slt_jax.accumulators.covariance` (``ddof=1``); the state is
    ``O(chains * q + q^2)`` whatever the number of draws. ``finalize`` returns the ``(q, q)``
    (``(q, T, q, T)``) kernel, or its correlation with ``normalize=True``, equal to
    :func:`loss_kernel` of the same draws.

    Args:
      stream: the query set's name in ``slt.sample(query_data=...)``.
      normalize, center: as in :func:`loss_kernel`.

    Example:
      >>> import slt_jax.estimators.influence as influence
      >>> kernel = influence.loss_kernel_accumulator("probe", normalize=True)
      >>> kernel.streams
      ('probe',)
    """
    _check_center(center)
    inner = covariance(stream, center=center, ddof=DDOF)

    def finalize(state):
        return _finalize_kernel(state, normalize=bool(normalize), center=center)

    return Accumulator((stream,), _checked_init(inner, "loss_kernel_accumulator"),
                       inner.update, finalize)


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
    """

    cross: Any
    variances: tuple


def bif_accumulator(
    train_stream: str,
    query_stream: str,
    *,
    beta: float = 1.0,
    normalize: bool = False,
    center: str = "global",
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

    Args:
      train_stream, query_stream: query-set names in ``slt.sample(query_data=...)``.
      beta, normalize, center: as in :func:`bif`.

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
    checked_init = _checked_init(cross, "bif_accumulator")

    def init(shapes):
        return BIFAccumulatorState(checked_init(shapes), tuple(v.init(shapes) for v in variances))

    def update(state, block, weights):
        return BIFAccumulatorState(
            cross.update(state.cross, block, weights),
            tuple(v.update(s, block, weights) for v, s in zip(variances, state.variances)),
        )

    def finalize(state):
        return _finalize_bif(state, beta, normalize=bool(normalize), center=center)

    return Accumulator(tuple(dict.fromkeys(cross.streams)), init, update, finalize)


@partial(jax.jit, static_argnames=("normalize", "center"))
def _finalize_bif(state: BIFAccumulatorState, beta, *, normalize: bool, center: str):
    """One compiled program per shape (finalization runs on the host after sampling)."""
    cross = cross_covariance("train", "query", center=center, ddof=DDOF)
    covariance_ = cross.finalize(state.cross).covariance
    if not normalize:
        return -beta * covariance_
    variance = _elementwise_variance("stream", center)
    variance_train, variance_query = (variance.finalize(s) for s in state.variances)
    return -_flat_correlation(covariance_, variance_train, variance_query)


# ----------------------------------------------------------------------------------------------
# one call


def estimate_bif(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    train_data: PyTree,
    query_data: PyTree,
    *,
    key: jax.Array,
    beta: float | None = None,
    normalize: bool = False,
    center: str = "global",
    sampler: str | Sampler | None = None,
    nbeta: float | None = None,
    localization: float = 1.0,
    step_size: float | None = None,
    num_chains: int = 4,
    num_draws: int = 1000,
    num_burnin: int | None = None,
    batch_size: int | None | str = "auto",
    store_losses: bool = False,
    progress: bool = False,
) -> BIFResult:
    r"""Bayesian influence of every training example on every query example, in one call.

    .. math::

        \mathrm{BIF}(z_i, x) = -\beta\,\operatorname{Cov}_p\big(\ell_{z_i}(w), \ell_x(w)\big),
        \qquad p(w) \propto e^{-n\beta L_n(w) - \frac\gamma2 \lVert w - w^*\rVert^2},
        \qquad \beta = n\beta / n

    (Bayesian influence functions, arXiv 2509.26544; MATH.md §4). The chains sample the
    localized posterior of ``train_data`` at ``params`` with :func:`slt_jax.estimate_llc`'s
    defaults and step-size calibration (SGHMC, :math:`n\beta = n/\log n`, :math:`\gamma = 1`,
    batch ``min(n, 500)``, ``num_draws // 2`` burn-in, step size halved if a chain diverges).
    At each draw the per-example (per-token) losses of the whole training set and of the
    query set are streamed into :func:`bif_accumulator` (the ``(chains, draws, n)`` losses are
    kept only with ``store_losses=True``). Draws of all chains are pooled with ``ddof=1``:
    ``center="global"`` around the global mean (between-chain spread counts),
    ``center="chain"`` each chain around its own mean. The LLC of the same run,
    :math:`n\beta(\mathbb E_p[L_B] - L_n(w^*))` from the minibatch losses (:func:`slt_jax.llc`),
    comes with it. Cost per draw: ``loss_fn`` on all ``n`` training and ``q`` query examples
    (in chunks) and an ``(n, q)`` cross-product update; memory ``O(chains * (n + q) + n q)``.

    Mapping to devinterp: devinterp 2.x returns :math:`+\operatorname{Cov}` (no minus sign),
    defaults to the Pearson correlation, and its ``"stack"`` pooling does not centre chains
    separately. Here the default is :math:`-\beta\operatorname{Cov}`; ``normalize=True`` gives
    :math:`-\operatorname{Corr}` (minus devinterp's default); ``center="global"`` pools all
    draws around the global mean, ``center="chain"`` centres each chain on its own mean.

    Args:
      loss_fn: ``loss_fn(params, batch) -> (b,)`` or ``(b, T)`` per-example (per-token) losses.
      params: :math:`w^*`.
      train_data: the training set (sampled on, and the rows of the BIF); leading axis ``n``.
      query_data: the query set (the columns); leading axis ``q``.
      key: a ``jax.random.key``.
      beta: default :math:`n\beta/n`; ignored with ``normalize=True``.
      normalize: ``-Corr`` instead of ``-beta * Cov``.
      center: ``"global"`` or ``"chain"``.
      sampler, nbeta, localization, step_size, num_chains, num_draws, num_burnin, batch_size,
        progress: as in :func:`slt_jax.estimate_llc`.
      store_losses: keep the ``"train"`` and ``"query"`` losses in ``result.trace``.

    Returns:
      :class:`BIFResult` ``(bif, llc, hyperparameters, trace)``; ``bif`` is ``(n, q)``
      (``(n, T, q, T')`` per token).
    """
    start = time.perf_counter()
    _check_center(center)
    beta = None if beta is None else _check_beta(beta)
    setup = _calibrated_setup(
        loss_fn, params, train_data, key=key, sampler=sampler, nbeta=nbeta,
        localization=localization, step_size=step_size, sampler_options=None,
        safety_factor=DEFAULT_SAFETY_FACTOR, num_chains=num_chains, num_draws=num_draws,
        num_burnin=num_burnin, batch_size=batch_size, init_loss=None, progress=progress,
    )
    beta = setup.nbeta / setup.num_examples if beta is None else beta
    run = dict(
        setup.lengths, progress=progress,
        query_data={TRAIN_STREAM: train_data, QUERY_STREAM: query_data},
        accumulators={"bif": bif_accumulator(TRAIN_STREAM, QUERY_STREAM, beta=beta,
                                             normalize=normalize, center=center)},
        store=("loss", TRAIN_STREAM, QUERY_STREAM) if store_losses else ("loss",),
    )
    trace, chosen, retries = _sample_with_retries(
        loss_fn, params, train_data, setup.sampler, setup.sampling_key, run,
        3 if setup.calibration else 0,
    )
    llc_result = _warnings_at_caller(llc, trace, nbeta=setup.nbeta, init_loss=setup.init_loss)
    hyperparameters = run_hyperparameters(
        setup, chosen, retries, start, beta=beta, normalize=normalize, center=center,
        num_query_examples=num_examples(query_data),
    )
    llc_result = llc_result._replace(hyperparameters=hyperparameters)
    return BIFResult(trace.accumulators["bif"], llc_result, hyperparameters, trace)
