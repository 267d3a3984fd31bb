"""Stagewise influence (issue 19, part A): the BIF over checkpoints, Saxe's learning curves.

* Gradient descent on the hierarchical toy (4 items, 7 features) follows Saxe et al.'s closed
  form mode by mode (``slt.truth.saxe_mode_strength``, ``saxe_half_rise_time``).
* ``bif_over_checkpoints`` on gradient descent for linear regression matches the exact
  localized-posterior BIF at every checkpoint within its Monte Carlo standard errors (the
  closed form itself is checked against exact Gaussian samples first), including an entry
  that changes sign between checkpoints.
* A slice of the sweep is ``slt.bif`` of ``slt.sample``'s draws with the same keys, and one
  sweep compiles its block program once (a second sweep compiles nothing).
* On the hierarchical toy the BIF changes sign and peaks at the developmental transitions.
"""

import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

import slt_jax as slt
from slt_jax import sampling

# ----------------------------------------------------------------------------------------------
# the hierarchical toy and Saxe's curves

A0, ETA = 1e-6, 0.005


def dln_loss(params, batch):
    """Per-example ½‖W2 W1 x − y‖² of a 2-layer linear network."""
    prediction = batch["x"] @ params["w1"].T @ params["w2"].T
    return 0.5 * jnp.sum(jnp.square(prediction - batch["y"]), axis=-1)


def aligned_init(toy, a0=A0):
    """Balanced weights aligned with the modes, every mode at strength ``a0``."""
    root = np.sqrt(a0)
    return {"w1": jnp.asarray(root * toy.input_modes.T, jnp.float32),
            "w2": jnp.asarray(root * toy.output_modes, jnp.float32)}


def mode_strengths(run, toy):
    """``(checkpoints, modes)``: :math:`u_\\alpha^\\top W_2 W_1 v_\\alpha` at each checkpoint."""
    product = np.einsum("kfh,khp->kfp", np.asarray(run.checkpoints["w2"], np.float64),
                        np.asarray(run.checkpoints["w1"], np.float64))
    return np.einsum("fa,kfp,pa->ka", toy.output_modes, product, toy.input_modes)


def test_hierarchical_data_has_the_tree_modes():
    toy = slt.data.make_hierarchical_data()
    assert toy.data["x"].shape == (4, 4) and toy.data["y"].shape == (4, 7)
    np.testing.assert_allclose(toy.singular_values, [np.sqrt(7) / 2, np.sqrt(3) / 2, 0.5, 0.5],
                               atol=1e-12)
    x, y = np.asarray(toy.data["x"], np.float64), np.asarray(toy.data["y"], np.float64)
    np.testing.assert_allclose(x.T @ x / 4, np.eye(4), atol=1e-6)  # whitened inputs
    correlation = y.T @ x / 4  # Σ_yx
    np.testing.assert_allclose(np.linalg.svd(correlation, compute_uv=False), toy.singular_values,
                               atol=1e-6)
    reconstructed = toy.output_modes @ np.diag(toy.singular_values) @ toy.input_modes.T
    np.testing.assert_allclose(reconstructed, correlation, atol=1e-6)
    np.testing.assert_allclose(toy.output_modes.T @ toy.output_modes, np.eye(4), atol=1e-12)
    assert toy.features.sum(axis=1).tolist() == [3, 3, 3, 3]  # root, branch, leaf
    with pytest.raises(ValueError, match="PRNG key"):
        slt.data.make_hierarchical_data(noise=0.1)
    with pytest.raises(ValueError, match="depth"):
        slt.data.make_hierarchical_data(depth=0)


def test_gradient_descent_follows_saxe_curves():
    toy = slt.data.make_hierarchical_data()
    steps = np.arange(0, 5001, 10)
    run = slt.training.train(aligned_init(toy), dln_loss, toy.data, optax.sgd(ETA),
                             key=jax.random.key(0), num_steps=5000, batch_size=None,
                             checkpoint_steps=steps)
    measured = mode_strengths(run, toy)
    s = toy.singular_values
    exact = slt.truth.saxe_mode_strength(steps[:, None], s[None, :], A0, ETA)
    assert np.max(np.abs(measured - exact) / s) <= 0.015
    for mode in range(4):
        half = slt.truth.saxe_half_rise_time(s[mode], A0, ETA)
        crossed = np.interp(s[mode] / 2, measured[:, mode], steps)  # strengths rise monotonically
        assert abs(crossed / half - 1) <= 0.01
    assert slt.truth.saxe_mode_strength(0.0, s[0], A0, ETA) == pytest.approx(A0)
    with pytest.raises(ValueError, match="a0"):
        slt.truth.saxe_mode_strength(1.0, 0.5, 0.7, ETA)


