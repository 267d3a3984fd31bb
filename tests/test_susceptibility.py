"""Susceptibilities (docs/mathematics.md §5): the definition against exact derivatives, the
estimator against Gaussian closed forms, exact identities on the same draws, devinterp's
number, the streaming form, and the response-matrix PCA.

Exact identities run in float64 (``jax.enable_x64``) so that 1e-6 relative is far above the
rounding; sampled checks compare with closed forms within 4 Monte Carlo standard errors (the
estimator's own batch-means MCSE), never a hand-picked seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

import slt_jax as slt
from slt_jax import accumulators

matplotlib.use("Agg")

# ----------------------------------------------------------------------------------------------
# Gaussian posteriors of quadratic losses, in closed form (float64 numpy)


def _quadratic(rng, d, scale=1.0):
    """A random quadratic ``(B, b)``: ``½ wᵀBw + bᵀw`` (B symmetric positive semi-definite)."""
    factor = rng.normal(size=(d, d)) * scale
    return factor @ factor.T / d, rng.normal(size=d) * scale


def _posterior(nbeta, gamma, center, base, shift, h):
    r"""Mean and covariance of :math:`p_h \propto \exp(-n\beta(L_q + h\Delta L) - \frac\gamma2
    \lVert w - w^*\rVert^2)` with :math:`L_q, \Delta L` quadratics ``(H, g)``."""
    hessian = base[0] + h * shift[0]
    gradient = base[1] + h * shift[1]
    precision = nbeta * hessian + gamma * np.eye(len(center))
    covariance = np.linalg.inv(precision)
    return covariance @ (gamma * center - nbeta * gradient), covariance


def _expectation(observable, mean, covariance):
    """E[½ wᵀBw + bᵀw] under N(mean, covariance)."""
    B, b = observable
    return 0.5 * np.trace(B @ covariance) + 0.5 * mean @ B @ mean + b @ mean


def _gaussian_covariance(first, second, mean, covariance):
    """Cov(½xᵀAx + aᵀx, ½xᵀBx + bᵀx) = ½tr(AΣBΣ) + (a + Aμ)ᵀΣ(b + Bμ) for x ~ N(μ, Σ)."""
    (A, a), (B, b) = first, second
    return (0.5 * np.trace(A @ covariance @ B @ covariance)
            + (a + A @ mean) @ covariance @ (b + B @ mean))


def _restricted(quadratic, center, coordinates):
    """The quadratic as a function of ``u`` for ``w = w* + P u`` (only ``coordinates`` move)."""
    B, b = quadratic
    P = np.eye(len(center))[:, coordinates]
    return P.T @ B @ P, P.T @ (B @ center + b)


@pytest.mark.parametrize("coordinates", [None, [0, 2, 3]], ids=["full", "restricted"])
def test_definition_equals_finite_differences_of_the_exact_expectation(coordinates):
    """(1/nβ) ∂_h E_h[φ] by central differences equals −Cov_p(φ, ΔL), also with only a
    coordinate subset sampled (the rest frozen at w*)."""
    rng = np.random.default_rng(0)
    d, nbeta, gamma = 5, 30.0, 2.0
    center = rng.normal(size=d)
    base, probe, observable = (_quadratic(rng, d) for _ in range(3))
    shift = (probe[0] - base[0], probe[1] - base[1])
    if coordinates is not None:
        base, shift, observable = (_restricted(x, center, coordinates)
                                   for x in (base, shift, observable))
        center = np.zeros(len(coordinates))  # u = 0 at w*

    def central_difference(step):
        plus, minus = (_expectation(observable, *_posterior(nbeta, gamma, center, base, shift, h))
                       for h in (step, -step))
        return (plus - minus) / (2 * step)

    step = 1e-4  # Richardson: the O(h²) error cancels, leaving O(h⁴) and rounding ~1e-12
    derivative = (4 * central_difference(step / 2) - central_difference(step)) / 3
    mean, covariance = _posterior(nbeta, gamma, center, base, shift, 0.0)
    chi = -_gaussian_covariance(observable, shift, mean, covariance)
    assert abs(chi) > 1e-3  # a non-trivial value, so the comparison can fail
    np.testing.assert_allclose(derivative / nbeta, chi, rtol=1e-6)


def test_susceptibility_of_exact_gaussian_draws_matches_the_closed_form():
    """susceptibility() on exact draws of a Gaussian posterior is within 4 MCSE of the closed
    form −Cov(φ, ℓ_k − L) for three probe quadratics."""
    rng = np.random.default_rng(1)
    d, nbeta, gamma, num_probes = 4, 20.0, 1.0, 3
    center = rng.normal(size=d) * 0.3
    base, observable = _quadratic(rng, d, 0.5), _quadratic(rng, d, 0.5)
    probes = [_quadratic(rng, d, 0.5) for _ in range(num_probes)]
    mean, covariance = _posterior(nbeta, gamma, center, base, (0 * base[0], 0 * base[1]), 0.0)
    draws = rng.multivariate_normal(mean, covariance, size=(4, 4000))

    def evaluate(quadratic):
        B, b = quadratic
        return 0.5 * np.einsum("cdi,ij,cdj->cd", draws, B, draws) + draws @ b

    probe_losses = np.stack([evaluate(p) for p in probes], axis=-1)
    values, mcse = slt.susceptibility(evaluate(observable), probe_losses, evaluate(base),
                                      return_mcse=True)
    expected = np.array([-_gaussian_covariance(
        observable, (p[0] - base[0], p[1] - base[1]), mean, covariance) for p in probes])
    z = (np.asarray(values) - expected) / np.asarray(mcse)
    assert np.max(np.abs(z)) <= 4, (values, expected, mcse)
    assert np.max(np.abs(expected) / np.asarray(mcse)) > 8  # the check has power


# ----------------------------------------------------------------------------------------------
# SGLD on linear regression, streamed: closed form with the sampler's exact Σ_ε

NUM_EXAMPLES, DIMENSION, STEP_SIZE = 500, 3, 0.01


def _linear_regression_loss(params, batch):
    x, y = batch
    return 0.5 * (x @ params - y) ** 2


@pytest.fixture(scope="module")
def regression_run():
    """γ = 0, exact gradients, zero base residuals: the posterior of w is N(w*, Σ_ε),
    Σ_ε = A⁻¹(I − εA/4)⁻¹ with A = nβH. Probe: a dozen shifted tokens."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(NUM_EXAMPLES, DIMENSION)) * np.array([1.0, 0.7, 0.5])
    w_star = rng.normal(size=DIMENSION)
    probe_x = rng.normal(size=(12, DIMENSION)) * np.linspace(0.3, 3.0, 12)[:, None]
    probe_x = probe_x + np.array([1.0, -0.5, 0.5])
    probe_y = probe_x @ w_star + rng.normal(size=12) * 0.3  # residuals do not enter χ
    data = (jnp.asarray(x, jnp.float32), jnp.asarray(x @ w_star, jnp.float32))
    probe = (jnp.asarray(probe_x, jnp.float32), jnp.asarray(probe_y, jnp.float32))
    nbeta = slt.default_nbeta(NUM_EXAMPLES)
    sampler = slt.samplers.sgld(step_size=STEP_SIZE, nbeta=nbeta, localization=0.0)
    trace = slt.sample(
        _linear_regression_loss, jnp.asarray(w_star, jnp.float32), data, sampler,
        key=jax.random.key(3), num_chains=8, num_draws=2048, num_burnin=300, batch_size=None,
        query_data={"base": data, "probe": probe},
        accumulators={"chi": slt.susceptibility_accumulator("base", "probe", "base",
                                                            return_mcse=True)},
        store=("loss", "probe"))
    hessian = x.T @ x / NUM_EXAMPLES
    precision = nbeta * hessian
    sigma = np.linalg.inv(precision) @ np.linalg.inv(
        np.eye(DIMENSION) - STEP_SIZE * precision / 4)
    return trace, probe_x, hessian, sigma, nbeta


