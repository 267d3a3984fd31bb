"""Minibatch gradient noise: the measured per-example gradient variance and the LLC bias it
causes (``slt_jax.calibration.gradient_noise_bias``), checked against a linear-Gaussian model."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import slt_jax as slt
from slt_jax import diagnostics
from slt_jax.calibration import (
    DEFAULT_FRICTION,
    _friction_for_noise,
    _gradient_variance_sum,
    calibrate_step_size,
    gradient_noise_bias,
    sampler_family,
)


def _regression(n=4000, d=4, noise=1.0, seed=0):
    """y = x·w0 + noise·e; w* is the least-squares solution, so L_n is minimal at w*."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = x @ rng.standard_normal(d) + noise * rng.standard_normal(n)
    center = np.linalg.lstsq(x, y, rcond=None)[0]

    def loss_fn(params, batch):
        inputs, targets = batch
        return 0.5 * (inputs @ params["w"] - targets) ** 2

    data = (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    return loss_fn, {"w": jnp.asarray(center, jnp.float32)}, data, x, y, center


def test_gradient_variance_sum_matches_numpy():
    loss_fn, params, data, x, y, center = _regression(n=300, d=5)
    point = center + 0.3
    gradients = x * (x @ point - y)[:, None]  # per-example gradients of ½(x·w - y)²
    expected = gradients.var(axis=0, ddof=1).sum()
    measured = _gradient_variance_sum(
        {"w": jnp.asarray(point, jnp.float32)}, data, loss_fn=loss_fn, chunk_size=32
    )
    assert float(measured) == pytest.approx(expected, rel=1e-4)


def _llc_with_full_loss(loss_fn, params, data, sampler, nbeta, batch_size, key):
    full_loss = lambda p: jnp.mean(loss_fn(p, data))  # noqa: E731
    trace = slt.sample(
        loss_fn, params, data, sampler, key=key, num_chains=32, num_draws=3000,
        num_burnin=1000, batch_size=batch_size, observables={"L": full_loss},
    )
    assert not bool(trace.diverged.any())
    return nbeta * (np.asarray(trace.observables["L"], np.float64) - float(full_loss(params)))


def _relative_excess(noisy, full):
    """mean(noisy)/mean(full) - 1 and its MCSE from the paired per-draw differences (the two
    runs share their key, so the differences vary much less than either run)."""
    difference = noisy - full
    return (
        difference.mean() / full.mean(),
        diagnostics.monte_carlo_standard_error(difference) / full.mean(),
    )


@pytest.mark.parametrize(
    "name, batch_size, splitting",
    [
        # all at step·P = 0.1 and a predicted heating of 11-15%
        ("sgld", 32, None),
        ("sghmc", 128, "baoab"),
        ("sghmc", 128, "euler"),
    ],
)
def test_minibatch_heating_matches_gradient_noise_bias(name, batch_size, splitting):
    def make(nbeta):
        if name == "sgld":
            return slt.samplers.sgld(5e-4, nbeta, 1.0)
        return slt.samplers.sghmc(5e-4, nbeta, 1.0, friction=0.5, splitting=splitting)

    loss_fn, params, data, *_ = _regression()
    nbeta = 200.0
    sampler = make(nbeta)
    full = _llc_with_full_loss(loss_fn, params, data, sampler, nbeta, None, jax.random.key(0))
    noisy = _llc_with_full_loss(
        loss_fn, params, data, sampler, nbeta, batch_size, jax.random.key(0)
    )
    variance = float(_gradient_variance_sum(params, data, loss_fn=loss_fn, chunk_size=500))
    predicted = gradient_noise_bias(
        name, step_size=float(sampler.hyperparameters["step_size"]), gradient_variance=variance,
        nbeta=nbeta, batch_size=batch_size, llc=full.mean(),
        friction=float(sampler.hyperparameters.get("friction", DEFAULT_FRICTION)),
        splitting=splitting or "baoab",
    )
    measured, mcse = _relative_excess(noisy, full)
    assert 0.1 < predicted < 0.2
    # first order in the heating; the residuals grow by O(d/nβ) = 2% away from w*, which moves
    # the prediction by ~0.003: allowance 0.005
    assert abs(measured - predicted) < 4 * mcse + 0.005, (measured, predicted, mcse)


@pytest.mark.parametrize("power", [1, 2])  # Euler: K(2-α)/α; BAOAB: K(2-α)²/α
def test_friction_rule_keeps_the_predicted_bias_at_the_tolerance(power):
    chosen = []
    for coefficient in [1e-5, 1e-3, 3e-3, 0.02, 1.0]:
        def bias_at(alpha):
            return coefficient * (2 - alpha) ** power / alpha

        friction = _friction_for_noise(bias_at, 0.01)
        chosen.append(friction)
        assert DEFAULT_FRICTION <= friction <= 1.0
        assert bias_at(friction) <= 0.01 * (1 + 1e-9) or friction == 1.0
        if DEFAULT_FRICTION < friction < 1.0:
            assert bias_at(friction) == pytest.approx(0.01)
    assert chosen[0] == DEFAULT_FRICTION and chosen[-1] == 1.0


@pytest.mark.parametrize("splitting", ["baoab", "euler"])
def test_sghmc_heating_model_matches_the_discrete_lyapunov_equation(splitting):
    """The heating model's per-coordinate temperature excess is the exact stationary position
    variance of the linear update with gradient noise, to first order in ηP."""
    eta, precision, noise = 1e-4, 1.0, 100.0  # ηP small, η·N = 0.01
    for alpha in [0.03, 0.1, 0.5, 0.9]:
        c = 1.0 - alpha
        if splitting == "baoab":
            kick, kick_noise = np.array([-eta * precision, 1.0]), np.array([-eta, 0.0])
            refresh = c * kick
            refresh_noise = c * kick_noise + np.array([0.0, np.sqrt(eta * alpha * (2 - alpha))])
            position = np.array([1.0, 0.0]) + (kick + refresh) / 2
            position_noise = (kick_noise + refresh_noise) / 2
            transition = np.vstack([position, refresh])
            inputs = np.vstack([position_noise, refresh_noise])
        else:
            velocity = np.array([-eta * precision, c])
            velocity_noise = np.array([-eta, np.sqrt(2 * alpha * eta)])
            transition = np.vstack([np.array([1.0, 0.0]) + velocity, velocity])
            inputs = np.vstack([velocity_noise, velocity_noise])

        def temperature(gradient_noise):
            covariance = inputs @ np.diag([gradient_noise, 1.0]) @ inputs.T
            return scipy.linalg.solve_discrete_lyapunov(transition, covariance)[0, 0] * precision

        excess = temperature(noise) - temperature(0.0)
        # the family's heating is the LLC excess Σ h_j / 2 with noise N per coordinate
        model = 2 * sampler_family("sghmc").gradient_noise_heating(
            eta, noise, {"friction": alpha, "splitting": splitting}
        )
        assert excess == pytest.approx(model, rel=1e-3), (alpha, excess, model)


def test_calibrated_friction_keeps_the_minibatch_bias_at_one_percent():
    """noise 0.3, batch 160: at friction 0.1 the predicted heating is ~5%; the calibration
    raises the friction, and the sampler it returns is within 1% (+ 4 MCSE) of full batch.
    16 pilot chains: the pilots' LLC (from one endpoint per chain) has a relative standard
    deviation of about 1/sqrt(2·λ·chains) = 13% at λ = 2, which the friction inherits."""
    loss_fn, params, data, *_ = _regression(noise=0.3)
    nbeta, batch_size = 200.0, 160
    calibration = calibrate_step_size(
        loss_fn, params, data, key=jax.random.key(2), nbeta=nbeta, localization=1.0,
        sampler_name="sghmc", batch_size=batch_size, num_chains=16,
    )
    friction = dict(calibration.options)["friction"]
    assert DEFAULT_FRICTION < friction < 1.0
    assert calibration.gradient_noise_bias == pytest.approx(0.01, rel=1e-6)
    assert "grad. noise" in calibration.table()
    sampler = slt.samplers.sghmc(calibration.step_size, nbeta, 1.0, friction=friction)
    # common random numbers: the same key for both runs
    full = _llc_with_full_loss(loss_fn, params, data, sampler, nbeta, None, jax.random.key(3))
    noisy = _llc_with_full_loss(
        loss_fn, params, data, sampler, nbeta, batch_size, jax.random.key(3)
    )
    measured, mcse = _relative_excess(noisy, full)
    assert abs(measured) < 0.01 + 4 * mcse, (measured, mcse)


def test_calibration_cuts_the_step_when_noise_dominates():
    loss_fn, params, data, *_ = _regression(noise=3.0)
    kwargs = dict(key=jax.random.key(2), nbeta=200.0, localization=1.0, batch_size=4)
    with (
        pytest.warns(RuntimeWarning, match="gradient noise .* forced the step size down"),
        pytest.warns(RuntimeWarning, match="gradient noise dominates the pilot chains' loss"),
    ):
        sghmc = calibrate_step_size(loss_fn, params, data, sampler_name="sghmc", **kwargs)
    assert dict(sghmc.options)["friction"] == 1.0
    assert "step cut" in sghmc.table()
    assert sghmc.gradient_noise_bias == pytest.approx(0.01, rel=1e-6)
    # SGLD gets the step cut too; an explicit SGHMC friction is respected
    with pytest.warns(RuntimeWarning, match="gradient noise .* forced the step size down"):
        sgld = calibrate_step_size(loss_fn, params, data, sampler_name="sgld", **kwargs)
    assert "step cut" in sgld.table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fixed = calibrate_step_size(
            loss_fn, params, data, sampler_name="sghmc", friction=0.2, **kwargs
        )
    assert dict(fixed.options)["friction"] == 0.2
    assert "step cut" in fixed.table()


def test_no_noise_adjustment_for_a_quiet_problem():
    # away from w* the per-example gradients differ even without label noise (residuals of
    # size ~ sqrt(d/nβ)): at batch 400 that alone is ~1% at friction 0.1, at batch 2000 ~0.2%
    loss_fn, params, data, *_ = _regression(noise=0.05)
    quiet = calibrate_step_size(
        loss_fn, params, data, key=jax.random.key(2), nbeta=200.0, localization=1.0,
        sampler_name="sghmc", batch_size=2000,
    )
    assert dict(quiet.options)["friction"] == DEFAULT_FRICTION
    assert quiet.gradient_noise_bias < 0.01
    assert "grad. noise" not in quiet.table()


def test_estimate_llc_reports_the_noise_bias_where_the_chains_ended():
    """A fixed SGHMC sampler at batch 128 (no calibration to raise the friction): the heating
    predicted at the main run's endpoints bounds the excess over full batch (measured with the
    full-data loss on the same key) within 1.5x, and above 3% it warns."""
    loss_fn, params, data, *_ = _regression()
    nbeta, batch_size = 200.0, 128
    sampler = slt.samplers.sghmc(5e-4, nbeta, 1.0, friction=0.5)
    with pytest.warns(RuntimeWarning, match="gradient noise where the chains ended predicts"):
        result = slt.estimate_llc(
            loss_fn, params, data, key=jax.random.key(0), sampler=sampler, num_chains=8,
            num_draws=1000, batch_size=batch_size,
        )
    predicted = result.hyperparameters["gradient_noise_bias_at_end"]
    assert 0.05 < predicted < 0.25
    full = _llc_with_full_loss(loss_fn, params, data, sampler, nbeta, None, jax.random.key(1))
    noisy = _llc_with_full_loss(loss_fn, params, data, sampler, nbeta, batch_size,
                                jax.random.key(1))
    measured, mcse = _relative_excess(noisy, full)
    # an upper bound, to first order: the heated chains end farther from w*, where the
    # residuals (so tr V) are larger than on average (measured 0.117 vs predicted 0.150)
    assert measured - 4 * mcse < predicted < 1.5 * (measured + 4 * mcse), (
        measured, predicted, mcse)
    # full batch: nothing to predict
    quiet = slt.estimate_llc(loss_fn, params, data, key=jax.random.key(0), sampler=sampler,
                             num_chains=2, num_draws=200, batch_size=None)
    assert quiet.hyperparameters["gradient_noise_bias_at_end"] is None


def test_estimate_llc_raises_the_batch_after_the_burnin_when_the_noise_is_high():
    """batch_size="auto" (500 of 4000) with a fixed step and friction 0.5: the prediction
    after the burn-in is ~3.5%, so (issue 20) the batch is raised before the draws to
    500·ceil(1.5·bias/1%) (1.5: what it grows to over the draws) and the chains continue at
    it; the result agrees with a full-batch run."""
    loss_fn, params, data, *_ = _regression()
    kwargs = dict(sampler="sghmc", nbeta=200.0, step_size=5e-4,
                  sampler_options={"friction": 0.5}, num_chains=8, num_draws=1000)
    result = slt.estimate_llc(loss_fn, params, data, key=jax.random.key(0), **kwargs)
    hyper = result.hyperparameters
    assert hyper["batch_size_raised_from"] == 500
    after_burnin = hyper["gradient_noise_bias_after_burnin"]
    assert 0.02 < after_burnin < 0.06, after_burnin
    assert hyper["batch_size"] == 500 * int(np.ceil(1.5 * after_burnin / 0.01))
    assert hyper["gradient_noise_bias_at_end"] < 0.015
    full = slt.estimate_llc(loss_fn, params, data, key=jax.random.key(1), batch_size=None,
                            **kwargs)
    # the remaining predicted heating (~1%) plus 4 MCSE of the difference
    allowance = 4 * np.hypot(result.mcse, full.mcse) + 0.015 * full.mean
    assert abs(result.mean - full.mean) < allowance, (result.mean, full.mean, allowance)
    # an explicit batch size is respected (and the high prediction is reported)
    with pytest.warns(RuntimeWarning, match="gradient noise where the chains ended"):
        fixed = slt.estimate_llc(loss_fn, params, data, key=jax.random.key(0), batch_size=250,
                                 **kwargs)
    assert fixed.hyperparameters["batch_size_raised_from"] is None
    assert fixed.hyperparameters["batch_size"] == 250


def test_calibration_uses_the_requested_splitting():
    """Euler heats by 2/(2-α) times BAOAB's at the same friction, so it needs more friction for
    the same 1% (the pilots run the requested update); splitting is an SGHMC option only."""
    loss_fn, params, data, *_ = _regression(noise=0.3)
    kwargs = dict(key=jax.random.key(2), nbeta=200.0, localization=1.0, sampler_name="sghmc",
                  batch_size=160, num_chains=16)
    baoab = calibrate_step_size(loss_fn, params, data, **kwargs)
    euler = calibrate_step_size(loss_fn, params, data, splitting="euler", **kwargs)
    for calibration in (baoab, euler):
        assert calibration.gradient_noise_bias == pytest.approx(0.01, rel=1e-6)
    assert dict(euler.options)["friction"] > dict(baoab.options)["friction"]
    with pytest.raises(ValueError, match="splitting is an option of sghmc only"):
        calibrate_step_size(loss_fn, params, data, **{**kwargs, "sampler_name": "sgld"},
                            splitting="euler")
