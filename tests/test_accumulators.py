"""Streaming accumulators (slt_jax.accumulators) against float64 numpy truths and array forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_jax import accumulators

NUM_CHAINS, NUM_DRAWS = 3, 13


# ----------------------------------------------------------------------------------------------
# float64 numpy truths, written from the definitions


def _chain_rows(draws, weights):
    """Per chain, the ``(n_c, A)`` float64 rows of the draws of positive weight."""
    values = np.asarray(draws, np.float64)
    values = values.reshape(values.shape[0], values.shape[1], -1)
    if weights is None:
        weights = np.ones(values.shape[:2])
    return [values[c][np.asarray(weights)[c] > 0] for c in range(values.shape[0])]


def numpy_means(draws, weights=None):
    """(global mean, per-chain means (nan if empty), counts), events flattened."""
    rows = _chain_rows(draws, weights)
    pooled = np.concatenate(rows)
    empty = np.full(pooled.shape[1], np.nan)
    per_chain = np.stack([r.mean(0) if len(r) else empty for r in rows])
    return pooled.mean(0), per_chain, np.array([len(r) for r in rows], np.float64)


def numpy_cross_covariance(a, b, center="global", ddof=1, weights=None):
    """The (*event_a, *event_b) covariance of the weighted draws, in float64."""
    rows_a, rows_b = _chain_rows(a, weights), _chain_rows(b, weights)
    if center == "chain":
        active = [c for c in range(len(rows_a)) if len(rows_a[c])]
        rows_a = [rows_a[c] - rows_a[c].mean(0) for c in active]
        rows_b = [rows_b[c] - rows_b[c].mean(0) for c in active]
    pooled_a, pooled_b = np.concatenate(rows_a), np.concatenate(rows_b)
    if center == "global":
        pooled_a, pooled_b = pooled_a - pooled_a.mean(0), pooled_b - pooled_b.mean(0)
        denominator = len(pooled_a) - ddof
    else:
        denominator = len(pooled_a) - ddof * len(rows_a)
    covariance = pooled_a.T @ pooled_b / denominator
    return covariance.reshape(np.shape(a)[2:] + np.shape(b)[2:])


def numpy_between_chains(a, b, weights=None):
    r""":math:`\sum_c n_c (\bar a_c - \bar a)(\bar b_c - \bar b)^\top`, events flattened."""
    mean_a, per_chain_a, counts = numpy_means(a, weights)
    mean_b, per_chain_b, _ = numpy_means(b, weights)
    active = counts > 0
    deviation_a = per_chain_a[active] - mean_a[None, :]
    deviation_b = per_chain_b[active] - mean_b[None, :]
    return (counts[active][:, None] * deviation_a).T @ deviation_b


def _draws(seed=0, num_draws=NUM_DRAWS):
    """Two streams with different event ranks, chains offset from one another."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(NUM_CHAINS, num_draws, 4)) + rng.normal(size=(NUM_CHAINS, 1, 4))
    probe = rng.normal(size=(NUM_CHAINS, num_draws, 2, 3)) + 0.5 * train[:, :, :2, None]
    return {"train": train.astype(np.float32), "probe": probe.astype(np.float32)}


# ----------------------------------------------------------------------------------------------
# streaming == array form == numpy


