"""Error bars on every loss-kernel / BIF entry (batch means) and the shared-drift diagnostic.

Identities against a float64 reference written from the definition; streaming == array forms;
calibration against the spread of independent reruns (groups of chains of one vmapped run) and
against the closed-form linear-regression kernel (docs/mathematics.md §7); the cross-task block
of a two-head tanh MLP on disjoint parameters (exactly 0 in the posterior) is consistent with 0
under the reported error bars.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as slt
from slt_jax import accumulators, diagnostics
from slt_jax.models import mlp_apply, mlp_init


# ----------------------------------------------------------------------------------------------
# float64 reference, written from the definition


def reference_mcse(a, b, batch_size, *, center="global", correlation=False, lengths=None):
    r"""Batch means of the batch products around the global means (chains cut into batches of
    ``batch_size`` draws); for the correlation the delta method, floored by its Gaussian-tailed
    value :math:`(1 - R^2)\,\mathrm{MCSE}(K)/\sqrt{(1 + R^2)K_{aa}K_{bb}}`. ``(A, B)``,
    flattened.
    ``lengths``: the draws each chain has (the rest are ignored, e.g. after a divergence)."""
    chains, draws = a.shape[:2]
    lengths = [draws] * chains if lengths is None else lengths
    a = [np.asarray(a[c, :n], np.float64).reshape(n, -1) for c, n in enumerate(lengths)]
    b = [np.asarray(b[c, :n], np.float64).reshape(n, -1) for c, n in enumerate(lengths)]
    total = sum(lengths)
    mean_a, mean_b = np.concatenate(a).mean(0), np.concatenate(b).mean(0)
    deviation_a, deviation_b = [x - mean_a for x in a], [x - mean_b for x in b]
    groups = 1 if center == "global" else chains
    scale = total / (total - groups)
    linear = lambda pa, paa, pbb: scale * pa  # noqa: E731
    if correlation:
        centred_a = deviation_a if center == "global" else [x - x.mean(0) for x in a]
        centred_b = deviation_b if center == "global" else [x - x.mean(0) for x in b]
        centred_a, centred_b = np.concatenate(centred_a), np.concatenate(centred_b)
        covariance = centred_a.T @ centred_b / (total - groups)
        variance_a = (centred_a**2).sum(0) / (total - groups)
        variance_b = (centred_b**2).sum(0) / (total - groups)
        root = np.sqrt(np.outer(variance_a, variance_b))
        value = covariance / root
        linear = lambda pa, paa, pbb: scale * (  # noqa: E731
            pa / root - value / 2 * (paa[:, None] / variance_a[:, None]
                                     + pbb[None, :] / variance_b[None, :]))
    def batch_means(linear):
        values, counts = [], []
        for chain in range(chains):
            for start in range(0, lengths[chain], batch_size):
                batch_a = deviation_a[chain][start:start + batch_size]
                batch_b = deviation_b[chain][start:start + batch_size]
                count = len(batch_a)
                values.append(linear(batch_a.T @ batch_b / count, (batch_a**2).mean(0),
                                     (batch_b**2).mean(0)))
                counts.append(count)
        values, counts = np.array(values), np.array(counts, np.float64)
        mean = np.einsum("b,bij->ij", counts, values) / total
        batches = len(counts)
        spread = np.einsum("b,bij->ij", counts**2, (values - mean) ** 2)
        return np.sqrt(batches / (batches - 1) * spread) / total

    if not correlation:
        return batch_means(linear)
    gaussian = ((1 - value**2) / np.sqrt(1 + value**2)
                * batch_means(lambda pa, paa, pbb: scale * pa / root))
    return np.maximum(batch_means(linear), gaussian)


def _drifting_draws(seed, shape, num_chains=3, num_draws=96):
    """Autocorrelated float32 draws with chain offsets and a large common offset."""
    rng = np.random.default_rng(seed)
    common = np.cumsum(rng.standard_normal((num_chains, num_draws, 1)), axis=1) * 0.2
    noise = rng.standard_normal((num_chains, num_draws) + shape)
    loadings = np.linspace(-1.0, 1.5, int(np.prod(shape))).reshape(shape)
    offsets = 0.3 * rng.standard_normal((num_chains, 1) + shape)
    return (100.0 + noise + common.reshape(common.shape + (1,) * (len(shape) - 1)) * loadings
            + offsets).astype(np.float32)


def test_array_forms_match_the_float64_definition():
    train, query = _drifting_draws(0, (5,)), _drifting_draws(1, (5,))
    for center, normalize in (("global", False), ("chain", True)):
        values, mcse = slt.bif(train, query, beta=0.5, normalize=normalize, center=center,
                               return_mcse=True, batch_size=20)
        assert values.shape == mcse.shape == (5, 5)
        expected = reference_mcse(train, query, 20, center=center, correlation=normalize)
        scale = 1.0 if normalize else 0.5
        np.testing.assert_allclose(mcse, scale * expected, rtol=2e-4)
        if not normalize:  # return_mcse leaves the values as they were
            np.testing.assert_array_equal(values, slt.bif(train, query, beta=0.5))
        center = "global" if center == "chain" else "chain"  # the kernel: the other centring
        kernel, kernel_mcse = slt.loss_kernel(train, normalize=normalize, center=center,
                                              return_mcse=True, batch_size=20)
        expected = reference_mcse(train, train, 20, center=center, correlation=normalize)
        if normalize:  # a correlation's diagonal is 1 by construction
            assert np.all(np.diag(np.asarray(kernel_mcse)) == 0)
            expected[np.diag_indices(5)] = 0
        np.testing.assert_allclose(kernel_mcse, expected, rtol=2e-4, atol=1e-7)


def test_streaming_forms_equal_the_array_forms():
    train, query = _drifting_draws(2, (4,)), _drifting_draws(3, (3,))
    weights = np.ones(train.shape[:2], np.float32)
    weights[1, 72:] = 0  # chain 1 diverged at draw 72: its later draws (even nan) are ignored
    train[1, 80] = np.nan
    streamed = accumulators.streaming_reduce(
        {"bif": slt.bif_accumulator("train", "query", beta=2.0, normalize=True, center="chain",
                                    return_mcse=True, batch_size=16)},
        {"train": train, "query": query}, block_size=32, weights=weights,
    )["bif"]
    # the array forms equal the float64 reference (test above): compare with it directly (the
    # kernel's streaming form inside slt.sample: test_kernel_within_its_error_bars...)
    lengths = [96, 72, 96]
    np.testing.assert_allclose(
        streamed[1],
        reference_mcse(train, query, 16, center="chain", correlation=True, lengths=lengths),
        rtol=2e-4)
    assert np.all(np.isfinite(streamed[0]))


def test_streaming_state_does_not_grow_with_the_draws():
    shapes = {"train": jax.ShapeDtypeStruct((4, 50), jnp.float32),
              "query": jax.ShapeDtypeStruct((4, 7), jnp.float32)}
    for normalize, matrices in ((False, 6), (True, 11)):
        state = slt.bif_accumulator("train", "query", normalize=normalize,
                                    return_mcse=True, batch_size=None).init(shapes)
        size = sum(leaf.size for leaf in jax.tree.leaves(state))
        assert size <= matrices * 50 * 7 + 40 * (50 + 7) + 100, size
        # batches continued across blocks (the default): + each of the 4 chains' open batch,
        # (n, q) (and at most 2 vectors of each stream) each
        state = slt.bif_accumulator("train", "query", normalize=normalize, return_mcse=True,
                                    batch_size=128).init(shapes)
        size = sum(leaf.size for leaf in jax.tree.leaves(state))
        assert size <= (matrices + 4) * 50 * 7 + (40 + 8) * (50 + 7) + 100, size


def test_streamed_batches_continue_across_blocks():
    """Batches of 128 draws are the same whatever the sampler's block length (it shrinks its
    blocks to fit memory: e.g. 14 draws at n = 2000, q = 200, T = 512): a chain's open batch is
    continued by the next block, so the streamed error bars (and trends) equal the array forms
    for blocks of 8, 32, 128 draws on 300 draws (a multiple of none). Before, a batch was cut
    at each block's end: on AR(1) draws blocks of 8 gave error bars about half as large."""
    rng = np.random.default_rng(7)
    draws = np.zeros((3, 300, 7))
    draws[:, 0] = rng.standard_normal((3, 7))
    for t in range(1, 300):  # AR(1), ρ = 0.9: batches of 8 are far too short
        draws[:, t] = 0.9 * draws[:, t - 1] + np.sqrt(1 - 0.81) * rng.standard_normal((3, 7))
    draws = (draws + np.linspace(0, 0.5, 300)[None, :, None]).astype(np.float32)
    train, query = draws[..., :4], draws[..., 4:]
    weights = np.ones((3, 300), np.float32)
    weights[1, 250:] = 0  # chain 1 stopped at draw 250
    lengths = [300, 250, 300]
    expected = reference_mcse(train, query, 128, lengths=lengths)
    pooled_a, pooled_b = (np.concatenate([x[c, :n] for c, n in enumerate(lengths)])
                          .astype(np.float64) for x in (train, query))
    pooled_a, pooled_b = pooled_a - pooled_a.mean(0), pooled_b - pooled_b.mean(0)
    total = sum(lengths)
    mean_product = jnp.asarray(pooled_a.T @ pooled_b / total, jnp.float32)
    trends = []
    for block in (8, 32, 128):
        out = accumulators.streaming_reduce(
            {"errors": accumulators.batch_means("train", "query", batch_size=128),
             "trend": accumulators.linear_trend("query", batch_size=128)},
            {"train": train, "query": query}, block_size=block, weights=weights)
        mcse = accumulators.batch_means_mcse(out["errors"], mean_product,
                                             scale=total / (total - 1))
        np.testing.assert_allclose(mcse, expected, rtol=2e-4, err_msg=f"block {block}")
        trends.append(np.array(diagnostics._trend_statistics(out["trend"])))
    for block, trend in zip((8, 32), trends):  # 128: batches cut as in the array form
        np.testing.assert_allclose(trend, trends[-1], rtol=1e-4, err_msg=f"block {block}")


