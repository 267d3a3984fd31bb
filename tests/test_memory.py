"""Memory of the compiled block program: nothing grows with the number of steps or draws
except the stored trace, and streaming accumulators keep a fixed footprint."""

import jax
import jax.numpy as jnp

import slt_jax as slt
from slt_jax import accumulators
from slt_jax.models import mlp_init, mlp_loss
from slt_jax.sampling import compiled_memory


def _problem():
    params = mlp_init(jax.random.key(0), [16, 32, 4])
    x = jax.random.normal(jax.random.key(1), (512, 16))
    y = jax.random.normal(jax.random.key(2), (512, 4))
    return params, (x, y), slt.samplers.sgld(1e-5, 100.0, 1.0)


def test_program_memory_does_not_grow_with_burnin_thinning_or_draws():
    params, data, sampler = _problem()
    common = dict(key=jax.random.key(0), num_chains=4, batch_size=32)
    short = compiled_memory(mlp_loss, params, data, sampler, num_draws=50, num_burnin=10, **common)
    long = compiled_memory(
        mlp_loss, params, data, sampler, num_draws=50_000, num_burnin=100_000, steps_per_draw=10,
        **common,
    )
    for part in ("arguments", "output", "temporary"):
        assert long[part] == short[part], part
    assert short["temporary"] > 0


def test_stored_memory_is_the_stored_draws():
    params, data, sampler = _problem()
    common = dict(key=jax.random.key(0), num_chains=4, batch_size=32, draws_per_block=100)
    few = compiled_memory(mlp_loss, params, data, sampler, num_draws=100, **common)
    many = compiled_memory(mlp_loss, params, data, sampler, num_draws=1100, **common)
    # 1000 more draws × 4 chains × two float32 losses (at the chain and at the center)
    assert many["stored"] - few["stored"] == 2 * 1000 * 4 * jnp.dtype(jnp.float32).itemsize


def test_a_large_cross_covariance_accumulator_has_a_fixed_footprint():
    """A 10k x 1k cross-covariance of two query sets, accumulated and not stored: the compiled
    program and the stored trace are the same for 100 and 10,000 draws."""

    def loss_fn(params, batch):
        return (batch @ params["w"]) ** 2

    params = {"w": jnp.ones((3,))}
    data = jnp.ones((64, 3))
    query = {"train": jnp.ones((10_000, 3)), "probe": jnp.ones((1_000, 3))}
    common = dict(
        key=jax.random.key(0), num_chains=2, batch_size=8, query_data=query, store=("loss",),
        accumulators={"bif": accumulators.cross_covariance("train", "probe")},
    )
    sampler = slt.samplers.sgld(1e-4, 10.0)
    hundred = compiled_memory(loss_fn, params, data, sampler, num_draws=100, **common)
    ten_thousand = compiled_memory(loss_fn, params, data, sampler, num_draws=10_000, **common)
    for part in ("arguments", "output", "temporary"):
        assert hundred[part] == ten_thousand[part], part
    # the accumulator's state (10k x 1k float32) is an argument; the stored trace is the loss
    # (and the paired estimator's loss at the center) only
    assert hundred["arguments"] >= 10_000 * 1_000 * 4
    assert ten_thousand["stored"] == 2 * 10_000 * 2 * 4
