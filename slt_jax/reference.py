r"""A reference LLC from an exact (asymptotically unbiased) full-batch sampler: NUTS.

SGLD-family estimates of the local learning coefficient carry two kinds of error besides the
Monte Carlo noise: the *sampler* error (the step-size discretization bias of the Langevin
update and the extra noise of minibatch gradients) and the *finite-nβ* effect (the localized
tempered posterior at a finite :math:`n\beta` and :math:`\gamma > 0` is not the asymptotic
one, so even its exact expectation differs from the learning coefficient :math:`\lambda`).
:func:`nuts_llc` samples the *same* localized tempered posterior with the No-U-Turn Sampler
on the full data, whose Metropolis correction removes the discretization bias: comparing it
with an SGLD estimate isolates the sampler error, and comparing it with a closed-form
:math:`\lambda` (docs/mathematics.md §7) isolates the finite-nβ effect.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_jax._checks import check_int as _check_int, check_key as _check_key
from slt_jax.estimators.llc import LLCResult, llc
from slt_jax.samplers._base import check_positive
from slt_jax.sampling import (
    _chunked_mean_loss,
    check_loss_fn,
    check_params,
    evaluate_loss,
    num_examples,
)

PyTree = Any

__all__ = ["DEFAULT_MAX_PARAMETERS", "nuts_llc"]

DEFAULT_MAX_PARAMETERS = 5_000


def _check_positive(name: str, value, allow_zero: bool = False) -> float:
    check_positive(name, value, allow_zero=allow_zero)
    return float(value)


def nuts_llc(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    nbeta: float,
    localization: float = 1.0,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    init_loss: float | None = None,
    chunk_size: int = 4096,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
) -> LLCResult:
    r"""The LLC at ``params`` from NUTS draws of the localized tempered posterior (full batch).

    Samples

    .. math::

        p(w) \propto \exp\big(-U(w)\big),\qquad
        U(w) = n\beta\,L_n(w) + \frac{\gamma}{2}\lVert w - w^*\rVert^2,

    with the No-U-Turn Sampler (Hoffman & Gelman 2014, JMLR 15, arXiv 1111.4246; numpyro's
    implementation with step-size and diagonal (or dense) mass-matrix adaptation during
    ``num_warmup`` discarded iterations). :math:`L_n` is the mean loss over *all* of ``data``
    (no minibatches), so the chains target exactly the posterior of docs/mathematics.md §0, and the
    Metropolis-corrected Hamiltonian dynamics has no step-size bias. The estimate is the LLC
    of Lau et al. 2023 (arXiv 2308.12108):

    .. math::

        \hat\lambda(w^*) = n\beta\,\big(\mathbb E_{p}[L_n(w)] - L_n(w^*)\big),

    with :math:`L_n` evaluated on the full data at every recorded draw, reduced by
    :func:`slt_jax.llc` (per-chain means, MCSE from the effective sample size, split-R̂).

    **What it is for.** An SGLD-family estimate (:func:`slt_jax.estimate_llc`) differs from
    the learning coefficient :math:`\lambda` for two separate reasons: the sampler (the
    step-size discretization, :math:`\mathrm{Var}\approx 1/(P(1-\varepsilon P/4))` on a
    quadratic, and minibatch gradient noise) and the finite-:math:`n\beta`, :math:`\gamma > 0`
    posterior itself, whose exact expectation is not :math:`\lambda` (e.g. on a quadratic it is
    :math:`\tfrac12\sum_i n\beta a_i/(n\beta a_i+\gamma) < d/2`). This function estimates the
    exact expectation, so ``SGLD − NUTS`` measures the sampler error and
    ``NUTS − λ`` the finite-nβ effect. It runs gradient evaluations on the full data for every
    leapfrog step (hundreds per draw on stiff posteriors), so it is meant for small models:
    more than ``max_parameters`` parameters raise a ``ValueError``.

    Parameters are flattened with :func:`jax.flatten_util.ravel_pytree`; every chain starts at
    :math:`w^*` and the chains run vectorized in one program (``chain_method="vectorized"``).

    Args:
      loss_fn: ``loss_fn(params, batch) -> (b,)`` or ``(b, T)`` per-example (per-token) losses.
      params: the point :math:`w^*` to localize at (pytree of float arrays).
      data: pytree of arrays sharing a leading axis of length ``n``.
      key: a ``jax.random.key``.
      nbeta: :math:`n\beta > 0` (e.g. :func:`slt_jax.default_nbeta` of ``n``).
      localization: :math:`\gamma \ge 0`.
      num_chains, num_warmup, num_samples: NUTS chains, discarded adaptation iterations and
        recorded draws per chain.
      init_loss: :math:`L_n(w^*)`; computed on the full data in chunks if not given.
      chunk_size: examples per chunk when :math:`L_n` is evaluated (``lax.map`` over chunks),
        in the potential and at the recorded draws (then ``chunk_size // n`` draws at a time).
      target_accept_prob, max_tree_depth, dense_mass: numpyro NUTS settings.
      max_parameters: refuse models with more parameters than this (raise it deliberately).

    Returns:
      an :class:`slt_jax.LLCResult` whose ``hyperparameters`` record ``sampler="nuts"``, the
      adapted step size per chain, the mean number of leapfrog steps, tree depth and
      acceptance probability, and the number of divergent transitions (numpyro's energy-error
      criterion; such transitions are rejected, so they signal poor exploration, not a
      non-finite loss: a ``RuntimeWarning`` is issued if there are any).
    """
    start = time.perf_counter()
    check_params(params)
    n = num_examples(data)
    settings = _check_settings(
        nbeta=nbeta,
        localization=localization,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        chunk_size=chunk_size,
        max_tree_depth=max_tree_depth,
        max_parameters=max_parameters,
        target_accept_prob=target_accept_prob,
        dense_mass=dense_mass,
    )
    key = _check_single_key(key)
    center, unravel = _flatten_small_params(params, settings.max_parameters)
    loss_chunk = min(settings.chunk_size, n)
    check_loss_fn(loss_fn, params, data, loss_chunk)
    if init_loss is None:
        init_loss = float(evaluate_loss(loss_fn, params, data, chunk_size=loss_chunk))

    full_loss = _full_loss_function(loss_fn, unravel, data, n, loss_chunk)
    potential_fn = _potential_function(full_loss, center, settings)
    mcmc, samples, extras = _run_nuts(potential_fn, center, key, settings)
    losses = _losses_at_draws(full_loss, samples, settings.chunk_size, loss_chunk)
    result = llc(losses, nbeta=settings.nbeta, init_loss=init_loss)

    diagnostics = _nuts_diagnostics(mcmc, extras, settings)
    _warn_if_divergent(diagnostics["num_divergent"], settings)
    hyperparameters = _hyperparameters(settings, n, int(center.size), diagnostics)
    hyperparameters["wall_time_seconds"] = time.perf_counter() - start
    return result._replace(hyperparameters=hyperparameters)


class _Settings(NamedTuple):
    """``nuts_llc``'s validated hyperparameters (Python scalars)."""

    nbeta: float
    localization: float
    num_chains: int
    num_warmup: int
    num_samples: int
    chunk_size: int
    max_tree_depth: int
    max_parameters: int
    target_accept_prob: float
    dense_mass: bool


def _check_settings(
    *,
    nbeta,
    localization,
    num_chains,
    num_warmup,
    num_samples,
    chunk_size,
    max_tree_depth,
    max_parameters,
    target_accept_prob,
    dense_mass,
) -> _Settings:
    """Validate the hyperparameters (in this order, so the first bad one is the one reported)."""
    nbeta = _check_positive("nbeta", nbeta)
    localization = _check_positive("localization", localization, allow_zero=True)
    num_chains = _check_int("num_chains", num_chains, 1)
    num_warmup = _check_int("num_warmup", num_warmup, 0)
    num_samples = _check_int("num_samples", num_samples, 1)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    max_tree_depth = _check_int("max_tree_depth", max_tree_depth, 1)
    max_parameters = _check_int("max_parameters", max_parameters, 1)
    target_accept_prob = _check_positive("target_accept_prob", target_accept_prob)
    if target_accept_prob >= 1:
        raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob!r}")
    return _Settings(
        nbeta=nbeta,
        localization=localization,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        chunk_size=chunk_size,
        max_tree_depth=max_tree_depth,
        max_parameters=max_parameters,
        target_accept_prob=target_accept_prob,
        dense_mass=dense_mass,
    )