def test_correlation_floor_is_the_gaussian_value():
    """The correlation's floor is (1 - R²)/√N on Gaussian draws (Var R̂ ≈ (1 - R²)²/N): over
    200 reruns of 4 chains × 512 independent draws at R = 0.6 the RMS of the reported MCSE is
    within a few % of it (the spread of R̂ itself), not the (1 - R²)√(1 + R²)/√N (+17%) that
    a floor of (1 - R²) MCSE(K)/√(K_aa K_bb) gives."""
    value = 0.6

    def one(key):
        z = jax.random.normal(key, (4, 512, 2))
        return z[..., :1], value * z[..., :1] + np.sqrt(1 - value**2) * z[..., 1:]

    a, b = jax.vmap(one)(jax.random.split(jax.random.key(3), 200))
    mcse = jax.vmap(lambda a, b: accumulators._covariance_mcse_of_draws(
        a, b, "global", 1.0, 64, True))(a, b)
    rms = float(np.sqrt(np.mean(np.asarray(mcse, np.float64) ** 2)))
    gaussian = (1 - value**2) / np.sqrt(4 * 512)
    assert 0.95 * gaussian < rms < 1.1 * gaussian, (rms, gaussian)


# ----------------------------------------------------------------------------------------------
# calibration on a linear regression (closed-form kernel)


