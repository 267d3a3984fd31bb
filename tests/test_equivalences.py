"""Exact equivalences between samplers, drivers and estimators (docs/mathematics.md §0-§2).

These tests need no statistics: each compares two computations that must agree exactly (bit
for bit) or to float rounding, on tiny models with a handful of steps.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import slt_jax as slt

NUM_EXAMPLES = 32
INPUT_DIMENSION = 3

SAMPLER_FACTORIES = slt.samplers.SAMPLERS
SAMPLER_NAMES = sorted(SAMPLER_FACTORIES)


def make_sampler(name, **overrides):
    """A stable sampler of each kind for the tiny regression problem below."""
    arguments = dict(step_size=1e-3, nbeta=20.0, localization=1.0)
    arguments.update(overrides)
    return SAMPLER_FACTORIES[name](**arguments)


def loss_fn(params, batch):
    """Per-example squared error of a linear model with a bias: shape ``(b,)``."""
    x, y = batch
    prediction = x @ params["w"] + params["b"]
    return 0.5 * (prediction - y) ** 2


def make_data():
    key_x, key_noise = jax.random.split(jax.random.key(1234))
    x = jax.random.normal(key_x, (NUM_EXAMPLES, INPUT_DIMENSION), jnp.float32)
    true_w = jnp.array([1.0, -2.0, 0.5], jnp.float32)
    y = x @ true_w + 0.3 + 0.1 * jax.random.normal(key_noise, (NUM_EXAMPLES,), jnp.float32)
    return x, y


def least_squares_params(data):
    """``w*``: the exact minimizer of the full-data loss (a genuine local minimum)."""
    x, y = (np.asarray(a, np.float64) for a in data)
    design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    return {
        "w": jnp.asarray(solution[:-1], jnp.float32),
        "b": jnp.asarray(solution[-1], jnp.float32),
    }


# Observables that record the parameters leaf by leaf (one array per observable).
PARAMETER_OBSERVABLES = {"w": lambda params: params["w"], "b": lambda params: params["b"]}

# One run configuration shared by most tests: `sample` compiles once per (loss_fn, sampler kind,
# shapes, counts), so sharing it keeps the file fast (hyperparameter values are data).
NUM_CHAINS = 4
RUN = dict(
    num_chains=NUM_CHAINS,
    num_draws=5,
    num_burnin=3,
    steps_per_draw=1,
    batch_size=8,  # minibatches (n = 32): the index draws are part of every comparison
    observables=PARAMETER_OBSERVABLES,
)


# ------------------------------------------------------------ 1. SGLD at T = 0 is gradient descent


def test_sgld_without_noise_or_localization_is_gradient_descent():
    r"""``temperature=0, localization=0``: :math:`\Delta w = -(\epsilon n\beta/2)\nabla L_n(w)`."""
    data = make_data()
    start = {"w": jnp.zeros(INPUT_DIMENSION, jnp.float32), "b": jnp.zeros((), jnp.float32)}
    step_size, nbeta = 0.02, 10.0
    num_burnin, num_draws, steps_per_draw = 3, 6, 2
    sampler = slt.samplers.sgld(step_size, nbeta, localization=0.0, temperature=0.0)
    trace = slt.sample(
        loss_fn,
        start,
        data,
        sampler,
        key=jax.random.key(0),
        num_chains=1,
        num_draws=num_draws,
        num_burnin=num_burnin,
        steps_per_draw=steps_per_draw,
        batch_size=None,
        observables=PARAMETER_OBSERVABLES,
    )

    @jax.jit
    def loss_and_grad(params):
        return jax.value_and_grad(lambda p: jnp.mean(loss_fn(p, data)))(params)

    optimizer = optax.sgd(learning_rate=step_size * nbeta / 2)
    params, state = start, optimizer.init(start)
    expected_params, expected_losses = [], []
    for step in range(num_burnin + num_draws * steps_per_draw):
        is_draw = step >= num_burnin and (step - num_burnin) % steps_per_draw == 0
        loss, grads = loss_and_grad(params)
        if is_draw:  # draw t is recorded before step t's update: draw 0 = after burn-in
            expected_params.append(params)
            expected_losses.append(loss)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)

    assert len(expected_params) == num_draws
    for name in ("w", "b"):
        expected = np.stack([np.asarray(p[name]) for p in expected_params])
        np.testing.assert_allclose(
            np.asarray(trace.observables[name][0]), expected, rtol=1e-5, atol=1e-7
        )
    np.testing.assert_allclose(
        np.asarray(trace.loss[0]), np.asarray(expected_losses), rtol=1e-5, atol=1e-7
    )
    # Gradient descent really moved (the comparison is not between two constant sequences).
    assert not np.allclose(np.asarray(trace.observables["w"][0, 0]), 0.0)
    assert np.asarray(trace.loss[0, -1]) < np.asarray(trace.loss[0, 0])


# ------------------------------------------------------------ 2. vmap over chains = one at a time


def test_vmapped_chains_equal_chains_run_one_at_a_time():
    data = make_data()
    params = least_squares_params(data)
    sampler = slt.samplers.sgld(step_size=1e-3, nbeta=20.0, localization=1.0)
    keys = jax.random.split(jax.random.key(7), NUM_CHAINS)
    together = slt.sample(loss_fn, params, data, sampler, key=keys, **RUN)
    alone_arguments = {**RUN, "num_chains": 1}
    for chain in range(NUM_CHAINS):
        alone = slt.sample(
            loss_fn, params, data, sampler, key=keys[chain : chain + 1], **alone_arguments
        )
        # The same keys give the same minibatch indices and noise, so the only possible
        # difference is float rounding. On CPU the two are bit-identical today, but XLA does
        # not promise that a vmapped (batched) matmul or reduction is lowered in the same
        # order as the single-chain one (on GPU/TPU it often is not), so the test asks for
        # agreement to a few float32 ulps rather than bit equality.
        np.testing.assert_allclose(
            np.asarray(together.loss[chain]), np.asarray(alone.loss[0]), rtol=1e-6, atol=1e-7
        )
        for name in ("w", "b"):
            np.testing.assert_allclose(
                np.asarray(together.observables[name][chain]),
                np.asarray(alone.observables[name][0]),
                rtol=1e-6,
                atol=1e-7,
            )
    # The chains differ from each other (the keys really are per chain).
    losses = np.asarray(together.loss)
    assert not np.allclose(losses[0], losses[1])


# ------------------------------------------------------------------ 3. same key => same trace


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_same_key_gives_the_same_trace_bit_for_bit(name):
    data = make_data()
    params = least_squares_params(data)
    sampler = make_sampler(name)

    def run(key):
        return slt.sample(loss_fn, params, data, sampler, key=key, **RUN)

    first, second = run(jax.random.key(3)), run(jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(first.loss), np.asarray(second.loss))
    for name_ in ("w", "b"):
        np.testing.assert_array_equal(
            np.asarray(first.observables[name_]), np.asarray(second.observables[name_])
        )
    other = run(jax.random.key(4))
    assert not np.array_equal(np.asarray(first.loss), np.asarray(other.loss))


# ------------------------------------------------------------ 4. llc(cL, nβ/c) == llc(L, nβ)


@pytest.mark.filterwarnings("ignore:negative LLC estimate:RuntimeWarning")
@pytest.mark.parametrize("scale", [2.0**3, 2.0**-2])
def test_llc_is_invariant_under_loss_scaling_bit_for_bit(scale):
    """Scaling by a power of two is exact in floating point, so the whole run is identical."""
    data = make_data()
    params = least_squares_params(data)
    nbeta = slt.default_nbeta(NUM_EXAMPLES)

    def scaled_loss_fn(params, batch):
        return scale * loss_fn(params, batch)

    def run(loss, nbeta_):
        sampler = slt.samplers.sgld(step_size=1e-3, nbeta=nbeta_, localization=1.0)
        trace = slt.sample(loss, params, data, sampler, key=jax.random.key(11), **RUN)
        init_loss = slt.evaluate_loss(loss, params, data)
        return trace, init_loss, slt.llc(trace, nbeta=nbeta_, init_loss=init_loss)

    trace, init_loss, result = run(loss_fn, nbeta)
    scaled_trace, scaled_init_loss, scaled_result = run(scaled_loss_fn, nbeta / scale)

    assert float(scaled_init_loss) == scale * float(init_loss)
    np.testing.assert_array_equal(np.asarray(scaled_trace.loss), scale * np.asarray(trace.loss))
    for name in ("w", "b"):
        np.testing.assert_array_equal(
            np.asarray(scaled_trace.observables[name]), np.asarray(trace.observables[name])
        )
    np.testing.assert_array_equal(scaled_result.draws, result.draws)
    np.testing.assert_array_equal(scaled_result.per_chain, result.per_chain)
    assert scaled_result.mean == result.mean
    assert scaled_result.std == result.std
    assert scaled_result.nbeta == result.nbeta / scale
    assert np.isfinite(result.mean)


# ------------------------------------------------------------------- 5. masks freeze exactly


MASKS = {
    "leaf": ({"w": True, "b": False}, {"w": np.ones(3, bool), "b": np.zeros((), bool)}),
    "element": (
        {"w": jnp.array([True, False, True]), "b": True},
        {"w": np.array([True, False, True]), "b": np.ones((), bool)},
    ),
}


@pytest.mark.parametrize("mask_kind", sorted(MASKS))
@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_mask_freezes_exactly_the_masked_coordinates(name, mask_kind):
    data = make_data()
    # Not a minimum: the frozen coordinates feel a nonzero gradient and would move unmasked.
    params = jax.tree.map(lambda p: p + 0.25, least_squares_params(data))
    mask, moving = MASKS[mask_kind]
    sampler = make_sampler(name, mask=mask)
    trace = slt.sample(loss_fn, params, data, sampler, key=jax.random.key(5), **RUN)
    for leaf in ("w", "b"):
        recorded = np.asarray(trace.observables[leaf])  # (chains, draws, *shape)
        center = np.broadcast_to(np.asarray(params[leaf]), recorded.shape)
        frozen = ~np.broadcast_to(moving[leaf], recorded.shape)
        np.testing.assert_array_equal(recorded[frozen], center[frozen])
        # Every unmasked coordinate has moved away from w* at every draw (burn-in > 0).
        assert np.all(recorded[~frozen] != center[~frozen]), (name, mask_kind, leaf)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_mask_that_freezes_everything_keeps_params_at_the_center(name):
    """The degenerate mask (every coordinate frozen) must still leave ``w*`` exactly unchanged."""
    center = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.25)}
    grads = {"w": jnp.array([0.3, -0.7, 1.1]), "b": jnp.array(-0.4)}
    sampler = make_sampler(name, mask={"w": False, "b": False})
    params, state = center, sampler.init(center)
    for key in jax.random.split(jax.random.key(0), 3):
        updates, state = sampler.update(grads, state, params, key=key)
        params = optax.apply_updates(params, updates)
    for leaf in ("w", "b"):
        np.testing.assert_array_equal(np.asarray(params[leaf]), np.asarray(center[leaf]))


# ------------------------------------------------------------------------------ 6. compile once


def test_a_new_key_or_hyperparameter_value_does_not_recompile():
    data = make_data()
    params = least_squares_params(data)
    arguments = RUN
    sampler = slt.samplers.sgld(step_size=1e-3, nbeta=20.0, localization=1.0)

    first = slt.sample(loss_fn, params, data, sampler, key=jax.random.key(0), **arguments)
    new_data = jax.tree.map(lambda a: a + 1.0, data)  # same shapes, new values
    with slt.count_compilations() as counter:
        new_key = slt.sample(loss_fn, params, data, sampler, key=jax.random.key(1), **arguments)
        replaced = sampler.replace(step_size=2e-3)
        new_step_size = slt.sample(loss_fn, params, data, replaced, key=jax.random.key(0), **arguments)
        fresh = slt.samplers.sgld(step_size=5e-4, nbeta=30.0, localization=0.5)
        fresh_sampler = slt.sample(loss_fn, params, data, fresh, key=jax.random.key(0), **arguments)
        slt.sample(loss_fn, params, new_data, sampler, key=jax.random.key(0), **arguments)
    assert counter.count == 0

    # ... and the reused program really used the new values.
    losses = [np.asarray(t.loss) for t in (first, new_key, new_step_size, fresh_sampler)]
    for other in losses[1:]:
        assert not np.array_equal(losses[0], other)

    # A new static argument (the number of chains) must recompile: the counter works.
    with slt.count_compilations() as counter:
        slt.sample(loss_fn, params, data, sampler, key=jax.random.key(0),
                   **{**arguments, "num_chains": arguments["num_chains"] + 1})
    assert counter.count >= 1


def test_run_lengths_thinning_and_masks_are_data():
    """num_draws, num_burnin, steps_per_draw and a new mask of the same shape reuse the program."""
    data = make_data()
    params = least_squares_params(data)
    sampler = slt.samplers.sghmc(1e-3, 20.0, mask={"w": jnp.array([True, False, True]), "b": True})
    slt.sample(loss_fn, params, data, sampler, key=jax.random.key(0), **RUN)
    other_mask = {"w": jnp.array([False, True, True]), "b": False}
    with slt.count_compilations() as counter:
        trace = slt.sample(
            loss_fn, params, data, sampler.factory(2e-3, 30.0, mask=other_mask),
            key=jax.random.key(1), **{**RUN, "num_draws": 2 * RUN["num_draws"], "num_burnin": 7,
                                      "steps_per_draw": 3},
        )
    assert counter.count == 0
    frozen = np.asarray(trace.final_params["w"][:, 0])
    np.testing.assert_array_equal(frozen, np.broadcast_to(np.asarray(params["w"][0]), frozen.shape))
    np.testing.assert_array_equal(
        np.asarray(trace.final_params["b"]), np.broadcast_to(np.asarray(params["b"]), (RUN["num_chains"],))
    )
    assert not np.allclose(np.asarray(trace.final_params["w"][:, 1]), np.asarray(params["w"][1]))


def test_a_sampler_inside_optax_chain_keeps_its_hyperparameters_as_data():
    """optax.chain(clip, sampler) rebuilt with a new step size compiles nothing, and the step
    size it ran with is the new one (recorded in the trace and visible in the draws)."""
    data = make_data()
    params = least_squares_params(data)

    def chained(step_size):
        return optax.chain(
            optax.clip_by_global_norm(1e6), slt.samplers.sgld(step_size, 20.0, 1.0)
        )

    first = slt.sample(loss_fn, params, data, chained(1e-3), key=jax.random.key(0), **RUN)
    with slt.count_compilations() as counter:
        second = slt.sample(loss_fn, params, data, chained(2e-3), key=jax.random.key(0), **RUN)
    assert counter.count == 0
    assert first.hyperparameters["step_size"] == pytest.approx(1e-3)
    assert second.hyperparameters["step_size"] == pytest.approx(2e-3)
    # with a clip that never binds, the chain equals the bare sampler bit for bit
    bare = slt.sample(loss_fn, params, data, slt.samplers.sgld(2e-3, 20.0, 1.0),
                      key=jax.random.key(0), **RUN)
    np.testing.assert_array_equal(np.asarray(second.loss), np.asarray(bare.loss))
    # a different clip threshold is a different program (it is a constant of the trace)
    with slt.count_compilations() as counter:
        slt.sample(loss_fn, params, data,
                   optax.chain(optax.clip_by_global_norm(1.0), slt.samplers.sgld(2e-3, 20.0, 1.0)),
                   key=jax.random.key(0), **RUN)
    assert counter.count >= 1


# ---------------------------------------------------------- 7. SGHMC with friction 1 is SGLD(2ε)


def test_sghmc_with_unit_friction_is_sgld_with_twice_the_step_size_one_update():
    r"""friction α = 1 drops the old velocity:
    :math:`v = -\epsilon\nabla U + \sqrt{2\epsilon}\eta` and :math:`\Delta w = v`, which is the
    SGLD update :math:`-(\epsilon'/2)\nabla U + \sqrt{\epsilon'}\eta` with :math:`\epsilon' = 2\epsilon`;
    both draw :math:`\eta` = ``standard_normal_like(key, params)``, so they agree pathwise.
    """
    step_size, nbeta, localization = 1e-3, 20.0, 1.5
    center = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.25)}
    params = {"w": jnp.array([0.6, -1.2, 2.1]), "b": jnp.array(0.1)}
    grads = {"w": jnp.array([0.3, -0.7, 1.1]), "b": jnp.array(-0.4)}
    sghmc = slt.samplers.sghmc(step_size, nbeta, localization, friction=1.0, splitting="euler")
    sgld = slt.samplers.sgld(2 * step_size, nbeta, localization)

    sghmc_state = sghmc.init(center)
    # A nonzero velocity from a previous step must be forgotten entirely when friction = 1.
    sghmc_state = sghmc_state._replace(velocity={"w": jnp.array([9.0, -9.0, 9.0]), "b": jnp.array(9.0)})
    sgld_state = sgld.init(center)
    for key in jax.random.split(jax.random.key(0), 3):
        sghmc_updates, _ = sghmc.update(grads, sghmc_state, params, key=key)
        sgld_updates, _ = sgld.update(grads, sgld_state, params, key=key)
        noise = slt.samplers.standard_normal_like(key, params)
        for leaf in ("w", "b"):
            expected = (
                -step_size * (nbeta * grads[leaf] + localization * (params[leaf] - center[leaf]))
                + np.sqrt(2 * step_size) * noise[leaf]
            )
            np.testing.assert_allclose(sghmc_updates[leaf], sgld_updates[leaf], rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(sghmc_updates[leaf], expected, rtol=1e-5, atol=1e-8)


def test_baoab_with_unit_friction_is_the_leimkuhler_matthews_update():
    r"""BAOAB with friction 1 forgets the kicked velocity in the O step, so two consecutive
    updates are :math:`-(\epsilon/2)\nabla U + (\sqrt\epsilon/2)(\eta_n + \eta_{n+1})`
    (Leimkuhler & Matthews 2013): the noise of one step reappears, halved, in the next."""
    step_size, nbeta, localization = 1e-3, 20.0, 1.5
    center = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.25)}
    params = {"w": jnp.array([0.6, -1.2, 2.1]), "b": jnp.array(0.1)}
    grads = {"w": jnp.array([0.3, -0.7, 1.1]), "b": jnp.array(-0.4)}
    sampler = slt.samplers.sghmc(step_size, nbeta, localization, friction=1.0)
    state = sampler.init(center)
    previous = None
    for key in jax.random.split(jax.random.key(0), 3):
        updates, state = sampler.update(grads, state, params, key=key)
        noise = slt.samplers.standard_normal_like(key, params)
        for leaf in ("w", "b"):
            force = nbeta * grads[leaf] + localization * (params[leaf] - center[leaf])
            carried = 0.0 if previous is None else previous[leaf]
            expected = -0.5 * step_size * force + 0.5 * np.sqrt(step_size) * (carried + noise[leaf])
            np.testing.assert_allclose(updates[leaf], expected, rtol=1e-5, atol=1e-8)
        previous = noise


def test_sghmc_with_unit_friction_is_sgld_with_twice_the_step_size_whole_trace():
    data = make_data()
    params = least_squares_params(data)
    arguments = dict(key=jax.random.key(9), **RUN)
    step_size, nbeta = 5e-4, 20.0
    sghmc_trace = slt.sample(
        loss_fn, params, data,
        slt.samplers.sghmc(step_size, nbeta, 1.0, friction=1.0, splitting="euler"), **arguments
    )
    sgld_trace = slt.sample(
        loss_fn, params, data, slt.samplers.sgld(2 * step_size, nbeta, 1.0), **arguments
    )
    # Same key => same minibatches and noise. The arithmetic differs only in the order of
    # rounding ((1 - α)·v - ε·f + √(2αε)·η vs -(0.5·2ε)·1·f + √(2ε·1·1)·η); it is bit-identical
    # on CPU today, but XLA may fuse the two expressions differently, so compare to rounding.
    np.testing.assert_allclose(
        np.asarray(sghmc_trace.loss), np.asarray(sgld_trace.loss), rtol=1e-5, atol=1e-7
    )
    for name in ("w", "b"):
        np.testing.assert_allclose(
            np.asarray(sghmc_trace.observables[name]),
            np.asarray(sgld_trace.observables[name]),
            rtol=1e-5,
            atol=1e-7,
        )


# --------------------------------------------------------------------- 8. divergence is reported


def test_all_chains_diverge_with_a_huge_step_size():
    data = make_data()
    params = least_squares_params(data)
    nbeta = slt.default_nbeta(NUM_EXAMPLES)
    # The curvature of U is about nβ·λ(XᵀX/n) ≈ 10, so ε = 1e4 is far above the stability
    # bound 4/λ_max: each step multiplies the error by ~1e4 and float32 overflows within the run.
    sampler = slt.samplers.sgld(step_size=1e4, nbeta=nbeta, localization=1.0)
    trace = slt.sample(loss_fn, params, data, sampler, key=jax.random.key(0), **RUN)
    assert np.all(np.asarray(trace.diverged))
    first = np.asarray(trace.first_nonfinite_step)
    total_steps = RUN["num_burnin"] + RUN["num_draws"] * RUN["steps_per_draw"]
    assert np.all((first >= 0) & (first < total_steps))
    init_loss = slt.evaluate_loss(loss_fn, params, data)
    with pytest.warns(RuntimeWarning, match=r"diverge"):
        result = slt.llc(trace, nbeta=nbeta, init_loss=init_loss)
    assert np.isnan(result.mean)
    assert np.all(np.isnan(result.per_chain))
    assert result.diverged_chains == tuple(range(NUM_CHAINS))


def test_some_chains_diverge_and_are_excluded():
    """A loss that is non-finite on one example away from w*: only the chains whose minibatches
    drew it (after the first step) diverge.

    With n = 4, one such example (finite with a finite gradient at w*, so the up-front checks
    pass; inf anywhere else), batch size 1 and 3 steps, each chain diverges with probability
    1 - (3/4)^2 = 7/16 (step 0 is at w*); with 32 chains the chance that all or none diverge is
    below 1e-7, so no lucky seed is needed. The excluded set is then read off the trace itself.
    """
    y = jnp.array([-1.0, 1.0, 2.0, 3.0], jnp.float32)  # -1 marks the bad example

    def nan_example_loss(params, batch):
        w = params["w"]
        bad = jnp.where(w == 2.0, 0.0, jnp.inf)  # finite only at w* (gradient 0 everywhere)
        return jnp.where(batch < 0, bad, 0.5 * (w - batch) ** 2)

    params = {"w": jnp.array(2.0, jnp.float32)}
    nbeta = 4.0
    sampler = slt.samplers.sgld(step_size=1e-3, nbeta=nbeta, localization=1.0)
    trace = slt.sample(
        nan_example_loss, params, y, sampler, key=jax.random.key(0),
        num_chains=32, num_draws=3, batch_size=1,
    )
    diverged = np.asarray(trace.diverged)
    assert diverged.any() and not diverged.all()
    losses = np.asarray(trace.loss, np.float64)
    np.testing.assert_array_equal(diverged, ~np.all(np.isfinite(losses), axis=1))

    init_loss = 0.0  # any finite value: the estimate is a pure function of the trace
    with pytest.warns(RuntimeWarning, match=r"diverge"):
        result = slt.llc(trace, nbeta=nbeta, init_loss=init_loss, paired=False)
    assert result.diverged_chains == tuple(np.flatnonzero(diverged).tolist())
    assert np.all(np.isnan(result.per_chain[diverged]))
    expected_per_chain = nbeta * (losses[~diverged] - init_loss).mean(axis=1)
    np.testing.assert_allclose(result.per_chain[~diverged], expected_per_chain, rtol=1e-12)
    np.testing.assert_allclose(result.mean, expected_per_chain.mean(), rtol=1e-12)


def test_llc_excludes_a_non_finite_row_of_a_loss_array():
    rng = np.random.default_rng(0)
    losses = 1.0 + 0.1 * rng.standard_normal((4, 50))
    losses[2, 17] = np.nan
    losses[3, 0] = np.inf
    nbeta, init_loss = 3.0, 0.9
    with pytest.warns(RuntimeWarning, match=r"diverge"):
        result = slt.llc(losses, nbeta=nbeta, init_loss=init_loss)
    assert result.diverged_chains == (2, 3)
    assert np.isnan(result.per_chain[2]) and np.isnan(result.per_chain[3])
    expected = nbeta * (losses[:2] - init_loss).mean(axis=1)
    np.testing.assert_allclose(result.per_chain[:2], expected, rtol=1e-12)
    np.testing.assert_allclose(result.mean, expected.mean(), rtol=1e-12)
    np.testing.assert_allclose(result.std, expected.std(ddof=1), rtol=1e-12)
    assert np.isfinite(result.mcse)


def test_llc_excludes_a_chain_flagged_by_the_trace_even_if_its_draws_are_finite():
    """A chain that went non-finite only during burn-in is flagged by ``first_nonfinite_step``."""
    losses = jnp.asarray(1.0 + 0.1 * np.random.default_rng(1).standard_normal((3, 30)), jnp.float32)
    trace = slt.Trace(
        loss=losses,
        observables={},
        diverged=jnp.array([False, True, False]),
        first_nonfinite_step=jnp.array([-1, 4, -1], jnp.int32),
    )
    with pytest.warns(RuntimeWarning, match=r"diverge"):
        result = slt.llc(trace, nbeta=2.0, init_loss=0.95)
    assert result.diverged_chains == (1,)
    kept = np.asarray(losses, np.float64)[[0, 2]]
    np.testing.assert_allclose(result.mean, (2.0 * (kept - 0.95)).mean(), rtol=1e-12)


# ------------------------------------------------------------ observables that return pytrees


def test_observable_returning_a_pytree_records_every_leaf():
    data = make_data()
    params = least_squares_params(data)
    sampler = slt.samplers.sgld(step_size=1e-3, nbeta=20.0, localization=1.0)
    run = {**RUN, "observables": {"params": lambda p: p}}
    trace = slt.sample(loss_fn, params, data, sampler, key=jax.random.key(0), **run)
    shape = (NUM_CHAINS, RUN["num_draws"])
    assert trace.observables["params"]["w"].shape == shape + (INPUT_DIMENSION,)
    assert trace.observables["params"]["b"].shape == shape


def test_final_params_are_where_the_chains_stopped():
    """One more draw with the same key records, as its last observed params, the params the
    shorter run ended at (observables are evaluated before each draw's step)."""
    data = make_data()
    params = least_squares_params(data)
    sampler = slt.samplers.sgld(step_size=1e-3, nbeta=20.0, localization=1.0)
    arguments = dict(
        key=jax.random.key(8), num_chains=NUM_CHAINS, num_burnin=5, batch_size=16,
        observables={"params": lambda p: p},
    )
    short = slt.sample(loss_fn, params, data, sampler, num_draws=10, **arguments)
    longer = slt.sample(loss_fn, params, data, sampler, num_draws=11, **arguments)
    for name in ("w", "b"):
        np.testing.assert_array_equal(
            np.asarray(short.final_params[name]),
            np.asarray(longer.observables["params"][name][:, -1]),
        )
        assert short.final_params[name].shape[0] == NUM_CHAINS