@pytest.mark.parametrize("block_size", [1, 5, 3 * NUM_DRAWS + 1])
def test_streaming_equals_array_forms(block_size):
    draws = _draws()
    train, probe = draws["train"], draws["probe"]
    covariance_cases = {  # name: (stream a, stream b, center, ddof)
        "cross_global": ("train", "probe", "global", 0),
        "cross_chain": ("train", "probe", "chain", 0),
    }
    reductions = {
        name: accumulators.cross_covariance(a, b, center=center, ddof=ddof)
        for name, (a, b, center, ddof) in covariance_cases.items()
    }
    reductions["train_mean"] = accumulators.running_mean("train")
    reductions["probe_mean"] = accumulators.running_mean("probe")
    reductions["probe_covariance"] = accumulators.covariance("probe", center="chain")
    results = accumulators.streaming_reduce(reductions, draws, block_size)

    for name, stream in (("train_mean", train), ("probe_mean", probe)):
        streamed, array = results[name], accumulators.mean_of_draws(stream)
        mean, per_chain, counts = numpy_means(stream)
        assert streamed.mean.shape == stream.shape[2:]
        assert streamed.per_chain.shape == (NUM_CHAINS,) + stream.shape[2:]
        for result in (streamed, array):
            np.testing.assert_allclose(result.mean.reshape(-1), mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                result.per_chain.reshape(NUM_CHAINS, -1), per_chain, rtol=1e-5, atol=1e-6
            )
            np.testing.assert_array_equal(result.count, counts)

    covariance_cases["probe_covariance"] = ("probe", "probe", "chain", 1)
    for name, (a, b, center, ddof) in covariance_cases.items():
        streamed = results[name].covariance
        array = accumulators.cross_covariance_of_draws(
            draws[a], draws[b], center=center, ddof=ddof
        )
        truth = numpy_cross_covariance(draws[a], draws[b], center, ddof)
        assert truth.shape == draws[a].shape[2:] + draws[b].shape[2:]
        assert streamed.shape == array.shape == truth.shape
        np.testing.assert_allclose(streamed, array, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(array, truth, rtol=1e-5, atol=1e-6, err_msg=name)
        mean_a = results[name].mean_a.reshape(-1)
        np.testing.assert_allclose(mean_a, numpy_means(draws[a])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("center", ["global", "chain"])
def test_array_form_under_jit(center):
    draws = _draws(seed=1)
    compute = jax.jit(lambda a, b: accumulators.cross_covariance_of_draws(a, b, center=center))
    covariance = compute(draws["train"], draws["probe"])
    truth = numpy_cross_covariance(draws["train"], draws["probe"], center)
    np.testing.assert_allclose(covariance, truth, rtol=1e-5, atol=1e-6)
    means = jax.jit(accumulators.mean_of_draws)(draws["probe"])
    np.testing.assert_allclose(means.mean.reshape(-1), numpy_means(draws["probe"])[0], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# float32 stability: mean 1e4, small spread


def _naive_covariance(stream: str) -> accumulators.Accumulator:
    """E[ab] - E[a]E[b] with float32 running sums: the formula the library must not use."""

    def init(shapes):
        _, size = shapes[stream].shape
        return (jnp.zeros(()), jnp.zeros((size,)), jnp.zeros((size, size)))

    def update(state, block, weights):
        count, sums, products = state
        values = jnp.where(weights[:, :, None] > 0, block[stream], 0).reshape(-1, sums.shape[0])
        products = products + jnp.matmul(values.T, values, precision=jax.lax.Precision.HIGHEST)
        return count + jnp.sum(weights), sums + jnp.sum(values, axis=0), products

    def finalize(state):
        count, sums, products = state
        mean = sums / count
        return (products / count - mean[:, None] * mean[None, :]) * count / (count - 1)

    return accumulators.Accumulator((stream,), init, update, finalize)


def _assert_covariance_close(estimate, truth, spreads):
    """float32 tolerance: diagonal to 1e-3 relative, entries to 1e-3 of their scale."""
    np.testing.assert_allclose(np.diag(estimate), np.diag(truth), rtol=1e-3)
    scaled_error = np.abs(estimate - truth) / np.outer(spreads, spreads)
    assert scaled_error.max() <= 1e-3, f"error / scale up to {scaled_error.max():.3g}"


@pytest.mark.parametrize("block_size", [1, 32])
def test_offset_mean_is_stable_in_float32(block_size):
    rng = np.random.default_rng(2)
    spreads = np.array([1.0, 1.0, 1.0, 1e-2, 1e-2, 1e-2])  # every coordinate has mean ~1e4
    mixing = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.2, 0.9]])
    mixing = np.kron(np.eye(2), mixing)  # correlated within each half
    noise = rng.normal(size=(4, 256, 6)) @ mixing.T
    offset = 1e4 + 0.3 * spreads[None, None, :] * rng.normal(size=(4, 1, 6))  # chains apart
    values = (offset + spreads[None, None, :] * noise).astype(np.float32)
    reductions = {
        "global": accumulators.covariance("x"),
        "chain": accumulators.covariance("x", center="chain"),
        "naive": _naive_covariance("x"),
    }
    results = accumulators.streaming_reduce(reductions, {"x": values}, block_size)
    for center in ("global", "chain"):
        truth = numpy_cross_covariance(values, values, center)  # float64 of the float32 draws
        _assert_covariance_close(np.asarray(results[center].covariance), truth, spreads)
        array = accumulators.cross_covariance_of_draws(values, values, center=center)
        _assert_covariance_close(np.asarray(array), truth, spreads)
    mean = results["global"].mean_a
    np.testing.assert_allclose(mean, numpy_means(values)[0], rtol=0, atol=2e-3)
    # the same check rejects the naive formula: its error is of the order of the variance
    truth = numpy_cross_covariance(values, values, "global")
    naive = np.asarray(results["naive"])
    for half in (slice(0, 3), slice(3, 6)):
        naive_error = np.abs(np.diag(naive)[half] / np.diag(truth)[half] - 1)
        assert naive_error.max() > 0.1
        with pytest.raises(AssertionError):
            _assert_covariance_close(naive[half, half], truth[half, half], spreads[half])