def _regression(n, d, seed, noise=0.7):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, x @ rng.standard_normal(d) + noise * rng.standard_normal(n)


def regression_loss(params, batch):
    x, y = batch
    return 0.5 * (x @ params["w"] - y) ** 2


RERUNS, CHAINS_PER_RUN = 12, 4
REGRESSION = dict(n=200, d=3, q=5, step_size=0.02, localization=1.0, draws=1024, burnin=200)


@pytest.fixture(scope="module")
def regression_runs():
    """12 independent runs of 4 chains each (one vmapped program), with the streamed kernel."""
    c = REGRESSION
    x, y = _regression(c["n"], c["d"], seed=0)
    x_query, y_query = _regression(c["q"], c["d"], seed=1)
    center = np.linalg.lstsq(x, y, rcond=None)[0]
    nbeta = slt.default_nbeta(c["n"])
    f32 = lambda *arrays: tuple(jnp.asarray(a, jnp.float32) for a in arrays)  # noqa: E731
    trace = slt.sample(
        regression_loss, {"w": jnp.asarray(center, jnp.float32)}, f32(x, y),
        slt.samplers.sgld(c["step_size"], nbeta, c["localization"]), key=jax.random.key(0),
        num_chains=RERUNS * CHAINS_PER_RUN, num_draws=c["draws"], num_burnin=c["burnin"],
        batch_size=None, query_data={"query": f32(x_query, y_query)}, store=("query",),
        accumulators={"kernel": slt.loss_kernel_accumulator("query", return_mcse=True)},
    )
    precision = nbeta * x.T @ x / c["n"] + c["localization"] * np.eye(c["d"])
    sigma = np.linalg.inv(precision) @ np.linalg.inv(
        np.eye(c["d"]) - c["step_size"] * precision / 4)  # discrete SGLD's Σ_ε
    s = x_query @ sigma @ x_query.T
    residuals = x_query @ center - y_query
    exact = np.outer(residuals, residuals) * s + s**2 / 2
    return trace, np.asarray(trace.query_losses["query"]), exact


