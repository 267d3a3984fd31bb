"""``estimate_bif`` with no hyperparameters (issue 17, item 1).

* ridge regression (the README's case, n = 100, d = 10, λ = 0.1): at the defaults the BIF
  predicts retraining (LDS) within 0.03 of the exact influence function and above grad-dot, and
  it is the exact BIF of the Gaussian posterior within its error bars;
* an L2 logistic regression: the BIF agrees with (1/n)·Koh–Liang's I_up,loss damped by
  λ + γ/nβ (slope 1 ± 0.05, Pearson ≥ 0.98);
* ``result.hyperparameters`` records β, the localization and the draws with their reasons;
  ``mask=`` and ``sampler_options=`` work as in ``estimate_llc``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import slt_jax as slt
from slt_jax import evaluation
from slt_jax.estimators import influence

RIDGE = 0.1
LOGISTIC_PENALTY = 0.01


def squared_error(w, batch):
    return 0.5 * jnp.square(batch["x"] @ w - batch["y"])


def logistic_loss(params, batch):
    return optax.sigmoid_binary_cross_entropy(batch["x"] @ params["w"] + params["b"], batch["y"])


def ridge_problem(seed=0, n=100, d=10, q=16):
    """The README's ridge case: feature scales 0.5 to 2 (H ≠ I, so grad-dot is worse than the
    IF), the ridge minimizer w* in float64."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(0.5, 2.0, d)
    x = rng.normal(size=(n + q, d)) * scale
    y = x @ (rng.normal(size=d) / scale) + rng.normal(size=n + q)
    w = np.linalg.solve(x[:n].T @ x[:n] / n + RIDGE * np.eye(d), x[:n].T @ y[:n] / n)
    as32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return ({"x": as32(x[:n]), "y": as32(y[:n])}, {"x": as32(x[n:]), "y": as32(y[n:])},
            as32(w), (x[:n], y[:n], x[n:], y[n:], w))


@pytest.fixture(scope="module")
def ridge_run():
    train, query, w_star, arrays = ridge_problem()
    result = slt.estimate_bif(squared_error, w_star, train, query, key=jax.random.key(0),
                              regularization=RIDGE)
    return train, query, w_star, arrays, result


def test_defaults_predict_retraining_as_well_as_the_exact_influence_function(ridge_run):
    """The goal of issue 17: LDS within 0.03 of the exact IF and above grad-dot. Measured
    (README case, 5 keys): BIF 0.877–0.883, exact IF 0.889, grad-dot 0.701. The BIF's Monte
    Carlo noise (relative MCSE ≤ 0.05) costs about r²/2 ≈ 0.1% of a correlation, so the 0.03
    is the goal, not a noise allowance."""
    train, query, w_star, _, result = ridge_run
    subsets = evaluation.random_subsets(jax.random.key(1), 100, len(train["y"]))
    retrained = evaluation.retrain_on_subsets(
        squared_error, w_star, train, subsets, optimizer=optax.sgd(0.1), num_steps=2000,
        regularization=RIDGE, query_data=query)
    assert float(retrained.gradient_norm.max()) < 1e-3
    scores = {
        "BIF": result.bif,
        "exact IF": evaluation.exact_influence(squared_error, w_star, train, query,
                                               damping=RIDGE),
        "grad-dot": evaluation.grad_dot(squared_error, w_star, train, query),
    }
    table = {k: evaluation.lds(s, subsets, retrained.query_losses) for k, s in scores.items()}
    assert table["BIF"] > table["exact IF"] - 0.03, table
    assert table["BIF"] > table["grad-dot"], table


