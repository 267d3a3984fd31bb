"""MALA acceptance: Metropolis-adjusted Langevin with it samples the exact target."""

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import diagnostics, truth
from slt_jax.samplers import langevin_proposal, mala_acceptance, mala_acceptance_probability

PRECISIONS = jnp.array([1.0, 4.0])


def potential(w):
    return 0.5 * jnp.sum(PRECISIONS * w["x"] ** 2)


def _mala_chain(key, step_size, num_steps):
    def step(w, key):
        proposal_key, accept_key = jax.random.split(key)
        proposal = langevin_proposal(potential, w, step_size, proposal_key)
        accept = jax.random.uniform(accept_key) < mala_acceptance_probability(
            potential, w, proposal, step_size
        )
        w = jax.tree.map(lambda new, old: jnp.where(accept, new, old), proposal, w)
        return w, w["x"]

    start = {"x": jnp.zeros(2)}
    return jax.lax.scan(step, start, jax.random.split(key, num_steps))[1]


def test_mala_with_this_acceptance_samples_the_exact_gaussian():
    # ε P_max = 1.5: unadjusted Langevin would inflate that variance by 1/(1 - 1.5/4) = 1.6
    step_size = 0.375
    chains = jax.vmap(lambda k: _mala_chain(k, step_size, 3000))(
        jax.random.split(jax.random.key(0), 128)
    )
    draws = np.asarray(chains[:, 500:], np.float64)  # (chains, draws, 2)
    for i, precision in enumerate(np.asarray(PRECISIONS)):
        squares = draws[..., i] ** 2
        mcse = diagnostics.monte_carlo_standard_error(squares)
        assert abs(squares.mean() - 1 / precision) < 4 * mcse, (i, squares.mean(), mcse)
        unadjusted = truth.sgld_stationary_variance(float(precision), step_size)
        assert abs(unadjusted - 1 / precision) > 8 * mcse  # the test can tell them apart


def test_acceptance_tends_to_one_as_the_step_size_shrinks():
    keys = jax.random.split(jax.random.key(1), 256)
    start = {"x": jnp.array([0.5, -0.3])}
    means = [
        float(jnp.mean(jax.vmap(lambda k: mala_acceptance(potential, start, eps, k))(keys)))
        for eps in (1e-3, 1e-1, 1.0)
    ]
    assert means[0] > 0.999
    assert means[0] > means[1] > means[2]
