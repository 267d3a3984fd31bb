"""Memory of the compiled sampling program: no growth with steps beyond the stored draws."""

import jax
import jax.numpy as jnp

import slt_jax as slt
from slt_jax.models import mlp_init, mlp_loss
from slt_jax.sampling import compiled_memory


def _problem():
    params = mlp_init(jax.random.key(0), [16, 32, 4])
    x = jax.random.normal(jax.random.key(1), (512, 16))
    y = jax.random.normal(jax.random.key(2), (512, 4))
    return params, (x, y), slt.samplers.sgld(1e-5, 100.0, 1.0)


def test_temporary_memory_does_not_grow_with_burnin_or_thinning():
    params, data, sampler = _problem()
    common = dict(key=jax.random.key(0), num_chains=4, num_draws=50, batch_size=32)
    short = compiled_memory(mlp_loss, params, data, sampler, num_burnin=10, **common)
    long = compiled_memory(mlp_loss, params, data, sampler, num_burnin=100_000, **common)
    thinned = compiled_memory(
        mlp_loss, params, data, sampler, num_burnin=10, steps_per_draw=10, **common
    )
    very_thinned = compiled_memory(
        mlp_loss, params, data, sampler, num_burnin=10, steps_per_draw=10_000, **common
    )
    assert long == short
    assert very_thinned == thinned
    assert thinned["output"] == short["output"]


def test_output_memory_is_the_stored_draws():
    params, data, sampler = _problem()
    common = dict(key=jax.random.key(0), num_chains=4, batch_size=32)
    few = compiled_memory(mlp_loss, params, data, sampler, num_draws=100, **common)
    many = compiled_memory(mlp_loss, params, data, sampler, num_draws=1100, **common)
    # 1000 more draws × 4 chains × one float32 loss
    assert many["output"] - few["output"] == 1000 * 4 * jnp.dtype(jnp.float32).itemsize