def test_defaults_give_the_exact_bif_of_the_ridge_posterior_within_error_bars(ridge_run):
    """With the penalty sampled (``regularization``) and nβ = n, the posterior is exactly
    N(w*, Σ), Σ = (nβ(XᵀX/n + λI) + γI)⁻¹ (∇J(w*) = 0, so the localization does not move its
    mean), and full-batch BAOAB samples it without step-size bias. Per example
    Cov(ℓ_i, φ_k) = r_i r_k S_ik + S_ik²/2, S = XΣX_qᵀ (docs/mathematics.md §7), so
    BIF = −β(r r_qᵀ∘S + S∘S/2) with β = 1. The errors in units of the reported MCSE: mean z²
    ≈ 1 when the error bars are right (issue 17 accepts error-bar ratios 0.6–1.6, i.e. mean z²
    up to 2.6); a heated posterior (the old minibatch of n drawn with replacement) or the
    penalty attributed as a loss would be off by many MCSE."""
    _, _, _, (x, y, xq, yq, w), result = ridge_run
    n, d = x.shape
    hyper = result.hyperparameters
    nbeta, gamma = hyper["nbeta"], hyper["localization"]
    sigma = np.linalg.inv(nbeta * (x.T @ x / n + RIDGE * np.eye(d)) + gamma * np.eye(d))
    s = x @ sigma @ xq.T
    residual, query_residual = x @ w - y, xq @ w - yq
    exact = -(nbeta / n) * (residual[:, None] * query_residual[None, :] * s + 0.5 * s**2)
    bif, mcse = np.asarray(result.bif, np.float64), np.asarray(result.mcse, np.float64)
    assert mcse.shape == bif.shape and np.all(mcse > 0)
    z = (bif - exact) / mcse
    assert np.mean(z**2) < 2.6, np.mean(z**2)
    # one number: the error relative to the BIF's spread is within 3 reported relative MCSEs
    spread = np.linalg.norm(exact - exact.mean(axis=0))
    assert np.linalg.norm(bif - exact) / spread < 3 * hyper["relative_mcse"]