# ----------------------------------------------------------------------------------------------
# weights


def test_zero_weight_draws_are_ignored():
    draws = _draws(seed=3)
    weights = np.ones((NUM_CHAINS, NUM_DRAWS), np.float32)
    weights[0, :3] = 0.0  # chain 0 starts with excluded draws (the first block's shift)
    weights[1, 5::3] = 0.0  # holes in chain 1
    weights[2, :] = 0.0  # chain 2 never records
    poisoned = {name: values.copy() for name, values in draws.items()}
    for values in poisoned.values():
        values[0, :3] = np.nan
        values[1, 5::3] = np.inf
        values[2, ::2] = np.nan
        values[2, 1::2] = -np.inf
    reductions = {
        "mean": accumulators.running_mean("probe"),
        "global": accumulators.cross_covariance("train", "probe"),
        "chain": accumulators.cross_covariance("train", "probe", center="chain"),
    }
    results = accumulators.streaming_reduce(reductions, poisoned, 4, weights=weights)

    mean, per_chain, counts = numpy_means(draws["probe"], weights)
    np.testing.assert_allclose(results["mean"].mean.reshape(-1), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        results["mean"].per_chain[:2].reshape(2, -1), per_chain[:2], rtol=1e-5, atol=1e-6
    )
    assert np.all(np.isnan(results["mean"].per_chain[2]))
    np.testing.assert_array_equal(results["mean"].count, counts)
    for center in ("global", "chain"):
        truth = numpy_cross_covariance(draws["train"], draws["probe"], center, 1, weights)
        np.testing.assert_allclose(results[center].covariance, truth, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", [accumulators.running_mean, accumulators.covariance])
def test_block_of_zero_weights_leaves_state_unchanged(factory):
    rng = np.random.default_rng(4)
    accumulator = factory("x")
    block = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
    garbage = np.where(rng.random((2, 3, 2, 2)) < 0.5, np.nan, np.inf).astype(np.float32)
    update = jax.jit(accumulator.update)
    initial = accumulator.init({"x": jax.ShapeDtypeStruct((2, 2, 2), jnp.float32)})
    after_empty = update(initial, {"x": garbage}, jnp.zeros((2, 3)))
    state = update(initial, {"x": block}, jnp.ones((2, 3)))
    after_garbage = update(state, {"x": garbage}, jnp.zeros((2, 3)))
    after_nothing = update(state, {"x": garbage[:, :0]}, jnp.zeros((2, 0)))
    for before, after in ((initial, after_empty), (state, after_garbage), (state, after_nothing)):
        for leaf_before, leaf_after in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
            np.testing.assert_array_equal(leaf_before, leaf_after)
    assert np.asarray(state[0]).sum() == 6  # the real block did count


# ----------------------------------------------------------------------------------------------
# pooling across chains


def test_global_minus_chain_is_the_between_chain_term():
    rng = np.random.default_rng(5)
    chain_means = np.array([[0.0, 0.0], [5.0, -2.0], [-3.0, 4.0]])
    a = (chain_means[:, None, :] + rng.normal(size=(NUM_CHAINS, 40, 2))).astype(np.float32)
    b = (a[:, :, :1] * 0.5 + rng.normal(size=(NUM_CHAINS, 40, 3))).astype(np.float32)
    weights = np.ones((NUM_CHAINS, 40), np.float32)
    weights[1, 25:] = 0.0  # unequal counts: the between-chain term is count-weighted
    ddofs = {"global": 1, "chain": 0}
    reductions = {
        center: accumulators.cross_covariance("a", "b", center=center, ddof=ddof)
        for center, ddof in ddofs.items()
    }
    results = accumulators.streaming_reduce(reductions, {"a": a, "b": b}, 8, weights=weights)
    covariances = {}
    for center, ddof in ddofs.items():
        covariances[center] = np.asarray(results[center].covariance, np.float64)
        expected = numpy_cross_covariance(a, b, center, ddof, weights)
        np.testing.assert_allclose(covariances[center], expected, rtol=1e-5, atol=1e-5)
    total = weights.sum()
    between = covariances["global"] * (total - ddofs["global"])
    between -= covariances["chain"] * (total - NUM_CHAINS * ddofs["chain"])
    truth = numpy_between_chains(a, b, weights)
    np.testing.assert_allclose(between, truth, rtol=1e-4, atol=1e-3)
    # the offsets dominate: the chain-centred covariance does not contain them
    assert np.abs(truth[:, 0]).max() / total > 5 * np.abs(covariances["chain"][:, 0]).max()


# ----------------------------------------------------------------------------------------------
# compiled use


def test_update_under_jit_keeps_state_shapes():
    rng = np.random.default_rng(6)
    values = rng.normal(size=(NUM_CHAINS, 12, 2, 3)).astype(np.float32)
    accumulator = accumulators.covariance("x", center="chain")
    shapes = {"x": jax.ShapeDtypeStruct((NUM_CHAINS, 2, 3), jnp.float32)}
    initial = accumulator.init(shapes)
    assert isinstance(initial, accumulators.CrossCovarianceState)
    signature = jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), initial)
    traces = []

    def traced_update(state, block, weights):
        traces.append(None)  # runs once per trace, not once per call
        return accumulator.update(state, block, weights)

    update = jax.jit(traced_update)
    state = initial
    for start in range(0, 12, 4):
        state = update(state, {"x": values[:, start : start + 4]}, jnp.ones((NUM_CHAINS, 4)))
        assert jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), state) == signature
    assert len(traces) == 1  # one compilation serves every block
    eager = accumulator.finalize(state)  # finalize also runs outside jit
    truth = numpy_cross_covariance(values, values, "chain")
    np.testing.assert_allclose(eager.covariance, truth, rtol=1e-5, atol=1e-6)