def test_error_bars_match_the_spread_of_reruns(regression_runs):
    _, losses, _ = regression_runs
    runs = losses.reshape(RERUNS, CHAINS_PER_RUN, *losses.shape[1:])
    upper = np.triu_indices(losses.shape[2])
    for normalize in (False, True):
        values, errors = zip(*[slt.loss_kernel(run, normalize=normalize, return_mcse=True)
                               for run in runs])
        values, errors = np.array(values), np.array(errors)
        entries = upper if not normalize else np.triu_indices(losses.shape[2], 1)
        ratio = values.std(0, ddof=1)[entries] / errors.mean(0)[entries]
        assert 0.6 <= np.median(ratio) <= 1.6, (normalize, ratio)
        assert 0.4 <= ratio.min() and ratio.max() <= 2.5, (normalize, ratio)


def test_kernel_within_its_error_bars_of_the_closed_form(regression_runs):
    trace, losses, exact = regression_runs
    kernel, mcse = trace.accumulators["kernel"]
    # the sampler's blocks (128 draws) are the batches: the array form's default
    np.testing.assert_allclose(mcse, reference_mcse(losses, losses, 128), rtol=1e-3)
    z = (np.asarray(kernel, np.float64) - exact) / np.asarray(mcse, np.float64)
    # 15 strongly correlated entries (one common mode): a bound on each, not on their mean
    assert np.max(np.abs(z[np.triu_indices(exact.shape[0])])) < 4.5, z


# ----------------------------------------------------------------------------------------------
# two tasks on disjoint parameters: the cross-task block is exactly 0 in the posterior

TASK_INPUTS, HIDDEN, PER_TASK, QUERY_PER_TASK = 3, 6, 128, 6
MLP_RERUNS, MLP_CHAINS_PER_RUN = 16, 4
MLP_LOCALIZATION, MLP_STEP_SIZE, MLP_BURNIN = 300.0, 5e-4, 256


def two_head_loss(params, batch):
    """Task t's example is read by its own tanh MLP: no parameter touches both tasks."""
    x, task, y = batch
    outputs = jnp.stack([mlp_apply(params["a"], x, jnp.tanh)[:, 0],
                         mlp_apply(params["b"], x, jnp.tanh)[:, 0]], axis=1)
    return 0.5 * (jnp.take_along_axis(outputs, task[:, None], axis=1)[:, 0] - y) ** 2


def _two_task_data(per_task, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * per_task, TASK_INPUTS))
    task = np.repeat([0, 1], per_task)
    y = np.where(task == 0, np.sin(2 * x[:, 0]), x[:, 1] * x[:, 2])
    y = y + 0.1 * rng.standard_normal(2 * per_task)
    return (jnp.asarray(x, jnp.float32), jnp.asarray(task, jnp.int32), jnp.asarray(y, jnp.float32))


def _disjoint_runs(localization, num_burnin):
    """16 runs of 4 chains at an untrained point: the localized posterior factorizes over the
    two networks at any w* (one compiled program for every localization and burn-in)."""
    data, query = _two_task_data(PER_TASK, seed=0), _two_task_data(QUERY_PER_TASK, seed=1)
    keys = jax.random.split(jax.random.key(0))
    params = {name: mlp_init(key, [TASK_INPUTS, HIDDEN, 1], initialization="lecun")
              for name, key in zip("ab", keys)}
    num_examples = 2 * PER_TASK
    trace = slt.sample(
        two_head_loss, params, data,
        slt.samplers.sgld(MLP_STEP_SIZE, slt.default_nbeta(num_examples), localization),
        key=jax.random.key(1), num_chains=MLP_RERUNS * MLP_CHAINS_PER_RUN, num_draws=512,
        num_burnin=num_burnin, batch_size=None, query_data={"query": query}, store=("query",),
    )
    losses = np.asarray(trace.query_losses["query"])
    return losses.reshape(MLP_RERUNS, MLP_CHAINS_PER_RUN, *losses.shape[1:])