def logistic_problem(seed=0, n=400, d=3, q=16):
    """Labels from a logistic model; w* = the penalized minimizer by Newton's method (float64
    NumPy, so the reference below owes nothing to the library)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + q, d))
    y = (x @ rng.normal(size=d) + rng.logistic(size=n + q) > 0).astype(float)
    features = np.concatenate([x, np.ones((n + q, 1))], axis=1)  # weights and bias
    theta = np.zeros(d + 1)
    for _ in range(30):
        p = 1 / (1 + np.exp(-features[:n] @ theta))
        gradient = features[:n].T @ (p - y[:n]) / n + LOGISTIC_PENALTY * theta
        hessian = (features[:n].T * (p * (1 - p))) @ features[:n] / n
        theta -= np.linalg.solve(hessian + LOGISTIC_PENALTY * np.eye(d + 1), gradient)
    assert np.abs(gradient).max() < 1e-10
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    params = {"w": jnp.asarray(theta[:d], jnp.float32), "b": jnp.asarray(theta[d], jnp.float32)}
    return (params, jax.tree.map(lambda a: a[:n], data), jax.tree.map(lambda a: a[n:], data),
            (features, y, theta, hessian))


def test_defaults_agree_with_koh_liang_on_l2_logistic_regression():
    """Laplace limit (docs/mathematics.md §4):
    −β Cov(ℓ_i, ℓ_q) ≈ −(1/n)∇ℓ_qᵀ(H + λ + γ/nβ)⁻¹∇ℓ_i, ∇ℓ_i = (p_i − y_i)(x_i, 1).
    Goal (issue 17): slope 1 ± 0.05, Pearson ≥ 0.98. Measured on this problem (n = 400,
    4 parameters) over 3 keys: slope 0.992–1.025, Pearson 0.999. The slope is the posterior's
    own (higher-order terms, about +1% here; +5.6% at n = 100, d = 6, which goes to +0.7% at
    nβ = 10n, so it is not the sampler) plus Monte Carlo error shared by many entries
    (±1.5% at the default relative MCSE 0.05)."""
    params, train, query, (features, y, theta, hessian) = logistic_problem()
    n = len(train["y"])
    result = slt.estimate_bif(logistic_loss, params, train, query, key=jax.random.key(3),
                              regularization=LOGISTIC_PENALTY)
    hyper = result.hyperparameters
    damping = LOGISTIC_PENALTY + hyper["localization"] / hyper["nbeta"]
    gradients = (1 / (1 + np.exp(-features @ theta)) - y)[:, None] * features
    solved = np.linalg.solve(hessian + damping * np.eye(len(theta)), gradients[n:].T)
    a = -(gradients[:n] @ solved).ravel() / n
    b = np.asarray(result.bif, np.float64).ravel()
    slope, pearson = np.polyfit(a, b, 1)[0], np.corrcoef(a, b)[0, 1]
    assert abs(slope - 1) < 0.05, (slope, pearson)
    assert pearson >= 0.98, (slope, pearson)


def test_hyperparameters_record_beta_localization_draws_and_why(ridge_run):
    train, _, _, _, result = ridge_run
    n = len(train["y"])
    hyper = result.hyperparameters
    assert hyper["nbeta"] == n and hyper["beta"] == 1.0
    assert "β = 1" in hyper["nbeta_reason"] and "Koh–Liang" in hyper["nbeta_reason"]
    assert hyper["localization"] == 1.0 and "γ/nβ = 0.01" in hyper["localization_reason"]
    assert hyper["regularization"] == RIDGE
    assert hyper["batch_size"] is None and "full batch" in hyper["batch_size_reason"]
    target = hyper["relative_mcse_target"]
    assert target == influence.DEFAULT_RELATIVE_MCSE
    assert hyper["relative_mcse"] <= target
    assert hyper["initial_num_draws"] <= hyper["num_draws"] <= hyper["max_draws"]
    assert f"≤ {target:g}" in hyper["draws_reason"]
    # the joined trace holds every draw of the continued chains; the error bars match bif
    assert result.trace.loss.shape == (hyper["num_chains"], hyper["num_draws"])
    assert result.mcse.shape == result.bif.shape
    assert np.isclose(influence._relative_mcse(result.bif, result.mcse), hyper["relative_mcse"])
    assert result.llc.hyperparameters is hyper


def test_continuing_compiles_nothing_and_the_cap_warns(ridge_run):
    """A second call of the same shapes compiles nothing, however many continuations it runs;
    a target the cap cannot reach warns with the reached value."""
    train, query, w_star, _, _ = ridge_run
    with slt.count_compilations() as compiled:
        with pytest.warns(RuntimeWarning, match=r"relative MCSE is .* \(target 0.001\)"):
            result = slt.estimate_bif(squared_error, w_star, train, query,
                                      key=jax.random.key(5), regularization=RIDGE,
                                      relative_mcse_target=0.001, max_draws=1280)
    hyper = result.hyperparameters
    assert hyper["num_draws"] == 1280 and hyper["continuations"] == 1
    assert "max_draws=1280" in hyper["draws_reason"]
    assert compiled.count == 0, compiled


def test_mask_sampler_options_and_bad_input(ridge_run):
    train, query, w_star, _, _ = ridge_run
    mask = jnp.arange(w_star.size) < 4  # sample 4 of the 10 weights
    result = slt.estimate_bif(squared_error, w_star, train, query, key=jax.random.key(6),
                              regularization=RIDGE, mask=mask, num_draws=512, step_size=2e-4,
                              num_burnin=4000, sampler_options={"friction": 0.2})  # no pilots
    hyper = result.hyperparameters
    assert hyper["friction"] == 0.2 and hyper["num_draws"] == 512
    assert hyper["step_size"] == pytest.approx(2e-4)
    assert hyper["draws_reason"] == "given: num_draws=512"
    final = np.asarray(result.trace.final_params)
    np.testing.assert_array_equal(final[:, 4:], np.broadcast_to(np.asarray(w_star)[4:],
                                                                 final[:, 4:].shape))
    assert np.all(final[:, :4] != np.asarray(w_star)[:4])
    with pytest.raises(ValueError, match="sampler_options"):
        slt.estimate_bif(squared_error, w_star, train, query, key=jax.random.key(0),
                         sampler_options={"nonsense": 1.0})
    with pytest.raises(ValueError, match="regularization must be a finite number >= 0"):
        slt.estimate_bif(squared_error, w_star, train, query, key=jax.random.key(0),
                         regularization=-1.0)
    with pytest.raises(ValueError, match=r"relative_mcse must be in \(0, 1\]"):
        slt.estimate_bif(squared_error, w_star, train, query, key=jax.random.key(0),
                         relative_mcse_target=0.0)
    with pytest.raises(TypeError, match="max_draws must be an int"):
        slt.estimate_bif(squared_error, w_star, train, query, key=jax.random.key(0),
                         max_draws=1.5)


def test_default_beta_is_per_example_or_per_token(ridge_run):
    """β = nβ/n per example; per token nβ/(nT): L_n is the mean over examples and tokens, so
    the posterior is exp(−(nβ/nT) Σ_(i,s) ℓ_(i,s))."""
    import types

    train, _, w_star, _, _ = ridge_run
    setup = types.SimpleNamespace(nbeta=100.0, num_examples=100)

    def token_loss(w, batch):  # three tokens per example
        return jnp.repeat(squared_error(w, batch)[:, None], 3, axis=1)

    assert influence._default_beta(None, setup, squared_error, w_star, train)[0] == 1.0
    beta, reason = influence._default_beta(None, setup, token_loss, w_star, train)
    assert beta == pytest.approx(1 / 3) and "T = 3" in reason
    assert influence._default_beta(0.5, setup, token_loss, w_star, train) == (0.5, "given")
