r"""MALA acceptance probability: a diagnostic for whether a step size resolves the geometry.

For the proposal :math:`w' = w - \tfrac{\epsilon}{2}\nabla U(w) + \sqrt{\epsilon}\,\eta`,

.. math::

    \log q(w' \mid w) = -\frac{\lVert w' - w + \tfrac{\epsilon}{2}\nabla U(w)\rVert^2}{2\epsilon},
    \qquad
    a(w, w') = \min\big(1, \exp(U(w) - U(w') + \log q(w \mid w') - \log q(w' \mid w))\big).

Values near 1 mean :math:`\epsilon` is small enough for the local geometry (docs/mathematics.md §1;
used this way for SGLD step-size selection in Lau et al. 2023, arXiv 2308.12108).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from slt_jax.samplers._base import standard_normal_like, tree_sum_of_squares

PyTree = Any


def _log_proposal_density(to_params, from_params, from_gradient, step_size):
    residual = jax.tree.map(
        lambda a, b, g: a - b + 0.5 * step_size * g, to_params, from_params, from_gradient
    )
    return -tree_sum_of_squares(residual) / (2.0 * step_size)


def mala_acceptance_probability(
    potential_fn: Callable[[PyTree], jax.Array], params: PyTree, proposal: PyTree, step_size
) -> jax.Array:
    """Metropolis–Hastings acceptance probability of ``proposal`` from ``params``.

    ``potential_fn(w)`` is :math:`U(w) = n\\beta L_n(w) + (\\gamma/2)\\lVert w - w^*\\rVert^2`
    (or any potential); gradients are taken with ``jax.value_and_grad``.
    """
    value_and_grad = jax.value_and_grad(potential_fn)
    potential, gradient = value_and_grad(params)
    proposal_potential, proposal_gradient = value_and_grad(proposal)
    log_ratio = (
        potential
        - proposal_potential
        + _log_proposal_density(params, proposal, proposal_gradient, step_size)
        - _log_proposal_density(proposal, params, gradient, step_size)
    )
    return jnp.minimum(1.0, jnp.exp(jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)))


def langevin_proposal(
    potential_fn: Callable[[PyTree], jax.Array], params: PyTree, step_size, key: jax.Array
) -> PyTree:
    r"""One exact-gradient Langevin proposal :math:`w - (\epsilon/2)\nabla U(w) + \sqrt\epsilon\,\eta`."""
    gradient = jax.grad(potential_fn)(params)
    noise = standard_normal_like(key, params)
    return jax.tree.map(
        lambda w, g, z: w - 0.5 * step_size * g + jnp.sqrt(step_size) * z, params, gradient, noise
    )


def mala_acceptance(
    potential_fn: Callable[[PyTree], jax.Array], params: PyTree, step_size, key: jax.Array
) -> jax.Array:
    """Acceptance probability of one fresh Langevin proposal from ``params``."""
    proposal = langevin_proposal(potential_fn, params, step_size, key)
    return mala_acceptance_probability(potential_fn, params, proposal, step_size)