def _check_single_key(key) -> jax.Array:
    key = _check_key(key)
    if key.ndim != 0:
        raise ValueError(f"key must be a single PRNG key, got an array of shape {key.shape}")
    return key


def _flatten_small_params(params: PyTree, max_parameters: int) -> tuple[jax.Array, Callable]:
    """``ravel_pytree(params)``, refusing more than ``max_parameters`` parameters."""
    center, unravel = ravel_pytree(params)
    num_parameters = int(center.size)
    if num_parameters > max_parameters:
        raise ValueError(
            f"nuts_llc runs full-batch NUTS and is meant for small models: params have "
            f"{num_parameters} parameters, more than max_parameters={max_parameters}. Use "
            "slt_jax.estimate_llc (SGLD-family samplers) for large models, or pass a larger "
            "max_parameters deliberately."
        )
    return center, unravel


def _full_loss_function(loss_fn, unravel, data, n: int, loss_chunk: int) -> Callable:
    """``flat -> L_n(unravel(flat))`` on all of ``data``, in chunks of ``loss_chunk`` examples."""

    def full_loss(flat):
        if n <= loss_chunk:  # one chunk: no lax.map (a cheaper program inside NUTS's loops)
            return jnp.mean(loss_fn(unravel(flat), data))
        return _chunked_mean_loss(unravel(flat), data, loss_fn=loss_fn, chunk_size=loss_chunk)

    return full_loss


