"""Evaluation by retraining (issue 10, item 3): LDS, the retraining harness, IF baselines.

Closed forms used as truths (float64 numpy):

* ridge regression, ``ℓ_i = ½(x_iᵀw − y_i)²``, objective ``Σ_i c_i ℓ_i / C + (λ/2)‖w‖²``:
  ``w = (XᵀDX/C + λI)⁻¹ XᵀDy/C`` with ``D = diag(c)``;
* the Gaussian posterior of the same model: ``Cov(ℓ_i, ℓ_k) = r_i r_k S_ik + S_ik²/2`` with
  ``S = XΣXᵀ`` and discrete SGLD's stationary ``Σ_ε = A⁻¹(I − εA/4)⁻¹`` (docs/mathematics.md §7).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

import slt_jax as slt
from slt_jax import evaluation

RIDGE = 0.1


def squared_error(w, batch):
    x, y = batch
    return 0.5 * jnp.square(jnp.matmul(x, w) - y)


def ridge_loss(w, batch):
    """The ridge objective per example: the penalty folded into every example's loss."""
    return squared_error(w, batch) + 0.5 * RIDGE * jnp.sum(jnp.square(w))


def ridge_problem(seed, n=100, d=10, q=16, noise=1.0, scales=(0.5, 2.0)):
    """Features with scales from 0.5 to 2 (condition number of H ≈ 15, so H ≠ I and grad-dot
    is visibly worse than the IF); returns float64 arrays and the ridge minimizer."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(*scales, d)
    x = rng.normal(size=(n + q, d)) * scale[None, :]
    y = x @ (rng.normal(size=d) / scale) + noise * rng.normal(size=n + q)
    return x[:n], y[:n], x[n:], y[n:], ridge_solution(x[:n], y[:n], np.ones(n))


def ridge_solution(x, y, weights, regularization=RIDGE):
    total = weights.sum()
    gram = (x * weights[:, None]).T @ x / total + regularization * np.eye(x.shape[1])
    return np.linalg.solve(gram, (x * weights[:, None]).T @ y / total)


def as32(*arrays):
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


# ---------------------------------------------------------------------------------------------
# lds


@pytest.fixture
def lds_case():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 6))
    subsets = np.asarray(evaluation.random_subsets(jax.random.key(0), 60, 40))
    return scores, subsets, subsets @ scores


def test_lds_is_one_for_an_exact_linear_prediction_and_minus_one_reversed(lds_case):
    scores, subsets, predicted = lds_case
    assert evaluation.lds(scores, subsets, predicted + 3.0) == pytest.approx(1.0)
    assert evaluation.lds(scores, subsets, 2.0 * predicted) == pytest.approx(1.0)
    assert evaluation.lds(scores, subsets, 5.0 - predicted) == pytest.approx(-1.0)
    # the opposite sign convention (positive = helpful) is scored -1
    assert evaluation.lds(-scores, subsets, predicted) == pytest.approx(-1.0)


def test_lds_is_one_under_a_monotone_nonlinear_transform(lds_case):
    scores, subsets, predicted = lds_case
    assert evaluation.lds(scores, subsets, np.exp(predicted)) == pytest.approx(1.0)
    assert evaluation.lds(scores, subsets, np.tanh(predicted / 10) ** 3) == pytest.approx(1.0)


def test_lds_per_query_equals_scipy_spearman_with_ties():
    """Integer scores give many tied predictions: average ranks, as scipy.stats.spearmanr."""
    rng = np.random.default_rng(1)
    scores = rng.integers(-2, 3, size=(12, 4)).astype(float)
    subsets = rng.random((30, 12)) < 0.5
    actual = np.round(rng.normal(size=(30, 4)), 1)
    expected = [scipy.stats.spearmanr(actual[:, k], subsets @ scores[:, k]).statistic
                for k in range(4)]
    np.testing.assert_allclose(evaluation.lds_per_query(scores, subsets, actual), expected,
                               rtol=1e-12)


def test_lds_of_unrelated_scores_is_at_the_noise_level_of_spearmans_rho():
    """Under independence each query's rho has mean 0 and sd 1/sqrt(M-1); given `actual`, the
    queries' rhos are independent (independent score columns), so the mean over q has sd
    1/sqrt((M-1) q) = 0.011 here. Tolerance: 4 sd (a false failure rate of 6e-5)."""
    rng = np.random.default_rng(2)
    num_subsets, n, q = 400, 50, 20
    subsets = rng.random((num_subsets, n)) < 0.5
    value = evaluation.lds(rng.normal(size=(n, q)), subsets, rng.normal(size=(num_subsets, q)))
    assert abs(value) < 4 / np.sqrt((num_subsets - 1) * q)


def test_lds_skips_constant_queries_with_a_warning(lds_case):
    scores, subsets, predicted = lds_case
    actual = predicted.copy()
    actual[:, 2] = 1.0
    per_query = evaluation.lds_per_query(scores, subsets, actual)
    assert np.isnan(per_query[2]) and np.isfinite(np.delete(per_query, 2)).all()
    with pytest.warns(RuntimeWarning, match="1 of 6 queries"):
        assert evaluation.lds(scores, subsets, actual) == pytest.approx(1.0)
    with pytest.warns(RuntimeWarning, match="every query"):
        assert np.isnan(evaluation.lds(np.zeros_like(scores), subsets, actual))


def test_lds_rejects_mismatched_shapes_and_non_indicator_subsets(lds_case):
    scores, subsets, predicted = lds_case
    with pytest.raises(ValueError, match="subsets must be"):
        evaluation.lds(scores, subsets[:, :-1], predicted)
    with pytest.raises(ValueError, match="actual"):
        evaluation.lds(scores, subsets, predicted[:, :-1])
    with pytest.raises(ValueError, match="boolean"):
        evaluation.lds(scores, 2 * subsets.astype(int), predicted)
    with pytest.raises(ValueError, match="non-finite"):
        evaluation.lds(scores * np.nan, subsets, predicted)


def test_random_subsets_have_one_size_and_differ():
    subsets = np.asarray(evaluation.random_subsets(jax.random.key(3), 50, 21, fraction=0.5))
    assert subsets.dtype == bool and subsets.shape == (50, 21)
    assert (subsets.sum(axis=1) == 10).all()  # round(10.5) = 10 (banker's rounding)
    assert len({row.tobytes() for row in subsets}) == 50
    assert 0.3 < subsets.mean(axis=0).min() and subsets.mean(axis=0).max() < 0.7


# ---------------------------------------------------------------------------------------------
# retraining harness


def test_retraining_matches_closed_form_ridge_and_compiles_once():
    x, y, xq, yq, w_star = ridge_problem(0, n=40, d=5, q=6)
    train, query = (as32(x, y)), as32(xq, yq)
    optimizer = optax.sgd(0.2)
    options = dict(optimizer=optimizer, num_steps=600, regularization=RIDGE, query_data=query)
    init = jnp.asarray(w_star, jnp.float32)  # warm start at the full-data minimizer
    evaluation.retrain_on_subsets(squared_error, init, train,
                                  evaluation.random_subsets(jax.random.key(0), 8, 40), **options)
    subsets = evaluation.random_subsets(jax.random.key(1), 8, 40)
    jax.block_until_ready(subsets)
    with slt.count_compilations() as counter:
        result = evaluation.retrain_on_subsets(
            squared_error, init, train, subsets, **dict(options, optimizer=optax.sgd(0.2)))
        jax.block_until_ready(result)
    assert counter.count == 0  # new subsets, and an optimizer rebuilt alike: same program
    expected = np.stack([ridge_solution(x, y, s.astype(float)) for s in np.asarray(subsets)])
    np.testing.assert_allclose(result.params, expected, atol=2e-5)
    residual = expected @ xq.T - yq[None, :]
    np.testing.assert_allclose(result.query_losses, 0.5 * residual**2, rtol=1e-4, atol=1e-6)
    assert result.objective.shape == (8,) and float(result.gradient_norm.max()) < 1e-4


def test_retraining_in_chunks_with_lbfgs_from_per_subset_starts():
    """lax.map over subsets, an extra-args optimizer (L-BFGS gets value_fn), and a separate
    starting point per subset all give the same closed-form minimizers."""
    x, y, _, _, _ = ridge_problem(1, n=30, d=4, q=2)
    subsets = evaluation.random_subsets(jax.random.key(2), 4, 30, fraction=0.7)
    starts = jax.random.normal(jax.random.key(3), (4, 4))
    result = evaluation.retrain_on_subsets(
        squared_error, starts, as32(x, y), subsets, optimizer=optax.lbfgs(), num_steps=40,
        regularization=RIDGE, batched_init=True, subset_chunk_size=2,
    )
    expected = np.stack([ridge_solution(x, y, s.astype(float)) for s in np.asarray(subsets)])
    np.testing.assert_allclose(result.params, expected, atol=2e-5)
    assert result.query_losses is None


def test_retraining_rejects_bad_subsets():
    x, y, _, _, w_star = ridge_problem(0, n=10, d=2, q=1)
    options = dict(optimizer=optax.sgd(0.1), num_steps=1)
    with pytest.raises(ValueError, match=r"\(M, 10\)"):
        evaluation.retrain_on_subsets(squared_error, w_star, as32(x, y), np.ones((3, 9), bool),
                                      **options)
    empty = np.ones((3, 10), bool)
    empty[1] = False
    with pytest.raises(ValueError, match="empty"):
        evaluation.retrain_on_subsets(squared_error, w_star, as32(x, y), empty, **options)


# ---------------------------------------------------------------------------------------------
# influence baselines


def _unnormalized_ridge(x, y, weights):
    """argmin (1/n) Σ c_i ℓ_i + λ/2 ‖w‖² (upweighting without renormalizing)."""
    n = len(y)
    gram = (x * weights[:, None]).T @ x / n + RIDGE * np.eye(x.shape[1])
    return np.linalg.solve(gram, (x * weights[:, None]).T @ y / n)


def test_exact_influence_is_the_derivative_of_the_retrained_ridge_query_loss():
    """For ridge the IF is exact: n · dφ_k/dε_i by central differences (ε = 1e-4, float64,
    error O(ε²) ≈ 1e-8) equals exact_influence (float32) to 1e-4 of the largest score.

    Two readings of the penalty: ``damping=λ`` with the plain loss is the derivative for
    upweighting in (1/n)Σ(1+ε_j)ℓ_j + λ/2‖w‖²; the penalty folded into loss_fn (no damping) is
    the derivative, for the normalized weighting Σc_jℓ_j/Σc_j + λ/2‖w‖², of the folded query
    "loss" φ_k + λ/2‖w‖²."""
    x, y, xq, yq, w_star = ridge_problem(4, n=30, d=5, q=4)
    n, epsilon = len(y), 1e-4
    params, train, query = jnp.asarray(w_star, jnp.float32), as32(x, y), as32(xq, yq)

    def plain(index, e):
        weights = np.ones(n)
        weights[index] += e
        w = _unnormalized_ridge(x, y, weights)
        return 0.5 * (xq @ w - yq) ** 2

    def folded(index, e):  # Σ c_j ℓ_j / Σ c_j + λ/2‖w‖², query "loss" with the penalty
        weights = np.ones(n)
        weights[index] += e
        w = ridge_solution(x, y, weights)
        return 0.5 * (xq @ w - yq) ** 2 + 0.5 * RIDGE * w @ w

    for scores, loss in [
        (evaluation.exact_influence(squared_error, params, train, query, damping=RIDGE), plain),
        (evaluation.exact_influence(ridge_loss, params, train, query), folded),
    ]:
        derivative = np.stack([(loss(i, epsilon) - loss(i, -epsilon)) / (2 * epsilon)
                               for i in range(n)])
        np.testing.assert_allclose(scores, n * derivative, atol=1e-4 * np.abs(scores).max())


def logistic_problem(n=120, d=4, q=8):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n + q, d))
    labels = (x @ rng.normal(size=d) + rng.logistic(size=n + q) > 0).astype(float)
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(labels, jnp.float32)}
    return jax.tree.map(lambda a: a[:n], data), jax.tree.map(lambda a: a[n:], data)


def logistic_loss(params, batch):
    logits = jnp.matmul(batch["x"], params["w"]) + params["b"]
    losses = optax.sigmoid_binary_cross_entropy(logits, batch["y"])
    return losses + 0.5 * 0.01 * (jnp.sum(jnp.square(params["w"])) + jnp.square(params["b"]))


def test_conjugate_gradient_influence_equals_exact_influence_on_logistic_regression():
    train, query = logistic_problem()
    init = {"w": jnp.zeros(4), "b": jnp.zeros(())}
    params = evaluation.retrain_on_subsets(
        logistic_loss, init, train, np.ones((1, 120), bool), optimizer=optax.sgd(1.0),
        num_steps=300).params
    params = jax.tree.map(lambda leaf: leaf[0], params)
    exact = evaluation.exact_influence(logistic_loss, params, train, query, damping=0.01)
    conjugate = evaluation.conjugate_gradient_influence(
        logistic_loss, params, train, query, damping=0.01, tolerance=1e-6, max_iterations=50)
    assert exact.shape == (120, 8)
    np.testing.assert_allclose(conjugate, exact, atol=1e-4 * float(jnp.abs(exact).max()))


def test_grad_dot_is_the_influence_function_when_the_hessian_is_the_identity():
    """Mean estimation ℓ_i = ½‖w − y_i‖² has H = I, so the IF (no damping) is grad-dot."""
    def mean_estimation(w, batch):
        return 0.5 * jnp.sum(jnp.square(w[None, :] - batch), axis=1)

    rng = np.random.default_rng(6)
    train, query = jnp.asarray(rng.normal(size=(20, 3)), jnp.float32), jnp.ones((5, 3))
    w = jnp.mean(train, axis=0)
    dot = evaluation.grad_dot(mean_estimation, w, train, query)
    np.testing.assert_allclose(dot, -(train - w[None, :]) @ (query - w[None, :]).T, atol=1e-5)
    np.testing.assert_allclose(evaluation.exact_influence(mean_estimation, w, train, query), dot,
                               atol=1e-5)


def test_exact_influence_refuses_large_models_and_singular_hessians():
    big = jnp.zeros(5001)
    data = (jnp.ones((4, 5001)), jnp.ones(4))
    with pytest.raises(ValueError, match="conjugate_gradient_influence"):
        evaluation.exact_influence(squared_error, big, data, data)
    flat = (jnp.ones((4, 3)), jnp.ones(4))  # rank-1 Hessian
    with pytest.raises(ValueError, match="singular"):
        evaluation.exact_influence(squared_error, jnp.zeros(3), flat, flat)


# ---------------------------------------------------------------------------------------------
# acceptance (issue 10): BIF vs the baselines by LDS on ridge regression


def _sampled_bif(x, y, xq, yq, w_star, *, localization, key):
    """BIF = −β Cov(ℓ_i, φ_k) from SGLD draws, with the engine (β = nβ/n = 1)."""
    n = len(y)
    gram = x.T @ x + (n * RIDGE + localization) * np.eye(x.shape[1])
    step_size = 0.1 / np.linalg.eigvalsh(gram).max()
    sampler = slt.samplers.sgld(step_size=float(step_size), nbeta=float(n),
                                localization=localization)
    trace = slt.sample(ridge_loss, jnp.asarray(w_star, jnp.float32), as32(x, y), sampler, key=key,
                       num_chains=16, num_draws=4000, num_burnin=1000, steps_per_draw=10,
                       observables={"w": lambda w: w}, store=("w",))
    draws = trace.observables["w"]
    losses_on = lambda data: jax.vmap(jax.vmap(lambda w: squared_error(w, data)))(draws)
    covariance = slt.accumulators.cross_covariance_of_draws(losses_on(as32(x, y)),
                                                            losses_on(as32(xq, yq)))
    return -1.0 * covariance, gram, step_size


def _gaussian_bif(x, y, xq, yq, w_star, gram, step_size):
    """−Cov(ℓ_i, φ_k) under N(w*, Σ_ε): r_i r_k S_ik + S_ik²/2, S = X Σ_ε X_qᵀ."""
    sigma = np.linalg.inv(gram) @ np.linalg.inv(np.eye(len(gram)) - step_size * gram / 4)
    s = x @ sigma @ xq.T
    residual, query_residual = x @ w_star - y, xq @ w_star - yq
    return -(residual[:, None] * query_residual[None, :] * s + 0.5 * s**2)


@pytest.mark.slow
def test_bif_predicts_retraining_as_well_as_the_exact_influence_function_on_ridge():
    """Ridge regression, n = 100, d = 10, 16 held-out queries, 100 random half-size subsets
    retrained by the harness (warm start, gradient descent to ‖∇J‖ < 1e-4).

    BIF posterior: the sampled loss is the ridge objective per example (penalty folded in), with
    nβ = n, i.e. β = 1: ℓ = ½r² is the Gaussian negative log-likelihood (unit noise), and
    exp(−Σℓ_i − nλ/2‖w‖²) is exactly the Bayesian ridge posterior (prior N(0, (nλ)⁻¹I)),
    centred at the ridge minimizer w*, where the chains start. The localization γ = 1 is small
    (the prior precision is nλ = 10, XᵀX's eigenvalues ≳ 20) and keeps its centre at w*.
    The posterior is Gaussian, so its BIF is −(1/n)∇φᵀ(H + (γ/n)I)⁻¹∇ℓ_i − S²/2: the damped IF
    in the per-example form up to the factor 1/n (invisible to LDS) plus a small second-order
    term. Step size ε = 0.1/λ_max(A) (A = XᵀX + (nλ+γ)I): SGLD's variance inflation
    (1 − εA/4)⁻¹ is at most 2.5%. 16 chains × 4000 draws × 10 steps: the sampled BIF
    correlates > 0.99 with the closed-form BIF of the discrete chain, so Monte Carlo noise
    does not limit its LDS.

    Measured (these seeds): exact IF 0.875, CG IF 0.875, BIF 0.869, grad-dot 0.705,
    random 0.042; over 4 other data seeds |BIF − exact| ≤ 0.01. Asserted: |BIF − exact|
    < 0.05, both > 0.7, |CG − exact| < 0.01, random |LDS| < 0.2; grad-dot is recorded (H ≠ I
    here, so it is lower) and asserted only above random.
    """
    x, y, xq, yq, w_star = ridge_problem(0)
    params, train, query = jnp.asarray(w_star, jnp.float32), as32(x, y), as32(xq, yq)
    subsets = evaluation.random_subsets(jax.random.key(0), 100, len(y))
    retrained = evaluation.retrain_on_subsets(
        squared_error, params, train, subsets, optimizer=optax.sgd(0.1), num_steps=2000,
        regularization=RIDGE, query_data=query)
    assert float(retrained.gradient_norm.max()) < 1e-4
    bif, gram, step_size = _sampled_bif(x, y, xq, yq, w_star, localization=1.0,
                                        key=jax.random.key(1))
    closed_form = _gaussian_bif(x, y, xq, yq, w_star, gram, step_size)
    assert np.corrcoef(np.asarray(bif).ravel(), closed_form.ravel())[0, 1] > 0.99
    scores = {
        "BIF": bif,
        "exact IF": evaluation.exact_influence(squared_error, params, train, query, damping=RIDGE),
        "CG IF": evaluation.conjugate_gradient_influence(squared_error, params, train, query,
                                                         damping=RIDGE),
        "grad-dot": evaluation.grad_dot(squared_error, params, train, query),
        "random": evaluation.random_scores(jax.random.key(2), len(y), len(yq)),
    }
    table = {name: evaluation.lds(s, subsets, retrained.query_losses) for name, s in scores.items()}
    print("\nLDS on ridge regression:", {name: round(v, 3) for name, v in table.items()})
    assert abs(table["BIF"] - table["exact IF"]) < 0.05, table
    assert table["BIF"] > 0.7 and table["exact IF"] > 0.7, table
    assert abs(table["CG IF"] - table["exact IF"]) < 0.01, table
    assert abs(table["random"]) < 0.2, table
    assert table["grad-dot"] > abs(table["random"]), table