def test_update_under_vmap():
    rng = np.random.default_rng(7)
    values = rng.normal(size=(2, NUM_CHAINS, 6, 4)).astype(np.float32)  # 2 independent runs
    weights = (rng.random((2, NUM_CHAINS, 6)) < 0.8).astype(np.float32)
    accumulator = accumulators.covariance("x")
    initial = accumulator.init({"x": jax.ShapeDtypeStruct((NUM_CHAINS, 4), jnp.float32)})
    batched = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), initial)
    update = jax.vmap(accumulator.update, in_axes=(0, 0, 0))
    state = jax.jit(update)(batched, {"x": values}, weights)
    result = jax.jit(jax.vmap(accumulator.finalize))(state)
    for run in range(2):
        truth = numpy_cross_covariance(values[run], values[run], "global", 1, weights[run])
        np.testing.assert_allclose(result.covariance[run], truth, rtol=1e-5, atol=1e-6)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="center"):
        accumulators.cross_covariance("a", "b", center="pooled")
    with pytest.raises(ValueError, match="center"):
        accumulators.cross_covariance_of_draws(np.zeros((2, 3)), np.zeros((2, 3)), center="x")
    draws = {"a": np.zeros((2, 3, 1), np.float32)}
    with pytest.raises(ValueError, match="'b'"):
        accumulators.streaming_reduce({"c": accumulators.covariance("b")}, draws, 2)
    with pytest.raises(ValueError, match="block_size"):
        accumulators.streaming_reduce({"m": accumulators.running_mean("a")}, draws, 0)
    accumulator = accumulators.running_mean("a")
    state = accumulator.init({"a": jax.ShapeDtypeStruct((2, 1), jnp.float32)})
    with pytest.raises(ValueError, match="block"):
        accumulator.update(state, {"a": jnp.zeros((2, 3, 2))}, jnp.ones((2, 3)))