def test_streamed_susceptibility_of_sgld_matches_the_closed_form(regression_run):
    """χ_x = −½ xᵀΣHΣx + ½ tr(HΣHΣ) per probe token, max |z| ≤ 4 with the streamed MCSE."""
    trace, probe_x, hessian, sigma, _ = regression_run
    values, mcse = (np.asarray(v) for v in trace.accumulators["chi"])
    product = sigma @ hessian @ sigma
    expected = (-0.5 * np.einsum("ti,ij,tj->t", probe_x, product, probe_x)
                + 0.5 * np.trace(hessian @ sigma @ hessian @ sigma))
    z = (values - expected) / mcse
    assert np.max(np.abs(z)) <= 4, (values, expected, mcse)
    assert np.max(np.abs(expected) / mcse) > 8 and expected.max() > 0 > expected.min()
    # the stored streams give the same numbers by the array form
    array = slt.susceptibility(trace.loss, trace.query_losses["probe"], trace.loss)
    np.testing.assert_allclose(array, values, rtol=1e-3, atol=1e-3 * np.abs(values).max())


def test_reweighting_gives_minus_s_times_the_variance(regression_run):
    """Perturbing q towards (1 + s) q: χ = −s Var(L) on the same draws (exactly), and with
    γ = 0 Var(L) = ½ tr((HΣ_ε)²) (→ d/(2nβ²) as ε → 0) within 4 MCSE."""
    trace, _, hessian, sigma, nbeta = regression_run
    s = 0.5
    loss = np.asarray(trace.loss, np.float64)
    with jax.enable_x64(True):
        values, mcse = slt.susceptibility(loss, (1 + s) * loss[..., None], loss,
                                          return_mcse=True)
    variance = np.var(loss, ddof=1)
    np.testing.assert_allclose(np.asarray(values), [-s * variance], rtol=1e-6)
    expected = -s * 0.5 * np.trace(hessian @ sigma @ hessian @ sigma)
    assert abs(float(values[0]) - expected) <= 4 * float(mcse[0])
    # as ε → 0 (Σ = (nβH)⁻¹) the closed form is d/(2nβ²); at this ε the draws tell them apart
    exact = np.linalg.inv(nbeta * hessian)
    continuum = -s * 0.5 * np.trace(hessian @ exact @ hessian @ exact)
    np.testing.assert_allclose(continuum, -s * DIMENSION / (2 * nbeta**2), rtol=1e-10)
    assert abs(float(values[0]) - continuum) > 4 * float(mcse[0])


