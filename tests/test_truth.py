"""Tests for slt_jax.truth: closed-form learning coefficients (docs/mathematics.md section 7)."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import numpy as np
import pytest

from slt_jax import truth

# ---------------------------------------------------------------------------
# Regular, normal crossing, separable
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("d", [0, 1, 2, 7, 100])
def test_regular_is_half_the_dimension(d):
    assert truth.regular(d) == Fraction(d, 2)
    assert isinstance(truth.regular(d), Fraction)


@pytest.mark.parametrize(
    "powers, prior_powers, expected",
    [
        ([1], None, Fraction(1, 2)),
        ([1, 1], None, Fraction(1, 2)),
        ([1, 2], None, Fraction(1, 4)),
        ([3, 0, 2], None, Fraction(1, 6)),
        ([1, 2], [0, 0], Fraction(1, 4)),
        ([1, 2], [0, 3], Fraction(1, 2)),  # min(1/2, 4/4)
        ([1, 2], [2, 3], Fraction(1, 1)),  # min(3/2, 4/4)
        ([0, 1], [5, 0], Fraction(1, 2)),  # h of a k=0 coordinate is ignored
    ],
)
def test_normal_crossing(powers, prior_powers, expected):
    assert truth.normal_crossing(powers, prior_powers) == expected


@pytest.mark.parametrize(
    "powers, prior_powers",
    [([], None), ([0, 0], None), ([-1, 2], None), ([1, 2], [0, -1]), ([1, 2], [0])],
)
def test_normal_crossing_rejects_invalid_inputs(powers, prior_powers):
    with pytest.raises(ValueError):
        truth.normal_crossing(powers, prior_powers)


@pytest.mark.parametrize(
    "powers, expected",
    [
        ([1], Fraction(1, 2)),
        ([1, 1, 1], Fraction(3, 2)),
        ([1, 2], Fraction(3, 4)),
        ([2, 3, 6], Fraction(1, 4) + Fraction(1, 6) + Fraction(1, 12)),
    ],
)
def test_separable(powers, expected):
    assert truth.separable(powers) == expected


def test_separable_with_unit_powers_is_regular():
    assert truth.separable([1] * 9) == truth.regular(9)


@pytest.mark.parametrize("powers", [[], [0, 1], [-1]])
def test_separable_rejects_invalid_inputs(powers):
    with pytest.raises(ValueError):
        truth.separable(powers)


# ---------------------------------------------------------------------------
# Reduced-rank regression and deep linear networks
# ---------------------------------------------------------------------------

DEEP_LINEAR_NETWORK_VECTORS = [
    ([3, 1, 3], 1, Fraction(5, 2)),
    ([5, 3, 5], 0, Fraction(13, 2)),
    ([4, 3, 8], 0, Fraction(6)),
    ([2, 2, 2, 2], 1, Fraction(2)),
    ([4, 4, 4, 4], 2, Fraction(15, 2)),
    ([10, 20, 30, 40, 50], 5, Fraction(175)),
]


@pytest.mark.parametrize("widths, rank, expected", DEEP_LINEAR_NETWORK_VECTORS)
def test_deep_linear_network_test_vectors(widths, rank, expected):
    value = truth.deep_linear_network(widths, rank)
    assert isinstance(value, Fraction)
    assert value == expected


@pytest.mark.parametrize("widths, rank", [([3, 4], 0), ([3, 4], 3), ([1, 7], 1)])
def test_deep_linear_network_single_layer_is_regular(widths, rank):
    assert truth.deep_linear_network(widths, rank) == Fraction(widths[0] * widths[1], 2)
    assert truth.deep_linear_network_multiplicity(widths, rank) == 1


def _three_width_cases(max_width=6):
    for m, h, n in itertools.product(range(1, max_width + 1), repeat=3):
        for r in range(min(m, h, n) + 1):
            yield m, h, n, r


@pytest.mark.parametrize("input_dim", range(1, 7))
def test_deep_linear_network_with_two_layers_equals_reduced_rank_regression(input_dim):
    for m, h, n, r in _three_width_cases():
        if m != input_dim:
            continue
        assert truth.deep_linear_network([m, h, n], r) == truth.reduced_rank_regression(
            m, h, n, r
        ), (m, h, n, r)


def _reduced_rank_regression_multiplicity(m, h, n, r):
    """Aoyagi & Watanabe 2005: multiplicity 2 in the 'otherwise' case with odd parity."""
    if m + h < n + r or n + h < m + r or m + n < h + r:
        return 1
    return 1 + (m + h + n + r) % 2


def test_deep_linear_network_multiplicity_with_two_layers_matches_reduced_rank_regression():
    for m, h, n, r in _three_width_cases():
        assert truth.deep_linear_network_multiplicity(
            [m, h, n], r
        ) == _reduced_rank_regression_multiplicity(m, h, n, r), (m, h, n, r)


@pytest.mark.parametrize(
    "input_dim, hidden_dim, output_dim, rank, expected",
    [
        (1, 1, 5, 1, Fraction(1 - 1 + 5, 2)),  # M + H < N + r
        (5, 1, 1, 1, Fraction(1 - 1 + 5, 2)),  # N + H < M + r
        (2, 6, 2, 1, Fraction(2)),  # M + N < H + r: MN/2
        (3, 3, 3, 0, Fraction(2 * 3 * 6 - 0 - 9 + 1, 8)),  # odd parity
        (3, 2, 3, 0, Fraction(2 * 2 * 6 - 0 - 4, 8)),  # even parity
        (4, 3, 2, 1, Fraction(2 * 4 * 6 - 4 - 16, 8)),  # even parity, M != N
    ],
)
def test_reduced_rank_regression_cases(input_dim, hidden_dim, output_dim, rank, expected):
    value = truth.reduced_rank_regression(input_dim, hidden_dim, output_dim, rank)
    assert value == expected


def test_reduced_rank_regression_full_rank_is_regular_count():
    # r = H <= min(M, N): the model is "regular-like": lambda = (H(M + N) - H^2)/2,
    # the dimension of the manifold of rank-H products.
    for m, n in itertools.product(range(1, 7), repeat=2):
        for h in range(1, min(m, n) + 1):
            expected = Fraction(h * (m + n) - h * h, 2)
            assert truth.reduced_rank_regression(m, h, n, h) == expected


def _random_widths_and_ranks(count=300, seed=0):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        depth = rng.randint(1, 6)
        widths = [rng.randint(1, 12) for _ in range(depth + 1)]
        cases.append((widths, rng.randint(0, min(widths))))
    return cases


def test_deep_linear_network_is_at_most_half_the_parameter_count():
    for widths, rank in _random_widths_and_ranks():
        parameters = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        value = truth.deep_linear_network(widths, rank)
        assert 0 <= value <= truth.regular(parameters), (widths, rank)
        assert truth.deep_linear_network_multiplicity(widths, rank) >= 1


def test_deep_linear_network_increases_with_true_rank():
    # A higher-rank truth is less singular: lambda is non-decreasing in r.
    for widths, _ in _random_widths_and_ranks(count=100, seed=1):
        values = [truth.deep_linear_network(widths, r) for r in range(min(widths) + 1)]
        assert values == sorted(values), widths


@pytest.mark.parametrize(
    "widths, rank",
    [
        ([3], 0),  # fewer than two widths
        ([], 0),
        ([3, 0, 3], 0),  # zero width
        ([3, -1, 3], 0),
        ([3, 2.5, 3], 0),  # non-integer width
        ([3, 2, 3], 3),  # rank above min width
        ([3, 2, 3], -1),
        ([3, 2, 3], 1.0),
    ],
)
def test_deep_linear_network_rejects_invalid_inputs(widths, rank):
    with pytest.raises(ValueError):
        truth.deep_linear_network(widths, rank)
    with pytest.raises(ValueError):
        truth.deep_linear_network_multiplicity(widths, rank)


@pytest.mark.parametrize(
    "dims", [(0, 1, 1, 0), (1, 1, 1, 2), (3, 2, 3, -1), (3, 2.0, 3, 1)]
)
def test_reduced_rank_regression_rejects_invalid_inputs(dims):
    with pytest.raises(ValueError):
        truth.reduced_rank_regression(*dims)


# ---------------------------------------------------------------------------
# Gaussian checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("nbeta", [1.0, 37.5, 1e4])
@pytest.mark.parametrize("localization", [0.0, 1.0, 100.0])
def test_gaussian_llc_without_step_size_is_closed_form(nbeta, localization):
    curvatures = np.array([0.1, 1.0, 2.0, 5.0])
    expected = 0.5 * sum(nbeta * a / (nbeta * a + localization) for a in curvatures)
    assert truth.gaussian_llc(curvatures, nbeta, localization) == pytest.approx(
        expected, rel=1e-14
    )


def test_gaussian_llc_without_localization_is_regular():
    assert truth.gaussian_llc([0.3, 1.0, 7.0], 50.0) == pytest.approx(1.5, rel=1e-14)
    assert truth.gaussian_llc([0.0, 1.0, 7.0], 50.0) == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("step_size", [1e-6, 1e-4, 1e-3])
def test_gaussian_llc_with_step_size_is_larger_and_converges(step_size):
    curvatures, nbeta, localization = [0.5, 1.0, 3.0], 100.0, 1.0
    exact = truth.gaussian_llc(curvatures, nbeta, localization)
    discrete = truth.gaussian_llc(curvatures, nbeta, localization, step_size=step_size)
    assert discrete > exact
    precision = nbeta * np.array(curvatures) + localization
    stationary_variance = 1 / (precision * (1 - step_size * precision / 4))
    expected = 0.5 * np.sum(nbeta * np.array(curvatures) * stationary_variance)
    assert discrete == pytest.approx(expected, rel=1e-14)
    # O(step_size) bias: (discrete - exact) / step_size -> (1/8) sum nbeta a_i.
    assert (discrete - exact) / step_size == pytest.approx(
        nbeta * sum(curvatures) / 8, rel=10 * step_size * precision.max()
    )


def test_gaussian_llc_rejects_unstable_step_size():
    # max precision = 100 * 3 + 1 = 301; stable iff step_size < 4/301.
    with pytest.raises(ValueError, match="stable only for step_size"):
        truth.gaussian_llc([0.5, 3.0], 100.0, 1.0, step_size=4 / 301)
    assert np.isfinite(truth.gaussian_llc([0.5, 3.0], 100.0, 1.0, step_size=3.99 / 301))


@pytest.mark.parametrize(
    "arguments",
    [
        dict(curvatures=[-1.0, 1.0], nbeta=1.0),
        dict(curvatures=[1.0], nbeta=0.0),
        dict(curvatures=[1.0], nbeta=1.0, localization=-1.0),
        dict(curvatures=[1.0], nbeta=1.0, step_size=0.0),
        dict(curvatures=[1.0], nbeta=1.0, step_size=-1e-3),
    ],
)
def test_gaussian_llc_rejects_invalid_inputs(arguments):
    with pytest.raises(ValueError):
        truth.gaussian_llc(**arguments)


@pytest.mark.parametrize(
    "precision, step_size",
    [
        (Fraction(1), Fraction(1, 10)),
        (Fraction(30), Fraction(1, 10)),
        (Fraction(7, 3), Fraction(0)),
    ],
)
def test_sgld_stationary_variance_is_fixed_point_of_the_recursion(precision, step_size):
    # u <- (1 - eps P / 2) u + sqrt(eps) eta  =>  v = (1 - eps P / 2)^2 v + eps.
    variance = 1 / (precision * (1 - step_size * precision / 4))
    assert variance == (1 - step_size * precision / 2) ** 2 * variance + step_size
    value = truth.sgld_stationary_variance(float(precision), float(step_size))
    assert isinstance(value, float)
    assert value == pytest.approx(float(variance), rel=1e-14)


def test_sgld_stationary_variance_matches_simulation():
    rng = np.random.default_rng(0)
    precision, step_size, chains, steps = 2.0, 0.5, 20_000, 60
    u = np.zeros(chains)
    for _ in range(steps):
        noise = np.sqrt(step_size) * rng.standard_normal(chains)
        u = u - 0.5 * step_size * precision * u + noise
    expected = truth.sgld_stationary_variance(precision, step_size)
    assert np.var(u) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize(
    "precision, step_size", [(0.0, 0.1), (-1.0, 0.1), (1.0, -0.1), (10.0, 0.4)]
)
def test_sgld_stationary_variance_rejects_invalid_inputs(precision, step_size):
    with pytest.raises(ValueError):
        truth.sgld_stationary_variance(precision, step_size)


def test_sgld_stationary_variance_accepts_arrays():
    precision = np.array([1.0, 2.0, 4.0])
    values = truth.sgld_stationary_variance(precision, 0.1)
    np.testing.assert_allclose(values, 1 / (precision * (1 - 0.1 * precision / 4)), rtol=1e-14)


@pytest.mark.parametrize("friction", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("fraction_of_bound", [0.02, 0.4, 0.9])
def test_sghmc_stationary_variance_solves_the_lyapunov_equation(friction, fraction_of_bound):
    from scipy.linalg import solve_discrete_lyapunov

    precision = 3.0
    learning_rate = fraction_of_bound * 2 * (2 - friction) / precision
    # state (u, v): v' = (1 - a) v - eta P u + s xi, u' = u + v'
    transition = np.array(
        [[1 - learning_rate * precision, 1 - friction], [-learning_rate * precision, 1 - friction]]
    )
    noise = np.sqrt(2 * friction * learning_rate) * np.ones((2, 1))
    covariance = solve_discrete_lyapunov(transition, noise @ noise.T)
    position, velocity = truth.sghmc_stationary_variance(precision, learning_rate, friction)
    assert position == pytest.approx(covariance[0, 0], rel=1e-10)
    assert velocity == pytest.approx(covariance[1, 1], rel=1e-10)
    # the position variance is SGLD's at eps = 2 eta / (2 - a)
    assert position == pytest.approx(
        truth.sgld_stationary_variance(precision, 2 * learning_rate / (2 - friction)), rel=1e-12
    )


@pytest.mark.parametrize(
    "precision, learning_rate, friction",
    [(0.0, 0.1, 0.1), (1.0, -0.1, 0.1), (1.0, 0.1, 0.0), (1.0, 0.1, 1.5), (10.0, 0.4, 0.1)],
)
def test_sghmc_stationary_variance_rejects_invalid_inputs(precision, learning_rate, friction):
    with pytest.raises(ValueError):
        truth.sghmc_stationary_variance(precision, learning_rate, friction)


@pytest.mark.parametrize("friction", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("fraction_of_bound", [0.02, 0.4, 0.9])
def test_baoab_stationary_variance_solves_the_lyapunov_equation(friction, fraction_of_bound):
    from scipy.linalg import solve_discrete_lyapunov

    precision = 3.0
    learning_rate = fraction_of_bound * 4 / precision
    decay = 1 - friction
    # state (u, v): k = v - eta P u; u1 = u + k/2; v' = c k + s xi; u' = u1 + v'/2
    kick = np.array([-learning_rate * precision, 1.0])
    velocity_row = decay * kick
    position_row = np.array([1.0, 0.0]) + kick / 2 + velocity_row / 2
    transition = np.vstack([position_row, velocity_row])
    scale = np.sqrt(learning_rate * (1 - decay**2))
    noise = np.array([[scale / 2], [scale]])
    covariance = solve_discrete_lyapunov(transition, noise @ noise.T)
    position, velocity = truth.baoab_stationary_variance(precision, learning_rate, friction)
    assert position == pytest.approx(covariance[0, 0], rel=1e-9)
    assert velocity == pytest.approx(covariance[1, 1], rel=1e-9)
    # and it is the target's variance, unlike the Euler update's
    assert position == pytest.approx(1 / precision, rel=1e-12)
    if fraction_of_bound > 0.1:
        euler, _ = truth.sghmc_stationary_variance(precision, learning_rate / 2, friction)
        assert euler > 1.02 / precision


@pytest.mark.parametrize(
    "precision, learning_rate, friction",
    [(0.0, 0.1, 0.1), (1.0, -0.1, 0.1), (1.0, 0.1, 0.0), (1.0, 0.1, 1.5), (10.0, 0.4, 0.1)],
)
def test_baoab_stationary_variance_rejects_invalid_inputs(precision, learning_rate, friction):
    with pytest.raises(ValueError):
        truth.baoab_stationary_variance(precision, learning_rate, friction)


def test_linear_regression_loss_covariance_matches_monte_carlo():
    rng = np.random.default_rng(1)
    n, d, draws = 4, 3, 400_000
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    w0 = rng.standard_normal(d)
    factor = 0.3 * rng.standard_normal((d, d))
    Sigma = factor @ factor.T + 0.05 * np.eye(d)
    residuals = X @ w0 - y
    w = w0 + rng.standard_normal((draws, d)) @ np.linalg.cholesky(Sigma).T
    losses = 0.5 * (w @ X.T - y) ** 2
    empirical = np.cov(losses, rowvar=False)
    expected = truth.linear_regression_loss_covariance(X, Sigma, residuals)
    assert expected.shape == (n, n)
    np.testing.assert_allclose(expected, expected.T, rtol=1e-14)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.max(np.abs(empirical - expected) / scale) < 0.02


def test_linear_regression_loss_covariance_formula():
    X = np.array([[1.0, 0.0], [1.0, 1.0]])
    Sigma = np.diag([2.0, 3.0])
    residuals = np.array([1.0, -2.0])
    S = np.array([[2.0, 2.0], [2.0, 5.0]])
    expected = S**2 / 2 + np.outer(residuals, residuals) * S
    np.testing.assert_allclose(
        truth.linear_regression_loss_covariance(X, Sigma, residuals), expected, rtol=1e-14
    )


@pytest.mark.parametrize(
    "shapes", [((3,), (3, 3), (3,)), ((2, 3), (2, 2), (2,)), ((2, 3), (3, 3), (3,))]
)
def test_linear_regression_loss_covariance_rejects_bad_shapes(shapes):
    x_shape, sigma_shape, residual_shape = shapes
    with pytest.raises(ValueError):
        truth.linear_regression_loss_covariance(
            np.ones(x_shape), np.eye(sigma_shape[0])[:, : sigma_shape[1]], np.ones(residual_shape)
        )