@pytest.fixture(scope="module")
def disjoint_runs():
    """γ = 300 relaxes the chains within the burn-in."""
    return _disjoint_runs(MLP_LOCALIZATION, MLP_BURNIN)


def test_disjoint_tasks_cross_block_is_consistent_with_zero(disjoint_runs):
    task = np.repeat([0, 1], QUERY_PER_TASK)
    cross = task[:, None] != task[None, :]
    for normalize in (False, True):
        z_squared, naive_z_squared, values, errors = [], [], [], []
        for run in disjoint_runs:
            kernel, mcse = slt.loss_kernel(run, normalize=normalize, return_mcse=True,
                                           batch_size=64)
            z_squared.append(np.mean((kernel / mcse)[cross] ** 2))
            values.append(kernel), errors.append(mcse)
            if not normalize:  # error bars as if the draws were independent
                deviation = run.reshape(-1, run.shape[-1]) - run.mean((0, 1))
                products = deviation[:, :, None] * deviation[:, None, :]
                naive = products.std(0, ddof=1) / np.sqrt(len(products))
                naive_z_squared.append(np.mean((kernel / naive)[cross] ** 2))
        # draws are autocorrelated: an iid error bar is far too small (the test can fail)
        assert normalize or np.mean(naive_z_squared) > 2.5, naive_z_squared
        assert np.mean(z_squared) <= 1.5, (normalize, z_squared)
        ratio = np.std(values, axis=0, ddof=1)[cross] / np.mean(errors, axis=0)[cross]
        assert 0.6 <= np.median(ratio) <= 1.6, ratio
    # no drift warning (a RuntimeWarning fails the test)
    assert diagnostics.shared_drift(disjoint_runs[0], batch_size=64).dominated_fraction == 0


# ----------------------------------------------------------------------------------------------
# shared drift


def test_shared_drift_warns_when_all_chains_move_together():
    rng = np.random.default_rng(0)
    stationary = rng.standard_normal((4, 512, 6)).astype(np.float32)
    quiet = diagnostics.shared_drift(stationary)
    assert quiet.dominated_fraction == 0 and quiet.message == ""
    assert np.all(np.abs(quiet.change) < 0.2)
    trend = np.linspace(0.0, 1.0, 512, dtype=np.float32)[None, :, None]
    with pytest.warns(RuntimeWarning, match="shared drift.*increase num_burnin"):
        report = diagnostics.shared_drift(stationary + trend * np.linspace(0.5, 1.5, 6))
    assert report.dominated_fraction > 0.3 and np.all(report.change > 0.2)
    assert np.all(report.z > 3)
    # chains drifting apart in opposite directions are not a shared drift
    opposite = stationary + trend * np.array([1, -1, 1, -1], np.float32)[:, None, None]
    assert diagnostics.shared_drift(opposite, warn=False).dominated_fraction == 0
    # the streaming form (inside slt.sample) gives the same report
    streamed = accumulators.streaming_reduce(
        {"trend": accumulators.linear_trend("x")}, {"x": stationary + trend}, block_size=128)
    from_stream = diagnostics.shared_drift(streamed["trend"], warn=False)
    from_array = diagnostics.shared_drift(stationary + trend, warn=False)
    np.testing.assert_allclose(from_stream.change, from_array.change, rtol=1e-4)
    np.testing.assert_allclose(from_stream.z, from_array.z, rtol=1e-3)
    # a BIF: train rows x query columns
    other = rng.standard_normal((4, 512, 3)).astype(np.float32)
    assert diagnostics.shared_drift(stationary + trend, other, warn=False).dominated_fraction == 0


def test_shared_drift_warns_on_chains_that_have_not_relaxed(disjoint_runs):
    # every run of the relaxed chains is quiet (a RuntimeWarning would fail the test) ...
    for run in disjoint_runs:
        assert diagnostics.shared_drift(run).dominated_fraction <= diagnostics.DRIFT_WARNING_FRACTION
    # ... while chains started together at an untrained w*, without burn-in and with a weak
    # localization (relaxation ~ 400 draws of 512), drift together: most runs warn
    unrelaxed = _disjoint_runs(localization=10.0, num_burnin=0)
    warned = [diagnostics.shared_drift(run, batch_size=64, warn=False).message != ""
              for run in unrelaxed]
    assert sum(warned) >= 4, warned