# ----------------------------------------------------------------------------------------------
# exact identities on the same draws


def _random_draws(shape_probe, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    chains, draws = shape_probe[:2]
    latent = rng.normal(size=(chains, draws))
    base = 2.0 + 0.1 * latent + 0.05 * rng.normal(size=(chains, draws))
    observable = base - 1.9 + 0.02 * rng.normal(size=(chains, draws))
    probe = (1.5 + 0.2 * latent.reshape(chains, draws, *(1,) * (len(shape_probe) - 2))
             + 0.1 * rng.normal(size=shape_probe))
    return observable.astype(dtype), probe.astype(dtype), base.astype(dtype)


def test_bilinearity_on_the_same_draws():
    """Mean of per-token χ over a probe set = χ of the set's mean loss; sums over a sequence's
    tokens = χ of the summed loss (with T times the base loss)."""
    observable, probe, base = _random_draws((3, 200, 6, 4))
    num_tokens = probe.shape[-1]
    with jax.enable_x64(True):
        per_token = np.asarray(slt.susceptibility(observable, probe, base))
        of_mean = np.asarray(slt.susceptibility(observable, probe.mean(axis=(2, 3))[..., None],
                                                base))
        of_sequences = np.asarray(slt.susceptibility(observable, probe.sum(axis=3),
                                                     num_tokens * base))
    assert per_token.shape == (6, 4)
    np.testing.assert_allclose(per_token.mean(), of_mean[0], rtol=1e-6)
    np.testing.assert_allclose(per_token.sum(axis=1), of_sequences, rtol=1e-6)
    # the response matrix's one-row-per-probe form is that mean
    result = slt.SusceptibilityResult({"C": {"p": per_token}}, {"C": {"p": 0 * per_token}}, {},
                                      ("C",), ("p",), {})
    np.testing.assert_allclose(slt.response_matrix(result, per_token=False).values[0, 0],
                               of_mean[0], rtol=1e-6)


def test_susceptibility_is_minus_the_covariance_and_shift_invariant():
    observable, probe, base = _random_draws((2, 150, 3))
    with jax.enable_x64(True):
        values = np.asarray(slt.susceptibility(observable, probe, base))
        shifted = np.asarray(slt.susceptibility(observable + 7.0, probe, base))
        within = np.asarray(slt.susceptibility(observable, probe, base, center="chain"))
    flat_phi = observable.reshape(-1)
    shift = (probe - base[..., None]).reshape(-1, probe.shape[-1])
    expected = -np.array([np.cov(flat_phi, shift[:, k])[0, 1] for k in range(shift.shape[1])])
    np.testing.assert_allclose(values, expected, rtol=1e-10)
    np.testing.assert_allclose(shifted, values, rtol=1e-10)
    centred_phi = observable - observable.mean(axis=1, keepdims=True)
    centred = probe - base[..., None]
    centred = centred - centred.mean(axis=1, keepdims=True)
    expected_within = -np.einsum("cd,cdk->k", centred_phi, centred) / (observable.size - 2)
    np.testing.assert_allclose(within, expected_within, rtol=1e-10)


def test_delta_mean_reproduces_devinterps_formula():
    """devinterp 2.x (compute_susceptibilities): φ = L_base − init loss of the full run,
    sus = E_C[φ L] − E_C[φ ℓ] − E_C[φ] (E_full[L] − E_full[ℓ]), plain means, written here from
    that definition; ours with delta_mean = E_full[ℓ − L]."""
    _, probe, base = _random_draws((3, 120, 5, 2), seed=1)
    _, probe_full, base_full = _random_draws((3, 150, 5, 2), seed=2)
    init_loss = float(base_full[:, :1].mean()) - 0.01
    phi = base - init_loss
    full_delta = base_full.mean() - probe_full.mean(axis=(0, 1))
    devinterp = ((phi * base).mean() - (phi[..., None, None] * probe).mean(axis=(0, 1))
                 - phi.mean() * full_delta)
    delta_mean = (probe_full - base_full[..., None, None]).mean(axis=(0, 1))
    with jax.enable_x64(True):
        ours = np.asarray(slt.susceptibility(phi, probe, base, delta_mean=delta_mean))
        same_run = np.asarray(slt.susceptibility(
            phi, probe, base, delta_mean=(probe - base[..., None, None]).mean(axis=(0, 1))))
        covariance = np.asarray(slt.susceptibility(phi, probe, base))
    scale = np.abs((phi * base).mean())  # the size of the terms that cancel
    np.testing.assert_allclose(ours, devinterp, rtol=0, atol=1e-12 * scale)
    assert np.max(np.abs(ours - covariance)) > 100 * 1e-12 * scale  # the centrings differ here
    count = phi.size  # with the same run's mean: ddof 0 instead of 1
    np.testing.assert_allclose(same_run, covariance * (count - 1) / count, rtol=1e-9)
    # float32 inputs: the same number up to float32 rounding of the cancelling terms
    values32 = slt.susceptibility(phi.astype(np.float32), probe.astype(np.float32),
                                  base.astype(np.float32), delta_mean=delta_mean)
    np.testing.assert_allclose(values32, devinterp, rtol=0, atol=1e-5 * scale)


# ----------------------------------------------------------------------------------------------
# streaming form


def _streams_with_padding(draws=150, padding=20, n_base=6, seed=4):
    """Base losses of a query set ``(n_base,)`` and ``(4, 3)`` per-token probe losses of 3
    chains, followed by ``padding`` draws of weight 0 holding nan."""
    rng = np.random.default_rng(seed)
    base_set = 1.0 + 0.1 * rng.normal(size=(3, draws + padding, n_base))
    common = base_set.mean(axis=2)
    probe = 0.8 * common[..., None, None] + 0.1 * rng.normal(size=(3, draws + padding, 4, 3))
    base_set[:, draws:] = np.nan
    probe[:, draws:] = np.nan
    weights = np.ones((3, draws + padding), np.float32)
    weights[:, draws:] = 0.0
    streams = {"base": jnp.asarray(base_set, jnp.float32),
               "probe": jnp.asarray(probe, jnp.float32)}
    return streams, weights, jnp.asarray(common[:, :draws], jnp.float32)


def test_accumulator_equals_the_array_form_over_blocks_with_padding():
    """Streamed in blocks of 24 draws (batches of 32 continue across them; the run is not a
    multiple of either), padding of weight 0 holding nan, the base losses of a query set
    (n_base,) averaged per draw, observable and base the same stream: values and MCSE equal
    susceptibility() of the kept draws."""
    streams, weights, kept = _streams_with_padding()
    accumulator = slt.susceptibility_accumulator("base", "probe", "base", return_mcse=True,
                                                 batch_size=32)
    assert accumulator.streams == ("base", "probe")
    streamed = accumulators.streaming_reduce({"chi": accumulator}, streams, 24,
                                             weights=weights)["chi"]
    values, mcse = slt.susceptibility(kept, streams["probe"][:, :150], kept, return_mcse=True,
                                      batch_size=32)
    assert streamed[0].shape == (4, 3)
    np.testing.assert_allclose(streamed[0], values, rtol=1e-4, atol=1e-4 * np.abs(values).max())
    np.testing.assert_allclose(streamed[1], mcse, rtol=1e-3)


def test_accumulator_with_its_own_observable_stream_and_chain_centring():
    """A separate scalar observable stream, ``center="chain"``, blocks of 64."""
    streams, weights, kept = _streams_with_padding(seed=7)
    phi = 2.0 * streams["base"][:, :, 0]  # (chains,) per draw; nan in the padding
    accumulator = slt.susceptibility_accumulator("phi", "probe", "base", center="chain")
    assert accumulator.streams == ("phi", "probe", "base")
    streamed = accumulators.streaming_reduce({"chi": accumulator}, {**streams, "phi": phi}, 64,
                                             weights=weights)["chi"]
    values = slt.susceptibility(phi[:, :150], streams["probe"][:, :150], kept, center="chain")
    np.testing.assert_allclose(streamed, values, rtol=1e-4, atol=1e-4 * np.abs(values).max())


# ----------------------------------------------------------------------------------------------
# response matrices and their PCA


def test_response_pca_recovers_planted_rank_two_loadings():
    rng = np.random.default_rng(5)
    rows, columns = 300, 8
    planted = np.linalg.qr(rng.normal(size=(columns, 2)))[0]
    scores = rng.normal(size=(rows, 2)) * np.array([3.0, 1.5])
    matrix = scores @ planted.T + 0.02 * rng.normal(size=(rows, columns)) + 5.0
    pca = slt.response_pca(matrix, num_components=3)
    for pc in range(2):
        assert abs(pca.loadings[:, pc] @ planted[:, pc]) >= 0.99
    ratio = pca.explained_variance_ratio
    assert np.all(np.diff(ratio) <= 0) and ratio[:2].sum() > 0.99 and ratio.sum() <= 1 + 1e-12
    full = slt.response_pca(matrix, num_components=columns)
    np.testing.assert_allclose(full.explained_variance_ratio.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(pca.explained_variance, np.var(pca.scores, axis=0, ddof=1),
                               rtol=1e-10)
    np.testing.assert_allclose(pca.mean, matrix.mean(axis=0), rtol=1e-12)
    # sign convention: the largest-|loading| entry of each PC is positive, whatever X's sign
    largest = np.argmax(np.abs(pca.loadings), axis=0)
    assert np.all(pca.loadings[largest, np.arange(3)] > 0)
    flipped = slt.response_pca(-matrix, num_components=3)
    np.testing.assert_allclose(flipped.loadings, pca.loadings, atol=1e-8)
    np.testing.assert_allclose(flipped.scores, -pca.scores, atol=1e-8)
    # standardize: a column's unit does not matter
    rescaled = matrix * np.linspace(1.0, 100.0, columns)[None, :]
    np.testing.assert_allclose(
        np.abs(slt.response_pca(rescaled, 2, standardize=True).loadings),
        np.abs(slt.response_pca(matrix, 2, standardize=True).loadings), atol=1e-8)


def test_response_matrix_rows_and_labels():
    chi = {"head0": {"copy": np.arange(6.0).reshape(2, 3), "first": np.array([1.0, 2.0])},
           "head1": {"copy": -np.arange(6.0).reshape(2, 3), "first": np.array([3.0, 4.0])}}
    mcse = {c: {p: np.full_like(v, 0.1) for p, v in probes.items()} for c, probes in chi.items()}
    result = slt.SusceptibilityResult(chi, mcse, {}, ("head0", "head1"), ("copy", "first"), {})
    matrix = slt.response_matrix(result)
    assert matrix.values.shape == (8, 2) and matrix.mcse.shape == (8, 2)
    assert matrix.row_labels[:4] == (("copy", 0, 0), ("copy", 0, 1), ("copy", 0, 2),
                                     ("copy", 1, 0))
    assert matrix.row_labels[6:] == (("first", 0), ("first", 1))
    assert matrix.column_labels == ("head0", "head1")
    np.testing.assert_array_equal(matrix.values[:, 1], [0, -1, -2, -3, -4, -5, 3, 4])
    per_probe = slt.response_matrix(result, per_token=False)
    np.testing.assert_allclose(per_probe.values, [[2.5, -2.5], [1.5, 3.5]])
    assert per_probe.row_labels == (("copy",), ("first",))
    plain = slt.response_matrix(np.ones((4, 3)))
    assert plain.row_labels == ((0,), (1,), (2,), (3,)) and np.all(np.isnan(plain.mcse))


def test_plot_response_draws_loadings_and_scores(tmp_path):
    import matplotlib.pyplot as pyplot

    rng = np.random.default_rng(6)
    pca = slt.response_pca(rng.normal(size=(30, 4)), num_components=2)
    for labels in (None, np.array(["copy", "first"] * 15), rng.normal(size=30)):
        figure = slt.plotting.plot_response(pca, labels=labels, title="response")
        assert len(figure.axes) >= 2
        path = tmp_path / "response.png"
        figure.savefig(path, dpi=50)
        pyplot.close(figure)
        assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="one entry per row"):
        slt.plotting.plot_response(pca, labels=np.arange(3))
    with pytest.raises(ValueError, match="ResponsePCA"):
        slt.plotting.plot_response(np.ones((3, 3)))


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("shapes", [
    ((2, 50), (2, 50, 3), (2, 40)),        # base from other draws
    ((2, 50, 1), (2, 50, 3), (2, 50)),     # observable with an event axis
    ((2, 50), (2, 50), (2, 50)),           # probe without an example axis
    ((2, 50), (2, 50, 3, 4, 5), (2, 50)),  # probe of rank 5
    ((3, 50), (2, 50, 3), (3, 50)),        # chains differ
])
def test_mismatched_shapes_are_rejected_naming_the_expected_ones(shapes):
    arrays = [jnp.zeros(shape) for shape in shapes]
    with pytest.raises(ValueError, match=r"observable \(num_chains, num_draws\)"):
        slt.susceptibility(*arrays)


def test_other_bad_inputs_are_rejected():
    observable, probe, base = (jnp.asarray(x, jnp.float32)
                               for x in _random_draws((2, 20, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="center"):
        slt.susceptibility(observable, probe, base, center="chains")
    with pytest.raises(ValueError, match=r"delta_mean must be a scalar or have the probe's "):
        slt.susceptibility(observable, probe, base, delta_mean=np.zeros(4))
    with pytest.raises(ValueError, match="return_mcse"):
        slt.susceptibility(observable, probe, base, delta_mean=0.0, return_mcse=True)
    with pytest.raises(ValueError, match="two draws"):
        slt.susceptibility(observable[:1, :1], probe[:1, :1], base[:1, :1])
    with pytest.raises(ValueError, match="center"):
        slt.susceptibility_accumulator(center="all")
    accumulator = slt.susceptibility_accumulator("phi", "probe", "base")
    with pytest.raises(ValueError, match="the base stream 'base' is not among"):
        accumulator.init({"phi": jax.ShapeDtypeStruct((2,), jnp.float32),
                          "probe": jax.ShapeDtypeStruct((2, 3), jnp.float32)})
    with pytest.raises(ValueError, match=r"probe \(num_chains, q\) or \(num_chains, q, T\)"):
        accumulator.init({name: jax.ShapeDtypeStruct((2,), jnp.float32)
                          for name in ("phi", "probe", "base")})
    with pytest.raises(ValueError, match=r"num_components must be an integer in \[1, "):
        slt.response_pca(np.ones((5, 3)), num_components=4)
    with pytest.raises(ValueError, match="finite"):
        slt.response_pca(np.full((5, 3), np.nan), num_components=1)
    with pytest.raises(ValueError, match=r"\(rows, components\) array"):
        slt.response_matrix(np.ones(3))
    chi = {"a": {"p": np.ones(3)}, "b": {"p": np.ones(4)}}
    result = slt.SusceptibilityResult(chi, chi, {}, ("a", "b"), ("p",), {})
    with pytest.raises(ValueError, match=r"expected the same \(q\[, T\]\) shape"):
        slt.response_matrix(result)