def _potential_function(full_loss: Callable, center: jax.Array, settings: _Settings) -> Callable:
    """The potential ``U(w) = nβ L_n(w) + (γ/2)‖w − w*‖²`` of flat parameters ``w``."""
    nbeta, localization = settings.nbeta, settings.localization

    def potential_fn(flat):
        displacement = flat - center
        return nbeta * full_loss(flat) + 0.5 * localization * jnp.vdot(displacement, displacement)

    return potential_fn


def _run_nuts(potential_fn: Callable, center: jax.Array, key: jax.Array, settings: _Settings):
    """Run numpyro's NUTS (vectorized chains, all starting at ``center``).

    Returns the ``MCMC`` object, the draws ``(chains, draws, d)`` and the extra fields by chain.
    """
    from numpyro.infer import MCMC, NUTS  # numpyro is a dependency; import lazily

    kernel = NUTS(
        potential_fn=potential_fn,
        target_accept_prob=settings.target_accept_prob,
        max_tree_depth=settings.max_tree_depth,
        dense_mass=settings.dense_mass,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=settings.num_warmup,
        num_samples=settings.num_samples,
        num_chains=settings.num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    if settings.num_chains == 1:
        init_params = center
    else:
        init_params = jnp.broadcast_to(center, (settings.num_chains,) + center.shape)
    extra_fields = ("num_steps", "accept_prob", "diverging")
    mcmc.run(jax.random.key_data(key), init_params=init_params, extra_fields=extra_fields)
    samples = mcmc.get_samples(group_by_chain=True)  # (chains, draws, d)
    samples = jnp.reshape(samples, (settings.num_chains, settings.num_samples, int(center.size)))
    extras = mcmc.get_extra_fields(group_by_chain=True)
    return mcmc, samples, extras


def _losses_at_draws(full_loss: Callable, samples: jax.Array, chunk_size: int, loss_chunk: int):
    """:math:`L_n` at every draw, as a float64 ``(chains, draws)`` array.

    ``lax.map`` over draws, vmapped over as many draws at a time as keep about ``chunk_size``
    examples in flight (one draw at a time once ``n >= chunk_size``).
    """
    num_chains, num_samples, num_parameters = samples.shape
    flat_samples = samples.reshape(num_chains * num_samples, num_parameters)
    draws_per_batch = max(1, min(chunk_size // loss_chunk, num_chains * num_samples))
    losses = jax.jit(lambda draws: jax.lax.map(full_loss, draws, batch_size=draws_per_batch))(
        flat_samples
    )
    return np.asarray(losses, np.float64).reshape(num_chains, num_samples)


def _nuts_diagnostics(mcmc, extras, settings: _Settings) -> dict:
    """Adapted step sizes, trajectory lengths, tree depths, acceptance and divergences."""
    num_steps = np.asarray(extras["num_steps"]).reshape(settings.num_chains, settings.num_samples)
    tree_depth = np.floor(np.log2(np.maximum(num_steps, 1))) + 1  # numpyro's convention
    accept_prob = np.asarray(extras["accept_prob"], np.float64)
    step_size = np.asarray(mcmc.last_state.adapt_state.step_size, np.float64).reshape(-1)
    return {
        "step_size": step_size.tolist(),
        "mean_num_steps": float(num_steps.mean()),
        "mean_tree_depth": float(tree_depth.mean()),
        "max_tree_depth_hits": int((tree_depth >= settings.max_tree_depth).sum()),
        "mean_accept_prob": float(accept_prob.mean()),
        "num_divergent": int(np.asarray(extras["diverging"]).sum()),
    }


def _warn_if_divergent(num_divergent: int, settings: _Settings) -> None:
    if num_divergent:
        warnings.warn(
            f"NUTS had {num_divergent} divergent transitions out of "
            f"{settings.num_chains * settings.num_samples}: "
            "the posterior has regions the adapted step size cannot integrate; raise "
            "target_accept_prob (or num_warmup) and check the estimate",
            RuntimeWarning,
            stacklevel=3,  # the caller of nuts_llc
        )


def _hyperparameters(settings: _Settings, n: int, num_parameters: int, diagnostics: dict) -> dict:
    """The ``LLCResult.hyperparameters`` of ``nuts_llc`` (without the wall time)."""
    return {
        "sampler": "nuts",
        "nbeta": settings.nbeta,
        "localization": settings.localization,
        "num_chains": settings.num_chains,
        "num_warmup": settings.num_warmup,
        "num_samples": settings.num_samples,
        "num_examples": n,
        "num_parameters": num_parameters,
        "batch_size": None,
        "target_accept_prob": settings.target_accept_prob,
        "max_tree_depth": settings.max_tree_depth,
        "dense_mass": bool(settings.dense_mass),
        **diagnostics,
    }
