"""The compiled-program key: rebuilt samplers reuse programs, but nothing that changes what a
trace computes may ever reuse a stale one (cases found by an independent review)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slt_jax as slt
from slt_jax._structural import StructuralKey

X = jnp.linspace(-1.0, 1.0, 32)[:, None]
DATA = (X, jnp.zeros(32))
PARAMS = {"w": jnp.ones(1)}
SAMPLER = slt.samplers.sgld(1e-4, 10.0)
RUN = dict(key=jax.random.key(0), num_chains=1, num_draws=2)


def _first_loss(loss_fn):
    """The draw-0 loss at w* of a run (full batch: the paired center loss is the mean loss at
    w*; the draw itself is one step away) and what it should be."""
    got = float(slt.sample(loss_fn, PARAMS, DATA, SAMPLER, **RUN).center_loss[0, 0])
    return got, float(jnp.mean(loss_fn(PARAMS, DATA)))


def test_a_changed_global_is_a_new_program():
    namespace = {"jnp": jnp, "SCALE": 1.0}
    source = "def loss_fn(p, batch):\n    return SCALE * (batch[0] @ p['w'] - batch[1]) ** 2\n"
    for scale in (1.0, 100.0):
        namespace["SCALE"] = scale
        exec(compile(source, "<cell>", "exec"), namespace)
        got, want = _first_loss(namespace["loss_fn"])
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_global_function_edited_and_the_cell_rerun_is_a_new_program():
    namespace = {"activation": jnp.tanh}
    source = "def loss_fn(p, batch):\n    return activation(batch[0] @ p['w'] - batch[1]) ** 2\n"
    results = []
    for activation in (jnp.tanh, jnp.sinh):
        namespace["activation"] = activation
        exec(compile(source, "<cell>", "exec"), namespace)
        results.append(_first_loss(namespace["loss_fn"]))
    for got, want in results:
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert results[0][0] != results[1][0]


def test_closures_over_mutable_objects_dict_order_signed_zero_and_keys():
    config = types.SimpleNamespace(scale=1.0)
    for scale in (1.0, 7.0):
        config.scale = scale
        got, want = _first_loss(lambda p, b: config.scale * (b[0] @ p["w"] - b[1]) ** 2)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    for weights in ({"a": 1.0, "b": 2.0}, {"b": 2.0, "a": 1.0}):  # order matters to the code
        def loss_fn(p, b, weights=weights):
            first, second = list(weights.values())
            residual = b[0] @ p["w"] - b[1]
            return first * residual**2 + second * jnp.abs(residual) ** 3
        got, want = _first_loss(loss_fn)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert StructuralKey(lambda: 0.0) != StructuralKey(lambda: -0.0)
    noise_key = jax.random.key(3)  # a closure over a typed PRNG key must work
    got, want = _first_loss(
        lambda p, b: (b[0] @ p["w"] + jax.random.normal(noise_key, (1,)) - b[1]) ** 2
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_multi_transform_with_a_new_step_size_compiles_nothing():
    params = {"w": jnp.ones(2), "b": jnp.zeros(2)}

    def loss_fn(p, b):
        return (b[0] @ p["w"][:1] + p["b"][0] - b[1]) ** 2

    def frozen_b(step_size):
        return optax.multi_transform(
            {"sample": slt.samplers.sgld(step_size, 30.0), "freeze": optax.set_to_zero()},
            {"w": "sample", "b": "freeze"},
        )

    slt.sample(loss_fn, params, DATA, frozen_b(1e-3), **RUN)
    with slt.count_compilations() as counter:
        trace = slt.sample(loss_fn, params, DATA, frozen_b(2e-3), **RUN)
    assert counter.count == 0
    assert trace.hyperparameters["step_size"] == 2e-3
    np.testing.assert_array_equal(np.asarray(trace.final_params["b"]), np.zeros((1, 2)))


def test_inject_hyperparams_schedules_reach_the_sampler():
    """optax.inject_hyperparams rebuilds the sampler with the scheduled value at every update:
    a step size of 1 then 1e-12 must freeze the chain after the first step."""
    schedule = optax.piecewise_constant_schedule(1.0, {1: 1e-12})
    sampler = optax.inject_hyperparams(slt.samplers.sgld)(
        step_size=schedule, nbeta=10.0, localization=0.0
    )
    params, grads = {"w": jnp.zeros(4)}, {"w": jnp.zeros(4)}
    state = sampler.init(params)
    norms = []
    for step in range(2):
        updates, state = sampler.update(grads, state, params, key=jax.random.key(step))
        norms.append(float(jnp.linalg.norm(updates["w"])))
    # noise only: |update| ~ sqrt(step_size * 4)
    np.testing.assert_allclose(norms[0], 2.0, rtol=0.9)
    assert norms[1] < 1e-4