# ----------------------------------------------------------------------------------------------
# exact stagewise BIF on linear regression

N, D, EPSILON = 20, 2, 0.05
#: early checkpoints are not minima, so their LLCs (a by-product here) are negative and warn
NOT_MINIMA = pytest.mark.filterwarnings("ignore:.*negative LLC:RuntimeWarning")
STEPS = [0, 50, 150, 400]


def regression_loss(params, batch):
    """Per-example ½(xᵀw − y)² (no 1/σ²: the posterior's precision is nβ H + γ I)."""
    return 0.5 * jnp.square(batch["x"] @ params["w"] - batch["y"])


@pytest.fixture(scope="module")
def regression():
    """A stiff and a soft direction (H's eigenvalues ≈ 0.75 and 0.004): along the soft one the
    localized posterior's mean follows the checkpoint, so residuals change sign in training."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)) * np.array([1.0, 0.1])
    y = x @ np.array([1.0, 3.0]) + 0.3 * rng.normal(size=N)
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    run = slt.training.train({"w": jnp.array([0.0, -3.0])}, regression_loss, data,
                             optax.sgd(1.0), key=jax.random.key(0), num_steps=STEPS[-1],
                             batch_size=None, checkpoint_steps=STEPS)
    return x, y, data, run


def exact_posterior(x, y, checkpoint, nbeta=float(N), localization=1.0, step_size=EPSILON):
    r"""``(μ_t, Σ_ε)`` of SGLD (full batch) on :math:`n\beta L_n + \frac\gamma2\lVert w -
    w_t\rVert^2` with :math:`L_n = \frac1n\sum\frac12(x_i^\top w - y_i)^2`: precision
    :math:`A = n\beta H + \gamma I`, :math:`H = X^\top X/n`; the discrete chain's stationary
    covariance :math:`\Sigma_\varepsilon = A^{-1}(I - \varepsilon A/4)^{-1}` and mean
    :math:`\mu_t = A^{-1}(n\beta H w_{ls} + \gamma w_t)` (docs/mathematics.md §6)."""
    hessian = x.T @ x / len(y)
    least_squares = np.linalg.solve(hessian, x.T @ y / len(y))
    precision = nbeta * hessian + localization * np.eye(x.shape[1])
    covariance = np.linalg.inv(precision) @ np.linalg.inv(
        np.eye(x.shape[1]) - step_size * precision / 4)
    mean = np.linalg.solve(precision, nbeta * hessian @ least_squares + localization * checkpoint)
    return mean, covariance


def exact_bif(x, y, mean, covariance, beta=1.0):
    """:math:`-\\beta(\\tfrac12 S\\circ S + (r r^\\top)\\circ S)`, :math:`S = X\\Sigma X^\\top`,
    residuals at the posterior mean."""
    return -beta * slt.truth.linear_regression_loss_covariance(x, covariance, x @ mean - y)


def test_exact_bif_formula_matches_gaussian_samples(regression):
    x, y, _, run = regression
    mean, covariance = exact_posterior(x, y, np.asarray(run.checkpoints["w"][1], np.float64))
    rng = np.random.default_rng(1)
    draws = rng.multivariate_normal(mean, covariance, size=100_000)
    losses = 0.5 * np.square(draws @ x.T - y)  # (draws, n)
    centred = losses - losses.mean(0)
    products = centred[:, :, None] * centred[:, None, :8]  # 8 query columns
    sampled = -products.mean(0) * len(draws) / (len(draws) - 1)
    standard_error = products.std(0) / np.sqrt(len(draws))  # independent draws
    z = (sampled - exact_bif(x, y, mean, covariance)[:, :8]) / standard_error
    # the entries are functions of a 2-d Gaussian, so they share their errors: every entry
    # within 4 standard errors (their mean z² scatters 0.1-2.5 over keys, few degrees of freedom)
    assert np.max(np.abs(z)) <= 4


def _exact_over_checkpoints(x, y, run):
    return np.stack([exact_bif(x, y, *exact_posterior(x, y, np.asarray(w, np.float64)))
                     for w in run.checkpoints["w"]])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 200-300 draws: LLC/drift warnings
def test_a_slice_is_the_bif_of_that_checkpoint_and_one_program(regression):
    """Checkpoint t runs the chains ``estimate_bif(key=fold_in(key, t))`` runs: the sampling
    key is ``split(fold_in(key, t))[1]``. ``slt.sample`` with that key and ``slt.bif`` of its
    draws give the same values and error bars (float32 rounding apart)."""
    _, _, data, run = regression
    sampler = slt.samplers.sgld(EPSILON, nbeta=float(N), localization=1.0)
    query = data  # the shapes of the next test: its sweep reuses this program
    key, lengths = jax.random.key(7), dict(num_chains=4, num_draws=300, num_burnin=50)
    programs = sampling._run_block._cache_size()
    result = slt.bif_over_checkpoints(regression_loss, run, data, query, key=key,
                                      sampler=sampler, **lengths)
    sweep_entries = sampling._run_block._cache_size() - programs
    others = jax.tree.map(lambda w: 2 * np.asarray(w), run.checkpoints)
    with slt.count_compilations() as counter:  # other checkpoints, key and length: nothing
        slt.bif_over_checkpoints(regression_loss, others,
                                 data, query, key=jax.random.key(8), sampler=sampler,
                                 num_chains=4, num_draws=200, num_burnin=10)
    assert counter.count == 0
    checkpoint = 2
    _, sampling_key = jax.random.split(jax.random.fold_in(key, checkpoint))
    programs = sampling._run_block._cache_size()
    trace = slt.sample(regression_loss, run.checkpoint(checkpoint), data, sampler,
                       key=sampling_key, query_data={"train": data, "query": query}, **lengths)
    # the 4-checkpoint sweep made as many block-program entries as one run of one checkpoint
    # (a run's burn-in and draw phases: 2 jit-cache entries of the one block function)
    assert sweep_entries == sampling._run_block._cache_size() - programs >= 1
    values, mcse = slt.bif(trace.query_losses["train"], trace.query_losses["query"], beta=1.0,
                           return_mcse=True)
    scale = np.max(np.abs(values))
    np.testing.assert_allclose(result.bif[checkpoint], values, atol=1e-5 * scale)
    np.testing.assert_allclose(result.mcse[checkpoint], mcse, atol=1e-5 * scale)


@NOT_MINIMA
def test_stagewise_bif_matches_exact_along_gradient_descent(regression):
    """SGLD with ε = 0.05, nβ = n, γ = 1 (given, so Σ_ε is known); 4 chains × 4000 draws per
    checkpoint after 1000 burn-in steps. The 4 × 20 × 20 entries share a few Gaussian
    directions, so their mean z² scatters like a χ² of few degrees of freedom: over 12 keys
    it read 0.77–1.63 and max |z| 2.5–3.4; the bounds below are 0.1 ≤ mean z² ≤ 3 (the lower
    bound catches inflated error bars) and max |z| ≤ 4."""
    x, y, data, run = regression
    exact = _exact_over_checkpoints(x, y, run)
    sampler = slt.samplers.sgld(EPSILON, nbeta=float(N), localization=1.0)
    result = slt.bif_over_checkpoints(regression_loss, run, data, data, key=jax.random.key(3),
                                      sampler=sampler, num_chains=4, num_draws=4000,
                                      num_burnin=1000)
    assert result.bif.shape == result.mcse.shape == (len(STEPS), N, N)
    np.testing.assert_array_equal(result.steps, STEPS)
    z = (result.bif - exact) / result.mcse
    assert np.max(np.abs(z)) <= 4 and 0.1 <= np.mean(z**2) <= 3
    # an entry that changes sign during training, resolved at both ends (|value| > 4 MCSE)
    flips = (np.sign(exact[0]) != np.sign(exact[-1])) & (
        np.minimum(np.abs(exact[0]), np.abs(exact[-1])) > 4 * np.maximum(result.mcse[0],
                                                                          result.mcse[-1]))
    assert flips.any()
    i, j = np.unravel_index(np.argmax(np.where(flips, np.abs(exact[-1]), 0)), flips.shape)
    assert np.sign(result.bif[0, i, j]) == np.sign(exact[0, i, j]) != np.sign(result.bif[-1, i, j])
    assert result.llc.mean.shape == (len(STEPS), 1)
    assert result.hyperparameters["num_draws"] == 4000


def test_bad_input_is_named_before_sampling(regression):
    _, _, data, run = regression
    sampler = slt.samplers.sgld(EPSILON, nbeta=float(N), localization=1.0)
    with pytest.raises(ValueError, match="leading checkpoint axis"):
        slt.bif_over_checkpoints(regression_loss, {"w": jnp.zeros(())}, data, data,
                                 key=jax.random.key(0), sampler=sampler, num_draws=10)
    with pytest.raises(ValueError, match="num_draws"):
        slt.bif_over_checkpoints(regression_loss, run, data, data, key=jax.random.key(0),
                                 sampler=sampler, num_draws=1)


# ----------------------------------------------------------------------------------------------
# stagewise influence on the hierarchical toy

#: localization of the hierarchical BIF: the posterior stays at the checkpoint only where γ
#: exceeds nβ times the saddle's negative curvature (nβ s_1 = 26 here); with the default γ = 1
#: the chains of an early checkpoint leave the plateau for the learned solution
HIERARCHY_LOCALIZATION = 4000.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 400 draws: the LLC by-product's R-hat
def test_hierarchical_bif_changes_sign_and_peaks_at_the_transition():
    """CI size (6 checkpoints, 4 chains × 400 draws). To leading order in 1/γ the BIF is
    −β gᵢᵀgⱼ/γ with gᵢ = ∇ℓᵢ at the checkpoint; for items i ≠ j of the toy (one-hot inputs)
    gᵢᵀgⱼ = P²(Σ_α a_α v_α[i]v_α[j])(Σ_α (s_α − a_α)² v_α[i]v_α[j]). For a pair in different
    branches the second factor is ((s₁−a₁)² − (s₂−a₂)²)/4, which changes sign as the root
    mode is learned (a₁ ≈ 0.35 s₁, just before its half-rise at step 1066); the size peaks
    there too (a₁(s₁−a₁)² is largest at a₁ = s₁/3) and vanishes once the modes are learned.
    Checked here (CI size, fewer properties): the cross-branch pair (items 0, 2) is harmful
    (> 3 MCSE) at step 1200, after the root's half-rise; the within-branch pair (0, 1) is
    helpful at 1200 and harmful at 1800 (the branch mode's half-rise is 1579), each by 3 MCSE;
    max |BIF| is largest at 1200 or 1800, not at 0 or 4000; at 4000 it is ≤ 3% of its maximum.
    The flip of the cross-branch pair at the root's half-rise needs finer checkpoints and more
    draws (single keys at step 1000 read −5.2 and +3.1 MCSE): notebooks/stagewise.ipynb."""
    repeats = 5
    toy = slt.data.make_hierarchical_data(num_repeats=repeats)
    steps = [0, 1200, 1800, 4000]
    run = slt.training.train(aligned_init(toy), dln_loss, toy.data, optax.sgd(ETA),
                             key=jax.random.key(0), num_steps=steps[-1], batch_size=None,
                             checkpoint_steps=steps)
    n = 4 * repeats
    step_size = 0.1 / (HIERARCHY_LOCALIZATION + n * toy.singular_values[0])
    sampler = slt.samplers.sgld(step_size, nbeta=float(n), localization=HIERARCHY_LOCALIZATION)
    items = slt.data.make_hierarchical_data().data
    result = slt.bif_over_checkpoints(dln_loss, run, toy.data, items, key=jax.random.key(1),
                                      sampler=sampler, num_draws=400, num_burnin=200)
    # upweighting an item = upweighting its copies: sum the rows of its repeats
    per_item = result.bif.reshape(len(steps), repeats, 4, 4).sum(1)
    error = np.sqrt(np.square(result.mcse.reshape(len(steps), repeats, 4, 4)).sum(1))
    across, within = per_item[:, 0, 2] / error[:, 0, 2], per_item[:, 0, 1] / error[:, 0, 1]
    assert across[1] > 3  # harmful once the root mode is learned (sign change before: notebook)
    assert within[1] < -3 and within[2] > 3  # helpful, then harmful as the branches split
    size = np.abs(per_item).max(axis=(1, 2))
    assert int(np.argmax(size)) in (1, 2)
    assert size[-1] <= 0.03 * size.max()
