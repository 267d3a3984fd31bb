"""Loss kernel and Bayesian influence function (docs/mathematics.md §3, §4, §7).

The statistical tests compare sampled kernels with the closed form for linear regression under
discretized SGLD with full-batch gradients, with tolerances from Monte Carlo standard errors
(many vmapped chains); the others are identities that hold to float tolerance on the same draws.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as slt
from slt_jax import accumulators
from slt_jax.estimators.influence import (
    BIFResult,
    bif,
    bif_accumulator,
    estimate_bif,
    loss_kernel,
    loss_kernel_accumulator,
)

CENTERS = ("global", "chain")


# ----------------------------------------------------------------------------------------------
# linear regression and its exact kernel (docs/mathematics.md §7)


def loss_fn(params, batch):
    x, y = batch
    return 0.5 * (x @ params["w"] - y) ** 2


def token_loss_fn(params, batch):
    """Multi-output regression, one "token" per output: ``(b, T)`` losses."""
    x, y = batch
    return 0.5 * (x @ params["w"] - y) ** 2


def _regression(n, d, seed, outputs=None, noise=0.7):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    shape = (d,) if outputs is None else (d, outputs)
    y = x @ rng.standard_normal(shape) + noise * rng.standard_normal((n,) + shape[1:])
    return x, y


def _least_squares(x, y):
    return np.linalg.lstsq(x, y, rcond=None)[0]


def _sgld_covariance(x, nbeta, localization, step_size):
    """Stationary covariance of discrete full-batch SGLD on L = mean ½(xᵀw − y)²:
    ``A⁻¹ (I − εA/4)⁻¹`` with ``A = nβ XᵀX/n + γI``."""
    d = x.shape[1]
    precision = nbeta * x.T @ x / x.shape[0] + localization * np.eye(d)
    return np.linalg.inv(precision) @ np.linalg.inv(np.eye(d) - step_size * precision / 4)


def _exact_kernel(x_query, residuals, sigma):
    """``Cov(ℓ_i, ℓ_j) = r_i r_j S_ij + S_ij²/2`` with ``S = X_q Σ X_qᵀ`` (w Gaussian at w*)."""
    s = x_query @ sigma @ x_query.T
    return np.outer(residuals, residuals) * s + s**2 / 2


def _f32(*arrays):
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


EXACT = dict(n=200, d=4, q=8, step_size=0.01, localization=1.0, chains=64, draws=2000, burnin=200)


@pytest.fixture(scope="module")
def exact_run():
    """64 full-batch SGLD chains on a regular regression, query losses stored."""
    c = EXACT
    x, y = _regression(c["n"], c["d"], seed=0)
    x_query, y_query = _regression(c["q"], c["d"], seed=1)
    center = _least_squares(x, y)
    nbeta = slt.default_nbeta(c["n"])
    sampler = slt.samplers.sgld(c["step_size"], nbeta, c["localization"])
    trace = slt.sample(
        loss_fn, {"w": jnp.asarray(center, jnp.float32)}, _f32(x, y), sampler,
        key=jax.random.key(0), num_chains=c["chains"], num_draws=c["draws"],
        num_burnin=c["burnin"], batch_size=None, query_data={"query": _f32(x_query, y_query)},
        store=("query",),
    )
    sigma = _sgld_covariance(x, nbeta, c["localization"], c["step_size"])
    exact = _exact_kernel(x_query, x_query @ center - y_query, sigma)
    return np.asarray(trace.query_losses["query"], np.float64), exact


def test_kernel_matches_the_exact_linear_regression_kernel(exact_run):
    losses, exact = exact_run
    kernel = np.asarray(loss_kernel(losses.astype(np.float32)), np.float64)
    off_diagonal = ~np.eye(exact.shape[0], dtype=bool)
    correlation = np.corrcoef(kernel[off_diagonal], exact[off_diagonal])[0, 1]
    assert correlation >= 0.98, correlation
    # diagonal: MCSE of each variance from the spread of the per-chain variance estimates
    per_chain = np.var(losses, axis=1, ddof=1)  # (chains, q)
    mcse = per_chain.std(axis=0, ddof=1) / np.sqrt(per_chain.shape[0])
    z = (np.diag(kernel) - np.diag(exact)) / mcse
    assert np.all(np.abs(z) < 4), z


# ----------------------------------------------------------------------------------------------
# identities on the same draws


def _chain_offset_draws(seed, shape, num_chains=3, num_draws=60):
    """Correlated float32 draws ``(num_chains, num_draws, *shape)`` whose chains sit at
    different means (so the centering matters)."""
    rng = np.random.default_rng(seed)
    ones = (1,) * (len(shape) - 1)
    common = rng.standard_normal((num_chains, num_draws, 1) + ones)
    loadings = np.linspace(-1.0, 1.5, shape[0]).reshape((1, 1, shape[0]) + ones)
    offsets = 0.5 * rng.standard_normal((num_chains, 1) + shape)
    noise = rng.standard_normal((num_chains, num_draws) + shape)
    return (noise + common * loadings + offsets).astype(np.float32)


def test_bif_is_minus_the_cross_block_of_the_kernel():
    train = _chain_offset_draws(1, (5,))
    query = _chain_offset_draws(2, (3,)) + train[:, :, :3]
    both = np.concatenate([train, query], axis=2)

    @jax.jit  # one compiled program for every variant (each compilation costs ~1 s here)
    def forms(train, query, both):
        out = {}
        for c in CENTERS:
            for z in (False, True):
                out["kernel", c, z] = loss_kernel(both, normalize=z, center=c)
                out["bif", c, z] = bif(train, query, beta=1.0, normalize=z, center=c)
                out["bif 0.3", c, z] = bif(train, query, beta=0.3, normalize=z, center=c)
        return out

    out = forms(train, query, both)
    for c in CENTERS:
        for z in (False, True):
            np.testing.assert_allclose(out["bif", c, z], -out["kernel", c, z][:5, 5:],
                                       rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["bif 0.3", c, False], 0.3 * out["bif", c, False],
                                   rtol=1e-6)
        # beta is ignored by the correlation form
        np.testing.assert_array_equal(out["bif 0.3", c, True], out["bif", c, True])
    assert np.max(np.abs(out["bif", "global", False] - out["bif", "chain", False])) > 1e-2


def test_token_level_bif_sums_to_the_sequence_level_bif():
    train = _chain_offset_draws(3, (4, 3))  # (chains, draws, n, T)
    query = _chain_offset_draws(4, (2, 5)) + train[:, :, :2, :1]  # T' = 5

    @jax.jit
    def forms(train, query):
        sequences = train.sum(-1), query.sum(-1)
        return {c: (bif(train, query, beta=0.7, center=c), bif(*sequences, beta=0.7, center=c),
                    loss_kernel(train, center=c), loss_kernel(sequences[0], center=c))
                for c in CENTERS}

    for tokens, sequences, token_kernel, sequence_kernel in forms(train, query).values():
        assert tokens.shape == (4, 3, 2, 5) and token_kernel.shape == (4, 3, 4, 3)
        for token_level, sequence_level in [(tokens, sequences), (token_kernel, sequence_kernel)]:
            np.testing.assert_allclose(
                token_level.sum(axis=(1, 3)), sequence_level, rtol=1e-5,
                atol=1e-5 * float(np.max(np.abs(sequence_level))),
            )


@pytest.mark.parametrize("center", CENTERS)
def test_normalized_kernel_is_a_correlation_with_zero_for_constant_losses(center):
    losses = _chain_offset_draws(5, (4,))
    # the same at every draw: its variance must come out exactly 0 (without the shift by the
    # first draw, float32 rounding leaves ~1e-13 and the correlations come out as ±1)
    losses[:, :, 1] = 10.1
    correlation = np.asarray(loss_kernel(losses, normalize=True, center=center))
    influence = np.asarray(bif(losses, losses, normalize=True, center=center))
    for constant in (correlation[1], correlation[:, 1], influence[1], influence[:, 1]):
        np.testing.assert_array_equal(constant, 0.0)
    kept = [0, 2, 3]
    if center == "chain":
        losses = losses - losses.mean(axis=1, keepdims=True)
    expected = np.corrcoef(losses.reshape(-1, 4)[:, kept].T)
    np.testing.assert_allclose(correlation[np.ix_(kept, kept)], expected, atol=1e-5)
    np.testing.assert_allclose(influence[np.ix_(kept, kept)], -expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# streaming through slt.sample equals the array forms on the stored draws


def test_streaming_equals_batch_on_the_same_draws():
    """One run: per-token query sets ``(20, 2)``, ``(6, 2)`` and, as observables, their
    token-summed per-example losses ``(20,)``, ``(6,)``; accumulators on both."""
    x, y = _regression(48, 3, seed=2, outputs=2)
    params = {"w": jnp.asarray(_least_squares(x, y), jnp.float32)}
    train, query = _f32(x[:20], y[:20]), _f32(*_regression(6, 3, 3, outputs=2))
    every = [(center, normalize) for center in CENTERS for normalize in (False, True)]
    settings = [("train_sum", "query_sum", c, z) for c, z in every]  # per example
    settings += [("train", "query", "global", True), ("train", "query", "chain", False)]  # token
    reducers = {}
    for train_stream, query_stream, c, z in settings:
        reducers[("bif", train_stream, c, z)] = bif_accumulator(
            train_stream, query_stream, beta=0.25, normalize=z, center=c)
        reducers[("kernel", query_stream, c, z)] = loss_kernel_accumulator(
            query_stream, normalize=z, center=c)
    trace = slt.sample(
        token_loss_fn, params, _f32(x, y), slt.samplers.sgld(2e-3, 20.0, 1.0),
        key=jax.random.key(6), num_chains=3, num_draws=45, num_burnin=5, batch_size=16,
        draws_per_block=16, query_data={"train": train, "query": query}, accumulators=reducers,
        observables={"train_sum": lambda p: token_loss_fn(p, train).sum(-1),
                     "query_sum": lambda p: token_loss_fn(p, query).sum(-1)},
    )
    streams = {**trace.query_losses, **trace.observables}

    @jax.jit  # every array form in one compiled program (compiling each costs seconds here)
    def array_forms(streams):
        forms = {}
        for train_stream, query_stream, c, z in settings:
            forms[("bif", train_stream, c, z)] = bif(
                streams[train_stream], streams[query_stream], beta=0.25, normalize=z, center=c)
            forms[("kernel", query_stream, c, z)] = loss_kernel(
                streams[query_stream], normalize=z, center=c)
        return forms

    expected = array_forms(streams)
    assert expected[("bif", "train", "global", True)].shape == (20, 2, 6, 2)
    for name, value in expected.items():
        streamed = trace.accumulators[name]
        assert streamed.shape == value.shape, name
        scale = float(np.max(np.abs(value)))
        np.testing.assert_allclose(streamed, value, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    # the centering matters in this run, so a mix-up would fail above
    by_center = [expected[("bif", "train_sum", c, False)] for c in CENTERS]
    assert np.max(np.abs(by_center[0] - by_center[1])) > 1e-2 * np.max(np.abs(by_center[0]))


# ----------------------------------------------------------------------------------------------
# two tasks on disjoint parameter blocks


def two_task_loss_fn(params, batch):
    x, task, y = batch
    prediction = jnp.where(task == 0, x @ params["a"], x @ params["b"])
    return 0.5 * (prediction - y) ** 2


def _two_task_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    task = np.arange(n) % 2
    weights = np.array([[1.0, -2.0], [0.5, 3.0]])
    y = np.einsum("nd,nd->n", x, weights[task]) + 0.7 * rng.standard_normal(n)
    return x, task, y


def test_two_tasks_on_disjoint_parameters_give_a_block_diagonal_kernel():
    x, task, y = _two_task_data(200, seed=4)
    centers = {name: _least_squares(x[task == t], y[task == t]) for t, name in enumerate("ab")}
    params = {name: jnp.asarray(value, jnp.float32) for name, value in centers.items()}
    x_query, task_query, y_query = _two_task_data(12, seed=5)
    order = np.argsort(task_query, kind="stable")  # task a first, then task b
    query = (jnp.asarray(x_query[order], jnp.float32), jnp.asarray(task_query[order]),
             jnp.asarray(y_query[order], jnp.float32))
    data = (jnp.asarray(x, jnp.float32), jnp.asarray(task), jnp.asarray(y, jnp.float32))
    trace = slt.sample(
        two_task_loss_fn, params, data, slt.samplers.sgld(0.02, slt.default_nbeta(200), 1.0),
        key=jax.random.key(7), num_chains=32, num_draws=1500, num_burnin=100, batch_size=None,
        query_data={"query": query}, store=("query",),
    )
    losses = trace.query_losses["query"]
    correlation = np.asarray(loss_kernel(losses, normalize=True))
    in_a = task_query[order] == 0
    ess = min(slt.diagnostics.effective_sample_size(np.asarray(losses[:, :, i]))
              for i in range(losses.shape[2]))
    noise_level = 4 / np.sqrt(ess)  # |corr| of independent series: sd <= 1/sqrt(ESS)
    cross = correlation[np.ix_(in_a, ~in_a)]
    assert np.max(np.abs(cross)) < noise_level, (np.max(np.abs(cross)), noise_level)
    within = [correlation[np.ix_(m, m)][~np.eye(m.sum(), dtype=bool)] for m in (in_a, ~in_a)]
    assert np.mean(np.abs(np.concatenate(within))) > 5 * noise_level


# ----------------------------------------------------------------------------------------------
# one call


def test_estimate_bif_end_to_end():
    n, d, q = 100, 3, 5
    x, y = _regression(n, d, seed=6)
    center = _least_squares(x, y)
    data = _f32(x, y)
    query = _f32(x[:q], y[:q])  # the first q training examples: self-influence is -beta Var < 0
    result = estimate_bif(loss_fn, {"w": jnp.asarray(center, jnp.float32)}, data, query,
                          key=jax.random.key(8), store_losses=True)  # draws: until MCSE
    assert isinstance(result, BIFResult)
    assert result.bif.shape == (n, q) and np.all(np.isfinite(result.bif))
    nbeta = float(n)  # estimate_bif's default: nβ = n, β = 1 (tests/test_bif_defaults.py)
    assert result.hyperparameters["beta"] == pytest.approx(nbeta / n)
    assert np.all(np.diag(np.asarray(result.bif)[:q]) < 0)
    stored = result.trace.query_losses
    np.testing.assert_allclose(
        result.bif, bif(stored["train"], stored["query"], beta=nbeta / n), rtol=1e-4,
        atol=1e-5 * float(np.max(np.abs(result.bif))),
    )
    # LLC of a regular model: E = ½ Σ nβ a_i / (nβ a_i + γ) (docs/mathematics.md §7, ε → 0); tolerance
    # 4 MCSE plus 10% of it for the calibrated step size's discretization and minibatch bias
    curvatures = np.linalg.eigvalsh(x.T @ x / n)
    expected = 0.5 * np.sum(nbeta * curvatures / (nbeta * curvatures + 1.0))
    assert abs(result.llc.mean - expected) < 4 * result.llc.mcse + 0.1 * expected, (
        result.llc.mean, result.llc.mcse, expected)


# ----------------------------------------------------------------------------------------------
# bad input


def test_bad_shapes_and_options_raise_clear_errors():
    draws = np.zeros((2, 10, 3))
    with pytest.raises(ValueError, match=r"\(num_chains, num_draws, q\)"):
        loss_kernel(np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"\(num_chains, num_draws, q, T\)"):
        loss_kernel(np.zeros((2, 10, 3, 4, 5)))
    with pytest.raises(ValueError, match="train_losses must have shape"):
        bif(np.zeros((2, 10)), draws)
    with pytest.raises(ValueError, match="same draws"):
        bif(np.zeros((3, 10, 4)), draws)
    with pytest.raises(ValueError, match="same draws"):
        bif(np.zeros((2, 11, 4)), draws)
    with pytest.raises(ValueError, match="center must be one of"):
        bif(draws, draws, center="stack")
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        bif(draws, draws, beta=-1.0)
    with pytest.raises(ValueError, match="center must be one of"):
        loss_kernel_accumulator("q", center="stack")
    data = (np.zeros((4, 2), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="center must be one of"):  # before any sampling
        estimate_bif(loss_fn, {"w": jnp.zeros(2)}, data, data, key=jax.random.key(0),
                     center="stack")
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        estimate_bif(loss_fn, {"w": jnp.zeros(2)}, data, data, key=jax.random.key(0),
                     beta=float("nan"))
    with pytest.raises(ValueError, match=r"stream 'a' must have shape \(num_chains, q\)"):
        accumulators.streaming_reduce({"b": bif_accumulator("a", "b")},
                                      {"a": np.zeros((2, 10, 3, 4, 5)), "b": draws}, 4)
