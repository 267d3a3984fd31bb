"""Calibration: the measured curvature matches closed forms; the chosen step size follows it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as slt
from slt_jax.calibration import calibrate_step_size, step_size_for, top_hessian_eigenvalue


def _linear_regression(n=512, d=6, seed=0):
    key_x, key_y = jax.random.split(jax.random.key(seed))
    scales = jnp.linspace(0.5, 3.0, d)
    x = jax.random.normal(key_x, (n, d)) * scales[None, :]
    y = jax.random.normal(key_y, (n,))

    def loss_fn(params, batch):
        inputs, targets = batch
        return 0.5 * (inputs @ params["w"] - targets) ** 2

    return loss_fn, {"w": jnp.zeros(d)}, (x, y)


def test_top_hessian_eigenvalue_matches_numpy_on_linear_regression():
    loss_fn, params, (x, y) = _linear_regression()
    hessian = np.asarray(x, np.float64).T @ np.asarray(x, np.float64) / x.shape[0]
    expected = np.linalg.eigvalsh(hessian)[-1]
    measured = top_hessian_eigenvalue(loss_fn, params, (x, y), key=jax.random.key(1))
    assert abs(measured / expected - 1) < 1e-3


def test_top_hessian_eigenvalue_on_a_subsample_is_close():
    loss_fn, params, (x, y) = _linear_regression(n=8192)
    hessian = np.asarray(x, np.float64).T @ np.asarray(x, np.float64) / x.shape[0]
    expected = np.linalg.eigvalsh(hessian)[-1]
    measured = top_hessian_eigenvalue(
        loss_fn, params, (x, y), key=jax.random.key(1), max_examples=4096
    )
    # a random half of the data: sampling error of a second moment, ~ sqrt(2/4096) ≈ 2%
    assert abs(measured / expected - 1) < 0.1


def test_calibrated_step_size_follows_the_quadratic_curvature():
    loss_fn, params, data = _linear_regression()
    x = np.asarray(data[0], np.float64)
    top = np.linalg.eigvalsh(x.T @ x / x.shape[0])[-1]
    nbeta, localization = 300.0, 1.0
    calibration = calibrate_step_size(
        loss_fn, params, data, key=jax.random.key(2), nbeta=nbeta, localization=localization,
        pilot_steps=50,
    )
    expected = calibration.safety_factor / (nbeta * top + localization)
    assert abs(calibration.step_size / expected - 1) < 1e-2
    assert calibration.step_size < calibration.stability_bound
    # constant curvature: the pilot round sees no growth and stops after one round
    assert len(calibration.rounds) == 2
    assert "step_size" in calibration.table()


@pytest.mark.parametrize("name", ["sgld", "rmsprop_sgld", "adam_sgld", "sgnht", "sghmc"])
def test_step_size_rules_are_positive_and_monotone(name):
    small = step_size_for(name, 1e3)
    large = step_size_for(name, 1e5)
    assert 0 < large < small


def test_step_size_rule_rejects_unknown_sampler():
    with pytest.raises(ValueError, match="expected one of"):
        step_size_for("hmc", 1.0)


def test_progress_bar_does_not_change_the_trace():
    loss_fn, params, data = _linear_regression()
    sampler = slt.samplers.sgld(1e-4, 100.0, 1.0)
    kwargs = dict(key=jax.random.key(0), num_chains=2, num_draws=30, num_burnin=10, batch_size=64)
    quiet = slt.sample(loss_fn, params, data, sampler, **kwargs)
    # 30 draws in blocks of 7 (and 10 burn-in steps): exercises the remainder blocks too
    shown = slt.sample(loss_fn, params, data, sampler, progress=True, progress_every=7, **kwargs)
    np.testing.assert_array_equal(np.asarray(quiet.loss), np.asarray(shown.loss))


def test_enable_compilation_cache_sets_the_directory(tmp_path):
    import jax

    previous = jax.config.jax_compilation_cache_dir
    try:
        directory = slt.enable_compilation_cache(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == directory
        assert (tmp_path / "xla").is_dir()
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


# the subject is how options reach the calibration and the sampler: 200 draws at batch 128
# are too short to be stationary, and the gradient-noise advice is expected there
@pytest.mark.filterwarnings("ignore:split R-hat:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:the LLC draws are still drifting:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:minibatch gradient noise:RuntimeWarning")
def test_estimate_llc_passes_sampler_options_to_calibration_and_sampler():
    loss_fn, params, data = _linear_regression()
    kwargs = dict(key=jax.random.key(3), num_draws=200, batch_size=128)
    chosen = slt.estimate_llc(loss_fn, params, data, sampler_options={"friction": 0.3}, **kwargs)
    assert chosen.hyperparameters["sampler"] == "sghmc"
    assert chosen.hyperparameters["friction"] == 0.3
    calibration = chosen.hyperparameters["calibration"]
    assert dict(calibration.options)["friction"] == 0.3
    # the step-size rule used that friction: eta = kappa (2 - a) / (2 c)
    expected = step_size_for("sghmc", calibration.max_curvature, friction=0.3)
    assert chosen.hyperparameters["step_size"] <= expected * (1 + 1e-6)
    decay = slt.estimate_llc(
        loss_fn, params, data, sampler="rmsprop_sgld", sampler_options={"decay": 0.999}, **kwargs
    )
    assert decay.hyperparameters["decay"] == 0.999
