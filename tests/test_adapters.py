"""Adapters from Flax NNX / Linen / Equinox models (slt_jax.adapters, issue 11) and the error
for an NNX module passed straight in as params (issue 9).

Each adapter must give exactly the LLC of the hand-written pure function of the same weights:
with the same key the sampled traces agree to float rounding (the params pytrees have the
same structure, so the injected noise is identical).
"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as slt

N = 256
X = jax.random.normal(jax.random.key(0), (N, 3))
Y = jnp.sin(X[:, :1]) + 0.1 * jax.random.normal(jax.random.key(1), (N, 1))
DATA = (X, Y)
NBETA = slt.default_nbeta(N)
RUN = dict(num_chains=2, num_draws=200, batch_size=64)


def _sampler(mask=None):
    return slt.samplers.sgld(1e-4, NBETA, 1.0, mask=mask)


def _trace(loss_fn, params, mask=None):
    return slt.sample(loss_fn, params, DATA, _sampler(mask), key=jax.random.key(3), **RUN)


class Net(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(3, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(jnp.tanh(self.norm(self.hidden(x)))))


def nnx_loss(model, batch):
    x, y = batch
    return 0.5 * jnp.sum((model(x) - y) ** 2, axis=-1)


def _net(seed):
    model = Net(nnx.Rngs(seed))
    model.norm.mean[...] = jax.random.normal(jax.random.key(seed + 10), (8,))
    model.norm.var[...] = 1.0 + jax.random.uniform(jax.random.key(seed + 20), (8,))
    return model


def pure_net_loss(p, batch):
    """The same network by hand: BatchNorm on its running statistics, no dropout."""
    x, y = batch
    norm = p["norm"]
    h = x @ p["hidden"]["kernel"] + p["hidden"]["bias"][None, :]
    h = (h - norm["mean"].value[None, :]) / jnp.sqrt(norm["var"].value[None, :] + 1e-5)
    h = jnp.tanh(h * norm["scale"][None, :] + norm["bias"][None, :])
    out = h @ p["out"]["kernel"] + p["out"]["bias"][None, :]
    return 0.5 * jnp.sum((out - y) ** 2, axis=-1)


def test_from_nnx_samples_only_params_and_matches_the_pure_function():
    model = _net(0)
    adapted = slt.adapters.from_nnx(model, nnx_loss)
    loss_fn, params = adapted
    num_params = len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert slt.masks.count(adapted.mask, params) == sum(
        x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert sum(bool(m) for m in jax.tree.leaves(adapted.mask)) == num_params == 6
    assert params["drop"]["rngs"] == {"count": None, "key": None}  # RNG state: constants
    trace = _trace(loss_fn, params, adapted.mask)
    reference = _trace(pure_net_loss, params, adapted.mask)
    np.testing.assert_allclose(np.asarray(trace.loss), np.asarray(reference.loss), rtol=1e-5)
    for name in ("mean", "var"):  # BatchNorm statistics never move
        final = np.asarray(trace.final_params["norm"][name].value)
        np.testing.assert_array_equal(final, np.broadcast_to(getattr(model.norm, name)[...], final.shape))
    moved = np.asarray(trace.final_params["out"]["kernel"])
    assert np.all(moved != np.asarray(model.out.kernel[...])[None])
    # the way back: a module with the chain's weights, in the model's own (training) mode
    rebuilt = adapted.to_model(jax.tree.map(lambda x: x[0], trace.final_params))
    np.testing.assert_array_equal(rebuilt.out.kernel[...], moved[0])
    assert rebuilt.norm.use_running_average is False and model.norm.use_running_average is False


def test_estimate_llc_freezes_the_frozen_leaves_by_itself():
    adapted = slt.adapters.from_nnx(_net(0), nnx_loss)
    run = dict(key=jax.random.key(4), num_chains=2, num_draws=200, batch_size=64)
    # an untrained network is no minimum: the negative-LLC / R-hat warnings are expected
    with pytest.warns(RuntimeWarning):
        unmasked = slt.estimate_llc(*adapted, DATA, sampler=_sampler(), **run)
    with pytest.warns(RuntimeWarning):
        masked = slt.estimate_llc(*adapted, DATA, sampler=_sampler(adapted.mask), **run)
    assert unmasked.mean == masked.mean


def test_a_new_checkpoint_compiles_nothing():
    first = slt.adapters.from_nnx(_net(0), nnx_loss)
    _trace(first.loss_fn, first.params, first.mask)
    second = slt.adapters.from_nnx(_net(1), nnx_loss)  # new weights, statistics and seed
    assert second.loss_fn is first.loss_fn
    with slt.count_compilations() as counter:
        trace = _trace(second.loss_fn, second.params, second.mask)
    assert counter.count == 0
    assert not np.allclose(trace.final_params["out"]["kernel"], first.params["out"]["kernel"])


def _assert_same_losses_and_gradients(loss_fn, pure, params, mask=None, num_points=4):
    """Per-example losses and mean-loss gradients agree at w* and at random points around it:
    ``sample`` is deterministic given those, so the traces (and LLCs) agree too (the NNX test
    above compares whole traces)."""
    def value_and_grad(fn):
        return jax.jit(lambda p: (fn(p, DATA), jax.grad(lambda q: jnp.mean(fn(q, DATA)))(p)))

    adapted, reference = value_and_grad(loss_fn), value_and_grad(pure)
    leaves, treedef = jax.tree.flatten(params)
    for point in range(num_points):
        keys = jax.random.split(jax.random.key(point), len(leaves))
        moved = [x + 0.1 * point * jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
                 for x, k in zip(leaves, keys)]
        at = jax.tree.unflatten(treedef, moved)
        (losses, grads), (want_losses, want_grads) = adapted(at), reference(at)
        np.testing.assert_allclose(losses, want_losses, rtol=1e-5, atol=1e-6)
        sampled = jax.tree.leaves(mask) if mask is not None else [True] * len(leaves)
        for got, want, keep in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), sampled):
            if keep:  # frozen leaves (BatchNorm statistics) are never sampled
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_from_linen_matches_the_pure_function():
    class Dense2(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            h = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
            return nn.Dense(1)(jnp.tanh(h))

    module = Dense2()
    variables = module.init(jax.random.key(0), X[:2])

    def loss(module, variables, batch):
        return 0.5 * jnp.sum((module.apply(variables, batch[0]) - batch[1]) ** 2, axis=-1)

    adapted = slt.adapters.from_linen(module, variables, loss)

    def pure(p, batch):
        x, y = batch
        q, stats = p["params"], p["batch_stats"]["BatchNorm_0"]
        h = x @ q["Dense_0"]["kernel"] + q["Dense_0"]["bias"][None, :]
        h = (h - stats["mean"].value[None, :]) / jnp.sqrt(stats["var"].value[None, :] + 1e-5)
        h = h * q["BatchNorm_0"]["scale"][None, :] + q["BatchNorm_0"]["bias"][None, :]
        out = jnp.tanh(h) @ q["Dense_1"]["kernel"] + q["Dense_1"]["bias"][None, :]
        return 0.5 * jnp.sum((out - y) ** 2, axis=-1)

    _assert_same_losses_and_gradients(adapted.loss_fn, pure, adapted.params, adapted.mask)
    rebuilt = adapted.to_model(adapted.params)
    np.testing.assert_array_equal(rebuilt["batch_stats"]["BatchNorm_0"]["mean"],
                                  variables["batch_stats"]["BatchNorm_0"]["mean"])


def test_from_equinox_matches_the_pure_function():
    model = eqx.nn.MLP(3, 1, 8, 1, activation=jnp.tanh, key=jax.random.key(5))

    def loss(model, batch):
        return 0.5 * jnp.sum((jax.vmap(model)(batch[0]) - batch[1]) ** 2, axis=-1)

    adapted = slt.adapters.from_equinox(model, loss)
    assert adapted.mask is None  # nothing frozen: every inexact array is sampled

    def pure(p, batch):
        x, y = batch
        first, second = p.layers
        h = jnp.tanh(x @ first.weight.T + first.bias[None, :])
        return 0.5 * jnp.sum((h @ second.weight.T + second.bias[None, :] - y) ** 2, axis=-1)

    _assert_same_losses_and_gradients(adapted.loss_fn, pure, adapted.params)
    assert isinstance(adapted.to_model(), eqx.nn.MLP)


def test_an_nnx_module_as_params_is_refused_with_the_adapter_advice():
    model = _net(0)
    for candidate in (model, nnx.state(model)):
        with pytest.raises(TypeError, match=r"(?s)RngCount at .*BatchStat at .*from_nnx\(model, loss\)"):
            slt.sample(nnx_loss, candidate, DATA, _sampler(), key=jax.random.key(0), **RUN)
    with pytest.raises(TypeError, match="PRNG key"):
        slt.evaluate_loss(lambda p, b: b[0][:, 0] * p["w"], {"w": jnp.ones(()), "k": jax.random.key(0)}, DATA)


def test_adapter_errors_name_what_exists():
    with pytest.raises(ValueError, match="selects no float array"):
        slt.adapters.from_nnx(_net(0), nnx_loss, wrt=nnx.Cache)
    variables = {"params": {"w": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"it has \['params'\]"):
        slt.adapters.from_linen(nn.Dense(1), variables, lambda m, v, b: b, wrt="weights")


def test_sample_without_a_mask_never_moves_frozen_leaves():
    """A sampler built without ``mask=adapted.mask`` still freezes the ``Frozen`` leaves."""
    model = _net(0)
    loss_fn, params = slt.adapters.from_nnx(model, nnx_loss)
    trace = _trace(loss_fn, params)
    for name in ("mean", "var"):
        final = np.asarray(trace.final_params["norm"][name].value)
        np.testing.assert_array_equal(
            final, np.broadcast_to(getattr(model.norm, name)[...], final.shape))
    assert np.all(np.asarray(trace.final_params["out"]["kernel"])
                  != np.asarray(model.out.kernel[...])[None])
